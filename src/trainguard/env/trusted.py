"""Run-time trust in a function's origin: a *verified file of a known module*, never a path.

The guard lets a torch name point at code from a trusted origin (``typing``, ``functools``,
torch itself). Deciding that by path prefix ("anything under the standard library's
folder") trusts whatever a planted standard library puts there: one module added to a copy
of the standard library behind ``pyvenv.cfg`` rebound ``F.cross_entropy`` with no alert.
``TrustedOrigins`` decides it by content instead:

* the code's file is listed in the seal the environment was verified against, and its
  bytes hash, now, to the sealed sha256 (hashes are remembered per file identity: device,
  inode, size, ``mtime_ns``, ``ctime_ns``; a rewrite changes ``ctime`` even when ``mtime``
  is forged);
* the function's ``__module__`` is imported and that module's file is this very file (so a
  function compiled elsewhere under a borrowed file name does not qualify by name alone).

Frozen modules (``<frozen os>``) have no file: they are trusted when CPython's frozen
importer loaded them and the interpreter binary (and ``libpython``, which holds them in a
shared build) verify against the seal.

The caller must still compare the code object with what the file compiles to (the guard's
code index does): a ``co_filename`` can be forged by ``compile(src, filename, ...)``.

*What it trusts:* the seal (its root and signature are checked when it is loaded) and the
files' bytes as read now.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
import sysconfig
import types
from pathlib import Path

from trainguard.env import sealfile

__all__ = ["TrustedOrigins"]


class TrustedOrigins:
    def __init__(self, sealed: dict[str, str]) -> None:
        self._sealed = sealed
        """Path -> sha256 hex of every regular file in the seal."""
        self._seen: dict[str, tuple[tuple[int, ...], bool]] = {}

    @classmethod
    def from_seal(cls, path: Path, public_key: object = None) -> TrustedOrigins:
        """Raises ``sealfile.SealProblem`` when the seal's root (or signature) fails."""
        seal = sealfile.load(path)
        seal.check(public_key)  # type: ignore[arg-type]
        sealed: dict[str, str] = {}
        for line in seal.body[1:]:
            entry = json.loads(line)
            if entry.get("type") == "file" and isinstance(entry.get("sha256"), str):
                sealed[str(entry["path"])] = entry["sha256"]
        return cls(sealed)

    def verified_file(self, filename: str) -> bool:
        """In the seal (as named, or by its real path), and its bytes still match it."""
        want = self._sealed.get(filename) or self._sealed.get(os.path.realpath(filename))
        if want is None:
            return False
        try:
            with open(filename, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                seen = self._seen.get(filename)
                if seen is not None and seen[0] == ident:
                    return seen[1]
                ok = hashlib.file_digest(f, "sha256").hexdigest() == want
        except OSError:
            return False
        self._seen[filename] = (ident, ok)
        return ok

    def known_module_file(self, fn: types.FunctionType) -> bool:
        """``fn``'s module is imported from the file its code names."""
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        file = getattr(module, "__file__", None)
        return isinstance(file, str) and os.path.realpath(file) == os.path.realpath(
            fn.__code__.co_filename
        )

    def frozen(self, fn: types.FunctionType) -> bool:
        """``fn`` comes from a module the frozen importer loaded, out of a verified binary."""
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "loader", None) is not importlib.machinery.FrozenImporter:
            return False
        if fn.__code__.co_filename != f"<frozen {module.__name__}>":  # type: ignore[union-attr]
            return False
        binaries = [os.path.realpath(sys.executable)]
        libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        if libdir and name and os.path.exists(os.path.join(libdir, name)):
            binaries.append(os.path.realpath(os.path.join(libdir, name)))
        return all(self.verified_file(b) for b in binaries)

    def trusted(self, fn: types.FunctionType) -> bool:
        if self.frozen(fn):
            return True
        return self.known_module_file(fn) and self.verified_file(fn.__code__.co_filename)
