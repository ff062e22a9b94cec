"""Process exit codes of the ``trainguard`` command, named in one place (see README)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
"""Everything checked is clean/intact."""
FINDINGS: Final = 1
"""Something unsafe, suspicious, tampered or unverified was found."""
ERROR: Final = 2
"""An input could not be checked (unreadable, malformed, over a limit), or bad usage."""
