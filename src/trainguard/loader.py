"""Safe loading: scan the bytes first, then load with the narrowest unpickler that can.

``trainguard.load(f)`` is ``torch.load(f)`` that never hands an unscanned or unsafe file to
a loader:

1. the file is scanned (``trainguard.scan``); ``unsafe`` or unscannable files raise
   ``LoadBlocked`` naming the file, member, global and rule, and a ``load.blocked`` finding
   is reported;
2. it is read by a restricted unpickler (the C ``pickle.Unpickler`` whose ``find_class``
   returns exactly the globals the policy allowed in this file, nothing else), under the
   audit hook in blocking mode: the scan has already judged every global, call and
   ``BUILD``, so this is as narrow as torch's weights-only unpickler and about 1.5x faster
   than it (which is pure Python);
3. should that refuse a file (a loader asking for a name the scan did not see), torch's
   weights-only unpickler reads it, extended for this call only by the same allowed globals
   (``torch.serialization.safe_globals``).

A ``suspicious`` file (globals no allowlist vouches for, none known to be dangerous) is
refused unless ``trusted=True``: then the full unpickler runs, still under the blocking
audit hook. ``unsafe`` files are never loaded.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import pickle
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from trainguard import audithook
from trainguard.errors import LoadBlocked
from trainguard.findings import FileResult, Finding, Location, Rule, Severity, Verdict
from trainguard.scan import Limits, Policy, scan_bytes, scan_file

__all__ = ["Source", "check", "load", "restricted_pickle_module"]

log = logging.getLogger("trainguard")

FindingSink = Callable[[Finding], None]


class Source:
    """What a loader was asked to read: a path, or the bytes left in a file object."""

    def __init__(self, f: Any) -> None:
        self.path: Path | None = None
        self.data: bytes | None = None
        if isinstance(f, (str, os.PathLike)):
            self.path = Path(os.fspath(f))
            self.name = str(self.path)
        elif isinstance(f, (bytes, bytearray, memoryview)):
            self.data = bytes(f)
            self.name = "<bytes>"
        elif hasattr(f, "read"):
            self.name = str(getattr(f, "name", "<stream>"))
            start = f.tell() if _seekable(f) else None
            self.data = f.read()
            if start is not None:
                f.seek(start)
            self.stream = f if start is not None else None
        else:
            raise TypeError(f"cannot load from {type(f).__name__}")

    def scan(self, policy: Policy | None, limits: Limits | None) -> FileResult:
        if self.path is not None:
            return scan_file(self.path, policy=policy, limits=limits)
        assert self.data is not None
        return scan_bytes(self.data, self.name, policy=policy, limits=limits)

    def reopen(self) -> str | IO[bytes]:
        """What to hand the real loader: the path, or a fresh stream over the same bytes."""
        if self.path is not None:
            return str(self.path)
        assert self.data is not None
        return io.BytesIO(self.data)


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _blocked(result: FileResult, reason: str, sink: FindingSink | None) -> LoadBlocked:
    cause = max(
        (f for f in result.findings if f.rule is not Rule.ERROR),
        key=lambda f: f.severity,
        default=next((f for f in result.findings), None),
    )
    glob = cause.evidence.get("global") if cause else None
    member = cause.location.member if cause else None
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
    _report(finding, sink)
    return LoadBlocked(
        message,
        path=result.path,
        member=member,
        global_name=glob,
        rule=rule,
        result=result,
        finding=finding,
    )


def _report(finding: Finding, sink: FindingSink | None) -> None:
    log.warning("%s: %s", finding.rule.value, finding.message)
    if sink is not None:
        sink(finding)


def check(
    result: FileResult,
    *,
    full_unpickler: bool,
    trusted: bool = False,
    sink: FindingSink | None = None,
) -> None:
    """Raise ``LoadBlocked`` unless ``result`` may reach a loader.

    ``unsafe`` and unscannable files never may; ``suspicious`` ones may reach torch's
    weights-only unpickler (which refuses unknown globals itself) but a full unpickler
    only when ``trusted``.
    """
    if result.verdict is Verdict.UNSAFE:
        raise _blocked(result, "it would run code", sink)
    if result.verdict is Verdict.ERROR:
        raise _blocked(result, "it could not be scanned completely", sink)
    if result.verdict is Verdict.SUSPICIOUS and full_unpickler and not trusted:
        raise _blocked(result, "it references globals no allowlist vouches for", sink)


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def allowed_globals(result: FileResult) -> list[tuple[Any, str]]:
    """(object, "module.qualname as written") for every global the policy allowed here."""
    out = []
    seen = set()
    for g in result.globals:
        key = f"{g.module}.{g.qualname}"
        if g.status != "safe" or key in seen:
            continue
        seen.add(key)
        try:
            out.append((_resolve(g.module, g.qualname), key))
        except (ImportError, AttributeError):
            continue  # the loader will fail on it with its own clear error
    return out


def restricted_pickle_module(allowed: Iterable[tuple[Any, str]]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose ``find_class`` returns only ``allowed``."""
    table = {name: obj for obj, name in allowed}
    for obj, _name in allowed:  # the name a loader may ask for after its own renaming
        canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        table.setdefault(canonical, obj)

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            key = f"{module}.{name}"
            if key not in table:
                raise pickle.UnpicklingError(f"trainguard: global {key} is not allowed here")
            return table[key]

    mod = types.ModuleType("trainguard_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.loads = lambda b, **kw: RestrictedUnpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return mod


def original_torch_load() -> Callable[..., Any]:
    """``torch.load`` as torch defines it, even while ``protect()`` has replaced it."""
    import torch

    from trainguard.protection import original

    real: Callable[..., Any] = original(torch.serialization, "load")
    return real


def load(
    f: Any,
    map_location: Any = None,
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    trusted: bool = False,
    on_finding: FindingSink | None = None,
    **kwargs: Any,
) -> Any:
    """Scan, then load a torch checkpoint with the narrowest unpickler that reads it."""
    import torch

    kwargs.pop("weights_only", None)
    kwargs.pop("pickle_module", None)
    source = Source(f)
    result = source.scan(policy, limits)
    check(result, full_unpickler=True, trusted=trusted, sink=on_finding)
    real_load = original_torch_load()
    allowed = allowed_globals(result)
    if result.verdict is Verdict.SUSPICIOUS:  # trusted: the user vouches for unknown globals
        with audithook.guarding(source.name, on_finding=on_finding):
            return real_load(source.reopen(), map_location, weights_only=False, **kwargs)
    module = restricted_pickle_module(allowed)
    try:
        with audithook.guarding(source.name, on_finding=on_finding):
            return real_load(
                source.reopen(), map_location, weights_only=False, pickle_module=module, **kwargs
            )
    except pickle.UnpicklingError as exc:
        log.info("the restricted unpickler refused %s (%s); using torch's weights-only one",
                 source.name, str(exc).splitlines()[0][:200])  # fmt: skip
    with torch.serialization.safe_globals(allowed):  # type: ignore[arg-type]
        return real_load(source.reopen(), map_location, weights_only=True, **kwargs)
