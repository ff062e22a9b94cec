"""An oracle for the scanner: the REAL loaders, run on the bytes in a sandboxed child process.

``resolved_globals(data, loader)`` answers "which globals would this loader resolve, and
which would it call?" by running the loader itself (``pickle.loads``, ``pickle._loads``,
``torch.load(weights_only=False)``, ``numpy.load(allow_pickle=True)``, ``joblib.load``)
with a ``find_class`` that records ``(module, name)`` and hands back an inert stand-in,
never the real object. So the loader parses exactly as it would in a victim's process (its
own framing, its own integer syntax, its own memo), but no payload ever runs.

Why a child and not the test process: the loaders are fed hostile, mutated bytes. The child

* imports everything and warms every loader up, then installs a PEP 578 audit hook that
  ``os._exit``s on process, network, code-compilation and write events (writes inside its
  own scratch folder excepted: torch's legacy tar format extracts there);
* runs under ``RLIMIT_AS`` (what it has mapped after the imports + 2 GiB) and a per-case
  ``RLIMIT_CPU`` budget; the parent adds a wall-clock timeout per case;
* is started with ``-I`` (no user site, no script folder on ``sys.path``).

A dead child costs one case (reported with its ``error``) and is restarted for the rest.

Fidelity notes (what the stand-ins change):

* A global whose module cannot be found, or whose top-level attribute is missing from an
  imported module, fails like the real ``find_class`` (the load stops there). Attribute
  chains below that, and modules not yet imported, are assumed to resolve.
* The C unpickler's protocol is not visible, so the Python-2 name mapping is applied when
  the written name is in the mapping tables (pure-Python loads apply it exactly).
* joblib needs its real array wrapper to know how many array bytes follow a ``BUILD``:
  for that loader only, ``NumpyArrayWrapper``, ``numpy.dtype`` and ``numpy.ndarray`` are
  the real objects (still recorded). They only ever receive primitives and stand-ins.
* torch resolves ``*Storage`` names itself, before ``find_class``; those are not reported.
* ``pickle.loads`` cannot take a ``find_class``; the C ``Unpickler`` is given a file that
  returns all its bytes on the first read, which puts it in ``loads``'s one-buffer mode
  (``pickle.load`` on a real file frames differently; torch and numpy exercise that one).
* Compiling to an AST (``ast.literal_eval`` of numpy's header) is allowed; nothing else is.

Run as a script, this file is the child (``python -I oracle.py --child``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOADERS = ("pickle", "pickle-py", "torch", "numpy", "joblib")
"""The real loaders the oracle can drive; the index is the wire code."""
_CODES = (*LOADERS, "_selftest-write")
"""Plus a self-test: the child opens the path given as data for writing (must be killed)."""

_HERE = Path(__file__).resolve()
_FRAME = struct.Struct("<BI")


@dataclass(frozen=True)
class OracleResult:
    """What one real loader did with one input.

    ``globals`` are in resolution order as ``find_class`` received them (after torch's own
    module renames); ``calls``/``news`` are the globals called with arguments
    (``REDUCE``/``INST``/``OBJ``) and instantiated through ``cls.__new__`` (``NEWOBJ``).
    ``error`` is the loader's exception (``"Type: message"``), ``"killed: ..."`` when the
    sandbox stopped it, or ``"timeout"``; globals resolved before that still count: in a
    victim's process they already ran.
    """

    globals: list[tuple[str, str]]
    calls: list[tuple[str, str]]
    error: str | None
    news: list[tuple[str, str]] = field(default_factory=list)
    loader: str = ""


class Oracle:
    """A persistent sandboxed child that runs many cases, one at a time, in order."""

    def __init__(self, *, timeout_s: float = 6.0, cpu_s: int = 2, mem_headroom: int = 2 << 30):
        self.timeout_s = timeout_s
        self.cpu_s = cpu_s
        self.mem_headroom = mem_headroom
        self.kills = 0
        """Children stopped by the sandbox or the timeout (each is replaced for the next case)."""
        self.cases = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._scratch: str | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _start(self) -> subprocess.Popen[bytes]:
        self.close()
        self._scratch = tempfile.mkdtemp(prefix="tg-oracle-")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": self._scratch,
            "HOME": self._scratch,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TORCH_CPP_LOG_LEVEL": "ERROR",
        }
        args = [sys.executable, "-I", "-W", "ignore", str(_HERE), "--child"]
        args += [str(self.cpu_s), str(self.mem_headroom), self._scratch]
        err = open(os.path.join(self._scratch, "stderr.txt"), "wb")  # noqa: SIM115
        with err:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=self._scratch,
                env=env,
            )
        self._proc, self._buf = proc, b""
        line = self._readline(120.0)
        if line != b"READY":
            why = Path(self._scratch, "stderr.txt").read_text(errors="replace")[-2000:]
            self.close()
            raise RuntimeError(f"oracle child did not start ({line!r}): {why}")
        return proc

    def _readline(self, timeout: float) -> bytes | None:
        """One line from the child, None on EOF or timeout (the child is then killed)."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                proc.kill()
                proc.wait()
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                proc.wait()
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    # -- running ----------------------------------------------------------------------------
    def run(self, data: bytes, loader: str) -> OracleResult:
        """Run ``loader`` on ``data`` in the child (restarting it if a case killed it)."""
        code = _CODES.index(loader)
        proc = self._proc
        if proc is None or proc.poll() is not None:
            proc = self._start()
        assert proc.stdin is not None
        self.cases += 1
        try:
            proc.stdin.write(_FRAME.pack(code, len(data)) + data)
            proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return OracleResult([], [], "killed: child gone before the case", loader=loader)
        line = self._readline(self.timeout_s)
        if line is None:
            reason = "timeout" if proc.returncode in (-9, None) else f"exit {proc.returncode}"
            self.kills += 1
            self.close()
            return OracleResult([], [], f"killed: {reason}", loader=loader)
        msg = json.loads(line)
        if msg.get("k"):
            self.kills += 1
            self.close()  # it exits right after a kill report
        return _result(msg, loader)

    def run_loaders(self, data: bytes, loaders: Sequence[str] = LOADERS) -> list[OracleResult]:
        """Every loader on one input, sent in one write (one round trip, not one per loader)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            proc = self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(
                b"".join(_FRAME.pack(_CODES.index(x), len(data)) + data for x in loaders)
            )
            proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return [self.run(data, x) for x in loaders]
        out: list[OracleResult] = []
        for i, loader in enumerate(loaders):
            self.cases += 1
            line = self._readline(self.timeout_s)
            if line is None:
                self.kills += 1
                self.close()
                out.append(OracleResult([], [], "killed: timeout or crash", loader=loader))
                return out + [self.run(data, x) for x in loaders[i + 1 :]]
            msg = json.loads(line)
            out.append(_result(msg, loader))
            if msg.get("k"):
                self.kills += 1
                self.close()
                return out + [self.run(data, x) for x in loaders[i + 1 :]]
        return out

    def run_many(self, cases: Iterable[tuple[bytes, str]]) -> list[OracleResult]:
        return [self.run(data, loader) for data, loader in cases]


def _result(msg: dict[str, object], loader: str) -> OracleResult:
    def pairs(key: str) -> list[tuple[str, str]]:
        return [(str(m), str(n)) for m, n in msg[key]]  # type: ignore[attr-defined]

    return OracleResult(pairs("g"), pairs("c"), msg["e"], pairs("n"), loader)  # type: ignore[arg-type]


_SHARED: Oracle | None = None


def shared_oracle() -> Oracle:
    """One child for the whole test process (closed at exit)."""
    global _SHARED
    if _SHARED is None:
        import atexit

        _SHARED = Oracle()
        atexit.register(_SHARED.close)
    return _SHARED


def resolved_globals(data: bytes, loader: str) -> OracleResult:
    """Every global the real ``loader`` resolves on ``data`` (see the module docstring)."""
    return shared_oracle().run(data, loader)


def resolved_globals_all(data: bytes, loaders: Sequence[str] = LOADERS) -> list[OracleResult]:
    """Every loader on ``data``, in one round trip to the shared child."""
    return shared_oracle().run_loaders(data, loaders)


# -- the property ------------------------------------------------------------------------------

_TORCH_RENAMES = {"torch._tensor": "torch.tensor"}
"""torch.load renames these modules before find_class; the stream says the other name."""


def spellings(module: str, name: str) -> set[tuple[str, str]]:
    """Every (module, qualname) under which a scanner may list what find_class received."""
    import _compat_pickle

    out = {(module, name)}
    if (module, name) in _compat_pickle.NAME_MAPPING:
        out.add(_compat_pickle.NAME_MAPPING[(module, name)])
    if module in _compat_pickle.IMPORT_MAPPING:
        out.add((_compat_pickle.IMPORT_MAPPING[module], name))
    if module in _TORCH_RENAMES:
        out.add((_TORCH_RENAMES[module], name))
    return out


def divergences(scan: object, results: Iterable[OracleResult]) -> list[str]:
    """Why the scanner's view of one input contradicts what the real loaders did.

    ``scan`` is a ``trainguard.FileResult``. Two properties, only through the public API:

    1. every global a real loader resolved is among the scanner's ``globals`` (as written
       or canonical), unless the verdict is ``unsafe`` or ``error``;
    2. when a loader resolved a global the built-in policy does not allow for the use the
       loader made of it (ref, new or call), the verdict is not ``safe``.
    """
    from trainguard import Policy, Verdict
    from trainguard.scan.uses import Use

    verdict = scan.verdict  # type: ignore[attr-defined]
    if verdict in (Verdict.UNSAFE, Verdict.ERROR):
        return []
    seen: set[str] = set()
    for g in scan.globals:  # type: ignore[attr-defined]
        seen.add(f"{g.module}.{g.qualname}")
        seen.add(g.name)
    policy = _policy(Policy)
    problems: list[str] = []
    for r in results:
        for module, name in dict.fromkeys(r.globals):
            names = spellings(module, name)
            if not {f"{m}.{n}" for m, n in names} & seen:
                problems.append(
                    f"[{r.loader}] resolved {module}.{name}; the scan (verdict {verdict}) does "
                    "not list it"
                )
            if verdict is Verdict.SAFE:
                use = Use.CALL if (module, name) in r.calls else Use.REF
                if use is Use.REF and (module, name) in r.news:
                    use = Use.NEW
                judged = [policy.judge(m, n, use).status for m, n in sorted(names)]
                if "safe" not in judged:
                    problems.append(
                        f"[{r.loader}] resolved {module}.{name} ({use.label}), which no "
                        "allowlist entry covers, yet the verdict is safe"
                    )
    return problems


_POLICY: list[object] = []


def _policy(cls: type) -> object:
    if not _POLICY:
        _POLICY.append(cls())
    return _POLICY[0]


# =============================================================================================
# The child. Everything below runs only in the sandboxed process.
# =============================================================================================

_KILL_EVENTS = {
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "os.startfile",
    "os.putenv",
    "os.unsetenv",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.rename",
    "subprocess.Popen",
    "pty.spawn",
    "exec",
    "compile",
    "code.__new__",
    "function.__new__",
    "marshal.loads",
    "marshal.load",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.cdata",
    "ctypes.call_function",
    "sys.settrace",
    "sys.setprofile",
    "sys._getframe",
    "webbrowser.open",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
    "telnetlib.Telnet.open",
    "poplib.connect",
    "imaplib.open",
    "nntplib.connect",
}
_KILL_PREFIXES = ("socket.", "ctypes.", "os.exec", "os.spawn", "winreg.", "msvcrt.")
_SCRATCH_EVENTS = {"os.mkdir", "os.rmdir", "os.remove", "shutil.rmtree"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Child:
    def __init__(self, cpu_s: int, headroom: int, scratch: str) -> None:
        import importlib.machinery
        import importlib.util
        import io
        import pickle
        import types
        import warnings

        warnings.simplefilter("ignore")
        import _compat_pickle

        import joblib
        import joblib.numpy_pickle
        import numpy
        import numpy.lib._format_impl
        import numpy.lib._npyio_impl
        import torch
        import torch.serialization

        self.io, self.pickle, self.torch, self.numpy, self.joblib = io, pickle, torch, numpy, joblib
        self.machinery, self.util = importlib.machinery, importlib.util
        self.compat = _compat_pickle
        self.cpu_s, self.headroom = cpu_s, headroom
        self.scratch = os.path.realpath(scratch) + os.sep
        self.mode = "pickle"
        self.cur: dict[str, list[list[str]]] = {"g": [], "c": [], "n": []}
        self.out = sys.stdout.buffer
        self.armed = False
        child = self

        class Meta(type):
            def __call__(cls, *args: object, **kwargs: object) -> type:
                glob = cls.__dict__.get("_tg_global")
                if glob is not None:
                    child.cur["c"].append(list(glob))
                return child.fresh(None)

            def __getattr__(cls, attr: str) -> type:
                if attr.startswith("__") and attr.endswith("__"):
                    raise AttributeError(attr)
                return child.fresh(None)

            def __getitem__(cls, key: object) -> type:
                return child.fresh(None)

            def __setitem__(cls, key: object, value: object) -> None:
                return None

        def new(cls: type, *args: object, **kwargs: object) -> type:
            glob = cls.__dict__.get("_tg_global")
            if glob is not None:
                child.cur["n"].append(list(glob))
            return child.fresh(None)

        def setstate(*args: object, **kwargs: object) -> None:
            return None

        self.Meta, self.new_fn, self.setstate_fn = Meta, new, staticmethod(setstate)

        class Whole:
            """A file that hands the C unpickler all of its bytes on the first read.

            The C unpickler then works from one buffer, exactly as ``pickle.loads`` does;
            a plain ``BytesIO`` would change its framing (an opcode that straddles a frame
            end loses the frame's tail when read from a file, not from bytes)."""

            def __init__(self, data: bytes) -> None:
                self.data: bytes | None = data

            def read(self, n: int = -1) -> bytes:
                data, self.data = self.data or b"", None
                return data

            def readline(self) -> bytes:
                return b""  # the buffer already had no newline: so has loads

            def readinto(self, buf: object) -> int:
                return 0

        self.Whole = Whole

        real: dict[tuple[str, str], object] = {
            ("joblib.numpy_pickle", "NumpyArrayWrapper"): joblib.numpy_pickle.NumpyArrayWrapper,
            ("numpy", "dtype"): numpy.dtype,
            ("numpy", "ndarray"): numpy.ndarray,
        }
        self.real = real

        def find_class(unpickler: object, module: str, name: str) -> object:
            return child.find_class(unpickler, module, name)

        class RecC(pickle.Unpickler):
            pass

        class RecPy(pickle._Unpickler):  # type: ignore[name-defined,misc]
            pass

        RecC.find_class = find_class  # type: ignore[assignment,method-assign]
        RecPy.find_class = find_class  # type: ignore[assignment,method-assign]
        self.RecC, self.RecPy = RecC, RecPy

        shim = types.ModuleType("tg_oracle_pickle")
        shim.Unpickler = RecC  # type: ignore[attr-defined]
        shim.load = lambda f, **kw: RecC(f, **kw).load()  # type: ignore[attr-defined]
        shim.loads = lambda b, **kw: RecC(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]
        shim.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
        for name in dir(pickle):
            if not hasattr(shim, name):
                setattr(shim, name, getattr(pickle, name))
        self.shim = shim
        numpy.lib._format_impl.pickle = shim  # type: ignore[attr-defined]
        numpy.lib._npyio_impl.pickle = shim  # type: ignore[attr-defined]
        joblib.numpy_pickle.NumpyUnpickler.find_class = find_class  # type: ignore[method-assign]
        self.warm_up()
        self.arm()

    # -- stand-ins ---------------------------------------------------------------------------
    def fresh(self, glob: tuple[str, str] | None) -> type:
        ns = {"__new__": self.new_fn, "__setstate__": self.setstate_fn, "_tg_global": glob}
        return self.Meta("StandIn", (), ns)

    def find_class(self, unpickler: object, module: str, name: str) -> object:
        if not isinstance(module, str) or not isinstance(name, str):
            raise TypeError("find_class names must be str")
        if isinstance(unpickler, self.pickle._Unpickler):  # type: ignore[attr-defined]
            mapped = self.py2(module, name) if unpickler.proto < 3 else (module, name)
        else:
            mapped = self.py2(module, name)  # the C unpickler's protocol is not visible
        # The real find_class imports the (mapped) module; fail where it would fail.
        if not self.resolvable(*mapped) and not self.resolvable(module, name):
            raise ModuleNotFoundError(f"oracle: {module}.{name} does not resolve")
        self.cur["g"].append([module, name])
        if self.mode == "joblib":
            for key in ((module, name), mapped):
                if key in self.real:
                    return self.real[key]
        return self.fresh((module, name))

    def py2(self, module: str, name: str) -> tuple[str, str]:
        if (module, name) in self.compat.NAME_MAPPING:
            return self.compat.NAME_MAPPING[(module, name)]
        return self.compat.IMPORT_MAPPING.get(module, module), name

    def resolvable(self, module: str, name: str) -> bool:
        if "\x00" in module or not module or module.startswith("."):
            return False
        mod = sys.modules.get(module)
        if mod is None:
            return self.findable(module)
        first = name.split(".", 1)[0]
        d = getattr(mod, "__dict__", {})
        return first in d or "__getattr__" in d

    def findable(self, module: str) -> bool:
        """Whether an import of ``module`` would find it, without importing anything."""
        parts = module.split(".")
        try:
            spec = self.machinery.PathFinder.find_spec(parts[0])
            if spec is None:
                return parts[0] in sys.builtin_module_names
            for i in range(1, len(parts)):
                full = ".".join(parts[: i + 1])
                parent = sys.modules.get(".".join(parts[:i]))
                where = getattr(parent, "__path__", None) or spec.submodule_search_locations
                if not where:
                    return False
                spec = self.machinery.PathFinder.find_spec(full, list(where))
                if spec is None:
                    return False
        except (ImportError, ValueError, TypeError, OSError):
            return False
        return True

    # -- loaders -------------------------------------------------------------------------------
    def load(self, mode: str, data: bytes) -> None:
        io = self.io
        self.mode = mode
        if mode == "pickle":
            self.RecC(self.Whole(data)).load()
        elif mode == "pickle-py":
            self.RecPy(io.BytesIO(data)).load()
        elif mode == "torch":
            self.torch.load(
                io.BytesIO(data), map_location="cpu", pickle_module=self.shim, weights_only=False
            )
        elif mode == "numpy":
            got = self.numpy.load(io.BytesIO(data), allow_pickle=True)
            if hasattr(got, "files"):
                with got:
                    for key in got.files:
                        got[key]
        elif mode == "joblib":
            self.joblib.load(io.BytesIO(data))
        elif mode == "_selftest-write":
            with open(data.decode(), "wb"):
                pass
        else:
            raise ValueError(mode)

    def warm_up(self) -> None:
        """Run every loader once on ordinary files, so lazy imports happen before the hook."""
        import collections
        import zlib

        io, torch, np = self.io, self.torch, self.numpy
        samples: list[tuple[str, bytes]] = []
        for proto in range(6):
            blob = self.pickle.dumps(collections.OrderedDict(a=[1, {2}]), protocol=proto)
            samples += [("pickle", blob), ("pickle-py", blob)]
        sd = {"w": torch.zeros(2, 3), "b": torch.ones(3, dtype=torch.int64)}
        for new_zip in (True, False):
            buf = io.BytesIO()
            torch.save(sd, buf, _use_new_zipfile_serialization=new_zip)
            samples.append(("torch", buf.getvalue()))
        samples.append(("torch", self.pickle.dumps({"a": 1})))
        for arr in (np.arange(4.0), np.array([1, "x"], dtype=object)):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=True)
            samples.append(("numpy", buf.getvalue()))
        buf = io.BytesIO()
        np.savez(buf, a=np.arange(3), b=np.array([None], dtype=object))
        samples.append(("numpy", buf.getvalue()))
        samples.append(("numpy", self.pickle.dumps([1])))
        for compress in (0, 3):
            buf = io.BytesIO()
            self.joblib.dump(
                {"a": np.arange(5.0), "o": np.array([1, None], dtype=object)},
                buf,
                compress=compress,
            )
            samples.append(("joblib", buf.getvalue()))
        samples.append(("joblib", zlib.compress(b"x")))
        for mode, blob in samples:
            for data in (blob, blob[: len(blob) // 2], b"\x80\x04garbage"):
                with contextlib.suppress(Exception):  # warming up only
                    self.load(mode, data)

    # -- sandbox -------------------------------------------------------------------------------
    def arm(self) -> None:
        import resource

        vm = 0
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    vm = int(line.split()[1]) * 1024
        limit = vm + self.headroom
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        self.resource = resource
        sys.addaudithook(self.audit)
        self.armed = True

    def in_scratch(self, path: object) -> bool:
        if isinstance(path, int):
            return False
        try:
            real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return (real + os.sep).startswith(self.scratch)

    def audit(self, event: str, args: tuple[object, ...]) -> None:
        if not self.armed:
            return
        why = None
        if event == "open":
            path, mode, flags = (*tuple(args), None, None, None)[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writes and not self.in_scratch(path):
                why = f"open for write: {path!r}"
        elif event in _SCRATCH_EVENTS:
            if args and not self.in_scratch(args[0]):
                why = f"{event}: {args[0]!r}"
        elif event == "compile" and args[1:2] == ("<unknown>",):
            pass  # ast.parse for ast.literal_eval (numpy's .npy header): an AST, never run
        elif event in _KILL_EVENTS or event.startswith(_KILL_PREFIXES):
            why = event
        if why is not None:
            self.armed = False
            self.report(f"killed: {why}", killed=True)
            os._exit(101)

    def report(self, error: str | None, killed: bool = False) -> None:
        # unique, and capped: the reply must stay far below a pipe buffer (see run_loaders)
        msg: dict[str, object] = {
            k: [list(x) for x in dict.fromkeys(map(tuple, v))][:500] for k, v in self.cur.items()
        }
        msg.update(e=error, k=killed)
        os.write(self.out.fileno(), json.dumps(msg).encode() + b"\n")

    def serve(self) -> None:
        stdin = sys.stdin.buffer
        self.out.write(b"READY\n")
        self.out.flush()
        while True:
            head = stdin.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return
            code, size = _FRAME.unpack(head)
            data = stdin.read(size)
            self.cur = {"g": [], "c": [], "n": []}
            used = self.resource.getrusage(self.resource.RUSAGE_SELF)
            cpu = int(used.ru_utime + used.ru_stime) + self.cpu_s
            self.resource.setrlimit(self.resource.RLIMIT_CPU, (cpu, self.resource.RLIM_INFINITY))
            error = None
            try:
                self.load(_CODES[code], data)
            except BaseException as exc:  # noqa: BLE001 - any failure of the loader is data
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.report(error)


def _child_main(argv: list[str]) -> None:
    cpu_s, headroom, scratch = int(argv[0]), int(argv[1]), argv[2]
    _Child(cpu_s, headroom, scratch).serve()


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(sys.argv[2:])
