"""The allowlist policy: unknown is reported, dangerous cannot be allowed, entries expire."""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from pathlib import Path

import pytest

from trainguard import ConfigError, Policy, Verdict, scan_bytes, scan_file
from trainguard.scan.policy import AllowEntry, Status
from trainguard.scan.uses import Use

from pk import glob, proto

NEWOBJ_NET = proto(2) + glob("mylab.models", "Net") + b")\x81}b."


def write_policy(tmp_path: Path, body: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_user_entry_allows_own_classes(tmp_path: Path):
    pol = Policy.from_file(
        write_policy(
            tmp_path,
            '[[allow]]\nglobal = "mylab.models.*"\nreason = "our model classes"\n',
        )
    )
    assert scan_bytes(NEWOBJ_NET).verdict is Verdict.SUSPICIOUS
    assert scan_bytes(NEWOBJ_NET, policy=pol).verdict is Verdict.SAFE


def test_pyproject_section(tmp_path: Path):
    path = write_policy(
        tmp_path,
        '[project]\nname="x"\n[[tool.trainguard.allow]]\nglobal = "mylab.models.Net"\n'
        'reason = "ours"\n',
        "pyproject.toml",
    )
    assert scan_bytes(NEWOBJ_NET, policy=Policy.from_file(path)).verdict is Verdict.SAFE
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert Policy.discover(sub).user_entries[0].pattern == "mylab.models.Net"


def test_wildcards_match_classes_only():
    pol = Policy()
    assert pol.judge("torch.nn.modules.linear", "Linear", Use.NEW).status is Status.SAFE
    # F is torch.nn.functional re-exported as a module attribute: capitalised, not a class
    assert pol.judge("torch.nn.modules.linear", "F", Use.NEW).status is Status.UNKNOWN
    assert pol.judge("torch.nn.modules.linear", "F.relu", Use.NEW).status is Status.UNKNOWN
    assert pol.judge("torch.nn.modules.module", "register_module_forward_hook", Use.REF).status is (
        Status.UNKNOWN
    )
    # wildcard entries never allow calls
    assert pol.judge("torch.nn.modules.linear", "Linear", Use.CALL).status is Status.UNKNOWN


def test_dangerous_cannot_be_allowlisted(tmp_path: Path):
    pol = Policy.from_file(
        write_policy(
            tmp_path,
            '[[allow]]\nglobal = "os.system"\nreason = "I know"\nuses = ["ref","new","call"]\n',
        )
    )
    assert pol.judge("os", "system", Use.CALL).status is Status.DANGEROUS
    assert pol.judge("posix", "system", Use.REF).status is Status.DANGEROUS


def test_expired_entry_turns_back_into_findings(tmp_path: Path):
    pol = Policy.from_file(
        write_policy(
            tmp_path,
            '[[allow]]\nglobal = "mylab.models.Net"\nreason = "temp"\nexpires = 2020-01-01\n',
        )
    )
    r = scan_bytes(NEWOBJ_NET, policy=pol)
    assert r.verdict is Verdict.SUSPICIOUS
    assert {f.rule.value for f in r.findings} == {"scan.policy_expired", "scan.unknown_global"}
    future = Policy(pol.user_entries, today=dt.date(2019, 1, 1))
    assert scan_bytes(NEWOBJ_NET, policy=future).verdict is Verdict.SAFE


def test_entry_bound_to_a_file_hash(tmp_path: Path):
    f = tmp_path / "m.pkl"
    f.write_bytes(NEWOBJ_NET)
    digest = hashlib.sha256(NEWOBJ_NET).hexdigest()
    pol = Policy.from_file(
        write_policy(
            tmp_path,
            f'[[allow]]\nglobal = "mylab.models.Net"\nreason = "this file"\nsha256 = "{digest}"\n',
        )
    )
    assert scan_file(f, policy=pol).verdict is Verdict.SAFE
    other = tmp_path / "other.pkl"
    other.write_bytes(NEWOBJ_NET + b"\n")
    assert scan_file(other, policy=pol).verdict is Verdict.SUSPICIOUS


@pytest.mark.parametrize(
    "body",
    [
        '[[allow]]\nglobal = "a.B"\n',  # no reason
        '[[allow]]\nglobal = "a.B"\nreason = ""\n',
        '[[allow]]\nreason = "x"\n',
        '[[allow]]\nglobal = "a.B"\nreason = "x"\nuses = ["exec"]\n',
        '[[allow]]\nglobal = "a.B"\nreason = "x"\nexpires = "soon"\n',
        '[[allow]]\nglobal = "a.B"\nreason = "x"\nsha256 = "abc"\n',
        "allow = 3\n",
        "not toml [",
    ],
)
def test_bad_policy_files(tmp_path: Path, body: str):
    with pytest.raises(ConfigError):
        Policy.from_file(write_policy(tmp_path, body))


def test_builtin_allowlist_covers_torch_weights_only_set():
    torch = pytest.importorskip("torch")
    from torch import _weights_only_unpickler as wo

    pol = Policy()
    missing = []
    for key in wo._get_allowed_globals():
        module, _, name = key.rpartition(".")
        if pol.judge(module, name, Use.CALL).status is not Status.SAFE:
            missing.append(key)
    assert not missing, missing
    del torch


# -- what wildcards trust: the generated class table, never an import ---------------------
# Real re-exports in the installed libraries: a class (or a capitalised function such as
# multiprocessing.connection.Client) imported from outside the package into
# one of its modules, reachable by pickle under the package's name. (module, name, home)
REEXPORTS = [
    ("pandas.io.common", "TextIOWrapper", "_io"),
    ("pandas.io.common", "BytesIO", "_io"),
    ("pandas.io.parsers.readers", "ThreadPoolExecutor", "concurrent.futures.thread"),
    ("pandas.core.computation.scope", "StringIO", "_io"),
    ("pandas._libs.tslibs.timezones", "_dateutil_tzfile", "dateutil.tz._tzfile"),
    ("sklearn.callback._transport", "Client", "multiprocessing.connection"),
    ("sklearn.callback._transport", "Listener", "multiprocessing.connection"),
    ("sklearn.callback._transport", "Connection", "multiprocessing.connection"),
    ("sklearn.callback._progressbar", "Thread", "threading"),
    ("sklearn.datasets._covtype", "GzipFile", "gzip"),
    ("sklearn.datasets._openml", "TemporaryDirectory", "tempfile"),
    ("sklearn.datasets._openml", "Request", "urllib.request"),
    ("transformers.utils.generic", "ExitStack", "contextlib"),
    ("transformers.trainer_pt_utils", "StreamHandler", "logging"),
]


@pytest.mark.parametrize(("module", "name", "home"), REEXPORTS)
def test_wildcards_do_not_reach_reexported_classes(module: str, name: str, home: str):
    import importlib

    obj = getattr(importlib.import_module(module), name)  # the attack path is real
    assert callable(obj) and obj.__module__ == home
    top = module.split(".")[0]
    user = Policy([AllowEntry(f"{top}.*", Use.REF | Use.NEW | Use.CALL, "all of it", "user")])
    for pol in (Policy(), user):
        for use in (Use.REF, Use.NEW):
            assert pol.judge(module, name, use).status is not Status.SAFE, (pol, use)


# Classes the packages do define that open files or sockets or evaluate expressions.
DEFINED_DANGER = [
    ("pandas.core.computation.expr", "PandasExprVisitor"),
    ("pandas.core.computation.expr", "Expr"),
    ("pandas.core.computation.engines", "PythonEngine"),
    ("pandas.core.computation.engines", "NumExprEngine"),
    ("pandas.core.computation.scope", "Scope"),
    ("pandas.core.computation.ops", "Term"),
    ("pandas.core.frame", "DataFrame.query"),
    ("pandas.core.frame", "DataFrame.eval"),
    ("pandas", "eval"),
    ("pandas", "read_pickle"),
    ("pandas", "read_csv"),
    ("pandas", "HDFStore"),
    ("pandas", "ExcelWriter"),
    ("pandas.api.typing", "JsonReader"),
    ("pandas.api.typing", "StataReader"),
    ("pandas.io.pytables", "HDFStore"),
    ("pandas.io.pickle", "read_pickle"),
    ("pandas.io.clipboard", "CheckedCall"),
    ("pandas.compat.pickle_compat", "Unpickler"),
    ("pandas._libs.parsers", "TextReader"),
    ("pandas._config.config", "DictWrapper"),
    ("pandas.plotting._core", "PlotAccessor"),
    ("sklearn.utils.parallel", "Parallel"),
    ("sklearn.callback._transport", "ListenerHandle"),
    ("torch.distributed.checkpoint.filesystem", "FileSystemReader"),
    ("torch.distributed.checkpoint.filesystem", "FileSystemWriter"),
]


@pytest.mark.parametrize(("module", "name"), DEFINED_DANGER)
def test_dangerous_classes_inside_allowed_packages(module: str, name: str):
    import importlib

    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)  # exists in the installed release
    user = Policy([AllowEntry(f"{module}.{name}", Use.REF | Use.NEW, "I insist", "user")])
    for pol in (Policy(), user):
        assert pol.judge(module, name, Use.NEW).status is Status.DANGEROUS


def test_every_builtin_wildcard_is_backed_by_the_class_table():
    from trainguard.scan import allowlists
    from trainguard.scan.allowlists import _classes

    wild = [p[:-2] for p in allowlists.BUILTIN_ALLOW if p.endswith(".*")]
    assert wild
    for prefix in wild:
        assert _classes.root_of(prefix) is not None, prefix
        uses = allowlists.BUILTIN_ALLOW[prefix + ".*"][0]
        assert Use.CALL not in uses, prefix  # a wildcard never allows calls


def test_class_table_holds_nothing_dangerous():
    from trainguard.scan.allowlists import _classes
    from trainguard.scan.policy import danger

    table = _classes.table()
    assert sum(map(len, table.values())) > 1000
    flagged = [(m, n) for m, names in table.items() for n in names if danger(m, n)]
    assert not flagged
    for module, names in table.items():
        assert _classes.root_of(module) is not None, module
        assert all(n.isidentifier() for n in names), module


def test_class_table_names_classes_defined_at_home():
    """Every table entry that the installed release has resolves to a class defined under
    its root's homes, with no finaliser: the generator's rules, checked from the outside."""
    import importlib

    from trainguard.scan.allowlists import _classes

    checked = 0
    for module, names in _classes.table().items():
        try:
            mod = importlib.import_module(module)  # trusted: the table's own modules
        except ImportError:
            continue  # a module of another release, kept by the merge
        homes = _classes.ROOTS[_classes.root_of(module) or ""]
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # scipy's shim modules
                obj = getattr(mod, name, None)
            if obj is None:
                continue
            assert isinstance(obj, type), (module, name)
            assert any(obj.__module__ == h or obj.__module__.startswith(h + ".") for h in homes)
            assert not any("__del__" in vars(k) for k in obj.__mro__ if k is not object)
            checked += 1
    assert checked > 1000


def test_no_foreign_class_in_a_table_package_is_safe():
    """Every attribute of every imported module under a table root that is a class from
    outside the root's homes (a re-export) is judged not safe for construction."""
    import importlib
    import sys

    from trainguard.scan.allowlists import _classes

    for top in ("pandas", "sklearn", "torch.nn", "torch.optim", "scipy.sparse"):
        importlib.import_module(top)
    pol = Policy()
    checked = 0
    for module_name, mod in list(sys.modules.items()):
        root = _classes.root_of(module_name)
        if root is None or mod is None:
            continue
        homes = _classes.ROOTS[root]
        for name, obj in list(vars(mod).items()):
            home = getattr(obj, "__module__", None) if isinstance(obj, type) else None
            if not isinstance(home, str) or any(
                home == h or home.startswith(h + ".") for h in homes
            ):
                continue
            judged = pol.judge(module_name, name, Use.NEW).status
            assert judged is not Status.SAFE, (module_name, name, home)
            checked += 1
    assert checked > 200


def test_policy_never_imports_what_it_judges(tmp_path: Path):
    """Judging and scanning name modules; none is imported, the user's package included."""
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "imported"
    pkg = tmp_path / "lab_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "models.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    code = textwrap.dedent(
        """
        import sys
        from trainguard import scan_bytes
        from trainguard.scan.policy import AllowEntry, Policy
        from trainguard.scan.uses import Use
        pol = Policy([AllowEntry("lab_pkg.*", Use.REF | Use.NEW, "ours", "user")])
        for module, name in [("lab_pkg.models", "Net"), ("pandas.io.common", "TextIOWrapper"),
                             ("sklearn.linear_model._sgd", "SGDClassifier"),
                             ("torch.nn.modules.linear", "Linear")]:
            pol.judge(module, name, Use.NEW)
        blob = b"\\x80\\x02clab_pkg.models\\nNet\\nq\\x00)\\x81}b."
        assert scan_bytes(blob, policy=pol).verdict.value == "safe"
        print(sorted(m for m in ("lab_pkg", "pandas", "sklearn", "torch") if m in sys.modules))
        """
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
    assert not marker.exists()


def test_user_wildcard_outside_the_table_trusts_the_package_but_not_danger():
    pol = Policy([AllowEntry("mylab.*", Use.REF | Use.NEW, "ours", "user")])
    assert pol.judge("mylab.models", "Net", Use.NEW).status is Status.SAFE
    assert pol.judge("mylab.models", "_Block", Use.NEW).status is Status.SAFE
    assert pol.judge("mylab.models", "F.relu", Use.REF).status is Status.UNKNOWN
    assert pol.judge("mylab.models", "helper", Use.REF).status is Status.UNKNOWN
    assert pol.judge("mylab.models", "Net", Use.CALL).status is Status.UNKNOWN
    # re-exported stdlib openers stay dangerous under any module name
    for name in ("GzipFile", "Popen", "TemporaryDirectory", "ThreadPoolExecutor"):
        assert pol.judge("mylab.io", name, Use.NEW).status is Status.DANGEROUS, name


def test_table_covers_lowercase_classes_the_shape_rule_missed():
    pol = Policy()
    assert pol.judge("scipy.sparse._csr", "csr_matrix", Use.NEW).status is Status.SAFE
    assert pol.judge("scipy.sparse._csr", "csr_matrix", Use.CALL).status is Status.UNKNOWN
    assert pol.judge("scipy.sparse._csr", "np", Use.REF).status is Status.UNKNOWN
    assert pol.judge("scipy.sparse", "save_npz", Use.REF).status is Status.UNKNOWN


def test_cli_refuses_a_wildcard_over_dangerous_pandas_modules(tmp_path: Path):
    from trainguard.scan.policy import add_entry

    for pattern in ("pandas.core.computation.*", "pandas.io.*", "sklearn.datasets.*"):
        with pytest.raises(ConfigError):
            add_entry(tmp_path / "p.toml", AllowEntry(pattern, Use.REF, "no", "user"))


def test_generator_lists_only_classes_defined_at_home(tmp_path: Path, monkeypatch):
    """The generator's rules on a package built for the purpose: a re-export, a class whose
    ``__module__`` is rewritten over code in a dangerous module, a finaliser, a test suite."""
    import sys

    from trainguard.scan import allowlists
    from trainguard.scan.allowlists import _classes, _generate

    pkg = tmp_path / "tg_fakepkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from tg_fakepkg.models import Net\nfrom tg_fakepkg.io import Reader\n"
        "Reader.__module__ = 'tg_fakepkg'\n"
    )
    (pkg / "models.py").write_text(
        "from io import TextIOWrapper\nfrom collections import OrderedDict as Ordered\n"
        "class Net:\n    def forward(self): pass\n"
        "class Leaky:\n    def __del__(self): pass\n"
        "class plain_state: pass\n"
    )
    (pkg / "io.py").write_text("class Reader:\n    def read(self): pass\n")
    (pkg / "tests" / "__init__.py").write_text("class Hidden: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_classes.ROOTS, "tg_fakepkg", ("tg_fakepkg",))
    dangerous = allowlists.DANGEROUS_MODULES | {"tg_fakepkg.io"}
    monkeypatch.setattr(allowlists, "DANGEROUS_MODULES", dangerous)
    try:
        found = _generate.scan_root("tg_fakepkg")
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "tg_fakepkg"]:
            del sys.modules[name]
    assert found == {"tg_fakepkg.models": {"Net", "plain_state"}}
