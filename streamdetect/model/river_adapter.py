"""``RiverGMM``: :class:`~streamdetect.model.StepwiseGMM` as a river anomaly detector.

In river 0.26 the base class is ``river.base.AnomalyDetector`` (there is no
``river.anomaly.base`` module). River feeds dicts whose keys may come and go, so the adapter fixes
the feature set at the first ``learn_one`` (keys sorted, so key order never matters), fills a
missing feature with its running mean, and ignores features it has not seen at the start.
``score_one`` returns 0.0 until the warm-up fit has run (river expects scoring from the first
event), then the negative log-likelihood (higher = more anomalous).

>>> import random
>>> from streamdetect.model.river_adapter import RiverGMM
>>> rng = random.Random(0)
>>> det = RiverGMM(n_components=1, warmup=100, learn_batch=16)
>>> for _ in range(300):
...     det.learn_one({"a": rng.gauss(0, 1), "b": rng.gauss(5, 1)})
>>> det.score_one({"a": 8.0, "b": -3.0}) > det.score_one({"a": 0.0, "b": 5.0})
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from river import base

from streamdetect.model._stepwise import StepwiseGMM

__all__ = ["RiverGMM"]


class RiverGMM(base.AnomalyDetector):
    """Online full-covariance Gaussian mixture (stepwise EM) as a river anomaly detector.

    Parameters
    ----------
    n_components
        Mixture components, or ``"auto"`` (BIC on the warm-up data, up to ``max_components``).
    max_components
        Upper bound for ``"auto"``.
    step_exponent
        alpha in the step size ``(t + t0)^-alpha``, in (0.5, 1].
    step_floor
        Smallest step size, in (0, 1).
    reg_covar
        Added to covariance diagonals (in standardised units).
    warmup
        Vectors buffered before the first (batch EM) fit.
    n_init
        k-means++ restarts of the warm-up fit.
    learn_batch
        ``learn_one`` learns in mini-batches of this many vectors.
    seed
        Random seed.
    """

    def __init__(
        self,
        n_components: int | str = 2,
        max_components: int = 6,
        step_exponent: float = 0.6,
        step_floor: float = 0.01,
        reg_covar: float = 1e-3,
        warmup: int = 500,
        n_init: int = 2,
        learn_batch: int = 64,
        seed: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.max_components = max_components
        self.step_exponent = step_exponent
        self.step_floor = step_floor
        self.reg_covar = reg_covar
        self.warmup = warmup
        self.n_init = n_init
        self.learn_batch = learn_batch
        self.seed = seed
        self._model = StepwiseGMM(
            n_components=n_components,  # type: ignore[arg-type]
            max_components=max_components,
            step_exponent=step_exponent,
            step_floor=step_floor,
            reg_covar=reg_covar,
            warmup=warmup,
            n_init=n_init,
            learn_batch=learn_batch,
            seed=seed,
        )
        self._features: list[Any] | None = None
        self._sum: np.ndarray = np.zeros(0)
        self._count: np.ndarray = np.zeros(0)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"n_components": 2, "warmup": 60, "learn_batch": 16, "n_init": 1, "reg_covar": 1e-2}

    @property
    def model(self) -> StepwiseGMM:
        """The underlying :class:`StepwiseGMM`."""
        return self._model

    def _row(self, x: dict[Any, Any], learn: bool) -> np.ndarray | None:
        if self._features is None:
            if not learn or not x:
                return None
            self._features = sorted(x, key=str)
            self._sum = np.zeros(len(self._features))
            self._count = np.zeros(len(self._features))
        row = np.empty(len(self._features))
        for j, f in enumerate(self._features):
            v = x.get(f)
            try:
                value = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                row[j] = value
                if learn:
                    self._sum[j] += value
                    self._count[j] += 1
            else:
                row[j] = self._sum[j] / self._count[j] if self._count[j] else 0.0
        return row

    def learn_one(self, x: dict[Any, Any]) -> None:
        row = self._row(x, learn=True)
        if row is None:
            return
        self._model._learn_row(row)

    def score_one(self, x: dict[Any, Any]) -> float:
        if not self._model.is_fitted:
            return 0.0
        row = self._row(x, learn=False)
        if row is None:
            return 0.0
        return float(self._model.anomaly_score(row[None, :])[0])
