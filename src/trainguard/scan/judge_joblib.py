"""``joblib.load``'s view of a pickle: Python's own unpickler, plus joblib's array reads.

``joblib.load`` does not use the C unpickler: ``NumpyUnpickler`` subclasses
``pickle._Unpickler`` and, after each ``BUILD`` that leaves a ``NumpyArrayWrapper`` on the
stack, reads the array's raw bytes straight from the file (``NumpyArrayWrapper.read_array``
in joblib 1.6), or, for object arrays, a whole nested pickle with a fresh ``_Unpickler``.
Those bytes are never opcodes to joblib, and always opcodes to ``pickle.load``: the two
views are judged separately (``raw_pickle``), and this one runs the same pure-Python
unpickler class joblib runs, with our ``find_class`` and stand-ins.

What this trusts: the byte count. It is computed the way joblib computes it, by numpy
itself on the literal values the pickle gave (``np.int64`` of each shape item multiplied
with ``np.multiply.reduce``, wrapping as int64 does; the dtype rebuilt with ``np.dtype``
and its ``__setstate__``), in a separate process (``numpy_worker.py``: numpy can crash on a
malformed dtype state); the alignment byte is read whenever the attribute exists and is not
None, whatever its value. A shape or dtype computed at load time cannot be followed and
ends the view with an error (never "safe").
``tests/scan/test_judge_joblib.py`` checks the arithmetic against ``joblib.load`` itself.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from typing import Any

from trainguard.errors import LimitExceeded, ScanError
from trainguard.scan.feed import Feed, memory_cap
from trainguard.scan.judge import (
    EXT_CACHE_USED,
    StreamResult,
    clean_extension_cache,
)
from trainguard.scan.numpy_worker import NumpyCrashed, array_layout
from trainguard.scan.recorder import Recorder
from trainguard.scan.standins import Made, global_key, made_class
from trainguard.scan.uses import Use

__all__ = ["joblib_bytes", "judge_joblib"]

WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
OLD_WRAPPER = "joblib.numpy_pickle_compat.NDArrayWrapper"
BUFFER_SIZE = 2**18
"""joblib's ``numpy_pickle_utils.BUFFER_SIZE``: arrays are read in chunks of this size."""


_PyUnpickler: Any = pickle._Unpickler


class _PyJudge(_PyUnpickler):  # type: ignore[misc]
    """``pickle._Unpickler`` whose ``find_class`` returns the judge's stand-ins."""

    def __init__(self, feed: Any, rec: Recorder) -> None:
        super().__init__(feed)
        self._rec = rec
        self.feed = feed

    def find_class(self, module: str, name: str) -> Any:
        written = (module, name)
        if not (isinstance(module, str) and isinstance(name, str)):
            raise ScanError("global name is not text")
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return self._rec.standin(written, (module, name))


class _JoblibJudge(_PyJudge):
    dispatch = _PyJudge.dispatch.copy()

    def __init__(self, feed: Any, rec: Recorder) -> None:
        super().__init__(feed, rec)
        self.arrays = 0

    def load_build(self) -> None:
        _PyUnpickler.load_build(self)
        top = self.stack[-1]
        kind = made_class(top)
        if kind == OLD_WRAPPER:
            raise ScanError(
                "joblib <= 0.9 array wrapper: joblib.load reads the array from a sibling file"
            )
        if kind == WRAPPER:
            self.stack.pop()
            self.stack.append(self._read_array(top))

    dispatch[pickle.BUILD[0]] = load_build

    def _read_array(self, wrapper: Made) -> Any:
        self.arrays += 1
        attrs = _attributes(wrapper)
        subclass = attrs.get("subclass")
        if global_key(subclass):
            self._rec.record(subclass, Use.NEW, "joblib array subclass")
        try:
            layout = array_layout(_encode(attrs.get("dtype"), 0), _encode(attrs.get("shape"), 0))
        except NumpyCrashed:
            raise ScanError(
                "numpy crashes on this joblib array's dtype (joblib.load would crash too)"
            ) from None
        if "error" in layout:
            raise ScanError(f"joblib array: numpy refuses it ({layout['error']})")
        count, itemsize = int(layout["count"]), int(layout["itemsize"])
        if layout["hasobject"]:
            inner = _PyJudge(self.feed, self._rec)
            return inner.load()
        align = attrs.get("numpy_array_alignment_bytes")
        if align is not None:
            pad = self.feed.read(1)
            length = int.from_bytes(pad, "little")
            if length:
                self.feed.read(length)
        if itemsize == 0:
            raise ScanError("joblib array of a zero-size dtype (joblib divides by it)")
        if count < 0:
            raise ScanError(f"joblib array of {count} elements (numpy.empty refuses)")
        nbytes = joblib_bytes(count, itemsize)
        here = self.feed.tell()
        end = self.feed.seek(0, 2)
        if nbytes > end - here:
            raise ScanError(f"joblib array of {nbytes} bytes runs past the end of the stream")
        self.feed.seek(here + nbytes)
        self._rec.check_time()
        return Made(self._rec, wrapper, (), {})


def joblib_bytes(count: int, itemsize: int) -> int:
    """The bytes ``read_array`` reads: chunks of ``BUFFER_SIZE // min(BUFFER_SIZE, itemsize)``
    elements over ``range(0, count, that)``; a negative item size (a dtype state can set one)
    makes the step negative and the loop read nothing."""
    step = BUFFER_SIZE // min(BUFFER_SIZE, itemsize)
    if step <= 0 or count <= 0:
        return 0
    return count * itemsize


def _attributes(wrapper: Made) -> dict[str, Any]:
    """The wrapper's attributes after its BUILD: a dict state, or (dict, slot dict)."""
    attrs: dict[str, Any] = {}
    for state in wrapper.states:
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, dict):
                attrs.update((k, v) for k, v in part.items() if isinstance(k, str))
            elif part is not None:
                raise ScanError("joblib array wrapper state is not a dict")
    return attrs


def _encode(value: Any, depth: int) -> Any:
    """A literal (or a numpy.dtype the pickle spelled out) as JSON for the numpy child."""
    if depth > 32:
        raise ScanError("joblib array description nested too deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "hex": bytes(value[:4096]).hex()}
    if made_class(value) in ("numpy.dtype", "numpy._core.multiarray.dtype"):
        if value.kwargs:
            raise ScanError("joblib array dtype built with keyword arguments")
        return {
            "$": "dtype",
            "args": [_encode(a, depth + 1) for a in value.args],
            "states": [_encode(st, depth + 1) for st in value.states],
        }
    if isinstance(value, Made):
        raise ScanError("joblib array described by a value computed at load time")
    if isinstance(value, tuple):
        return {"$": "tuple", "items": [_encode(v, depth + 1) for v in value[:4096]]}
    if isinstance(value, list):
        return [_encode(v, depth + 1) for v in value[:4096]]
    if isinstance(value, dict):
        items = list(value.items())[:4096]
        return {
            "$": "dict",
            "items": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in items],
        }
    raise ScanError(f"joblib array described by a {type(value).__name__}")


def judge_joblib(feed: Feed, rec: Recorder) -> StreamResult:
    """Run one stream through joblib's unpickler; arrays are skipped as joblib reads them."""
    res = StreamResult(start=feed.tell())
    rec.globals = res.globals
    clean_extension_cache()  # the Python unpickler reads copyreg's cache too
    unpickler = _JoblibJudge(feed, rec)
    try:
        with memory_cap(feed.limits):
            res.value = unpickler.load()
        res.end = feed.tell()
    except ScanError as exc:
        res.error = exc
    except MemoryError:
        res.error = LimitExceeded("joblib view ran out of memory")
    except RecursionError:
        res.error = ScanError("nesting too deep for the unpickler")
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler raises ends the stream
        res.error = ScanError(f"{type(exc).__name__}: {exc}"[:300])
    if clean_extension_cache():
        res.diverged.append(EXT_CACHE_USED)
    res.joblib_arrays = unpickler.arrays
    if res.error is not None and res.error.offset is None:
        res.error.offset = feed.tell()
    return res
