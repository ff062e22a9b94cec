"""What is known to run code or reach files, processes or sockets.

Dangerous knowledge only raises severity and blocks allow entries: anything not allowed is
reported either way. Three rules, checked on the canonical ``module.qualname``:

- a module (or package) on ``DANGEROUS_MODULES``, unless the exact name is one of the
  ``HARMLESS_MEMBERS`` that only compute a value (``os.path.join``);
- an exact name on ``DANGEROUS_EXACT``;
- any part of the qualname on ``DANGEROUS_ATTRS`` (so ``sklearn.datasets._covtype.GzipFile``,
  a re-export of ``gzip.GzipFile``, is dangerous under whatever module names it).

Inside packages that are otherwise allowed by wildcard, this names what those packages define
or re-export that opens files, sockets or processes, or evaluates expressions: pandas' file
readers and writers and its ``eval``/``query`` engines, scikit-learn's dataset downloaders
and callback sockets, torch.distributed.checkpoint's filesystem readers and writers.
"""

from __future__ import annotations

__all__ = ["DANGEROUS_ATTRS", "DANGEROUS_EXACT", "DANGEROUS_MODULES", "LOADER_FUNCTIONS"]

DANGEROUS_MODULES: frozenset[str] = frozenset(
    (
        "os sys subprocess importlib runpy pty ctypes socket shutil pickle marshal code codeop "
        "webbrowser multiprocessing asyncio signal pdb bdb timeit trace cProfile profile "
        "platform pip setuptools distutils tempfile io shelve dbm sqlite3 urllib http ftplib "
        "smtplib telnetlib xmlrpc ssl zipimport pkgutil imp dill cloudpickle types functools "
        "operator threading concurrent sched inspect gc ensurepip venv zipapp pydoc doctest "
        "unittest tkinter turtle idlelib lib2to3 nturl2path commands popen2 posixpath glob "
        "fileinput requests httpx aiohttp paramiko yaml torch.hub torch.package "
        "torch.utils.cpp_extension torch._inductor torch._dynamo torch.jit "
        "torch.distributed.rpc torch.multiprocessing torch.testing torch.utils.bottleneck "
        "torch.utils.collect_env numpy.testing numpy.f2py numpy.distutils numpy.ctypeslib "
        "numpy.lib.npyio jinja2 mako IPython antigravity this __hello__ __phello__ "
        # compressed and archive files, memory maps
        "gzip bz2 lzma zipfile tarfile mmap "
        # pandas: file/SQL/clipboard/URL readers and writers; eval/query expression engines;
        # its pickle loader; test helpers (temporary files); C file parsers; global options
        # (one names the plotting backend module, imported later) and the plotting front end
        # that imports it
        "pandas.io pandas.core.computation pandas.compat.pickle_compat pandas._testing "
        "pandas._libs.parsers pandas._libs.sas pandas.util._tester pandas._config "
        "pandas.plotting "
        # scikit-learn: dataset downloaders and file readers; test helpers; the socket/pipe
        # transport of callbacks (multiprocessing.connection Client/Listener)
        "sklearn.datasets sklearn.utils._testing sklearn.callback._transport"
    ).split()
)
"""Some of these have harmless members; none of those appear in ordinary checkpoints."""

DANGEROUS_EXACT: frozenset[str] = frozenset(
    (
        "builtins.eval builtins.exec builtins.compile builtins.__import__ builtins.getattr "
        "builtins.setattr builtins.delattr builtins.open builtins.globals builtins.locals "
        "builtins.vars builtins.input builtins.breakpoint builtins.help builtins.exit "
        "builtins.quit builtins.__build_class__ builtins.memoryview builtins.type "
        "builtins.super torch.load torch.save torch.serialization.load "
        "torch.serialization._load torch.compile torch.from_file torch.ops torch._C torch._ops "
        "numpy.load numpy.save numpy.fromfile numpy.memmap numpy.loadtxt numpy.genfromtxt "
        "joblib.load joblib.dump collections.namedtuple "
        # pandas file readers/writers re-exported at the top level and in pandas.api.typing
        "pandas.HDFStore pandas.ExcelFile pandas.ExcelWriter pandas.api.typing.JsonReader "
        "pandas.api.typing.SASReader pandas.api.typing.StataReader "
        # scikit-learn's joblib.Parallel: runs the callables it is handed in worker processes
        "sklearn.utils.parallel.Parallel "
        # torch.distributed.checkpoint storage that opens, writes and deletes files
        "torch.distributed.checkpoint.filesystem.FileSystem "
        "torch.distributed.checkpoint.filesystem.FileSystemBase "
        "torch.distributed.checkpoint.filesystem.FileSystemReader "
        "torch.distributed.checkpoint.filesystem.FileSystemWriter "
        "torch.distributed.checkpoint.filesystem._FileSystemWriter"
    ).split()
    + [
        f"pandas.{fn}"
        for fn in (
            "read_clipboard read_csv read_excel read_feather read_fwf read_hdf read_html "
            "read_iceberg read_json read_orc read_parquet read_pickle read_sas read_spss "
            "read_sql read_sql_query read_sql_table read_stata read_table read_xml to_pickle"
        ).split()
    ]
)

# Attribute names that on any path reach code execution, files, processes or sockets.
DANGEROUS_ATTRS: frozenset[str] = frozenset(
    (
        "system popen popen2 popen3 popen4 exec execl execle execlp execlpe execv execve execvp "
        "execvpe spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn "
        "posix_spawnp fork forkpty eval compile __import__ import_module reload run_path "
        "run_module check_output check_call getoutput getstatusoutput Popen call run runstring "
        "runcode runsource interact load loads load_inline remove unlink rmdir removedirs "
        "rmtree rename replace kill killpg dlopen CDLL PyDLL LoadLibrary cdll pydll windll "
        "write_text write_bytes urlopen urlretrieve create_connection connect getattr setattr "
        "delattr attrgetter methodcaller itemgetter apply __getattribute__ __globals__ "
        "__builtins__ __subclasses__ __code__ __dict__ __class__ __bases__ __mro__ __reduce__ "
        "__reduce_ex__ __setstate__ __init_subclass__ __loader__ __spec__ os sys subprocess "
        "builtins importlib pickle marshal ctypes socket shutil pty runpy open system_call "
        "_exec_with_source exec_module FunctionType CodeType LambdaType MethodType ModuleType "
        # DataFrame.query evaluates an expression; pandas' pickle file helpers
        "query read_pickle to_pickle "
        # standard-library file, archive and worker classes, wherever they are re-exported
        "GzipFile BZ2File LZMAFile ZipFile TarFile TextIOWrapper FileIO BufferedReader "
        "BufferedWriter BufferedRandom TemporaryDirectory NamedTemporaryFile "
        "SpooledTemporaryFile TemporaryFile ThreadPoolExecutor ProcessPoolExecutor SharedMemory"
    ).split()
)

# Callables whose bytes argument is itself a serialized object: the argument is scanned too.
LOADER_FUNCTIONS: frozenset[str] = frozenset(
    (
        "pickle.loads pickle.load pickle._loads pickle.Unpickler torch.load "
        "torch.serialization.load joblib.load numpy.load dill.loads cloudpickle.loads "
        "marshal.loads"
    ).split()
)
