"""The red-team kit's verdicts (``sabotage_kit.judge``) on hand-made alert lists, and the
kit's registry: the matrix trusts both, so both are attacked here without training."""

from __future__ import annotations

from collections import Counter

import sabotage_kit as kit
from sabotage_kit import AlertRecord, Attack, Job

WEIGHT = "runtime.weight_tamper"


def _noop(job: Job) -> None:
    return None


def _alert(rule: str, step: int, **evidence: object) -> AlertRecord:
    return AlertRecord(rule, step, "where", "message", dict(evidence))


ATTACK = Attack("edit", "basic", (WEIGHT,), 5, _noop)


def test_caught_within_every_steps_of_the_injection() -> None:
    assert kit.judge(ATTACK, [_alert(WEIGHT, 9)]).verdict == "caught"
    assert kit.judge(ATTACK, [_alert(WEIGHT, 10)]).verdict == "late"


def test_an_alert_before_the_injection_does_not_count() -> None:
    # step 4 is the last completed step when a step-5 injection is judged: it counts
    assert kit.judge(ATTACK, [_alert(WEIGHT, 4)]).verdict == "caught"
    assert kit.judge(ATTACK, [_alert(WEIGHT, 3)]).verdict == "wrong-rule"


def test_other_rules_are_not_a_catch() -> None:
    got = kit.judge(ATTACK, [_alert("runtime.rng_reseed", 5)])
    assert got.verdict == "wrong-rule" and "runtime.rng_reseed@5" in got.detail
    assert kit.judge(ATTACK, []).verdict == "missed"


def test_before_guard_attacks_count_from_attach() -> None:
    early = Attack("hook", "upstream", (WEIGHT,), 1, _noop, before_guard=True)
    assert kit.judge(early, [_alert(WEIGHT, 0)]).verdict == "caught"


def test_a_signal_alert_must_say_the_sender_is_unverified() -> None:
    forged = Attack("sig", "signal", ("process.signal",), 5, _noop, unverified_sender=True)
    trusting = _alert("process.signal", 5, pid=1)
    assert kit.judge(forged, [trusting]).verdict == "wrong-rule"
    doubting = _alert("process.signal", 5, pid=1, sender_verified=False)
    assert kit.judge(forged, [doubting]).verdict == "caught"
    unknown = AlertRecord("process.signal", 5, "w", "SIGUSR1 from pid unknown (sender unknown)", {})
    assert kit.judge(forged, [unknown]).verdict == "caught"


def test_honest_runs_must_be_silent() -> None:
    assert kit.judge(None, []).verdict == "silent"
    assert kit.judge(None, [_alert(WEIGHT, 3)]).verdict == "noisy"


def test_the_registry_is_large_unique_and_covers_every_class() -> None:
    attacks = kit.all_attacks()
    assert len(attacks) >= 38
    assert len({a.name for a in attacks}) == len(attacks)
    classes = Counter(a.cls for a in attacks)
    for cls in ("upstream", "blind", "model", "optim", "sched", "data", "rng", "authority"):
        assert classes[cls] >= 1, cls
    assert all(a.rules and a.at >= 1 for a in attacks)
    assert len(kit.HONEST) >= 10
