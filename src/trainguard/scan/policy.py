"""The allowlist policy: every global is safe, dangerous or unknown, and unknown is reported.

A policy is the built-in sets of ``allowlists`` plus user entries from ``[tool.trainguard]``
in a ``pyproject.toml`` or a standalone TOML file::

    [[tool.trainguard.allow]]
    global = "mylab.models.*"          # exact module.qualname, or package.* for its classes
    reason = "our own model classes"
    uses = ["ref", "new"]              # optional; default ref+new (never "call" unless said)
    expires = 2027-03-01               # optional; expired entries turn back into findings
    sha256 = "..."                     # optional; only for the file with this digest

Known-dangerous globals can never be allowed: no entry overrides them.

What a judgement trusts, and nothing else: the tables of ``allowlists`` (exact entries with
their uses, the dangerous rules, and the generated class table that wildcards consult) and
the user's entries. The policy never imports a module to find out what a name is: importing
a module a file names runs that module's code, which is what scanning is meant to avoid.

A wildcard ``package.*`` matches a name in a module under the package (never an attribute
path such as ``F.relu``), and then:

- under a package trainguard ships a class table for (torch.nn, torch.optim, pandas,
  sklearn, scipy.sparse, ...), only a class that the package itself defines, whether the
  wildcard is built in or the user's, so ``pandas.*`` does not reach ``io.TextIOWrapper``
  through ``pandas.io.common`` nor ``multiprocessing.connection.Client`` through
  ``sklearn.callback._transport``, nor the module ``torch.nn.modules.linear.F``;
- elsewhere (the user's own ``mylab.*``), any class-shaped name (``Net``, ``_Block``): the
  user vouches for the package, re-exports included, and the dangerous rules still apply (a
  re-exported ``Popen`` or ``GzipFile`` is dangerous under any module).
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.errors import ConfigError
from trainguard.scan import allowlists as al
from trainguard.scan.uses import Use

__all__ = ["AllowEntry", "Judgement", "Policy", "Status"]

_CLASS_NAME = re.compile(r"_?[A-Z][A-Za-z0-9_]*\Z")
_USE_NAMES = {"ref": Use.REF, "new": Use.NEW, "call": Use.CALL}


class Status(enum.StrEnum):
    SAFE = "safe"
    DANGEROUS = "dangerous"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class AllowEntry:
    pattern: str
    uses: Use
    reason: str
    source: str = "builtin"
    expires: _dt.date | None = None
    sha256: str | None = None

    def matches(self, module: str, name: str) -> bool:
        """Exact names match themselves; a wildcard matches a class the package defines (see
        the module docstring: by the class table where trainguard ships one)."""
        if self.pattern.endswith(".*"):
            prefix = self.pattern[:-2]
            in_pkg = module == prefix or module.startswith(prefix + ".")
            if not in_pkg:
                return False
            defined = al.defines(module, name)
            return bool(_CLASS_NAME.match(name)) if defined is None else defined
        return self.pattern == f"{module}.{name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "global": self.pattern,
            "uses": [k for k, v in _USE_NAMES.items() if v in self.uses],
            "reason": self.reason,
            "source": self.source,
            "expires": self.expires.isoformat() if self.expires else None,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    status: Status
    reason: str
    entry: AllowEntry | None = None
    expired: AllowEntry | None = None


@functools.lru_cache(maxsize=8192)
def canonical(module: str, name: str) -> tuple[str, str]:
    """Collapse module aliases that are the same object (``posix`` is ``os``)."""
    if module in al.ALIASES:
        return al.ALIASES[module], name
    for alias, real in al.ALIASES.items():
        if module.startswith(alias + "."):
            return real + module[len(alias) :], name
    return module, name


def danger(module: str, name: str) -> str | None:
    """Why a global is known to reach code execution, files, processes or sockets."""
    full = f"{module}.{name}"
    if full in al.DANGEROUS_EXACT:
        return f"{full} executes code or touches files/processes"
    for part in name.split("."):
        if part in al.DANGEROUS_ATTRS:
            return f"attribute {part!r} reaches code execution or the system"
    if full in al.HARMLESS_MEMBERS:
        return None
    for m in al.DANGEROUS_MODULES:
        if module == m or module.startswith(m + "."):
            return f"module {m} gives code execution, file, process or network access"
    for part in module.split(".")[1:]:
        if part in ("os", "subprocess", "sys", "builtins", "pickle", "marshal", "ctypes"):
            return f"module path passes through {part!r}"
    return None


class Policy:
    """Judges globals. Immutable; build a new one to change it."""

    def __init__(self, entries: Iterable[AllowEntry] = (), *, today: _dt.date | None = None):
        self.user_entries: tuple[AllowEntry, ...] = tuple(entries)
        self.today = today or _dt.date.today()
        self._exact: dict[str, AllowEntry] = {}
        self._wild: list[AllowEntry] = []
        for pattern, (uses, reason) in al.BUILTIN_ALLOW.items():
            entry = AllowEntry(pattern, uses, reason)
            if pattern.endswith(".*"):
                self._wild.append(entry)
            else:
                self._exact[pattern] = entry
        self._cache: dict[tuple[str, str, Use, str | None], Judgement] = {}

    @property
    def needs_file_hash(self) -> bool:
        return any(e.sha256 for e in self.user_entries)

    def judge(self, module: str, name: str, use: Use, file_sha256: str | None = None) -> Judgement:
        key = (module, name, use, file_sha256)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._judge(module, name, use, file_sha256)
            self._cache[key] = hit
        return hit

    def _judge(self, module: str, name: str, use: Use, file_sha256: str | None) -> Judgement:
        module, name = canonical(module, name)
        why = danger(module, name)
        if why:
            return Judgement(Status.DANGEROUS, why)
        expired = None
        for entry in self.user_entries:
            if not entry.matches(module, name):
                continue
            if entry.sha256 and entry.sha256 != file_sha256:
                continue
            if entry.expires and entry.expires < self.today:
                expired = entry
                continue
            if use.worst in entry.uses:
                return Judgement(Status.SAFE, entry.reason, entry)
        builtin = self._exact.get(f"{module}.{name}")
        candidates = [builtin] if builtin else [e for e in self._wild if e.matches(module, name)]
        for entry in candidates:
            if use.worst in entry.uses:
                return Judgement(Status.SAFE, entry.reason, entry, expired)
        if candidates:
            allowed = "+".join(k for k, v in _USE_NAMES.items() if v in candidates[0].uses)
            return Judgement(
                Status.UNKNOWN,
                f"allowed only for {allowed} ({candidates[0].reason}), but used as {use.label}",
                expired=expired,
            )
        return Judgement(Status.UNKNOWN, "not on any allowlist", expired=expired)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """A standalone policy TOML, or a pyproject.toml with ``[tool.trainguard]``."""
        import tomllib

        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read policy {path}: {exc}") from exc
        tool = data.get("tool", {})
        section = tool["trainguard"] if isinstance(tool, dict) and "trainguard" in tool else data
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [tool.trainguard] must be a table")
        return cls(parse_entries(section.get("allow", []), str(path)))

    @classmethod
    def discover(cls, start: Path | None = None) -> Policy:
        """The policy in the nearest ``pyproject.toml`` with ``[tool.trainguard]``, if any."""
        import tomllib

        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            candidate = folder / "pyproject.toml"
            if candidate.is_file():
                try:
                    data = tomllib.loads(candidate.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                    return cls()
                if "trainguard" in data.get("tool", {}):
                    return cls.from_file(candidate)
                return cls()
        return cls()


def parse_entries(raw: Any, source: str) -> list[AllowEntry]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: 'allow' must be a list of tables")
    entries = []
    for i, item in enumerate(raw):
        where = f"{source}: allow[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a table")
        pattern = item.get("global")
        reason = item.get("reason")
        if not isinstance(pattern, str) or not pattern or " " in pattern:
            raise ConfigError(f"{where}: 'global' must be a module.qualname or package.*")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where}: every allowlist entry needs a 'reason'")
        uses = Use(0)
        for u in item.get("uses", ["ref", "new"]):
            if u not in _USE_NAMES:
                raise ConfigError(f"{where}: unknown use {u!r} (ref, new, call)")
            uses |= _USE_NAMES[u]
        expires = item.get("expires")
        if isinstance(expires, str):
            try:
                expires = _dt.date.fromisoformat(expires)
            except ValueError:
                raise ConfigError(f"{where}: 'expires' must be a date (YYYY-MM-DD)") from None
        if isinstance(expires, _dt.datetime):
            expires = expires.date()
        if expires is not None and not isinstance(expires, _dt.date):
            raise ConfigError(f"{where}: 'expires' must be a date")
        digest = item.get("sha256")
        if digest is not None and not (
            isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
        ):
            raise ConfigError(f"{where}: 'sha256' must be 64 lowercase hex digits")
        entries.append(AllowEntry(pattern, uses, reason.strip(), source, expires, digest))
    return entries


def add_entry(path: Path, entry: AllowEntry) -> None:
    """Append ``entry`` to a policy file (``[[tool.trainguard.allow]]`` in a pyproject.toml,
    ``[[allow]]`` in a standalone policy), refusing what the policy would never honour.

    The file is re-read afterwards, so a write that would leave it unparseable is undone.
    """
    import json
    import tomllib

    module, _, name = entry.pattern.rpartition(".")
    if entry.pattern.endswith(".*"):
        module, name = entry.pattern[:-2], "X"
    why = danger(*canonical(module, name))
    if why:
        raise ConfigError(f"{entry.pattern} cannot be allowlisted: {why}")
    table = "tool.trainguard.allow" if path.name == "pyproject.toml" else "allow"
    lines = [f"\n[[{table}]]", f"global = {json.dumps(entry.pattern)}"]
    lines.append(f"reason = {json.dumps(entry.reason)}")
    lines.append("uses = " + json.dumps([k for k, v in _USE_NAMES.items() if v in entry.uses]))
    if entry.expires:
        lines.append(f"expires = {entry.expires.isoformat()}")
    if entry.sha256:
        lines.append(f"sha256 = {json.dumps(entry.sha256)}")
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    after = before + ("" if before.endswith("\n") or not before else "\n") + "\n".join(lines) + "\n"
    try:
        tomllib.loads(after)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} would not parse after adding the entry: {exc}") from None
    path.write_text(after, encoding="utf-8")
    Policy.from_file(path)  # every entry still valid
