"""The state of one probe run and its steps; ``main.execute`` decides their order.

Every importable file is hashed on every run; the only shortcut is ``fast`` with a seal,
for files that are not code, and it is reported in the notes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from typing import Any

from . import emit, hooks, inventory, records
from .hashing import HashRun, digest_file
from .layout import Layout, discover
from .tree import Tree, normkey, walk

Progress = Callable[[str, int, int], None]


class Job:
    def __init__(self, req: dict[str, Any], progress: Progress) -> None:
        self.req = req
        self.progress = progress
        self.workers = int(req.get("workers") or os.cpu_count() or 2)
        self.layout: Layout = discover()
        self.findings: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.checked: dict[str, int] = {}
        self.hashes: dict[str, tuple[str, int]] = {}
        self.hash_errors: dict[str, str] = {}
        self.stats: dict[str, os.stat_result] = {}
        self.trees: dict[str, Tree] = {}
        self.all_dists: list[records.Dist] = []
        self.dists: list[records.Dist] = []
        self.owned: dict[str, records.Dist] = {}
        self.sealed: dict[str, dict[str, Any]] | None = None
        blob = req.get("pyc_cache")
        self.cache: set[str] | None = None
        """Verdict keys known good (hex), or None when the parent keeps no cache."""
        if isinstance(blob, str):
            self.cache = {blob[i : i + 64] for i in range(0, len(blob), 64)}

    @property
    def sealing(self) -> bool:
        """Making a seal, or comparing with one: every file under every root matters."""
        return self.req["mode"] == "seal" or self.req.get("seal") is not None

    @property
    def whole_env(self) -> bool:
        return not self.req.get("distributions") and not self.req.get("record_only")

    # -- metadata ---------------------------------------------------------------------------

    def load_metadata(self) -> None:
        wanted = self.req.get("distributions")
        only = {records.normalize(w) for w in wanted} if wanted else None
        self.all_dists = records.find_dists(self.layout.site_dirs, only)
        self.owned = {e.path: d for d in self.all_dists for e in d.entries}
        self.dists = self.all_dists
        for name in sorted((only or set()) - {records.normalize(d.name) for d in self.dists}):
            self.findings.append(
                emit.finding(emit.ERROR, emit.HIGH, f"{name} is not installed", name)
            )

    def parse_seal(self, lines: bytes) -> None:
        """All entry lines in one ``json.loads`` (a line at a time costs twice as much);
        only when that fails, line by line to name the bad one."""
        try:
            entries = json.loads(b"[" + b",".join(lines.split(b"\n")) + b"]") if lines else []
            self.sealed = {e["path"]: e for e in entries}
            return
        except (ValueError, KeyError, TypeError):
            pass
        self.sealed = {}
        for number, line in enumerate(lines.split(b"\n"), 2):
            try:
                e = json.loads(line)
                self.sealed[e["path"]] = e
            except (ValueError, KeyError, TypeError):
                self.findings.append(
                    emit.finding(
                        emit.SEAL_INVALID,
                        emit.CRITICAL,
                        f"seal line {number} is not a seal entry",
                        str(self.req["seal"].get("path")),
                        member=f"line {number}",
                    )
                )

    # -- walking ----------------------------------------------------------------------------

    def roots(self) -> list[str]:
        lay = self.layout
        roots = lay.site_dirs + lay.pth_dirs
        if self.sealing:
            roots = roots + lay.stdlib_dirs + ([lay.bin_dir] if lay.bin_dir else [])
            roots += (self.req.get("seal") or {}).get("roots", [])
        elif not self.whole_env:
            return []
        out: list[str] = []
        for r in roots:
            r = os.path.normpath(r)
            if r not in out and os.path.isdir(r):
                out.append(r)
        return out

    def walk(self, stat_files: bool = True) -> dict[str, os.stat_result | None]:
        """Walk every root; return every non-directory entry with its ``lstat`` (None for
        regular files when ``stat_files`` is False: see ``resolve``)."""
        roots = self.roots()
        skip = {normkey(r) for r in roots}
        # The site dirs of a standard library (this one, or a sealed one it moved from)
        # are roots of their own when in use, and not part of the environment when not.
        for d in self.layout.stdlib_dirs + roots:
            for name in ("site-packages", "dist-packages"):
                skip.add(normkey(os.path.join(d, name)))
        files: dict[str, os.stat_result | None] = {}
        for root in roots:
            tree = Tree()
            walk(root, tree, skip - {normkey(root)}, stat_files)
            self.trees[root] = tree
            files.update(tree.files)
            for path, err in tree.errors.items():
                self.findings.append(
                    emit.finding(emit.ERROR, emit.HIGH, f"cannot list: {err}", path)
                )
        if self.sealing:
            singles = self.layout.single_files + (self.req.get("seal") or {}).get("files", [])
            for f in singles:
                if f not in files:
                    with contextlib.suppress(OSError):
                        files[f] = os.lstat(f)
        return files

    def resolve(self, files: dict[str, os.stat_result | None]) -> dict[str, os.stat_result]:
        """Fill in the stats the walk left out: the hashing threads' ``fstat`` (taken with
        ``O_NOFOLLOW``, so it is the ``lstat``), else an ``lstat`` now; drop what vanished."""
        out: dict[str, os.stat_result] = {}
        for path, st in files.items():
            if st is None:
                st = self.stats.get(path)
                if st is None:
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
            out[path] = st
        return out

    # -- hashing ----------------------------------------------------------------------------

    def plan_all(self, files: dict[str, os.stat_result]) -> list[tuple[str, int]]:
        """Every regular file, less (``fast`` with a parsed seal) data files whose stat
        hint matches the seal: those take the sealed hash, and the notes say so."""
        plan = [(p, st.st_size) for p, st in files.items() if stat.S_ISREG(st.st_mode)]
        if not (self.req.get("fast") and self.sealed is not None):
            return plan
        keep: list[tuple[str, int]] = []
        for path, size in plan:
            was = self.sealed.get(path)
            if (
                was
                and was.get("sha256")
                and was.get("size") == size
                and not emit.is_code(path)
                and was.get("hint") == inventory.hint(files[path])
            ):
                self.hashes[path] = (was["sha256"], size)
            else:
                keep.append((path, size))
        skipped = len(plan) - len(keep)
        self.checked["skipped_by_hint"] = skipped
        self.notes.append(
            f"fast: {skipped} file(s) that are not code were not hashed because size, "
            "mtime and inode match the seal (a stat hint, which can be forged)"
        )
        return keep

    def plan_sealed(self) -> list[tuple[str, int]]:
        """The seal's regular files with their sealed sizes (a file since removed or
        replaced fails to open and is judged by the diff)."""
        assert self.sealed is not None
        return [
            (p, int(e.get("size") or 0)) for p, e in self.sealed.items() if e.get("type") == "file"
        ]

    def plan_records(self, planned: set[str]) -> list[tuple[str, int]]:
        """RECORD files with a sha256 that ``planned`` does not already cover."""
        out: list[tuple[str, int]] = []
        for d in self.dists:
            for e in d.entries:
                if (
                    e.digest is not None
                    and e.algo == "sha256"
                    and e.path not in planned
                    and e.path not in self.hashes  # given by a stat hint (fast)
                ):
                    try:
                        out.append((e.path, os.stat(e.path).st_size))
                    except OSError:
                        continue
                    planned.add(e.path)
        return out

    def plan_walked(self, raw: dict[str, os.stat_result | None]) -> list[tuple[str, int]]:
        """Every regular file walked. Sizes are known only for shared libraries (stat'ed
        here, so the largest start first); the hashing threads' ``fstat`` gives the rest."""
        out: list[tuple[str, int]] = []
        for path, st in raw.items():
            if st is not None:
                if stat.S_ISREG(st.st_mode):
                    out.append((path, st.st_size))
                continue
            size = 0
            if emit.is_code(path) and not path.endswith((".py", ".pyc", ".pth")):
                with contextlib.suppress(OSError):
                    size = os.lstat(path).st_size
            out.append((path, size))
        return out

    def plan_pycs(
        self, items: list[tuple[str, str, int]], planned: set[str]
    ) -> list[tuple[str, int]]:
        """The pycs to check and their sources not hashed yet, for the verdict cache."""
        out: list[tuple[str, int]] = []
        for pyc, source, _ in items:
            for path in (pyc, source):
                if path not in planned:
                    planned.add(path)
                    out.append((path, 0))
        return out

    def collect(self, run: HashRun) -> None:
        results, errors = run.join(lambda done: self.progress("hash", done, run.total))
        self.hashes.update(results)
        self.stats.update(run.stats)
        self.hash_errors.update(errors)
        self.checked["files_hashed"] = self.checked.get("files_hashed", 0) + len(results)
        self.checked["bytes_hashed"] = self.checked.get("bytes_hashed", 0) + sum(
            size for _, size in results.values()
        )

    def lookup(self, path: str, algo: str) -> tuple[str, int] | None:
        if algo == "sha256" and path in self.hashes:
            return self.hashes[path]
        try:
            got = digest_file(path, algo)
        except OSError:
            return None
        if algo == "sha256":
            self.hashes[path] = got
        return got

    def vouched_by_seal(self, pyc: str, source: str) -> bool:
        """A pyc whose bytes and whose source's bytes both match the seal was compared at
        sealing time (``seal`` compile-checks before it writes)."""
        assert self.sealed is not None
        for path in (pyc, source):
            was, now = self.sealed.get(path), self.hashes.get(path)
            if was is None or now is None or was.get("sha256") != now[0]:
                return False
        return True

    # -- checks -----------------------------------------------------------------------------

    def added(self, files: dict[str, os.stat_result]) -> None:
        """Files under site dirs that no RECORD lists (pyc are judged by the pyc check)."""
        norecord = tuple(d.dist_info + os.sep for d in self.all_dists if d.record is None)
        count = 0
        for site_dir in self.layout.site_dirs:
            tree = self.trees.get(site_dir)
            if tree is None:
                continue
            for path in tree.files:
                st = files.get(path)
                if st is None:
                    continue
                count += 1
                if path in self.owned or inventory.is_cache_pyc(path):
                    continue
                if norecord and path.startswith(norecord):
                    continue
                kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "file"
                self.findings.append(
                    emit.finding(
                        emit.FILE_ADDED,
                        emit.severity_for(path, emit.HIGH, emit.MEDIUM),
                        f"{kind} in site-packages that no distribution's RECORD lists",
                        path,
                        size=st.st_size,
                    )
                )
        self.checked["site_files"] = count

    def hooks(self) -> None:
        lay = self.layout
        found, n = hooks.check_pth(lay.pth_files, self.owned)
        self.findings += found
        self.checked["pth"] = n
        early = [p for p in (self.req.get("pythonpath") or "").split(os.pathsep) if p]
        dirs = [(os.path.abspath(p), True) for p in early]
        dirs += [(d, False) for d in lay.site_dirs + lay.pth_dirs]
        self.findings += hooks.check_path_dirs(lay.stdlib_dirs, dirs)
        by_info = {d.dist_info: d for d in self.all_dists}
        metas = hooks.metadata_dirs([d for d, _ in dirs] + lay.stdlib_dirs)
        self.findings += hooks.check_entry_points([(m, by_info.get(m)) for m in metas])

    def entries(self, files: dict[str, os.stat_result]) -> dict[str, dict[str, Any]]:
        """Seal entries of everything walked (``hint`` only when writing a seal)."""
        out: dict[str, dict[str, Any]] = {}
        with_hint = self.req["mode"] == "seal"
        for tree in self.trees.values():
            for path, st in tree.dirs.items():
                out[inventory.text(path)] = inventory.entry_of(path, st, None, None, False)
        for path, st in files.items():
            if path in self.hash_errors:
                continue
            owner = self.owned.get(path)
            digest = self.hashes.get(path)
            out[inventory.text(path)] = inventory.entry_of(
                path, st, digest[0] if digest else None, owner.label if owner else None, with_hint
            )
        return out
