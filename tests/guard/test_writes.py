"""Weight writes the user means are modelled, not waved through (issue 12).

Each honest pattern (an embedding's max_norm renorm, declared constraints, an after-step
function, an EMA swap, a restore inside ``authorized()``) runs silent; the same pattern
with one insider write added is caught.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

import guardkit
from trainguard.errors import ConfigError, GuardStopped
from trainguard.guard import Clamp, Constraint, Guard, MaxNorm, NonNegative
from trainguard.guard.checks.renorm import judge_renorm
from trainguard.guard.checks.weights import WeightsCheck

Hook = Callable[[int], object]
PLANS = [
    pytest.param({}, id="full"),
    pytest.param({"full_limit": 0}, id="rotating"),
    pytest.param({"batched": True}, id="batched"),
]


class Words(nn.Module):
    """A bag of words with a max_norm embedding (rows start above the bound)."""

    def __init__(self, bag: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        kind = nn.EmbeddingBag if bag else nn.Embedding
        self.emb = kind(50, 8, max_norm=1.0)
        self.head = nn.Linear(8, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.emb(idx)
        y: torch.Tensor = self.head(out if out.dim() == 2 else out.mean(1))
        return y


def _words_loop(
    net: Words,
    guard: Guard,
    opt: torch.optim.Optimizer,
    *,
    steps: int = 8,
    micro: int = 1,
    before: Hook | None = None,
    between: Hook | None = None,
) -> list[tuple[str, int | None, str]]:
    """Batches draw rows 5..39 only (rows 0..4 and 40..49 are never touched);
    ``before(k)`` runs before the forwards of step k, ``between(k)`` after them."""
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        if before:
            before(step)
        for _ in range(micro):
            idx = torch.randint(5, 40, (4, 5), generator=gen)
            net(idx).pow(2).mean().backward()
        if between:
            between(step)
        opt.step()
        opt.zero_grad()
        guard.step()
        with torch.no_grad():  # an evaluation forward between steps, outside any window
            net(torch.randint(5, 40, (2, 5), generator=gen))
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]


def _recorded(guard: Guard) -> list[tuple[str, dict[str, Any]]]:
    """The guard's events from now on (they leave ``guard`` at each flush)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    real = guard.event

    def event(message: str, evidence: Any) -> None:
        seen.append((message, dict(evidence)))
        real(message, evidence)

    guard.event = event  # type: ignore[method-assign]
    return seen


# -- nn.Embedding(max_norm=...) ---------------------------------------------------------


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("bag", [False, True], ids=["Embedding", "EmbeddingBag"])
def test_max_norm_renorm_is_expected_and_rows_are_really_renormed(
    plan: dict[str, Any], bag: bool
) -> None:
    net = Words(bag)
    start = net.emb.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = Guard(net, opt, checks=[WeightsCheck(**plan)], ledger=False, stop_on="critical")
    assert _words_loop(net, guard, opt, micro=3) == []
    norms = net.emb.weight.detach().norm(dim=1)
    assert start.norm(dim=1)[5:40].max() > 1.5  # the renorm had work to do ...
    assert norms[5:40].max() < 1.1  # ... and did it, inside the guarded window (+ a step)
    assert torch.equal(net.emb.weight[40:], start[40:])  # rows never indexed: no grad, no renorm
    guard.close()


def test_max_norm_renorm_under_the_full_default_guard_is_silent() -> None:
    net = Words()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    guard = Guard(net, opt, ledger=False, stop_on="critical", process=False)
    assert _words_loop(net, guard, opt, steps=10, micro=2) == []
    guard.close()


def _data_row(net: Words, row: int, scale: float) -> None:
    net.emb.weight.data[row] *= scale


def _ulp(net: Words, row: int) -> None:
    net.emb.weight.data[row].view(torch.int32)[2] += 1


EMBEDDING_ATTACKS: dict[str, tuple[str, Callable[[Words], object]]] = {
    # (when, what) at step 4, whose forwards index row 3 (norm below max_norm: kept) and
    # row 4 (norm above: renormed): "before" its forwards or "between" them and the step
    "a row no forward touched": ("before", lambda n: _data_row(n, 45, 0.5)),
    "a renormed row, rescaled after": ("between", lambda n: _data_row(n, 4, 0.999)),
    "a kept row, changed after": ("between", lambda n: _data_row(n, 3, 0.9)),
    "one ulp of a kept row": ("between", lambda n: _ulp(n, 3)),
    "a row doubled before its renorm": ("before", lambda n: _data_row(n, 4, 2.0)),
    "max_norm lowered on the module": ("before", lambda n: setattr(n.emb, "max_norm", 0.5)),
    "the guard's hook removed": ("before", lambda n: n.emb._forward_pre_hooks.clear()),
    "renorm called outside a forward": (
        "between",
        lambda n: torch.embedding_renorm_(n.emb.weight.data, torch.tensor([41]), 0.5, 2.0),
    ),
}


@pytest.mark.parametrize("name", sorted(EMBEDDING_ATTACKS))
@pytest.mark.parametrize("plan", PLANS)
def test_writes_the_renorm_does_not_explain_are_caught(name: str, plan: dict[str, Any]) -> None:
    net = Words()
    with torch.no_grad():
        net.emb.weight[3] = torch.linspace(-1.0, 1.0, 8) * 0.3  # norm 0.5
        net.emb.weight[4] = torch.linspace(-1.0, 1.0, 8) * 2.0  # norm 3.3
    when, attack = EMBEDDING_ATTACKS[name]
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: only the renorm moves rows

    def hook(step: int) -> None:
        if step == 4:
            attack(net)

    def feed(step: int) -> None:
        if step == 4:
            net(torch.tensor([[3, 4, 4, 7, 9]]))

    def before(step: int) -> None:
        hook(step)
        feed(step)

    guard = Guard(net, opt, checks=[WeightsCheck(**plan)], ledger=False)
    alerts = _words_loop(
        net,
        guard,
        opt,
        before=before if when == "before" else feed,
        between=hook if when == "between" else None,
    )
    guard.close()
    assert alerts and {rule for rule, _, _ in alerts} == {"runtime.weight_tamper"}
    assert alerts[0][1:] == (4, "param:emb.weight"), alerts


@pytest.mark.parametrize("attack", [False, True], ids=["honest", "a kept row changed"])
def test_a_long_evaluation_between_steps_is_folded_and_still_judged(attack: bool) -> None:
    """Beyond 64 forwards (or more rows than the weight has) the recorded calls are
    folded into one exact entry: memory stays bounded, the judgment does not loosen."""
    net = Words()
    with torch.no_grad():
        net.emb.weight[3] = torch.linspace(-1.0, 1.0, 8) * 0.3  # norm 0.5: kept
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    gen = torch.Generator().manual_seed(2)

    def evaluate(step: int) -> None:
        with torch.no_grad():
            for i in range(100):
                net(torch.randint(5, 40, (3, 5), generator=gen))
                if step == 3 and i == 80:
                    net(torch.tensor([[3, 5]]))
                    if attack:
                        _data_row(net, 3, 0.9)  # after its forward, before the fold

    alerts = _words_loop(net, guard, opt, steps=4, between=evaluate)
    guard.close()
    assert alerts == ([("runtime.weight_tamper", 3, "param:emb.weight")] if attack else [])


def test_judge_accepts_torch_renorm_and_rejects_other_rows() -> None:
    """The check's own float64 model of the renorm against torch's kernel: every honest
    row accepted (all dtypes, norm types, rows at the bound), nearly every 1-ulp change of
    a renormed float32 row refused, and any change of a row left alone refused."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for d in (1, 3, 64, 768):
            for p in (2.0, 1.0, math.inf):
                for max_norm in (0.01, 1.0, 30.0):
                    x = torch.randn(64, d, generator=gen, dtype=torch.float64) * 3 * max_norm
                    n = torch.linalg.vector_norm(x[:8], p, dim=1, keepdim=True)
                    x[:8] = x[:8] / n * max_norm * (1 + 1e-7 * torch.randn(8, 1, generator=gen))
                    before = x.to(dtype)
                    after = before.clone()
                    torch.embedding_renorm_(after, torch.arange(64), max_norm, p)
                    ok, _ = judge_renorm(before, after, max_norm, p)
                    assert bool(ok.all()), (dtype, d, p, max_norm, (~ok).nonzero())
    x = torch.randn(200, 768, generator=gen) * 3
    after = x.clone()
    torch.embedding_renorm_(after, torch.arange(200), 1.0, 2.0)
    caught = 0
    for row in range(200):
        bad = after.clone()
        bad[row].view(torch.int32)[row % 768] += 1
        caught += int(not judge_renorm(x, bad, 1.0, 2.0)[0][row])
    assert caught >= 195
    small = torch.randn(4, 8, generator=gen) * 0.01  # below the bound: must keep its bits
    bad = small.clone()
    bad[1].view(torch.int32)[0] += 1
    assert judge_renorm(small, bad, 1.0, 2.0)[0].tolist() == [True, False, True, True]


# -- declared constraints and after-step functions ---------------------------------------


class Critic(nn.Module):
    """``width=2**15``: about 2**19 elements, so the rotating plan has several slots."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(16, width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.body(x)))
        return out


def _critic_loop(
    net: nn.Module,
    guard: Guard,
    opt: torch.optim.Optimizer,
    *,
    steps: int = 8,
    after: Hook | None = None,
) -> list[tuple[str, int | None, str]]:
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        net(torch.randn(8, 16, generator=gen)).mean().backward()
        opt.step()
        opt.zero_grad()
        if after:
            after(step)  # where a WGAN loop clips
        guard.step()
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]


def _clip(net: nn.Module, c: float, *, data: bool = True) -> None:
    for p in net.parameters():
        if data:
            p.data.clamp_(-c, c)
        else:
            with torch.no_grad():
                p.clamp_(-c, c)


def test_a_loop_clip_alone_is_tampering_to_the_guard() -> None:
    """Without a declaration the clip is a write between steps: the gap issue 12 closes."""
    net = Critic()
    opt = torch.optim.RMSprop(net.parameters(), lr=5e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    alerts = _critic_loop(net, guard, opt, after=lambda k: _clip(net, 0.01))
    assert alerts and alerts[0][:2] == ("runtime.weight_tamper", 2)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("loop", ["guard only", "loop clips .data too", "loop clips in place too"])
def test_declared_clamp_is_applied_by_the_guard_and_silent(plan: dict[str, Any], loop: str) -> None:
    net = Critic()
    opt = torch.optim.RMSprop(net.parameters(), lr=5e-3)
    guard = Guard(
        net, opt, checks=[WeightsCheck(**plan)], ledger=False, constraints=[Clamp(-0.01, 0.01)]
    )
    after = None
    if loop != "guard only":
        after = lambda k: _clip(net, 0.01, data=loop == "loop clips .data too")  # noqa: E731
    assert _critic_loop(net, guard, opt, after=after) == []
    assert all(float(p.detach().abs().max()) <= float(torch.tensor(0.01)) for p in net.parameters())
    guard.close()


def test_constraints_under_the_full_default_guard_are_silent() -> None:
    """The update check judges the optimizer's own result, read before the constraint."""
    net = Critic()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    constraints: list[Constraint] = [
        NonNegative(params="out.weight"),
        MaxNorm(0.5, params=["body.weight"]),
        Clamp(-0.1, 0.1, params="*.bias"),
    ]
    guard = Guard(net, opt, ledger=False, constraints=constraints, process=False, every=2)
    assert _critic_loop(net, guard, opt, steps=12) == []
    assert float(net.out.weight.detach().min()) >= 0.0
    assert float(net.body.weight.detach().norm(dim=1).max()) <= 0.5 + 1e-6
    assert float(net.body.bias.detach().abs().max()) <= float(torch.tensor(0.1))
    guard.close()


def _maxnorm_loop(net: Critic, c: float) -> None:
    with torch.no_grad():
        net.body.weight.copy_(torch.renorm(net.body.weight, 2, 0, c))


def _write_bias(net: Critic) -> None:
    net.out.bias.data.fill_(0.005)


CONSTRAINT_ATTACKS: dict[str, tuple[list[Constraint], Callable[[Critic], object]]] = {
    "the loop clips to a tighter bound": ([Clamp(-0.01, 0.01)], lambda n: _clip(n, 0.005)),
    "a value written within the bounds": ([Clamp(-0.01, 0.01)], _write_bias),
    "a tighter max-norm": ([MaxNorm(0.5, params="body.weight")], lambda n: _maxnorm_loop(n, 0.4)),
    "negative values written": (
        [NonNegative(params="out.*")],
        lambda n: n.out.weight.data.neg_(),
    ),
}


@pytest.mark.parametrize("name", sorted(CONSTRAINT_ATTACKS))
@pytest.mark.parametrize("plan", PLANS)
def test_a_write_other_than_the_declared_constraint_is_caught(
    name: str, plan: dict[str, Any]
) -> None:
    constraints, attack = CONSTRAINT_ATTACKS[name]
    net = Critic()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    guard = Guard(net, opt, checks=[WeightsCheck(**plan)], ledger=False, constraints=constraints)
    alerts = _critic_loop(net, guard, opt, after=lambda k: attack(net) if k == 5 else None)
    assert alerts and alerts[0][:2] == ("runtime.weight_tamper", 6), alerts


def test_a_patched_copy_cannot_make_the_guard_write_something_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = Critic()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False, constraints=[Clamp(-0.01, 0.01)])
    real = torch.Tensor.copy_

    def skewed(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        return real(self, src * 0.5, non_blocking)

    _critic_loop(net, guard, opt, steps=2)
    monkeypatch.setattr(torch.Tensor, "copy_", skewed)
    _critic_loop(net, guard, opt, steps=1)
    monkeypatch.undo()
    assert [(a.rule.value, a.step) for a in guard.alerts][:1] == [("runtime.weight_tamper", 3)]
    assert "does not hold what the guard wrote" in guard.alerts[0].finding.message


def test_unmatched_constraint_pattern_is_a_config_error() -> None:
    net = Critic()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with pytest.raises(ConfigError, match="critic"):
        Guard(net, opt, ledger=False, constraints=[Clamp(-1, 1, params="critic.*")])
    with pytest.raises(ConfigError):
        Clamp()
    with pytest.raises(ConfigError):
        MaxNorm(0.0)


def test_after_step_function_replaces_the_loop_write() -> None:
    net = Critic()
    opt = torch.optim.RMSprop(net.parameters(), lr=5e-3)
    guard = Guard(net, opt, checks=[WeightsCheck(full_limit=0)], ledger=False, every=4)
    seen = _recorded(guard)
    guard.after_step(lambda: _clip(net, 0.01, data=False), params=["body.*", "out.*"])
    assert _critic_loop(net, guard, opt) == []
    assert all(float(p.detach().abs().max()) <= float(torch.tensor(0.01)) for p in net.parameters())
    registered = [e for m, e in seen if m == "guard.after_step"]
    assert registered and registered[0]["code"] and registered[0]["count"] == 4


def test_after_step_function_writing_outside_its_params_is_caught() -> None:
    net = Critic()
    opt = torch.optim.RMSprop(net.parameters(), lr=5e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    guard.after_step(lambda: _clip(net, 0.01, data=False), params="body.*")  # clips out.* too
    alerts = _critic_loop(net, guard, opt)
    assert alerts and alerts[0][1:] in {(2, "param:out.weight"), (2, "param:out.bias")}


def test_after_step_function_with_replaced_code_is_not_run() -> None:
    net = Critic()
    opt = torch.optim.RMSprop(net.parameters(), lr=5e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)

    def clip() -> None:
        _clip(net, 0.01, data=False)

    def evil() -> None:
        _clip(net, 0.001, data=False)

    guard.after_step(clip)
    alerts = _critic_loop(
        net,
        guard,
        opt,
        after=lambda k: setattr(clip, "__code__", evil.__code__) if k == 3 else None,
    )
    assert alerts[:1] == [
        (
            "runtime.monkeypatch",
            4,
            "after_step:test_after_step_function_with_replaced_code_is_not_run.<locals>.clip",
        )
    ]
    assert float(net.body.weight.detach().abs().max()) > 0.001  # the replaced code never ran


def test_a_declared_parameter_written_between_steps_is_still_caught() -> None:
    net = Critic(width=2**15)  # out.bias is not due every step: declared, it is
    opt = torch.optim.RMSprop(net.parameters(), lr=5e-3)
    guard = Guard(net, opt, checks=[WeightsCheck(full_limit=0)], ledger=False, every=4)
    guard.after_step(lambda: _clip(net, 0.01, data=False))
    alerts = _critic_loop(net, guard, opt, after=lambda k: _write_bias(net) if k == 6 else None)
    assert alerts == [("runtime.weight_tamper", 7, "param:out.bias")]


# -- EMA swaps ---------------------------------------------------------------------------


class Ema:
    """torch_ema's ExponentialMovingAverage in miniature (``.data`` copies, like it)."""

    def __init__(self, params: list[nn.Parameter], decay: float = 0.9) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]
        self.stored: list[torch.Tensor] = []

    def update(self) -> None:
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                s.sub_((1 - self.decay) * (s - p))

    def store(self) -> None:
        self.stored = [p.detach().clone() for p in self.params]

    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.data.copy_(s.data)

    def restore(self) -> None:
        for c, p in zip(self.stored, self.params, strict=True):
            p.data.copy_(c.data)

    @contextmanager
    def average_parameters(self) -> Iterator[None]:
        self.store()
        self.copy_to()
        try:
            yield
        finally:
            self.restore()


def _ema_loop(
    net: nn.Module, guard: Guard, opt: torch.optim.Optimizer, ema: Ema, evaluate: Hook
) -> list[tuple[str, int | None, str]]:
    def after(step: int) -> None:
        ema.update()
        if step % 3 == 0:
            evaluate(step)

    return _critic_loop(net, guard, opt, steps=9, after=after)


def _eval(net: nn.Module) -> None:
    with torch.no_grad():
        net(torch.ones(2, 16))


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("how", ["swapped()", "swapped(shadow)", "authorized()"])
def test_ema_evaluation_windows_are_silent(plan: dict[str, Any], how: str) -> None:
    net = Critic()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    ema = Ema(list(net.parameters()))
    guard = Guard(net, opt, checks=[WeightsCheck(**plan)], ledger=False, stop_on="critical")
    seen = _recorded(guard)
    held: list[bool] = []

    def evaluate(step: int) -> None:
        if how == "swapped(shadow)":
            with guard.swapped(ema.shadow):
                held.append(torch.equal(net.out.weight, ema.shadow[2]))
                _eval(net)
            return
        window = guard.swapped() if how == "swapped()" else guard.authorized("eval with EMA")
        with window, ema.average_parameters():
            held.append(torch.equal(net.out.weight, ema.shadow[2]))
            _eval(net)

    assert _ema_loop(net, guard, opt, ema, evaluate) == []
    assert held == [True, True, True]
    if how == "authorized()":
        ends = [e for m, e in seen if m == "weights.authorized"]
        assert [e["unchanged"] for e in ends] == [True, True, True]
    guard.close()


def _ulp_restore(ema: Ema, index: int, element: int) -> None:
    ema.restore()
    ema.params[index].data.view(-1).view(torch.int32)[element] += 1


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize(
    ("index", "element"),
    [(0, 0), (0, 300_000), (3, 0)],
    ids=["body.weight[0]", "body.weight[300000]", "out.bias"],
)
def test_a_swap_that_does_not_restore_bit_identically_is_caught(
    plan: dict[str, Any], index: int, element: int
) -> None:
    net = Critic(width=2**15)  # rotating: 3 slots, one due at step 6; all are verified
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    ema = Ema(list(net.parameters()))
    guard = Guard(net, opt, checks=[WeightsCheck(**plan)], ledger=False, every=4)
    names = [n for n, _ in net.named_parameters()]

    def evaluate(step: int) -> None:
        with guard.swapped():
            ema.store()
            ema.copy_to()
            _eval(net)
            if step == 6:
                _ulp_restore(ema, index, element)
            else:
                ema.restore()

    alerts = _ema_loop(net, guard, opt, ema, evaluate)
    assert alerts[:1] == [("runtime.weight_tamper", 6, f"param:{names[index]}")]
    assert "guard.swapped()" in guard.alerts[0].finding.message


def test_swapped_shadow_must_match_the_parameters() -> None:
    net = Critic()
    guard = Guard(net, torch.optim.SGD(net.parameters(), lr=0.1), ledger=False, process=False)
    with pytest.raises(ConfigError, match="shadow"), guard.swapped([torch.zeros(1)]):
        pass
    with pytest.raises(ConfigError, match="shape"), guard.swapped({"out.bias": torch.zeros(3)}):
        pass
    guard.close()


# -- authorized() windows ----------------------------------------------------------------


def test_a_write_made_before_an_authorized_block_is_not_laundered() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)

    def insider_then_user() -> None:
        with torch.no_grad():
            net[0].weight.mul_(1.01)  # type: ignore[index]
        with guard.authorized("lower the LR"):
            opt.param_groups[0]["lr"] = 0.05

    alerts = guardkit.train(net, opt, guard, attacks={4: insider_then_user})
    assert alerts == [("runtime.weight_tamper", 4, "param:0.weight")]


def test_restore_after_an_lr_range_test_hashes_only_what_is_due() -> None:
    """The LR range test's restore: weights and optimizer from state dicts. The block's
    end hashes the ranges due for verification (a share of a large model), names what
    it changed, and training goes on silently; a write right after it is caught."""
    net = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 64))  # 8 slots of 2**16
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[WeightsCheck(full_limit=0)], ledger=False, every=8)
    seen = _recorded(guard)
    model_state = {k: v.clone() for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    total = sum(p.numel() for p in net.parameters())

    def run(steps: int, lr: float = 1e-3) -> None:
        gen = torch.Generator().manual_seed(steps)
        for _ in range(steps):
            opt.param_groups[0]["lr"] = lr
            net(torch.randn(4, 64, generator=gen)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            guard.step()

    with guard.authorized("LR range test"):
        for lr in (1e-4, 1e-3, 1e-2):
            run(1, lr)
    with guard.authorized("restore after the LR range test"):
        net.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    run(6)
    assert guard.alerts == []
    ends = [e for m, e in seen if m == "weights.authorized"]
    assert ends[-1]["written"] and not ends[-1]["unchanged"]
    assert set(ends[-1]["written"].values()) <= {"written in place", "rewritten with the same bits"}
    assert 0 < ends[-1]["hashed_elements"] <= total / 4
    with torch.no_grad():
        for p in net.parameters():
            p.data.add_(1e-3)  # every slot: whichever is due is verified
    run(1)
    assert [a.rule.value for a in guard.alerts][:1] == ["runtime.weight_tamper"]


def test_a_write_around_the_version_counter_inside_authorized_is_accepted_and_named() -> None:
    """``_version`` does not see ``.data`` writes: it never decides what is hashed."""
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    seen = _recorded(guard)

    def switch_to_other_weights() -> None:
        with guard.authorized("keep the EMA weights from now on"):
            net[2].weight.data.mul_(0.5)  # type: ignore[index]

    assert guardkit.train(net, opt, guard, attacks={4: switch_to_other_weights}) == []
    ends = [e for m, e in seen if m == "weights.authorized"]
    assert ends == [
        {
            "check": "weights",
            "unchanged": False,
            "written": {"2.weight": "written around the version counter"},
            "hashed_elements": sum(p.numel() for p in net.parameters()),
        }
    ]


def test_stop_on_critical_stops_a_bad_swap() -> None:
    net = Critic()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False, stop_on="critical")
    _critic_loop(net, guard, opt, steps=1)
    with guard.swapped():
        net.out.bias.data.add_(1.0)
    with pytest.raises(GuardStopped):
        _critic_loop(net, guard, opt, steps=1)
