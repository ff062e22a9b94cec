"""The optimizer's state as the last step left it, for the state check.

Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, SGD's ``momentum_buffer`` and the
``step`` counts decide the next update as much as the weights do, and nothing honest
writes them between two optimizer steps: ``zero_grad`` leaves them alone, a GradScaler
that skips an overflowing step never calls ``step`` (or, fused, calls it and changes
nothing), ``load_state_dict`` is the user's own (inside ``guard.authorized()``). So the
structure seen right after a step (``walk``: which parameters have state, which keys,
which tensor objects at which address and autograd version, which plain values) must be
exactly what the next step finds; the tensors' contents are fingerprinted by the state
check (``state.py``).

Trusted: ``optimizer.state`` maps parameters to dicts of tensors, plain values and
lists of tensors (LBFGS); other objects in it are compared by identity only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainguard.guard.checks.state_model import freeze, shown

__all__ = ["Fault", "Walk", "faults", "refresh", "walk"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One difference between the state after a step and before the next."""

    where: str
    what: str
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Walk:
    """The optimizer's state right after a step."""

    state: Any  # the ``optimizer.state`` object itself
    entries: tuple[tuple[str, Any, Any, tuple[tuple[str, Any, Any], ...]], ...]
    tensors: list[tuple[str, Any]]  # every state tensor once, named "param.key"
    idents: list[tuple[int, int]]  # (data_ptr, _version) of each of ``tensors``
    dicts: tuple[tuple[Any, Any, int], ...] = ()  # (param, its state dict, key count)
    values: tuple[tuple[Any, Any, Any], ...] = ()  # (state dict, key, value) but lists
    lists: tuple[tuple[Any, Any, Any], ...] = ()  # (state dict, key, image) of lists

    def signature(self) -> tuple[int, ...]:
        """Which tensor objects, at which addresses: a snapshot plan holds for as long as
        this stays the same."""
        return tuple(id(t) for _, t in self.tensors) + tuple(p for p, _ in self.idents)


def walk(optimizer: Any, names: dict[int, str]) -> Walk:
    """Read ``optimizer.state`` (``names``: parameter id -> the model's name)."""
    import torch

    state = optimizer.state
    entries = []
    tensors: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for i, (p, st) in enumerate(list(state.items())):
        pname = names.get(id(p), f"state[{i}]")
        items = []
        for key, value in list(st.items()):
            items.append((key, value, _image(value)))
            parts = value if isinstance(value, list | tuple) else [value]
            for j, t in enumerate(parts):
                if isinstance(t, torch.Tensor) and id(t) not in seen and t.numel():
                    seen.add(id(t))
                    tag = f"[{j}]" if parts is value else ""
                    tensors.append((f"{pname}.{key}{tag}", t))
        entries.append((pname, p, st, tuple(items)))
    dicts = tuple((p, st, len(items)) for _, p, st, items in entries)
    values = tuple(
        (st, k, v) for _, _, st, items in entries for k, v, _ in items if not isinstance(v, list)
    )
    lists = tuple(
        (st, k, im) for _, _, st, items in entries for k, v, im in items if isinstance(v, list)
    )
    return Walk(state, tuple(entries), tensors, _idents(tensors), dicts, values, lists)


def _idents(tensors: list[tuple[str, Any]]) -> list[tuple[int, int]]:
    return [(t.data_ptr(), t._version) for _, t in tensors]


def refresh(optimizer: Any, last: Walk) -> Walk | None:
    """``last`` with the addresses and versions read anew when the structure is still
    ``last``'s (the same dicts, keys and objects, as after every step but the first);
    None when it is not (then ``walk`` again)."""
    if not _same(optimizer.state, last):
        return None
    w = last
    return Walk(w.state, w.entries, w.tensors, _idents(w.tensors), w.dicts, w.values, w.lists)


def faults(optimizer: Any, last: Walk) -> list[Fault]:
    """What differs now from ``last`` (the state the last step left)."""
    state = optimizer.state
    if state is not last.state:
        return [Fault("optim:state", "optimizer.state was replaced by another object", {})]
    out = [] if _same(state, last) else _structure(state, last)
    now = _idents(last.tensors)
    if now == last.idents:
        return out
    for (name, _), (ptr, version), (now_ptr, now_version) in zip(
        last.tensors, last.idents, now, strict=True
    ):
        if now_ptr != ptr:
            out.append(Fault(f"optim:{name}", f"{name}: storage replaced (.data = ..., set_)", {}))
        elif now_version != version:
            out.append(Fault(f"optim:{name}", f"{name}: written in place", {}))
    return out


def _same(state: Any, last: Walk) -> bool:
    """The same dicts holding the same keys and objects (by identity): the common case,
    read without building anything."""
    if state is not last.state or len(state) != len(last.dicts):
        return False
    get = state.get
    return (
        all(get(p) is st and len(st) == n for p, st, n in last.dicts)
        and all(st.get(k, _GONE) is v for st, k, v in last.values)
        and all(_image(st.get(k, _GONE)) == im for st, k, im in last.lists)
    )


def _structure(state: Any, last: Walk) -> list[Fault]:
    """Each difference of structure, named (something changed: ``_same`` said so)."""
    out: list[Fault] = []
    known = {id(p) for _, p, _, _ in last.entries}
    for i, p in enumerate(list(state)):
        if id(p) not in known:
            out.append(Fault(f"optim:state[{i}]", "state appeared for a parameter", {}))
    for pname, p, st, items in last.entries:
        now = state.get(p)
        if now is not st:
            how = "was removed" if now is None else "was replaced by another dict"
            out.append(Fault(f"optim:{pname}", f"the state of {pname} {how}", {}))
            continue
        keys = {k for k, _, _ in items}
        for key in [k for k in now if k not in keys]:
            out.append(Fault(f"optim:{pname}.{key}", f"state key {key} appeared", {}))
        for key, value, image in items:
            cur = now.get(key, _GONE)
            if cur is value and not isinstance(value, list):
                continue
            if cur is _GONE or _image(cur) != image:
                out.append(
                    Fault(
                        f"optim:{pname}.{key}",
                        f"{pname}.{key} was replaced ({shown(value)} -> {shown(cur)})"
                        if not hasattr(value, "data_ptr")
                        else f"{pname}.{key} was replaced by another tensor",
                        {"key": key},
                    )
                )
    return out


_GONE = object()


def _image(value: Any) -> Any:
    """What must stay the same: tensor objects by identity, plain values by value."""
    if hasattr(value, "data_ptr"):
        return ("tensor", id(value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_image(v) for v in value))
    frozen = freeze(value)
    return frozen if isinstance(frozen, tuple) else ("object", id(value))
