"""Python builtins and standard library: plain data types and a few pure functions.

Higher-order builtins (``map``, ``iter``, ``next``, ``sorted``, ``max``) are allowed as
references only: called, they would call whatever they are handed, which would turn a
reference-only entry anywhere in the table into a call the policy never allowed.
"""

from __future__ import annotations

from trainguard.scan.allowlists._base import ALL, REF_CALL, add
from trainguard.scan.uses import Use

__all__ = ["ALIASES", "HARMLESS_MEMBERS"]

# Modules that are the same object under another name (C accelerators, OS-specific names).
ALIASES: dict[str, str] = {
    "posix": "os",
    "nt": "os",
    "_operator": "operator",
    "_io": "io",
    "_codecs": "codecs",
    "_pickle": "pickle",
    "_functools": "functools",
    "_collections": "collections",
    "_socket": "socket",
    "_ctypes": "ctypes",
    "_posixsubprocess": "subprocess",
    "_thread": "threading",
    "numpy.core": "numpy._core",
}

HARMLESS_MEMBERS: frozenset[str] = frozenset(["posixpath.join", "os.path.join", "ntpath.join"])
"""Members of modules on the dangerous list that only compute a value. They escape the
whole-module rule and nothing else: the exact and attribute rules still apply, and each is
allowed below only for the uses listed there."""

add(
    "builtins.set builtins.frozenset builtins.dict builtins.list builtins.tuple builtins.int "
    "builtins.float builtins.complex builtins.bool builtins.str builtins.bytes "
    "builtins.bytearray builtins.slice builtins.range builtins.object builtins.NoneType "
    "builtins.Ellipsis builtins.NotImplemented",
    ALL,
    "builtin data type",
)
add(
    [
        f"builtins.{fn}"
        for fn in (
            "abs all any ascii bin callable chr divmod format hash hex id isinstance "
            "issubclass iter len max min next oct ord pow repr round sorted sum"
        ).split()
    ],
    Use.REF,
    "pure builtin function held as a value (key=len, reduce=sum): it opens nothing, imports "
    "nothing and evaluates no text; reference only, since called with a callable argument "
    "(iter, next, max, sorted) it would run that callable",
)
add(
    sorted(HARMLESS_MEMBERS),
    Use.REF,
    "os.path.join held as a value (a path-joining parameter): joins strings, touches no "
    "file even when called",
)
add(
    "re._compile",
    REF_CALL,
    "how re.Pattern pickles itself: re._compile(pattern, flags) only compiles a regular "
    "expression, for any arguments (a pathological pattern can be slow to match later, "
    "ReDoS, which is a denial of service, not code execution); a bad pattern raises",
)
add("zoneinfo.ZoneInfo", Use.REF, "IANA time zone class (tz-aware pandas and datetime values)")
add(
    "zoneinfo.ZoneInfo._unpickle",
    REF_CALL,
    "how a ZoneInfo pickles: ZoneInfo._unpickle(key, from_cache) looks the zone up by key; "
    "the key is checked first (no absolute path, no '..') and only a TZif file of the time "
    "zone database (TZPATH or the tzdata package) is read and parsed; any other key raises",
)
add(
    "collections.OrderedDict collections.Counter collections.deque collections.defaultdict",
    ALL,
    "collections data type",
)
add("copyreg._reconstructor", ALL, "object reconstruction; its class argument is judged")
add("codecs.encode", ALL, "bytes in protocol-2 pickles; the codec argument is judged")
add(
    "datetime.datetime datetime.date datetime.time datetime.timedelta datetime.timezone "
    "decimal.Decimal fractions.Fraction uuid.UUID argparse.Namespace "
    "pathlib.Path pathlib.PosixPath pathlib.WindowsPath pathlib.PurePath "
    "pathlib.PurePosixPath pathlib.PureWindowsPath",
    ALL,
    "plain value type common in checkpoint metadata",
)
