"""PyTorch's own view of a zip: the central directory and record lookup of its miniz reader.

``torch.load`` and ``torch.jit.load`` read zips with ``caffe2::serialize::PyTorchStreamReader``
over miniz 3, not with Python's ``zipfile``, and the two disagree on crafted files. This module
mirrors miniz, checked against ``torch._C.PyTorchFileReader`` in the parity tests:

* the end-of-central-directory record is the *last* ``PK\\x05\\x06`` with at least 22 bytes
  after it, searched back at most 64 KiB + 22 from the end (``zipfile`` takes the same record
  but shifts every offset by the bytes found before the archive; miniz uses them as written);
* the directory holds exactly the entry count of that record (``zipfile`` parses entries until
  the directory size is used up);
* a record is found by a binary search over names sorted by a heap sort, comparing ASCII
  case-insensitively: ``data.pkl`` finds ``DATA.PKL``, and which of several equal names wins
  depends on the sort, not on order;
* the reader opens only with a ``.data/version`` or ``version`` record (its value, 1 to the
  build's maximum, is not checked here: refusing more files only means reading less);
* torch's archive folder is the part of the *first* entry's name before its first ``/``;
  ``get_all_records`` refuses an archive with any entry outside that folder.

Only the directory is trusted as miniz trusts it; member bytes are read by ``zipped.py``.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainguard.errors import ScanError

if TYPE_CHECKING:
    from trainguard.scan.window import Window

__all__ = ["TorchArchive", "locate", "read_directory"]

_EOCD = struct.Struct("<4s4H2LH")
_CDH = struct.Struct("<4s6H3L5H2L")
_Z64_LOCATOR = struct.Struct("<4sLQL")
_Z64_EOCD = struct.Struct("<4sQ2H2L4Q")
_SEARCH = 0xFFFF + _EOCD.size
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Entry:
    """One central-directory record as miniz keeps it."""

    index: int
    raw_name: bytes
    method: int
    flags: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int

    @property
    def name(self) -> str:
        """The name as torch turns it into a ``std::string`` (bytes; shown as UTF-8)."""
        return self.raw_name.decode("utf-8", "surrogateescape")

    def zipinfo(self) -> zipfile.ZipInfo:
        """A ``ZipInfo`` with miniz's offsets, for ``zipped.open_member``."""
        info = zipfile.ZipInfo(self.name)
        info.header_offset = self.header_offset
        info.compress_size = self.compress_size
        info.file_size = self.file_size
        info.compress_type = self.method
        info.flag_bits = self.flags
        info.CRC = self.crc
        return info


def _find_eocd(win: Window) -> int:
    """The last signature with a whole record after it, in the tail miniz searches."""
    size = len(win)
    start = max(size - 4096, 0)
    while start and size - start < _SEARCH:  # miniz steps back 4093 bytes a chunk
        start = max(start - 4093, 0)
    pos = win.peek_at(start, size - start).rfind(b"PK\x05\x06", 0, size - start - _EOCD.size + 4)
    if pos < 0:
        raise ScanError("miniz: no end of central directory")
    return start + pos


def read_directory(win: Window, max_entries: int) -> list[Entry]:
    """``mz_zip_reader_read_central_dir``: the entries torch's reader sees, or ``ScanError``."""
    if len(win) < _EOCD.size:
        raise ScanError("miniz: too small to be a zip")
    eocd = _find_eocd(win)
    _sig, disk, cd_disk, on_disk, total, cd_size, cd_ofs, _clen = _EOCD.unpack(
        win.peek_at(eocd, _EOCD.size)
    )
    if eocd >= _Z64_LOCATOR.size + _Z64_EOCD.size:
        loc = _Z64_LOCATOR.unpack(win.peek_at(eocd - _Z64_LOCATOR.size, _Z64_LOCATOR.size))
        if loc[0] == b"PK\x06\x07":
            if loc[2] > len(win) - _Z64_EOCD.size:
                raise ScanError("miniz: zip64 locator points past the end")
            z64 = _Z64_EOCD.unpack(win.peek_at(loc[2], _Z64_EOCD.size))
            if z64[0] == b"PK\x06\x06":
                if z64[1] < _Z64_EOCD.size - 12 or loc[3] != 1:
                    raise ScanError("miniz: bad zip64 end record")
                disk, cd_disk, on_disk, total, cd_size, cd_ofs = z64[4:10]
                if total > _U32 or on_disk > _U32 or cd_size > _U32:
                    raise ScanError("miniz: zip64 directory too large")
    if total != on_disk or ((disk | cd_disk) and (disk != 1 or cd_disk != 1)):
        raise ScanError("miniz: multi-disk archive")
    if cd_size < total * _CDH.size or cd_ofs + cd_size > len(win):
        raise ScanError("miniz: central directory out of bounds")
    if total > max_entries:
        raise ScanError(f"miniz: {total} entries")
    cd = win.peek_at(cd_ofs, cd_size)
    entries: list[Entry] = []
    p = 0
    for i in range(total):
        if len(cd) - p < _CDH.size or cd[p : p + 4] != b"PK\x01\x02":
            raise ScanError("miniz: bad central directory header", offset=cd_ofs + p)
        f = _CDH.unpack_from(cd, p)
        flags, method, crc, csize, usize = f[3], f[4], f[7], f[8], f[9]
        nlen, elen, clen, dstart, offset = f[10], f[11], f[12], f[13], f[16]
        total_size = _CDH.size + nlen + elen + clen
        if total_size > len(cd) - p:
            raise ScanError("miniz: central directory header overruns", offset=cd_ofs + p)
        name = cd[p + _CDH.size : p + _CDH.size + nlen]
        extra = cd[p + _CDH.size + nlen : p + _CDH.size + nlen + elen]
        if _U32 in (csize, usize, offset):
            csize, usize, offset = _zip64_extra(extra, csize, usize, offset)
        elif (method == 0 and usize != csize) or (usize and not csize):
            raise ScanError("miniz: stored sizes disagree", offset=cd_ofs + p)
        if dstart == 0xFFFF or (dstart != disk and dstart != 1):
            raise ScanError("miniz: multi-disk entry", offset=cd_ofs + p)
        if csize != _U32 and offset + 30 + csize > len(win):
            raise ScanError("miniz: entry runs past the end", offset=cd_ofs + p)
        if flags & 0x2000:
            raise ScanError("miniz: masked local headers", offset=cd_ofs + p)
        entries.append(Entry(i, name, method, flags, crc, csize, usize, offset))
        p += total_size
    return entries


def _zip64_extra(extra: bytes, csize: int, usize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == 1:
            vals = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == _U32 and vals:
                usize = vals.pop(0)
            if csize == _U32 and vals:
                csize = vals.pop(0)
            if offset == _U32 and vals:
                offset = vals.pop(0)
            break
        pos += 4 + size
    return csize, usize, offset


def _lower(raw: bytes) -> bytes:
    return raw.lower()  # bytes.lower() maps ASCII A-Z only, as MZ_TOLOWER does


def _less(a: bytes, b: bytes) -> bool:
    la, lb = _lower(a), _lower(b)
    n = min(len(la), len(lb))
    for x, y in zip(la[:n], lb[:n], strict=True):
        if x != y:
            return x < y
    return len(a) < len(b)


def sorted_indices(entries: list[Entry]) -> list[int]:
    """``mz_zip_reader_sort_central_dir_offsets_by_filename``: miniz's heap sort, step by step."""
    idx = list(range(len(entries)))
    size = len(idx)
    if size <= 1:
        return idx
    keys = [_lower(e.raw_name) for e in entries]
    if len(set(keys)) == size:
        # no two names equal without case: every sort gives miniz's order (the heap sort
        # only decides between equal keys), and ``_less`` is bytes ``<`` on lowered names
        return sorted(idx, key=keys.__getitem__)

    def less(i: int, j: int) -> bool:
        return keys[idx[i]] < keys[idx[j]]

    def sift(root: int, end: int) -> None:
        while (child := 2 * root + 1) < end:
            if child + 1 < end and less(child, child + 1):
                child += 1
            if not less(root, child):
                return
            idx[root], idx[child] = idx[child], idx[root]
            root = child

    for start in range((size - 2) >> 1, -1, -1):
        sift(start, size)
    for end in range(size - 1, 0, -1):
        idx[end], idx[0] = idx[0], idx[end]
        sift(0, end)
    return idx


def locate(entries: list[Entry], order: list[int], name: str) -> Entry | None:
    """``mz_zip_locate_file_binary_search``: the entry torch's ``getRecord`` reads."""
    want = _lower(name.encode("utf-8", "surrogateescape"))
    lo, hi = 0, len(order) - 1
    while lo <= hi:
        mid = lo + ((hi - lo) >> 1)
        have = _lower(entries[order[mid]].raw_name)
        n = min(len(have), len(want))
        diff = next((a - b for a, b in zip(have[:n], want[:n], strict=True) if a != b), None)
        comp = diff if diff is not None else len(have) - len(want)
        if comp == 0:
            return entries[order[mid]]
        if comp < 0:
            lo = mid + 1
        else:
            hi = mid - 1
    return None


class TorchArchive:
    """What ``PyTorchStreamReader`` makes of a directory: its folder, records and lookups."""

    def __init__(self, entries: list[Entry]) -> None:
        if not entries:
            raise ScanError("torch: archive does not contain any files")
        self.entries = entries
        self.order = sorted_indices(entries)
        keys = {_lower(e.raw_name): e for e in entries}
        self._unique = keys if len(keys) == len(entries) else None
        """Lowered name -> entry when no two names collide: then miniz's binary search can
        only land on that entry, and a dict finds it at C speed."""
        first = entries[0].raw_name
        if b"/" not in first:
            raise ScanError(f"torch: first record {entries[0].name!r} is not in a folder")
        self.prefix = first.split(b"/", 1)[0].decode("utf-8", "surrogateescape") + "/"
        outside = [e.name for e in entries if not e.name.startswith(self.prefix)]
        self.records_error = outside[0] if outside else None
        """A record outside the folder: ``get_all_records`` (so ``torch.load``) refuses."""
        if self.record(".data/version") is None and self.record("version") is None:
            raise ScanError("torch: no version record (PyTorchStreamReader refuses to open)")

    def record(self, name: str) -> Entry | None:
        """``get_record(name)``: the folder prefix, then miniz's case-insensitive lookup."""
        if self._unique is not None:
            return self._unique.get(_lower((self.prefix + name).encode("utf-8", "surrogateescape")))
        return locate(self.entries, self.order, self.prefix + name)

    def records(self) -> list[str]:
        return [e.name[len(self.prefix) :] for e in self.entries]

    @property
    def torchscript(self) -> bool:
        """``torch.serialization._is_torchscript_zip``: exactly ``constants.pkl`` in records."""
        return self.records_error is None and "constants.pkl" in self.records()
