"""Start-up settings outside the file tree: environment variables and ``/etc/ld.so.preload``.

These decide what runs before or instead of the installed code (a preloaded library, a
start-up script, a path searched before the standard library). Each is judged by what it
can do; a cluster that needs one (``LD_LIBRARY_PATH`` for CUDA, say) names it in
``ignore``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["PRELOAD_FILE", "VARIABLES", "check"]

PRELOAD_FILE = Path("/etc/ld.so.preload")

VARIABLES: dict[str, tuple[Severity, str]] = {
    "LD_PRELOAD": (Severity.CRITICAL, "the dynamic loader maps these libraries into every process"),
    "LD_AUDIT": (
        Severity.CRITICAL,
        "the dynamic loader runs these audit libraries in every process",
    ),
    "PYTHONPATH": (Severity.HIGH, "searched before the standard library and site-packages"),
    "PYTHONHOME": (Severity.HIGH, "replaces the standard library and site-packages location"),
    "PYTHONUSERBASE": (Severity.MEDIUM, "moves the user site directory and its .pth files"),
    "LD_LIBRARY_PATH": (Severity.MEDIUM, "searched for shared libraries before the system paths"),
    "PYTHONSTARTUP": (Severity.MEDIUM, "a script run by every interactive interpreter"),
    "PYTHONBREAKPOINT": (Severity.LOW, "a callable run by breakpoint()"),
    "PYTHONINSPECT": (Severity.LOW, "drops into an interactive prompt after the script"),
    "TORCH_DEVICE_BACKEND_AUTOLOAD": (
        Severity.LOW,
        "controls whether `import torch` runs every torch.backends entry point "
        "(set it to 0 to turn that off)",
    ),
}


def check(
    environ: Mapping[str, str],
    ignore: Collection[str] = (),
    preload_file: Path = PRELOAD_FILE,
) -> list[Finding]:
    out: list[Finding] = []
    for name, (severity, why) in VARIABLES.items():
        value = environ.get(name)
        if not value or name in ignore:
            continue
        if name == "TORCH_DEVICE_BACKEND_AUTOLOAD" and value.strip() == "0":
            continue  # the safe setting
        out.append(
            Finding(
                Rule.ENV_STARTUP_HOOK,
                severity,
                f"${name} is set: {why}",
                Location("<environment>", member=name),
                {"variable": name, "value": value[:2000]},
            )
        )
    if str(preload_file) not in ignore:
        try:
            text = preload_file.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            out.append(
                Finding(
                    Rule.ENV_ERROR,
                    Severity.HIGH,
                    f"cannot read {preload_file}: {exc.strerror or exc}",
                    Location(str(preload_file)),
                )
            )
            text = ""
        libs = [w for line in text.splitlines() for w in line.split("#")[0].split()]
        if libs:
            out.append(
                Finding(
                    Rule.ENV_STARTUP_HOOK,
                    Severity.CRITICAL,
                    f"{preload_file} makes the dynamic loader map libraries into every process",
                    Location(str(preload_file)),
                    {"libraries": libs[:50]},
                )
            )
    return out
