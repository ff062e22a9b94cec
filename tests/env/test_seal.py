"""Seals: added/removed/modified files, mode changes, bad signatures, edited seal lines,
``fast`` (stat hints for data files only), and sealing refused on a tampered env."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from envkit import Env

from trainguard.env import SealRefused, exit_code, seal, verify
from trainguard.env.report import EnvReport


def hits(report: EnvReport, rule: str) -> set[str]:
    return {f.location.path for f in report.findings if f.rule.value == rule}


def make_seal(env: Env, tmp_path: Path, key: object = None) -> Path:
    out = tmp_path / "env.seal"
    info = seal(out, python=env.python, key=key, stdlib_pyc=False)  # type: ignore[arg-type]
    assert info.entries > 1000 and len(info.root) == 64
    assert info.report.findings == ()
    return out


def check(env: Env, sealed: Path, environ: dict[str, str], **kw: object) -> EnvReport:
    return verify(python=env.python, seal=sealed, environment=environ, **kw)  # type: ignore[arg-type]


def test_seal_round_trip_and_diff(env, tmp_path, clean_environ):
    sealed = make_seal(env, tmp_path)
    lines = sealed.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    assert header["format"] == "trainguard.env.seal" and str(env.site) in header["roots"]
    entry = next(json.loads(x) for x in lines[1:-2] if b"tinypkg/optim.py" in x)
    assert (
        entry["dist"] == "tinypkg==1.0" and entry["type"] == "file" and len(entry["sha256"]) == 64
    )
    assert {"path", "mode", "uid", "size", "sha256", "hint"} <= set(entry)

    clean = check(env, sealed, clean_environ)
    assert clean.findings == (), [f.to_json() for f in clean.findings]
    assert clean.checked.sealed == header["entries"] and clean.checked.pyc_vouched_by_seal >= 3
    assert any("not signed" in n for n in clean.notes)

    data = env.site / "tinypkg" / "data" / "table.txt"
    data.write_bytes(b"alpha 9\nbeta 2\n")
    config = env.root / "pyvenv.cfg"
    config.write_text(config.read_text() + "# x\n")
    script = env.root / "bin" / "tiny"
    os.chmod(script, 0o777)
    added = env.root / "bin" / "dropper"
    added.write_text("#!/bin/sh\n")
    removed = env.site / "_distutils_hack" / "__init__.py"
    removed.unlink()
    report = check(env, sealed, clean_environ)
    modified = {f.location.path: f for f in report.findings if f.rule.value == "env.file_modified"}
    assert {str(data), str(config), str(script)} <= set(modified)
    assert modified[str(script)].evidence["changed"] == ["mode"]
    assert str(added) in hits(report, "env.file_added")
    assert str(removed) in hits(report, "env.file_missing")
    assert exit_code(report) == 1


def test_regenerated_pyc_is_fine_but_edited_pyc_is_not(env, tmp_path, clean_environ):
    sealed = make_seal(env, tmp_path)
    pyc = next((env.site / "tinypkg" / "__pycache__").glob("optim.*.pyc"))
    pyc.unlink()  # a removed pyc is harmless: Python writes it again
    assert check(env, sealed, clean_environ).findings == ()
    init = next((env.site / "tinypkg" / "__pycache__").glob("__init__.*.pyc"))
    data = bytearray(init.read_bytes())
    data[-1] ^= 0x01
    init.write_bytes(bytes(data))
    assert str(init) in hits(check(env, sealed, clean_environ), "env.file_modified")


def test_fast_skips_only_data_files(env, tmp_path, clean_environ):
    sealed = make_seal(env, tmp_path)
    report = check(env, sealed, clean_environ, fast=True)
    assert report.findings == ()
    assert report.checked.skipped_by_hint > 0
    assert any(n.startswith("fast:") for n in report.notes)
    code = env.site / "tinypkg" / "optim.py"
    st = code.stat()
    code.write_bytes(code.read_bytes().replace(b"0.5", b"5.0"))
    os.utime(code, ns=(st.st_atime_ns, st.st_mtime_ns))  # forged stat hint
    assert str(code) in hits(check(env, sealed, clean_environ, fast=True), "env.file_modified")


def test_signed_seal(env, tmp_path, clean_environ):
    pytest.importorskip("cryptography")
    from trainguard import keys

    private, public = keys.generate_ed25519()
    key = tmp_path / "seal.key"
    key.write_bytes(private)
    os.chmod(key, 0o600)
    (tmp_path / "seal.pub").write_bytes(public)
    sealed = make_seal(env, tmp_path, key=key)
    ok = check(env, sealed, clean_environ, key=tmp_path / "seal.pub")
    assert ok.findings == () and exit_code(ok) == 0

    _, other = keys.generate_ed25519()
    bad = check(env, sealed, clean_environ, key=other)
    assert hits(bad, "env.seal_invalid") == {str(sealed)}
    assert exit_code(bad) == 1
    assert bad.findings[0].severity.label == "critical"


def test_unsigned_seal_with_key_is_invalid(env, tmp_path, clean_environ):
    pytest.importorskip("cryptography")
    from trainguard import keys

    sealed = make_seal(env, tmp_path)
    report = check(env, sealed, clean_environ, key=keys.generate_ed25519()[1])
    assert hits(report, "env.seal_invalid") == {str(sealed)}


def test_edited_seal_line(env, tmp_path, clean_environ):
    sealed = make_seal(env, tmp_path)
    lines = sealed.read_bytes().split(b"\n")
    i = next(i for i, x in enumerate(lines) if b"tinypkg/optim.py" in x)
    entry = json.loads(lines[i])
    entry["sha256"] = "0" * 64
    lines[i] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    sealed.write_bytes(b"\n".join(lines))
    report = check(env, sealed, clean_environ)
    assert hits(report, "env.seal_invalid") == {str(sealed)}
    assert exit_code(report) == 1
    assert any("not used" in n for n in report.notes)


def test_seal_refuses_a_tampered_env(env, tmp_path):
    (env.site / "zz.pth").write_text("import os\n")
    with pytest.raises(SealRefused) as err:
        seal(tmp_path / "x.seal", python=env.python, stdlib_pyc=False)
    assert "env.startup_hook" in {f.rule.value for f in err.value.report.findings}
    assert not (tmp_path / "x.seal").exists()
    info = seal(tmp_path / "x.seal", python=env.python, stdlib_pyc=False, allow_findings=True)
    assert info.report.tampered and Path(info.path).exists()
