"""The HTML report: one self-contained file, readable offline and years later.

Charts are SVG drawn here (no JavaScript library, no CDN, nothing fetched). Geometry is
computed in Python as numbers; every string from the ledger reaches the page only
through Jinja's autoescaping (the template never uses ``|safe``), so an alert message
written by an attacker is shown as text. Defence in depth: the page carries a
Content-Security-Policy that allows only its own nonce-tagged style and script and no
network at all, so even an escaping bug could neither run code nor call home.

Long runs are downsampled per bucket to the bucket's minimum and maximum, which keeps a
one-step loss spike visible while a 10k-step curve stays a few kilobytes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import secrets
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from trainguard.errors import ConfigError
from trainguard.findings import Severity
from trainguard.report.model import AlertRow, Curve, ReportModel, parse_time, short_time, visible

__all__ = ["render_html", "write_html"]

MAX_BUCKETS = 300  # per series: at most two points per bucket
MAX_ALERT_ROWS = 1000
MAX_MARKS = 1500  # per kind on the timeline
MAX_CHART_MARKS = 200
EVIDENCE_CHARS = 1200
CLIP = 1e300  # so that no difference of two values overflows to inf
MESSAGE_CHARS = 2000

# Tableau 10: distinguishable, and readable on white.
RANK_COLORS = (
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2",
    "#edc948", "#e15759", "#9c755f", "#ff9da7", "#bab0ac",
)  # fmt: skip

W, H = 960.0, 240.0
LEFT, RIGHT, TOP, BOTTOM = 70.0, 16.0, 26.0, 30.0


def render_html(model: ReportModel) -> str:
    """The report page as a string."""
    try:
        import jinja2
    except ImportError:
        raise ConfigError(
            "the HTML report needs jinja2: pip install 'trainguard[report]'"
        ) from None
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["vis"] = _vis
    env.filters["t"] = short_time
    source = resources.files("trainguard.report").joinpath("templates/report.html.j2")
    template = env.from_string(source.read_text(encoding="utf-8"))
    return str(template.render(**_view(model)))


def write_html(model: ReportModel, path: str | os.PathLike[str]) -> Path:
    """Write the report to ``path`` (atomically: a reader never sees half a page)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(render_html(model), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _vis(value: object, limit: int = MESSAGE_CHARS) -> str:
    return visible("-" if value is None else str(value), limit)


def _view(model: ReportModel) -> dict[str, Any]:
    alerts = model.alerts[:MAX_ALERT_ROWS]
    return {
        "m": model,
        "nonce": secrets.token_urlsafe(18),
        "severities": sorted(Severity, reverse=True),
        "sev_counts": model.severity_counts(),
        "rule_counts": model.rule_counts(),
        "ranks": [r for r in model.ranks if r is not None],
        "alerts": [(a, _evidence(a)) for a in alerts],
        "alerts_left_out": len(model.alerts) - len(alerts),
        "timeline": _timeline(model),
        "charts": [
            c
            for c in (
                _chart(model, "loss", "Loss"),
                _chart(model, "grad_norm", "Gradient norm before clipping (dashed: clip)"),
                _chart(model, "step_time", "Step time (s)"),
            )
            if c is not None
        ],
        "legend": [(_rank_label(c.rank), _color(i)) for i, c in enumerate(model.curves)],
    }


def _evidence(a: AlertRow) -> str:
    if not a.evidence:
        return ""
    text = json.dumps(dict(a.evidence), indent=1, sort_keys=True, default=str)
    return visible(text, EVIDENCE_CHARS)


def _rank_label(rank: int | None) -> str:
    return "job" if rank is None else f"rank {rank}"


def _color(i: int) -> str:
    return RANK_COLORS[i % len(RANK_COLORS)]


def _tip(a: AlertRow) -> str:
    where = " ".join(p for p in (short_time(a.time), _step(a.step), _rank_label(a.rank)) if p)
    return f"{where}\n{a.severity.label} {a.rule}: {a.message}"


def _step(step: int | None) -> str:
    return "" if step is None else f"step {step}"


# -- curves ------------------------------------------------------------------------------


def downsample(
    points: Sequence[tuple[float, float]], buckets: int = MAX_BUCKETS
) -> list[tuple[float, float]]:
    """At most ``2 * buckets`` points: each bucket's lowest and highest, in x order."""
    if len(points) <= 2 * buckets:
        return list(points)
    out: list[tuple[float, float]] = []
    size = len(points) / buckets
    for b in range(buckets):
        chunk = points[int(b * size) : int((b + 1) * size)]
        if not chunk:
            continue
        lo = min(chunk, key=lambda p: p[1])
        hi = max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


def _series(curve: Curve, metric: str) -> list[tuple[float, float]]:
    values: tuple[float | None, ...] = getattr(curve, metric)
    return [
        (float(s), max(-CLIP, min(CLIP, v)))
        for s, v in zip(curve.steps, values, strict=False)
        if v is not None
    ]


class _Scale:
    """Value to pixel on one axis; logarithmic when values span two decades or more
    (a gradient-norm explosion or loss spike would otherwise flatten the rest of the curve)."""

    def __init__(self, lo: float, hi: float, a: float, b: float, *, log: bool = False) -> None:
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            pad = abs(lo) * 0.1 or 1.0
            lo, hi = lo - pad, hi + pad
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(v)
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            first, last = math.floor(self.lo), math.ceil(self.hi)
            every = max(1, math.ceil((last - first + 1) / n))
            return [10.0**e for e in range(first, last + 1, every)]
        return _nice_ticks(self.lo, self.hi, n)


def _nice_ticks(lo: float, hi: float, n: int) -> list[float]:
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _labels(values: list[float], log: bool) -> list[str]:
    """Tick labels with as many decimals as the spacing needs: a gradient norm clipped
    to 1.0 moves in the fourth digit, and ``.3g`` would print "1" at every tick."""
    if log or len(values) < 2:
        return [_fmt(v) for v in values]
    step = min(b - a for a, b in itertools.pairwise(values))
    if step <= 0 or max(abs(v) for v in values) >= 1e5:
        return [_fmt(v) for v in values]
    digits = max(0, -math.floor(math.log10(step)))
    return [f"{v:.{digits}f}" for v in values]


def _fmt(v: float) -> str:
    if v.is_integer() and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.3g}"


def _chart(model: ReportModel, metric: str, title: str) -> dict[str, Any] | None:
    series = [(i, c, _series(c, metric)) for i, c in enumerate(model.curves)]
    series = [s for s in series if s[2]]
    if not series:
        return None
    clips = [(i, c, _series(c, "clip")) for i, c in enumerate(model.curves)]
    clips = [s for s in clips if s[2]] if metric == "grad_norm" else []
    series = series + clips
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] for _, _, pts in series for p in pts]
    ymin, ymax = min(ys), max(ys)
    log = ymin > 0 and ymax / ymin >= 100
    sx = _Scale(min(xs), max(xs), LEFT, W - RIGHT)
    sy = _Scale(ymin, ymax, H - BOTTOM, TOP, log=log)
    lines = []
    for i, curve, pts in series:
        kept = downsample(pts)
        threshold = any(pts is s[2] for s in clips)
        lines.append(
            {
                "label": _rank_label(curve.rank) + (" clip threshold" if threshold else ""),
                "dashed": threshold,
                "color": _color(i),
                "points": " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in kept),
                "count": len(pts),
                "drawn": len(kept),
            }
        )
    ys_ticks = [v for v in sy.ticks() if _inside(sy(v), TOP, H - BOTTOM)]
    yticks = [(sy(v), label) for v, label in zip(ys_ticks, _labels(ys_ticks, sy.log), strict=True)]
    xticks = _anchored([(sx(v), _fmt(v)) for v in sx.ticks(8) if _inside(sx(v), LEFT, W - RIGHT)])
    lo, hi = min(xs), max(xs)
    marks = [
        {"x": sx(a.step), "sev": a.severity.label, "tip": visible(_tip(a), 400), "seq": a.seq}
        for a in _distinct(model.alerts, lambda a: (a.step, a.rule))
        if a.step is not None and lo <= a.step <= hi
    ][:MAX_CHART_MARKS]
    marks.reverse()  # the most severe drawn last, on top
    return {
        "id": metric,
        "title": title,
        "log": log,
        "lines": lines,
        "yticks": yticks,
        "xticks": xticks,
        "marks": marks,
        "w": W,
        "h": H,
        "box": (LEFT, TOP, W - RIGHT - LEFT, H - BOTTOM - TOP),
    }


def _anchored(ticks: list[tuple[float, str]]) -> list[tuple[float, str, str]]:
    """Axis labels with their text-anchor: a label at the right edge ends there, so the
    last one is not cut off by the picture's border."""
    return [(x, label, "end" if x > W - RIGHT - 30 else "middle") for x, label in ticks]


def _inside(v: float, a: float, b: float) -> bool:
    lo, hi = min(a, b), max(a, b)
    return lo - 0.5 <= v <= hi + 0.5


def _distinct(alerts: Iterable[AlertRow], key: Any) -> list[AlertRow]:
    """One alert per key, the most severe ones first."""
    seen: dict[Any, AlertRow] = {}
    for a in alerts:
        k = key(a)
        if k not in seen or a.severity > seen[k].severity:
            seen[k] = a
    return sorted(seen.values(), key=lambda a: -a.severity)


# -- timeline ----------------------------------------------------------------------------

LANE = 30.0
TL_TOP = 8.0


def _timeline(model: ReportModel) -> dict[str, Any] | None:
    """Alerts and events on one lane per rank (plus one for records without a rank),
    along wall-clock time; records whose time does not parse go at the left edge."""
    lanes = list(model.ranks)
    if not lanes:
        return None
    index = {r: i for i, r in enumerate(lanes)}
    alerts = sorted(model.alerts, key=lambda a: -a.severity)[:MAX_MARKS]
    events = model.events[:MAX_MARKS]
    parsed = [parse_time(a.time) for a in alerts] + [parse_time(e.time) for e in events]
    times = [t for t in parsed if t is not None]
    t0, t1 = (min(times), max(times)) if times else (0.0, 0.0)
    height = TL_TOP + LANE * len(lanes) + BOTTOM
    sx = _Scale(t0, t1 if t1 > t0 else t0 + 1.0, LEFT + 8, W - RIGHT - 8)

    def y(rank: int | None) -> float:
        return TL_TOP + LANE * index.get(rank, 0) + LANE / 2

    def x(time: str) -> float:
        t = parse_time(time)
        if t is None:
            return LEFT
        return sx(t) if t1 > t0 else (LEFT + W - RIGHT) / 2

    return {
        "w": W,
        "h": height,
        "lanes": [
            {"label": _rank_label(r), "y": y(r), "top": TL_TOP + LANE * i}
            for i, r in enumerate(lanes)
        ],
        "events": [
            {
                "x": x(e.time),
                "y": y(e.rank),
                "tip": visible(
                    f"{short_time(e.time)} {_step(e.step)} {_rank_label(e.rank)}\n"
                    f"{e.name}: {e.message}",
                    400,
                ),
            }
            for e in events
        ],
        "alerts": [
            {
                "x": x(a.time),
                "y": y(a.rank),
                "sev": a.severity.label,
                "tip": visible(_tip(a), 400),
                "seq": a.seq,
            }
            for a in reversed(alerts)  # most severe drawn last, on top
        ],
        "xticks": _time_ticks(sx, t0, t1),
        "left_out": max(0, len(model.alerts) - MAX_MARKS) + max(0, len(model.events) - MAX_MARKS),
        "box": (LEFT, TL_TOP, W - RIGHT - LEFT, LANE * len(lanes)),
    }


def _time_ticks(sx: _Scale, t0: float, t1: float) -> list[tuple[float, str, str]]:
    import datetime

    if t1 <= t0:
        return []
    span = t1 - t0
    fmt = "%H:%M:%S.%f" if span < 10 else "%H:%M:%S" if span < 86400 else "%m-%d %H:%M"
    out = []
    for i in range(6):
        t = t0 + span * i / 5
        label = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime(fmt)
        out.append((sx(t), label[:-3] if fmt.endswith("%f") else label))
    return _anchored(out)
