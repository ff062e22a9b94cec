"""RFC 6962 Merkle tree hash over the lines of a seal.

A single root commits to every line and to their order, so one signature covers the
whole seal, and a later proof for one file needs only log(n) hashes. Leaves and nodes
are domain-separated (0x00 / 0x01 prefixes) so a node can never pass for a leaf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["leaf_hash", "root"]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 section 2.1, for the raw leaf data ``leaves``."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _root([leaf_hash(x) for x in leaves])


def _root(hashes: list[bytes]) -> bytes:
    n = len(hashes)
    if n == 1:
        return hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return _node(_root(hashes[:k]), _root(hashes[k:]))
