"""Seal entries (one per file, symlink or directory) and the comparison against a seal.

``hint`` (mtime, inode, device) is a speed hint for ``--fast`` only: it can be forged
with ``touch -r``, so it never decides a verdict and importable code is always hashed.
"""

from __future__ import annotations

import os
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Any

from . import emit

Entry = dict[str, Any]

# Seal fields whose change is reported; the hint is not among them.
COMPARED = ("type", "mode", "uid", "size", "sha256", "target")


def text(path: str) -> str:
    """File names that are not UTF-8 are written with backslash escapes (canonical JSON
    cannot hold lone surrogates); the same escaping on both sides keeps the diff exact."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def hint(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def entry_of(
    path: str, st: os.stat_result, digest: str | None, owner: str | None, with_hint: bool = True
) -> Entry:
    mode = st.st_mode
    if S_ISREG(mode):
        e: Entry = {
            "path": text(path),
            "mode": mode & 0o7777,
            "uid": st.st_uid,
            "type": "file",
            "size": st.st_size,
            "sha256": digest,
            "dist": owner,
        }
        if with_hint:
            e["hint"] = hint(st)
        return e
    e = {"path": text(path), "mode": mode & 0o7777, "uid": st.st_uid}
    if S_ISLNK(mode):
        try:
            e.update(type="symlink", target=os.readlink(path))
        except OSError:
            e.update(type="symlink", target=None)
    elif S_ISDIR(mode):
        e["type"] = "dir"
    else:
        e["type"] = "other"
    return e


def is_cache_pyc(path: str) -> bool:
    """``__pycache__`` files: judged by the pyc check, not by the seal diff, because the
    interpreter rewrites them legitimately (a regenerated pyc compiles from the same
    source to the same code)."""
    return path.endswith(".pyc") and path.rpartition(os.sep)[0].endswith(os.sep + "__pycache__")


def diff(
    sealed: dict[str, Entry],
    dirs: dict[str, os.stat_result],
    files: dict[str, os.stat_result],
    hashes: dict[str, tuple[str, int]],
) -> list[dict[str, Any]]:
    """Compare what was walked (and hashed) with the seal. Entries are only built for
    what changed: on an intact environment this is one pass of cheap comparisons."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for group in (dirs, files):
        for path, st in group.items():
            key = text(path)
            seen.add(key)
            if is_cache_pyc(key):
                continue
            was = sealed.get(key)
            digest = hashes.get(path)
            if was is None:
                if group is files:
                    now = entry_of(path, st, digest[0] if digest else None, None, False)
                    out.append(_added(key, now))
                continue
            mode = st.st_mode
            if (
                was.get("mode") == mode & 0o7777
                and was.get("uid") == st.st_uid
                and (
                    (S_ISREG(mode) and was.get("type") == "file" and was.get("size") == st.st_size
                     and digest is not None and was.get("sha256") == digest[0])
                    or (S_ISDIR(mode) and was.get("type") == "dir")
                    or (S_ISLNK(mode) and was.get("type") == "symlink"
                        and was.get("target") == _readlink(path))
                )
            ):  # fmt: skip
                continue
            now = entry_of(path, st, digest[0] if digest else None, None, False)
            changed = [k for k in COMPARED if was.get(k) != now.get(k)]
            if changed:
                out.append(_modified(key, was, now, changed))
    for key, was in sealed.items():
        if key not in seen and not is_cache_pyc(key):
            out.append(
                emit.finding(
                    emit.FILE_MISSING,
                    emit.severity_for(key, emit.HIGH, emit.MEDIUM),
                    f"{was.get('type', 'file')} in the seal is gone",
                    key,
                    source="seal",
                    sealed=_public(was),
                )
            )
    return out


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _added(path: str, now: Entry) -> dict[str, Any]:
    return emit.finding(
        emit.FILE_ADDED,
        emit.severity_for(path, emit.HIGH, emit.MEDIUM),
        f"{now['type']} is not in the seal",
        path,
        source="seal",
        now=_public(now),
    )


def _modified(path: str, was: Entry, now: Entry, changed: list[str]) -> dict[str, Any]:
    content = any(k in changed for k in ("type", "size", "sha256", "target"))
    return emit.finding(
        emit.FILE_MODIFIED,
        emit.severity_for(path) if content else emit.HIGH,
        f"{now['type']} differs from the seal: {', '.join(changed)} changed",
        path,
        source="seal",
        changed=changed,
        sealed={k: was.get(k) for k in changed},
        now={k: now.get(k) for k in changed},
    )


def _public(e: Entry) -> Entry:
    return {k: v for k, v in e.items() if k not in ("path", "hint")}
