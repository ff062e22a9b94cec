"""No false alarms on what people have: objects written by the real libraries scan as safe.

Each case is built with the library itself (tiny objects), written by ``pickle.dumps`` (protocols
2 and 4), ``joblib.dump`` and ``torch.save``, and must scan ``safe`` with every global safe.
Each case also names globals it must emit, so a case that stopped exercising the entry it was
written for fails instead of passing vacuously.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import posixpath
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn._loss import _loss as cy_loss
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    GammaRegressor,
    HuberRegressor,
    Perceptron,
    PoissonRegressor,
    SGDClassifier,
    TweedieRegressor,
)
from sklearn.linear_model import _sgd_fast as sgd_loss
from sklearn.neighbors import BallTree, KDTree, KNeighborsClassifier

from trainguard import Policy, Verdict, scan_file
from trainguard.scan.policy import AllowEntry, Status
from trainguard.scan.uses import Use

X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]] * 3)
Y_CLASS = np.array([0, 1, 1, 0] * 3)
Y_POS = np.array([1.0, 2.0, 3.0, 1.5] * 3)


def _fit(est: Any, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def _scaler() -> torch.amp.GradScaler:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.step(opt)
    scaler.update()  # GradScaler refuses to be pickled mid-iteration
    return scaler


# name -> (builder, globals the written file must name, canonical module.qualname)
CASES: dict[str, tuple[Callable[[], Any], set[str]]] = {
    "re_pattern": (lambda: re.compile(r"(a+)+b", re.IGNORECASE), {"re._compile"}),
    "tz_aware_frame": (
        lambda: pd.DataFrame(
            {
                "utc": pd.date_range("2020", periods=3, tz="UTC"),
                "offset": pd.date_range("2020", periods=3, tz=dt.timezone(dt.timedelta(hours=2))),
            }
        ),
        {"pandas.DatetimeTZDtype", "pandas.DataFrame", "datetime.timezone"},
    ),
    "named_zone_frame": (
        lambda: pd.DataFrame({"t": pd.date_range("2020", periods=3, tz="Europe/Paris")}),
        {"pandas.DatetimeTZDtype", "zoneinfo.ZoneInfo"},
    ),
    "timedelta": (
        lambda: pd.Timedelta("1 day 2ns"),
        {"pandas._libs.tslibs.timedeltas._timedelta_unpickle"},
    ),
    "nat": (lambda: pd.NaT, {"pandas._libs.tslibs.nattype._nat_unpickle"}),
    "period_index": (
        lambda: pd.period_range("2020-01", periods=3, freq="M"),
        {"pandas.PeriodDtype", "pandas.PeriodIndex"},
    ),
    "interval_index": (
        lambda: pd.interval_range(0, 3),
        {"pandas.core.indexes.interval._new_IntervalIndex", "pandas.IntervalIndex"},
    ),
    "numpy_scalars": (
        lambda: [np.float16(1), np.uint8(3), np.int8(-2), np.complex64(1j)],
        {"numpy._core.multiarray.scalar"},
    ),
    "numpy_dtypes": (
        lambda: {
            "dtypes": [np.dtype("float16"), np.dtype("uint8"), np.dtype("<M8[ns]")],
            "types": [np.float16, np.uint8, np.bool_, np.str_, np.datetime64],
            "dtype_class": np.dtypes.Float16DType,
        },
        {"numpy.dtype", "numpy.float16", "numpy.uint8", "numpy.dtypes.Float16DType"},
    ),
    "sgd_classifier": (
        lambda: _fit(SGDClassifier(max_iter=5), Y_CLASS),
        {"sklearn.linear_model._sgd_fast.Hinge"},
    ),
    "perceptron": (
        lambda: _fit(Perceptron(max_iter=5), Y_CLASS),
        {"sklearn.linear_model._perceptron.Perceptron", "sklearn.linear_model._sgd_fast.Hinge"},
    ),
    "kneighbors_kd_tree": (
        lambda: _fit(KNeighborsClassifier(n_neighbors=1, algorithm="kd_tree"), Y_CLASS),
        {"sklearn.metrics._dist_metrics.newObj", "sklearn.neighbors._kd_tree.KDTree"},
    ),
    "kd_tree": (lambda: KDTree(X), {"sklearn.metrics._dist_metrics.newObj"}),
    "ball_tree": (lambda: BallTree(X), {"sklearn.neighbors._ball_tree.BallTree"}),
    "huber": (
        lambda: _fit(HuberRegressor(max_iter=5), Y_POS),
        {"sklearn.linear_model._huber.HuberRegressor"},
    ),
    "poisson": (
        lambda: _fit(PoissonRegressor(max_iter=5), Y_POS),
        {"sklearn._loss._loss.CyHalfPoissonLoss"},
    ),
    "gamma": (
        lambda: _fit(GammaRegressor(max_iter=5), Y_POS),
        {"sklearn._loss._loss.CyHalfGammaLoss"},
    ),
    "tweedie": (
        lambda: _fit(TweedieRegressor(power=0, max_iter=5), Y_POS),
        {"sklearn._loss._loss.CyHalfTweedieLossIdentity"},
    ),
    "tweedie_log_link": (
        lambda: _fit(TweedieRegressor(power=1.5, link="log", max_iter=5), Y_POS),
        {"sklearn._loss._loss.CyHalfTweedieLoss"},
    ),
    "cython_losses": (
        lambda: [
            cy_loss.CyHuberLoss(0.9),
            cy_loss.CyExponentialLoss(),
            sgd_loss.ModifiedHuber(),
            sgd_loss.SquaredHinge(1.0),
            sgd_loss.EpsilonInsensitive(0.1),
            sgd_loss.SquaredEpsilonInsensitive(0.1),
        ],
        {"sklearn._loss._loss.CyHuberLoss", "sklearn.linear_model._sgd_fast.ModifiedHuber"},
    ),
    "grad_scaler_state": (lambda: _scaler().state_dict(), set()),
    "grad_scaler": (
        _scaler,
        {"torch.amp.grad_scaler.GradScaler", "torch.amp.grad_scaler._refresh_per_optimizer_state"},
    ),
    "builtins_as_values": (
        lambda: {"key": len, "agg": [sum, max, min, abs, round, sorted]},
        {"builtins.len", "builtins.sum", "builtins.sorted"},
    ),
    "path_join": (lambda: {"join": os.path.join, "posix": posixpath.join}, {"posixpath.join"}),
    "scipy_sparse": (
        lambda: [sp.csr_matrix(np.eye(3)), sp.csc_array(np.eye(2)), sp.coo_matrix(np.eye(2))],
        {"scipy.sparse._csr.csr_matrix", "scipy.sparse._csc.csc_array"},
    ),
}


def _write(obj: Any, how: str, path: Path) -> None:
    if how == "pickle2":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    elif how == "pickle4":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    elif how == "joblib":
        joblib.dump(obj, path)
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("how", ["pickle2", "pickle4", "joblib", "torch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_real_library_files_scan_safe(tmp_path: Path, case: str, how: str) -> None:
    build, expected = CASES[case]
    path = tmp_path / f"{case}.{how}"
    _write(build(), how, path)
    result = scan_file(path)
    named = {g.name for g in result.globals}
    assert expected <= named, f"{case} no longer names {sorted(expected - named)}"
    not_safe = [(g.name, g.use, g.status, g.reason) for g in result.globals if g.status != "safe"]
    assert not not_safe
    assert result.verdict is Verdict.SAFE, [f.message for f in result.findings]


def test_grad_scaler_state_dict_is_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "scaler.pt"
    torch.save(_scaler().state_dict(), path)
    result = scan_file(path)
    assert result.verdict is Verdict.SAFE
    assert {g.name.split(".")[0] for g in result.globals} <= {"torch", "collections", "builtins"}


# -- the entries themselves: each allows only the uses the real files need ------------------
def test_harmless_members_of_dangerous_modules_are_exact_and_reference_only():
    pol = Policy()
    for module in ("posixpath", "os.path", "ntpath"):
        assert pol.judge(module, "join", Use.REF).status is Status.SAFE, module
        assert pol.judge(module, "join", Use.CALL).status is Status.UNKNOWN, module
    assert pol.judge("posixpath", "expanduser", Use.REF).status is Status.DANGEROUS
    # posix is os, and os.join is not one of the harmless members
    assert pol.judge("posix", "join", Use.REF).status is Status.DANGEROUS
    user = Policy([AllowEntry("posixpath.*", Use.REF | Use.NEW, "paths", "user")])
    assert user.judge("posixpath", "exists", Use.REF).status is Status.DANGEROUS


@pytest.mark.parametrize(
    ("module", "name", "allowed", "refused"),
    [
        ("builtins", "len", Use.REF, Use.CALL),
        ("builtins", "sorted", Use.REF, Use.CALL),  # sorted(xs, key) would call key
        ("builtins", "next", Use.REF, Use.CALL),
        ("re", "_compile", Use.CALL, Use.NEW),
        ("numpy", "float16", Use.REF, Use.CALL),
        ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle", Use.CALL, Use.NEW),
        ("pandas._libs.tslibs.nattype", "_nat_unpickle", Use.CALL, Use.NEW),
        ("pandas.core.indexes.interval", "_new_IntervalIndex", Use.CALL, Use.NEW),
        ("pandas", "PeriodDtype", Use.CALL, None),
        ("sklearn.linear_model._sgd_fast", "Hinge", Use.CALL, Use.NEW),
        ("sklearn._loss._loss", "CyHalfTweedieLossIdentity", Use.CALL, Use.NEW),
        ("sklearn.metrics._dist_metrics", "newObj", Use.CALL, Use.NEW),
        ("torch.amp.grad_scaler", "_refresh_per_optimizer_state", Use.CALL, Use.NEW),
        ("zoneinfo", "ZoneInfo._unpickle", Use.CALL, Use.NEW),
        ("zoneinfo", "ZoneInfo", Use.REF, Use.CALL),
    ],
)
def test_new_entries_allow_only_their_uses(
    module: str, name: str, allowed: Use, refused: Use | None
):
    pol = Policy()
    judged = pol.judge(module, name, allowed)
    assert judged.status is Status.SAFE and judged.entry and judged.entry.reason
    if refused is not None:
        assert pol.judge(module, name, refused).status is Status.UNKNOWN


def test_builtin_functions_that_run_code_stay_dangerous():
    pol = Policy()
    for name in ("eval", "exec", "getattr", "open", "__import__", "compile", "vars"):
        assert pol.judge("builtins", name, Use.REF).status is Status.DANGEROUS, name
    assert pol.judge("builtins", "print", Use.REF).status is Status.UNKNOWN
