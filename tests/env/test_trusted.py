"""``TrustedOrigins``: a function's origin is trusted for its file's content and its
module, never for the folder its file is in."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import pytest

from trainguard.env import sealfile
from trainguard.env.trusted import TrustedOrigins


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_verified_file_of_a_known_module(tmp_path):
    fn = functools.total_ordering
    assert isinstance(fn, type(test_verified_file_of_a_known_module))
    good = TrustedOrigins({functools.__file__: sha(functools.__file__)})
    assert good.trusted(fn)
    assert not TrustedOrigins({functools.__file__: "0" * 64}).trusted(fn)  # content differs
    assert not TrustedOrigins({}).trusted(fn)  # in the stdlib folder, but not sealed
    # code that claims functools.py as its file but belongs to another module
    ns: dict[str, object] = {"__name__": "planted"}
    exec(compile("def f():\n    pass\n", functools.__file__, "exec"), ns)
    assert not good.trusted(ns["f"])  # type: ignore[arg-type]


def test_planted_module_in_the_stdlib_folder_is_not_trusted(tmp_path, monkeypatch):
    """The issue's case: a module added beside the standard library (here a folder put on
    the path the same way) whose function would pass a prefix check."""
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "_planted_mod.py").write_text("def cross_entropy(*a, **k):\n    return 0\n")
    monkeypatch.syspath_prepend(str(folder))
    import _planted_mod  # type: ignore[import-not-found]

    stdlib_only = TrustedOrigins({functools.__file__: sha(functools.__file__)})
    assert not stdlib_only.trusted(_planted_mod.cross_entropy)
    sys.modules.pop("_planted_mod", None)


def test_frozen_modules_need_a_verified_interpreter():
    fn = os.path.join if os.path.join.__code__.co_filename.startswith("<frozen") else None
    if fn is None:
        pytest.skip("posixpath is not frozen in this build")
    exe = os.path.realpath(sys.executable)
    trusted = TrustedOrigins({exe: sha(exe)})
    import sysconfig

    lib = os.path.join(
        sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or ""
    )
    if os.path.isfile(lib):
        trusted = TrustedOrigins({exe: sha(exe), os.path.realpath(lib): sha(os.path.realpath(lib))})
    assert trusted.trusted(fn)
    assert not TrustedOrigins({exe: "0" * 64}).trusted(fn)


def test_from_seal_checks_the_root(tmp_path):
    entries = [{"path": functools.__file__, "type": "file", "sha256": sha(functools.__file__)}]
    header = {"format": sealfile.FORMAT, "version": sealfile.VERSION}
    out = tmp_path / "s.seal"
    sealfile.write(out, header, entries, None)
    assert TrustedOrigins.from_seal(out).trusted(functools.total_ordering)
    out.write_bytes(out.read_bytes().replace(b'"type":"file"', b'"type":"file" '))
    with pytest.raises(sealfile.SealProblem):
        TrustedOrigins.from_seal(out)
