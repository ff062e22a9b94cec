"""The recorder that stands where a loader's sampler stood.

``DataCheck`` replaces the object a ``DataLoader`` draws indices (or batches) from with
this proxy, whose ``__iter__`` goes through the check and everything else to the
original, so the loader, user code and frameworks see the sampler they built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SamplerProxy"]


class SamplerProxy:
    """Stands where the sampler stood; every use but ``__iter__`` goes to the original.

    ``__class__`` answers with the original's class so ``isinstance`` checks in user
    code and frameworks (accelerate looks for its sampler classes) keep working; pickling
    and copying produce the original, never the proxy.
    """

    __slots__ = ("_tg_inner", "_tg_watch")
    _tg_inner: Any
    _tg_watch: Callable[[Any], Iterator[Any]]

    def __init__(self, inner: Any, watch: Callable[[Any], Iterator[Any]]) -> None:
        object.__setattr__(self, "_tg_inner", inner)
        object.__setattr__(self, "_tg_watch", watch)

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:
        return type(self._tg_inner)

    def __iter__(self) -> Iterator[Any]:
        return self._tg_watch(self._tg_inner)

    def __len__(self) -> int:
        return len(self._tg_inner)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_tg_"):
            raise AttributeError(name)
        return getattr(self._tg_inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tg_inner, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._tg_inner, name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self._tg_inner.__reduce_ex__(protocol)

    def __repr__(self) -> str:
        return f"<trainguard recorder of {self._tg_inner!r}>"
