"""One top-level file's scan: dispatch by content, recursion into members, findings.

``FileScan`` is handed to every container reader. Readers call ``scan_window`` for each part
that a real loader would read, ``scan_pickles`` for pickle streams, and ``add``/``fail`` to
report. A ``ScanError`` inside one member is recorded and the scan goes on with the next
member, so a payload elsewhere in the file is still found.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import (
    FileResult,
    Finding,
    GlobalRecord,
    Location,
    Rule,
    Severity,
    verdict_of,
)
from trainguard.scan import allowlists
from trainguard.scan.feed import FrameFeed, MemoryFeed, memory_cap, open_feed
from trainguard.scan.judge import LITERAL_GETATTR, Recorder, StreamResult, judge_stream
from trainguard.scan.limits import Budget, Limits
from trainguard.scan.policy import Policy, Status, canonical
from trainguard.scan.uses import Use
from trainguard.scan.window import Window

__all__ = ["ARG_USES", "FileScan"]

# Allowed callables whose arguments name further globals, and how those are used.
ARG_USES: dict[str, dict[int, Use]] = {
    # _reconstructor(cls, base, state) runs base.__init__(obj, state) unless base is object
    "copyreg._reconstructor": {0: Use.NEW, 1: Use.CALL},
    "torch._tensor._rebuild_from_type_v2": {0: Use.CALL, 1: Use.NEW},
    "torch._utils._rebuild_wrapper_subclass": {0: Use.NEW},
    "numpy._core.multiarray._reconstruct": {0: Use.NEW},
    "numpy.core.multiarray._reconstruct": {0: Use.NEW},
    "numpy.ma.core._mareconstruct": {0: Use.NEW, 1: Use.NEW},
    "pandas.core.indexes.base._new_Index": {0: Use.NEW},
    "collections.defaultdict": {0: Use.CALL},
    "numpy.random._pickle.__bit_generator_ctor": {0: Use.NEW},
    # the ctors call their second argument to build the bit generator
    "numpy.random._pickle.__generator_ctor": {0: Use.NEW, 1: Use.CALL},
    "numpy.random._pickle.__randomstate_ctor": {0: Use.NEW, 1: Use.CALL},
    # cls.from_arrays(**d) / cls.__new__(cls)
    "pandas.core.indexes.interval._new_IntervalIndex": {0: Use.NEW},
    "sklearn.metrics._dist_metrics.newObj": {0: Use.NEW},
    "sklearn.neighbors._kd_tree.newObj": {0: Use.NEW},
    "sklearn.neighbors._ball_tree.newObj": {0: Use.NEW},
}


class FileScan:
    """State for one top-level file: findings, budget, what was read."""

    def __init__(
        self, path: Path, display: str, policy: Policy, limits: Limits, *, base: Any = None
    ) -> None:
        self.path = path
        self.display = display
        self.policy = policy
        self.limits = limits
        self.budget = Budget(limits)
        self.findings: list[Finding] = []
        self.globals: list[GlobalRecord] = []
        self.complete = True
        self.members: list[str] = []
        self.windows: list[Window] = []
        self.kind: str | None = None
        """A more precise top-level format name set by the reader (``joblib``, ...)."""
        self._sha256: str | None = None
        self._judged: dict[tuple[str | None, str], Use] = {}
        self._emitted: set[tuple[Rule, str, str | None]] = set()
        self.cache: dict[Any, Any] = {}
        """Readers' parses of one window, shared between the views of it (``zipped``)."""
        self._base = base

    # -- reporting ---------------------------------------------------------------------
    def add(
        self,
        rule: Rule,
        severity: Severity,
        message: str,
        member: str | None = None,
        offset: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        loc = Location(self.display, member, offset)
        self.findings.append(Finding(rule, severity, message, loc, evidence or {}))

    def fail(self, exc: ScanError, member: str | None) -> None:
        """Record that a part could not be scanned to the end."""
        self.complete = False
        where = exc.member or member
        kind = "limit" if isinstance(exc, LimitExceeded) else "error"
        self.add(Rule.ERROR, Severity.MEDIUM, exc.message, where, exc.offset, {"kind": kind})

    def file_sha256(self) -> str | None:
        if self._sha256 is None and self.policy.needs_file_hash:
            import hashlib

            h = hashlib.sha256()
            with open(self.path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    # -- dispatch ----------------------------------------------------------------------
    def window(self, base: Any, start: int = 0, length: int | None = None) -> Window:
        win = Window(base, start, length, max_line=self.limits.max_line)
        self.windows.append(win)
        return win

    def scan_window(self, win: Window, member: str | None, depth: int, *, top: bool = False) -> str:
        """Detect the format of ``win`` by content and scan it. Returns the format name."""
        from trainguard.scan.containers import detect, handler

        if member is not None:
            self.members.append(member)
            if len(self.members) > self.limits.max_members:
                raise LimitExceeded(f"more than {self.limits.max_members} members", member=member)
        if depth > self.limits.max_depth:
            self.fail(ScanError(f"nesting deeper than {self.limits.max_depth}"), member)
            return "nested"
        self.budget.check_time()
        fmt = detect(win)
        try:
            with memory_cap(self.limits) if top else contextlib.nullcontext():
                handler(fmt)(self, win, member, depth, top)
        except LimitExceeded as exc:
            self.fail(exc, member)
        except ScanError as exc:
            self.fail(exc, member)
        except (OSError, EOFError, ValueError, MemoryError, RecursionError) as exc:
            self.fail(ScanError(f"{type(exc).__name__}: {exc}"), member)
        except Exception as exc:  # noqa: BLE001 - a reader bug must not lose the other results
            self.fail(
                ScanError(f"internal error while reading ({type(exc).__name__}: {exc})"), member
            )
        return fmt

    def scan_bytes(self, data: bytes, member: str, depth: int) -> str:
        return self.scan_window(self.window(io.BytesIO(data)), member, depth)

    # -- pickles -----------------------------------------------------------------------
    def scan_pickle(
        self,
        win: Window,
        member: str | None,
        depth: int,
        view: str = "pickle",
        *,
        strict: bool = True,
    ) -> StreamResult:
        """One pickle stream from the window's position, as the loader of ``view`` reads it.

        Every global the unpickler resolved is judged even when the stream breaks half-way
        (the real loader has run everything before the break); with ``strict`` the break is
        then raised as a ``ScanError`` for the container to record.
        """
        feed = open_feed(win, self.budget, view)

        def emit(rule: Rule, sev: Severity, msg: str, off: int | None, ev: dict[str, Any]) -> None:
            seen = (rule, msg, member)
            if view == "joblib" and seen in self._emitted:
                return  # the pickle view of the same bytes reported it already
            self._emitted.add(seen)
            self.add(rule, sev, msg, member, off, ev)

        def nested(data: bytes, off: int | None, via: str) -> None:
            label = f"{member or ''}@{off}<{via}>".lstrip("@")
            self.scan_bytes(data, label, depth + 1)

        rec = Recorder(
            emit=emit,
            nested=nested,
            arg_uses=ARG_USES,
            loaders=allowlists.LOADER_FUNCTIONS,
            where=feed.tell,
            check_time=self.budget.check_time,
        )
        try:
            if view == "joblib":
                from trainguard.scan.judge_joblib import judge_joblib

                res = judge_joblib(feed, rec)
            else:
                res = judge_stream(feed, rec, view)
        finally:
            if isinstance(feed, MemoryFeed) or (
                isinstance(feed, FrameFeed) and feed.src is not win
            ):
                win.seek(feed.tell())
        self._judge_globals(res, member)
        if strict:
            self.settle(res, member)
        return res

    def settle(self, res: StreamResult, member: str | None) -> None:
        """The stream's break counts: report what it means and raise it."""
        if res.error is None:
            return
        for rule, sev, msg, ev in res.diverged:
            self.add(rule, sev, msg, member, res.error.offset, ev)
        raise res.error

    def _judge_globals(self, res: StreamResult, member: str | None) -> None:
        digest = self.file_sha256()
        for g in res.globals.values():
            if g.key == "builtins.getattr" and g.uses == Use.REF and LITERAL_GETATTR in g.how:
                continue  # only ever getattr(<global>, "name"): judged as that global
            seen = self._judged.get((member, g.key))
            if seen is not None and g.uses.worst <= seen:
                continue  # the same global, used no worse, in another view of these bytes
            self._judged[(member, g.key)] = g.uses.worst
            j = self.policy.judge(g.module, g.name, g.uses, digest)
            worst = g.uses.worst
            name = ".".join(canonical(g.module, g.name))
            self.globals.append(
                GlobalRecord(
                    name,
                    g.written_module,
                    g.written_name,
                    member,
                    worst.label,
                    j.status.value,
                    j.reason,
                    g.offsets[0] if g.offsets else None,
                )
            )
            if j.status is Status.SAFE:
                continue
            shown = name if g.raw == name else f"{name} (written {g.raw})"
            evidence = {
                "global": name,
                "as_written": g.raw,
                "use": worst.label,
                "how": sorted(g.how),
                "offsets": g.offsets,
                "count": g.count,
                "reason": j.reason,
            }
            if g.example_args:
                evidence["args"] = g.example_args
            offset = g.offsets[0] if g.offsets else None
            if j.status is Status.DANGEROUS:
                self.add(
                    Rule.CODE_EXECUTION,
                    Severity.CRITICAL,
                    f"{shown} ({worst.label}): {j.reason}",
                    member,
                    offset,
                    evidence,
                )
                continue
            if j.expired is not None:
                exp = j.expired
                self.add(
                    Rule.POLICY_EXPIRED,
                    Severity.MEDIUM,
                    f"allowlist entry {exp.pattern} ({exp.source}) expired on {exp.expires}",
                    member,
                    offset,
                    {"global": name, "entry": exp.to_json()},
                )
            sev = Severity.HIGH if worst is Use.CALL else Severity.MEDIUM
            self.add(
                Rule.UNKNOWN_GLOBAL,
                sev,
                f"{shown} is not allowlisted ({worst.label}): {j.reason}",
                member,
                offset,
                evidence,
            )

    # -- result ------------------------------------------------------------------------
    def result(self, fmt: str) -> FileResult:
        findings = tuple(self.findings)
        return FileResult(
            path=self.display,
            format=self.kind or fmt,
            verdict=verdict_of(findings, self.complete),
            findings=findings,
            complete=self.complete,
            bytes_read=sum(w.bytes_read for w in self.windows),
            members=tuple(self.members),
            globals=tuple(self.globals),
        )
