"""pandas: frames, series, indexes, extension arrays, offsets and dtypes rebuilt from state.

pandas also defines file readers and writers (``pandas.io``), the expression evaluator behind
``eval``/``query`` (``pandas.core.computation``) and a pickle loader; those are on the
dangerous list (``_danger``), and the wildcard reaches only the generated class table.
"""

from __future__ import annotations

from trainguard.scan.allowlists._base import ALL, REF_CALL, REF_NEW, add

__all__: list[str] = []

add("pandas.*", REF_NEW, "pandas object rebuilt from state")
add(
    [
        f"pandas._libs.tslibs.offsets.{o}"
        for o in (
            "Day Hour Minute Second Milli Micro Nano Week MonthEnd MonthBegin YearEnd "
            "YearBegin QuarterEnd QuarterBegin BusinessDay"
        ).split()
    ]
    + "pandas.StringDtype pandas.Int64Dtype pandas.Float64Dtype pandas.BooleanDtype".split(),
    ALL,
    "pandas offset or extension dtype built from plain values",
)
add(
    "pandas.core.frame.DataFrame pandas.core.series.Series "
    "pandas.core.internals.managers.BlockManager pandas.core.internals.managers.SingleBlockManager "
    "pandas._libs.internals._unpickle_block pandas.core.indexes.base._new_Index "
    "pandas.core.indexes.base.Index pandas.core.indexes.range.RangeIndex "
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked "
    "pandas.core.arrays.datetimes.DatetimeArray pandas.core.indexes.datetimes._new_DatetimeIndex "
    "pandas.core.indexes.datetimes.DatetimeIndex "
    "pandas._libs.tslibs.timestamps._unpickle_timestamp "
    "pandas.core.internals.blocks.new_block",
    ALL,
    "pandas frame/series/index reconstruction",
)
add(
    "pandas.PeriodDtype pandas.core.dtypes.dtypes.PeriodDtype",
    ALL,
    "dtype of a PeriodIndex, called with its frequency (an offset or a string such as 'M'); "
    "any argument is parsed as a frequency or raises",
)
add(
    "pandas._libs.tslibs.timedeltas._timedelta_unpickle",
    REF_CALL,
    "how pd.Timedelta pickles: (integer value, resolution) -> Timedelta; bad arguments raise",
)
add(
    "pandas._libs.tslibs.nattype._nat_unpickle",
    REF_CALL,
    "how pd.NaT pickles: returns the NaT singleton and ignores its arguments",
)
add(
    "pandas.core.indexes.interval._new_IntervalIndex",
    REF_CALL,
    "how IntervalIndex pickles: cls.from_arrays(**state); every class that reaches it is "
    "judged on its own, and the from_arrays of the allowed ones (IntervalIndex, "
    "IntervalArray, MultiIndex) only build arrays",
)
