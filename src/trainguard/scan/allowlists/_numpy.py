"""NumPy and SciPy: array, scalar, dtype, RNG and sparse-matrix reconstruction."""

from __future__ import annotations

from trainguard.scan.allowlists._base import ALL, REF_NEW, add
from trainguard.scan.uses import Use

__all__: list[str] = []

add(
    [
        f"{np}.{n}"
        for np in ("numpy._core.multiarray", "numpy.core.multiarray")
        for n in ("_reconstruct", "scalar")
    ]
    + [f"{np}._frombuffer" for np in ("numpy._core.numeric", "numpy.core.numeric")]
    + [
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.ma.core._mareconstruct",
        "numpy.ma.core.MaskedArray",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__legacy_seeding",
        "numpy.random.mtrand.RandomState",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.random._generator.Generator",
        "numpy.int64",
        "numpy.float64",
        "numpy.float32",
        "numpy.int32",
        "numpy.bool_",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    ],
    ALL,
    "numpy array/scalar/RNG reconstruction",
)
add("numpy.dtypes.*", REF_NEW, "numpy dtype class (numpy.dtypes.Float16DType)")
add(
    [
        f"numpy.{fn}"
        for fn in (
            "log1p expm1 log exp sqrt abs absolute square sin cos tan tanh sign negative "
            "reciprocal log2 log10 exp2 cbrt floor ceil rint clip"
        ).split()
    ],
    Use.REF,
    "numpy ufunc held as a parameter (e.g. FunctionTransformer(func=numpy.log1p))",
)
add(
    [
        f"numpy.{t}"
        for t in (
            "bool bytes_ clongdouble complex64 complex128 complex256 datetime64 float16 "
            "float128 int8 int16 longdouble longlong object_ str_ timedelta64 uint8 uint16 "
            "uint32 uint64 ulonglong void"
        ).split()
    ],
    Use.REF,
    "numpy scalar type held as a value (dtype=numpy.float16 in a parameter); a reference "
    "hands out the type object and runs nothing",
)
add("scipy.sparse.*", REF_NEW, "scipy sparse matrix reconstructed from arrays")
