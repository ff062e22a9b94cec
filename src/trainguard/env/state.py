"""Where trainguard keeps what it must trust later (first-use seals, ``.pyc`` verdicts), and
the one rule that decides whether such a file can be trusted at all.

The folder is ``$TRAINGUARD_STATE_DIR``, else ``$XDG_STATE_HOME/trainguard``, else
``~/.local/state/trainguard``: outside every Python environment, so the insider who can
write the shared environment cannot write there. That is checked, never assumed:
``why_unsafe(path)`` walks the file and every folder above it up to ``/`` and refuses any
that someone other than this user (or root) owns or could write (a folder writable by
others is accepted only with the sticky bit, as ``/tmp`` has it, where others cannot
rename or delete what they do not own; group write only for a group that holds no one
else). Whoever could write any of them could swap the file, so a file that fails is not
used.

*What this trusts:* the user's own account and root. A job run by this same user can
write here; the seal of a run records its Merkle root in the ledger, and an admin who
needs more pins a signed seal (``--seal``/``--seal-key``) whose key the job cannot read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = ["STATE_ENV", "ensure_private_dir", "state_dir", "why_unsafe"]

STATE_ENV = "TRAINGUARD_STATE_DIR"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$TRAINGUARD_STATE_DIR``, ``$XDG_STATE_HOME/trainguard``, ``~/.local/state/trainguard``
    (XDG base directory spec: a relative ``XDG_STATE_HOME`` is ignored)."""
    env = os.environ if environ is None else environ
    explicit = env.get(STATE_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = env.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "trainguard"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "trainguard"


def _own_group_only(gid: int, uid: int) -> bool:
    """A group nobody but this user is in (the usual per-user private group)."""
    try:
        import grp
        import pwd
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        group = grp.getgrgid(gid)
        me = pwd.getpwuid(uid)
    except KeyError:
        return False
    if me.pw_gid != gid or any(member != me.pw_name for member in group.gr_mem):
        return False
    return not any(p.pw_gid == gid and p.pw_uid != uid for p in pwd.getpwall())


def _owner_ok(st: os.stat_result, uid: int) -> bool:
    return st.st_uid in (uid, 0)


def _mode_problem(path: str, st: os.stat_result, uid: int, child_owned: bool) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH and not (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX):
        return f"{path} is writable by everyone (mode {mode:o})"
    if mode & stat.S_IWOTH and not child_owned:
        return f"{path} is writable by everyone and what it holds is not this user's"
    if mode & stat.S_IWGRP and not _own_group_only(st.st_gid, uid):
        if stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and child_owned:
            return None
        return f"{path} is writable by its group (gid {st.st_gid}, mode {mode:o})"
    return None


def why_unsafe(path: str | os.PathLike[str], *, uid: int | None = None) -> str | None:
    """Why someone other than ``uid`` (default: this process's) or root could replace
    ``path``, or None when no one could. Checks both the path as written and its real
    path (a link's target is what is read). A missing file is "unsafe" too: say why."""
    me = os.geteuid() if uid is None else uid
    seen: set[str] = set()
    for start in (os.path.abspath(path), os.path.realpath(path)):
        current = start
        child_owned = True
        while current not in seen:
            seen.add(current)
            try:
                st = os.lstat(current)
            except OSError as exc:
                return f"cannot check {current}: {exc.strerror or exc}"
            if not stat.S_ISLNK(st.st_mode):  # a link cannot be changed, only replaced
                if not _owner_ok(st, me):
                    return f"{current} belongs to uid {st.st_uid}, not to uid {me} or root"
                problem = _mode_problem(current, st, me, child_owned)
                if problem is not None:
                    return problem
            child_owned = _owner_ok(st, me)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return None


def ensure_private_dir(path: Path) -> str | None:
    """Create ``path`` (mode 0700, parents too) if needed; then ``why_unsafe`` of it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror or exc}"
    return why_unsafe(path)
