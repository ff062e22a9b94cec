"""The ``trainguard`` command: parses arguments, calls the library, renders. No logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard import exit_codes
from trainguard.errors import ConfigError, TrainguardError

if TYPE_CHECKING:
    from trainguard.scan import Policy

__all__ = ["main"]


def _add_scan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scan = sub.add_parser(
        "scan",
        help="scan model files and folders without loading them",
        description="Exit codes: 0 all safe, 1 something suspicious or unsafe, "
        "2 something could not be scanned (2 wins over 1): unreadable, not a regular file "
        "(FIFO, device, socket), a link to a folder inside a folder (not followed), an empty "
        "folder. Links given as PATH are followed; inside folders, links to files are.",
    )
    scan.add_argument("paths", nargs="+", metavar="PATH")
    scan.add_argument(
        "--format",
        choices=("human", "json", "sarif"),
        default=os.environ.get("TRAINGUARD_FORMAT", "human"),
    )
    scan.add_argument("-o", "--output", metavar="FILE", help="write the report here, not stdout")
    _add_policy_flag(scan)
    scan.add_argument(
        "--fail-on",
        choices=("suspicious", "unsafe"),
        default="suspicious",
        help="lowest verdict that makes the exit code 1 (default: suspicious)",
    )
    scan.add_argument("--max-seconds", type=float, default=None, help="time budget per file")
    scan.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes for large folders (default: one per CPU)",
    )
    scan.add_argument("-v", "--verbose", action="store_true", help="also show info findings")
    scan.add_argument(
        "--explain",
        action="store_true",
        help="list every global, where it was found and why it was judged so",
    )


def _add_policy_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="FILE",
        default=os.environ.get("TRAINGUARD_POLICY"),
        help="policy TOML or pyproject.toml (default: $TRAINGUARD_POLICY, then the nearest "
        "pyproject.toml with [tool.trainguard])",
    )


def _build_parser() -> argparse.ArgumentParser:
    from trainguard import __version__

    parser = argparse.ArgumentParser(
        prog="trainguard",
        description="Keeps PyTorch training jobs honest on shared GPU clusters.",
    )
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)
    _add_scan(sub)

    policy = sub.add_parser("policy", help="manage the allowlist policy")
    psub = policy.add_subparsers(dest="policy_verb", required=True)
    add = psub.add_parser(
        "add",
        help="allowlist a global (appends to pyproject.toml or the --file given)",
        description="Known-dangerous globals (os.system, builtins.eval, ...) are refused.",
    )
    add.add_argument("name", metavar="GLOBAL", help="module.qualname, or package.* for classes")
    add.add_argument("--reason", required=True, help="why this global is safe to load")
    add.add_argument(
        "--uses", default="ref,new", help="comma list of ref, new, call (default: ref,new)"
    )
    add.add_argument("--expires", metavar="YYYY-MM-DD", help="the entry stops applying then")
    add.add_argument("--file-hash", metavar="SHA256", help="apply only to the file with this hash")
    add.add_argument(
        "--file", metavar="TOML", default="pyproject.toml", help="policy file (pyproject.toml)"
    )

    keygen = sub.add_parser(
        "keygen",
        help="create key pairs: ECDSA P-256 for checkpoints (signing.key/.pub), Ed25519 for "
        "ledger heads and seals (ledger.key/.pub); private keys 0600",
    )
    keygen.add_argument("--out", metavar="DIR", default=".", help="folder for the key files")

    sign = sub.add_parser("sign", help="sign a checkpoint file or folder (OpenSSF model-signing)")
    sign.add_argument("path", metavar="PATH")
    sign.add_argument("--key", required=True, metavar="PRIVATE_KEY", help="ECDSA P-256 key")
    sign.add_argument("--signature", metavar="FILE", help="where to write the signature")
    sign.add_argument(
        "--ledger", metavar="DIR", help="record the manifest digest here (for verify --recorded)"
    )
    check = sub.add_parser(
        "verify",
        help="verify a signed checkpoint: modified, added, missing files",
        description="Exit codes: 0 verified, 1 modified/missing/unsigned or bad signature, "
        "2 error.",
    )
    check.add_argument("path", metavar="PATH", nargs="?")
    check.add_argument("--key", required=True, metavar="PUBLIC_KEY", help="ECDSA P-256 key")
    check.add_argument(
        "--recorded",
        action="store_true",
        help="instead of PATH: every checkpoint the ledger saw saved (deleted, rolled back, "
        "swapped)",
    )
    check.add_argument("--ledger", metavar="DIR", help="ledger folder (with --recorded)")
    check.add_argument("--signature", metavar="FILE", help="signature (default: model.sig)")
    check.add_argument("--format", choices=("human", "json", "sarif"), default="human")

    env = sub.add_parser("env", help="environment integrity: seal a baseline, verify against it")
    esub = env.add_subparsers(dest="env_verb", required=True)
    verify = esub.add_parser(
        "verify",
        help="check installed files against RECORD, .pyc against source, start-up hooks",
        description="Exit codes: 0 intact, 1 tampering found, 2 could not check.",
    )
    verify.add_argument("--seal", metavar="FILE", help="also compare against this seal")
    verify.add_argument("--key", metavar="PUBLIC_KEY", help="public key the seal is signed with")
    verify.add_argument("--wheelhouse", metavar="DIR", help="compare RECORD files with wheels")
    verify.add_argument(
        "--wheels",
        action="store_true",
        help="fetch the wheel of every installed name==version from the configured package "
        "index (kept in the state folder) and compare each file and RECORD with it",
    )
    verify.add_argument(
        "--fast", action="store_true", help="with --seal: skip non-code files whose stat matches"
    )
    verify.add_argument("--python", metavar="EXE", help="interpreter to check (default: this)")
    verify.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="NAME",
        help="environment variable (or /etc/ld.so.preload) not to report",
    )
    verify.add_argument("--format", choices=("human", "json", "sarif"), default="human")
    verify.add_argument("-o", "--output", metavar="FILE")
    verify.add_argument("-v", "--verbose", action="store_true")
    verify.add_argument(
        "--no-cache",
        action="store_true",
        help="compile every .pyc again instead of using the verdict cache in the state folder "
        "($TRAINGUARD_STATE_DIR, else $XDG_STATE_HOME/trainguard)",
    )
    seal = esub.add_parser("seal", help="verify, then write a (signed) baseline of every file")
    seal.add_argument("-o", "--output", metavar="FILE", help="default: trainguard-env.seal")
    seal.add_argument(
        "--first-use",
        action="store_true",
        help="write it where `trainguard run` keeps this interpreter's first-use seal, "
        "replacing it (after a deliberate change to the environment)",
    )
    seal.add_argument("--key", metavar="PRIVATE_KEY", help="Ed25519 key to sign the seal with")
    seal.add_argument("--python", metavar="EXE", help="interpreter to seal (default: this)")
    seal.add_argument(
        "--allow-findings", action="store_true", help="seal even if verification finds problems"
    )

    ledger = sub.add_parser("ledger", help="the tamper-evident ledger: verify it, show it")
    lsub = ledger.add_subparsers(dest="ledger_verb", required=True)
    for verb, text in (
        ("verify", "recompute every record, the Merkle tree and the signed heads"),
        ("show", "list records (verification status included)"),
    ):
        lp = lsub.add_parser(
            verb,
            help=text,
            description="Exit codes: 0 intact, 1 tampered (edited, swapped, rolled back, "
            "truncated), 2 could not check (no ledger there; an unreadable witness, key or "
            "expected head).",
        )
        lp.add_argument(
            "--ledger",
            metavar="DIR",
            help="ledger folder, .jsonl export or postgresql://...?ledger=NAME URL (default: "
            "$TRAINGUARD_LEDGER, then ./trainguard-ledger)",
        )
        lp.add_argument("--key", metavar="PUBLIC_KEY", help="Ed25519 key that signs the heads")
        lp.add_argument("--witness", metavar="FILE", help="heads exported to a second place")
        lp.add_argument(
            "--witness-dir",
            metavar="DIR",
            help="the witness folder `trainguard run` writes (default: $TRAINGUARD_WITNESS_DIR, "
            "else witness/ in the state folder, e.g. ~/.local/state/trainguard/witness; off: "
            "none)",
        )
        lp.add_argument(
            "--origin", metavar="RUN", help="run id (or ledger origin) this must be the ledger of"
        )
        lp.add_argument(
            "--expect-head",
            action="append",
            default=[],
            metavar="FILE",
            help="a signed head kept elsewhere (a note, or witness lines) the ledger must hold",
        )
        lp.add_argument("--format", choices=("human", "json"), default="human")
        if verb == "show":
            lp.add_argument("--alert", metavar="ID", help="only alerts with this id")

    from trainguard.launch.args import add_arguments

    run = sub.add_parser(
        "run",
        help="guard and supervise a training job: trainguard run [flags] -- CMD ...",
        description="Exit codes: the job's own (128+N if it died by signal N); 86 trainguard "
        "stopped it or refused to start it (--stop-on); 124 --timeout ran out; 126/127 CMD "
        "cannot be run; 2 usage error.",
    )
    add_arguments(run)

    drill = sub.add_parser(
        "drill",
        help="run the sabotage drill: every attack of docs/threats.md against a tiny real job",
        description="Runs a tiny GPT job clean (2 ranks) and once per attack, each under "
        "`trainguard run`, and prints whether each attack was caught, how late, and by whom. "
        "Exit codes: 0 every attack caught and the clean run silent; 1 otherwise; 2 error.",
    )
    drill.add_argument("--attack", action="append", metavar="NAME", help="only these (repeat)")
    drill.add_argument("--list", action="store_true", help="list the attacks and exit")
    drill.add_argument("--format", choices=("human", "json"), default="human")
    drill.add_argument(
        "--ledger", metavar="DIR", help="folder for the runs and their ledgers (default: a new "
        "temporary folder, kept)",
    )  # fmt: skip

    report = sub.add_parser(
        "report",
        help="a ledger as a terminal summary, JSON, or one self-contained HTML file",
        description="Exit codes: 0 the report was made (a tampered ledger is reported, not "
        "judged: use `trainguard ledger verify` for that); 2 no readable ledger there.",
    )
    report.add_argument(
        "--ledger",
        metavar="DIR",
        help="ledger folder, .jsonl export or postgresql://...?ledger=NAME URL (default: "
        "$TRAINGUARD_LEDGER, then ./trainguard-ledger)",
    )
    report.add_argument("-o", "--output", metavar="FILE", help="also write the HTML report here")
    report.add_argument("--format", choices=("human", "json"), default="human")
    report.add_argument("--key", metavar="PUBLIC_KEY", help="Ed25519 key that signs the heads")

    convert = sub.add_parser(
        "convert",
        help="rewrite a pickle checkpoint (or HF folder) as safetensors, after a scan passes",
    )
    convert.add_argument("src", metavar="SRC")
    convert.add_argument("dst", metavar="DST")
    convert.add_argument("--overwrite", action="store_true")
    _add_policy_flag(convert)
    return parser


def _policy(args: argparse.Namespace) -> Policy:
    from trainguard.scan import Policy

    return Policy.from_file(args.policy) if args.policy else Policy.discover()


def _scan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainguard.findings import Verdict
    from trainguard.output import json as json_out
    from trainguard.output import sarif
    from trainguard.scan import Limits, scan_path

    policy = _policy(args)
    limits = Limits()
    if args.max_seconds:
        limits = replace(limits, max_seconds=args.max_seconds)
    report = scan_path(*args.paths, policy=policy, limits=limits, jobs=max(1, args.jobs))
    if not report.files:
        sys.stderr.write("trainguard: error: nothing to scan: no file under the paths given\n")
        return exit_codes.ERROR
    color = args.output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if args.format == "human":
        from trainguard.output import human

        text = human.render(report, color=color, verbose=args.verbose)
        if args.explain:
            text += human.explain(report, color=color)
        sys.stderr.write(human.summary(report, color=color and sys.stderr.isatty()))
    elif args.format == "json":
        text = json_out.render(report, explain=args.explain)
    else:
        text = sarif.render(report)
    # results are escaped already; this keeps any text a renderer adds writable as UTF-8
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(f"trainguard: error: cannot write {args.output}: {exc.strerror}\n")
            return exit_codes.ERROR
    else:
        sys.stdout.write(text)
    if report.has_error:
        return exit_codes.ERROR
    bad = {Verdict.UNSAFE} | ({Verdict.SUSPICIOUS} if args.fail_on == "suspicious" else set())
    if any(f.verdict in bad for f in report.files):
        return exit_codes.FINDINGS
    return exit_codes.OK


def _policy_add(args: argparse.Namespace) -> int:
    from trainguard.scan.policy import add_entry, parse_entries

    raw: dict[str, object] = {
        "global": args.name,
        "reason": args.reason,
        "uses": [u.strip() for u in args.uses.split(",") if u.strip()],
    }
    if args.expires:
        raw["expires"] = args.expires
    if args.file_hash:
        raw["sha256"] = args.file_hash.lower()
    (entry,) = parse_entries([raw], "command line")
    add_entry(Path(args.file), entry)
    sys.stderr.write(f"trainguard: allowlisted {entry.pattern} in {args.file}\n")
    return exit_codes.OK


def _convert(args: argparse.Namespace) -> int:
    from trainguard.load import convert

    result = convert(args.src, args.dst, policy=_policy(args), overwrite=args.overwrite)
    sys.stderr.write(f"trainguard: wrote {len(result.files)} file(s) to {result.dst}\n")
    return exit_codes.OK


def _keygen(args: argparse.Namespace) -> int:
    from trainguard import keys

    out = Path(args.out)
    pairs = {"signing": keys.generate_ecdsa_p256(), "ledger": keys.generate_ed25519()}
    paths = [out / f"{stem}.{ext}" for stem in pairs for ext in ("key", "pub")]
    if any(p.exists() for p in paths):
        sys.stderr.write(f"trainguard: error: key files exist in {out}; not overwriting\n")
        return exit_codes.ERROR
    out.mkdir(parents=True, exist_ok=True)
    for stem, (private_pem, public_pem) in pairs.items():
        keys.write_private_pem(out / f"{stem}.key", private_pem)
        (out / f"{stem}.pub").write_bytes(public_pem)
    sys.stderr.write(
        f"trainguard: wrote {out}/signing.key, ledger.key (0600) and their .pub files\n"
    )
    return exit_codes.OK


def _sign(args: argparse.Namespace) -> int:
    from trainguard import checkpoints

    result = checkpoints.sign(
        args.path, Path(args.key), out=Path(args.signature) if args.signature else None
    )
    if args.ledger:
        from trainguard.ledger import Ledger

        with Ledger(args.ledger) as led:
            led.append_event(
                f"checkpoint signed: {result.path}",
                evidence={
                    "event": "checkpoint.saved",
                    "path": str(Path(result.path).absolute()),
                    "manifest_digest": result.manifest.manifest_digest,
                    "signature": result.signature,
                    "key_id": result.key_id,
                },
            )
    sys.stderr.write(
        f"trainguard: signed {len(result.manifest.files)} file(s): {result.signature}\n"
    )
    return exit_codes.OK


def _verify(args: argparse.Namespace) -> int:
    import json

    from trainguard import checkpoints
    from trainguard.output import sarif

    if args.recorded:
        from trainguard.ledger import default_path

        swept = checkpoints.verify_recorded(default_path(args.ledger), Path(args.key))
        if args.format == "json":
            sys.stdout.write(json.dumps(swept.to_json(), indent=2) + "\n")
        elif args.format == "sarif":
            sys.stdout.write(sarif.log([(f, {}) for f in swept.findings]))
        else:
            sys.stdout.write(f"{swept.checkpoints} recorded checkpoint(s)\n")
            for f in swept.findings:
                sys.stdout.write(f"    {f.rule.value:<22} {f.location.path}: {f.message}\n")
        return exit_codes.OK if swept.ok else exit_codes.FINDINGS
    if args.path is None:
        raise ConfigError("verify needs PATH, or --recorded")
    result = checkpoints.verify(
        args.path, Path(args.key), signature=Path(args.signature) if args.signature else None
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    elif args.format == "sarif":
        sys.stdout.write(sarif.log([(f, {}) for f in result.findings]))
    else:
        state = "VERIFIED" if result.ok else "FAILED"
        sys.stdout.write(f"{state:<10} {result.path} ({result.checked} files checked)\n")
        for f in result.findings:
            sys.stdout.write(f"    {f.severity.label:<8} {f.rule.value:<22} {f.message}\n")
    return exit_codes.OK if result.ok else exit_codes.FINDINGS


def _seal_output(args: argparse.Namespace) -> Path:
    from trainguard.env.tofu import first_use_path

    if args.first_use:
        if args.output:
            raise ConfigError("--first-use decides where the seal goes: leave out -o")
        out = first_use_path(args.python or sys.executable)
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return out
    return Path(args.output or "trainguard-env.seal")


def _env(args: argparse.Namespace) -> int:
    from trainguard import env
    from trainguard.env.tofu import verdict_cache_path
    from trainguard.output import env as env_out

    progress_on = sys.stderr.isatty() and "NO_COLOR" not in os.environ
    with env_out.progress_bar(progress_on) as progress:
        if args.env_verb == "seal":
            info = env.seal(
                _seal_output(args),
                python=args.python,
                key=Path(args.key) if args.key else None,
                allow_findings=args.allow_findings,
                progress=progress,
                pyc_cache=verdict_cache_path(),
            )
            sys.stderr.write(
                f"trainguard: sealed {info.entries} files into {info.path} "
                f"(root {info.root[:16]}..., {'signed' if info.signed else 'unsigned'})\n"
            )
            return exit_codes.OK
        report = env.verify(
            python=args.python,
            seal=Path(args.seal) if args.seal else None,
            key=Path(args.key) if args.key else None,
            wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
            wheels=args.wheels,
            fast=args.fast,
            ignore=tuple(args.ignore),
            progress=progress,
            pyc_cache=None if args.no_cache else verdict_cache_path(),
        )
    color = args.output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    text = env_out.render(report, args.format, color=color, verbose=args.verbose)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.format == "human" and (args.output or not sys.stdout.isatty()):
        # the verdict for the terminal when the report went to a file or a pipe; on a
        # terminal the report above already ends with it (said once)
        from trainguard.output import env_human

        sys.stderr.write(env_human.summary(report, color=sys.stderr.isatty()))
    return env.exit_code(report)


def _drill(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trainguard.drill.render import render_human, render_json
    from trainguard.drill.runner import run_drill
    from trainguard.drill.scenarios import SCENARIOS

    if args.list:
        for s in SCENARIOS:
            sys.stdout.write(f"{s.name:26s} {' | '.join(s.expected):45s} {s.description}\n")
        return exit_codes.OK
    err = Console(stderr=True, highlight=False)
    report = run_drill(
        args.attack,
        workdir=Path(args.ledger) if args.ledger else None,
        progress=lambda text: err.print(f"[dim]trainguard drill: {text}[/dim]"),
    )
    if args.format == "json":
        sys.stdout.write(render_json(report) + "\n")
    else:
        render_human(report, Console(highlight=False))
    return exit_codes.OK if report.ok else exit_codes.FINDINGS


def _run(args: argparse.Namespace) -> int:
    from trainguard.launch import run_command
    from trainguard.launch.args import options_from

    return run_command(options_from(args))


def _report(args: argparse.Namespace) -> int:
    from trainguard.errors import VerificationError
    from trainguard.ledger import default_path
    from trainguard.report import run_report

    try:
        return run_report(
            default_path(args.ledger),
            Path(args.output) if args.output else None,
            args.format,
            public_key=Path(args.key) if args.key else None,
        )
    except VerificationError as exc:  # nothing to report on: could not check, not tampered
        sys.stderr.write(f"trainguard: error: {exc.diagnostics()}\n")
        return exit_codes.ERROR


def _ledger(args: argparse.Namespace) -> int:
    from trainguard.errors import VerificationError

    try:
        return _ledger_verbs(args)
    except VerificationError as exc:  # no ledger, an unreadable witness or key: 2, not 1
        sys.stderr.write(f"trainguard: error: could not check: {exc.diagnostics()}\n")
        return exit_codes.ERROR


def _ledger_verbs(args: argparse.Namespace) -> int:
    import json

    from trainguard import ledger

    path = ledger.default_path(args.ledger)
    opts = {
        "public_key": Path(args.key) if args.key else None,
        "witness": args.witness,
        "witness_dir": _witness_dir(args.witness_dir),
        "origin": args.origin,
        "expect_heads": args.expect_head,
    }
    if args.ledger_verb == "show":
        doc = ledger.show(path, alert=args.alert, **opts)
        if args.format == "json":
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        else:
            for r in doc["records"]:
                what = r.get("alert") or r["kind"]
                where = f"rank {r['rank']} step {r['step']}"
                sys.stdout.write(
                    f"{r['seq']:>6} {r['time']} {what:<24} {where:<18} {r['message']}\n"
                )
            state = (
                "verified" if doc["verified"] else "NOT verified (run: trainguard ledger verify)"
            )
            sys.stderr.write(f"trainguard: {len(doc['records'])} record(s), {state}\n")
        return exit_codes.OK if doc["verified"] else exit_codes.FINDINGS
    result = ledger.verify(path, **opts)
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    else:
        state = "INTACT" if result.intact else "TAMPERED"
        sys.stdout.write(
            f"{state:<9} {result.path}: {result.records} records, {result.heads_verified}/"
            f"{result.heads + result.witness_heads} signed heads verified ({result.heads} in "
            f"the ledger, {result.witness_heads} from witnesses)\n"
        )
        for f in result.findings:
            sys.stdout.write(
                f"    {f.severity.label:<8} {f.rule.value} at {f.location}: {f.message}\n"
            )
        for anchor in result.anchors:
            sys.stderr.write(f"checked against: {anchor}\n")
        for note in result.notes:
            sys.stderr.write(f"note: {note}\n")
    return exit_codes.OK if result.intact else exit_codes.FINDINGS


def _witness_dir(value: str | None) -> str | bool:
    """``--witness-dir``: a folder, ``off``, or (not given) the default one."""
    if value is None:
        return True
    return False if value.strip().lower() in ("off", "none") else value


_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "scan": _scan,
    "policy": _policy_add,
    "convert": _convert,
    "env": _env,
    "keygen": _keygen,
    "ledger": _ledger,
    "sign": _sign,
    "verify": _verify,
    "report": _report,
    "run": _run,
    "drill": _drill,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return _VERBS[args.verb](args)
    except TrainguardError as exc:
        sys.stderr.write(f"trainguard: error: {exc.diagnostics()}\n")
        return exit_codes.FINDINGS if _is_finding(exc) else exit_codes.ERROR
    except KeyboardInterrupt:
        sys.stderr.write("trainguard: interrupted\n")
        return 130


def _is_finding(exc: TrainguardError) -> bool:
    """Errors that are the answer rather than a failure to get one: a refused load, a
    signature that does not verify."""
    from trainguard.errors import LoadBlocked, VerificationError

    return isinstance(exc, LoadBlocked | VerificationError)


if __name__ == "__main__":
    sys.exit(main())
