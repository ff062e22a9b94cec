"""ZIP archives: PyTorch checkpoints, TorchScript archives, ``.npz``, ``.keras`` and plain zips.

Two real readers read zips, and they can disagree on one file: ``torch.load``/``torch.jit.load``
use miniz (mirrored in ``miniz.py``: last end record, offsets as written, case-insensitive
lookup, records under the first entry's folder), ``numpy.load`` and Keras use ``zipfile``
(last end record, offsets shifted by any bytes before the archive, entries until the directory
size is used). Both directories are read and every member either one lists is judged once;
when they list different bytes, that is ``scan.differential``.

What is trusted about the bytes: the central directory's offset and compressed size of each
member (as both readers do) and the local header's name/extra lengths (as both readers do).
CRC errors are tolerated (torch does not check them; numpy runs a pickle before ``zipfile``
reaches the CRC). Tensor storages (``<archive>/data/<n>``) and torch's small text records are
never judged: torch reads them as raw bytes.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.containers import miniz, torchscript
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


def classify(names: list[str], torch: miniz.TorchArchive | None = None) -> str:
    if torch is not None and torch.torchscript:
        return "torchscript"
    if torch is not None and torch.record("data.pkl") is not None:
        return "torch-zip"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch-zip"
    if "config.json" in names and any(n in ("model.weights.h5", "metadata.json") for n in names):
        return "keras"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


class _Views:
    """The two directories of one zip: ``zipfile``'s and miniz's (torch's)."""

    def __init__(self, ctx: FileScan, win: Window, member: str | None) -> None:
        self.zf: zipfile.ZipFile | None = None
        self.zf_error: str | None = None
        self.mz: list[miniz.Entry] | None = None
        self.mz_error: str | None = None
        self.torch: miniz.TorchArchive | None = None
        try:
            self.zf = zipfile.ZipFile(win)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
            self.zf_error = str(exc)
        except NotImplementedError as exc:
            self.zf_error = str(exc)
        try:
            self.mz = miniz.read_directory(win, ctx.limits.max_members)
        except ScanError as exc:
            self.mz_error = exc.message
        if self.mz is not None:
            try:
                self.torch = miniz.TorchArchive(self.mz)
            except ScanError:
                self.torch = None
        if self.zf is None and self.mz is None:
            raise ScanError(f"unreadable zip directory: {self.zf_error}", member=member)
        infos = self.zf.infolist() if self.zf is not None else []
        if max(len(infos), len(self.mz or ())) > ctx.limits.max_members:
            n = max(len(infos), len(self.mz or ()))
            raise LimitExceeded(f"{n} members (limit {ctx.limits.max_members})", member=member)
        self.infos = infos

    def members(self) -> list[tuple[zipfile.ZipInfo, bool, bool]]:
        """Every distinct member (by local header offset and size): info, in zipfile, in torch."""
        seen: dict[tuple[int, int], list[Any]] = {}
        for info in self.infos:
            seen.setdefault((info.header_offset, info.compress_size), [info, True, False])
        for e in self.mz or ():
            key = (e.header_offset, e.compress_size)
            if key in seen:
                seen[key][2] = True
            else:
                seen[key] = [e.zipinfo(), False, True]
        return [(v[0], v[1], v[2]) for v in seen.values()]

    def ranges(self) -> list[tuple[int, int]]:
        """Byte ranges of the members (local header to data end), for the polyglot check."""
        return [
            (i.header_offset, i.header_offset + 30 + i.compress_size)
            for i, _z, _t in self.members()
        ]


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    views = _views(ctx, win, member)
    names = [i.filename for i in views.infos] or [e.name for e in views.mz or ()]
    kind = classify(names, views.torch)
    if top:
        ctx.kind = kind
    _check_names(ctx, names, member)
    _compare(ctx, win, views, member, depth)
    if views.torch is not None and kind in ("torch-zip", "torchscript"):
        _torch_layout(ctx, views.torch, member)
    if kind == "keras" and views.zf is not None:
        from trainguard.scan.containers import keras

        keras.scan_config(ctx, views.zf, win, member, depth)
    prefix = f"{member}!" if member else ""
    torch_reads = _torch_pickles(views.torch)
    ts = views.torch is not None and views.torch.torchscript
    for info, _in_zf, in_torch in views.members():
        name = info.filename
        if not name or name.endswith("/"):
            continue
        rel = name[len(views.torch.prefix) :] if views.torch and in_torch else name
        if kind in ("torch-zip", "torchscript") and (_STORAGE.match(rel) or _TORCH_TEXT.match(rel)):
            continue  # raw tensor bytes / small text records: torch never unpickles them
        label = prefix + name
        try:
            part = open_member(ctx, win, info)
        except ScanError as exc:
            ctx.fail(exc, label)
            continue
        crc = None
        if info.file_size <= _CRC_CHECKED:
            part, crc = _in_memory(ctx, part)
        if crc is not None and crc != info.CRC:
            ctx.add(
                Rule.CONTAINER_ANOMALY,
                Severity.MEDIUM,
                "CRC mismatch: Python's zipfile refuses this member, PyTorch's reader loads it",
                label,
                info.header_offset,
                {"crc_directory": f"{info.CRC:08x}"},
            )
        ts_member = ts and in_torch
        if ts_member and torchscript.is_code(rel):
            torchscript.judge_code(ctx, part, label)
            continue
        lower = name.lower()
        if kind in ("torch-zip", "torchscript") and (
            (in_torch and info.header_offset in torch_reads)
            or lower.endswith((".pkl", "debug_pkl"))
        ):
            reads = in_torch and info.header_offset in torch_reads
            view = "torch" if reads or lower.endswith("data.pkl") else "pickle"
            _scan_pickle_member(ctx, part, label, depth + 1, ts_member, view)
            continue
        ctx.scan_window(part, label, depth + 1)


def _torch_pickles(torch: miniz.TorchArchive | None) -> set[int]:
    """Header offsets of the records torch unpickles by name (found miniz's way)."""
    if torch is None:
        return set()
    found = (torch.record(n) for n in ("data.pkl", "constants.pkl"))
    return {e.header_offset for e in found if e is not None}


def _scan_pickle_member(
    ctx: FileScan, part: Window, label: str, depth: int, ts: bool, view: str = "pickle"
) -> None:
    from trainguard.scan.containers import raw_pickle

    ctx.members.append(label)
    try:
        if ts:
            with torchscript.policy(ctx):
                raw_pickle.scan(ctx, part, label, depth, False, view=view)
        else:
            raw_pickle.scan(ctx, part, label, depth, False, view=view)
    except ScanError as exc:
        ctx.fail(exc, label)


def _compare(ctx: FileScan, win: Window, views: _Views, member: str | None, depth: int) -> None:
    """``scan.differential`` when torch's reader and ``zipfile`` list different members."""
    zf = {(i.header_offset, i.compress_size): i.filename for i in views.infos}
    mz = {(e.header_offset, e.compress_size): e.name for e in views.mz or ()}
    if views.zf is not None and views.mz is not None:
        if zf.keys() == mz.keys():
            return
        only_zf = sorted(zf[k] for k in zf.keys() - mz.keys())
        only_mz = sorted(mz[k] for k in mz.keys() - zf.keys())
        ctx.add(
            Rule.DIFFERENTIAL,
            Severity.HIGH,
            "torch's zip reader and Python's zipfile read different members from this file "
            f"({len(only_mz)} only torch, {len(only_zf)} only zipfile): both sets were judged",
            member,
            None,
            {"only_torch": only_mz[:20], "only_zipfile": only_zf[:20]},
        )
        return
    if win.peek_at(0, 4) != b"PK\x03\x04" and views.zf is not None:
        return  # torch.load only reads zips that start with a local header
    if views.mz is None and _back_to_back(ctx, win, member, depth):
        return
    reader, other, why = (
        ("zipfile", "torch", views.mz_error)
        if views.zf is not None
        else ("torch", "zipfile", views.zf_error)
    )
    n = len(zf) if views.zf is not None else len(mz)
    ctx.add(
        Rule.DIFFERENTIAL,
        Severity.MEDIUM,
        f"{other}'s zip reader refuses this file ({why}); {reader} reads {n} members: judged",
        member,
        None,
        {"reader": reader, "refused_by": other, "reason": str(why)[:200]},
    )


def _back_to_back(ctx: FileScan, win: Window, member: str | None, depth: int) -> bool:
    """Whole archives one after another (a distributed checkpoint's ``.distcp`` layout: its
    reader ``torch.load``s each byte range). Every archive is judged on its own."""
    segments: list[tuple[int, int]] = []
    pos = 0
    while pos < len(win):
        ctx.budget.check_time()
        end = _archive_end(win, pos)
        if end is None:
            return False
        segments.append((pos, end))
        pos = end
        if pos < len(win) and win.peek_at(pos, 4) != b"PK\x03\x04":
            return False
    if len(segments) < 2:
        return False
    label = f"{member}!" if member else ""
    for start, end in segments[:-1]:  # zipfile's own view already holds the last one
        ctx.members.append(f"{label}@{start}")
        scan(ctx, win.sub(start, end - start), f"{label}@{start}", depth + 1, False)
    msg = f"{len(segments)} zip archives back to back (torch.load refuses; zipfile reads the "
    msg += "last; a distributed checkpoint reads each by offset): every one was judged"
    # LOW: torch.load reads nothing, and every archive any reader takes was judged
    ctx.add(Rule.DIFFERENTIAL, Severity.LOW, msg, member, 0, {"archives": len(segments)})
    return True


def _archive_end(win: Window, start: int) -> int | None:
    """Where the archive starting at ``start`` ends: after the first end record from there
    whose directory offset (relative to ``start``) points at a directory header."""
    pos = start
    while True:
        chunk = win.peek_at(pos, 1 << 20)
        hit = chunk.find(b"PK\x05\x06")
        if hit < 0:
            if len(chunk) < 4:
                return None
            pos += len(chunk) - 3
            continue
        at = pos + hit
        rec = win.peek_at(at, 22)
        if len(rec) == 22:
            cd_ofs, clen = struct.unpack_from("<LH", rec, 16)
            if win.peek_at(start + cd_ofs, 4) in (b"PK\x01\x02", b"PK\x05\x06"):
                return at + 22 + int(clen)
        pos = at + 1


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


def _torch_layout(ctx: FileScan, torch: miniz.TorchArchive, member: str | None) -> None:
    """Which data.pkl torch.load reads: ``<folder>/data.pkl`` by miniz's case-insensitive
    binary search, where the folder is the first entry's. Other candidates are judged too."""
    loaded = torch.record("data.pkl")
    exact = torch.prefix + "data.pkl"
    pkls = [e.name for e in torch.entries if e.name.lower().endswith("data.pkl")]
    reads = loaded.name if loaded is not None else None
    if len(pkls) > 1 or reads != exact:
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.MEDIUM,
            f"{len(pkls)} data.pkl records; torch.load reads {reads!r}: every one is scanned",
            member,
            loaded.header_offset if loaded is not None else None,
            {"data_pkl": pkls[:20], "torch_reads": reads},
        )
    if torch.records_error is not None:
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.LOW,
            f"record {torch.records_error[:120]!r} is outside the archive folder "
            f"{torch.prefix!r}: torch.load refuses the file",
            member,
            None,
            {"outside": torch.records_error[:500]},
        )


def _views(ctx: FileScan, win: Window, member: str | None) -> _Views:
    """Both readers' directories of ``win``, parsed once per window (the polyglot check
    asks again for the same bytes)."""
    key = ("zip-views", id(win))
    found = ctx.cache.get(key)
    if found is None:
        found = ctx.cache[key] = (_Views(ctx, win, member), win)  # keep win: id stays unique
    views: _Views = found[0]
    return views


def member_ranges(ctx: FileScan, win: Window) -> list[tuple[int, int]]:
    """Where the members of a zip at the start of ``win`` lie (empty if neither reader opens it)."""
    try:
        return _views(ctx, win, None).ranges()
    except ScanError:
        return []
