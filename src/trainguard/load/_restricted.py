"""The first layer of every load: an unpickler that can only build what the scan allowed.

What this layer trusts, and nothing else:

* **the scan result for that file** (``FileResult.globals``, ``trainguard.scan``): every
  global each pickle in the file resolves, with the use it was judged for and its status;
* **the allowed table** built from it (``Allowed``): ``module``/``name`` exactly as written
  in the file -> the object, for globals whose status is ``safe`` (and, only when the
  caller passed ``trusted=True``, ``unknown``; never ``dangerous``). ``find_class`` returns
  from this table and nothing else, so a global the scan did not see or did not allow
  (a scanner miss, a parser differential) raises ``GlobalRefused`` naming it, instead of
  being imported. ``find_class`` sees the lookup only: how the object is then used
  (``REDUCE``, ``NEWOBJ``, ``BUILD`` run in C) is the scan's judgment, and the policy
  allows calls only of globals that are harmless to call;
* for ``torch.load(..., weights_only=True)``, **torch's own weights-only unpickler** (and
  the globals the caller added to it).

Every allowed global is resolved (its module imported) when the table is built, before the
audit window opens, so no import runs inside a load. The window itself (``window()``) is
the second layer, ``trainguard.load.audithook``.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import codecs
import contextlib
import contextvars
import importlib
import io
import logging
import os
import pickle
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from trainguard.errors import GlobalRefused, LoadBlocked, SuspiciousCallBlocked
from trainguard.findings import FileResult, Finding, Location, Rule, Severity, Verdict
from trainguard.load import _seal, audithook
from trainguard.scan import Limits, Policy, scan_bytes, scan_file

__all__ = [
    "Allowed",
    "GlobalRefused",
    "Source",
    "active",
    "check",
    "restricted_pickle_module",
    "scan_source",
    "window",
]

log = logging.getLogger("trainguard")

FindingSink = Callable[[Finding], None]
_CUnpickler = _pickle.Unpickler
_CODECS = ("ascii", "latin1", "utf-8")


class Source:
    """What a loader was asked to read: a path, or the bytes left in a file object."""

    def __init__(self, f: Any) -> None:
        self.path: Path | None = None
        self.data: bytes | None = None
        self.stream: Any = None
        if isinstance(f, (str, os.PathLike)):
            self.path = Path(os.fspath(f))
            self.name = str(self.path)
        elif isinstance(f, (bytes, bytearray, memoryview)):
            self.data = bytes(f)
            self.name = "<bytes>"
        elif hasattr(f, "read"):
            self.name = str(getattr(f, "name", "<stream>"))
            start = f.tell() if seekable(f) else None
            self.data = f.read()
            if start is not None:
                f.seek(start)
                self.stream = f
        else:
            raise TypeError(f"cannot load from {type(f).__name__}")

    def reopen(self) -> str | IO[bytes]:
        """What to hand the real loader: the path, or a fresh stream over the same bytes."""
        if self.path is not None:
            return str(self.path)
        assert self.data is not None
        return io.BytesIO(self.data)


def seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def scan_source(source: Source, policy: Policy | None, limits: Limits | None) -> FileResult:
    """The scan every load is judged by (the one place a test may pretend the scan missed)."""
    if source.path is not None:
        return scan_file(source.path, policy=policy, limits=limits)
    assert source.data is not None
    return scan_bytes(source.data, source.name, policy=policy, limits=limits)


def report(finding: Finding, sink: FindingSink | None) -> None:
    log.warning("%s: %s", finding.rule.value, finding.message)
    if sink is not None:
        sink(finding)


def _blocked(result: FileResult, reason: str, sink: FindingSink | None) -> LoadBlocked:
    cause = max(
        (f for f in result.findings if f.rule is not Rule.ERROR),
        key=lambda f: f.severity,
        default=next((f for f in result.findings), None),
    )
    glob = cause.evidence.get("global") if cause else None
    rule = cause.rule.value if cause else Rule.ERROR.value
    message = f"refused to load {result.path}: {reason}"
    if cause is not None:
        message += f" ({rule} at {cause.location}: {cause.message})"
    finding = Finding(
        Rule.LOAD_BLOCKED,
        Severity.HIGH,
        message,
        cause.location if cause else Location(result.path),
        {"cause": rule, "global": glob, "verdict": result.verdict.value},
    )
    report(finding, sink)
    return LoadBlocked(
        message,
        path=result.path,
        member=cause.location.member if cause else None,
        global_name=glob,
        rule=rule,
        result=result,
        finding=finding,
    )


def check(
    result: FileResult, *, full_unpickler: bool, trusted: bool, sink: FindingSink | None
) -> None:
    """Raise ``LoadBlocked`` unless ``result`` may reach a loader.

    ``unsafe`` and unscannable files never may; ``suspicious`` ones may reach torch's
    weights-only unpickler (which refuses unknown globals itself), ours only when
    ``trusted``."""
    if result.verdict is Verdict.UNSAFE:
        raise _blocked(result, "it would run code", sink)
    if result.verdict is Verdict.ERROR:
        raise _blocked(result, "it could not be scanned completely", sink)
    if result.verdict is Verdict.SUSPICIOUS and full_unpickler and not trusted:
        raise _blocked(result, "it references globals no allowlist vouches for", sink)


def _resolve(module: str, qualname: str) -> Any:
    """What a default ``find_class`` (``fix_imports=True``) would return, imported now."""
    if (module, qualname) in _compat_pickle.NAME_MAPPING:
        module, qualname = _compat_pickle.NAME_MAPPING[(module, qualname)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Allowed:
    """One file's allowed table: ``(module, name)`` as written -> object (see the module doc)."""

    def __init__(
        self, result: FileResult, *, trusted: bool = False, sink: FindingSink | None = None
    ) -> None:
        self.path = result.path
        self.result = result
        self.sink = sink
        self.table: dict[tuple[str, str], Any] = {}
        for codec in _CODECS:  # the unpickler's text decoding and _codecs.encode import these
            codecs.lookup(codec)
        statuses = ("safe", "unknown") if trusted else ("safe",)
        for g in result.globals:
            if g.status not in statuses or (g.module, g.qualname) in self.table:
                continue
            try:
                obj = _resolve(g.module, g.qualname)
            except (ImportError, AttributeError):
                continue  # refused by find_class, by name, like any other global
            self.table[(g.module, g.qualname)] = obj
            # the name a loader asks for after its own renaming (torch maps old modules)
            canonical = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
            if isinstance(canonical[0], str) and isinstance(canonical[1], str):
                self.table.setdefault((canonical[0], canonical[1]), obj)

    def find(self, module: str, name: str) -> Any:
        try:
            return self.table[(module, name)]
        except (KeyError, TypeError):
            raise self.refusal(module, name) from None

    def refusal(self, module: str, name: str) -> GlobalRefused:
        glob = f"{module}.{name}"
        seen = [g for g in self.result.globals if (g.module, g.qualname) == (module, name)]
        rule = Rule.UNKNOWN_GLOBAL if seen else Rule.DIFFERENTIAL
        why = f"judged {seen[0].status}" if seen else "not seen by the scan"
        message = f"refused to load {self.path}: global {glob} is not allowed here ({why})"
        finding = Finding(
            Rule.LOAD_BLOCKED,
            Severity.HIGH,
            message,
            Location(self.path),
            {"cause": rule.value, "global": glob, "verdict": self.result.verdict.value},
        )
        return GlobalRefused(
            message,
            path=self.path,
            global_name=glob,
            rule=rule.value,
            result=self.result,
            finding=finding,
        )

    def pickle_module(self) -> types.ModuleType:
        """A ``pickle_module`` for ``torch.load`` whose unpickler uses only this table."""
        return restricted_pickle_module(self)


_active: contextvars.ContextVar[Allowed | None] = contextvars.ContextVar(
    "trainguard_allowed", default=None
)


def active() -> Allowed | None:
    """The table of the protected load running in this context (nested loads share it)."""
    return _active.get()


@contextlib.contextmanager
def using(allowed: Allowed) -> Iterator[None]:
    token = _active.set(allowed)
    try:
        yield
    finally:
        _active.reset(token)


@contextlib.contextmanager
def window(allowed: Allowed) -> Iterator[None]:
    """The audit window around one unpickler run, sealed, refusals reported after it."""
    verify = _seal.snapshot()
    watch: audithook.Watch | None = None
    try:
        with using(allowed), audithook.guarding(allowed.path, on_finding=allowed.sink) as watch:
            yield
    except SuspiciousCallBlocked:
        raise
    except BaseException as exc:
        refused = audithook.refusal(watch) if watch is not None else None
        if refused is not None:  # the code that ran caught the refusal, then failed
            raise refused from exc
        if isinstance(exc, GlobalRefused) and exc.finding is not None:
            report(exc.finding, allowed.sink)
        raise
    else:
        refused = audithook.refusal(watch) if watch is not None else None
        if refused is not None:  # the code that ran caught the refusal: the load still fails
            raise refused
    finally:
        tampered = verify()
        if tampered:
            raise _seal.tampered(allowed.path, tampered, allowed.sink)


def restricted_pickle_module(allowed: Allowed) -> types.ModuleType:
    """A module with ``Unpickler``/``load``/``loads`` whose ``find_class`` is ``allowed``."""

    class RestrictedUnpickler(_CUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return allowed.find(module, name)

        def load(self) -> Any:
            with window(allowed):
                return super().load()

    def load(f: Any, **kw: Any) -> Any:
        return RestrictedUnpickler(f, **kw).load()

    def loads(data: bytes, **kw: Any) -> Any:
        return RestrictedUnpickler(io.BytesIO(data), **kw).load()

    mod = types.ModuleType("trainguard_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    mod.loads = loads  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return mod
