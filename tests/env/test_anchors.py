"""What a seal may be trusted for, before it is read: the state folder, the ownership and
permission rule (``state.why_unsafe``), pinned seals, and ``verify_anchored``'s choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from envkit import Env, rewrite_with_record

from trainguard.env import seal
from trainguard.env.state import state_dir, why_unsafe
from trainguard.env.tofu import first_use_path, verify_anchored

EVIL = b"def step(lr):\n    return lr * 9.9\n"


def rules(report) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    out: dict[str, set[str]] = {}
    for f in report.findings:
        out.setdefault(f.rule.value, set()).add(f.location.path)
    return out


def test_state_dir_precedence(tmp_path):
    assert state_dir({"TRAINGUARD_STATE_DIR": str(tmp_path)}) == tmp_path
    assert state_dir({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == Path("/x/state/trainguard")
    assert state_dir({"XDG_STATE_HOME": "relative", "HOME": "/h"}) == Path(
        "/h/.local/state/trainguard"
    )


def test_why_unsafe_walks_every_folder_up(tmp_path):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True, mode=0o700)
    file = folder / "x.seal"
    file.write_text("x")
    os.chmod(file, 0o600)
    assert why_unsafe(file) is None
    os.chmod(file, 0o646)
    assert "writable by everyone" in (why_unsafe(file) or "")
    os.chmod(file, 0o600)
    os.chmod(tmp_path / "a", 0o777)  # anyone could rename b and put his own in its place
    assert "writable by everyone" in (why_unsafe(file) or "")
    os.chmod(tmp_path / "a", 0o1777)  # sticky, like /tmp: only b's owner may rename it
    assert why_unsafe(file) is None
    os.chown(folder, 4242, 4242)  # but b is his
    assert "belongs to uid 4242" in (why_unsafe(file) or "")
    os.chown(folder, 0, 0)
    link = tmp_path / "link.seal"  # a link is judged by where it leads, too
    link.symlink_to(file)
    assert why_unsafe(link) is None
    os.chmod(file, 0o666)
    assert why_unsafe(link) is not None
    assert "cannot check" in (why_unsafe(tmp_path / "missing") or "")


def test_first_use_seal_writable_by_others_is_refused(env: Env, state, clean_environ):
    """The insider edits the first-use seal (recomputing its root is easy: it is not
    signed). What stops him is that he cannot write it: a seal file anyone could write is
    not used, and that is a critical finding, not a quiet fallback."""
    first = verify_anchored(env.python, environment=clean_environ)
    assert first.anchor == "first-use-sealed-now" and first.report.findings == ()
    path = first_use_path(env.python, state)
    assert first.seal == path and os.stat(path).st_mode & 0o777 == 0o400
    again = verify_anchored(env.python, environment=clean_environ)
    assert again.anchor == "first-use" and again.report.findings == ()
    assert again.report.checked.sealed > 1000  # stdlib and interpreter included

    target = rewrite_with_record(env, "tinypkg/optim.py", EVIL)
    seal(path, python=env.python, stdlib_pyc=False)  # his seal of his edit...
    os.chmod(path, 0o666)  # ...which he could only write because the file lets him
    refused = verify_anchored(env.python, environment=clean_environ)
    assert refused.anchor == "record"
    assert rules(refused.report)["env.seal_invalid"] == {str(path)}
    (finding,) = [f for f in refused.report.findings if f.rule.value == "env.seal_invalid"]
    assert finding.severity.label == "critical" and "writable by everyone" in finding.message
    assert str(target) not in rules(refused.report).get("env.file_modified", set())

    os.chmod(path, 0o400)
    os.chmod(path.parent, 0o777)  # the folder instead of the file
    assert verify_anchored(env.python, environment=clean_environ).anchor == "record"


def test_pinned_seal_unsigned_must_be_private(env: Env, state, tmp_path, clean_environ):
    pinned = tmp_path / "pinned" / "env.seal"
    pinned.parent.mkdir(mode=0o700)
    seal(pinned, python=env.python, stdlib_pyc=False)
    ok = verify_anchored(env.python, seal_path=pinned, environment=clean_environ)
    assert ok.anchor == "pinned" and ok.report.findings == () and "unsigned" in ok.trust
    assert not first_use_path(env.python, state).exists()  # a pinned seal is not TOFU
    os.chown(pinned, 4242, 4242)
    refused = verify_anchored(env.python, seal_path=pinned, environment=clean_environ)
    assert refused.anchor == "record"
    assert rules(refused.report)["env.seal_invalid"] == {str(pinned)}


def test_pinned_signed_seal_may_live_anywhere(env: Env, state, tmp_path, clean_environ):
    """Signed, the key decides: the file may sit in a shared folder others can write."""
    pytest.importorskip("cryptography")
    from trainguard import keys

    private, public = keys.generate_ed25519()
    key = tmp_path / "seal.key"
    key.write_bytes(private)
    os.chmod(key, 0o600)
    pub = tmp_path / "seal.pub"
    pub.write_bytes(public)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    pinned = shared / "env.seal"
    seal(pinned, python=env.python, stdlib_pyc=False, key=key)
    os.chown(pinned, 4242, 4242)
    ok = verify_anchored(env.python, seal_path=pinned, key=pub, environment=clean_environ)
    assert ok.anchor == "pinned" and ok.report.findings == () and "signed by key" in ok.trust
    rewrite_with_record(env, "tinypkg/optim.py", EVIL)
    caught = verify_anchored(env.python, seal_path=pinned, key=pub, environment=clean_environ)
    assert str(env.site / "tinypkg" / "optim.py") in rules(caught.report)["env.file_modified"]


def test_tampered_env_is_not_sealed_on_first_use(env: Env, state, clean_environ):
    (env.site / "zz.pth").write_text("import os\n")
    result = verify_anchored(env.python, environment=clean_environ)
    assert result.anchor == "record" and "env.startup_hook" in rules(result.report)
    assert not first_use_path(env.python, state).exists()
