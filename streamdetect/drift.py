"""Score-drift monitoring: PSI between a reference and the recent score distribution, and a river
drift detector on the score stream.

A mixture that keeps learning hides slow change in its own scores, so the *scores* are watched:

* ``psi_``: the population stability index of the recent scores against a reference, binned at
  the reference deciles (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift);
* a river drift detector: Page-Hinkley on the batch-mean score standardised by the reference
  (a CUSUM with k = 0.5, h = 5 in reference standard deviations), or ADWIN on every score.

On drift the reference becomes the recent scores and the detector starts over; the detector
core reacts by letting the model take larger steps for a while.

>>> import numpy as np
>>> from streamdetect.config import DriftConfig
>>> rng = np.random.default_rng(0)
>>> mon = ScoreDriftMonitor(DriftConfig(reference_size=1000, recent_size=1000))
>>> any(mon.update(rng.normal(size=250)) for _ in range(20))
False
>>> any(mon.update(rng.normal(loc=2.0, size=250)) for _ in range(10))
True
>>> mon.drift_events_
1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from river import drift as river_drift

from streamdetect.config import DriftConfig

STATE_VERSION = 1
_SMOOTHING = 1e-4


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``recent`` against ``reference``, binned at reference quantiles.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> ref = rng.normal(size=5000)
    >>> psi(ref, rng.normal(size=5000)) < 0.01
    True
    >>> psi(ref, rng.normal(loc=1.0, size=5000)) > 0.25
    True
    """
    return _psi_against(_reference_bins(reference, bins), recent)


def _reference_bins(reference: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray] | None:
    """Bin edges at the reference's quantiles and the reference's share in each bin."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if len(ref) == 0:
        return None
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    return edges, np.maximum(e, _SMOOTHING)


def _psi_against(reference_bins: tuple[np.ndarray, np.ndarray] | None, recent: np.ndarray) -> float:
    new = np.asarray(recent, dtype=np.float64)
    new = new[np.isfinite(new)]
    if reference_bins is None or len(new) == 0:
        return 0.0
    edges, e = reference_bins
    a = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1) / len(new)
    a = np.maximum(a, _SMOOTHING)
    return float(np.sum((a - e) * np.log(a / e)))


class ScoreDriftMonitor:
    """Watches the anomaly-score stream for drift (see the module docstring).

    ``update(scores)`` takes one learning batch of pre-update scores and says whether drift was
    detected on it.
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = c = config or DriftConfig()
        self.reference_: np.ndarray = np.empty(0)
        self.recent_: np.ndarray = np.empty(0)
        self._psi: float | None = 0.0  # None: not computed since the recent scores changed
        self.drift_events_ = 0
        self.n_batches_ = 0
        self._ref_mean = 0.0
        self._ref_std = 1.0
        self._detector = self._new_detector(c)
        self._bins: tuple[np.ndarray, np.ndarray] | None = None  # of the reference, set with it

    @staticmethod
    def _new_detector(c: DriftConfig) -> river_drift.PageHinkley | river_drift.ADWIN:
        if c.detector == "adwin":
            return river_drift.ADWIN(delta=0.002)
        # Standardised input: delta = 0.5 and threshold = 5 make it a CUSUM with k = 0.5, h = 5.
        return river_drift.PageHinkley(min_instances=10, delta=0.5, threshold=5.0, alpha=1.0, mode="both")

    @property
    def psi_(self) -> float:
        """PSI of the recent scores against the reference, computed when read (a pass over the
        recent scores: metrics read it once per batch, learning steps come several per batch)."""
        if self._psi is None:
            self._psi = _psi_against(self._bins, self.recent_)
        return self._psi

    @property
    def has_reference(self) -> bool:
        return len(self.reference_) >= self.config.reference_size

    def update(self, scores: Any) -> bool:
        x = np.asarray(scores, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if len(x) == 0:
            return False
        self.n_batches_ += 1
        c = self.config
        if not self.has_reference:
            self.reference_ = np.concatenate([self.reference_, x])[: c.reference_size]
            if self.has_reference:
                self._set_reference(self.reference_)
            return False
        self.recent_ = np.concatenate([self.recent_, x])[-c.recent_size :]
        if self._detect(x):
            self._psi = _psi_against(self._bins, self.recent_)  # the drift's size, against the old reference
            self.drift_events_ += 1
            self._set_reference(self.recent_)
            self._detector = self._new_detector(c)
            return True
        self._psi = None
        return False

    def _detect(self, x: np.ndarray) -> bool:
        det = self._detector
        if isinstance(det, river_drift.ADWIN):
            drifted = False
            for v in x.tolist():
                det.update(v)
                drifted = drifted or det.drift_detected
            return drifted
        # Winsorise so that a handful of anomalies in a batch does not read as a level change.
        z = np.clip((x - self._ref_mean) / self._ref_std, -5.0, 5.0)
        det.update(float(z.mean()))
        return bool(det.drift_detected)

    def _set_reference(self, values: np.ndarray) -> None:
        self.reference_ = values.copy()
        self._bins = _reference_bins(self.reference_)  # the reference changes rarely: bin it once
        med = float(np.median(values))
        mad = float(np.median(np.abs(values - med))) * 1.4826
        self._ref_mean = med
        self._ref_std = mad if mad > 0 else max(float(values.std()), 1e-9)

    def to_state(self) -> dict[str, Any]:
        """The reference, recent scores and counters; the river detector restarts on restore."""
        return {
            "version": STATE_VERSION,
            "reference": self.reference_.tolist(),
            "recent": self.recent_.tolist(),
            "psi": self.psi_,
            "drift_events": self.drift_events_,
            "n_batches": self.n_batches_,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: DriftConfig | None = None) -> ScoreDriftMonitor:
        mon = cls(config)
        mon.reference_ = np.asarray(state["reference"], dtype=np.float64)
        if mon.has_reference:
            mon._set_reference(mon.reference_)
        mon.recent_ = np.asarray(state["recent"], dtype=np.float64)
        mon._psi = float(state["psi"])
        mon.drift_events_ = int(state["drift_events"])
        mon.n_batches_ = int(state["n_batches"])
        return mon
