"""Bounded decompression into a seekable spool, with bomb detection."""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Callable
from typing import IO, Any, Protocol

from trainguard.errors import LimitExceeded, ScanError
from trainguard.scan.limits import Budget
from trainguard.scan.optional import missing_extra_error

__all__ = ["Decompressor", "decompress_to_spool", "new_decompressor"]

CHUNK = 1 << 20
SPOOL_IN_MEMORY = 64 << 20


class Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _Zlib:
    """zlib/gzip/raw deflate behind the same ``decompress(data, max_length)`` call."""

    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        data = self._d.unconsumed_tail + data
        return self._d.decompress(data, max(max_length, 0))

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self._d.eof


class _ZipLzma:
    """LZMA as stored in zip members: version (2 bytes), properties size (2), properties,
    then a raw LZMA1 stream (what ``zipfile`` and so ``numpy.load`` read)."""

    def __init__(self) -> None:
        self._head = b""
        self._d: Any = None

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        import lzma

        if self._d is None:
            self._head += data
            if len(self._head) < 4:
                return b""
            size = int.from_bytes(self._head[2:4], "little")
            if len(self._head) < 4 + size:
                return b""
            props = self._head[4 : 4 + size]
            filt = lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)  # type: ignore[attr-defined]
            self._d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[filt])
            data, self._head = self._head[4 + size :], b""
        out: bytes = self._d.decompress(data, max_length)
        return out

    @property
    def needs_input(self) -> bool:
        return self._d is None or bool(self._d.needs_input)

    @property
    def eof(self) -> bool:
        return self._d is not None and bool(self._d.eof)


def new_decompressor(kind: str) -> Decompressor:
    if kind == "deflate":
        return _Zlib(-15)
    if kind == "zlib":
        return _Zlib(15)
    if kind == "gzip":
        return _Zlib(31)
    if kind == "bz2":
        import bz2

        return bz2.BZ2Decompressor()
    if kind in ("xz", "lzma"):
        import lzma

        return lzma.LZMADecompressor()
    if kind == "zip-lzma":
        return _ZipLzma()
    if kind == "lz4":
        try:
            import lz4.frame
        except ImportError:
            raise missing_extra_error("lz4", "lz4-compressed data") from None
        return lz4.frame.LZ4FrameDecompressor()  # type: ignore[no-any-return]
    raise ScanError(f"unsupported compression {kind}")


MULTISTREAM = frozenset({"gzip", "bz2", "xz", "lzma", "lz4", "zlib"})
"""Formats whose file readers go on into a next stream after the first one ends."""


def decompress_to_spool(
    read: Callable[[int], bytes],
    kind: str,
    budget: Budget,
    *,
    expected: int | None = None,
    limit: int | None = None,
) -> IO[bytes]:
    """Stream ``read`` through a decompressor into a temporary file (memory up to 64 MiB).

    Output is produced in bounded pieces (``max_length``), so a bomb is stopped at the limit
    after writing at most one chunk past it, never fully inflated in memory. Concatenated
    streams are followed as ``gzip.open``/``bz2.open``/``lzma.open``/lz4 readers follow them;
    bytes after the last stream that do not start a new one end the data, as those readers
    fail only after returning everything before them.
    """
    dec = new_decompressor(kind)
    limit = budget.limits.max_member_bytes if limit is None else limit
    lim = budget.limits
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned
    produced = consumed = 0
    pending = b""
    fresh = False  # a follow-on stream that has produced nothing yet
    try:
        while True:
            if getattr(dec, "eof", False):
                left = bytes(getattr(dec, "unused_data", None) or b"")
                pending = left or read(CHUNK)
                consumed += 0 if left else len(pending)
                if kind not in MULTISTREAM or not pending:
                    break
                dec, fresh = new_decompressor(kind), True
                continue
            data, pending = pending, b""
            if not data and getattr(dec, "needs_input", True):
                data = read(CHUNK)
                if not data:
                    break
                consumed += len(data)
            try:
                out = dec.decompress(data, CHUNK)
            except Exception as exc:  # noqa: BLE001 - zlib/bz2/lzma/lz4 each raise their own
                if fresh:
                    break  # trailing bytes that are not another stream
                raise ScanError(f"corrupt {kind} data: {exc}", offset=consumed) from None
            if out:
                fresh = False
            spool.write(out)
            produced += len(out)
            budget.add_decompressed(len(out))
            if produced > limit:
                raise LimitExceeded(f"{kind} data inflates past {limit} bytes (bomb?)")
            if produced > lim.ratio_floor and produced > lim.max_ratio * max(consumed, 1):
                raise LimitExceeded(
                    f"{kind} data inflates more than {lim.max_ratio}:1 (decompression bomb?)"
                )
            budget.check_time()
    except BaseException:
        spool.close()
        raise
    if expected is not None and produced != expected:
        spool.close()
        raise ScanError(f"{kind} data inflates to {produced} bytes, header says {expected}")
    spool.seek(0)
    return spool
