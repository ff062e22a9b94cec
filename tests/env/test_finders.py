"""Import hooks after start-up (``env.finders``): a finder installed by a start-up route
the file checks accept (an editable install's finder module, rewritten with its RECORD row)
is reported; CPython's own hooks and verified files' hooks are not; a path is never
trusted for where it is."""

from __future__ import annotations

import os
from pathlib import Path

from envkit import Env, rewrite_with_record

from trainguard.env import finders, verify
from trainguard.findings import Finding

FINDER_MODULE = "__editable___proj_1_0_finder.py"


def plant(env: Env, outside: Path, hook: str) -> Path:
    """The editable finder module, rewritten (RECORD too) to install ``hook`` from a module
    kept outside the environment."""
    outside.mkdir()
    evil = outside / "_evil_finder.py"
    evil.write_text(
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        return None\n\n"
        "def hook(path):\n"
        "    raise ImportError\n"
    )
    body = (
        f"import sys\nsys.path.append({str(outside)!r})\nimport _evil_finder\n\n"
        f"def install():\n    {hook}\n"
    )
    rewrite_with_record(env, FINDER_MODULE, body.encode())
    return evil


def where(found: list[Finding]) -> set[tuple[str, str]]:
    """(file, hook list) of each finding: site runs a venv's .pth files twice (CPython
    3.11 does), so a planted hook may be there twice."""
    return {(f.location.path, (f.location.member or "").partition("[")[0]) for f in found}


def test_clean_env_has_only_known_hooks(env: Env, clean_environ):
    report = verify(python=env.python, environment=clean_environ)
    assert report.findings == ()
    hooks = finders.snapshot(env.python, clean_environ)
    assert any(h["name"] == "_distutils_hack.DistutilsMetaFinder" for h in hooks)  # RECORD
    assert finders.check(env.python, report, clean_environ) == []


def test_foreign_meta_path_finder_is_reported(env: Env, tmp_path, clean_environ):
    evil = plant(env, tmp_path / "outside", "sys.meta_path.insert(0, _evil_finder.Finder())")
    report = verify(python=env.python, environment=clean_environ)
    assert report.findings == ()  # RECORD agrees with itself: the file checks pass
    found = finders.check(env.python, report, clean_environ)
    assert where(found) == {(str(evil), "sys.meta_path")}
    assert {(f.rule.value, f.severity.label) for f in found} == {("env.startup_hook", "high")}
    assert found[0].evidence["hook"] == "_evil_finder.Finder"


def test_foreign_path_hook_is_reported(env: Env, tmp_path, clean_environ):
    evil = plant(env, tmp_path / "outside", "sys.path_hooks.insert(0, _evil_finder.hook)")
    report = verify(python=env.python, environment=clean_environ)
    found = finders.check(env.python, report, clean_environ)
    assert where(found) == {(str(evil), "sys.path_hooks")}


def test_a_real_filefinder_hook_with_a_foreign_loader_is_not_cpythons(env, tmp_path, clean_environ):
    hook = (
        "from importlib.machinery import FileFinder, SourceFileLoader\n"
        "    class L(SourceFileLoader): pass\n"
        "    sys.path_hooks.insert(0, FileFinder.path_hook((L, ['.py'])))"
    )
    plant(env, tmp_path / "outside", hook)
    report = verify(python=env.python, environment=clean_environ)
    found = finders.check(env.python, report, clean_environ)
    assert {kind for _, kind in where(found)} == {"sys.path_hooks"}


def test_verified_means_a_listed_file_never_a_folder(env: Env, tmp_path):
    vouched = finders._Vouched(None, [str(env.site)])
    assert vouched(str(env.site / FINDER_MODULE))  # in proj's RECORD
    loose = env.site / "loose.py"  # inside site-packages, in no RECORD
    loose.write_text("x = 1\n")
    assert not vouched(str(loose))
    assert not vouched(os.__file__)  # the standard library, without a seal: not vouched
    sealed = tmp_path / "s.seal"
    sealed.write_text(
        '{"format":"trainguard.env.seal"}\n'
        f'{{"path":"{os.__file__}","type":"file"}}\n'
        '{"leaves":2}\n'
    )
    assert finders._Vouched(sealed, [])(os.__file__)
    assert not finders._Vouched(sealed, [])(str(env.site / FINDER_MODULE))
