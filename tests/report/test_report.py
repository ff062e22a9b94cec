"""``trainguard report``: a real ledger rendered for the terminal, as JSON and as HTML.

The ledger is written through ``Ledger`` with the record contracts the guard, the
launcher and the env/scan/checkpoint verbs use; one alert message is hostile (HTML,
rich markup, a terminal escape, a bidi override) and must come out as inert text.
"""

from __future__ import annotations

import io
import json
import math
import re
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from trainguard.errors import VerificationError
from trainguard.findings import Severity
from trainguard.ledger import Ledger, export_jsonl
from trainguard.ledger.record import Record
from trainguard.report import build, html, render_html, render_terminal, run_report, write_html
from trainguard.report.html import downsample

HOSTILE = (
    '<script>alert("pwned")</script><img src=x onerror=alert(1)> [bold red]markup[/] '
    "\x1b[2J\x1b]0;owned\x07 \u202eevil"
)


def write_demo_ledger(path: Path, *, steps: int = 300, ranks: int = 2, batch: int = 50) -> Path:
    """A run's worth of records: launcher, env verify, scan, guards with metrics on
    ``ranks`` ranks, alerts (one hostile), checkpoints, a killed rank."""
    with Ledger(path) as led:
        led.append_event(
            "run.started",
            evidence={"event": "run.started", "command": ["torchrun", "train.py"]},
        )
        led.append_event(
            "env.verified",
            evidence={
                "event": "env.verified",
                "ok": False,
                "files": 1234,
                "seconds": 2.5,
                "findings": [
                    {
                        "rule": "env.file_modified",
                        "severity": "high",
                        "message": "torch/optim/adamw.py does not match its RECORD hash",
                        "location": {"path": "site-packages/torch/optim/adamw.py"},
                    }
                ],
            },
        )
        led.append_event(
            "scan",
            evidence={
                "event": "scan",
                "path": "ckpt/rng_state.pth",
                "verdict": "unsafe",
                "findings": [
                    {
                        "rule": "scan.code_execution",
                        "severity": "critical",
                        "message": "posix.system reached through REDUCE",
                        "location": "ckpt/rng_state.pth!data.pkl@12",
                    }
                ],
            },
        )
        for r in range(ranks):
            led.append_event(
                "guard.started",
                rank=r,
                evidence={
                    "event": "guard.started",
                    "checks": ["weights", "optimizer", "update"],
                    "every": 16,
                    "parameters": 4,
                    "elements": 1000,
                    "optimizer": "AdamW",
                    "scheduler": "LambdaLR",
                    "world_size": ranks,
                },
            )
        for start in range(1, steps + 1, batch):
            for r in range(ranks):
                s = list(range(start, min(start + batch, steps + 1)))
                loss = [2.0 * math.exp(-3 * i / steps) + 0.3 + 0.05 * math.sin(i + r) for i in s]
                grad = [1.0 + 0.2 * r + 0.3 * math.sin(i / 7) ** 2 for i in s]
                if r == 1 and 200 in s:
                    loss[s.index(200)] = 50.0  # a spike the downsampling must keep
                    grad[s.index(200)] = None  # type: ignore[call-overload]
                led.append_event(
                    "guard.metrics",
                    step=s[-1],
                    rank=r,
                    evidence={
                        "event": "guard.metrics",
                        "steps": s,
                        "loss": loss,
                        "grad_norm": grad,
                        "step_time": [0.05] * len(s),
                    },
                )
        led.append_alert(
            "process.straggler", message="rank 0 is 3x slower", severity="medium", step=150, rank=0
        )
        led.append_alert(
            "runtime.weight_tamper",
            message="fc1.weight changed between steps",
            severity="critical",
            step=200,
            rank=1,
            evidence={"parameter": "fc1.weight", "elements": 12},
        )
        led.append_alert("training.anomaly", message="loss spike", severity="low", step=200, rank=1)
        led.append_alert(
            "runtime.monkeypatch",
            message=HOSTILE,
            severity="high",
            step=210,
            rank=0,
            evidence={"html": "<b>bold</b></pre><script>x()</script>"},
        )
        led.append_event(
            "checkpoint saved: ckpt",
            rank=0,
            evidence={
                "event": "checkpoint.saved",
                "path": "/runs/ckpt",
                "manifest_digest": "a" * 64,
            },
        )
        led.append_event(
            "checkpoint.verified",
            evidence={
                "event": "checkpoint.verified",
                "path": "/runs/ckpt",
                "ok": False,
                "findings": [
                    {"rule": "checkpoint.modified", "severity": "critical", "message": "model.pt"}
                ],
            },
        )
        led.append_event(
            "process.exit",
            evidence={
                "event": "process.exit",
                "rank": 1,
                "pid": 4242,
                "code": -9,
                "signal": "SIGKILL",
            },
        )
        led.append_alert(
            "process.killed", message="rank 1 killed by SIGKILL", severity="high", rank=1
        )
        for r in range(ranks):
            led.append_event(
                "guard.stopped",
                step=steps,
                rank=r,
                evidence={"event": "guard.stopped", "steps": steps, "alerts": 2},
            )
        led.append_event(
            "run.exited", evidence={"event": "run.exited", "command": ["torchrun"], "exit_code": 1}
        )
    return path


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return write_demo_ledger(tmp_path / "ledger")


def _terminal(model: object, **kw: object) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), **kw)  # type: ignore[arg-type]
    render_terminal(model, console)  # type: ignore[arg-type]
    return console.export_text()


class _Page(HTMLParser):
    """Every tag with its attributes, and the text of each <polyline>'s points."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _page(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


# -- the model ---------------------------------------------------------------------------


def test_model_gathers_every_contract(ledger: Path) -> None:
    m = build(ledger)
    assert m.verification.intact and m.records == 28
    assert [a.rule for a in m.alerts] == [
        "process.straggler",
        "runtime.weight_tamper",
        "training.anomaly",
        "runtime.monkeypatch",
        "process.killed",
    ]
    assert m.alerts[1].severity is Severity.CRITICAL and m.alerts[1].step == 200
    assert m.ranks == (0, 1, None)
    assert [c.rank for c in m.curves] == [0, 1]
    assert all(len(c.steps) == 300 for c in m.curves) and m.curves[0].steps[:3] == (1, 2, 3)
    assert m.curves[1].loss[199] == 50.0 and m.curves[1].grad_norm[199] is None
    assert m.run_count == 1 and m.max_step == 300
    assert m.env[0].ok is False and m.env[0].findings[0].rule == "env.file_modified"
    assert "adamw.py" in m.env[0].findings[0].location
    assert [(c.action, c.ok) for c in m.checkpoints] == [("saved", None), ("verified", False)]
    assert m.scans[0].verdict == "unsafe" and m.scans[0].findings[0].severity is Severity.CRITICAL
    assert [(g.rank, g.stopped, g.steps) for g in m.guards] == [(0, True, 300), (1, True, 300)]
    assert (m.processes[0].rank, m.processes[0].signal) == (1, "SIGKILL")
    assert m.rule_counts()[0] == ("runtime.weight_tamper", 1, Severity.CRITICAL)


def test_model_survives_evidence_of_the_wrong_shape(tmp_path: Path) -> None:
    """Anyone who can append can write any evidence: the report must still render."""
    path = tmp_path / "L"
    with Ledger(path) as led:
        bad = [
            {"event": "guard.metrics", "steps": "1,2,3", "loss": {"a": 1}},
            {"event": "guard.metrics", "steps": [1, "2", None, 4.5, True], "loss": ["x", 1.0]},
            {"event": "guard.metrics", "steps": [7], "loss": ["nan"], "grad_norm": [1e308]},
            {"event": "guard.started", "checks": "all", "every": "16", "world_size": None},
            {"event": "guard.stopped", "steps": "many"},
            {"event": "env.verified", "ok": "yes", "findings": "none", "seconds": "fast"},
            {"event": "scan", "path": ["a", "b"], "findings": [1, "x", {"rule": ["r"]}]},
            {"event": "checkpoint.verified", "ok": 1, "findings": [{"location": {"x": None}}]},
            {"event": "process.exit", "rank": "one", "signal": 9},
            {"event": "run.started", "command": {"sh": 1}},
            {"event": ["not", "a", "name"]},
        ]
        for ev in bad:
            led.append_event("x", evidence=ev)
        led.append_alert("made.up", message="m", severity="critical", step=-5)
    m = build(path)
    assert m.curves[0].steps == (1, 7) and m.curves[0].loss == (None, None)
    assert m.curves[0].grad_norm == (None, 1e308)
    assert m.env[0].ok is None and m.env[0].findings == () and m.env[0].seconds is None
    assert [f.rule for f in m.scans[0].findings] == ["unknown", "unknown", "['r']"]
    assert m.processes[0].rank is None and m.processes[0].signal == "9"
    assert m.guards[0].checks == () and m.guards[0].stopped and m.guards[0].steps is None
    _terminal(m)
    json.dumps(m.to_json())
    assert "made.up" in render_html(m)


def test_no_ledger_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        build(tmp_path / "nothing")


def test_an_empty_ledger_renders(tmp_path: Path) -> None:
    with Ledger(tmp_path / "L"):
        pass
    m = build(tmp_path / "L")
    assert m.records == 0 and m.verification.intact and m.max_step is None
    assert "No alerts." in _terminal(m)
    page = render_html(m)
    assert "No records." in page and "No metrics were recorded" in page


def test_a_jsonl_export_is_a_ledger_too(ledger: Path, tmp_path: Path) -> None:
    export_jsonl(ledger, tmp_path / "run.jsonl")
    m = build(tmp_path / "run.jsonl")
    assert m.ledger == str(tmp_path / "run.jsonl") and m.verification.intact
    assert len(m.alerts) == 5 and len(m.curves) == 2


def test_importing_the_package_imports_no_renderer_library() -> None:
    code = (
        "import sys, trainguard.report; "
        "print(sorted({'rich', 'jinja2', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- terminal ----------------------------------------------------------------------------


def test_terminal_summary(ledger: Path) -> None:
    text = _terminal(build(ledger))
    assert "trainguard report" in text and str(ledger) in text
    assert re.search(r"verified\s+yes", text)
    assert re.search(r"runs\s+1", text) and re.search(r"ranks\s+2\s+\(0, 1\)", text)
    assert re.search(r"steps\s+300", text)
    for rule in ("runtime.weight_tamper", "process.straggler", "process.killed"):
        assert rule in text
    assert re.search(r"runtime\.weight_tamper\W+1\W+critical", text)  # the per-rule table
    assert "Environment verification" in text and "torch/optim/adamw.py" in text
    assert "Checkpoints" in text and "Scans" in text and "ckpt/rng_state.pth" in text
    assert "signal SIGKILL" in text


def test_terminal_shows_hostile_text_inert(ledger: Path) -> None:
    console = Console(record=True, width=200, file=io.StringIO(), force_terminal=True)
    render_terminal(build(ledger), console)
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[bold red]markup[/]" in raw  # shown, not obeyed
    assert "\x1b[2J" not in raw and "\x1b]0;" not in raw and "\u202e" not in raw
    assert "\\x1b[2J" in raw and "\\u202eevil" in raw


def test_terminal_respects_no_color(ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    color = re.compile(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;)[0-9;]*m")
    m = build(ledger)
    monkeypatch.delenv("NO_COLOR", raising=False)
    colored = Console(file=io.StringIO(), force_terminal=True, width=120)
    render_terminal(m, colored)
    assert color.search(colored.file.getvalue())  # type: ignore[attr-defined]
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Console(file=io.StringIO(), force_terminal=True, width=120)
    render_terminal(m, plain)
    assert not color.search(plain.file.getvalue())  # type: ignore[attr-defined]


# -- HTML --------------------------------------------------------------------------------


def test_html_escapes_ledger_text(ledger: Path) -> None:
    page = render_html(build(ledger))
    assert page.count("<script") == 1  # the report's own, nonce-tagged
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page
    assert "<img" not in page and "onerror=alert" not in page.replace("&lt;img src=x onerror", "")
    assert "&lt;b&gt;bold&lt;/b&gt;&lt;/pre&gt;" in page  # evidence, too
    assert "\x1b" not in page and "\u202e" not in page and "\\u202eevil" in page
    (script,) = (a for t, a in _page(page).tags if t == "script")
    nonce = script["nonce"]
    assert nonce and f"script-src 'nonce-{nonce}'" in page and "default-src 'none'" in page


def test_no_template_or_renderer_marks_text_safe() -> None:
    template = Path(html.__file__).with_name("templates") / "report.html.j2"
    assert "|safe" not in template.read_text().replace(" ", "")
    assert "Markup" not in Path(html.__file__).read_text()


def test_html_is_self_contained(ledger: Path) -> None:
    page = render_html(build(ledger))
    assert not re.search(r"https?://", page)
    assert "@import" not in page and "url(" not in page
    for tag, attrs in _page(page).tags:
        assert "src" not in attrs, tag
        href = attrs.get("href")
        assert href is None or href.startswith("#"), (tag, href)


def test_html_sections_and_tables(ledger: Path) -> None:
    page = render_html(build(ledger))
    assert 'class="banner intact"' in page and "NOT INTACT" not in page
    for rule in ("runtime.weight_tamper", "process.straggler", "training.anomaly"):
        assert rule in page
    assert page.count('<tr id="alert-') == 5
    for text in ("env.file_modified", "scan.code_execution", "checkpoint.modified", "SIGKILL"):
        assert text in page
    assert "/runs/ckpt" in page and "a" * 64 in page


def test_html_curves_and_markers(ledger: Path) -> None:
    tags = _page(render_html(build(ledger))).tags
    lines = [a for t, a in tags if t == "polyline"]
    assert len(lines) == 6  # loss, grad norm, step time x 2 ranks
    for a in lines:
        pts = [tuple(map(float, p.split(","))) for p in (a["points"] or "").split()]
        assert len(pts) >= 299 and all(0 <= x <= 960 and 0 <= y <= 240 for x, y in pts)
        assert pts == sorted(pts)  # by step
    marks = [a for t, a in tags if t == "line" and "mark" in (a.get("class") or "")]
    assert any("sev-critical" in (a.get("class") or "") for a in marks)
    timeline = [a for t, a in tags if t == "path" and "dot" in (a.get("class") or "")]
    assert len(timeline) == 5  # one per alert


def test_tampered_ledger_gets_the_banner(ledger: Path) -> None:
    c = sqlite3.connect(ledger / "ledger.sqlite3", isolation_level=None)
    (body,) = c.execute("SELECT body FROM records WHERE seq = 20").fetchone()
    rec = Record.from_leaf(body)
    forged = Record(**{**{f: getattr(rec, f) for f in rec.__slots__}, "message": "all is well"})
    c.execute("UPDATE records SET body = ? WHERE seq = 20", (forged.leaf(),))
    c.close()
    m = build(ledger)
    assert not m.verification.intact
    page = render_html(m)
    assert 'class="banner tampered"' in page and "LEDGER NOT INTACT" in page
    assert "record 20 was changed" in page
    assert re.search(r"verified\s+NO: NOT INTACT", _terminal(m))


def test_big_run_stays_small_and_keeps_spikes(tmp_path: Path) -> None:
    path = write_demo_ledger(tmp_path / "L", steps=5000, ranks=2, batch=500)  # 10k points
    m = build(path)
    page = render_html(m)
    assert len(page.encode()) < 500_000
    tags = _page(page).tags
    (loss1,) = [a for t, a in tags if t == "polyline" and a.get("stroke") == html.RANK_COLORS[1]][
        :1
    ]
    pts = [tuple(map(float, p.split(","))) for p in (loss1["points"] or "").split()]
    assert len(pts) <= 2 * html.MAX_BUCKETS
    assert min(y for _, y in pts) == pytest.approx(html.TOP, abs=0.5)  # the spike at the top


def test_downsample_keeps_extremes_in_order() -> None:
    pts = [(float(i), math.sin(i / 50)) for i in range(10_000)]
    pts[4321] = (4321.0, 99.0)
    pts[777] = (777.0, -99.0)
    out = downsample(pts, 100)
    assert len(out) <= 200 and out == sorted(out)
    assert (4321.0, 99.0) in out and (777.0, -99.0) in out and out[0] == pts[0]
    assert downsample(pts[:10], 100) == pts[:10]


def test_write_html(ledger: Path, tmp_path: Path) -> None:
    out = write_html(build(ledger), tmp_path / "r.html")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- the CLI entry -----------------------------------------------------------------------


def test_run_report_json(ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert run_report(ledger, out, "json") == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["verification"]["intact"] is True and doc["runs_count"] == 1
    assert doc["alerts"][1]["rule"] == "runtime.weight_tamper"
    assert doc["alerts"][1]["severity"] == "critical"
    assert len(doc["curves"][0]["steps"]) == 300 and doc["max_step"] == 300
    assert doc["severity_counts"]["critical"] == 1
    assert out.is_file() and str(out) in captured.err


def test_run_report_human(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_report(ledger, None, "human") == 0
    captured = capsys.readouterr()
    assert "runtime.weight_tamper" in captured.out and captured.err == ""


def test_gradient_chart_shows_the_clip_threshold(tmp_path: Path) -> None:
    """The guard records the norm before clipping and the threshold beside it: the chart
    draws both, the threshold dashed, so a spike the clip absorbed is still seen."""
    path = tmp_path / "ledger"
    with Ledger(path) as led:
        for r in range(2):
            led.append_event(
                "guard.metrics",
                step=4,
                rank=r,
                evidence={
                    "event": "guard.metrics",
                    "steps": [1, 2, 3, 4],
                    "loss": [1.0, 0.9, 0.8, 0.7],
                    "grad_norm": [3.0, 2.5, 40.0 + r, 2.0],
                    "clip": [1.0, 1.0, 1.0, 1.0],
                    "step_time": [0.1] * 4,
                },
            )
    model = build(path)
    assert model.curves[0].clip == (1.0, 1.0, 1.0, 1.0)
    assert model.curves[1].grad_norm[2] == 41.0
    tags = _page(render_html(model)).tags
    dashed = [a for t, a in tags if t == "polyline" and a.get("stroke-dasharray")]
    assert len(dashed) == 2  # one threshold line per rank, on the gradient chart only
    assert len([a for t, a in tags if t == "polyline"]) == 8
