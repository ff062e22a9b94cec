"""The .pyc verdict cache: a second seal-less verify compiles nothing, yet an edited .pyc
is still caught (its bytes make another key), and a cache others could write is ignored."""

from __future__ import annotations

import hashlib
import os
import py_compile
import sys

from envkit import Env

from trainguard.env import verify
from trainguard.env.probe import pyc
from trainguard.env.verdicts import KEY_BYTES, load


def test_warm_cache_skips_the_compile(env: Env, tmp_path, clean_environ):
    cache = tmp_path / "state" / "pyc-verdicts.bin"
    cold = verify(python=env.python, environment=clean_environ, pyc_cache=cache)
    assert cold.findings == () and cold.checked.pyc >= 3 and cold.checked.pyc_cached == 0
    assert os.stat(cache).st_mode & 0o077 == 0 and os.stat(cache.parent).st_mode & 0o077 == 0
    keys, problem = load(cache)
    assert problem is None and len(keys) == cold.checked.pyc * KEY_BYTES
    warm = verify(python=env.python, environment=clean_environ, pyc_cache=cache)
    assert warm.findings == () and warm.checked.pyc == 0
    assert warm.checked.pyc_cached == cold.checked.pyc


def test_edited_pyc_is_caught_with_a_warm_cache(env: Env, tmp_path, clean_environ):
    cache = tmp_path / "state" / "pyc-verdicts.bin"
    verify(python=env.python, environment=clean_environ, pyc_cache=cache)
    target = next((env.site / "tinypkg" / "__pycache__").glob("optim.*.pyc"))
    header = target.read_bytes()[:16]
    evil = tmp_path / "evil.py"
    evil.write_text("def step(lr):\n    return lr * 100\n")
    py_compile.compile(str(evil), cfile=str(tmp_path / "evil.pyc"))
    st = target.stat()
    target.write_bytes(header + (tmp_path / "evil.pyc").read_bytes()[16:])
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = verify(python=env.python, environment=clean_environ, pyc_cache=cache)
    assert str(target) in {f.location.path for f in report.findings}
    assert report.checked.pyc == 1  # only the changed one was compiled


def test_cache_writable_by_others_is_ignored(env: Env, tmp_path, clean_environ):
    """The insider who could write the cache could vouch for his own .pyc: such a cache is
    not read (a note says so) and not rewritten."""
    cache = tmp_path / "state" / "pyc-verdicts.bin"
    verify(python=env.python, environment=clean_environ, pyc_cache=cache)
    os.chmod(cache, 0o666)
    before = cache.read_bytes()
    report = verify(python=env.python, environment=clean_environ, pyc_cache=cache)
    assert report.checked.pyc_cached == 0 and report.checked.pyc >= 3
    assert any("not used" in n and "writable by everyone" in n for n in report.notes)
    assert cache.read_bytes() == before
    cache.write_bytes(b"junk")
    os.chmod(cache, 0o600)
    assert "not a verdict cache" in (load(cache)[1] or "")


def test_key_is_made_from_the_bytes_compared(tmp_path):
    """A miss is compiled by ``check_one``, which keys its verdict by the bytes and
    ``fstat`` it read itself: a file swapped between the hashing and the compile cannot
    lend its verdict to the one hashed before."""
    source = tmp_path / "m.py"
    source.write_text("x = 1\n")
    cached = tmp_path / "__pycache__" / f"m.{sys.implementation.cache_tag}.pyc"
    py_compile.compile(str(source), cfile=str(cached))
    status, _, key = pyc.check_one(str(cached), str(source), 0)
    parts = []
    for p in (cached, source):
        parts += [str(p), os.stat(p), hashlib.sha256(p.read_bytes()).hexdigest()]
    assert status == pyc.OK and key == pyc.verdict_key(*parts, 0)  # type: ignore[arg-type]
    data = bytearray(cached.read_bytes())
    data[-1] ^= 1
    cached.write_bytes(bytes(data))
    assert pyc.check_one(str(cached), str(source), 0)[::2] == (pyc.MISMATCH, "")  # no key
