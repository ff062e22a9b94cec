"""Benchmark trainguard against the "anchor" model-file scanners.

Run by hand from the repository root::

    .venv/bin/python benchmarks/scan_vs_anchors.py \
        [--anchors-python /work/anchors-venv/bin/python] [--corpus-dir DIR] [--big]

Other options: ``--corpus-module-path DIR`` (where ``corpus.py`` lives, default
``tests/``), ``--tools a,b`` (subset of columns), ``--json-out FILE`` (per-case
outcomes), ``--skip-corpus`` (only ``--big``), ``--repeat N`` (``--big`` runs per
timing), ``--trainguard-cli PATH``, ``--timeout S`` (per tool per case, 60).

The anchors venv is made outside the repo, e.g.::

    python3 -m venv /work/anchors-venv
    /work/anchors-venv/bin/pip install torch==2.13.0 numpy picklescan==1.0.5 \
        modelscan==0.8.8 fickling==0.1.12 modelaudit==0.2.54

(pin torch exactly: an unpinned one pulls a multi-GB CUDA build). modelaudit is
always run with ``PROMPTFOO_DISABLE_TELEMETRY=1 NO_ANALYTICS=1``.

Columns: picklescan, modelscan, fickling-cli (``--check-safety``), fickling-api
(``scan_zip_archive``/``scan_file``, default analyzer), fickling-ml (static
``fickling.ml.MLAllowlist`` analyzer: fickling's default analyzer calls every
non-stdlib import unsafe, so it flags every torch checkpoint), modelaudit,
trainguard-api (``trainguard.scan_path``) and trainguard-cli. The verdict rule of
each is printed at the top of every run.

The anchors (picklescan, modelscan, fickling, modelaudit) live in a separate
virtualenv so that their dependencies never touch the project's; every anchor
invocation is a subprocess of that venv's interpreter or console scripts, with a
per-case timeout. trainguard runs the same way (API snippet and CLI, each in a
subprocess of this interpreter), so wall times are comparable process to process.

What it measures
----------------
1. Detection on the test corpus (``tests/corpus.py``, ``build_corpus(root)``):
   for each tool, malicious cases missed, benign cases falsely flagged, errors and
   total wall time. Every run is reduced to one verdict per case:

   * ``flagged``  - the tool reported the case as unsafe/suspicious;
   * ``clean``    - the tool scanned it and reported nothing;
   * ``error``    - the tool could not give a verdict (crash, parse failure,
     unsupported format, nothing scanned, timeout).

   "missed" counts a malicious case whose verdict is ``clean`` *or* ``error``.
   Where a tool's exit code says "unsafe" while also reporting an error, its
   findings win (the case is ``flagged``). A second column shows the lenient
   count that treats errors on malicious cases as detections.
   A benign case is a false alarm only when ``flagged``; errors are listed apart.
   Directory cases go to tools that take directories as they are; for the
   fickling columns (files only) each regular file under the directory is scanned
   and the directory is flagged if any file is, else error if any file errored.
2. With ``--big``: wall time of each tool on one ~1 GiB ``torch.save``
   checkpoint, and of ``picklescan -p DIR`` vs ``trainguard scan DIR`` on a
   folder of 1,000 small checkpoints, with ratios against trainguard.

If trainguard cannot be imported (or has no ``scan_path``) its columns are
skipped with a message; the anchors still run.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANCHORS_PYTHON = Path("/work/anchors-venv/bin/python")
CASE_TIMEOUT_S = 60.0
BIG_TIMEOUT_S = 900.0
ANCHOR_PACKAGES = (
    "picklescan",
    "modelscan",
    "fickling",
    "modelaudit",
    "torch",
    "numpy",
)
# modelaudit phones home unless told not to.
NO_TELEMETRY = {"PROMPTFOO_DISABLE_TELEMETRY": "1", "NO_ANALYTICS": "1"}

Verdict = Literal["flagged", "clean", "error"]


class CaseLike(Protocol):
    """The contract of ``tests/corpus.py``'s ``Case`` (a frozen dataclass)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def malicious(self) -> bool: ...
    @property
    def technique(self) -> str: ...


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str
    seconds: float


@dataclass(frozen=True)
class Proc:
    rc: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Tool:
    name: str
    scan: Callable[[Path, float], Outcome]
    takes_dirs: bool
    rule: str  # how its verdict is read, printed in the report


@dataclass
class Row:
    case: CaseLike
    outcomes: dict[str, Outcome] = field(default_factory=dict)


# --------------------------------------------------------------------------
# subprocess plumbing


def run_proc(
    cmd: Sequence[str],
    timeout: float,
    *,
    cwd: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> Proc:
    """Run ``cmd`` in its own process group; kill the whole group at the timeout."""
    env = dict(os.environ)
    # Every tool gets its bytecode cache, as an installed package has: anchors' .pyc files
    # were written by pip at install time, trainguard's are compiled in main().
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(NO_TELEMETRY)
    if env_extra:
        env.update(env_extra)
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return Proc(rc, out, err, time.perf_counter() - start)


def last_line(text: str, limit: int = 160) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def first_line(text: str, limit: int = 160) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:limit] if lines else ""


def timeout_outcome(p: Proc) -> Outcome:
    return Outcome("error", f"timeout after {p.seconds:.0f}s", p.seconds)


def last_json(text: str) -> dict[str, object] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None


def read_json_file(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------
# anchors


def picklescan_tool(bindir: Path) -> Tool:
    exe = bindir / "picklescan"

    def scan(path: Path, timeout: float) -> Outcome:
        p = run_proc([str(exe), "-p", str(path)], timeout)
        if p.rc is None:
            return timeout_outcome(p)
        m = re.search(r"Infected files: (\d+)", p.stdout)
        infected = int(m.group(1)) if m else 0
        if p.rc == 1 or infected > 0:
            return Outcome("flagged", f"rc={p.rc} infected={infected}", p.seconds)
        if p.rc == 0:
            return Outcome("clean", "rc=0", p.seconds)
        return Outcome("error", f"rc={p.rc} {last_line(p.stderr)}", p.seconds)

    return Tool(
        "picklescan",
        scan,
        takes_dirs=True,
        rule="`picklescan -p PATH`: rc 1 or 'Infected files: N>0' = flagged "
        "(rc 2 wins over 1 when a parse error also occurred); rc 0 = clean; "
        "else error. Unparseable non-pickles are a warning and rc 0 (clean).",
    )


def modelscan_tool(bindir: Path) -> Tool:
    exe = bindir / "modelscan"

    def scan(path: Path, timeout: float) -> Outcome:
        # Run in an empty dir: modelscan reads ./modelscan-settings.toml if present.
        # Its JSON on stdout is wrapped by rich; -o gives clean JSON.
        with tempfile.TemporaryDirectory(prefix="modelscan-") as tmp:
            report = Path(tmp) / "report.json"
            cmd = [str(exe), "-p", str(path), "-r", "json", "-o", str(report)]
            p = run_proc(cmd, timeout, cwd=Path(tmp))
            data = read_json_file(report)
        if p.rc is None:
            return timeout_outcome(p)
        summary = data.get("summary", {}) if data else {}
        issues = int(summary.get("total_issues", 0)) if isinstance(summary, dict) else 0
        errors = data.get("errors", []) if data else []
        if p.rc == 1 or issues > 0:
            return Outcome("flagged", f"rc={p.rc} issues={issues}", p.seconds)
        if p.rc == 0:
            return Outcome("clean", "rc=0", p.seconds)
        if p.rc == 3:
            return Outcome("error", "rc=3 no supported file scanned", p.seconds)
        first = ""
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = str(errors[0].get("description", ""))[:120]
        return Outcome("error", f"rc={p.rc} {first or last_line(p.stderr)}", p.seconds)

    return Tool(
        "modelscan",
        scan,
        takes_dirs=True,
        rule="`modelscan -p PATH -r json -o FILE`: rc 1 or summary.total_issues>0 = "
        "flagged (rc 2 'errors' wins over 1); rc 0 = clean; rc 2 (scan errors), "
        "3 (no supported file) or 4 (usage) = error.",
    )


def fickling_cli_tool(bindir: Path) -> Tool:
    exe = bindir / "fickling"

    def scan(path: Path, timeout: float) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="fickling-") as tmp:
            out = Path(tmp) / "safety.json"
            cmd = [str(exe), "--check-safety", "--json-output", str(out), str(path)]
            p = run_proc(cmd, timeout, cwd=Path(tmp))
        if p.rc is None:
            return timeout_outcome(p)
        crashed = "Traceback (most recent call last)" in p.stderr
        if p.rc == 1 and not crashed:
            return Outcome("flagged", "rc=1", p.seconds)
        if p.rc == 0:
            return Outcome("clean", "rc=0", p.seconds)
        return Outcome("error", f"rc={p.rc} {first_line(p.stderr)}", p.seconds)

    return Tool(
        "fickling-cli",
        scan,
        takes_dirs=False,
        rule="`fickling --check-safety --json-output F FILE`: rc 1 = flagged (any "
        "severity above LIKELY_SAFE) unless stderr holds a traceback (crash, also "
        "rc 1) = error; rc 0 = clean; rc 2 ('failed to parse', e.g. every torch "
        "zip) = error.",
    )


# Runs inside the anchors venv; one JSON line out. Never unpickles anything.
FICKLING_API_SNIPPET = r"""
import io, json, os, sys, zipfile
mode, target = sys.argv[1], sys.argv[2]
import fickling
from fickling.analysis import Analyzer, Severity, check_safety
from fickling.fickle import StackedPickle
from fickling.loader import RelaxedZipFile
from fickling.ml import MLAllowlist

ML = Analyzer([MLAllowlist()])
MEMBER_EXTS = (".pkl", ".pickle", ".bin")  # what fickling.scan_zip_archive reads


def ml_blob(data):
    flagged = False
    for pickled in StackedPickle.load(io.BytesIO(data), fail_on_decode_error=False):
        res = check_safety(pickled, analyzer=ML)
        flagged = flagged or res.severity > Severity.LIKELY_SAFE or pickled.has_invalid_opcode
    return flagged


def one_file(path):
    # -> (verdict, detail)
    if mode == "api":
        if zipfile.is_zipfile(path):
            results = list(fickling.scan_zip_archive(path, graceful=True).values())
            if not results:
                return "error", "zip without pickle members"
        else:
            results = [fickling.scan_file(path, graceful=True)]
        severities = [r.severity for sr in results for r in sr.results]
        worst = max(severities, default=Severity.LIKELY_SAFE)
        errors = [e for sr in results for e in sr.errors]
        if worst > Severity.LIKELY_SAFE:
            return "flagged", worst.name
        if errors:
            return "error", errors[0][:120]
        return "clean", "LIKELY_SAFE"
    # mode == "ml": static MLAllowlist analysis only
    try:
        if zipfile.is_zipfile(path):
            with RelaxedZipFile(path) as zf:
                names = [i.filename for i in zf.infolist()
                         if not i.is_dir() and i.filename.lower().endswith(MEMBER_EXTS)]
                if not names:
                    return "error", "zip without pickle members"
                flagged = any(ml_blob(zf.read(n)) for n in names)
        else:
            with open(path, "rb") as fh:
                flagged = ml_blob(fh.read())
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"[:120]
    return ("flagged", "not in ML allowlist") if flagged else ("clean", "allowlisted")


if os.path.isdir(target):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(target) for f in fs)
else:
    files = [target]
verdicts = []
for f in files:
    try:
        verdicts.append((f,) + one_file(f))
    except Exception as exc:
        verdicts.append((f, "error", f"{type(exc).__name__}: {exc}"[:120]))
flag = [v for v in verdicts if v[1] == "flagged"]
err = [v for v in verdicts if v[1] == "error"]
if flag:
    out = ("flagged", f"{os.path.basename(flag[0][0])}: {flag[0][2]}")
elif err:
    out = ("error", f"{os.path.basename(err[0][0])}: {err[0][2]}")
elif verdicts:
    out = ("clean", verdicts[0][2])
else:
    out = ("error", "no files")
print(json.dumps({"verdict": out[0], "detail": out[1]}))
"""


def snippet_tool(
    name: str,
    python: Path,
    snippet: str,
    mode: str,
    rule: str,
    env_extra: dict[str, str] | None = None,
) -> Tool:
    def scan(path: Path, timeout: float) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="snippet-") as tmp:
            cmd = [str(python), "-c", snippet, mode, str(path)]
            p = run_proc(cmd, timeout, cwd=Path(tmp), env_extra=env_extra)
        if p.rc is None:
            return timeout_outcome(p)
        data = last_json(p.stdout) or {}
        known: dict[object, Verdict] = {"flagged": "flagged", "clean": "clean", "error": "error"}
        verdict = known.get(data.get("verdict"))
        if verdict is None:
            return Outcome("error", f"rc={p.rc} {last_line(p.stderr)}", p.seconds)
        return Outcome(verdict, str(data.get("detail", "")), p.seconds)

    return Tool(name, scan, takes_dirs=True, rule=rule)


def fickling_api_tool(python: Path) -> Tool:
    return snippet_tool(
        "fickling-api",
        python,
        FICKLING_API_SNIPPET,
        "api",
        "zip: `fickling.scan_zip_archive(p, graceful=True)` (reads .pkl/.pickle/.bin "
        "members), else `fickling.scan_file(p, graceful=True)`: any analysis result "
        "above LIKELY_SAFE = flagged; only ScanResult.errors = error; else clean. "
        "Default analyzer: any non-stdlib import (torch._utils...) is LIKELY_UNSAFE.",
    )


def fickling_ml_tool(python: Path) -> Tool:
    return snippet_tool(
        "fickling-ml",
        python,
        FICKLING_API_SNIPPET,
        "ml",
        "same members, `check_safety(p, analyzer=Analyzer([fickling.ml.MLAllowlist()]))`:"
        " severity above LIKELY_SAFE or invalid opcode = flagged; exception = error.",
    )


def modelaudit_why(data: dict[str, object] | None, p: Proc) -> str:
    """Best short reason for a modelaudit rc 2 (its stderr is mostly log noise)."""
    if data is None:
        return last_line(p.stderr) or last_line(p.stdout) or "no JSON report"
    issues = data.get("issues")
    if isinstance(issues, list) and issues and isinstance(issues[0], dict):
        first = issues[0]
        return f"{first.get('severity')}: {str(first.get('message', ''))[:110]}"
    bits = [f"{k}={data.get(k)}" for k in ("has_errors", "success", "files_scanned")]
    return " ".join(bits)


def modelaudit_tool(bindir: Path) -> Tool:
    exe = bindir / "modelaudit"

    def scan(path: Path, timeout: float) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="modelaudit-") as tmp:
            report = Path(tmp) / "report.json"
            cmd = [
                str(exe),
                "scan",
                "--format",
                "json",
                "--no-cache",
                "-o",
                str(report),
                str(path),
            ]
            p = run_proc(cmd, timeout, cwd=Path(tmp))
            data = read_json_file(report)
        if p.rc is None:
            return timeout_outcome(p)
        issues = data.get("issues", []) if data else []
        serious = [
            i
            for i in (issues if isinstance(issues, list) else [])
            if isinstance(i, dict) and str(i.get("severity", "")).lower() in ("warning", "critical")
        ]
        if p.rc == 1 or serious:
            top = str(serious[0].get("message", ""))[:100] if serious else ""
            return Outcome("flagged", f"rc={p.rc} {len(serious)} warn/crit: {top}", p.seconds)
        if p.rc == 0:
            return Outcome("clean", "rc=0", p.seconds)
        return Outcome("error", f"rc={p.rc} {modelaudit_why(data, p)}", p.seconds)

    return Tool(
        "modelaudit",
        scan,
        takes_dirs=True,
        rule="`modelaudit scan --format json --no-cache -o FILE PATH` (telemetry off): "
        "rc 1 or any WARNING/CRITICAL issue in the JSON = flagged (rc 2 'operational "
        "error' wins over 1); rc 0 = clean; else error.",
    )


# --------------------------------------------------------------------------
# trainguard

TRAINGUARD_SNIPPET = r"""
import json, sys
from pathlib import Path
try:
    import trainguard
    scan_path = trainguard.scan_path
except (ImportError, AttributeError) as exc:
    print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}))
    sys.exit(3)
if sys.argv[2] == "--probe":
    print(json.dumps({"ok": True}))
    sys.exit(0)
report = scan_path(Path(sys.argv[2]))
values = [f.verdict.value for f in report.files]
if any(v in ("suspicious", "unsafe") for v in values):
    verdict = "flagged"
elif "error" in values:
    verdict = "error"
else:
    verdict = "clean"
counts = {v: values.count(v) for v in sorted(set(values))}
print(json.dumps({"verdict": verdict, "detail": f"{len(values)} files {counts}"}))
"""


def trainguard_env() -> dict[str, str]:
    src = str(REPO / "src")
    pythonpath = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": src if not pythonpath else f"{src}{os.pathsep}{pythonpath}"}


def trainguard_tools(cli: Path | None) -> tuple[list[Tool], list[str]]:
    """The trainguard columns that can run here, and messages for those that cannot."""
    tools: list[Tool] = []
    notes: list[str] = []
    python = Path(sys.executable)
    env = trainguard_env()
    probe = run_proc([str(python), "-c", TRAINGUARD_SNIPPET, "api", "--probe"], 120, env_extra=env)
    info = last_json(probe.stdout) or {}
    if probe.rc == 0 and info.get("ok"):
        tools.append(
            snippet_tool(
                "trainguard-api",
                python,
                TRAINGUARD_SNIPPET,
                "api",
                "`trainguard.scan_path(p).files[*].verdict.value` in a subprocess: any "
                "suspicious/unsafe = flagged; else any error = error; else clean.",
                env_extra=env,
            )
        )
    else:
        why = info.get("unavailable") or last_line(probe.stderr) or f"rc={probe.rc}"
        notes.append(f"trainguard-api skipped: cannot use trainguard.scan_path ({why})")
    exe = cli if cli is not None else python.parent / "trainguard"
    if exe.exists():

        def scan(path: Path, timeout: float) -> Outcome:
            # Neutral cwd: the CLI looks for a pyproject.toml [tool.trainguard] policy.
            with tempfile.TemporaryDirectory(prefix="trainguard-") as tmp:
                cmd = [str(exe), "scan", "--format", "json", str(path)]
                p = run_proc(cmd, timeout, cwd=Path(tmp), env_extra=env)
            if p.rc is None:
                return timeout_outcome(p)
            try:
                report = json.loads(p.stdout)
            except json.JSONDecodeError:
                report = {}
            summary = report.get("summary") if isinstance(report, dict) else None
            if isinstance(summary, dict):
                bad = int(summary.get("suspicious", 0)) + int(summary.get("unsafe", 0))
                errors = int(summary.get("error", 0))
                detail = f"rc={p.rc} files={summary.get('files')} bad={bad} error={errors}"
                if bad:
                    return Outcome("flagged", detail, p.seconds)
                if errors or p.rc not in (0, 1):
                    return Outcome("error", detail, p.seconds)
                if p.rc == 1:  # findings the summary does not count: trust the exit code
                    return Outcome("flagged", detail, p.seconds)
                return Outcome("clean", detail, p.seconds)
            by_rc: dict[int, Verdict] = {0: "clean", 1: "flagged"}
            detail = f"rc={p.rc} (no JSON summary) {last_line(p.stderr)}"
            return Outcome(by_rc.get(p.rc, "error"), detail, p.seconds)

        tools.append(
            Tool(
                "trainguard-cli",
                scan,
                takes_dirs=True,
                rule="`trainguard scan --format json PATH` (temp cwd): JSON summary "
                "suspicious+unsafe>0 = flagged (rc 2 wins over 1 in trainguard too); "
                "else summary.error>0 or rc not 0/1 = error; rc 1 = flagged; rc 0 = clean. "
                "Without a JSON summary: rc 0 clean, 1 flagged, else error.",
            )
        )
    else:
        notes.append(f"trainguard-cli skipped: {exe} does not exist (pip install -e .?)")
    return tools, notes


# --------------------------------------------------------------------------
# corpus run


def files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def scan_case(tool: Tool, path: Path, timeout: float) -> Outcome:
    if tool.takes_dirs or not path.is_dir():
        return tool.scan(path, timeout)
    outs = [(f, tool.scan(f, timeout)) for f in files_under(path)]
    total = sum(o.seconds for _, o in outs)
    worst_first: tuple[Verdict, ...] = ("flagged", "error")
    for verdict in worst_first:
        hit = [(f, o) for f, o in outs if o.verdict == verdict]
        if hit:
            f, o = hit[0]
            return Outcome(verdict, f"{f.name}: {o.detail}", total)
    return Outcome("clean", f"{len(outs)} files clean", total)


def load_cases(module_dir: Path, root: Path) -> list[CaseLike]:
    sys.path.insert(0, str(module_dir))
    corpus = importlib.import_module("corpus")
    return list(corpus.build_corpus(root))


def pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100.0 * n / d:.0f}%)" if d else "0/0"


def print_table(tools: list[Tool], rows: list[Row]) -> None:
    mal = [r for r in rows if r.case.malicious]
    ben = [r for r in rows if not r.case.malicious]
    header = (
        f"{'tool':<15} {'malicious missed':>17} {'missed (err=hit)':>17} "
        f"{'benign false alarm':>19} {'err mal/ben':>11} {'total s':>8} {'median s':>8}"
    )
    print(header)
    print("-" * len(header))
    for t in tools:
        missed = sum(r.outcomes[t.name].verdict != "flagged" for r in mal)
        missed_lenient = sum(r.outcomes[t.name].verdict == "clean" for r in mal)
        false_alarm = sum(r.outcomes[t.name].verdict == "flagged" for r in ben)
        err_m = sum(r.outcomes[t.name].verdict == "error" for r in mal)
        err_b = sum(r.outcomes[t.name].verdict == "error" for r in ben)
        secs = [r.outcomes[t.name].seconds for r in rows]
        print(
            f"{t.name:<15} {pct(missed, len(mal)):>17} {pct(missed_lenient, len(mal)):>17} "
            f"{pct(false_alarm, len(ben)):>19} {f'{err_m}/{err_b}':>11} "
            f"{sum(secs):>8.1f} {statistics.median(secs) if secs else 0.0:>8.2f}"
        )
    print(
        "\nmissed = malicious case not flagged (clean OR error); 'missed (err=hit)' counts "
        "errors on malicious cases as detections. A flagged verdict always wins over an "
        "error from the same run. false alarm = benign case flagged; errors are not "
        "false alarms. Times are wall seconds per subprocess, interpreter start included."
    )


def print_details(tools: list[Tool], rows: list[Row]) -> None:
    print("\nPer-case verdicts (F=flagged, .=clean, E=error):")
    width = max(len(r.case.name) for r in rows) if rows else 10
    print(f"  {'case':<{width}} mal  " + " ".join(f"{t.name[:14]:>14}" for t in tools))
    for r in rows:
        marks = " ".join(
            f"{'F.E'[('flagged', 'clean', 'error').index(r.outcomes[t.name].verdict)]:>14}"
            for t in tools
        )
        print(f"  {r.case.name:<{width}} {'yes' if r.case.malicious else 'no ':<4} {marks}")
    print("\nMissed malicious techniques per tool (case: verdict, detail):")
    for t in tools:
        missed = [r for r in rows if r.case.malicious and r.outcomes[t.name].verdict != "flagged"]
        print(f"  {t.name}: {len(missed)} missed")
        for r in missed:
            o = r.outcomes[t.name]
            print(f"    - {r.case.technique} ({r.case.name}: {o.verdict}, {o.detail})")
    print("\nBenign false alarms / errors per tool:")
    for t in tools:
        bad = [r for r in rows if not r.case.malicious and r.outcomes[t.name].verdict != "clean"]
        names = ", ".join(f"{r.case.name}={r.outcomes[t.name].verdict}" for r in bad) or "none"
        print(f"  {t.name}: {names}")


def run_corpus(tools: list[Tool], cases: list[CaseLike], timeout: float) -> list[Row]:
    rows = [Row(c) for c in cases]
    for t in tools:
        start = time.perf_counter()
        for r in rows:
            r.outcomes[t.name] = scan_case(t, Path(r.case.path), timeout)
        print(
            f"  ran {t.name} over {len(rows)} cases in {time.perf_counter() - start:.1f}s",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------
# --big


def make_big_checkpoint(path: Path, tensors: int, numel: int) -> None:
    import torch

    state = {f"layers.{i}.weight": torch.randn(numel) for i in range(tensors)}
    torch.save(state, path)


def make_small_checkpoints(folder: Path, count: int) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        torch.save({"w": torch.randn(8, 8), "b": torch.randn(8)}, folder / f"ckpt_{i:04d}.pt")


def warm_cache(path: Path) -> None:
    for f in files_under(path):
        with f.open("rb") as fh:
            while fh.read(1 << 24):
                pass


def print_timings(title: str, results: dict[str, Outcome]) -> None:
    ref_name = next((n for n in ("trainguard-cli", "trainguard-api") if n in results), None)
    ref = results[ref_name].seconds if ref_name else None
    print(f"\n{title}")
    suffix = f"x {ref_name}" if ref_name else "(no trainguard: no ratio)"
    print(f"  {'tool':<15} {'seconds':>9} {'ratio':>7}  {suffix:<16} verdict/detail")
    for name, o in results.items():
        ratio = f"{o.seconds / ref:.2f}" if ref else "-"
        print(f"  {name:<15} {o.seconds:>9.2f} {ratio:>7}  {'':<16} {o.verdict}: {o.detail[:70]}")


def timed(tool: Tool, path: Path, timeout: float, repeat: int) -> Outcome:
    """Median wall time of ``repeat`` runs; the verdict of the last run."""
    runs = [tool.scan(path, timeout) for _ in range(max(1, repeat))]
    return Outcome(runs[-1].verdict, runs[-1].detail, statistics.median(r.seconds for r in runs))


def run_big(
    tools: dict[str, Tool],
    tmp: Path,
    timeout: float,
    tensors: int,
    numel: int,
    count: int,
    repeat: int,
) -> None:
    big = tmp / "big.pt"
    print(f"\n--big: writing {tensors} x {numel} float32 tensors to {big} ...", flush=True)
    start = time.perf_counter()
    make_big_checkpoint(big, tensors, numel)
    print(
        f"  {big.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - start:.1f}s",
        flush=True,
    )
    warm_cache(big)
    order = [
        "picklescan",
        "modelscan",
        "modelaudit",
        "fickling-api",
        "fickling-ml",
        "trainguard-api",
        "trainguard-cli",
    ]
    results: dict[str, Outcome] = {}
    for name in order:
        if name in tools:
            print(f"  timing {name} ...", flush=True)
            results[name] = timed(tools[name], big, timeout, repeat)
    print_timings(
        f"One {big.stat().st_size / 2**30:.2f} GiB torch.save checkpoint "
        f"(page cache warm, median of {repeat} runs):",
        results,
    )
    big.unlink()

    folder = tmp / "many"
    print(f"\n--big: writing {count} small checkpoints to {folder} ...", flush=True)
    make_small_checkpoints(folder, count)
    warm_cache(folder)
    results = {}
    for name in ("picklescan", "trainguard-cli", "trainguard-api"):
        if name in tools:
            print(f"  timing {name} on the folder ...", flush=True)
            results[name] = timed(tools[name], folder, timeout, repeat)
    print_timings(
        f"Folder of {count} small torch.save checkpoints, one process per tool "
        f"(median of {repeat} runs):",
        results,
    )


# --------------------------------------------------------------------------


def anchor_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    p = run_proc([str(python), "-c", code, *ANCHOR_PACKAGES], 120)
    data = last_json(p.stdout) or {}
    return {k: str(v) for k, v in data.items()}


def build_tools(
    anchors_python: Path, versions: dict[str, str], trainguard_cli: Path | None
) -> tuple[list[Tool], list[str]]:
    bindir = anchors_python.parent
    tools: list[Tool] = []
    notes: list[str] = []
    factories: list[tuple[str, Callable[[], Tool], Path | None]] = [
        ("picklescan", lambda: picklescan_tool(bindir), bindir / "picklescan"),
        ("modelscan", lambda: modelscan_tool(bindir), bindir / "modelscan"),
        ("fickling", lambda: fickling_cli_tool(bindir), bindir / "fickling"),
        ("fickling", lambda: fickling_api_tool(anchors_python), None),
        ("fickling", lambda: fickling_ml_tool(anchors_python), None),
        ("modelaudit", lambda: modelaudit_tool(bindir), bindir / "modelaudit"),
    ]
    for package, make, exe in factories:
        tool = make()
        if versions.get(package, "missing") == "missing" or (exe is not None and not exe.exists()):
            notes.append(f"{tool.name} skipped: {package} not installed in {anchors_python}")
        else:
            tools.append(tool)
    tg, tg_notes = trainguard_tools(trainguard_cli)
    return tools + tg, notes + tg_notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--anchors-python", type=Path, default=DEFAULT_ANCHORS_PYTHON)
    ap.add_argument(
        "--corpus-dir",
        type=Path,
        help="where to build the corpus (default: a temp dir, removed)",
    )
    ap.add_argument(
        "--corpus-module-path",
        type=Path,
        default=REPO / "tests",
        help="dir holding corpus.py",
    )
    ap.add_argument(
        "--trainguard-cli",
        type=Path,
        help="trainguard console script (default: the one next to this python)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=CASE_TIMEOUT_S,
        help="seconds per tool per case",
    )
    ap.add_argument("--tools", help="comma-separated subset of tool names to run")
    ap.add_argument("--skip-corpus", action="store_true", help="only the --big timings")
    ap.add_argument(
        "--big",
        action="store_true",
        help="also time a ~1 GiB checkpoint and 1,000 small ones",
    )
    ap.add_argument("--big-timeout", type=float, default=BIG_TIMEOUT_S)
    ap.add_argument("--big-tensors", type=int, default=256)
    ap.add_argument("--big-numel", type=int, default=1 << 20)
    ap.add_argument("--many-count", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="--big: runs per timing (median)")
    ap.add_argument("--json-out", type=Path, help="write per-case outcomes here")
    return ap.parse_args(argv)


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    anchors_python: Path = args.anchors_python
    if not anchors_python.exists():
        print(
            f"anchors python {anchors_python} not found; see the module docstring",
            file=sys.stderr,
        )
        return 2
    versions = anchor_versions(anchors_python)
    compileall.compile_dir(str(REPO / "src" / "trainguard"), quiet=1)
    print(
        "Anchor versions ("
        + str(anchors_python)
        + "): "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    tools, notes = build_tools(anchors_python, versions, args.trainguard_cli)
    if args.tools:
        wanted = {t.strip() for t in args.tools.split(",")}
        tools = [t for t in tools if t.name in wanted]
    for note in notes:
        print(f"NOTE: {note}")
    print("\nVerdict rules:")
    for t in tools:
        print(f"  {t.name}: {t.rule}")

    if not args.skip_corpus:
        module_dir: Path = args.corpus_module_path
        if not (module_dir / "corpus.py").exists():
            print(
                f"\nno corpus.py in {module_dir}; nothing to run (see --corpus-module-path)",
                file=sys.stderr,
            )
            return 2
        with workdir(args.corpus_dir) as root:
            cases = load_cases(module_dir, root)
            n_mal = sum(c.malicious for c in cases)
            print(
                f"\nCorpus: {len(cases)} cases ({n_mal} malicious, "
                f"{len(cases) - n_mal} benign) under {root}"
            )
            rows = run_corpus(tools, cases, args.timeout)
            print()
            print_table(tools, rows)
            print_details(tools, rows)
            if args.json_out:
                payload = [
                    {
                        "case": r.case.name,
                        "technique": r.case.technique,
                        "malicious": r.case.malicious,
                        "outcomes": {k: vars(v) for k, v in r.outcomes.items()},
                    }
                    for r in rows
                ]
                args.json_out.write_text(
                    json.dumps({"versions": versions, "cases": payload}, indent=2)
                )
                print(f"\nper-case outcomes written to {args.json_out}")

    if args.big:
        with tempfile.TemporaryDirectory(prefix="tg-bench-big-") as tmp:
            run_big(
                {t.name: t for t in tools},
                Path(tmp),
                args.big_timeout,
                args.big_tensors,
                args.big_numel,
                args.many_count,
                args.repeat,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
