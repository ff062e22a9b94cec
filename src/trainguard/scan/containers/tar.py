"""TAR archives, including PyTorch's legacy tar checkpoints (``sys_info``, ``pickle``,
``storages``, ``tensors``).

Members are listed by ``tarfile`` itself (the reader legacy ``torch.load`` uses), so names,
sizes and data offsets are what the loader trusts. A tar header is 512 bytes of text fields,
so byte 0 can also begin a pickle that ``pickle.load``/``joblib.load``/``numpy.load`` run:
that view is judged by ``polyglot.py`` after this reader.

Legacy ``torch.load`` unpickles every pickle in ``storages`` and ``tensors`` (counts, then one
small pickle per record between raw bytes), so those members are walked record by record
exactly as the loader does, not only their first pickle.
"""

from __future__ import annotations

import struct
import tarfile
from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.standins import global_key

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("tar",)

_ELEMENT = {
    "Double": 8, "Float": 4, "Half": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
    "Byte": 1, "Bool": 1, "BFloat16": 2, "ComplexDouble": 16, "ComplexFloat": 8,
    "QUInt8": 1, "QInt8": 1, "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1,
}  # fmt: skip
_MAX_RECORDS = 1_000_000


def sniff(head: bytes, win: Window) -> str | None:
    if len(head) < 512:
        return None
    if head[257:262] == b"ustar":
        return "tar"
    try:  # v7 tars have no magic; a valid header checksum is what tarfile checks
        tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError):
        return None
    return "tar"


def _headers(ctx: FileScan, win: Window, member: str | None) -> list[tarfile.TarInfo]:
    """The members ``tarfile`` lists (headers only), as ``torch.load``'s legacy path reads."""
    try:
        win.seek(0)
        tf = tarfile.open(fileobj=win, mode="r:")  # noqa: SIM115 - only headers are read
        infos = []
        for info in tf:
            infos.append(info)
            if len(infos) > ctx.limits.max_members:
                raise LimitExceeded(
                    f"more than {ctx.limits.max_members} tar members", member=member
                )
    except tarfile.TarError as exc:
        raise ScanError(f"unreadable tar: {exc}", member=member) from None
    return infos


def member_ranges(ctx: FileScan, win: Window) -> list[tuple[int, int]]:
    """Data ranges of the regular members (each judged as a file of its own)."""
    try:
        infos = _headers(ctx, win, None)
    except ScanError:
        return []
    return [(i.offset_data, i.offset_data + i.size) for i in infos if i.isfile()]


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    infos = _headers(ctx, win, member)
    names = {i.name for i in infos}
    legacy = {"pickle", "storages", "tensors"} <= names
    if top:
        ctx.kind = "torch-legacy-tar" if legacy else "tar"
    prefix = f"{member}!" if member else ""
    for info in infos:
        name = prefix + info.name
        if info.issym() or info.islnk():
            ctx.add(
                Rule.PATH_TRAVERSAL,
                Severity.MEDIUM,
                f"link member {info.name!r} -> {info.linkname!r}: extraction follows it",
                name,
                info.offset,
                {"target": info.linkname[:1000]},
            )
            continue
        if info.name.startswith("/") or ".." in info.name.split("/"):
            ctx.add(
                Rule.PATH_TRAVERSAL,
                Severity.MEDIUM,
                f"member name {info.name[:120]!r} escapes the extraction folder",
                name,
                info.offset,
            )
        if not info.isfile():
            continue
        part = win.sub(info.offset_data, info.size)
        if len(part) < info.size:
            ctx.fail(ScanError("member truncated", offset=info.offset_data), name)
            continue
        try:
            if legacy and info.name in ("storages", "tensors"):
                _legacy_records(ctx, part, name, depth + 1, info.name)
            elif legacy and info.name in ("pickle", "sys_info"):
                ctx.members.append(name)
                view = "torch-tar" if info.name == "pickle" else "pickle"
                ctx.scan_pickle(part, name, depth + 1, view)
            else:
                ctx.scan_window(part, name, depth + 1)
        except ScanError as exc:
            ctx.fail(exc, name)


def _legacy_records(ctx: FileScan, win: Window, name: str, depth: int, kind: str) -> None:
    ctx.members.append(name)
    count = ctx.scan_pickle(win, name, depth).value
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ScanError(f"{kind}: record count is not an integer", offset=0)
    if count > _MAX_RECORDS:
        raise LimitExceeded(f"{kind}: {count} records", offset=0)
    for _ in range(count):
        args = ctx.scan_pickle(win, name, depth).value
        if kind == "storages":
            size = _element_size(args)
            raw = win.read(8)
            if len(raw) != 8:
                raise ScanError("storage size truncated", offset=win.tell())
            (numel,) = struct.unpack("<q", raw)
            if numel < 0 or numel * size > win.remaining:
                raise ScanError(
                    f"storage of {numel} elements runs past the member", offset=win.tell()
                )
            win.seek(numel * size, 1)
        else:
            raw = win.read(8)
            if len(raw) != 8:
                raise ScanError("tensor header truncated", offset=win.tell())
            (ndim,) = struct.unpack("<i", raw[:4])
            if ndim < 0 or ndim > 64:
                raise ScanError(f"tensor with {ndim} dimensions", offset=win.tell())
            win.seek(16 * ndim + 8, 1)
    if kind == "storages":
        ctx.scan_pickle(win, name, depth)  # storage views


def _element_size(args: object) -> int:
    key = global_key(args[2]) if isinstance(args, tuple) and len(args) == 3 else None
    if key:
        cls = key.rpartition(".")[2]
        size = _ELEMENT.get(cls.removesuffix("Storage"))
        if size:
            return size
    raise ScanError("storage record does not name a known storage type")
