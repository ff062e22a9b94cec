"""Walking directory trees by ``lstat``: symlinks are entries, never followed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field


@dataclass
class Tree:
    files: dict[str, os.stat_result | None] = field(default_factory=dict)
    """Every non-directory entry (regular files, symlinks, sockets, ...), by path; None
    for regular files (by ``d_type``) when the walk was told not to ``lstat`` them."""
    dirs: dict[str, os.stat_result] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def walk(root: str, tree: Tree, skip: set[str], stat_files: bool = True) -> None:
    """Add everything under ``root`` to ``tree``; ``skip`` holds normalised directory paths
    not to enter (roots walked on their own, or site dirs the interpreter does not use).
    ``stat_files=False`` leaves the ``lstat`` of regular files to the hashing threads,
    whose ``fstat`` gives it without holding the GIL."""
    stack = [root]
    try:
        tree.dirs[root] = os.lstat(root)
    except OSError as exc:
        tree.errors[root] = f"{type(exc).__name__}: {exc.strerror or exc}"
        return
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as exc:
            tree.errors[current] = f"{type(exc).__name__}: {exc.strerror or exc}"
            continue
        for entry in entries:
            path = entry.path
            try:
                if not stat_files and entry.is_file(follow_symlinks=False):
                    tree.files[path] = None
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                tree.errors[path] = f"{type(exc).__name__}: {exc.strerror or exc}"
                continue
            if stat.S_ISDIR(st.st_mode):
                if os.path.normcase(path) in skip:
                    continue
                tree.dirs[path] = st
                stack.append(path)
            else:
                tree.files[path] = st


def normkey(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))
