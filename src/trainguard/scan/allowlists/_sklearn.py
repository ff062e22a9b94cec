"""scikit-learn and joblib: estimators rebuilt from their state, and the Cython types they hold.

The Cython loss and distance types pickle themselves as a call with plain numbers
(``Hinge(1.0)``, ``CyHalfTweedieLoss(1.5)``) or through ``newObj(cls)``, which is
``cls.__new__(cls)``: an empty object of a class that the policy judges on its own.
"""

from __future__ import annotations

from trainguard.scan.allowlists._base import ALL, REF_CALL, REF_NEW, add

__all__: list[str] = []

add(
    "joblib.numpy_pickle.NumpyArrayWrapper joblib.numpy_pickle_compat.NDArrayWrapper "
    "joblib.numpy_pickle_compat.ZNDArrayWrapper",
    REF_NEW,
    "joblib array wrapper (array bytes follow in the stream)",
)
add("sklearn.*", REF_NEW, "scikit-learn estimator reconstructed from its state")
add(
    "sklearn.tree._tree.Tree sklearn.neighbors._kd_tree.KDTree "
    "sklearn.neighbors._ball_tree.BallTree sklearn.neighbors._kd_tree.newObj "
    "sklearn.neighbors._ball_tree.newObj "
    "sklearn.utils._bunch.Bunch sklearn._loss._loss.__pyx_unpickle_CyHalfSquaredError "
    "sklearn._loss._loss.__pyx_unpickle_CyHalfBinomialLoss "
    "sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss "
    "sklearn._loss._loss.CyHalfSquaredError sklearn._loss._loss.CyHalfBinomialLoss "
    "sklearn._loss._loss.CyHalfMultinomialLoss sklearn._loss._loss.CyAbsoluteError "
    "sklearn._loss._loss.CyHalfPoissonLoss sklearn._loss._loss.CyPinballLoss",
    ALL,
    "scikit-learn Cython type rebuilt from arrays",
)
add(
    [
        f"sklearn._loss._loss.{c}"
        for c in (
            "CyHalfGammaLoss CyHalfTweedieLoss CyHalfTweedieLossIdentity CyHuberLoss "
            "CyExponentialLoss"
        ).split()
    ],
    REF_CALL,
    "Cython loss of a GLM or boosting estimator (Gamma/Tweedie regressors): called with "
    "its float parameters (power, quantile, delta) or none; any arguments build a loss "
    "object or raise",
)
add(
    [
        f"sklearn.linear_model._sgd_fast.{c}"
        for c in (
            "Hinge ModifiedHuber SquaredHinge EpsilonInsensitive SquaredEpsilonInsensitive"
        ).split()
    ],
    REF_CALL,
    "Cython loss of SGDClassifier/Perceptron/SGDRegressor (loss_function_): called with one "
    "float (threshold or epsilon) or none; any arguments build a loss object or raise",
)
add(
    "sklearn.metrics._dist_metrics.newObj",
    REF_CALL,
    "how KDTree/BallTree distance metrics pickle: newObj(cls) is cls.__new__(cls), an empty "
    "object of a class that is judged separately, then given its arrays; no other effect",
)
