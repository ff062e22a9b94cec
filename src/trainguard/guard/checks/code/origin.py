"""Where a function's code comes from, decided by what is loaded and what is on disk.

A path prefix ("any file under torch's folder") is no proof: ``compile(src,
".../site-packages/torch/x.py", "exec")`` makes code that claims any file it likes, and
``exec`` of torch's genuine source into a namespace of the attacker's makes torch's code
call the attacker's globals. A function's origin is *verified* here only when all of
these hold:

* its globals are the namespace of a module imported under that name (``fn.__globals__
  is sys.modules[name].__dict__``; ``__globals__`` cannot be copied by
  ``functools.wraps`` the way ``__module__`` is, so a wrapper is judged where it was
  written), and that module's dotted name is spelled by the file's path;
* that module was loaded from the very file the code names (``module.__file__`` and
  ``co_filename``, real paths), or, for a frozen standard-library module, by CPython's
  frozen importer;
* the file's *current* bytes compile to this code object (``SourceIndex.verify``; a frozen
  module is compared with the interpreter's own frozen code object);
* when an environment seal is available (``$TRAINGUARD_ENV_SEAL``, checked when loaded),
  the file is in it and its bytes still hash to the sealed digest
  (``trainguard.env.trusted.TrustedOrigins.verified_file``).

``dataclasses`` and ``namedtuple`` generate methods with ``exec`` (file ``<string>``);
those are verified only for the class they sit on, when it is a dataclass (or a
namedtuple) whose module file defines it and passes the same checks.

The verified file is then classified by where it lives: torch, the standard library,
trainguard, another installed library, the job's entry script (``__main__``), or the
project's own modules.

*What it trusts:* the import system's record of which module came from which file
(``sys.modules``, ``__file__``), the running interpreter's compiler (and frozen code),
the directories ``sysconfig`` names, and, with a seal, the seal.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import sysconfig
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.guard.checks._codehash import SourceIndex, is_library, own_dir, torch_dir

__all__ = ["SEAL_ENV", "Origin", "Origins"]

SEAL_ENV = "TRAINGUARD_ENV_SEAL"

TORCH, STDLIB, OWN, LIBRARY, MAIN, PROJECT = (
    "torch",
    "stdlib",
    "trainguard",
    "library",
    "__main__",
    "project",
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a function's code lives and, when it could not be verified, why not."""

    kind: str
    file: str
    problem: str | None = None

    @property
    def verified(self) -> bool:
        return self.problem is None

    def evidence(self) -> dict[str, Any]:
        return {"origin": self.kind, "file": self.file, "problem": self.problem}


class Origins:
    """Verified origins of functions; ``seal`` adds the environment seal's file check."""

    def __init__(self, index: SourceIndex, seal: Any = None) -> None:
        self._index = index
        self._seal = seal
        self._real: dict[str, str] = {}
        stdlib = sysconfig.get_paths().get("stdlib", "")
        self._stdlib = os.path.realpath(stdlib) + os.sep if stdlib else "\0"
        self._torch = os.path.realpath(torch_dir()) + os.sep if torch_dir() != "\0" else "\0"
        self._own = os.path.realpath(own_dir()) + os.sep

    @classmethod
    def from_env(cls, index: SourceIndex) -> tuple[Origins, str | None]:
        """With the seal ``$TRAINGUARD_ENV_SEAL`` names, when set. The second value is why
        the seal could not be used (then only the source comparison stands)."""
        path = os.environ.get(SEAL_ENV)
        if not path:
            return cls(index), None
        try:
            from trainguard.env.trusted import TrustedOrigins

            return cls(index, TrustedOrigins.from_seal(Path(path))), None
        except Exception as exc:  # noqa: BLE001 - any failure is reported, never a pass
            return cls(index), f"the environment seal {path} is unusable: {exc}"

    def with_index(self, index: SourceIndex) -> Origins:
        """The same seal over another index (a thread's own)."""
        return Origins(index, self._seal)

    @property
    def sealed(self) -> bool:
        return self._seal is not None

    def of(self, fn: types.FunctionType, owner: type | None = None, *, code: bool = True) -> Origin:
        """The verified origin of ``fn`` (``owner``: the class whose dict holds it, for
        generated methods). ``code=False`` skips compiling the file (a quick first look;
        the comparison with the disk then follows on another thread)."""
        co = fn.__code__
        file = co.co_filename
        if file == "<string>":
            return self._generated(fn, owner, code=code)
        if file.startswith("<frozen ") and file.endswith(">"):
            problem = self._frozen(fn, file[8:-1])
        else:
            problem = self._loaded(fn, file)
        if problem is None and code:
            status = self._index.verify(co)
            if status != "ok":
                problem = f"its code does not match {file} on disk ({status})"
        kind = self._kind(file, fn.__globals__.get("__name__"))
        sealed = self._seal is not None and not file.startswith("<")
        if problem is None and sealed and not self._seal.verified_file(file):
            problem = f"{file} is not in the environment seal, or its bytes changed"
        return Origin(kind, file, problem)

    # -- the checks --------------------------------------------------------------------

    def _loaded(self, fn: types.FunctionType, file: str) -> str | None:
        name = fn.__globals__.get("__name__")
        module = sys.modules.get(name) if isinstance(name, str) else None
        if module is None or getattr(module, "__dict__", None) is not fn.__globals__:
            return "its globals are not the namespace of an imported module"
        mfile = getattr(module, "__file__", None)
        if not isinstance(mfile, str) or self.real(mfile) != self.real(file):
            return f"its module {name} was not loaded from {file}, the file its code names"
        if name != "__main__" and not _path_spells(self.real(file), str(name)):
            return f"the path {file} does not name the module {name}"
        return None

    def _frozen(self, fn: types.FunctionType, name: str) -> str | None:
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "loader", None) is not importlib.machinery.FrozenImporter:
            return f"{name} was not loaded by the frozen importer"
        if getattr(module, "__dict__", None) is not fn.__globals__:
            return "its globals are not the namespace of the frozen module"
        if self._seal is not None and not self._seal.frozen(fn):
            return "the interpreter binary does not verify against the environment seal"
        return None

    def _generated(self, fn: types.FunctionType, owner: type | None, *, code: bool) -> Origin:
        """``dataclasses``' ``__create_fn__`` methods and ``namedtuple``'s ``__new__``:
        verified as part of the class they sit on, never as ``<string>`` code at large."""
        co = fn.__code__
        name = fn.__name__
        dataclass_fn = co.co_qualname.startswith("__create_fn__.<locals>.")
        namedtuple_new = co.co_name == "<lambda>" and name == "__new__"
        if owner is None or not (dataclass_fn or namedtuple_new):
            return Origin(PROJECT, "<string>", "code made by exec, not on a generated class")
        if dataclass_fn and "__dataclass_fields__" not in vars(owner):
            return Origin(PROJECT, "<string>", f"{owner.__qualname__} is not a dataclass")
        if namedtuple_new and not (issubclass(owner, tuple) and hasattr(owner, "_fields")):
            return Origin(PROJECT, "<string>", f"{owner.__qualname__} is not a namedtuple")
        if not any(f is fn for f in _functions_in(vars(owner).get(name))):
            return Origin(PROJECT, "<string>", f"not {owner.__qualname__}'s own {name}")
        module = sys.modules.get(owner.__module__)
        mfile = getattr(module, "__file__", None)
        if not isinstance(mfile, str):
            return Origin(PROJECT, "<string>", f"{owner.__module__} has no source file")
        kind = self._kind(mfile, owner.__module__)
        if dataclass_fn and fn.__globals__ is not getattr(module, "__dict__", None):
            return Origin(kind, mfile, "its globals are not the dataclass's module")
        if owner.__module__ != "__main__" and not _path_spells(self.real(mfile), owner.__module__):
            return Origin(kind, mfile, f"the path {mfile} does not name {owner.__module__}")
        short = owner.__qualname__.rpartition(".")[2]
        if code and short not in self._index.names(mfile) and not self._defines(mfile, owner):
            return Origin(kind, mfile, f"{mfile} does not define {owner.__qualname__}")
        if self._seal is not None and not self._seal.verified_file(mfile):
            return Origin(kind, mfile, f"{mfile} is not in the environment seal")
        return Origin(kind, mfile)

    def _defines(self, file: str, owner: type) -> bool:
        table = self._index._table(file) if file.endswith(".py") else None
        return bool(table) and any(q == owner.__qualname__ for q, _ in table or ())

    def _kind(self, file: str, module: Any) -> str:
        real = self.real(file) if not file.startswith("<") else file
        if real.startswith(self._torch):
            return TORCH
        if real.startswith(self._own):
            return OWN
        if real.startswith(self._stdlib) and "site-packages" not in real.split(os.sep):
            return STDLIB
        if file.startswith("<frozen "):
            return STDLIB
        if is_library(real) or is_library(file):
            return LIBRARY
        if module == "__main__":
            return MAIN
        return PROJECT

    def real(self, path: str) -> str:
        real = self._real.get(path)
        if real is None:
            real = self._real[path] = os.path.realpath(path)
        return real


def _path_spells(real: str, name: str) -> bool:
    """``.../torch/nn/functional.py`` spells ``torch.nn.functional`` (a package: its
    ``__init__.py``)."""
    stem = real[:-3] if real.endswith(".py") else real
    if stem.endswith(os.sep + "__init__"):
        stem = stem[: -len("__init__") - 1]
    return stem.endswith(os.sep + name.replace(".", os.sep))


def _functions_in(value: Any) -> list[Any]:
    if isinstance(value, staticmethod | classmethod):
        return [value.__func__]
    return [value]
