"""The allowlist policy: unknown is reported, dangerous cannot be allowed, entries expire."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from trainguard import ConfigError, Policy, Verdict, scan_bytes, scan_file
from trainguard.scan.policy import Status
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
    # a lower-case attribute of the package, or an attribute path, is not a class
    assert pol.judge("torch.nn.modules.linear", "F", Use.NEW).status is Status.SAFE
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
