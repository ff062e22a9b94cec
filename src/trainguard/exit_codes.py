"""Process exit codes of the ``trainguard`` command, named in one place (see README)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
"""Everything checked is clean/intact."""
FINDINGS: Final = 1
"""Something unsafe, suspicious, tampered or unverified was found."""
ERROR: Final = 2
"""An input could not be checked (unreadable, malformed, over a limit), or bad usage."""
GUARD_STOPPED: Final = 86
"""``trainguard run``: trainguard stopped the job (an alert at ``--stop-on`` or worse) or
refused to start it. ``trainguard drill``: an attack went undetected or the clean run
alarmed is ``FINDINGS``."""
TIMED_OUT: Final = 124
"""``trainguard run --timeout`` ran out (as ``timeout(1)``)."""
