"""The class table: the only names a wildcard entry under a known package can match.

``sklearn.*`` means "the classes scikit-learn defines", not "any capitalised name that can be
looked up in a scikit-learn module": modules re-export what they import, so
``sklearn.callback._transport.Client`` is ``multiprocessing.connection.Client`` and
``pandas.io.common.TextIOWrapper`` is ``io.TextIOWrapper``. Telling the two apart at scan
time would mean importing the module a file names, and importing a module runs its code,
so the policy never imports anything. It reads this table instead, generated ahead of time
by ``python -m trainguard.scan.allowlists._generate`` from the installed libraries and
shipped as source (``_classes_*.py``).

For each root below, the table lists, per module under the root, the names bound to a class

- whose homes all lie inside the root's homes: its ``__module__``, the module whose source
  declares it (``class X:``) and the file its methods were compiled from (pandas rewrites
  ``__module__`` to ``pandas`` for public classes, ``HDFStore`` included, whose code lives in
  ``pandas.io``);
- listed where it lives (``pandas.DataFrame`` and ``pandas.core.frame.DataFrame``), not where
  another module merely imports it; only a compatibility shim lists re-exports (a root whose
  homes lie outside it, ``torch.nn.quantized``; a module ``__getattr__`` handing out old
  names, ``scipy.sparse.csr.csr_matrix``);
- that no dangerous rule (``_danger``) flags under any of those names;
- whose method resolution order has no ``__del__``: a finaliser would run on state the file
  chose.

What the policy trusts, then: that the libraries installed where the table was generated
define these classes for object reconstruction, and that their ``__setstate__`` does what
it does there. A name missing from the table (a class added in a later release) is
unknown, never safe; regenerating merges new releases into the table. Modules outside every
root have no table, and a wildcard there (a user's ``mylab.*``) matches any class-shaped name,
re-exports included: that is the user's own declared trust in the package.
"""

from __future__ import annotations

import functools

__all__ = ["DATA_MODULES", "ROOTS", "defines", "root_of", "table"]

ROOTS: dict[str, tuple[str, ...]] = {
    "torch.nn.modules": ("torch.nn.modules",),
    "torch.nn.utils": ("torch.nn.utils",),
    "torch.ao.nn": ("torch.ao.nn",),
    "torch.nn.quantized": ("torch.nn.quantized", "torch.ao.nn.quantized"),
    "torch.optim": ("torch.optim",),
    "torch.amp.grad_scaler": ("torch.amp.grad_scaler",),
    "torch.cuda.amp.grad_scaler": ("torch.cuda.amp.grad_scaler",),
    "torch.distributed.checkpoint.metadata": ("torch.distributed.checkpoint.metadata",),
    "torch.distributed.checkpoint.planner": ("torch.distributed.checkpoint.planner",),
    "numpy.dtypes": ("numpy.dtypes",),
    "scipy.sparse": ("scipy.sparse",),
    "sklearn": ("sklearn",),
    "pandas": ("pandas",),
    "transformers.training_args": ("transformers.training_args",),
    "transformers.trainer_utils": ("transformers.trainer_utils",),
    "transformers.utils.generic": ("transformers.utils.generic",),
    "transformers.trainer_pt_utils": ("transformers.trainer_pt_utils",),
    "transformers.debug_utils": ("transformers.debug_utils",),
    "accelerate.utils.dataclasses": ("accelerate.utils.dataclasses",),
    "accelerate.state": ("accelerate.state",),
}
"""Package (or module) -> where the classes it may name must be defined."""

DATA_MODULES: dict[str, str] = {
    "torch": "_classes_torch",
    "numpy": "_classes_numpy",
    "scipy": "_classes_numpy",
    "sklearn": "_classes_sklearn",
    "pandas": "_classes_pandas",
    "transformers": "_classes_hf",
    "accelerate": "_classes_hf",
}
"""Top-level package -> the generated module that holds its part of the table."""


def root_of(module: str) -> str | None:
    """The table root that ``module`` lies under, if trainguard ships a table for it."""
    best = None
    for root in ROOTS:
        if (module == root or module.startswith(root + ".")) and len(root) > len(best or ""):
            best = root
    return best


@functools.cache
def table() -> dict[str, frozenset[str]]:
    """module -> the class names the table lists for it (parsed once, on first use)."""
    from trainguard.scan.allowlists import (
        _classes_hf,
        _classes_numpy,
        _classes_pandas,
        _classes_sklearn,
        _classes_torch,
    )

    names: dict[str, set[str]] = {}
    for data in (_classes_torch, _classes_numpy, _classes_sklearn, _classes_pandas, _classes_hf):
        for line in data.TABLE.splitlines():
            if line.strip():
                module, *found = line.split()
                names.setdefault(module, set()).update(found)
    return {module: frozenset(found) for module, found in names.items()}


def defines(module: str, name: str) -> bool | None:
    """Whether the table lists ``module.name`` as a class defined by its package; ``None``
    when ``module`` is under no root (no table to consult)."""
    if root_of(module) is None:
        return None
    return name in table().get(module, frozenset())
