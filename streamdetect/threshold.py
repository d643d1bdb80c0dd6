"""Adaptive thresholds on the anomaly score: EVT peaks-over-threshold (SPOT, DSPOT) and a rolling quantile.

All three learn from the stream of pre-update scores in mini-batches and expose the same surface:

* ``classify(scores)`` -> bool array (all ``False`` until calibrated: no alerts during warm-up);
* ``learn(scores)``: feed a batch of scores (scores above the threshold are kept out of the fit);
* ``calibrate()``: end the calibration early, on the scores learned so far (the detector does
  this once a day of scores has passed, for streams too sparse to reach ``n_init`` soon);
* ``threshold``: the current alert threshold in score units (``inf`` until calibrated);
* ``probability(scores)``: ``1 - P(S >= s)`` under the recent score distribution, in [0, 1];
  the tail beyond the peaks threshold comes from the fitted generalised Pareto distribution, so
  it stays informative far past anything in the window, and is comparable across keys and data
  sets because it is a probability, not a log-likelihood;
* ``to_state()`` / :func:`threshold_from_state`: a plain, versioned dict.

SPOT follows Siffer et al. (KDD 2017): a high empirical quantile ``t`` of the scores, a
generalised Pareto fit of the excesses over ``t`` (Grimshaw's maximum likelihood), and the
risk-``q`` quantile ``z_q = t + sigma/gamma ((q n / N_t)^-gamma - 1)``. Two departures from the
paper. ``t`` is not fixed by the first ``n_init`` scores: every refit takes it afresh from the last
``window`` normal scores, as in a moving-window peaks-over-threshold estimate (McNeil and Frey,
2000); a model that keeps learning moves its score level, and a ``t`` fixed on the first day's
scores ends up below the bulk of later ones, where the "tail" fit is the body of the
distribution. And since alarms never enter the window, what it holds is a sample truncated at
``z_q``: the tail is fitted by the truncated likelihood (:func:`fit_truncated_gpd`), which a
complete-sample fit would read as a bounded tail.
DSPOT runs SPOT on the score minus the mean of the last ``depth`` normal scores, for a score
level that wanders within the window.

>>> import numpy as np
>>> from streamdetect.config import ThresholdConfig
>>> rng = np.random.default_rng(0)
>>> spot = make_threshold(ThresholdConfig(method="spot", risk=1e-3, n_init=2000))
>>> spot.learn(rng.exponential(size=2000))
>>> spot.is_calibrated, 6.0 < spot.threshold < 8.0  # the exact 1e-3 quantile of Exp(1) is 6.9
(True, True)
>>> spot.classify(np.array([1.0, 12.0])).tolist()
[False, True]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from river import stats as river_stats
from scipy.optimize import brentq

from streamdetect._gpd_kernels import (
    bounded_exponential_scale,
    nelder_mead_shape_scale,
    shape_scale_cost,
    truncated_log_likelihood,
)
from streamdetect._sorted_kernels import replace_sorted
from streamdetect.config import ConfigError, ThresholdConfig

STATE_VERSION = 2  # 2: SPOT's peaks come from its window of recent scores (1 is still read)
_EPS = 1e-8
_GRID = 32
_REFIT_FRACTION = 16.0  # SPOT refits its tail once the new scores are this fraction of its window
_CALIBRATION_ROUNDS = 3
_MIN_PEAKS = 30
_LR_CRITICAL = 3.841  # chi-square(1) at 95 %: the shape parameter must earn its place
_GROSS_IQR = 10.0  # calibration scores beyond Q3 + 10 IQR are gross outliers
_SHAPE_PRIOR_SD = 0.2  # prior on the tail's shape: few score tails are heavier than gamma = 0.4


class Threshold(Protocol):
    """What the detector needs from a threshold."""

    @property
    def threshold(self) -> float: ...

    @property
    def is_calibrated(self) -> bool: ...

    def classify(self, scores: np.ndarray) -> np.ndarray: ...

    def decision(self) -> tuple[float, float] | None: ...

    def learn(self, scores: np.ndarray) -> None: ...

    def calibrate(self) -> None: ...

    def probability(self, scores: np.ndarray) -> np.ndarray: ...

    def to_state(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- GPD fit (Grimshaw)


def _gpd_log_likelihood(y: np.ndarray, gamma: float, sigma: float) -> float:
    if sigma <= 0 or not np.isfinite(sigma):
        return -math.inf
    n = len(y)
    if gamma == 0.0:
        return float(-n * math.log(sigma) - y.sum() / sigma)
    z = gamma * y / sigma
    if np.any(z <= -1.0):
        return -math.inf
    # log1p: a shape within rounding of 0 must give the exponential's likelihood, not log(1) = 0.
    return float(-n * math.log(sigma) - (1.0 + 1.0 / gamma) * np.log1p(z).sum())


def _grimshaw_w(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``u(x) v(x) - 1`` for every x of a grid (the stationarity condition of the GPD likelihood)."""
    s = 1.0 + np.multiply.outer(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):  # the interval's end can round s to 0
        u = (1.0 / s).mean(axis=-1)
        v = 1.0 + np.log(s).mean(axis=-1)
    return np.asarray(u * v - 1.0)


def _grimshaw_w_at(x: float, y: np.ndarray) -> float:
    """:func:`_grimshaw_w` at one point, to the bit, without its grid's arrays (brentq calls this
    a dozen times per root, on a few hundred peaks: the calls' overhead was most of a refit)."""
    n = len(y)
    s = 1.0 + x * y
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.add.reduce(1.0 / s) / n
        v = 1.0 + np.add.reduce(np.log(s)) / n
    return float(u * v - 1.0)


def _roots(y: np.ndarray, lo: float, hi: float, logspace: bool) -> list[float]:
    if not lo < hi:
        return []
    grid = np.geomspace(lo, hi, _GRID) if logspace else np.linspace(lo, hi, _GRID)
    w = _grimshaw_w(grid, y)
    found = []
    for i in np.flatnonzero(np.sign(w[:-1]) * np.sign(w[1:]) < 0):
        try:
            found.append(float(brentq(_grimshaw_w_at, grid[i], grid[i + 1], args=(y,))))
        except (ValueError, RuntimeError):  # pragma: no cover - brentq on a bracketed sign change
            continue
    return found


def fit_gpd(excesses: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood generalised Pareto fit of positive excesses (Grimshaw's method).

    Every root of Grimshaw's equation on both admissible intervals is a candidate, together with
    the exponential fit (``gamma = 0``) and the method-of-moments fit; the candidate with the
    largest log-likelihood wins.

    Returns
    -------
    gamma, sigma, log_likelihood

    Examples
    --------
    >>> import numpy as np
    >>> y = np.random.default_rng(1).pareto(4.0, 5000)   # Lomax(4): gamma = 1/4, sigma = 1/4
    >>> gamma, sigma, _ = fit_gpd(y)
    >>> round(gamma, 2), round(sigma, 2)
    (0.25, 0.25)
    """
    y = np.asarray(excesses, dtype=np.float64)
    y = y[np.isfinite(y) & (y > 0)]
    if len(y) == 0:
        return 0.0, 1.0, -math.inf
    mean = float(y.mean())
    candidates = [(0.0, mean)]
    var = float(y.var())
    if var > 0:
        ratio = mean * mean / var
        candidates.append(((1.0 - ratio) / 2.0, mean * (1.0 + ratio) / 2.0))
    y_min, y_max = float(y.min()), float(y.max())
    if y_max > y_min:
        roots = _roots(y, -1.0 / y_max + _EPS, -_EPS, logspace=False)
        upper = 2.0 * (mean - y_min) / max(y_min * y_min, 1e-300)  # the square underflows below 1e-154
        roots += _roots(y, _EPS, min(upper, 1e12), logspace=True)
        for x in roots:
            gamma = float(np.log1p(x * y).mean())
            if gamma != 0.0:
                candidates.append((gamma, gamma / x))
    best = max(candidates, key=lambda c: _gpd_log_likelihood(y, *c))
    exponential = _gpd_log_likelihood(y, 0.0, mean)
    if 2.0 * (_gpd_log_likelihood(y, *best) - exponential) < _LR_CRITICAL:
        # The exponential tail is the GPD with gamma = 0: keep it unless the data clearly ask for
        # the extra shape parameter (likelihood-ratio test). A few dozen peaks cannot tell, and a
        # spurious gamma > 0 puts a small-sample threshold orders of magnitude too high.
        return 0.0, mean, exponential
    return best[0], best[1], _gpd_log_likelihood(y, *best)


def _sigma_for_shape(y: np.ndarray, gamma: float) -> float:
    """The maximum-likelihood GPD scale of excesses ``y`` for a fixed shape ``gamma``."""
    n = len(y)

    def score(sigma: float) -> float:  # d log-likelihood / d sigma, times sigma: decreasing
        return float((1.0 + gamma) * (y / (sigma + gamma * y)).sum()) - n

    # The score is positive as sigma falls to its lower bound (0 for gamma > 0, where every term
    # tends to 1 / gamma; -gamma * max(y) for gamma < 0, where the largest term diverges) and tends
    # to -n as sigma grows.
    lo = gamma * float(y.min()) * 1e-6 if gamma > 0 else -gamma * float(y.max()) * (1.0 + 1e-9)
    hi = (1.0 + abs(gamma)) * float(y.sum()) + lo + _EPS
    return float(brentq(score, lo, hi))


def shrunk_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """The GPD fit of :func:`fit_gpd` with its shape shrunk towards 0 (the exponential tail) by a
    normal prior of standard deviation 0.2, and the scale refitted for that shape.

    The posterior mode is taken in the normal approximation: the shape's information from ``n``
    excesses is ``n / (1 + gamma)^2``. A few dozen peaks that happen to look heavy-tailed would
    otherwise put a threshold at risk 1e-4 orders of magnitude above anything seen, and an
    anomaly below it is then learned as normal (generalised maximum likelihood, as Martins and
    Stedinger (2000) proposed for the same small-sample failure). With thousands of peaks the
    data speak for themselves.

    >>> import numpy as np
    >>> y = np.random.default_rng(1).pareto(4.0, 5000)   # Lomax(4): gamma = 1/4
    >>> round(shrunk_gpd(y)[0], 2)
    0.24
    >>> round(fit_gpd(y[:30])[0], 2), round(shrunk_gpd(y[:30])[0], 2)   # 30 peaks hardly show one
    (0.62, 0.19)
    """
    y = np.asarray(excesses, dtype=np.float64)
    y = y[np.isfinite(y) & (y > 0)]
    gamma, sigma, _ = fit_gpd(y)
    if gamma == 0.0:
        return gamma, sigma
    information = len(y) / (1.0 + gamma) ** 2
    shrunk = gamma * information / (information + 1.0 / _SHAPE_PRIOR_SD**2)
    try:
        return shrunk, _sigma_for_shape(y, shrunk)
    except ValueError:  # no bracket found in floating point: keep the maximum-likelihood fit
        return gamma, sigma


def _gpd_log_survival(excess: np.ndarray, gamma: float, sigma: float) -> np.ndarray:
    """log P(Y > excess) for Y ~ GPD(gamma, sigma); ``-inf`` beyond a bounded tail's end.

    log1p, not a power of ``1 + gamma y / sigma``: for a shape within rounding of 0 the base
    rounds to 1 and the survival to 1 everywhere.
    """
    if gamma == 0.0:
        return np.asarray(-excess / sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = gamma * excess / sigma
        return np.asarray(np.where(z > -1.0, -np.log1p(np.maximum(z, -1.0 + 1e-300)) / gamma, -np.inf))


def _log_kept(limits: np.ndarray, gamma: float, sigma: float) -> np.ndarray:
    """log P(Y <= limit) for each limit (``-inf`` where none of the tail is kept)."""
    with np.errstate(divide="ignore"):
        return np.asarray(np.log(-np.expm1(_gpd_log_survival(limits, gamma, sigma))))


def fit_truncated_gpd(
    excesses: np.ndarray, limits: float | np.ndarray, start: tuple[float, float] | None = None
) -> tuple[float, float]:
    """:func:`shrunk_gpd` for excesses each observed only up to its limit (right-truncated).

    SPOT keeps the scores above its alert threshold out of the tail fit, so what it fits is a
    truncated sample, each score truncated at the threshold it was judged against. Fitted as if
    complete, such a sample looks bounded, the threshold falls towards the largest score kept, more
    scores lie beyond it, and the fit thins further: on a score distribution that widened, the
    alarm rate stayed hundreds of times the risk. The truncated likelihood
    ``sum log f(y_i) - sum log F(limit_i)`` extrapolates the tail from its shape below the limits
    instead. The shape's normal prior (sd 0.2) is :func:`shrunk_gpd`'s, here as an exact posterior
    mode, and the exponential tail is kept unless the likelihood-ratio test asks for a shape.
    ``start`` (a previous fit's shape and scale) only saves iterations.

    >>> import numpy as np
    >>> y = np.random.default_rng(0).exponential(2.0, 20000)   # Exp(scale 2), seen up to 3
    >>> seen = y[y <= 3.0]
    >>> round(shrunk_gpd(seen)[1], 1), round(fit_truncated_gpd(seen, 3.0)[1], 1)
    (1.9, 2.0)
    >>> round(shrunk_gpd(seen)[0], 1), fit_truncated_gpd(seen, 3.0)[0]   # bounded, if read as complete
    (-0.6, 0.0)
    """
    y = np.asarray(excesses, dtype=np.float64)
    c = np.broadcast_to(np.asarray(limits, dtype=np.float64), y.shape)
    keep = np.isfinite(y) & (y > 0)
    y, c = y[keep], c[keep]
    finite = np.isfinite(c)
    if len(y) < _MIN_PEAKS or not finite.any() or np.any(y > c):
        return shrunk_gpd(y)
    gamma, sigma = start if start is not None and start[1] > 0 else shrunk_gpd(y)
    u, counts = np.unique(c[finite], return_counts=True)
    counts = counts.astype(np.float64)
    precision = 1.0 / (2.0 * _SHAPE_PRIOR_SD**2)
    log_mean = math.log(float(y.mean()))
    log_sigma_exp, cost_exp = bounded_exponential_scale(y, u, counts, log_mean - 5.0, log_mean + 10.0)
    if not math.isfinite(shape_scale_cost(y, u, counts, precision, gamma, math.log(sigma))):
        gamma, sigma = shrunk_gpd(y)  # a previous fit whose bounded tail ends below a new peak
    # Shape and log-scale to 1e-3 are far finer than the sampling error of a thousand peaks.
    simplex = np.array([gamma, math.log(sigma)]) + np.array([[0.0, 0.0], [0.02, 0.0], [0.0, 0.02]])
    gamma, log_sigma, _ = nelder_mead_shape_scale(y, u, counts, precision, simplex, 1e-3, 1e-5)
    gain = truncated_log_likelihood(y, u, counts, gamma, math.exp(log_sigma)) + cost_exp
    if not 2.0 * gain >= _LR_CRITICAL:
        return 0.0, math.exp(log_sigma_exp)
    return gamma, math.exp(log_sigma)


def _sorted_quantile(s: np.ndarray, q: float) -> float:
    """``np.quantile(s, q)`` of an array already sorted, to the last bit, without its copy and
    partition of the whole window at every refit: numpy's linear interpolation between the two
    order statistics around ``(n - 1) q``.

    >>> s = np.sort(np.random.default_rng(0).normal(size=1001))
    >>> all(_sorted_quantile(s, q) == np.quantile(s, q) for q in (0.0, 0.5, 0.98, 0.9731, 1.0))
    True
    """
    n = len(s)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(s[-1])
    below = math.floor(virtual)
    gamma = virtual - below
    a, b = s[below], s[below + 1]
    diff = b - a
    # numpy interpolates from the nearer end (exact at both ends, monotone in q).
    return float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma)


def _tail_quantile(t: float, gamma: float, sigma: float, risk: float, n: float, n_peaks: float) -> float:
    """The score exceeded with probability ``risk`` (the POT quantile formula)."""
    r = risk * n / n_peaks
    if gamma == 0.0:
        return t - sigma * math.log(r)
    # expm1: for a shape within rounding of 0, r ** -gamma - 1 would round to 0 and z_q to t.
    return t + sigma * math.expm1(-gamma * math.log(r)) / gamma


def _tail_probability(excess: np.ndarray, gamma: float, sigma: float, peak_rate: float) -> np.ndarray:
    """P(S > t + excess) for excess >= 0, from the GPD fit."""
    return np.asarray(peak_rate * np.exp(_gpd_log_survival(excess, gamma, sigma)))


# --------------------------------------------------------------------------- recent scores


class _ScoreWindow:
    """The last ``size`` scores, in a ring, with a sorted copy for empirical tail probabilities."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values = np.empty(size, dtype=np.float64)
        self.n = 0
        self.pos = 0
        self._sorted: np.ndarray | None = None

    def push(self, x: np.ndarray) -> None:
        x = x[-self.size :]
        m = len(x)
        if m == 0:
            return
        # A small batch is merged into the sorted copy; a big one is cheaper to sort afresh later.
        if self._sorted is not None and m <= self.size // 8:
            self._sorted = self._resorted(x)
        else:
            self._sorted = None
        end = self.pos + m
        if end <= self.size:
            self.values[self.pos : end] = x
        else:
            cut = self.size - self.pos
            self.values[self.pos :] = x[:cut]
            self.values[: m - cut] = x[cut:]
        self.pos = end % self.size
        self.n = min(self.n + m, self.size)

    def _resorted(self, x: np.ndarray) -> np.ndarray | None:
        """The sorted copy after pushing ``x``: the scores it overwrites out, ``x`` in, in one
        merging pass (not a sort of the whole window per learning batch); None where the copy
        did not hold a score it should (then :meth:`sorted` sorts afresh)."""
        assert self._sorted is not None
        overwritten = max(self.n + len(x) - self.size, 0)
        # The last `overwritten` slots x lands on held data (the first ones may be empty).
        idx = (self.pos + len(x) - overwritten + np.arange(overwritten)) % self.size
        merged, complete = replace_sorted(self._sorted, np.sort(self.values[idx]), np.sort(x))
        return merged if complete else None

    def recent(self) -> np.ndarray:
        """Oldest first."""
        if self.n < self.size:
            return self.values[: self.n].copy()
        return np.concatenate([self.values[self.pos :], self.values[: self.pos]])

    def survival(self, scores: np.ndarray) -> np.ndarray:
        """Empirical P(S >= s) with the usual +1 correction, so it is never exactly 0."""
        above = self.n - np.searchsorted(self.sorted(), scores, side="left")
        return np.asarray((above + 1.0) / (self.n + 1.0))

    def sorted(self) -> np.ndarray:
        """The scores in increasing order (the window's own copy: do not modify it)."""
        if self._sorted is None:
            self._sorted = np.sort(self.values[: self.n])
        return self._sorted

    def to_state(self) -> list[float]:
        return self.recent().tolist()

    @classmethod
    def from_state(cls, size: int, values: list[float]) -> _ScoreWindow:
        w = cls(size)
        w.push(np.asarray(values, dtype=np.float64))
        return w


def _as_scores(scores: Any) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64).ravel()
    if np.isfinite(x).all():  # the common case, without nan_to_num's fixed cost on every round
        return x
    # A non-finite score means the model could not explain the window at all: most anomalous.
    return np.where(np.isnan(x), np.inf, x)


# --------------------------------------------------------------------------- SPOT


class _Limits:
    """The alert threshold each stretch of a window's scores was kept under, oldest first, as
    ``[limit, count]`` runs (z_q changes only at a refit, so there are few runs)."""

    def __init__(self) -> None:
        self.runs: list[list[float]] = []

    def push(self, limit: float, count: int, window_n: int) -> None:
        """Record ``count`` scores kept under ``limit``; the window now holds ``window_n``."""
        if count:
            if self.runs and self.runs[-1][0] == limit:
                self.runs[-1][1] += count
            else:
                self.runs.append([limit, float(count)])
        excess = sum(c for _, c in self.runs) - window_n  # scores the window has let go
        while excess > 0 and self.runs:
            drop = min(excess, self.runs[0][1])
            self.runs[0][1] -= drop
            excess -= drop
            if self.runs[0][1] == 0:
                self.runs.pop(0)

    def to_state(self) -> list[list[float | None]]:
        return [[None if math.isinf(limit) else limit, count] for limit, count in self.runs]

    @classmethod
    def from_state(cls, runs: list[list[Any]]) -> _Limits:
        obj = cls()
        obj.runs = [[math.inf if limit is None else float(limit), float(count)] for limit, count in runs]
        return obj


class SPOT:
    """Streaming peaks-over-threshold (Siffer et al., 2017) over a moving window of normal scores.

    Parameters
    ----------
    risk
        Probability that a normal score crosses the threshold (the alert budget per window).
    level
        Quantile of the recent normal scores above which scores are peaks (0.98 in the paper).
    n_init
        Scores collected before the first fit; no score is flagged before.
    max_excess
        Most peaks in a fit: with more, the peaks threshold rises to keep the largest ones.
    window
        Recent normal scores kept: the peaks threshold is their ``level`` quantile at every refit,
        the peaks are those above it, and below it probabilities are their empirical ranks.

    Examples
    --------
    >>> import numpy as np
    >>> s = SPOT(risk=1e-3, n_init=1000)
    >>> s.threshold, s.classify(np.array([1e9])).tolist()
    (inf, [False])
    >>> s.learn(np.random.default_rng(2).normal(size=5000))
    >>> 2.8 < s.threshold < 3.5   # N(0, 1): the exact 1e-3 quantile is 3.09
    True
    >>> s.probability(np.array([-5.0, 0.0, 3.09, 50.0])).round(2).tolist()
    [0.0, 0.5, 1.0, 1.0]
    """

    kind = "spot"

    def __init__(
        self, risk: float = 1e-4, level: float = 0.98, n_init: int = 2000, max_excess: int = 2000, window: int = 20000
    ) -> None:
        self.risk = risk
        self.level = level
        self.n_init = n_init
        self.max_excess = max_excess
        self.recent_ = _ScoreWindow(max(window, n_init))
        self.t_: float | None = None
        self.n_ = 0.0
        self.n_peaks_ = 0.0
        self.rate_ = 0.0
        self.gamma_ = 0.0
        self.sigma_ = 1.0
        self.z_ = math.inf
        self.n_fits_ = 0
        self._limits = _Limits()
        self._since_fit = 0
        # Calibration scores still in the window, and the normal scores learned since.
        self._provisional = 0
        self._since_calibration = 0

    @property
    def is_calibrated(self) -> bool:
        return self.t_ is not None

    @property
    def threshold(self) -> float:
        return self.z_

    def classify(self, scores: Any) -> np.ndarray:
        return np.asarray(_as_scores(scores) > self.z_)

    def decision(self) -> tuple[float, float] | None:
        """``(offset, z)``: :meth:`classify` flags each score alone as ``score - offset > z`` and
        :meth:`probability` is computed score by score (None where they are not: DSPOT)."""
        return 0.0, self.z_

    def calibrate(self) -> None:
        """End the calibration now, on the scores learned so far (fewer than ``n_init``)."""
        if not self.is_calibrated and self.recent_.n:
            self._calibrate(self.recent_.recent())

    def learn(self, scores: Any) -> None:
        x = _as_scores(scores)
        if not self.is_calibrated:
            self.recent_.push(x)
            if self.recent_.n >= self.n_init:
                self._calibrate(self.recent_.recent())
            return
        # Alarms (scores above z_q) never enter the window: a long anomaly would fatten the tail it
        # is judged against. What the window keeps is then a sample truncated at z_q (each score
        # at the z_q it was judged against), and the tail is fitted as one.
        normal = x[x <= self.z_]
        self.recent_.push(normal)
        self._limits.push(self.z_, len(normal), self.recent_.n)
        # A refit sorts nothing (the window keeps a sorted copy) but passes logarithms over its
        # peaks some fifty times: it waits for new scores worth 1/16 of the window.
        self._since_fit += len(normal)
        if self._provisional:
            self._since_calibration += len(normal)
            if self._since_calibration >= self._provisional and self._drop_calibration():
                return
        if self._since_fit >= self.recent_.n / _REFIT_FRACTION:
            start = (self.gamma_, self.sigma_) if self.n_peaks_ else None
            self._fit(self.recent_.recent(), self._limits.runs, self.recent_.sorted(), start)

    def _drop_calibration(self) -> bool:
        """Let the calibration's scores go once as many have been learned since, and refit;
        whether any were still in the window.

        They were scored by the mixture as its warm-up fitted it, before any stepwise update:
        the heaviest tail the model will have (a short series' first day of scores held a 2-key
        count series' threshold at 41-50 for a week where its later scores alone put it near
        30). The first alerts still need a calibrated threshold, so the sample serves until then.
        """
        overwritten = max(self._provisional + self._since_calibration - self.recent_.size, 0)
        held = max(self._provisional - overwritten, 0)
        self._provisional = 0
        if not held:
            return False
        kept = self.recent_.recent()[held:]
        self.recent_ = _ScoreWindow(self.recent_.size)
        self.recent_.push(kept)
        self._limits.push(self.z_, 0, self.recent_.n)  # pushing nothing trims the runs to the window
        self._fit(self.recent_.recent(), self._limits.runs, self.recent_.sorted(), None)
        return True

    def _calibrate(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        limit = math.inf
        q1, q3 = np.quantile(x, [0.25, 0.75])
        if q3 > q1 and x.max() > q3 + _GROSS_IQR * (q3 - q1):
            # A handful of gross anomalies would otherwise mask themselves by fattening the fit.
            limit = float(q3 + _GROSS_IQR * (q3 - q1))
            x = x[x <= limit]
        for _ in range(_CALIBRATION_ROUNDS):
            self._fit(x, [[limit, float(len(x))]], np.sort(x), None)
            if not self.rate_:  # no peak at all (constant scores): nothing to call outlying
                break
            # Anomalies in the calibration sample would fatten the tail they are judged against.
            # Drop the scores beyond the level that even one of n clean scores reaches only with
            # probability 0.1 (not beyond z_q itself: about q n clean scores lie there by definition).
            assert self.t_ is not None
            outlying = _tail_quantile(self.t_, self.gamma_, self.sigma_, min(self.risk, 0.1 / len(x)), 1.0, self.rate_)
            normal = x <= outlying
            if normal.all():
                break
            x, limit = x[normal], outlying
        # The window goes on from the cleaned sample, so later refits do not take the outliers back.
        self.recent_ = _ScoreWindow(self.recent_.size)
        self.recent_.push(x)
        self._limits = _Limits()
        self._limits.push(limit, len(x), self.recent_.n)
        self._provisional = len(x)
        self._since_calibration = 0

    def _fit(self, x: np.ndarray, runs: list[list[float]], s: np.ndarray, start: tuple[float, float] | None) -> None:
        """The peaks threshold, the tail fit and z_q from normal scores ``x`` (oldest first), kept
        in ``[limit, count]`` runs each only up to its limit; ``s`` is ``x`` sorted; ``start``
        a previous fit to start the search from."""
        n = len(s)
        # A generalised Pareto fit needs a few dozen peaks: with few scores, take the peaks
        # threshold lower than `level` rather than fit the tail to a handful.
        level = min(self.level, 1.0 - _MIN_PEAKS / max(n, 1))
        t = _sorted_quantile(s, max(level, 0.5))
        first = int(np.searchsorted(s, t, side="right"))
        if n - first > self.max_excess:
            first = n - self.max_excess
            t = float(s[first - 1])
        limits = np.array([limit for limit, _ in runs], dtype=np.float64)
        counts = np.array([count for _, count in runs], dtype=np.float64)
        peak = x > t
        # Peaks per run: a cumulative count read at the runs' boundaries.
        ends = np.cumsum(counts).astype(np.int64)
        peaks_before = np.concatenate([[0], np.cumsum(peak)])
        run_peaks = np.diff(np.concatenate([[0], peaks_before[ends]])).astype(np.float64)
        y, peak_limits = x[peak] - t, np.repeat(limits, run_peaks.astype(np.int64)) - t
        self.t_, self.n_, self.n_peaks_ = t, float(n), float(len(y))
        self.n_fits_ += 1
        self._since_fit = 0
        if len(y) == 0:
            # No peak above t at all (e.g. constant scores): nothing in the tail is normal.
            self.gamma_, self.sigma_, self.z_, self.rate_ = 0.0, _EPS, t + _EPS, 0.0
            return
        gamma, sigma = fit_truncated_gpd(y, peak_limits, start)
        self.gamma_, self.sigma_ = gamma, max(sigma, _EPS)
        self.rate_ = self._tail_rate(limits, counts, run_peaks, t)
        if not self.rate_:  # pragma: no cover - a peak above t was kept under a limit above t
            self.z_ = t + _EPS
            return
        z = _tail_quantile(t, self.gamma_, self.sigma_, self.risk, 1.0, self.rate_)
        self.z_ = z if np.isfinite(z) else float(s[-1])

    def _tail_rate(self, limits: np.ndarray, counts: np.ndarray, peaks: np.ndarray, t: float) -> float:
        """P(S > t) for clean scores: the peaks' share, plus the clean scores that the limits hid.

        A stretch of ``m`` scores kept up to a limit that keeps a fraction ``F`` of the tail came
        from ``m / (1 - p (1 - F))`` clean ones, of which ``p F`` are its peaks: ``p`` solves
        ``sum peaks = p sum F m / (1 - p (1 - F))`` (a few fixed-point steps; stretches whose
        limit is below ``t`` say nothing about ``p``)."""
        useful = limits > t
        if not peaks[useful].sum():
            return 0.0
        kept = np.exp(_log_kept(limits[useful] - t, self.gamma_, self.sigma_))
        m, peaks = counts[useful], peaks[useful]
        p = peaks.sum() / m.sum()
        for _ in range(8):
            p = float(peaks.sum() / (kept * m / (1.0 - p * (1.0 - kept))).sum())
        return min(p, 1.0)

    def probability(self, scores: Any) -> np.ndarray:
        x = _as_scores(scores)
        if self.recent_.n == 0:
            return np.full(len(x), 0.5)
        survival = self.recent_.survival(x)
        t = self.t_
        if t is not None and self.n_peaks_ > 0:
            tail = x > t
            if tail.any():
                survival[tail] = _tail_probability(x[tail] - t, self.gamma_, self.sigma_, self.rate_)
        return np.clip(1.0 - survival, 0.0, 1.0)

    def _params(self) -> dict[str, Any]:
        return {
            "risk": self.risk,
            "level": self.level,
            "n_init": self.n_init,
            "max_excess": self.max_excess,
            "window": self.recent_.size,
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "params": self._params(),
            "recent": self.recent_.to_state(),
            "t": self.t_,
            "n": self.n_,
            "n_peaks": self.n_peaks_,
            "rate": self.rate_,
            "gamma": self.gamma_,
            "sigma": self.sigma_,
            "z": None if math.isinf(self.z_) else self.z_,
            "n_fits": self.n_fits_,
            "limits": self._limits.to_state(),
            "since_fit": self._since_fit,
            "provisional": self._provisional,
            "since_calibration": self._since_calibration,
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        self.recent_ = _ScoreWindow.from_state(self.recent_.size, state["recent"])
        self.n_fits_ = int(state["n_fits"])
        if state["version"] == 1:
            # A fixed peaks threshold and its own buffer of peaks: refit from the window instead,
            # its scores taken as kept under the last z_q.
            if state["init_t"] is not None:
                self._limits.push(float(state["z"]), self.recent_.n, self.recent_.n)
                self._fit(self.recent_.recent(), self._limits.runs, self.recent_.sorted(), None)
            return
        self._limits = _Limits.from_state(state["limits"])
        self.t_ = state["t"]
        self.n_ = float(state["n"])
        self.n_peaks_ = float(state["n_peaks"])
        self.rate_ = float(state["rate"])
        self.gamma_ = float(state["gamma"])
        self.sigma_ = float(state["sigma"])
        self.z_ = math.inf if state["z"] is None else float(state["z"])
        self._since_fit = int(state["since_fit"])
        # A state saved before the calibration sample was provisional keeps it.
        self._provisional = int(state.get("provisional", 0))
        self._since_calibration = int(state.get("since_calibration", 0))

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SPOT:
        obj = cls(**state["params"])
        obj._load(state)
        return obj


class DSPOT(SPOT):
    """SPOT on the score minus the mean of the last ``depth`` normal scores (drifting score level).

    ``threshold`` is in score units: the local mean plus the SPOT threshold of the residuals.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> d = DSPOT(risk=1e-3, n_init=1000, depth=20)
    >>> for level in np.linspace(0, 30, 60):   # a slowly rising level that plain SPOT would flag
    ...     d.learn(level + rng.normal(size=100))
    >>> bool(d.classify(np.array([31.0]))[0]), bool(d.classify(np.array([40.0]))[0])
    (False, True)
    """

    kind = "dspot"

    def __init__(
        self,
        risk: float = 1e-4,
        level: float = 0.98,
        n_init: int = 2000,
        max_excess: int = 2000,
        window: int = 20000,
        depth: int = 50,
    ) -> None:
        super().__init__(risk, level, n_init, max_excess, window)
        self.depth = depth
        self.local_ = _ScoreWindow(depth)

    def _local_mean(self) -> float:
        return float(self.local_.values[: self.local_.n].mean()) if self.local_.n else 0.0

    @property
    def threshold(self) -> float:
        return self._local_mean() + self.z_

    def classify(self, scores: Any) -> np.ndarray:
        return np.asarray(self._residuals(_as_scores(scores)) > self.z_)

    def decision(self) -> None:
        return None  # a batch's residuals depend on its own earlier scores

    def learn(self, scores: Any) -> None:
        x = _as_scores(scores)
        if self.local_.n < self.depth:
            # The first `depth` scores only build the local mean.
            take = self.depth - self.local_.n
            self.local_.push(x[:take])
            x = x[take:]
            if len(x) == 0:
                return
        # The local mean moves within a batch: residuals against the mean of the preceding
        # `depth` normal scores, computed with a cumulative sum over the batch.
        residual = self._residuals(x)
        normal = residual <= self.z_
        super().learn(residual)
        self.local_.push(x[normal])

    def _residuals(self, x: np.ndarray) -> np.ndarray:
        """Each score minus the mean of the ``depth`` scores before it, as in a one-by-one stream.

        Within a batch the anomalies are not yet known, so the batch's own earlier scores all
        feed the running mean; anomalies are kept out of it from the next batch on.
        """
        if self.local_.n < self.depth:
            return x - self._local_mean()
        history = np.concatenate([self.local_.recent(), x])
        csum = np.concatenate([[0.0], np.cumsum(np.where(np.isfinite(history), history, 0.0))])
        start = len(history) - len(x)
        idx = np.arange(start, len(history))
        mean = (csum[idx] - csum[idx - self.depth]) / self.depth
        return np.asarray(x - mean)

    def probability(self, scores: Any) -> np.ndarray:
        return super().probability(self._residuals(_as_scores(scores)))

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "depth": self.depth}

    def to_state(self) -> dict[str, Any]:
        return {**super().to_state(), "local": self.local_.to_state()}

    def _load(self, state: Mapping[str, Any]) -> None:
        super()._load(state)
        self.local_ = _ScoreWindow.from_state(self.depth, state["local"])


class QuantileThreshold:
    """The rolling ``1 - risk`` empirical quantile of the last ``window`` scores.

    Simple and assumption-free, but a quantile at level p needs about ``10 / (1 - p)`` scores in
    the window to be stable; below that prefer SPOT, which extrapolates the tail.

    Examples
    --------
    >>> import numpy as np
    >>> q = QuantileThreshold(risk=0.01, n_init=100, window=1000)
    >>> q.learn(np.arange(1000.0))
    >>> q.threshold, q.classify(np.array([980.0, 995.0])).tolist()
    (989.01, [False, True])
    """

    kind = "quantile"

    def __init__(self, risk: float = 1e-4, n_init: int = 2000, window: int = 20000) -> None:
        self.risk = risk
        self.n_init = n_init
        self.recent_ = _ScoreWindow(window)
        self._quantile = river_stats.RollingQuantile(q=1.0 - risk, window_size=window)

    @property
    def is_calibrated(self) -> bool:
        return self.recent_.n >= self.n_init

    @property
    def threshold(self) -> float:
        if not self.is_calibrated:
            return math.inf
        value = self._quantile.get()
        return math.inf if value is None else float(value)

    def classify(self, scores: Any) -> np.ndarray:
        return np.asarray(_as_scores(scores) > self.threshold)

    def decision(self) -> tuple[float, float] | None:
        return 0.0, self.threshold

    def calibrate(self) -> None:
        """End the calibration now, on the scores learned so far (fewer than ``n_init``)."""
        if self.recent_.n:
            self.n_init = min(self.n_init, self.recent_.n)

    def learn(self, scores: Any) -> None:
        x = _as_scores(scores)
        x = x[np.isfinite(x)]
        self.recent_.push(x)
        update = self._quantile.update
        for v in x.tolist():
            update(v)

    def probability(self, scores: Any) -> np.ndarray:
        x = _as_scores(scores)
        if self.recent_.n == 0:
            return np.full(len(x), 0.5)
        return np.clip(1.0 - self.recent_.survival(x), 0.0, 1.0)

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "params": {"risk": self.risk, "n_init": self.n_init, "window": self.recent_.size},
            "recent": self.recent_.to_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> QuantileThreshold:
        obj = cls(**state["params"])
        obj.learn(np.asarray(state["recent"], dtype=np.float64))
        return obj


def make_threshold(config: ThresholdConfig | None = None) -> SPOT | DSPOT | QuantileThreshold:
    """The threshold that ``config.method`` names."""
    c = config or ThresholdConfig()
    if c.method == "quantile":
        return QuantileThreshold(risk=c.risk, n_init=c.n_init, window=c.window)
    if c.method == "dspot":
        return DSPOT(c.risk, c.level, c.n_init, c.max_excess, c.window, c.depth)
    return SPOT(c.risk, c.level, c.n_init, c.max_excess, c.window)


_KINDS: dict[str, type[SPOT] | type[QuantileThreshold]] = {"spot": SPOT, "dspot": DSPOT, "quantile": QuantileThreshold}


def threshold_from_state(state: Mapping[str, Any]) -> SPOT | DSPOT | QuantileThreshold:
    """Rebuild a threshold saved with ``to_state()``."""
    kind = state.get("kind")
    if kind not in _KINDS or state.get("version") not in (1, STATE_VERSION):
        raise ConfigError(f"unknown threshold state (kind {kind!r}, version {state.get('version')!r})")
    return _KINDS[kind].from_state(state)
