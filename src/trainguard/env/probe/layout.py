"""Where the interpreter would look for code, found without running any of it.

This mirrors what ``site.main()`` does at start-up (venv detection, user site, site
directories, ``.pth`` path lines), reading files as text where ``site`` would execute
them. It runs under ``-S``, so ``sys.prefix`` is still the base prefix and ``sys.path``
holds exactly the standard library: both are taken as the starting point.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from dataclasses import dataclass, field

PTH_ENCODINGS = ("utf-8", "latin-1")


@dataclass
class PthLine:
    """One meaningful line of a ``.pth`` file, split the way ``site.addpackage`` splits."""

    number: int
    text: str
    executes: bool


@dataclass
class Layout:
    executable: str
    version: str
    cache_tag: str
    venv: str | None
    stdlib_dirs: list[str]
    site_dirs: list[str]
    pth_files: list[str] = field(default_factory=list)
    pth_dirs: list[str] = field(default_factory=list)
    single_files: list[str] = field(default_factory=list)
    bin_dir: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "executable": self.executable,
            "version": self.version,
            "cache_tag": self.cache_tag,
            "venv": self.venv,
            "stdlib_dirs": self.stdlib_dirs,
            "site_dirs": self.site_dirs,
            "pth_files": self.pth_files,
            "pth_dirs": self.pth_dirs,
        }


def pth_lines(data: bytes) -> list[PthLine]:
    """The lines ``site`` acts on: universal newlines, ``#`` comments and blanks skipped.

    A UTF-8 byte-order mark is dropped first: Python 3.13 reads ``.pth`` files as
    ``utf-8-sig``, so a line behind a BOM executes there even though 3.11 would not.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8", "surrogateescape")
    out: list[PthLine] = []
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
        if line.startswith("#") or not line.strip():
            continue
        out.append(PthLine(number + 1, line, line.startswith(("import ", "import\t"))))
    return out


def _venv() -> tuple[str | None, bool]:
    """The venv this interpreter belongs to and whether it sees the system site dirs."""
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    prefix = os.path.dirname(exe_dir)
    for cfg in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(prefix, "pyvenv.cfg")):
        if not os.path.isfile(cfg):
            continue
        system_site = "true"
        with open(cfg, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == "include-system-site-packages":
                    system_site = value.strip().lower()
        return prefix, system_site == "true"
    return None, True


def _user_site_enabled(venv: str | None, system_site: bool) -> bool:
    if venv is not None and not system_site:
        return False
    if os.environ.get("PYTHONNOUSERSITE"):
        return False
    return not (hasattr(os, "geteuid") and os.geteuid() != os.getuid())


def _dedupe(paths: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for p in paths:
        key = os.path.normcase(os.path.realpath(p))
        if key not in seen and os.path.isdir(p):
            seen.add(key)
            out.append(os.path.normpath(p))
    return out


def discover() -> Layout:
    """The layout a plain ``python`` start of this interpreter would see."""
    stdlib_dirs = _dedupe([p for p in sys.path if p])
    venv, system_site = _venv()
    prefixes = [sys.prefix, sys.exec_prefix]
    candidates: list[str] = []
    if venv is not None:
        candidates += site.getsitepackages([venv])
        prefixes = [venv, *prefixes] if system_site else [venv]
    if _user_site_enabled(venv, system_site):
        candidates.append(site.getusersitepackages())
    candidates += site.getsitepackages(prefixes)
    site_dirs = _dedupe(candidates)

    layout = Layout(
        executable=sys.executable,
        version=sys.version.split()[0],
        cache_tag=sys.implementation.cache_tag or "",
        venv=venv,
        stdlib_dirs=stdlib_dirs,
        site_dirs=site_dirs,
    )
    known = {os.path.normcase(os.path.realpath(p)) for p in stdlib_dirs + site_dirs}
    for sitedir in site_dirs:
        try:
            names = sorted(n for n in os.listdir(sitedir) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            path = os.path.join(sitedir, name)
            layout.pth_files.append(path)
            try:
                with open(path, "rb") as f:
                    lines = pth_lines(f.read())
            except OSError:
                continue
            for line in lines:
                if line.executes:
                    continue
                target = os.path.abspath(os.path.join(sitedir, line.text.rstrip()))
                key = os.path.normcase(os.path.realpath(target))
                if key not in known and os.path.isdir(target):
                    known.add(key)
                    layout.pth_dirs.append(target)
    _single_files(layout)
    return layout


def _single_files(layout: Layout) -> None:
    """The interpreter, libpython, pyvenv.cfg and the venv's bin/ (sealed, not walked for
    RECORD)."""
    files = [sys.executable, os.path.realpath(sys.executable)]
    base_exe = getattr(sys, "_base_executable", None)
    if base_exe:
        files += [base_exe, os.path.realpath(base_exe)]
    libdir = sysconfig.get_config_var("LIBDIR")
    for var in ("INSTSONAME", "LDLIBRARY"):
        name = sysconfig.get_config_var(var)
        if libdir and name:
            lib = os.path.join(libdir, name)
            files += [lib, os.path.realpath(lib)]
    if layout.venv is not None:
        files.append(os.path.join(layout.venv, "pyvenv.cfg"))
        layout.bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    seen: set[str] = set()
    for f in files:
        f = os.path.abspath(f)
        if f not in seen and os.path.lexists(f):
            seen.add(f)
            layout.single_files.append(f)
