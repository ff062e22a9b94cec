"""Import hooks the environment's start-up installs: ``sys.meta_path`` and ``sys.path_hooks``.

A finder on ``sys.meta_path`` (or a path hook) decides what code every later ``import``
gets, so a start-up route that slips past the file checks (a RECORD-consistent edit of an
editable install's finder module, a planted standard library) shows up here as a finder
nobody vouches for. The static checks cannot see it: they never run start-up code.

``check()`` starts the interpreter once the way the job will (``site`` on, the job's
environment less ``LD_PRELOAD``/``LD_AUDIT``, an empty working folder) and lists its import
hooks. Run it only after the static verify found nothing: then the only start-up code is
what the checks accepted (setuptools' shim, editable-install finders), the very code the
job would run a moment later. Each hook is judged by where its code lives:

* CPython's own (``BuiltinImporter``, ``FrozenImporter``, ``PathFinder``, ``zipimporter``,
  ``FileFinder``'s hook) by identity, in the child;
* anything else only when its code's file is a *verified file of a known module*: listed
  in the seal the verify used (whose hashes it just matched), or, without a seal, in a
  distribution's RECORD (whose hashes it just matched). Never a path prefix: a finder
  defined under the standard library's folder is not trusted for being there.

Unknown hooks are ``env.startup_hook`` (high). *What it trusts:* the verify that ran just
before (its seal, or RECORD), and the interpreter's report of its own hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainguard.env.report import EnvReport
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["check", "snapshot"]

_SNAPSHOT = r"""
import json, sys, types, zipimport
from importlib import machinery as m

own = (m.BuiltinImporter, m.FrozenImporter, m.PathFinder, zipimport.zipimporter)
hook_code = m.FileFinder.path_hook((m.SourceFileLoader, [".py"])).__code__
loaders = (m.SourceFileLoader, m.SourcelessFileLoader, m.ExtensionFileLoader)

def builtin(obj):
    # identity only: an object may claim any name, module or equality
    if any(obj is o for o in own):
        return True
    if type(obj) is not types.FunctionType or obj.__code__ is not hook_code:
        return False
    cells = dict(zip(obj.__code__.co_freevars, (c.cell_contents for c in obj.__closure__)))
    details = cells.get("loader_details")
    return cells.get("cls") is m.FileFinder and isinstance(details, tuple) and all(
        isinstance(d, tuple) and any(d[0] is x for x in loaders) for d in details)

def code_file(obj):
    if type(obj) is types.FunctionType:
        return obj.__code__.co_filename
    for name in ("find_spec", "find_module", "__call__", "__init__"):
        fn = getattr(obj, name, None)
        fn = getattr(fn, "__func__", fn)
        if type(fn) is types.FunctionType:
            return fn.__code__.co_filename
    return None

out = []
for kind, hooks in (("sys.meta_path", sys.meta_path), ("sys.path_hooks", sys.path_hooks)):
    for i, obj in enumerate(hooks):
        ok = builtin(obj)
        cls = obj if isinstance(obj, type) else type(obj)
        name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"
        if type(obj) is types.FunctionType:
            name = f"{obj.__module__}.{obj.__qualname__}"
        out.append({"kind": kind, "index": i, "builtin": ok, "name": name,
                    "file": None if ok else code_file(obj)})
sys.stdout.write("\0trainguard-hooks\0" + json.dumps(out))
"""

_DROP_ENV = ("LD_PRELOAD", "LD_AUDIT")
_MARK = "\0trainguard-hooks\0"


def snapshot(python: str, environment: Mapping[str, str]) -> list[dict[str, Any]]:
    """The import hooks of ``python`` after a normal start-up, as the child reports them."""
    env = {k: v for k, v in environment.items() if k not in _DROP_ENV}
    with tempfile.TemporaryDirectory(prefix="trainguard-hooks-") as cwd:
        proc = subprocess.run(
            [python, "-c", _SNAPSHOT],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=cwd,
            check=False,
        )
    if proc.returncode != 0 or _MARK not in proc.stdout:
        raise ValueError(f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    hooks = json.loads(proc.stdout.rpartition(_MARK)[2])
    if not isinstance(hooks, list):
        raise ValueError("malformed answer")
    return hooks


def check(
    python: str,
    report: EnvReport,
    environment: Mapping[str, str],
    *,
    seal: Path | None = None,
) -> list[Finding]:
    """Unknown import hooks after start-up (see the module docstring). ``report`` is the
    verify just made; ``seal`` the seal it used (its file list is the verified set)."""
    try:
        hooks = snapshot(python, environment)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return [
            Finding(
                Rule.ENV_ERROR,
                Severity.HIGH,
                f"cannot list the import hooks after start-up: {exc}",
                Location(python),
            )
        ]
    vouched = _Vouched(seal, report.site_dirs)
    out: list[Finding] = []
    for hook in hooks:
        if hook.get("builtin"):
            continue
        file = hook.get("file")
        if isinstance(file, str) and vouched(file):
            continue
        where = f"{hook.get('kind')}[{hook.get('index')}]"
        out.append(
            Finding(
                Rule.ENV_STARTUP_HOOK,
                Severity.HIGH,
                f"{where} holds {hook.get('name')} after start-up, defined in "
                f"{file or 'no file'}, which no verified file vouches for: it decides what "
                "every later import loads",
                Location(file or python, member=where),
                {"hook": hook.get("name"), "file": file, "anchor": "seal" if seal else "RECORD"},
            )
        )
    return out


class _Vouched:
    """Is ``path`` a file the verify just matched: in the seal, else in some RECORD?"""

    def __init__(self, seal: Path | None, site_dirs: Sequence[str]) -> None:
        self.seal = seal
        self.site_dirs = site_dirs
        self._sealed: set[str] | None = None

    def __call__(self, path: str) -> bool:
        if not os.path.isabs(path) or not os.path.isfile(path):
            return False
        if self.seal is not None:
            return path in self._seal_files()
        return any(self._in_record(site, path) for site in self.site_dirs)

    def _seal_files(self) -> set[str]:
        if self._sealed is None:
            self._sealed = set()
            try:
                lines = Path(self.seal or "").read_bytes().split(b"\n")[1:-1]
            except OSError:
                return self._sealed
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("type") == "file":
                    self._sealed.add(str(entry.get("path")))
        return self._sealed

    @staticmethod
    def _in_record(site: str, path: str) -> bool:
        site = os.path.normpath(site)
        if os.path.commonpath([site, os.path.normpath(path)]) != site:
            return False
        rel = os.path.relpath(path, site).replace(os.sep, "/")
        try:
            infos = [e.path for e in os.scandir(site) if e.name.endswith(".dist-info")]
        except OSError:
            return False
        for info in infos:
            try:
                with open(os.path.join(info, "RECORD"), encoding="utf-8", errors="replace") as f:
                    if any(line.startswith(rel + ",") for line in f):
                        return True
            except OSError:
                continue
        return False
