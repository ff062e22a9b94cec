"""Helpers for the env tests: a throwaway venv with three tiny distributions, installed
by pip from wheels built here.

The venv is built once per session (``python -m venv --without-pip`` plus one
``pip --python`` install, a few seconds) and copied for each test, so every test can
tamper with its own copy. Distributions:

- ``tinypkg 1.0``: a package with a module, a data file and a console script;
- ``shim 1.0``: setuptools' ``distutils-precedence.pth`` (real content) and
  ``_distutils_hack``, the legitimate executable ``.pth`` every setuptools env has;
- ``proj 1.0``: an editable install as setuptools writes it (a finder ``.pth`` line plus
  its ``__editable___proj_1_0_finder`` module) with ``direct_url.json`` saying editable.

Attacks of issue 14: ``rewrite_with_record`` (a file and its RECORD row together),
``stdlib_copy`` + ``set_home`` (``pyvenv.cfg`` pointed at a planted standard library).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

DISTUTILS_LINE = (
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == "
    "'local'; enabled and __import__('_distutils_hack').add_shim(); \n"
)
FINDER_LINE = "import __editable___proj_1_0_finder; __editable___proj_1_0_finder.install()"

TINY = {
    "tinypkg/__init__.py": b"VERSION = '1.0'\n",
    "tinypkg/optim.py": b"def step(lr):\n    return lr * 0.5\n",
    "tinypkg/data/table.txt": b"alpha 1\nbeta 2\n",
}


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(
    outdir: Path, name: str, version: str, files: dict[str, bytes], extra: str = ""
) -> Path:
    info = f"{name}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    if extra:
        meta[f"{info}/entry_points.txt"] = extra.encode()
    everything = {**files, **meta}
    rows = [f"{rel},{record_hash(data)},{len(data)}" for rel, data in everything.items()]
    rows.append(f"{info}/RECORD,,")
    path = outdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in everything.items():
            zf.writestr(rel, data)
        zf.writestr(f"{info}/RECORD", "\n".join(rows) + "\n")
    return path


def add_to_record(dist_info: Path, path: Path) -> None:
    site = dist_info.parent
    data = path.read_bytes()
    rel = path.relative_to(site).as_posix()
    with open(dist_info / "RECORD", "a") as f:
        f.write(f"{rel},{record_hash(data)},{len(data)}\n")


@dataclass
class Env:
    root: Path
    python: str
    site: Path
    wheelhouse: Path

    def dist_info(self, name: str) -> Path:
        return next(self.site.glob(f"{name}-*.dist-info"))


def rewrite_with_record(env: Env, rel: str, data: bytes) -> Path:
    """The insider's edit of issue 14: a file and its RECORD row rewritten together, so a
    RECORD check agrees with itself."""
    target = env.site / rel
    target.write_bytes(data)
    info = next(i for i in env.site.glob("*.dist-info") if rel in (i / "RECORD").read_text())
    rows = (info / "RECORD").read_text().splitlines()
    rows = [
        f"{rel},{record_hash(data)},{len(data)}" if r.startswith(rel + ",") else r for r in rows
    ]
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return target


def stdlib_copy(where: Path, plant: dict[str, bytes], copy_binary: bool = False) -> Path:
    """A "copy" of this interpreter's install under ``where`` (every standard-library entry a
    link to the real one, but site-packages) with ``plant`` files added; returns its bin/.
    The interpreter in it is a link to the real binary, or with ``copy_binary`` a copy
    (which then finds this standard library on its own)."""
    import shutil
    import sys
    import sysconfig

    real_exe = Path(sys._base_executable).resolve()  # type: ignore[attr-defined]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    lib = where / "lib" / version
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    for name, data in plant.items():
        (lib / name).write_bytes(data)
    bin_dir = where / "bin"
    bin_dir.mkdir()
    if copy_binary:
        shutil.copy2(real_exe, bin_dir / version)
    else:
        (bin_dir / version).symlink_to(real_exe)
    return bin_dir


def set_home(env: Env, home: Path) -> Path:
    cfg = env.root / "pyvenv.cfg"
    lines = [f"home = {home}" if x.startswith("home") else x for x in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg
