"""runtime.monkeypatch: "library code" is what was loaded from a file that holds it now,
never the file name a code object claims (``compile(src, ".../torch/x.py", "exec")``)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks._codehash import SourceIndex
from trainguard.guard.checks.code import CodeCheck
from trainguard.guard.checks.code.origin import Origins

MONKEYPATCH = "runtime.monkeypatch"
_OPTIM = importlib.import_module("torch.optim.optimizer")


def _forged(name: str, namespace: dict[str, Any], file: str | None = None) -> types.FunctionType:
    """``def <name>(*args)``: a marker that returns its first argument, compiled so that
    its code names torch's functional.py."""
    source = f"def {name}(*args, **kwargs):\n    return args[0] if args else None\n"
    exec(compile(source, file or F.__file__, "exec"), namespace)
    fn = namespace[name]
    assert isinstance(fn, types.FunctionType)
    return fn


@contextlib.contextmanager
def _bound(owner: Any, name: str, value: Any) -> Iterator[None]:
    before = vars(owner)[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def _attach(verify: bool = False) -> tuple[Guard, CodeCheck]:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    check = CodeCheck(verify_source=verify)
    guard = Guard(net, opt, checks=[check], ledger=False)
    if verify:
        assert check.wait_verified(120)
    guard.close()
    return guard, check


def test_a_torch_name_bound_to_code_that_claims_a_torch_file() -> None:
    fake = _forged("relu", {"__name__": "torch.nn.functional"})
    with _bound(F, "relu", fake):
        guard, _ = _attach()
    assert [(a.step, a.finding.location.path) for a in guard.alerts] == [
        (0, "torch.nn.functional.relu")
    ]
    assert "not the namespace of an imported module" in guard.alerts[0].finding.message


def test_torch_source_executed_into_a_namespace_of_ones_own() -> None:
    """Genuine torch code, identical to the file, but its globals are a copy the attacker
    controls (``torch`` there could be anything)."""
    source = Path(F.__file__).read_text(encoding="utf-8")
    module = compile(source, F.__file__, "exec", dont_inherit=True)
    code = next(c for c in module.co_consts if getattr(c, "co_qualname", None) == "relu")
    namespace: dict[str, Any] = {**vars(F), "__name__": "torch.nn.functional"}
    namespace["relu"] = types.FunctionType(code, namespace, "relu", F.relu.__defaults__)
    copy = namespace["relu"]
    assert copy is not F.relu
    assert SourceIndex().verify(copy.__code__) == "ok"  # the very code torch's file holds
    with _bound(F, "relu", copy):
        guard, _ = _attach()
    assert [a.finding.location.path for a in guard.alerts] == ["torch.nn.functional.relu"]


def test_forged_code_in_the_real_module_namespace_fails_the_disk_comparison() -> None:
    """Globals, module and file all line up; only the file's bytes tell."""
    original = F.relu
    fake = _forged("relu_marker", vars(F))
    try:
        with _bound(F, "relu", fake):
            guard, _ = _attach(verify=True)
    finally:
        del F.relu_marker  # type: ignore[attr-defined]
    assert F.relu is original
    assert [a.finding.location.path for a in guard.alerts] == ["torch.nn.functional.relu"]


def test_a_hook_whose_code_claims_a_torch_file_is_an_alert() -> None:
    fake = _forged("hook", {"__name__": "torch.optim.optimizer"}, _OPTIM.__file__)
    handle = _OPTIM.register_optimizer_step_pre_hook(fake)
    try:
        guard, _ = _attach()
    finally:
        handle.remove()
    assert [a.finding.location.path for a in guard.alerts] == [
        "torch.optim.optimizer._global_optimizer_pre_hooks"
    ]


@dataclasses.dataclass
class _Point:
    x: int


class _Plain:
    pass


def test_generated_methods_are_verified_only_on_their_dataclass() -> None:
    origins = Origins(SourceIndex())
    init = _Point.__init__
    assert origins.of(init, _Point).verified
    assert not origins.of(init, _Plain).verified  # the same code on a class not a dataclass
    assert not origins.of(init).verified  # <string> code at large
    forged: dict[str, Any] = {}
    source = "def __create_fn__():\n    def __init__(self):\n        pass\n    return __init__\n"
    exec(compile(source, "<string>", "exec"), forged)
    impostor = forged["__create_fn__"]()
    _Point.__init__ = impostor  # type: ignore[method-assign]
    try:
        assert origins.of(impostor, _Plain).problem is not None
    finally:
        _Point.__init__ = init  # type: ignore[method-assign]


def test_torch_and_the_standard_library_are_verified_where_they_are() -> None:
    origins = Origins(SourceIndex())
    assert origins.of(F.dropout).kind == "torch"
    assert origins.of(F.dropout).verified
    assert origins.of(contextlib.contextmanager).kind == "stdlib"
    assert origins.of(contextlib.contextmanager).verified
    import os.path

    frozen = origins.of(os.path.join)  # <frozen posixpath> in a standard build
    assert frozen.verified and frozen.kind == "stdlib"
