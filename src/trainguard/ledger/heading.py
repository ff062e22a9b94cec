"""Making a head inside the append transaction: which key signs, and what it binds.

Every head carries the digest of the ledger's header (``meta`` line) so the header is
covered by the signature; a head made by a run's supervisor also names the run and its
``run.origin`` record (``run`` line), so the run's identity is bound into every head
it signs, not only into the records the tree happens to cover.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from trainguard import keys
from trainguard.ledger import note
from trainguard.ledger.ratchet import Ratchet

__all__ = ["HeadMaker"]


class HeadMaker:
    """Signs heads with a fixed key, a run's key or the ratchet; with none of them it
    still makes unsigned heads (for a witness: a root held elsewhere pins history)."""

    def __init__(self, key: keys.PrivateKey | None, ratchet: Ratchet | None) -> None:
        self.key = key
        self.ratchet = ratchet
        self.binding: note.RunBinding | None = None

    @property
    def signing(self) -> bool:
        return self.key is not None or self.ratchet is not None

    def make(
        self, c: Any, held: contextlib.ExitStack, origin: str, size: int, root: bytes
    ) -> tuple[note.Checkpoint, Callable[[], object] | None]:
        """Make and store a head inside the open transaction ``c``. With the ratchet, its
        lock enters ``held`` (kept until the seed has advanced after the commit), and the
        advance is returned for the caller to run once the commit succeeded."""
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        extra = [self.binding.line()] if self.binding is not None else []
        extra.append(note.meta_line(note.meta_digest(meta)))
        advance: Callable[[], object] | None = None
        if self.ratchet is None:
            body = note.body_text(origin, size, root, extra=extra)
            head = note.sign(body, origin, self.key)
        else:
            held.enter_context(self.ratchet.locked())
            row = c.execute("SELECT note FROM heads ORDER BY id DESC LIMIT 1").fetchone()
            last = note.parse(row[0]).epoch if row else None
            head, advance = self.ratchet.sign(origin, size, root, last, extra=extra)
        c.execute("INSERT INTO heads (size, note) VALUES (?, ?)", (size, head.text))
        return head, advance
