"""ZIP archives: PyTorch checkpoints, ``.npz``, ``.keras`` and plain zips.

Members are read the way the real loaders read them, not the way ``zipfile`` insists on:
names come from the central directory (as in PyTorch's miniz reader), CRC errors are
tolerated (PyTorch does not check them; numpy runs a pickle before ``zipfile`` reaches the
CRC), and a mismatch between the local and central names is reported, not fatal. Tensor
storages (``<archive>/data/<n>``) are never read: PyTorch reads them as raw bytes.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.spool import decompress_to_spool

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("zip",)

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_STORAGE = re.compile(r"(?:[^/]+/)?data/\d+\Z")
_METHODS = {
    zipfile.ZIP_STORED: None,
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bz2",
    zipfile.ZIP_LZMA: "zip-lzma",
}
_TORCH_TEXT = re.compile(
    r"(?:[^/]+/)?(?:\.data/)?(?:version|byteorder|serialization_id|\.format_version|"
    r"\.storage_alignment)\Z"
)
_CRC_CHECKED = 64 << 20
"""Members up to this size that are read anyway also get their CRC compared."""


def sniff(head: bytes, win: Window) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return None


def open_member(ctx: FileScan, win: Window, info: zipfile.ZipInfo) -> Window:
    """A window on the member's uncompressed bytes, without CRC checks."""
    raw = win.peek_at(info.header_offset, _LOCAL.size)
    if len(raw) < _LOCAL.size:
        raise ScanError("local header truncated", member=info.filename, offset=info.header_offset)
    sig, _v, flags, _m, _t, _d, _crc, _cs, _us, nlen, elen = _LOCAL.unpack(raw)
    if sig != b"PK\x03\x04":
        raise ScanError("no local header where the directory points", member=info.filename)
    if flags & 0x1:
        raise ScanError("member is encrypted and cannot be read", member=info.filename)
    local_name = win.peek_at(info.header_offset + _LOCAL.size, nlen)
    if (
        local_name.decode("utf-8", "replace") != info.filename
        and local_name.decode("cp437", "replace") != info.filename
    ):
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.MEDIUM,
            "local header name differs from the central directory name "
            "(loaders disagree on what this member is)",
            info.filename,
            info.header_offset,
            {"central": info.filename, "local": local_name.decode("utf-8", "replace")[:200]},
        )
    start = info.header_offset + _LOCAL.size + nlen + elen
    if start + info.compress_size > len(win):
        raise ScanError("member data runs past the end of the archive", member=info.filename)
    method = _METHODS.get(info.compress_type, "?")
    if method is None:
        return win.sub(start, info.compress_size)
    if method == "?":
        raise ScanError(
            f"unsupported compression method {info.compress_type}", member=info.filename
        )
    if info.file_size > ctx.limits.max_member_bytes:
        raise LimitExceeded(f"member declares {info.file_size} bytes", member=info.filename)
    src = win.sub(start, info.compress_size)
    spool = decompress_to_spool(src.read, method, ctx.budget)
    return ctx.window(spool)


def _in_memory(ctx: FileScan, part: Window) -> tuple[Window, int]:
    """Read a small member once: its CRC and the scan then share the same bytes."""
    data = part.peek_at(0, len(part))
    return ctx.window(io.BytesIO(data)), zlib.crc32(data)


def classify(names: list[str]) -> str:
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch-zip"
    if "config.json" in names and any(n in ("model.weights.h5", "metadata.json") for n in names):
        return "keras"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    try:
        zf = zipfile.ZipFile(win)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        OSError,
        NotImplementedError,
    ) as exc:
        raise ScanError(f"unreadable zip directory: {exc}", member=member) from None
    infos = zf.infolist()
    if len(infos) > ctx.limits.max_members:
        raise LimitExceeded(f"{len(infos)} members (limit {ctx.limits.max_members})", member=member)
    names = [i.filename for i in infos]
    kind = classify(names)
    if top:
        ctx.kind = kind
    _check_names(ctx, names, member)
    if kind == "torch-zip":
        _torch_layout(ctx, names, member)
    if kind == "keras":
        from trainguard.scan.containers import keras

        keras.scan_config(ctx, zf, win, member, depth)
    prefix = f"{member}!" if member else ""
    for info in infos:
        if not info.filename or info.filename.endswith("/"):
            continue
        name = info.filename
        if kind == "torch-zip" and (_STORAGE.search(name) or _TORCH_TEXT.search(name)):
            continue  # raw tensor bytes / small text records: torch never unpickles them
        try:
            part = open_member(ctx, win, info)
        except ScanError as exc:
            ctx.fail(exc, prefix + name)
            continue
        crc = None
        if info.file_size <= _CRC_CHECKED:
            part, crc = _in_memory(ctx, part)
        if crc is not None and crc != info.CRC:
            ctx.add(
                Rule.CONTAINER_ANOMALY,
                Severity.MEDIUM,
                "CRC mismatch: Python's zipfile refuses this member, PyTorch's reader loads it",
                prefix + name,
                info.header_offset,
                {"crc_directory": f"{info.CRC:08x}"},
            )
        if name.endswith(".pkl") and kind == "torch-zip":
            ctx.members.append(prefix + name)
            try:
                from trainguard.scan.containers import raw_pickle

                raw_pickle.scan(ctx, part, prefix + name, depth + 1, False)
            except ScanError as exc:
                ctx.fail(exc, prefix + name)
            continue
        ctx.scan_window(part, prefix + name, depth + 1)


def _check_names(ctx: FileScan, names: list[str], member: str | None) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            ctx.add(
                Rule.CONTAINER_ANOMALY,
                Severity.MEDIUM,
                f"duplicate member name {n!r}: loaders may read different copies",
                member,
                None,
                {"name": n},
            )
        seen.add(n)
        if (
            n.startswith(("/", "\\"))
            or ".." in n.replace("\\", "/").split("/")
            or "\x00" in n
            or len(n) > 4096
        ):
            ctx.add(
                Rule.PATH_TRAVERSAL,
                Severity.MEDIUM,
                f"hostile member name {n[:120]!r} (absolute, '..', NUL or over-long)",
                member,
                None,
                {"name": n[:4096]},
            )


def _torch_layout(ctx: FileScan, names: list[str], member: str | None) -> None:
    """Which data.pkl torch.load would actually read: the one under the first entry's folder."""
    first = names[0].split("/", 1)[0] if "/" in names[0] else ""
    loaded = f"{first}/data.pkl" if first else "data.pkl"
    pkls = [n for n in names if n.endswith("data.pkl")]
    if len(pkls) > 1 or loaded not in names:
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.MEDIUM,
            f"{len(pkls)} data.pkl records; torch.load reads {loaded!r}: every one is scanned",
            member,
            None,
            {"data_pkl": pkls[:20], "torch_reads": loaded},
        )
