"""NumPy's own answers about a joblib array, from a separate process.

joblib computes how many bytes follow an array wrapper with numpy: the dtype rebuilt from
the pickle (``numpy.dtype(*args)`` then ``__setstate__`` of the ``BUILD`` state) and the
shape multiplied as ``int64``. The judge asks numpy the same questions rather than
imitating it, but never in its own process: ``dtype.__setstate__`` given a malformed state
can crash the interpreter (a segfault found by our fuzzer; ``joblib.load`` would crash the
same way). So the questions go, as JSON of literals only, to one long-lived child
(``python -I`` with numpy and nothing of ours), and a crash there is an answer too: the
file is reported as one numpy cannot read, never as safe.

What this trusts: numpy in the child, for the two numbers joblib itself takes from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

__all__ = ["NumpyCrashed", "array_layout"]

_CHILD = r"""
import json, sys
import numpy as np

def rebuild(v):
    if isinstance(v, dict):
        kind = v.get("$")
        if kind == "tuple":
            return tuple(rebuild(x) for x in v["items"])
        if kind == "bytes":
            return bytes.fromhex(v["hex"])
        if kind == "dtype":
            d = np.dtype(*[rebuild(a) for a in v["args"]])
            for s in v["states"]:
                d.__setstate__(rebuild(s))
            return d
        if kind == "dict":
            return {rebuild(k): rebuild(x) for k, x in v["items"]}
    if isinstance(v, list):
        return [rebuild(x) for x in v]
    return v

for line in sys.stdin:
    try:
        q = json.loads(line)
        d = rebuild(q["dtype"])
        shape = rebuild(q["shape"])
        count = 1 if len(shape) == 0 else int(np.multiply.reduce([np.int64(x) for x in shape]))
        out = {"itemsize": int(d.itemsize), "hasobject": bool(d.hasobject), "count": count}
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class NumpyCrashed(Exception):
    """The numpy child died on this question (the real joblib.load would crash too)."""


class _Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def ask(self, question: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(question) + "\n"
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _CHILD],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            proc = self.proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
                answer = proc.stdout.readline()
            except OSError:
                answer = ""
            if not answer:
                proc.kill()
                proc.wait()
                self.proc = None
                raise NumpyCrashed("numpy crashed on this array's dtype or shape")
            result: dict[str, Any] = json.loads(answer)
            return result


_worker = _Worker()


def array_layout(dtype: Any, shape: Any) -> dict[str, Any]:
    """``{"itemsize", "hasobject", "count"}`` as numpy computes them for joblib, or
    ``{"error": ...}`` when numpy refuses; raises ``NumpyCrashed`` when it crashes."""
    return _worker.ask({"dtype": dtype, "shape": shape})
