"""An append-only RFC 6962 Merkle tree kept as its right frontier.

``trainguard.env.merkle`` computes a root from all leaves at once, which is right for a
seal written in one go. A ledger grows one record at a time and must know its root after
every append (each row stores it) and at every signed head (verify compares them), so it
keeps only the roots of the perfect subtrees that make up the tree (at most log2 n
hashes): an append costs O(log n), and one pass over the leaves gives the root of every
prefix, which is how each head is checked for consistency with everything before it.
The roots are the same as ``merkle.root`` gives (a test checks every size to 130).
"""

from __future__ import annotations

import hashlib

from trainguard.env import merkle

__all__ = ["EMPTY_ROOT", "Frontier", "leaf_hash"]

EMPTY_ROOT = hashlib.sha256(b"").digest()
leaf_hash = merkle.leaf_hash


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    """The perfect-subtree roots of a tree of ``size`` leaves, largest first."""

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, stack: list[bytes] | None = None) -> None:
        self.size = size
        self._stack = list(stack or [])
        if len(self._stack) != size.bit_count():
            raise ValueError(f"a frontier of {size} leaves has {size.bit_count()} hashes")

    def push(self, leaf: bytes) -> None:
        """Add one leaf hash (not leaf data)."""
        h = leaf
        n = self.size
        while n & 1:  # merge equal-sized subtrees, as binary addition carries
            h = _node(self._stack.pop(), h)
            n >>= 1
        self._stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        """MTH of RFC 6962: the subtrees folded right to left."""
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            h = _node(left, h)
        return h

    def to_bytes(self) -> bytes:
        return b"".join(self._stack)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Frontier:
        if len(data) != 32 * size.bit_count():
            raise ValueError("the stored frontier does not match the tree size")
        return cls(size, [data[i : i + 32] for i in range(0, len(data), 32)])
