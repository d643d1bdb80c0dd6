"""Robust standardisation of feature vectors, fitted once on the warm-up windows.

The mixture model works in standardised units: means of order one keep the sufficient statistics
free of cancellation, and ``reg_covar`` means the same thing for every feature. The centre is the
median and the scale the standard deviation of the values winsorised at their 1st and 99th
percentiles: unmoved by the few anomalies a warm-up may contain, and not fooled by features that
sit on one value most of the time (an assortment ratio is exactly 0 whenever a window has one
sale), where a MAD would be near 0 and blow the feature up. The features already come in units of
noise (z-scores) or of relative change (log ratios), so no scale is taken below ``0.1``: a feature
that does not move in the warm-up (the count of a series with one sample per window) would
otherwise turn baseline jitter of a few hundredths into alerts. (A feature that moves at all is
standardised once more by the mixture, by its own warm-up spread, so its resolution follows that
spread: a temperature's log ratio with 2 % noise keeps it. The floor sets the resolution of a
feature that was constant throughout the warm-up.)

Examples
--------
>>> import numpy as np
>>> X = np.column_stack([np.r_[np.zeros(90), np.arange(1.0, 11.0)], np.full(100, 5.0)])
>>> s = RobustScaler().fit(X)   # column 0 is 0 on 90 % of the rows: its MAD would be 0
>>> s.center_.tolist(), s.scale_.round(3).tolist()
([0.0, 5.0], [1.836, 0.1])
>>> RobustScaler.from_state(s.to_state()).transform(X[-1:]).round(3).tolist()
[[5.447, 0.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RobustScaler"]

_MIN_SCALE = 0.1  # in the features' own units (see the module docstring)
_WINSOR = 1.0  # percent winsorised at each end before the standard deviation
_CLIP = 1e4  # standardised values beyond this carry no extra information, only overflow risk


class RobustScaler:
    def __init__(self) -> None:
        self.center_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> RobustScaler:
        X = np.asarray(X, dtype=np.float64)
        center = np.median(X, axis=0)
        lo, hi = np.percentile(X, [_WINSOR, 100.0 - _WINSOR], axis=0)
        std = np.clip(X, lo, hi).std(axis=0)
        scale = np.maximum(std, _MIN_SCALE)
        self.center_, self.scale_ = center, scale
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.center_ is None or self.scale_ is None:
            raise RuntimeError("RobustScaler is not fitted: call fit() on the warm-up rows first")
        out = (np.asarray(X, dtype=np.float64) - self.center_) / self.scale_
        return np.clip(out, -_CLIP, _CLIP, out=out)

    def min_variance(self, X: np.ndarray) -> np.ndarray:
        """The least variance a model of ``transform(X)`` should allow along each feature: the
        floor's resolution (0.1 of the feature's own units) where ``X`` sits on one value in all
        but its winsorised tails, 0 elsewhere. Such a feature has shown no noise to measure, only
        a few excursions (a SKU's price ratio, 0 in nearly every window): a model that took its
        spread from them would read the next excursion as hundreds of standard deviations.

        >>> X = np.column_stack([np.r_[np.zeros(995), np.full(5, 0.5)], np.linspace(0.0, 0.05, 1000)])
        >>> RobustScaler().fit(X).min_variance(X).tolist()
        [1.0, 0.0]
        """
        if self.scale_ is None:
            raise RuntimeError("RobustScaler is not fitted: call fit() on the warm-up rows first")
        lo, hi = np.percentile(np.asarray(X, dtype=np.float64), [_WINSOR, 100.0 - _WINSOR], axis=0)
        out: np.ndarray = np.where(lo == hi, (_MIN_SCALE / self.scale_) ** 2, 0.0)
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "center": None if self.center_ is None else self.center_.tolist(),
            "scale": None if self.scale_ is None else self.scale_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RobustScaler:
        s = cls()
        if state["center"] is not None:
            s.center_ = np.array(state["center"], dtype=np.float64)
            s.scale_ = np.array(state["scale"], dtype=np.float64)
        return s
