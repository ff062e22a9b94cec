"""Signed checkpoints: round trips, every kind of tampering, and interoperability with the
real OpenSSF ``model_signing`` CLI in both directions."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from trainguard import checkpoints, keys
from trainguard.errors import ConfigError, IntegrityError, VerificationError
from trainguard.findings import Rule, Severity

# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    """(private key path, public key path) of a fresh P-256 pair, private file 0600."""
    d = tmp_path_factory.mktemp("keys")
    private, public = keys.generate_ecdsa_p256()
    (d / "key.pem").write_bytes(private)
    os.chmod(d / "key.pem", 0o600)
    (d / "key.pub").write_bytes(public)
    return d / "key.pem", d / "key.pub"


@pytest.fixture
def model(tmp_path):
    """A small checkpoint folder, with names whose order differs between string and
    path-component sorting (``a.b`` vs ``a/b``) and files that must be ignored."""
    root = tmp_path / "run-1"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"nested")
    (root / "a.b").write_bytes(b"dotted")
    (root / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "optimizer.pt").write_bytes(os.urandom(50_000))
    (root / "empty").write_bytes(b"")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    return root


def rules(result):
    return [(f.rule, f.evidence["name"]) for f in result.findings]


# --- round trips -----------------------------------------------------------------------


def test_folder_round_trip(model, keypair):
    signed = checkpoints.sign(model, keypair[0])
    assert Path(signed.signature) == model / "model.sig"
    names = [f.name for f in signed.manifest.files]
    assert names == ["a/b", "a.b", "empty", "model.safetensors", "optimizer.pt"]
    assert signed.manifest.files[0].sha256 == hashlib.sha256(b"nested").hexdigest()
    assert {".git", "model.sig"} <= set(signed.manifest.ignore_paths)

    result = checkpoints.verify(model, keypair[1])
    assert result.ok and result.signed and result.findings == ()
    assert result.checked == 5
    assert result.manifest is not None
    assert result.manifest.manifest_digest == signed.manifest.manifest_digest
    assert result.manifest.root_digest == signed.manifest.root_digest
    assert (
        result.key_id == signed.key_id == keys.fingerprint(keys.load_ecdsa_public_key(keypair[1]))
    )
    result.require_ok()
    json.dumps(result.to_json())


def test_single_file_round_trip(tmp_path, keypair):
    ckpt = tmp_path / "step-100.pt"
    ckpt.write_bytes(b"weights" * 1000)
    signed = checkpoints.sign(ckpt, keypair[0])
    assert Path(signed.signature) == tmp_path / "step-100.pt.sig"
    assert [(f.name, f.size) for f in signed.manifest.files] == [(".", 7000)]
    assert checkpoints.verify(ckpt, keypair[1]).ok

    ckpt.write_bytes(b"weights" * 999 + b"WEIGHTS")
    assert rules(checkpoints.verify(ckpt, keypair[1])) == [(Rule.CHECKPOINT_MODIFIED, ".")]
    ckpt.unlink()
    assert rules(checkpoints.verify(ckpt, keypair[1])) == [(Rule.CHECKPOINT_MISSING, ".")]


def test_signature_elsewhere_and_extra_ignores(model, keypair, tmp_path):
    (model / "logs").mkdir()
    (model / "logs" / "train.log").write_text("noise")
    out = tmp_path / "elsewhere.sig"
    checkpoints.sign(model, keypair[0], out=out, ignore_paths=["logs"])
    (model / "logs" / "train.log").write_text("more noise")
    assert not (model / "model.sig").exists()
    assert checkpoints.verify(model, keypair[1], signature=out).ok


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_named_path_may_be_a_link(model, keypair, tmp_path):
    """``latest -> run-1`` is how people point at checkpoints: the path given is
    followed (links inside the checkpoint are not)."""
    latest = tmp_path / "latest"
    latest.symlink_to(model)
    assert Path(checkpoints.sign(latest, keypair[0]).signature) == latest / "model.sig"
    assert checkpoints.verify(model, keypair[1]).ok
    assert checkpoints.verify(latest, keypair[1]).ok


def test_import_pulls_in_neither_torch_nor_cryptography():
    code = (
        "import sys, trainguard.checkpoints; "
        "print([m for m in ('torch', 'cryptography') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- what verify reports ---------------------------------------------------------------


def test_modified_byte(model, keypair):
    checkpoints.sign(model, keypair[0])
    data = bytearray((model / "model.safetensors").read_bytes())
    data[123_456] ^= 1
    (model / "model.safetensors").write_bytes(bytes(data))
    result = checkpoints.verify(model, keypair[1])
    assert not result.ok and result.signed
    assert rules(result) == [(Rule.CHECKPOINT_MODIFIED, "model.safetensors")]
    finding = result.findings[0]
    assert finding.severity is Severity.HIGH
    assert finding.location.path == str(model / "model.safetensors")
    assert finding.evidence["actual_sha256"] == hashlib.sha256(bytes(data)).hexdigest()
    assert finding.evidence["expected_sha256"] != finding.evidence["actual_sha256"]
    with pytest.raises(IntegrityError, match=r"checkpoint\.modified"):
        result.require_ok()


def test_deleted_added_and_ignored(model, keypair):
    checkpoints.sign(model, keypair[0])
    (model / "a" / "b").unlink()
    (model / "rng_state.pth").write_bytes(b"planted")
    (model / ".git" / "HEAD").write_bytes(b"ignored change")
    result = checkpoints.verify(model, keypair[1])
    assert rules(result) == [
        (Rule.CHECKPOINT_MISSING, "a/b"),
        (Rule.CHECKPOINT_ADDED, "rng_state.pth"),
    ]
    assert all(f.severity is Severity.HIGH for f in result.findings)
    from trainguard.output import sarif

    doc = json.loads(sarif.log([(f, {}) for f in result.findings]))
    assert {r["ruleId"] for r in doc["runs"][0]["results"]} == {
        "checkpoint.missing",
        "checkpoint.added",
    }


def test_unsigned_and_gone(model, keypair, tmp_path):
    result = checkpoints.verify(model, keypair[1])
    assert not result.ok and not result.signed and result.manifest is None
    assert [f.rule for f in result.findings] == [Rule.CHECKPOINT_UNSIGNED]
    assert result.findings[0].evidence["expected_signature"] == str(model / "model.sig")

    checkpoints.sign(model, keypair[0])
    shutil.rmtree(model)
    gone = checkpoints.verify(model, keypair[1])
    assert [f.rule for f in gone.findings] == [Rule.CHECKPOINT_MISSING] and not gone.ok


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs")
def test_links_and_fifos_are_reported_never_followed(model, keypair, tmp_path):
    checkpoints.sign(model, keypair[0])
    elsewhere = tmp_path / "other-run.pt"
    shutil.copy(model / "optimizer.pt", elsewhere)
    (model / "optimizer.pt").unlink()
    (model / "optimizer.pt").symlink_to(elsewhere)  # same bytes, but not this checkpoint's
    os.mkfifo(model / "pipe")  # opening it would hang a naive verifier
    result = checkpoints.verify(model, keypair[1])
    assert rules(result) == [
        (Rule.CHECKPOINT_MODIFIED, "optimizer.pt"),
        (Rule.CHECKPOINT_ADDED, "pipe"),
    ]
    assert result.findings[0].evidence["kind"] == "symbolic link"
    with pytest.raises(ConfigError, match="only regular files"):
        checkpoints.sign(model, keypair[0])


# --- the signature itself: raises ------------------------------------------------------


def _edit_bundle(path: Path, edit) -> None:
    bundle = json.loads(path.read_text())
    edit(bundle)
    path.write_text(json.dumps(bundle))


def test_tampered_signature_raises(model, keypair):
    checkpoints.sign(model, keypair[0])
    sig_file = model / "model.sig"
    original = sig_file.read_bytes()

    def flip_sig(b):
        raw = bytearray(base64.b64decode(b["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-1] ^= 1
        b["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()

    def rewrite_digest(b):
        statement = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
        statement["predicate"]["resources"][0]["digest"] = "0" * 64
        payload = json.dumps(statement).encode()
        b["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()

    def drop_hint(b):  # old bundles have no hint; the signature must still be checked
        del b["verificationMaterial"]["publicKey"]["hint"]
        flip_sig(b)

    for edit in (flip_sig, rewrite_digest, drop_hint):
        sig_file.write_bytes(original)
        _edit_bundle(sig_file, edit)
        with pytest.raises(VerificationError, match="does not verify"):
            checkpoints.verify(model, keypair[1])

    sig_file.write_bytes(original)
    _edit_bundle(sig_file, lambda b: b["dsseEnvelope"].update(payloadType="text/plain"))
    with pytest.raises(VerificationError, match="payload type"):
        checkpoints.verify(model, keypair[1])
    for junk in (b"", b"{not json", b"[]", original[:100]):
        sig_file.write_bytes(junk)
        with pytest.raises(VerificationError, match=r"malformed|not JSON"):
            checkpoints.verify(model, keypair[1])


def test_other_key_raises(model, keypair, tmp_path):
    checkpoints.sign(model, keypair[0])
    _, other_public = keys.generate_ecdsa_p256()
    with pytest.raises(VerificationError, match="different key"):
        checkpoints.verify(model, other_public)


def test_signed_but_inconsistent_statement_raises(model, keypair):
    """A correctly signed statement whose subject digest does not match its files (a
    buggy signer) is refused, not half-trusted."""
    key = keys.load_ecdsa_private_key(keypair[0])
    from trainguard.checkpoints import _bundle

    payload = json.loads(_bundle.statement_bytes("m", [("x", "ab" * 32)], []))
    payload["subject"][0]["digest"]["sha256"] = "cd" * 32
    raw = json.dumps(payload).encode()
    hint = keys.key_hint(key.public_key())
    (model / "model.sig").write_bytes(
        _bundle.bundle_bytes(raw, keys.ecdsa_sign(key, _bundle.pae(raw)), hint)
    )
    with pytest.raises(VerificationError, match="subject digest"):
        checkpoints.verify(model, keypair[1])


# --- keys ------------------------------------------------------------------------------


def test_private_key_0644_refused(model, keypair, tmp_path):
    loose = tmp_path / "loose.pem"
    loose.write_bytes(keypair[0].read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.load_ecdsa_private_key(loose)
    with pytest.raises(ConfigError, match="chmod 600"):
        checkpoints.sign(model, loose)
    assert not (model / "model.sig").exists()


def test_ecdsa_keys(tmp_path):
    private, public = keys.generate_ecdsa_p256()
    assert b"BEGIN PRIVATE KEY" in private and b"BEGIN PUBLIC KEY" in public
    (tmp_path / "k").write_bytes(private)
    os.chmod(tmp_path / "k", 0o600)
    key = keys.load_ecdsa_private_key(tmp_path / "k")
    pub = keys.load_ecdsa_public_key(public)
    sig = keys.ecdsa_sign(key, b"data")
    assert sig[0] == 0x30  # DER SEQUENCE, as sigstore bundles carry it
    keys.ecdsa_verify(pub, b"data", sig)
    for bad in (b"other",):
        with pytest.raises(VerificationError):
            keys.ecdsa_verify(pub, bad, sig)
    with pytest.raises(VerificationError):
        keys.ecdsa_verify(pub, b"data", b"not DER")
    assert keys.key_hint(pub) == hashlib.sha256(public).hexdigest()
    assert keys.fingerprint(pub) == keys.key_hint(pub)[:16]

    ed_private, ed_public = keys.generate_ed25519()
    (tmp_path / "ed").write_bytes(ed_private)
    os.chmod(tmp_path / "ed", 0o600)
    with pytest.raises(ConfigError, match="not an ECDSA key"):
        keys.load_ecdsa_private_key(tmp_path / "ed")
    with pytest.raises(ConfigError, match="not an ECDSA key"):
        keys.load_ecdsa_public_key(ed_public)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = p384.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigError, match="only P-256"):
        keys.load_ecdsa_public_key(pem)


# --- save ------------------------------------------------------------------------------


class LedgerStub:
    def __init__(self):
        self.events = []

    def append_event(self, message, *, evidence):
        self.events.append((message, dict(evidence)))


def test_save_hashes_while_writing(tmp_path, keypair, monkeypatch):
    torch = pytest.importorskip("torch")
    from trainguard.checkpoints import _tree

    read_back = []
    real = _tree.sha256_file
    monkeypatch.setattr(_tree, "sha256_file", lambda p: read_back.append(p) or real(p))

    state = {"w": torch.randn(512, 1024), "b": torch.arange(10), "step": 7}
    ledger = LedgerStub()
    saved = checkpoints.save(state, tmp_path / "ckpt.pt", private_key=keypair[0], ledger=ledger)
    data = (tmp_path / "ckpt.pt").read_bytes()
    assert saved.sha256 == hashlib.sha256(data).hexdigest() and saved.size == len(data)
    assert read_back == []  # the digest came from the writes, not from reading the file
    assert not list(tmp_path.glob(".ckpt.pt.tmp*"))
    assert saved.signature == str(tmp_path / "ckpt.pt.sig")

    verified = checkpoints.verify(tmp_path / "ckpt.pt", keypair[1])
    assert verified.ok
    assert verified.manifest.manifest_digest == saved.manifest.manifest_digest
    [(message, evidence)] = ledger.events
    assert "ckpt.pt" in message
    assert evidence["manifest_digest"] == saved.manifest.manifest_digest
    assert evidence["key_id"] == saved.key_id and evidence["bytes"] == len(data)
    assert torch.equal(torch.load(tmp_path / "ckpt.pt")["w"], state["w"])


def test_save_into_folder(tmp_path, keypair, monkeypatch):
    torch = pytest.importorskip("torch")
    from trainguard.checkpoints import _tree

    folder = tmp_path / "step-200"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    read_back = []
    real = _tree.sha256_file
    monkeypatch.setattr(_tree, "sha256_file", lambda p: read_back.append(p.name) or real(p))

    saved = checkpoints.save({"x": torch.ones(3)}, folder, private_key=keypair[0], name="model.pt")
    assert read_back == ["config.json"]
    assert [f.name for f in saved.manifest.files] == ["config.json", "model.pt"]
    assert saved.sha256 == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    assert checkpoints.verify(folder, keypair[1]).ok

    with pytest.raises(ConfigError, match="relative path inside"):
        checkpoints.save({}, folder, name="../escape.pt")
    unsigned = checkpoints.save({"x": torch.zeros(3)}, tmp_path / "plain.pt", ledger=LedgerStub())
    assert unsigned.signature is None and not (tmp_path / "plain.pt.sig").exists()


# --- the real upstream tool ------------------------------------------------------------


def _upstream_cli() -> tuple[list[str] | None, str]:
    """How to run ``model_signing``: $TRAINGUARD_MODEL_SIGNING_CLI, this interpreter
    (``python -m model_signing``, with the pyOpenSSL it imports but does not declare),
    the CLI on PATH, or a side venv at /work/ms-venv."""
    env = os.environ.get("TRAINGUARD_MODEL_SIGNING_CLI")
    candidates = [shlex.split(env)] if env else []  # when set, the only one tried
    if (
        not env
        and importlib.util.find_spec("model_signing")
        and importlib.util.find_spec("OpenSSL")
    ):
        candidates.append([sys.executable, "-m", "model_signing"])
    if not env and shutil.which("model_signing"):
        candidates.append([shutil.which("model_signing") or ""])
    if not env and Path("/work/ms-venv/bin/model_signing").exists():
        candidates.append(["/work/ms-venv/bin/model_signing"])
    errors = []
    for cmd in candidates:
        try:
            probe = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
        except OSError as exc:
            errors.append(f"{cmd}: {exc}")
            continue
        if probe.returncode == 0:
            return cmd, ""
        errors.append(f"{cmd}: {probe.stderr.strip()[-200:]}")
    why = "; ".join(errors) or "not installed"
    return None, (
        "upstream model_signing CLI unavailable "
        f"(pip install model-signing==1.1.1 pyOpenSSL, or set TRAINGUARD_MODEL_SIGNING_CLI): {why}"
    )


@pytest.fixture(scope="module")
def upstream():
    cmd, why = _upstream_cli()
    if cmd is None:
        pytest.skip(why)

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)

    return run


def test_upstream_verifies_ours(model, keypair, upstream, tmp_path):
    private, public = keypair
    checkpoints.sign(model, private)
    ok = upstream(
        "verify", "key", "--signature", model / "model.sig", "--public_key", public, model
    )
    assert ok.returncode == 0, ok.stderr

    single = tmp_path / "solo.pt"
    single.write_bytes(b"solo" * 100)
    checkpoints.sign(single, private)
    sig = tmp_path / "solo.pt.sig"
    ok = upstream("verify", "key", "--signature", sig, "--public_key", public, single)
    assert ok.returncode == 0, ok.stderr

    (model / "a.b").write_bytes(b"tampered")
    bad = upstream(
        "verify", "key", "--signature", model / "model.sig", "--public_key", public, model
    )
    assert bad.returncode != 0 and "a.b" in bad.stderr


def test_upstream_verifies_ours_with_a_ledger_position(model, keypair, upstream, tmp_path):
    """``save(..., ledger=...)`` signs the ledger's position into the predicate; the
    upstream verifier must still accept the bundle."""
    torch = pytest.importorskip("torch")
    from trainguard.ledger import Ledger

    private, public = keypair
    with Ledger(tmp_path / "ledger") as led:
        led.append_event("step 1")
        checkpoints.save({"w": torch.ones(3)}, model, private_key=private, ledger=led)
    result = checkpoints.verify(model, public)
    assert result.ok and result.manifest is not None and result.manifest.ledger is not None
    ok = upstream(
        "verify", "key", "--signature", model / "model.sig", "--public_key", public, model
    )
    assert ok.returncode == 0, ok.stderr


def test_we_verify_upstreams(model, keypair, upstream, tmp_path):
    private, public = keypair
    ours = checkpoints.sign(model, private, out=tmp_path / "ours.sig").manifest
    made = upstream(
        "sign", "key", "--signature", model / "model.sig", "--private_key", private, model
    )
    assert made.returncode == 0, made.stderr

    result = checkpoints.verify(model, public)
    assert result.ok, result.findings
    # same files, same order, same digests: one manifest, whichever tool signed it
    assert result.manifest is not None
    assert [(f.name, f.sha256) for f in result.manifest.files] == [
        (f.name, f.sha256) for f in ours.files
    ]
    assert result.manifest.manifest_digest == ours.manifest_digest
    assert result.manifest.root_digest == ours.root_digest

    (model / "optimizer.pt").write_bytes(b"changed")
    (model / "extra.bin").write_bytes(b"new")
    assert rules(checkpoints.verify(model, public)) == [
        (Rule.CHECKPOINT_ADDED, "extra.bin"),
        (Rule.CHECKPOINT_MODIFIED, "optimizer.pt"),
    ]
    bad = upstream(
        "verify", "key", "--signature", model / "model.sig", "--public_key", public, model
    )
    assert bad.returncode != 0

    single = tmp_path / "solo.bin"
    single.write_bytes(b"x" * 4096)
    made = upstream(
        "sign", "key", "--signature", tmp_path / "solo.sig", "--private_key", private, single
    )
    assert made.returncode == 0, made.stderr
    assert checkpoints.verify(single, public, signature=tmp_path / "solo.sig").ok
