"""Native calls through ``ctypes`` that can send a signal, or anything at all: which audit
events name one, for the recording (``trainguard.load._auditrecord``).

Why it exists: a process may send *itself* a signal with ``rt_sigqueueinfo`` and write
any sender it likes into the ``siginfo`` (Linux refuses a forged ``SI_USER`` or a kernel
code only when the target is another process). ``os.kill`` raises an audit event; the
same call through ``ctypes`` raises none. In CPython 3.11 ``ctypes`` raises:

* ``ctypes.dlsym`` (library, name) when a function is looked up by name on a loaded
  library (``libc.syscall``, ``ctypes.pythonapi.syscall``; once per library object and
  name: the attribute is cached), and ``ctypes.dlsym/handle`` (handle, name) for
  ``_ctypes.dlsym``;
* ``ctypes.call_function`` (pointer, arguments) only from the private helper
  ``_ctypes.call_function``: an ordinary foreign call, or a ``CFUNCTYPE`` prototype made
  from a bare address, raises nothing (measured: no event on any call of a loaded
  function, so recording it costs honest jobs nothing).

So the lookup by name is what can be seen. ``symbol()`` says which of ``DANGEROUS``
(signal senders, the raw ``syscall`` and the native resolvers ``dlsym``/``dlopen`` that
fetch any other symbol unseen) an event names; the pointer of ``ctypes.call_function`` is
compared with the addresses of those symbols in the global namespace (``dlsym`` on the
handle of the running program), resolved the first time one is asked about.

*What it trusts:* that the job reaches native code through ``ctypes`` lookups by name.
Not seen: an address computed from another symbol's (a known libc build's offsets), a
function pointer looked up before the recording started (kept in a cache), native code
reached through a native extension (``cffi``, a compiled module): those send signals
without any audit event. ``trainguard.guard.signals_forgery`` says how the signal
watcher accounts for that.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DANGEROUS", "FORGING", "NATIVE_EVENTS", "symbol"]

NATIVE_EVENTS = frozenset({"ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function"})
"""The audit events of a native lookup or call by the job."""

_SENDERS = frozenset(
    {"kill", "killpg", "tgkill", "tkill", "raise", "gsignal", "pthread_kill", "sigqueue",
     "pthread_sigqueue", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal",
     "__libc_pthread_kill", "__pthread_kill"}
)  # fmt: skip
FORGING = frozenset(
    {"syscall", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "dlsym",
     "dlvsym", "dlopen", "dlmopen"}
)  # fmt: skip
"""Symbols through which a process can send itself a ``siginfo`` of its own making (the
raw system call, the three calls that take a ``siginfo``) or reach such a symbol without
a lookup this module sees (the dynamic loader's own resolvers)."""
DANGEROUS = _SENDERS | FORGING
"""What a training job has no business looking up through ``ctypes``."""

_resolved: dict[int, str] = {}  # address -> symbol (filled in place, once)
_tried: list[bool] = []


def symbol(event: str, args: tuple[Any, ...]) -> str | None:
    """The ``DANGEROUS`` symbol a native event looks up or calls, if any."""
    if event in ("ctypes.dlsym", "ctypes.dlsym/handle"):
        name = args[1] if len(args) > 1 else None
        if type(name) is str and name in DANGEROUS:  # an ordinal (int) names nothing here
            return name
        return None
    if event == "ctypes.call_function" and args and type(args[0]) is int:
        if not _tried:
            _resolve()
        return _resolved.get(args[0])
    return None


def _resolve() -> None:
    """The addresses of ``DANGEROUS`` in the running program's global namespace (its
    own ``dlsym`` events happen inside the recording, which ignores them)."""
    try:
        import ctypes
    except ImportError:
        return
    lookup = getattr(sys.modules.get("_ctypes"), "dlsym", None)
    handle = getattr(getattr(ctypes, "pythonapi", None), "_handle", None)
    if lookup is None or not isinstance(handle, int):
        return
    _tried.append(True)
    for name in sorted(DANGEROUS):
        try:
            address = lookup(handle, name)
        except Exception:  # noqa: BLE001 - a symbol this libc lacks is fine
            continue
        if isinstance(address, int):
            _resolved[address] = name
