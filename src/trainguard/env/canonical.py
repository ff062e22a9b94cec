"""Canonical JSON (RFC 8785, JCS) for seal lines, so equal content gives equal bytes.

The ``rfc8785`` package (the ``sign`` extra) does it when installed. Without it, seal
lines are still canonical: they hold only ASCII keys, strings, booleans, null and
integers below 2**53, and for those ``json.dumps`` with sorted keys, no spaces and raw
UTF-8 produces the same bytes as RFC 8785 (a test checks the two agree).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "safe_text"]

_MAX_INT = 2**53 - 1


def dumps(obj: Any) -> bytes:
    try:
        import rfc8785  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # pragma: no cover - depends on the install
        return fallback_dumps(obj)
    data: bytes = rfc8785.dumps(obj)
    return data


def fallback_dumps(obj: Any) -> bytes:
    _check(obj)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _check(obj: Any) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or not k.isascii():
                raise ValueError(f"seal keys must be ASCII strings, not {k!r}")
            _check(v)
    elif isinstance(obj, list):
        for v in obj:
            _check(v)
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, int):
        if abs(obj) > _MAX_INT:
            raise ValueError(f"integer {obj} is outside the JSON-safe range")
    elif isinstance(obj, str):
        safe_text(obj)
    else:
        raise ValueError(f"cannot put {type(obj).__name__} in a seal")


def safe_text(text: str) -> str:
    """Raise on lone surrogates (undecodable file names); the probe escapes them first."""
    text.encode("utf-8")
    return text
