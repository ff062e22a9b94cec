"""The gradient check's arithmetic alone: the keyed draw, the verdict, the odd rank.

``judge`` trusts that honest code changes the reduced gradient only by one factor in
(0, 1] and one clamp; ``odd_ranks`` trusts only relative evidence between ranks. Each test
feeds the exact edit either trust excludes, or the honest edit it allows.
"""

from __future__ import annotations

import torch

from trainguard.guard.checks.gradients_math import draw, judge, odd_ranks, plan

EPS = float(torch.finfo(torch.float32).eps)


def _mean(n: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _slack(mean: torch.Tensor) -> torch.Tensor:
    return 16 * EPS * mean.abs()


def test_draw_is_keyed_per_step_and_covers_every_parameter() -> None:
    sizes = plan([4, 100_000, 3, 5000], 1024)
    a = draw(b"k" * 32, 7, sizes)
    assert [int(t.numel()) for t in a] == [4, 975, 3, 49]  # proportional; small ones whole
    sizes_ = [4, 100_000, 3, 5000]
    assert all(0 <= int(t.min()) <= int(t.max()) < n for t, n in zip(a, sizes_, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a, draw(b"k" * 32, 7, sizes), strict=True))
    assert not torch.equal(a[1], draw(b"k" * 32, 8, sizes)[1])
    assert not torch.equal(a[1], draw(b"j" * 32, 7, sizes)[1])


def test_equal_and_uniformly_shrunk_gradients_pass() -> None:
    mean = _mean()
    assert judge(mean.clone(), mean, _slack(mean)).ok
    clipped = (mean.float() * torch.tensor(0.37, dtype=torch.float32)).double()
    verdict = judge(clipped, mean, _slack(mean))
    assert verdict.ok and abs(verdict.scale - 0.37) < 1e-6
    assert judge(mean / 65536, mean, _slack(mean)).ok  # GradScaler.unscale_


def test_value_clamp_passes_and_names_its_bound() -> None:
    mean = _mean()
    verdict = judge(mean.clamp(-0.5, 0.5), mean, _slack(mean))
    assert verdict.ok and verdict.clip == 0.5 and verdict.scale == 1.0


def test_one_block_scaled_is_caught_at_that_block() -> None:
    mean = _mean()
    final = mean.clone()
    final[100:110] *= 3
    verdict = judge(final, mean, _slack(mean))
    assert not verdict.ok and verdict.bad == 10 and 100 <= verdict.worst < 110


def test_scaled_down_block_is_not_a_clamp() -> None:
    mean = _mean()
    final = mean.clone()
    final[:40] *= 0.3
    assert not judge(final, mean, _slack(mean)).ok


def test_noise_one_part_in_ten_thousand_is_caught() -> None:
    mean = _mean()
    noise = 1e-4 * _mean(seed=1)
    assert not judge(mean + noise, mean, _slack(mean)).ok


def test_scale_up_zeroing_and_reversal_are_caught() -> None:
    mean = _mean()
    for final in (mean * 2, mean * 0, -mean):
        assert not judge(final, mean, _slack(mean)).ok


def test_rounding_within_the_slack_passes() -> None:
    mean = _mean()
    final = mean * (1 + 4 * EPS * torch.sign(_mean(seed=2)))
    assert judge(final, mean, _slack(mean)).ok


def _steps(rows: list[tuple[float, float]], n: int = 8) -> list[list[tuple[float, float]]]:
    return [list(rows) for _ in range(n)]


def test_two_ranks_named_only_by_their_norm() -> None:
    assert odd_ranks(_steps([(0.1, 1.2), (0.1, 0.8)])) == []
    # a symmetric cosine cannot say which rank is odd, however low
    assert odd_ranks(_steps([(-0.9, 1.0), (-0.9, 1.0)])) == []
    assert [r for r, _ in odd_ranks(_steps([(0.2, 0.05), (0.2, 20.0)]))] == [1]


def test_more_ranks_name_the_one_pointing_away() -> None:
    honest = [(0.3, 1.0), (0.25, 1.1), (0.35, 0.9)]
    assert odd_ranks(_steps([*honest, (0.28, 1.0)])) == []
    assert [r for r, _ in odd_ranks(_steps([*honest, (-0.4, 1.0)]))] == [3]
    # everyone disagrees with everyone (tiny batches): no one is singled out
    assert odd_ranks(_steps([(-0.1, 1.0), (-0.2, 1.0), (0.05, 1.0), (-0.15, 1.0)])) == []
