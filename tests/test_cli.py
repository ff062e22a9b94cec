"""The command line: exit codes, JSON shape, SARIF validity, -o."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard.cli import main

from pk import system_call

SARIF_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarif-schema-2.1.0.json"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "safe": tmp_path / "safe.pkl",
        "evil": tmp_path / "evil.pkl",
        "broken": tmp_path / "broken.pkl",
    }
    out["safe"].write_bytes(pickle.dumps({"a": 1}, protocol=4))
    out["evil"].write_bytes(system_call(str(tmp_path / "PWNED")))
    out["broken"].write_bytes(b"\x80\x04\x95\xff\xff")
    return out


def test_exit_codes(files, capsys):
    assert main(["scan", str(files["safe"])]) == 0
    assert main(["scan", str(files["evil"])]) == 1
    assert main(["scan", str(files["broken"])]) == 2
    assert main(["scan", str(files["evil"]), str(files["broken"])]) == 2  # 2 wins
    assert main(["scan", "/nonexistent/x.pt"]) == 2
    assert not (files["evil"].parent / "PWNED").exists()


def test_json_shape(files, capsys):
    rc = main(["scan", "--format", "json", str(files["evil"].parent)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 2
    assert set(doc) == {"files", "summary"}
    by_name = {Path(f["path"]).name: f for f in doc["files"]}
    evil = by_name["evil.pkl"]
    assert evil["verdict"] == "unsafe" and evil["format"] == "pickle"
    f = evil["findings"][0]
    assert {"rule", "severity", "message", "location", "evidence"} <= set(f)
    assert f["rule"] == "scan.code_execution" and f["severity"] == "critical"
    assert f["location"]["path"].endswith("evil.pkl")
    assert doc["summary"]["unsafe"] == 1 and doc["summary"]["error"] == 1


def test_sarif_validates_against_the_official_schema(files, tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    if not SARIF_SCHEMA.exists():
        pytest.skip(f"SARIF schema not present at {SARIF_SCHEMA}")
    out = tmp_path / "report.sarif"
    rc = main(["scan", "--format", "sarif", "-o", str(out), *map(str, files.values())])
    assert rc == 2
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads(SARIF_SCHEMA.read_text()))
    results = doc["runs"][0]["results"]
    assert {r["ruleId"] for r in results} >= {"scan.code_execution", "scan.error"}
    assert all(r["level"] in ("error", "warning", "note") for r in results)


def test_fail_on_unsafe_ignores_suspicious(tmp_path: Path):
    from pk import glob, proto

    p = tmp_path / "net.pkl"
    p.write_bytes(proto(2) + glob("mylab.models", "Net") + b")\x81}b.")
    assert main(["scan", str(p)]) == 1
    assert main(["scan", "--fail-on", "unsafe", str(p)]) == 0


def test_human_output_goes_to_stdout_summary_to_stderr(files, capsys):
    main(["scan", str(files["evil"])])
    cap = capsys.readouterr()
    assert "UNSAFE" in cap.out and "os.system" in cap.out
    assert "suspicious" in cap.err  # the summary table header


def test_console_script_runs(files):
    proc = subprocess.run(
        [sys.executable, "-m", "trainguard", "scan", "--format", "json", str(files["safe"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["safe"] == 1


def test_explain_lists_every_global_with_its_judgement(tmp_path: Path, capsys):
    from pk import glob, proto

    p = tmp_path / "mixed.pkl"
    p.write_bytes(
        proto(2)
        + glob("collections", "OrderedDict")
        + b")R"
        + glob("mylab.models", "Net")
        + b")\x81\x86."
    )
    main(["scan", "--explain", str(p)])
    out = capsys.readouterr().out
    assert "collections.OrderedDict" in out and "mylab.models.Net" in out
    assert "safe" in out and "unknown" in out
    main(["scan", "--explain", "--format", "json", str(p)])
    doc = json.loads(capsys.readouterr().out)
    judged = {g["name"]: g["status"] for g in doc["files"][0]["globals"]}
    assert judged == {"collections.OrderedDict": "safe", "mylab.models.Net": "unknown"}


def test_policy_add_then_scan_is_clean(tmp_path: Path, monkeypatch):
    from pk import glob, proto

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    p = tmp_path / "net.pkl"
    p.write_bytes(proto(2) + glob("mylab.models", "Net") + b")\x81}b.")
    assert main(["scan", str(p)]) == 1
    rc = main(
        ["policy", "add", "mylab.models.Net", "--reason", "our model", "--expires", "2099-01-01"]
    )
    assert rc == 0
    assert main(["scan", str(p)]) == 0
    assert main(["policy", "add", "os.system", "--reason", "no"]) == 2
    assert main(["policy", "add", "mylab.x.Y", "--reason", "r", "--uses", "exec"]) == 2
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.count("[[tool.trainguard.allow]]") == 1


def test_convert_cli_refuses_unsafe_and_converts_clean(tmp_path: Path):
    torch = pytest.importorskip("torch")
    clean, evil = tmp_path / "clean.pt", tmp_path / "evil.pt"
    torch.save({"w": torch.arange(4.0)}, clean)
    evil.write_bytes(system_call(str(tmp_path / "PWNED")))
    assert main(["convert", str(evil), str(tmp_path / "evil.safetensors")]) == 1
    assert not (tmp_path / "evil.safetensors").exists()
    assert main(["convert", str(clean), str(tmp_path / "clean.safetensors")]) == 0
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "clean.safetensors")["w"], torch.arange(4.0))
    assert not (tmp_path / "PWNED").exists()


def test_convert_without_safetensors_names_the_extra(tmp_path: Path, capsys, monkeypatch):
    """The README's own venv may lack the optional writer: exit 2 with the extra to
    install, never a traceback, and no output left behind."""
    torch = pytest.importorskip("torch")
    clean = tmp_path / "clean.pt"
    torch.save({"w": torch.arange(4.0)}, clean)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails
    assert main(["convert", str(clean), str(tmp_path / "out.safetensors")]) == 2
    assert "trainguard[convert]" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_keygen_sign_verify_cli(tmp_path: Path, capsys):
    pytest.importorskip("cryptography")
    keys, model = tmp_path / "keys", tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00" * 1000)
    (model / "config.json").write_text("{}")
    assert main(["keygen", "--out", str(keys)]) == 0
    assert main(["keygen", "--out", str(keys)]) == 2
    ledger = tmp_path / "ledger"
    assert (
        main(["sign", str(model), "--key", str(keys / "signing.key"), "--ledger", str(ledger)]) == 0
    )
    recorded = ["verify", "--recorded", "--ledger", str(ledger), "--key", str(keys / "signing.pub")]
    assert main(recorded) == 0
    args = ["verify", str(model), "--key", str(keys / "signing.pub"), "--format", "json"]
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (model / "weights.bin").write_bytes(b"\x01" * 1000)
    (model / "rng_state.pth").write_bytes(b"new")
    assert main(args) == 1
    rules = {f["rule"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert rules == {"checkpoint.modified", "checkpoint.added"}
    assert main(recorded) == 1
    other = tmp_path / "other"
    assert main(["keygen", "--out", str(other)]) == 0
    assert main(["verify", str(model), "--key", str(other / "signing.pub")]) == 1  # wrong key
