"""Installed distributions and their RECORD files (PEP 376 / PEP 627).

pip writes a sha256 and a size for every file it installs except RECORD itself and the
``.pyc`` files it compiles, and never looks at them again. Checking them is necessary but
not sufficient: ``pyc.py``, ``hooks.py`` and the seal cover what RECORD cannot see.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import emit

# Algorithms a RECORD may use that still vouch for content; anything else (md5, sha1)
# leaves the file unverified.
STRONG = {"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512", "blake2b"}


@dataclass
class Entry:
    path: str
    rel: str
    algo: str | None
    digest: str | None
    """Hex digest (RECORD stores urlsafe base64 without padding)."""
    size: int | None


@dataclass
class Dist:
    name: str
    version: str
    dist_info: str
    site_dir: str
    record: str | None
    entries: list[Entry] = field(default_factory=list)
    editable: bool = False
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name}=={self.version}"


def normalize(name: str) -> str:
    """PEP 503 name normalisation, used to match ``distributions=`` and wheel names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _metadata(dist_info: str) -> tuple[str, str]:
    stem = os.path.basename(dist_info)[: -len(".dist-info")]
    name, _, version = stem.partition("-")
    try:
        with open(os.path.join(dist_info, "METADATA"), "rb") as f:
            head = f.read(65536).decode("utf-8", "replace")
    except OSError:
        return name, version
    for line in head.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep and key.lower() == "name":
            name = value.strip()
        elif sep and key.lower() == "version":
            version = value.strip()
    return name, version


def _editable(dist_info: str) -> bool:
    try:
        with open(os.path.join(dist_info, "direct_url.json"), "rb") as f:
            text = f.read(65536).decode("utf-8", "replace")
    except OSError:
        return False
    return re.search(r'"editable"\s*:\s*true', text) is not None


_URLSAFE = str.maketrans("-_", "+/")


def parse_record(dist: Dist, data: bytes) -> None:
    rows = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    prefix = dist.site_dir + os.sep
    for number, row in enumerate(rows, 1):
        if not row or not row[0]:
            continue
        rel = row[0]
        # plain relative paths (nearly all rows) need no normpath: join by hand
        if rel[0] == "/" or ("." in rel and ("/." in rel or rel[0] == ".")) or "//" in rel:
            path = os.path.normpath(os.path.join(dist.site_dir, rel))
        else:
            path = prefix + rel
        hash_field = row[1] if len(row) > 1 else ""
        size_field = row[2] if len(row) > 2 else ""
        algo = digest = None
        size: int | None = None
        try:
            if hash_field:
                algo, sep, b64 = hash_field.partition("=")
                if not sep:
                    raise ValueError(f"hash field {hash_field!r} has no '='")
                padded = b64.translate(_URLSAFE) + "=" * (-len(b64) % 4)
                digest = base64.b64decode(padded, validate=True).hex()
            if size_field:
                size = int(size_field)
        except (ValueError, binascii.Error) as exc:
            dist.problems.append(
                emit.finding(
                    emit.ERROR,
                    emit.HIGH,
                    f"RECORD of {dist.label} has a malformed row {number}: {exc}",
                    dist.record or dist.dist_info,
                    row=number,
                    distribution=dist.label,
                )
            )
            continue
        dist.entries.append(Entry(path, rel, algo, digest, size))


def find_dists(site_dirs: list[str], only: set[str] | None = None) -> list[Dist]:
    """Every ``*.dist-info`` of the site dirs (only the ``only`` names, normalised, when
    given: reading the RECORDs of a whole environment is most of a one-package check)."""
    dists: list[Dist] = []
    for site_dir in site_dirs:
        try:
            names = sorted(os.listdir(site_dir))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            dist_info = os.path.join(site_dir, name)
            if only is not None and normalize(name.partition("-")[0]) not in only:
                continue
            if not os.path.isdir(dist_info):
                continue
            dname, version = _metadata(dist_info)
            record = os.path.join(dist_info, "RECORD")
            dist = Dist(dname, version, dist_info, site_dir, None, editable=_editable(dist_info))
            try:
                with open(record, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                dists.append(dist)
                continue
            except OSError as exc:
                dist.problems.append(
                    emit.finding(emit.ERROR, emit.HIGH, f"cannot read RECORD: {exc}", record)
                )
                dists.append(dist)
                continue
            dist.record = record
            parse_record(dist, data)
            dists.append(dist)
    return dists


def check(
    dists: list[Dist],
    lookup: Callable[[str, str], tuple[str, int] | None],
    errors: dict[str, str],
) -> tuple[list[dict[str, Any]], int]:
    """Every RECORD entry against the bytes on disk. Returns findings and entries checked."""
    out: list[dict[str, Any]] = []
    checked = 0
    for dist in dists:
        out += dist.problems
        if dist.record is None:
            out.append(
                emit.finding(
                    emit.FILE_ADDED,
                    emit.HIGH,
                    f"{dist.label} has no RECORD: nothing vouches for its files or for "
                    "what its metadata registers (entry points)",
                    dist.dist_info,
                    distribution=dist.label,
                )
            )
            continue
        for e in dist.entries:
            if e.path == dist.record:
                continue
            if e.digest is None or e.algo is None or e.algo.lower() not in STRONG:
                if e.path.endswith(".pyc") and e.digest is None:
                    continue  # pip does not hash the .pyc it compiles; pyc.py checks them
                if os.path.lexists(e.path) and not _is_signature(e.rel):
                    out.append(
                        emit.finding(
                            emit.FILE_ADDED,
                            emit.severity_for(e.path, emit.HIGH, emit.MEDIUM),
                            f"RECORD of {dist.label} lists this file without a usable "
                            "hash, so nothing vouches for its content",
                            e.path,
                            distribution=dist.label,
                            algorithm=e.algo,
                        )
                    )
                continue
            checked += 1
            if e.path in errors:
                continue  # reported once, as unreadable
            got = lookup(e.path, e.algo.lower())
            if got is None:
                if not os.path.lexists(e.path):
                    out.append(
                        emit.finding(
                            emit.FILE_MISSING,
                            emit.severity_for(e.path, emit.HIGH, emit.MEDIUM),
                            f"file of {dist.label} listed in its RECORD is missing",
                            e.path,
                            distribution=dist.label,
                        )
                    )
                else:
                    out.append(
                        emit.finding(
                            emit.ERROR,
                            emit.HIGH,
                            "cannot read (a dangling link, or not a file)",
                            e.path,
                            distribution=dist.label,
                        )
                    )
                continue
            digest, size = got
            if digest != e.digest or (e.size is not None and size != e.size):
                out.append(
                    emit.finding(
                        emit.FILE_MODIFIED,
                        emit.severity_for(e.path),
                        f"file of {dist.label} does not match its RECORD",
                        e.path,
                        distribution=dist.label,
                        source="RECORD",
                        expected=f"{e.algo}:{e.digest}",
                        actual=f"{e.algo}:{digest}",
                        expected_size=e.size,
                        actual_size=size,
                    )
                )
    return out, checked


def _is_signature(rel: str) -> bool:
    return rel.endswith(("RECORD.jws", "RECORD.p7s"))
