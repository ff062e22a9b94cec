"""Every tampering route of issue 4 against a throwaway venv: right alert id, right path."""

from __future__ import annotations

import os
import py_compile
import subprocess
from pathlib import Path

from envkit import Env, record_hash

from trainguard.env import EnvReport, exit_code, verify


def run(env: Env, environ: dict[str, str], **kw: object) -> EnvReport:
    return verify(python=env.python, environment=environ, **kw)  # type: ignore[arg-type]


def hits(report: EnvReport, rule: str) -> set[str]:
    return {f.location.path for f in report.findings if f.rule.value == rule}


def same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    """Edit in place keeping size and mtime (the ``touch -r`` trick)."""
    assert len(old) == len(new)
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_clean_env_has_no_findings(env, clean_environ):
    report = run(env, clean_environ)
    assert report.findings == (), [f.to_json() for f in report.findings]
    assert exit_code(report) == 0
    assert report.complete and report.checked.distributions == 3
    assert report.checked.pyc >= 3 and report.checked.pth == 2


def test_edited_py_same_size_and_mtime(env, clean_environ):
    target = env.site / "tinypkg" / "optim.py"
    same_size_edit(target, b"lr * 0.5", b"lr * 5.0")
    report = run(env, clean_environ)
    assert str(target) in hits(report, "env.file_modified")
    assert exit_code(report) == 1
    # the .pyc header still matches (same size, same mtime) and now disagrees with source
    pyc = env.site / "tinypkg" / "__pycache__" / "optim.cpython-311.pyc"
    if pyc.exists():
        assert str(pyc) in hits(report, "env.file_modified")


def test_edited_pyc_keeps_header(env, clean_environ):
    source = env.site / "tinypkg" / "optim.py"
    pyc = next((env.site / "tinypkg" / "__pycache__").glob("optim.*.pyc"))
    header = pyc.read_bytes()[:16]
    evil = env.root / "evil.py"
    evil.write_text("def step(lr):\n    return lr * 100\n")
    py_compile.compile(str(evil), cfile=str(env.root / "evil.pyc"))
    pyc.write_bytes(header + (env.root / "evil.pyc").read_bytes()[16:])
    report = run(env, clean_environ)
    found = [f for f in report.findings if f.location.path == str(pyc)]
    assert [f.rule.value for f in found] == ["env.file_modified"]
    assert found[0].evidence["source"] == str(source)
    assert str(source) not in hits(report, "env.file_modified")  # RECORD alone sees nothing


def test_deleted_and_added_files(env, clean_environ):
    gone = env.site / "tinypkg" / "data" / "table.txt"
    gone.unlink()
    added = env.site / "tinypkg" / "backdoor.py"
    added.write_text("import os\n")
    top = env.site / "helper.py"
    top.write_text("x = 1\n")
    report = run(env, clean_environ)
    assert str(gone) in hits(report, "env.file_missing")
    assert {str(added), str(top)} <= hits(report, "env.file_added")


def test_orphan_pyc_is_added(env, clean_environ):
    orphan = env.site / "tinypkg" / "__pycache__" / "ghost.cpython-311.pyc"
    orphan.write_bytes(b"\0" * 32)
    assert str(orphan) in hits(run(env, clean_environ), "env.file_added")


def test_pth_with_import_line(env, clean_environ):
    pth = env.site / "zzz-evil.pth"
    pth.write_text("/nonexistent\nimport os; os.environ.setdefault('X', '1')\n")
    report = run(env, clean_environ)
    hook = [f for f in report.findings if f.rule.value == "env.startup_hook"]
    assert [(f.location.path, f.location.member) for f in hook] == [(str(pth), "line 2")]
    assert str(pth) in hits(report, "env.file_added")


def test_pth_carriage_return_and_bom_lines_count(env, clean_environ):
    a = env.site / "a.pth"
    a.write_bytes(b"/somewhere\rimport os\n")
    b = env.site / "b.pth"
    b.write_bytes(b"\xef\xbb\xbfimport os\n")
    found = hits(run(env, clean_environ), "env.startup_hook")
    assert {str(a), str(b)} <= found


def test_editable_finder_line_needs_its_editable_owner(env, clean_environ):
    # same line, but the finder module is not owned by the .pth's distribution
    info = env.dist_info("proj")
    (info / "direct_url.json").write_text('{"url": "file:///x", "dir_info": {}}')
    report = run(env, clean_environ)
    assert str(env.site / "__editable__.proj-1.0.pth") in hits(report, "env.startup_hook")


def test_sitecustomize_is_reported_and_never_run(env, clean_environ, tmp_path):
    marker = tmp_path / "MARKER"
    custom = env.site / "sitecustomize.py"
    custom.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    subprocess.run([env.python, "-c", "pass"], check=True)  # a normal start runs it
    assert marker.exists()
    marker.unlink()
    report = run(env, clean_environ)
    assert not marker.exists(), "verify executed the sitecustomize it checks"
    assert str(custom) in hits(report, "env.startup_hook")
    user = env.site / "usercustomize.py"
    user.write_text("pass\n")
    assert str(user) in hits(run(env, clean_environ), "env.startup_hook")


def test_dist_info_without_record(env, clean_environ):
    info = env.dist_info("tinypkg")
    (info / "RECORD").unlink()
    report = run(env, clean_environ)
    assert str(info) in hits(report, "env.file_added")


def test_fake_dist_registers_torch_backend(env, clean_environ):
    fake = env.site / "torch_accel-0.1.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torch-accel\nVersion: 0.1\n\n")
    (fake / "entry_points.txt").write_text("[torch.backends]\naccel = evil_mod:_autoload\n")
    (env.site / "evil_mod.py").write_text("def _autoload():\n    pass\n")
    rows = [
        f"{p.relative_to(env.site).as_posix()},{record_hash(p.read_bytes())},{p.stat().st_size}"
        for p in (fake / "METADATA", fake / "entry_points.txt", env.site / "evil_mod.py")
    ]
    (fake / "RECORD").write_text("\n".join(rows) + "\ntorch_accel-0.1.dist-info/RECORD,,\n")
    report = run(env, clean_environ)
    hooks = [f for f in report.findings if f.rule.value == "env.startup_hook"]
    assert len(hooks) == 1
    assert hooks[0].location.path == str(fake / "entry_points.txt")
    assert hooks[0].evidence["distribution"] == "torch-accel==0.1"
    assert hooks[0].evidence["target"] == "evil_mod:_autoload"
    # a console script is not auto-loaded: the clean env's tinypkg has one and is silent
    assert not any("tinypkg" in f.location.path for f in report.findings)


def test_stdlib_shadowing(env, clean_environ):
    shadow = env.site / "json.py"
    shadow.write_text("loads = eval\n")
    report = run(env, clean_environ)
    assert str(shadow) in hits(report, "env.startup_hook")


def test_rewritten_record_needs_the_wheelhouse(env, clean_environ):
    target = env.site / "tinypkg" / "optim.py"
    new = b"def step(lr):\n    return lr * 9.9\n"
    target.write_bytes(new)
    info = env.dist_info("tinypkg")
    record = (info / "RECORD").read_text().splitlines()
    record = [
        f"tinypkg/optim.py,{record_hash(new)},{len(new)}"
        if r.startswith("tinypkg/optim.py,")
        else r
        for r in record
    ]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    blind = run(env, clean_environ)
    assert str(target) not in hits(blind, "env.file_modified")  # RECORD agrees with itself
    report = run(env, clean_environ, wheelhouse=env.wheelhouse)
    modified = {f.location.path: f for f in report.findings if f.rule.value == "env.file_modified"}
    assert modified[str(target)].evidence["source"] == "wheel"
    assert str(info / "RECORD") in modified
    assert report.checked.wheels == 3


def test_environment_variables(env, clean_environ):
    environ = {**clean_environ, "LD_PRELOAD": "/tmp/evil.so", "PYTHONSTARTUP": "/tmp/s.py"}
    report = run(env, environ)
    by_var = {f.location.member: f for f in report.findings if f.rule.value == "env.startup_hook"}
    assert by_var["LD_PRELOAD"].severity.label == "critical"
    assert by_var["PYTHONSTARTUP"].severity.label == "medium"
    quiet = run(env, environ, ignore={"LD_PRELOAD", "PYTHONSTARTUP"})
    assert quiet.findings == ()


def test_distributions_and_record_only(env, clean_environ):
    target = env.site / "tinypkg" / "optim.py"
    same_size_edit(target, b"lr * 0.5", b"lr * 5.0")
    (env.site / "json.py").write_text("x = 1\n")
    report = run(env, clean_environ, distributions=["TinyPkg"], record_only=True)
    assert hits(report, "env.file_modified") == {str(target)}  # no pyc, no hooks checked
    assert report.checked.distributions == 1 and report.checked.pyc == 0
    missing = run(env, clean_environ, distributions=["nope"])
    assert exit_code(missing) == 2
