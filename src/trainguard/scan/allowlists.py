"""Built-in knowledge of globals: what is safe, per ecosystem, and what is known to run code.

Safe entries are exact ``module.qualname`` strings, or ``prefix.*`` wildcards that match only
single CamelCase names (classes) inside a package, never attribute paths, so a wildcard
cannot be used to reach a re-exported module (``torch.nn.modules.linear.F``-style tricks
stay unknown). Every wildcard is limited to object reconstruction (``NEW``), never calls.

Dangerous knowledge only raises severity; anything not allowed is reported either way.
"""

from __future__ import annotations

from trainguard.scan.uses import Use

__all__ = [
    "ALIASES",
    "BUILTIN_ALLOW",
    "DANGEROUS_ATTRS",
    "DANGEROUS_EXACT",
    "DANGEROUS_MODULES",
    "LOADER_FUNCTIONS",
]

ALL = Use.REF | Use.NEW | Use.CALL
REF_NEW = Use.REF | Use.NEW

# Modules that are the same object under another name (C accelerators, OS-specific names).
ALIASES: dict[str, str] = {
    "posix": "os",
    "nt": "os",
    "_operator": "operator",
    "_io": "io",
    "_codecs": "codecs",
    "_pickle": "pickle",
    "_functools": "functools",
    "_collections": "collections",
    "_socket": "socket",
    "_ctypes": "ctypes",
    "_posixsubprocess": "subprocess",
    "_thread": "threading",
    "numpy.core": "numpy._core",
}

_TORCH_DTYPES = [
    "bfloat16",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bool",
    "complex128",
    "complex32",
    "complex64",
    "float16",
    "float32",
    "float4_e2m1fn_x2",
    "float64",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "int1",
    "int16",
    "int2",
    "int3",
    "int32",
    "int4",
    "int5",
    "int6",
    "int64",
    "int7",
    "int8",
    "qint32",
    "qint8",
    "quint2x4",
    "quint4x2",
    "quint8",
    "uint1",
    "uint16",
    "uint2",
    "uint3",
    "uint32",
    "uint4",
    "uint5",
    "uint6",
    "uint64",
    "uint7",
    "uint8",
    "half",
    "float",
    "double",
    "long",
    "int",
    "short",
    "cfloat",
    "cdouble",
    "chalf",
]
_TORCH_TENSOR_TYPES = [
    "BFloat16",
    "Bool",
    "Byte",
    "Char",
    "Double",
    "Float",
    "Half",
    "Int",
    "Long",
    "Short",
]
_TORCH_STORAGE_ONLY = [
    "ComplexDouble",
    "ComplexFloat",
    "QInt32",
    "QInt8",
    "QUInt2x4",
    "QUInt4x2",
    "QUInt8",
]

# module.qualname -> uses allowed. Calls listed here were read and take data only.
BUILTIN_ALLOW: dict[str, tuple[Use, str]] = {}


def _add(names: str | list[str], uses: Use, reason: str) -> None:
    for name in names.split() if isinstance(names, str) else names:
        BUILTIN_ALLOW[name] = (uses, reason)


# Python builtins and the standard library: plain data types.
_add(
    "builtins.set builtins.frozenset builtins.dict builtins.list builtins.tuple builtins.int "
    "builtins.float builtins.complex builtins.bool builtins.str builtins.bytes "
    "builtins.bytearray builtins.slice builtins.range builtins.object builtins.NoneType "
    "builtins.Ellipsis builtins.NotImplemented",
    ALL,
    "builtin data type",
)
_add(
    "collections.OrderedDict collections.Counter collections.deque collections.defaultdict",
    ALL,
    "collections data type",
)
_add("copyreg._reconstructor", ALL, "object reconstruction; its class argument is judged")
_add("codecs.encode", ALL, "bytes in protocol-2 pickles; the codec argument is judged")
_add(
    "datetime.datetime datetime.date datetime.time datetime.timedelta datetime.timezone "
    "decimal.Decimal fractions.Fraction uuid.UUID argparse.Namespace "
    "pathlib.Path pathlib.PosixPath pathlib.WindowsPath pathlib.PurePath "
    "pathlib.PurePosixPath pathlib.PureWindowsPath",
    ALL,
    "plain value type common in checkpoint metadata",
)

# PyTorch: what torch.load(weights_only=True) allows, plus nn.Module reconstruction.
_add(
    [f"torch.{d}" for d in _TORCH_DTYPES]
    + [f"torch.{t}Storage" for t in _TORCH_TENSOR_TYPES + _TORCH_STORAGE_ONLY]
    + [f"torch.{t}Tensor" for t in _TORCH_TENSOR_TYPES]
    + [f"torch.cuda.{t}Storage" for t in [*_TORCH_TENSOR_TYPES, "ComplexDouble", "ComplexFloat"]]
    + [f"torch.cuda.{t}Tensor" for t in _TORCH_TENSOR_TYPES]
    + [f"torch.sparse.{t}Tensor" for t in _TORCH_TENSOR_TYPES if t != "Bool"]
    + [f"torch.cuda.sparse.{t}Tensor" for t in _TORCH_TENSOR_TYPES if t != "Bool"]
    + [
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.dtype",
        "torch.layout",
        "torch.memory_format",
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.sparse_csc",
        "torch.sparse_bsr",
        "torch.sparse_bsc",
        "torch._mkldnn",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.channels_last_3d",
        "torch.preserve_format",
        "torch.per_channel_affine",
        "torch.per_channel_affine_float_qparams",
        "torch.per_channel_symmetric",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.UntypedStorage",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.Buffer",
        "torch.nn.parameter.UninitializedParameter",
        "torch.nn.parameter.UninitializedBuffer",
        "torch.serialization._get_layout",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_wrapper_subclass",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._tensor._rebuild_from_type_v2",
        "torch._utils._rebuild_xla_tensor",
        "torch.autograd.grad_mode.no_grad",
    ],
    ALL,
    "allowed by torch's weights-only unpickler",
)
_add(
    "torch.nn.modules.* torch.nn.utils.parametrize.* torch.ao.nn.* torch.nn.quantized.* "
    "torch.optim.* torch.amp.grad_scaler.* torch.cuda.amp.grad_scaler.* "
    "torch.distributed.checkpoint.metadata.* torch.distributed.checkpoint.filesystem.* "
    "torch.distributed.checkpoint.planner.*",
    REF_NEW,
    "torch class reconstructed from plain state",
)
_add(
    [
        f"torch.nn.functional.{fn}"
        for fn in (
            "relu gelu silu tanh sigmoid softmax log_softmax leaky_relu elu selu celu mish "
            "hardswish hardsigmoid hardtanh relu6 softplus softsign glu logsigmoid tanhshrink "
            "softmin gumbel_softmax normalize dropout linear layer_norm"
        ).split()
    ]
    + [f"torch.{fn}" for fn in ("relu", "tanh", "sigmoid", "sin", "cos", "exp", "erf")],
    Use.REF,
    "activation function held by a module as an attribute",
)
_add(
    "torch.nn.utils.* torch.ScriptObject torch._C.ScriptObject",
    REF_NEW,
    "torch class reconstructed from plain state (weight/spectral norm, packed params)",
)
_add(
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    ALL,
    "torch.distributed.checkpoint enum looked up by value",
)
_add(
    "torch.distributed.checkpoint.metadata.MetadataIndex "
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata "
    "torch.distributed.checkpoint.metadata.TensorProperties "
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata "
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata "
    "torch.distributed.checkpoint.metadata.Metadata "
    "torch.distributed.checkpoint.filesystem._StorageInfo "
    "torch.distributed.checkpoint.planner.WriteItemType "
    "torch.distributed.checkpoint.planner.LoadItemType "
    "torch.distributed.checkpoint.metadata.StorageMeta",
    ALL,
    "torch.distributed.checkpoint metadata record (dataclass or enum)",
)

# NumPy array and scalar reconstruction.
_add(
    [
        f"{np}.{n}"
        for np in ("numpy._core.multiarray", "numpy.core.multiarray")
        for n in ("_reconstruct", "scalar")
    ]
    + [f"{np}._frombuffer" for np in ("numpy._core.numeric", "numpy.core.numeric")]
    + [
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.ma.core._mareconstruct",
        "numpy.ma.core.MaskedArray",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__legacy_seeding",
        "numpy.random.mtrand.RandomState",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.random._generator.Generator",
        "numpy.int64",
        "numpy.float64",
        "numpy.float32",
        "numpy.int32",
        "numpy.bool_",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    ],
    ALL,
    "numpy array/scalar/RNG reconstruction",
)
_add("numpy.dtypes.*", REF_NEW, "numpy dtype class")
_add(
    [
        f"numpy.{fn}"
        for fn in (
            "log1p expm1 log exp sqrt abs absolute square sin cos tan tanh sign negative "
            "reciprocal log2 log10 exp2 cbrt floor ceil rint clip"
        ).split()
    ],
    Use.REF,
    "numpy ufunc held as a parameter (e.g. FunctionTransformer(func=numpy.log1p))",
)

# joblib, scikit-learn, scipy, pandas: vetted reconstruction paths.
_add(
    "joblib.numpy_pickle.NumpyArrayWrapper joblib.numpy_pickle_compat.NDArrayWrapper "
    "joblib.numpy_pickle_compat.ZNDArrayWrapper",
    REF_NEW,
    "joblib array wrapper (array bytes follow in the stream)",
)
_add("sklearn.*", REF_NEW, "scikit-learn estimator reconstructed from its state")
_add(
    "sklearn.tree._tree.Tree sklearn.neighbors._kd_tree.KDTree "
    "sklearn.neighbors._ball_tree.BallTree sklearn.neighbors._kd_tree.newObj "
    "sklearn.neighbors._ball_tree.newObj "
    "sklearn.utils._bunch.Bunch sklearn._loss._loss.__pyx_unpickle_CyHalfSquaredError "
    "sklearn._loss._loss.__pyx_unpickle_CyHalfBinomialLoss "
    "sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss "
    "sklearn._loss._loss.CyHalfSquaredError sklearn._loss._loss.CyHalfBinomialLoss "
    "sklearn._loss._loss.CyHalfMultinomialLoss sklearn._loss._loss.CyAbsoluteError "
    "sklearn._loss._loss.CyHalfPoissonLoss sklearn._loss._loss.CyPinballLoss",
    ALL,
    "scikit-learn Cython type rebuilt from arrays",
)
_add("scipy.sparse.*", REF_NEW, "scipy sparse matrix reconstructed from arrays")
_add("pandas.* pandas.arrays.* pandas.core.*", REF_NEW, "pandas object rebuilt from state")
_add(
    [
        f"pandas._libs.tslibs.offsets.{o}"
        for o in (
            "Day Hour Minute Second Milli Micro Nano Week MonthEnd MonthBegin YearEnd "
            "YearBegin QuarterEnd QuarterBegin BusinessDay"
        ).split()
    ]
    + "pandas.StringDtype pandas.Int64Dtype pandas.Float64Dtype pandas.BooleanDtype".split(),
    ALL,
    "pandas offset or extension dtype built from plain values",
)
_add(
    "pandas.core.frame.DataFrame pandas.core.series.Series "
    "pandas.core.internals.managers.BlockManager pandas.core.internals.managers.SingleBlockManager "
    "pandas._libs.internals._unpickle_block pandas.core.indexes.base._new_Index "
    "pandas.core.indexes.base.Index pandas.core.indexes.range.RangeIndex "
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked "
    "pandas.core.arrays.datetimes.DatetimeArray pandas.core.indexes.datetimes._new_DatetimeIndex "
    "pandas.core.indexes.datetimes.DatetimeIndex "
    "pandas._libs.tslibs.timestamps._unpickle_timestamp "
    "pandas.core.internals.blocks.new_block",
    ALL,
    "pandas frame/series/index reconstruction",
)

# Hugging Face training metadata (training_args.bin and friends).
_add(
    "transformers.training_args.* transformers.trainer_utils.* transformers.utils.generic.* "
    "transformers.trainer_pt_utils.* transformers.debug_utils.* "
    "accelerate.utils.dataclasses.* accelerate.state.*",
    REF_NEW,
    "Hugging Face training-arguments dataclass or enum",
)
_add(
    "transformers.training_args.OptimizerNames transformers.trainer_utils.IntervalStrategy "
    "transformers.trainer_utils.SaveStrategy transformers.trainer_utils.HubStrategy "
    "transformers.trainer_utils.SchedulerType transformers.trainer_utils.FSDPOption "
    "transformers.utils.generic.ExplicitEnum transformers.utils.generic.PaddingStrategy "
    "transformers.debug_utils.DebugOption accelerate.utils.dataclasses.DistributedType "
    "transformers.trainer_pt_utils.AcceleratorConfig transformers.training_args.ParallelMode",
    ALL,
    "Hugging Face enum looked up by value",
)

# Known to run code or reach the filesystem/network/process table. Whole modules:
DANGEROUS_MODULES: frozenset[str] = frozenset(
    [
        "os",
        "sys",
        "subprocess",
        "importlib",
        "runpy",
        "pty",
        "ctypes",
        "socket",
        "shutil",
        "pickle",
        "marshal",
        "code",
        "codeop",
        "webbrowser",
        "multiprocessing",
        "asyncio",
        "signal",
        "pdb",
        "bdb",
        "timeit",
        "trace",
        "cProfile",
        "profile",
        "platform",
        "pip",
        "setuptools",
        "distutils",
        "tempfile",
        "io",
        "shelve",
        "dbm",
        "sqlite3",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "ssl",
        "zipimport",
        "pkgutil",
        "imp",
        "dill",
        "cloudpickle",
        "types",
        "functools",
        "operator",
        "threading",
        "concurrent",
        "sched",
        "inspect",
        "gc",
        "ensurepip",
        "venv",
        "zipapp",
        "pydoc",
        "doctest",
        "unittest",
        "tkinter",
        "turtle",
        "idlelib",
        "lib2to3",
        "nturl2path",
        "commands",
        "popen2",
        "posixpath",
        "glob",
        "fileinput",
        "requests",
        "httpx",
        "aiohttp",
        "paramiko",
        "yaml",
        "torch.hub",
        "torch.package",
        "torch.utils.cpp_extension",
        "torch._inductor",
        "torch._dynamo",
        "torch.jit",
        "torch.distributed.rpc",
        "torch.multiprocessing",
        "torch.testing",
        "torch.utils.bottleneck",
        "torch.utils.collect_env",
        "numpy.testing",
        "numpy.f2py",
        "numpy.distutils",
        "numpy.ctypeslib",
        "numpy.lib.npyio",
        "jinja2",
        "mako",
        "IPython",
        "antigravity",
        "this",
        "__hello__",
        "__phello__",
    ]
)
"""Some of these have harmless members; none of those appear in ordinary checkpoints."""

DANGEROUS_EXACT: frozenset[str] = frozenset(
    [
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
        "builtins.__import__",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.delattr",
        "builtins.open",
        "builtins.globals",
        "builtins.locals",
        "builtins.vars",
        "builtins.input",
        "builtins.breakpoint",
        "builtins.help",
        "builtins.exit",
        "builtins.quit",
        "builtins.__build_class__",
        "builtins.memoryview",
        "builtins.type",
        "builtins.super",
        "torch.load",
        "torch.save",
        "torch.serialization.load",
        "torch.serialization._load",
        "torch.compile",
        "torch.from_file",
        "torch.ops",
        "torch._C",
        "torch._ops",
        "numpy.load",
        "numpy.save",
        "numpy.fromfile",
        "numpy.memmap",
        "numpy.loadtxt",
        "numpy.genfromtxt",
        "joblib.load",
        "joblib.dump",
        "collections.namedtuple",
    ]
)

# Attribute names that on any path reach code execution, files, processes or sockets.
DANGEROUS_ATTRS: frozenset[str] = frozenset(
    [
        "system",
        "popen",
        "popen2",
        "popen3",
        "popen4",
        "exec",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "posix_spawn",
        "posix_spawnp",
        "fork",
        "forkpty",
        "eval",
        "compile",
        "__import__",
        "import_module",
        "reload",
        "run_path",
        "run_module",
        "check_output",
        "check_call",
        "getoutput",
        "getstatusoutput",
        "Popen",
        "call",
        "run",
        "runstring",
        "runcode",
        "runsource",
        "interact",
        "load",
        "loads",
        "load_inline",
        "remove",
        "unlink",
        "rmdir",
        "removedirs",
        "rmtree",
        "rename",
        "replace",
        "kill",
        "killpg",
        "dlopen",
        "CDLL",
        "PyDLL",
        "LoadLibrary",
        "cdll",
        "pydll",
        "windll",
        "write_text",
        "write_bytes",
        "urlopen",
        "urlretrieve",
        "create_connection",
        "connect",
        "getattr",
        "setattr",
        "delattr",
        "attrgetter",
        "methodcaller",
        "itemgetter",
        "apply",
        "__getattribute__",
        "__globals__",
        "__builtins__",
        "__subclasses__",
        "__code__",
        "__dict__",
        "__class__",
        "__bases__",
        "__mro__",
        "__reduce__",
        "__reduce_ex__",
        "__setstate__",
        "__init_subclass__",
        "__loader__",
        "__spec__",
        "os",
        "sys",
        "subprocess",
        "builtins",
        "importlib",
        "pickle",
        "marshal",
        "ctypes",
        "socket",
        "shutil",
        "pty",
        "runpy",
        "open",
        "system_call",
        "_exec_with_source",
        "exec_module",
        "FunctionType",
        "CodeType",
        "LambdaType",
        "MethodType",
        "ModuleType",
    ]
)

# Callables whose bytes argument is itself a serialized object: the argument is scanned too.
LOADER_FUNCTIONS: frozenset[str] = frozenset(
    [
        "pickle.loads",
        "pickle.load",
        "pickle._loads",
        "pickle.Unpickler",
        "torch.load",
        "torch.serialization.load",
        "joblib.load",
        "numpy.load",
        "dill.loads",
        "cloudpickle.loads",
        "marshal.loads",
    ]
)
