"""The pieces on their own: Merkle root, canonical JSON, keys, .pth rules on the repo's own
venv, probe/CLI contracts (rule ids, exit codes, JSON and SARIF shapes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from trainguard.env import Checked, EnvReport, exit_code, merkle
from trainguard.env.canonical import fallback_dumps
from trainguard.env.probe import emit, hooks, layout, records
from trainguard.findings import Finding, Location, Rule, Severity

SARIF_SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "data" / "sarif-schema-2.1.0.json"


def test_merkle_matches_rfc6962_test_vectors():
    leaves = [
        bytes.fromhex(x)
        for x in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                  "606162636465666768696a6b6c6d6e6f"]
    ]  # fmt: skip
    assert merkle.root([]).hex().startswith("e3b0c442")
    assert merkle.root(leaves[:1]).hex().startswith("6e340b9c")
    assert merkle.root(leaves[:5]).hex().startswith("4e3bbb1f")
    assert merkle.root(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


def test_canonical_fallback_agrees_with_rfc8785():
    rfc8785 = pytest.importorskip("rfc8785")
    samples = [
        {"path": "/a/é/\u2028/x.py", "mode": 420, "uid": 0, "size": 2**53 - 1, "sha256": "ab",
         "dist": None, "hint": "1:2:3", "type": "file", "ctl": "\x01\x1f\t\n\"\\\x7f"},
        {"format": "trainguard.env.seal", "roots": ["/x", "/y"], "files": [], "ok": True},
    ]  # fmt: skip
    for s in samples:
        assert fallback_dumps(s) == rfc8785.dumps(s)
    with pytest.raises(ValueError):
        fallback_dumps({"n": 2**60})


def test_private_key_must_be_private(tmp_path):
    pytest.importorskip("cryptography")
    from trainguard import keys
    from trainguard.errors import ConfigError, VerificationError

    private, public = keys.generate_ed25519()
    path = tmp_path / "k.pem"
    path.write_bytes(private)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.load_private_key(path)
    os.chmod(path, 0o600)
    key = keys.load_private_key(path)
    sig = keys.sign(key, b"data")
    keys.verify(keys.load_public_key(public), b"data", sig)
    with pytest.raises(VerificationError):
        keys.verify(keys.load_public_key(public), b"other", sig)
    assert keys.fingerprint(keys.public_key_of(key)) == keys.fingerprint(
        keys.load_public_key(public)
    )


def test_real_venv_pth_files_are_all_known():
    """The repo's own venv has setuptools' distutils-precedence.pth and an editable
    install: neither may be reported (checked statically, without a full verify)."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = site / "site-packages"
    pths = sorted(str(p) for p in site.glob("*.pth"))
    if not pths:
        pytest.skip("not running in a venv with .pth files")
    dists = records.find_dists([str(site)])
    owned = {e.path: d for d in dists for e in d.entries}
    found, n = hooks.check_pth(pths, owned)
    assert found == [] and n == len(pths)


SHIM = (
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == "
    "'local'; enabled and __import__('_distutils_hack').add_shim();"
)
FINDER = "import __editable___p_1_finder; __editable___p_1_finder.install()"
EDITABLE = "__editable__.p-1.pth"


@pytest.mark.parametrize(
    ("name", "line", "editable", "owned_finder", "ok"),
    [
        ("distutils-precedence.pth", layout.pth_lines(SHIM.encode() + b" \n")[0].text, 0, 0, 1),
        ("other.pth", SHIM, 0, 0, 0),
        ("distutils-precedence.pth", "import os; os.system('x')", 0, 0, 0),
        (EDITABLE, FINDER, 1, 1, 1),
        (EDITABLE, FINDER, 0, 1, 0),  # the distribution is not an editable install
        (EDITABLE, FINDER, 1, 0, 0),  # the finder module is not the distribution's
        (EDITABLE, FINDER.replace("install", "run"), 1, 1, 0),
        (EDITABLE, FINDER.replace("p_1_finder.", "q_finder."), 1, 1, 0),
        (EDITABLE, FINDER + "; import os", 1, 1, 0),
        ("p.pth", FINDER, 1, 1, 0),
    ],
)
def test_known_pth_lines(tmp_path, name, line, editable, owned_finder, ok):
    dist = records.Dist("p", "1", str(tmp_path / "p-1.dist-info"), str(tmp_path), "RECORD")
    dist.editable = bool(editable)
    pth = str(tmp_path / name)
    owned = {pth: dist}
    if owned_finder:
        owned[str(tmp_path / "__editable___p_1_finder.py")] = dist
    assert hooks.allowed_exec_line(pth, line, dist, owned) is bool(ok)


def test_probe_rules_are_rules():
    for value in (emit.FILE_MODIFIED, emit.FILE_ADDED, emit.FILE_MISSING, emit.STARTUP_HOOK,
                  emit.SEAL_INVALID, emit.ERROR):  # fmt: skip
        assert Rule(value).value == value
    for sev in (emit.LOW, emit.MEDIUM, emit.HIGH, emit.CRITICAL):
        assert Severity.parse(sev).label == sev


def _report(*findings: Finding, complete: bool = True) -> EnvReport:
    return EnvReport(findings, Checked(distributions=1), 0.1, "/py", complete)


def test_exit_codes_and_renderers():
    jsonschema = pytest.importorskip("jsonschema")
    from trainguard.output.env import render

    clean = _report()
    hook = Finding(
        Rule.ENV_STARTUP_HOOK,
        Severity.CRITICAL,
        "LD_PRELOAD",
        Location("<environment>", "LD_PRELOAD"),
    )
    mod = Finding(Rule.ENV_FILE_MODIFIED, Severity.CRITICAL, "m", Location("/s/a.py"), {"x": 1})
    err = Finding(Rule.ENV_ERROR, Severity.HIGH, "e", Location("/s/b"))
    assert exit_code(clean) == 0
    assert exit_code(_report(Finding(Rule.ENV_FILE_ADDED, Severity.INFO, "i", Location("/x")))) == 0
    assert exit_code(_report(hook, mod)) == 1
    assert exit_code(_report(mod, err, complete=False)) == 2

    doc = json.loads(render(_report(hook, mod), "json"))
    assert set(doc) == {"findings", "summary"}
    assert doc["findings"][1] == {
        "rule": "env.file_modified",
        "severity": "critical",
        "message": "m",
        "location": {"path": "/s/a.py", "member": None, "offset": None},
        "evidence": {"x": 1},
    }
    assert doc["summary"]["intact"] is False and doc["summary"]["checked"]["distributions"] == 1

    sarif = json.loads(render(_report(hook, mod, err, complete=False), "sarif"))
    if SARIF_SCHEMA.exists():
        jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    results = sarif["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["env.startup_hook", "env.file_modified", "env.error"]
    assert "physicalLocation" not in results[0]["locations"][0]

    text = render(_report(hook, mod), "human")
    assert "TAMPERED" in text and "env.file_modified" in text and "/s/a.py" in text
    assert "INTACT" in render(clean, "human")


def test_ld_so_preload_and_autoload_variable(tmp_path):
    from trainguard.env import environ

    preload = tmp_path / "ld.so.preload"
    preload.write_text("# comment only\n")
    assert environ.check({}, preload_file=preload) == []
    preload.write_text("/usr/lib/libevil.so # hooks every process\n")
    [f] = environ.check({"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}, preload_file=preload)
    assert f.rule is Rule.ENV_STARTUP_HOOK and f.evidence["libraries"] == ["/usr/lib/libevil.so"]
    assert environ.check({}, ignore={str(preload)}, preload_file=preload) == []
    [on] = environ.check({"TORCH_DEVICE_BACKEND_AUTOLOAD": "1"}, preload_file=tmp_path / "none")
    assert on.location.member == "TORCH_DEVICE_BACKEND_AUTOLOAD"
