"""The standard library against the manifest of the package that installed it.

Without a seal the standard library has no RECORD: a module planted in it, or an edited
``json/decoder.py``, looks like Python itself. Where the interpreter came from the
operating system or conda, the package manager kept a list of every file it installed
with its hash: Debian's ``/var/lib/dpkg/info/<package>.md5sums`` (with ``.list`` naming
every path the package owns, links and configuration files included) and conda's
``<prefix>/conda-meta/<package>.json`` (``paths_data`` with sha256). Each file of the
standard library is compared with that list: a listed file that differs is
``env.file_modified``, a listed file that is gone is ``env.file_missing``, and code in the
standard library's folders that no package owns is ``env.file_added``.

What it trusts: the manifest, and only when no one but root (dpkg) or the user (a
conda install of their own) could have written it or any folder above it
(``state.why_unsafe``); otherwise it is not used and a note says so. md5 is dpkg's
choice: a planted file would need a second preimage of a given md5, which no one can
compute. RPM keeps its hashes in a database only ``rpm -V`` reads; it is not used here
(a seal covers such systems). Compiled ``__pycache__`` files are never listed by the
package managers and are judged against their sources by the ``.pyc`` check instead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trainguard.env.state import why_unsafe
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["Manifest", "check", "manifests"]

DPKG_INFO = "/var/lib/dpkg/info"
_CODE = (".py", ".so", ".pth", ".pyc")


@dataclass
class Manifest:
    """Files one package manager lists under one standard library folder."""

    source: str
    algorithm: str
    hashes: dict[str, str] = field(default_factory=dict)  # absolute path -> hex digest
    owned: set[str] = field(default_factory=set)  # every path a package owns
    files: list[str] = field(default_factory=list)  # the manifest files read


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _dpkg(stdlib: str, info: str) -> Manifest | None:
    found = Manifest("dpkg", "md5")
    rel = stdlib.lstrip("/").encode()
    for md5sums in sorted(glob.glob(os.path.join(info, "*.md5sums"))):
        try:
            with open(md5sums, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if rel not in data:
            continue
        found.files.append(md5sums)
        for line in data.splitlines():
            digest, _, path = line.decode("utf-8", "surrogateescape").partition("  ")
            full = "/" + path.strip()
            if _under(full, stdlib):
                found.hashes[full] = digest.strip()
        listing = md5sums[: -len(".md5sums")] + ".list"
        try:
            with open(listing, encoding="utf-8", errors="surrogateescape") as f:
                found.owned.update(p.strip() for p in f if _under(p.strip(), stdlib))
            found.files.append(listing)
        except OSError:
            pass
    found.owned.update(found.hashes)
    return found if found.hashes else None


def _conda(stdlib: str, prefix: str) -> Manifest | None:
    found = Manifest("conda", "sha256")
    for meta in sorted(glob.glob(os.path.join(prefix, "conda-meta", "*.json"))):
        try:
            with open(meta, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        paths = (doc.get("paths_data") or {}).get("paths") or []
        mine = False
        for entry in paths:
            full = os.path.join(prefix, str(entry.get("_path", "")))
            if not _under(full, stdlib):
                continue
            mine = True
            found.owned.add(full)
            if isinstance(entry.get("sha256"), str) and entry.get("path_type") == "hardlink":
                found.hashes[full] = entry["sha256"]
        if mine:
            found.files.append(meta)
    return found if found.hashes else None


def manifests(stdlib: str, *, prefix: str, dpkg_info: str = DPKG_INFO) -> Manifest | None:
    """The package manifest covering ``stdlib`` (a real path), if any."""
    return _conda(stdlib, prefix) or _dpkg(stdlib, dpkg_info)


def _digest(path: str, algorithm: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, algorithm).hexdigest()
    except OSError:
        return None


def _unowned(stdlib: str, owned: set[str]) -> Iterable[str]:
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "site-packages", "dist-packages")]
        for name in files:
            full = os.path.join(root, name)
            if name.endswith(_CODE) and full not in owned:
                try:
                    if stat.S_ISLNK(os.lstat(full).st_mode):
                        continue
                except OSError:
                    continue
                yield full


def check(
    stdlib_dirs: Sequence[str], *, dpkg_info: str = DPKG_INFO, uid: int | None = None
) -> tuple[list[Finding], list[str]]:
    """Findings and notes for each standard library folder that has a package manifest
    (conda's prefix is the folder two levels up: ``<prefix>/lib/pythonX.Y``). ``uid``:
    besides root, who may own the manifest (default: this user, for a conda install of
    their own)."""
    findings: list[Finding] = []
    notes: list[str] = []
    for folder in dict.fromkeys(os.path.realpath(d) for d in stdlib_dirs):
        prefix = os.path.dirname(os.path.dirname(folder))
        man = manifests(folder, prefix=prefix, dpkg_info=dpkg_info)
        if man is None:
            notes.append(
                f"no package manifest lists the standard library at {folder}: without a seal "
                "it is trusted as found"
            )
            continue
        who = os.geteuid() if uid is None else uid
        unsafe = next((p for f in man.files if (p := why_unsafe(f, uid=who))), None)
        if unsafe is not None:
            notes.append(f"the {man.source} manifest of {folder} was not used: {unsafe}")
            continue
        findings += _compare(folder, man)
    return findings, notes


def _compare(folder: str, man: Manifest) -> list[Finding]:
    out: list[Finding] = []
    evidence = {"source": man.source, "manifests": man.files[:8]}
    for path, want in sorted(man.hashes.items()):
        got = _digest(path, man.algorithm)
        if got is None:
            if not os.path.lexists(path):
                out.append(Finding(Rule.ENV_FILE_MISSING, Severity.HIGH,
                                   f"a standard library file {man.source} installed is gone",
                                   Location(path), evidence))  # fmt: skip
            continue
        if got != want:
            severity = Severity.CRITICAL if path.endswith(_CODE) else Severity.HIGH
            out.append(Finding(Rule.ENV_FILE_MODIFIED, severity,
                               f"the standard library file differs from what {man.source} "
                               "installed", Location(path),
                               {**evidence, "expected": want, "found": got}))  # fmt: skip
    for path in sorted(_unowned(folder, man.owned)):
        out.append(Finding(Rule.ENV_FILE_ADDED, Severity.HIGH,
                           f"code in the standard library that no {man.source} package "
                           "installed", Location(path), evidence))  # fmt: skip
    return out
