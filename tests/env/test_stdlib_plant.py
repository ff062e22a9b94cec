"""The standard library planted through ``pyvenv.cfg``: ``home`` pointed at a copy of the
install with one module added. The venv's own files are untouched, so RECORD sees nothing;
``venvcfg`` sees it without a seal, and the seal sees the variant ``venvcfg`` cannot."""

from __future__ import annotations

import subprocess

from envkit import Env, set_home, stdlib_copy

from trainguard.env import seal, verify
from trainguard.env.report import EnvReport

PLANT = {"_planted.py": b"import pathlib\npathlib.Path('/nonexistent/marker').touch()\n"}


def found(report: EnvReport, rule: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report.findings:
        if f.rule.value == rule:
            out.setdefault(f.location.path, []).append(f.location.member or "")
    return out


def stdlib_of(python: str) -> str:
    code = "import sys; print(sys.path[1])"  # -I -S: zip, stdlib, lib-dynload
    return subprocess.run(
        [python, "-I", "-S", "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_home_pointed_at_a_planted_copy_is_caught_without_a_seal(env: Env, tmp_path, clean_environ):
    bin_dir = stdlib_copy(tmp_path / "copy", PLANT)
    cfg = set_home(env, bin_dir)
    assert stdlib_of(env.python).startswith(str(tmp_path / "copy"))  # the attack works
    report = verify(python=env.python, environment=clean_environ)
    hooks = [f for f in report.findings if f.rule.value == "env.startup_hook"]
    assert [(f.location.path, f.location.member) for f in hooks] == [(str(cfg), "home")]
    assert hooks[0].severity.label == "critical"
    assert any(d.startswith(str(tmp_path / "copy")) for d in hooks[0].evidence["loaded"])
    assert "env.file_modified" not in {f.rule.value for f in report.findings}  # RECORD: blind


def test_home_outside_the_interpreter_install(env: Env, tmp_path, clean_environ):
    elsewhere = tmp_path / "elsewhere" / "bin"
    elsewhere.mkdir(parents=True)
    cfg = set_home(env, elsewhere)
    report = verify(python=env.python, environment=clean_environ)
    assert found(report, "env.startup_hook") == {str(cfg): ["home"]}


def test_copied_interpreter_and_link_is_caught_by_the_seal(env: Env, tmp_path, clean_environ):
    """Binary copied too and the venv's link pointed at it: everything is consistent, so
    only the seal made before can tell. It names the move, not just 8000 new files."""
    sealed = tmp_path / "env.seal"
    seal(sealed, python=env.python, stdlib_pyc=False)
    bin_dir = stdlib_copy(tmp_path / "copy", PLANT, copy_binary=True)
    cfg = set_home(env, bin_dir)
    link = env.root / "bin" / "python"
    while link.is_symlink() and (env.root / "bin" / link.readlink()).is_symlink():
        link = env.root / "bin" / link.readlink()  # python -> python3 -> the base binary
    link.unlink()
    link.symlink_to(next(bin_dir.iterdir()))
    assert stdlib_of(env.python).startswith(str(tmp_path / "copy"))
    assert verify(python=env.python, environment=clean_environ).findings == ()  # no seal
    report = verify(python=env.python, seal=sealed, environment=clean_environ)
    hooks = found(report, "env.startup_hook")
    assert sorted(hooks[str(sealed)]) == ["interpreter", "stdlib_dirs"]
    modified = found(report, "env.file_modified")
    assert str(cfg) in modified and str(link) in modified
    assert str(
        bin_dir.parent / "lib" / stdlib_of(env.python).rsplit("/", 1)[1] / "_planted.py"
    ) in (found(report, "env.file_added"))
