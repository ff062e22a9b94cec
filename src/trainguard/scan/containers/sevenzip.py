"""7z archives: no model loader opens them directly, but they carry checkpoints around
(the 2025 "nullifAI" models were 7z-compressed torch files that scanners skipped).
Members are scanned when ``py7zr`` is installed (the ``scan`` extra); without it the file is
an ``error``, never ``safe``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded, ScanError
from trainguard.scan.optional import missing_extra

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("7z",)
MAGIC = b"7z\xbc\xaf\x27\x1c"


def sniff(head: bytes, win: Window) -> str | None:
    return "7z" if head.startswith(MAGIC) else None


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    try:
        import py7zr
    except ImportError:
        missing_extra(ctx, "py7zr", member, "7z archive")
        return
    win.seek(0)
    try:
        with py7zr.SevenZipFile(io.BufferedReader(win), mode="r") as archive:
            infos = [i for i in archive.list() if not i.is_directory]
            total = sum(i.uncompressed or 0 for i in infos)
            if len(infos) > ctx.limits.max_members:
                raise LimitExceeded(f"{len(infos)} members in 7z archive", member=member)
            if total > ctx.limits.max_member_bytes:
                raise LimitExceeded(f"7z archive declares {total} bytes", member=member)
            ctx.budget.add_decompressed(total)
            with tempfile.TemporaryDirectory(prefix="trainguard-7z-") as tmp:
                archive.extractall(path=tmp)
                root = Path(tmp).resolve()
                for info in infos:
                    target = (root / info.filename).resolve()
                    label = f"{member}!{info.filename}" if member else info.filename
                    if not target.is_relative_to(root) or not target.is_file():
                        continue
                    if target.stat().st_size > ctx.limits.max_member_bytes:
                        ctx.fail(LimitExceeded("7z member too large"), label)
                        continue
                    with open(target, "rb") as fh:
                        ctx.scan_window(ctx.window(io.BytesIO(fh.read())), label, depth + 1)
    except (py7zr.exceptions.Bad7zFile, py7zr.exceptions.ArchiveError, EOFError, KeyError) as exc:
        raise ScanError(f"unreadable 7z archive: {exc}", member=member) from None
