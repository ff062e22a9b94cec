"""Installed RECORDs against the RECORDs of the wheels they came from.

Whoever can edit ``torch/optim/adamw.py`` can also write its new hash into RECORD. The
wheel in a trusted wheelhouse still has the original hash, so each installed file is
compared with the wheel's RECORD, and the installed RECORD's own list with the wheel's.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from typing import Any

from . import emit
from .records import STRONG, Dist, Entry, normalize, parse_record

# Files pip writes itself, which no wheel contains.
_INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
Lookup = Callable[[str, str], "tuple[str, int] | None"]


def index(wheelhouse: str) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for name in sorted(os.listdir(wheelhouse)):
        if not name.endswith(".whl"):
            continue
        parts = name[:-4].split("-")
        if len(parts) >= 5:
            key = (normalize(parts[0]), parts[1].replace("_", "-"))
            out.setdefault(key, []).append(os.path.join(wheelhouse, name))
    return out


def _wheel_record(wheel: str, dist: Dist) -> Dist | None:
    member = f"{os.path.basename(dist.dist_info)}/RECORD"
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            return None
    shadow = Dist(dist.name, dist.version, dist.dist_info, dist.site_dir, member)
    parse_record(shadow, data)
    return shadow


def _installed_path(entry: Entry, dist: Dist) -> str | None:
    """Where pip put a wheel entry; None for ``.data`` scripts/headers/data, which pip
    moves and may rewrite (shebangs), so the wheel's hash does not apply."""
    data_dir = f"{os.path.basename(dist.dist_info)[: -len('.dist-info')]}.data/"
    if not entry.rel.startswith(data_dir):
        return entry.path
    scheme, _, rest = entry.rel[len(data_dir) :].partition("/")
    if scheme in ("purelib", "platlib"):
        return os.path.normpath(os.path.join(dist.site_dir, rest))
    return None


def check(
    dists: list[Dist], wheelhouse: str, lookup: Lookup
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Returns findings, the number of distributions compared, and notes."""
    out: list[dict[str, Any]] = []
    wheels = index(wheelhouse)
    compared = 0
    unmatched: list[str] = []
    for dist in dists:
        candidates = wheels.get((normalize(dist.name), dist.version))
        if not candidates or dist.record is None:
            unmatched.append(dist.label)
            continue
        try:
            shadow = next(
                (r for w in candidates if (r := _wheel_record(w, dist)) is not None), None
            )
        except (OSError, zipfile.BadZipFile) as exc:
            out.append(emit.finding(emit.ERROR, emit.HIGH, f"bad wheel: {exc}", candidates[0]))
            continue
        if shadow is None:
            unmatched.append(dist.label)
            continue
        compared += 1
        out += _compare(dist, shadow, candidates[0], lookup)
    return out, compared, unmatched


def _compare(dist: Dist, wheel: Dist, wheel_path: str, lookup: Lookup) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    installed = {e.path: e for e in dist.entries}
    expected: set[str] = set()
    disagree: list[str] = []
    for w in wheel.entries:
        path = _installed_path(w, dist)
        if path is None:
            continue
        expected.add(path)
        if w.digest is None or w.algo is None or w.algo.lower() not in STRONG:
            continue
        mine = installed.get(path)
        if mine is None or mine.digest != w.digest:
            disagree.append(w.rel)
        got = lookup(path, w.algo.lower())
        if got is None:
            if not os.path.lexists(path):
                out.append(
                    emit.finding(
                        emit.FILE_MISSING,
                        emit.severity_for(path, emit.HIGH, emit.MEDIUM),
                        f"file of {dist.label} in its wheel is missing",
                        path,
                        distribution=dist.label,
                        source="wheel",
                        wheel=wheel_path,
                    )
                )
            continue
        if got[0] != w.digest:
            out.append(
                emit.finding(
                    emit.FILE_MODIFIED,
                    emit.severity_for(path),
                    f"file of {dist.label} does not match the wheel it was installed from",
                    path,
                    distribution=dist.label,
                    source="wheel",
                    wheel=wheel_path,
                    expected=f"{w.algo}:{w.digest}",
                    actual=f"{w.algo}:{got[0]}",
                )
            )
    if disagree and dist.record:
        out.append(
            emit.finding(
                emit.FILE_MODIFIED,
                emit.HIGH,
                f"RECORD of {dist.label} disagrees with its wheel on {len(disagree)} file(s)",
                dist.record,
                distribution=dist.label,
                source="wheel",
                wheel=wheel_path,
                files=disagree[:50],
            )
        )
    for e in dist.entries:
        rel_in_info = os.path.dirname(e.path) == dist.dist_info
        if (
            e.path in expected
            or e.path.endswith(".pyc")
            or (rel_in_info and os.path.basename(e.path) in _INSTALLER_FILES)
            or not e.path.startswith(dist.site_dir + os.sep)
        ):
            continue
        out.append(
            emit.finding(
                emit.FILE_ADDED,
                emit.severity_for(e.path, emit.HIGH, emit.MEDIUM),
                f"RECORD of {dist.label} lists a file its wheel does not contain",
                e.path,
                distribution=dist.label,
                source="wheel",
                wheel=wheel_path,
            )
        )
    return out
