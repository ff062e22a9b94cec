"""NumPy dtype strings, parsed without numpy: item size, and whether objects (pickles) hide
inside. Used for ``.npy`` headers and joblib array wrappers, where guessing wrong means
either skipping a pickle or reading array bytes as opcodes. Anything not understood is
reported as not understood, never as "no objects".
"""

from __future__ import annotations

import re

__all__ = ["DtypeInfo", "parse_dtype"]

DtypeInfo = tuple[int | None, bool]
"""(item size in bytes, or None if unknown; may hold Python objects)."""

_CODES = {
    "?": 1, "b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 8, "L": 8, "q": 8, "Q": 8,
    "p": 8, "P": 8, "n": 8, "N": 8, "e": 2, "f": 4, "d": 8, "g": 16, "F": 8, "D": 16, "G": 32,
    "M": 8, "m": 8, "O": 8, "S": 0, "a": 0, "U": 0, "V": 0, "c": 1, "u": 0,
}  # fmt: skip
_NAMES = {
    "bool": 1, "bool_": 1, "bool8": 1, "byte": 1, "ubyte": 1, "short": 2, "ushort": 2,
    "intc": 4, "uintc": 4, "int": 8, "uint": 8, "long": 8, "ulong": 8, "longlong": 8,
    "ulonglong": 8, "intp": 8, "uintp": 8, "half": 2, "single": 4, "float": 8, "double": 8,
    "longdouble": 16, "csingle": 8, "complex": 16, "cdouble": 16, "clongdouble": 32,
    "datetime64": 8, "timedelta64": 8, "str": 0, "str_": 0, "unicode": 0, "bytes": 0,
    "bytes_": 0, "void": 0,
}  # fmt: skip
_OBJECT_NAMES = {"object", "object_", "object0", "O", "O8", "O4"}
_SIZED = re.compile(r"(float|int|uint|complex)(\d+)\Z")
_SHAPE = re.compile(r"\(([\d,\s]*)\)")


def _split_fields(text: str) -> list[str]:
    """Split a comma-separated dtype list, keeping commas inside shape parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def parse_dtype(text: str) -> DtypeInfo:
    text = text.strip()
    if not text or len(text) > 1000:
        return None, True
    fields = _split_fields(text)
    if len(fields) > 1:
        parsed = [parse_dtype(f) for f in fields]
        sizes = [size for size, _ in parsed]
        objects = any(obj for _, obj in parsed)
        if any(size is None for size in sizes):
            return None, objects
        return sum(s for s in sizes if s is not None), objects
    count = 1
    m = _SHAPE.match(text)
    if m:
        dims = [d for d in m.group(1).replace(" ", "").split(",") if d]
        for d in dims:
            count *= int(d)
        text = text[m.end() :].strip()
    text = text.lstrip("<>|=!")
    base = text.split("[", 1)[0]
    if base in _OBJECT_NAMES or base.startswith("O"):
        return 8 * count, True
    if base in _NAMES:
        size = _NAMES[base]
        return (size * count if size else None), False
    sized = _SIZED.match(base)
    if sized:
        return int(sized.group(2)) // 8 * count, False
    code, digits = base[:1], base[1:]
    if code in _CODES and (digits.isdigit() or not digits):
        if not digits:
            size = _CODES[code]
            return (size * count if size else None), False
        n = int(digits)
        return (n * 4 if code == "U" else n) * count, False
    return None, True
