"""``StepwiseGMM``: an online (stepwise-EM) Gaussian mixture with full covariances.

See ``/work/shared/notes/stepwise-em-and-thresholds.md`` §1–2 for the algorithm; the numerical steps
live in :mod:`streamdetect.model._em`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamdetect.model._em import (
    Derived,
    Statistics,
    _augment,
    _blend_statistics,
    _em,
    _estimate_resp,
    _estimate_statistics,
    _estimate_weighted_log_prob,
    _logsumexp,
    _m_step,
    _n_parameters,
)

__all__ = ["Explanation", "NotFittedError", "StepwiseGMM"]

STATE_FORMAT = "streamdetect.StepwiseGMM"
STATE_VERSION = 1

_LL_SMOOTHING = 0.1  # EWMA rate of mean_log_likelihood_ per learning batch
_MAX_BOOSTED_STEP = 0.2  # a boosted step floor never exceeds this (unless step_floor itself does)
_MIN_WEIGHT = 1e-3  # a component lighter than this is dead (re-seeded)
_RESEED_EVERY = 10  # at most one re-seed per this many updates
_BIC_MARGIN = 10.0  # "auto": smallest K whose BIC is within this of the minimum
_MIN_SCALE = 1e-12


class NotFittedError(ValueError, AttributeError):
    """The model has not seen its warm-up data yet (same bases as scikit-learn's)."""


@dataclass(frozen=True)
class Explanation:
    """Per-row explanation under the most responsible component.

    ``component`` (n,) its index; ``z`` (n, d) the deviation ``(x_j - mu_kj) / sqrt(Sigma_kjj)``;
    ``expected`` (n, d) that component's mean ``mu_k``.
    """

    component: np.ndarray
    z: np.ndarray
    expected: np.ndarray


def _as_2d(X: Any, n_features: int | None, names: list[str] | None = None) -> np.ndarray:
    """A float64 (n, d) view/copy of X; a pandas DataFrame is reordered by ``names`` if known."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):
        if names is not None:
            X = X[names]
        X = X.to_numpy(dtype=np.float64)
    A = np.asarray(X, dtype=np.float64)
    if A.ndim == 1:
        A = A.reshape(1, -1)
    if A.ndim != 2:
        raise ValueError(f"expected a 2-D array of shape (n_samples, n_features), got shape {A.shape}")
    if n_features is not None and A.shape[1] != n_features:
        raise ValueError(f"X has {A.shape[1]} features, but the model was built for {n_features}")
    return A


def _float_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _none_to_nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


class StepwiseGMM:
    """Online Gaussian mixture with full covariances, learned by stepwise EM.

    The first ``warmup`` vectors are buffered; then a batch EM fit (k-means++ seeding, ``n_init``
    restarts, best log-likelihood kept) starts the model. Each later :meth:`partial_fit` mini-batch
    blends its expected sufficient statistics into the model's with the step
    ``eta_t = max((t + t0)^-alpha, step_floor)`` (t counts updates), then runs the M-step.

    Internally the features are centred and scaled by the warm-up mean and standard deviation (an
    affine change of coordinates the model undoes in every output), so that raw inputs of order
    1e12 stay well conditioned; ``reg_covar`` is added to covariance diagonals in these units.

    Parameters
    ----------
    n_components : int or "auto"
        Number of components, or ``"auto"`` to choose K in ``1..max_components`` by BIC on the
        warm-up data: the smallest K within 10 of the minimum BIC, rejecting any K that has a
        component with ``N * pi_k < d + 2``.
    max_components : int
        Upper bound for ``"auto"``.
    step_exponent : float
        alpha in ``(t + t0)^-alpha``, ``0.5 < alpha <= 1``.
    step_floor : float
        Smallest step, in (0, 1): the memory is about ``1 / step_floor`` updates, so the model keeps
        tracking a drifting stream. :meth:`boost` raises it for a while.
    reg_covar : float
        Added to the covariance diagonals (standardised units), >= 0.
    min_variance : float or sequence of float
        The least variance a component may have along each feature, in input units (one number,
        or one per feature), >= 0: what ``reg_covar`` cannot say where a feature barely moved in
        the warm-up, which the internal standardisation blows up (a feature at one value for
        all but a few rows would make any later move of a few hundredths hundreds of standard
        deviations). Where it is larger than ``reg_covar`` in standardised units it replaces it.
    warmup : int
        Vectors buffered before the first fit (>= 2).
    n_init : int
        k-means++ restarts of each batch fit.
    max_iter, tol : int, float
        Batch EM stops when the mean log-likelihood gains less than ``tol`` (or after ``max_iter``).
    learn_batch : int
        :meth:`learn_one` buffers rows and learns them as one mini-batch of this many rows.
    seed : int or None
        Seed of the generator used for seeding and re-seeding (its state is part of the state).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-3, 1, (2000, 2)), rng.normal(3, 1, (2000, 2))])
    >>> rng.shuffle(X)
    >>> gmm = StepwiseGMM(n_components="auto", warmup=1000, seed=0)
    >>> _ = gmm.partial_fit(X[:1000])          # the warm-up: buffered, then a batch fit
    >>> gmm.is_fitted, len(gmm.weights_)
    (True, 2)
    >>> for i in range(1000, 4000, 500):
    ...     nll = gmm.partial_fit(X[i:i + 500])   # test-then-train: NLL before the update
    >>> gmm.n_updates_
    6
    >>> np.sort(gmm.means_[:, 0]).round(0).tolist()
    [-3.0, 3.0]
    >>> bool(gmm.anomaly_score(np.array([[0.0, 10.0]]))[0] > gmm.anomaly_score(np.array([[3.0, 3.0]]))[0])
    True
    >>> StepwiseGMM.from_state(gmm.to_state()).to_state() == gmm.to_state()
    True
    """

    def __init__(
        self,
        n_components: int | Literal["auto"] = "auto",
        *,
        max_components: int = 6,
        step_exponent: float = 0.6,
        step_floor: float = 2e-3,
        reg_covar: float = 1e-6,
        min_variance: float | Sequence[float] = 0.0,
        warmup: int = 1000,
        n_init: int = 3,
        max_iter: int = 100,
        tol: float = 1e-3,
        learn_batch: int = 256,
        seed: int | None = 0,
    ) -> None:
        if n_components != "auto" and not (
            isinstance(n_components, int | np.integer) and not isinstance(n_components, bool) and n_components >= 1
        ):
            raise ValueError(f"n_components must be a positive integer or 'auto', got {n_components!r}")
        if not (isinstance(max_components, int | np.integer) and max_components >= 1):
            raise ValueError(f"max_components must be a positive integer, got {max_components!r}")
        if not 0.5 < step_exponent <= 1.0:
            raise ValueError(f"step_exponent must be in (0.5, 1], got {step_exponent!r}")
        if not 0.0 < step_floor < 1.0:
            raise ValueError(f"step_floor must be in (0, 1), got {step_floor!r}")
        if not (reg_covar >= 0.0 and math.isfinite(reg_covar)):
            raise ValueError(f"reg_covar must be a finite number >= 0, got {reg_covar!r}")
        floor = np.asarray(min_variance, dtype=np.float64)
        if floor.ndim > 1 or not (np.isfinite(floor).all() and (floor >= 0.0).all()):
            raise ValueError(f"min_variance must be a number >= 0 or a sequence of them, got {min_variance!r}")
        for name, value, low in (("warmup", warmup, 2), ("n_init", n_init, 1), ("max_iter", max_iter, 1),
                                 ("learn_batch", learn_batch, 1)):  # fmt: skip
            if not (isinstance(value, int | np.integer) and value >= low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not tol > 0.0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        self.n_components = n_components if n_components == "auto" else int(n_components)
        self.max_components = int(max_components)
        self.step_exponent = float(step_exponent)
        self.step_floor = float(step_floor)
        self.reg_covar = float(reg_covar)
        self.min_variance: float | tuple[float, ...] = float(floor) if floor.ndim == 0 else tuple(floor.tolist())
        self.warmup = int(warmup)
        self.n_init = int(n_init)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.learn_batch = int(learn_batch)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._reset()

    def _reset(self) -> None:
        self.n_features_in_: int | None = None
        self.feature_names_in_: list[str] | None = None
        self._buffer_X: list[np.ndarray] = []
        self._buffer_w: list[np.ndarray] = []
        self._buffered = 0
        self._pending: list[np.ndarray] = []
        self._stats: Statistics | None = None
        self._derived: Derived | None = None
        # (values, model, ZT1, ll, resp) of the last batch scored: see score_samples
        self._scored: tuple[np.ndarray, Derived, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._shift = np.zeros(0)
        self._scale = np.ones(0)
        self._t = 0  # schedule counter (updates since the last batch fit)
        self._t0: float | None = None  # set at the first update after the batch fit
        self._n_fit = 0.0  # weight of the data behind the batch fit (N_w)
        self.n_updates_ = 0
        self.n_samples_seen_ = 0.0
        self.mean_log_likelihood_ = float("nan")
        self.converged_ = False
        self.n_iter_ = 0
        self.step_ = float("nan")
        self.n_reseeds_ = 0
        self.n_repairs_ = 0
        self._last_reseed = -_RESEED_EVERY
        self._boost_factor = 1.0
        self._boost_half_life = 1.0
        self._boost_age = 0
        self.bic_: dict[int, float] = {}

    # ------------------------------------------------------------------ fitted attributes
    @property
    def is_fitted(self) -> bool:
        """True once the warm-up fit (or :meth:`fit`) has run."""
        return self._derived is not None

    def _check_fitted(self) -> Derived:
        if self._derived is None:
            raise NotFittedError(
                f"StepwiseGMM is not fitted yet: it has buffered {self._buffered} of the {self.warmup} warm-up "
                "vectors; call fit() or keep calling partial_fit(), or check is_fitted first"
            )
        return self._derived

    @property
    def weights_(self) -> np.ndarray:
        """Mixture weights, shape (K,)."""
        return np.exp(self._check_fitted().log_weights)

    @property
    def means_(self) -> np.ndarray:
        """Component means in input units, shape (K, d)."""
        return self._check_fitted().means * self._scale + self._shift

    @property
    def covariances_(self) -> np.ndarray:
        """Component covariances in input units (reg_covar and any repair included), (K, d, d)."""
        return self._check_fitted().covariances * np.outer(self._scale, self._scale)

    @property
    def precisions_cholesky_(self) -> np.ndarray:
        """``P_k`` (upper triangular) with ``P_k P_k^T = covariances_[k]^-1``, as scikit-learn's, (K, d, d)."""
        return self._check_fitted().prec_chol / self._scale[None, :, None]

    @property
    def n_components_(self) -> int:
        """The number of components in use (chosen by BIC for ``"auto"``)."""
        return len(self._check_fitted().log_weights)

    @property
    def step_floor_(self) -> float:
        """The step floor in force now (``step_floor``, raised by :meth:`boost`)."""
        extra = (self._boost_factor - 1.0) * 0.5 ** (self._boost_age / self._boost_half_life)
        floor = self.step_floor * (1.0 + extra)
        return min(floor, max(self.step_floor, _MAX_BOOSTED_STEP))

    @property
    def n_buffered_(self) -> int:
        """Vectors waiting in the warm-up buffer."""
        return self._buffered

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, sample_weight: Any = None) -> StepwiseGMM:
        """Batch EM on X (replacing anything learned so far); the warm-up fit uses the same path.

        Rows with non-finite values are dropped. With ``n_components="auto"`` K is chosen by BIC.
        """
        A = _as_2d(X, None)
        w = self._check_weight(sample_weight, len(A))
        keep = np.isfinite(A).all(axis=1) & (w > 0)
        A, w = A[keep], w[keep]
        if len(A) < 2:
            raise ValueError(f"fit needs at least 2 rows with finite values and positive weight, got {len(A)}")
        d = A.shape[1]
        names, pending_seen = self.feature_names_in_, self.n_features_in_
        rng = self._rng
        self._reset()
        self._rng = rng
        if pending_seen == d:
            self.feature_names_in_ = names
        self.n_features_in_ = d
        wsum = float(w.sum())
        shift = (w @ A) / wsum
        std = np.sqrt(np.maximum((w @ (A - shift) ** 2) / wsum, 0.0))
        self._shift = shift
        self._scale = np.where(std > _MIN_SCALE * np.maximum(1.0, np.abs(shift)), std, 1.0)
        ZT1 = _augment(A, self._shift, self._scale)
        n_distinct = len(np.unique(A, axis=0)) if len(A) <= 100_000 else len(A)
        if self.n_components == "auto":
            candidates = range(1, min(self.max_components, n_distinct) + 1)
        else:
            candidates = range(min(int(self.n_components), n_distinct), min(int(self.n_components), n_distinct) + 1)
        results = {}
        log_n = math.log(wsum)
        for K in candidates:
            res = _em(ZT1, w, K, self._reg_diagonal(), rng, self.n_init, self.max_iter, self.tol)
            results[K] = res
            self.bic_[K] = -2.0 * res.mean_log_likelihood * wsum + _n_parameters(K, d) * log_n
        K = self._choose_k(results, wsum, d)
        best = results[K]
        self._stats = best.stats
        self.converged_, self.n_iter_ = best.converged, best.n_iter
        self._n_fit = wsum
        self.n_samples_seen_ = wsum
        self._update_derived()
        ll = self._log_likelihood_internal(ZT1)
        self.mean_log_likelihood_ = float(w @ ll) / wsum
        return self

    def _choose_k(self, results: Mapping[int, Any], n: float, d: int) -> int:
        if len(results) == 1:
            return next(iter(results))
        ok = [K for K, r in results.items() if K == 1 or float(r.stats.s0.min()) * n >= d + 2]
        best = min(self.bic_[K] for K in ok)
        return min(K for K in ok if self.bic_[K] <= best + _BIC_MARGIN)

    def partial_fit(self, X: Any, sample_weight: Any = None) -> np.ndarray:
        """Learn one mini-batch; return each row's NLL under the model *before* the update.

        Before the model is fitted the rows are only buffered (the returned NLL is NaN); once
        ``warmup`` vectors are buffered the batch fit runs. Rows with non-finite values are never
        learned (their NLL is NaN). ``sample_weight`` (n,) in [0, inf) down-weights rows; 0 excludes.
        """
        A = _as_2d(X, self.n_features_in_, self.feature_names_in_)
        self._flush_pending()
        return self._partial_fit(A, self._check_weight(sample_weight, len(A)))

    def _partial_fit(self, A: np.ndarray, w: np.ndarray) -> np.ndarray:
        n = len(A)
        out = np.full(n, np.nan)
        if n == 0:
            return out
        if self.n_features_in_ is None:
            self.n_features_in_ = A.shape[1]
        finite = np.isfinite(A).all(axis=1)
        if self._derived is None:
            keep = finite & (w > 0)
            if keep.any():
                self._buffer_X.append(A[keep].copy())
                self._buffer_w.append(w[keep].copy())
                self._buffered += int(keep.sum())
            if self._buffered >= self.warmup:
                BX, Bw = np.concatenate(self._buffer_X), np.concatenate(self._buffer_w)
                self.fit(BX, Bw)
            return out
        cached = self._take_scored(A)
        if cached is not None:
            ZT1, ll, resp = cached
        else:
            if not finite.all():
                A, w = A[finite], w[finite]
            ZT1 = _augment(A, self._shift, self._scale)
            ll, resp = _estimate_resp(ZT1, self._derived)
        out[finite] = -ll
        wsum = float(w.sum())
        if len(ll):
            batch_mean = float(ll.mean())
            self.mean_log_likelihood_ += _LL_SMOOTHING * (batch_mean - self.mean_log_likelihood_)
        if wsum <= 0.0:
            return out
        resp *= w
        batch = _estimate_statistics(ZT1[:-1], resp)
        if self._t0 is None:
            self._t0 = max((self._n_fit / wsum) ** (1.0 / self.step_exponent) - 1.0, 0.0)
        self._t += 1
        eta = max((self._t + self._t0) ** -self.step_exponent, self.step_floor_)
        self.step_ = eta
        assert self._stats is not None
        self._stats = _blend_statistics(self._stats, batch, eta)
        self.n_updates_ += 1
        self.n_samples_seen_ += wsum
        self._boost_age += 1
        self._update_derived()
        self._maybe_reseed(ZT1, -ll, w, eta, wsum)
        return out

    def _reg_diagonal(self) -> np.ndarray:
        """What each covariance diagonal gets, in the internal units: ``reg_covar``, or
        ``min_variance`` where that is more."""
        floor = np.asarray(self.min_variance, dtype=np.float64)
        if floor.ndim and len(floor) != len(self._scale):
            raise ValueError(f"min_variance has {len(floor)} values for {len(self._scale)} features")
        out: np.ndarray = np.maximum(self.reg_covar, floor / self._scale**2)
        return out

    def _update_derived(self) -> None:
        assert self._stats is not None
        # log-likelihoods come out in input units: fold the coordinate change into log|Sigma|
        derived = _m_step(self._stats, self._reg_diagonal(), -float(np.log(self._scale).sum()))
        self.n_repairs_ += int(derived.repaired.sum())
        self._derived = derived

    def _maybe_reseed(self, ZT1: np.ndarray, nll: np.ndarray, w: np.ndarray, eta: float, wsum: float) -> None:
        """Re-seed one dead component where the model explains the batch worst (notes §2.5)."""
        assert self._stats is not None and self._derived is not None
        if self.n_updates_ - self._last_reseed < _RESEED_EVERY:
            return
        s0 = self._stats.s0
        K, d = self._stats.mean.shape
        if K < 2:
            return
        n_eff = min(self.n_samples_seen_, (2.0 - eta) * wsum / eta)
        dead = (s0 < _MIN_WEIGHT) | (s0 * n_eff < d + 2) | self._derived.repaired
        if not dead.any():
            return
        k = int(np.argmin(np.where(dead, s0, np.inf)))
        cand = np.flatnonzero(w > 0)
        excess = nll[cand] - nll[cand].min()
        p = excess / excess.sum() if excess.sum() > 0 else None
        x = ZT1[:-1, cand[int(self._rng.choice(len(cand), p=p))]].copy()
        # new covariance: the mixture's overall covariance / K^(2/d) (notes §2.5)
        mass = s0 / s0.sum()
        centre = mass @ self._stats.mean
        dm = self._stats.mean - centre
        glob = self._stats.scatter.sum(axis=0) / s0.sum() + (mass[:, None] * dm).T @ dm
        glob = 0.5 * (glob + glob.T) / K ** (2.0 / d)
        w_new = 1.0 / (2.0 * K)
        others = (1.0 - w_new) / max(1.0 - float(s0[k]), 1e-300)
        new_s0 = s0 * others
        new_s0[k] = w_new
        new_mean = self._stats.mean.copy()
        new_mean[k] = x
        new_scatter = self._stats.scatter * others
        new_scatter[k] = w_new * glob
        self._stats = Statistics(new_s0, new_mean, new_scatter)
        self._last_reseed = self.n_updates_
        self.n_reseeds_ += 1
        self._update_derived()

    def _take_scored(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The E-step kept by :meth:`score_samples` if it was of exactly ``A`` under the current model."""
        scored, self._scored = self._scored, None
        if scored is None:
            return None
        SA, derived, ZT1, ll, resp = scored
        if derived is not self._derived or SA.shape != A.shape or not np.array_equal(SA, A):
            return None
        return ZT1, ll, resp

    # ------------------------------------------------------------------ drift
    def boost(self, factor: float, half_life: float) -> None:
        """Multiply the step floor by ``factor`` now, decaying back with ``half_life`` updates.

        Called by the detector on score drift; a boost never lowers a stronger boost in progress,
        and the boosted floor is capped at 0.2 (unless ``step_floor`` is larger already).

        >>> m = StepwiseGMM(step_floor=0.01)
        >>> m.boost(10.0, 20.0)
        >>> round(m.step_floor_, 6)
        0.1
        """
        if not (factor >= 1.0 and math.isfinite(factor)):
            raise ValueError(f"boost factor must be a finite number >= 1, got {factor!r}")
        if not (half_life > 0.0 and math.isfinite(half_life)):
            raise ValueError(f"boost half_life must be a finite number > 0, got {half_life!r}")
        current = self.step_floor_ / self.step_floor
        if factor >= current:
            self._boost_factor, self._boost_half_life, self._boost_age = float(factor), float(half_life), 0

    # ------------------------------------------------------------------ scoring
    def _log_likelihood_internal(self, ZT1: np.ndarray) -> np.ndarray:
        return _logsumexp(_estimate_weighted_log_prob(ZT1, self._check_fitted()))

    def _standardise(self, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
        self._check_fitted()
        A = _as_2d(X, self.n_features_in_, self.feature_names_in_)
        finite = np.isfinite(A).all(axis=1)
        if finite.all():
            return _augment(A, self._shift, self._scale), None
        return _augment(A[finite], self._shift, self._scale), finite

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood ``log p(x)`` of each row, shape (n,); NaN for rows with non-finite values.

        The E-step of the last all-finite batch scored is kept: a :meth:`partial_fit` of the same
        values under the same model (test-then-train: score, then learn) reuses it instead of
        computing it again. The result is the same bit for bit either way.
        """
        derived = self._check_fitted()
        A = _as_2d(X, self.n_features_in_, self.feature_names_in_)
        if np.isfinite(A).all():
            ZT1 = _augment(A, self._shift, self._scale)
            ll, resp = _estimate_resp(ZT1, derived)
            self._scored = (A.copy(), derived, ZT1, ll, resp)
            return ll.copy()
        Z, finite = self._standardise(A)
        ll = self._log_likelihood_internal(Z)
        if finite is None:
            return ll
        out = np.full(len(finite), np.nan)
        out[finite] = ll
        return out

    def scoring_params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(shift, scale, proj, const)``: what :meth:`score_samples` computes a row's
        log-likelihood from (the model's standardisation ``(x - shift) / scale``, then
        ``_estimate_weighted_log_prob``'s stacked projections and constants), for compiled scorers."""
        derived = self._check_fitted()
        return self._shift, self._scale, derived.proj, derived.const

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Negative log-likelihood of each row (higher = more anomalous), shape (n,)."""
        return -self.score_samples(X)

    def score(self, X: Any) -> float:
        """Mean log-likelihood of the finite rows of X (as scikit-learn's ``score``)."""
        ll = self.score_samples(X)
        return float(np.nanmean(ll))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities ``P(k | x)``, shape (n, K) (rows with non-finite values: NaN)."""
        Z, finite = self._standardise(X)
        _, resp_t = _estimate_resp(Z, self._check_fitted())
        resp = resp_t.T
        if finite is None:
            return resp
        out = np.full((len(finite), resp.shape[1]), np.nan)
        out[finite] = resp
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Index of the most responsible component per row (-1 for rows with non-finite values)."""
        Z, finite = self._standardise(X)
        labels = np.argmax(_estimate_weighted_log_prob(Z, self._check_fitted()), axis=0)
        if finite is None:
            return labels
        out = np.full(len(finite), -1, dtype=np.int64)
        out[finite] = labels
        return out

    def explain(self, X: Any) -> Explanation:
        """Per-feature deviations under each row's most responsible component.

        >>> import numpy as np
        >>> m = StepwiseGMM(n_components=1, seed=0).fit(np.random.default_rng(1).normal(0, 2, (500, 2)))
        >>> e = m.explain(np.array([[0.0, 20.0]]))
        >>> e.component.tolist(), bool(e.z[0, 1] > 8), e.expected.shape
        ([0], True, (1, 2))
        """
        labels = self.predict(X)
        A = _as_2d(X, self.n_features_in_, self.feature_names_in_)
        means = self.means_
        sd = np.sqrt(np.diagonal(self.covariances_, axis1=1, axis2=2))
        safe = np.maximum(labels, 0)
        expected = means[safe]
        z = (A - expected) / sd[safe]
        bad = labels < 0
        if bad.any():
            z[bad] = np.nan
            expected[bad] = np.nan
        return Explanation(component=labels, z=z, expected=expected)

    # ------------------------------------------------------------------ river-style API
    def _row_from_dict(self, x: Mapping[str, Any]) -> np.ndarray:
        if self.feature_names_in_ is None:
            if self.n_features_in_ is not None and self.n_features_in_ != len(x):
                raise ValueError(f"x has {len(x)} features, but the model was built for {self.n_features_in_}")
            self.feature_names_in_ = [str(k) for k in x]
            self.n_features_in_ = len(x)
        try:
            return np.array([float(x[k]) for k in self.feature_names_in_], dtype=np.float64)
        except KeyError as err:
            raise KeyError(f"feature {err.args[0]!r} is missing from x") from None

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn one vector given as a dict (feature order fixed by the first dict seen).

        Rows are buffered and learned as one :meth:`partial_fit` mini-batch every ``learn_batch``
        rows (sooner while the warm-up buffer is filling, so the warm-up fit happens on time).
        Call :meth:`flush` to learn a partial batch now.
        """
        self._learn_row(self._row_from_dict(x))

    def _learn_row(self, row: np.ndarray) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.learn_batch or (
            not self.is_fitted and self._buffered + len(self._pending) >= self.warmup
        ):
            self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending:
            rows = np.vstack(self._pending)
            self._pending = []
            self._partial_fit(rows, np.ones(len(rows)))

    def flush(self) -> None:
        """Learn the rows :meth:`learn_one` has buffered so far."""
        self._flush_pending()

    def score_one(self, x: Mapping[str, Any]) -> float:
        """Anomaly score (NLL, higher = more anomalous) of one dict; raises NotFittedError before warm-up."""
        self._check_fitted()
        return float(self.anomaly_score(self._row_from_dict(x)[None, :])[0])

    def learn_many(self, X: Any, sample_weight: Any = None) -> None:
        """Learn a 2-D array or a pandas DataFrame (columns matched by name once names are known)."""
        if self.feature_names_in_ is None and hasattr(X, "columns"):
            self.feature_names_in_ = [str(c) for c in X.columns]
            self.n_features_in_ = len(self.feature_names_in_)
        self.partial_fit(X, sample_weight)

    # ------------------------------------------------------------------ merge
    def merge(self, other: StepwiseGMM, weight: float | None = None) -> StepwiseGMM:
        """A new model whose statistics are ``(1 - weight) * self + weight * other``.

        ``weight`` defaults to other's share of the samples seen. With the same K, components are
        matched (Hungarian assignment on the distance between means) and their centred statistics
        combined exactly; otherwise the result is the mixture of both mixtures (K1 + K2 components).
        Both models must be fitted on the same features.
        """
        a, b = self._check_fitted(), other._check_fitted()
        if self.n_features_in_ != other.n_features_in_:
            raise ValueError("cannot merge models over different numbers of features")
        if weight is None:
            weight = other.n_samples_seen_ / (self.n_samples_seen_ + other.n_samples_seen_)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")
        assert self._stats is not None and other._stats is not None
        del a, b
        # other's statistics in self's internal coordinates
        ratio = other._scale / self._scale
        o_mean = (other._stats.mean * other._scale + other._shift - self._shift) / self._scale
        o_scatter = other._stats.scatter * np.outer(ratio, ratio)
        o = Statistics(other._stats.s0.copy(), o_mean, o_scatter)
        s = self._stats
        if len(s.s0) == len(o.s0):
            cost = ((s.mean[:, None, :] - o.mean[None, :, :]) ** 2).sum(axis=2)
            _, perm = linear_sum_assignment(cost)
            merged = _blend_statistics(s, Statistics(o.s0[perm], o.mean[perm], o.scatter[perm]), float(weight))
        else:
            merged = Statistics(
                np.concatenate([(1.0 - weight) * s.s0, weight * o.s0]),
                np.concatenate([s.mean, o.mean]),
                np.concatenate([(1.0 - weight) * s.scatter, weight * o.scatter]),
            )
        out = StepwiseGMM.from_state(self.to_state())
        out._stats = merged
        out.n_samples_seen_ = self.n_samples_seen_ + other.n_samples_seen_
        out.n_updates_ = self.n_updates_ + other.n_updates_
        out._n_fit = out.n_samples_seen_
        out._t, out._t0 = 0, None
        out.mean_log_likelihood_ = (1.0 - weight) * self.mean_log_likelihood_ + weight * other.mean_log_likelihood_
        out._update_derived()
        return out

    # ------------------------------------------------------------------ state
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters."""
        return {
            "n_components": self.n_components,
            "max_components": self.max_components,
            "step_exponent": self.step_exponent,
            "step_floor": self.step_floor,
            "reg_covar": self.reg_covar,
            "min_variance": list(self.min_variance) if isinstance(self.min_variance, tuple) else self.min_variance,
            "warmup": self.warmup,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "learn_batch": self.learn_batch,
            "seed": self.seed,
        }

    def to_state(self) -> dict[str, Any]:
        """A plain, versioned dict (lists, numbers, strings; no pickle) that round-trips exactly."""
        bg = self._rng.bit_generator.state
        if bg["bit_generator"] != "PCG64":
            raise TypeError("only the PCG64 generator state is serialisable")
        stats = self._stats
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "feature_names_in": self.feature_names_in_,
            "buffer": {
                "X": np.concatenate(self._buffer_X).tolist() if self._buffer_X else [],
                "w": np.concatenate(self._buffer_w).tolist() if self._buffer_w else [],
            },
            "pending": np.vstack(self._pending).tolist() if self._pending else [],
            "shift": self._shift.tolist(),
            "scale": self._scale.tolist(),
            "stats": None
            if stats is None
            else {"s0": stats.s0.tolist(), "mean": stats.mean.tolist(), "scatter": stats.scatter.tolist()},
            "t": self._t,
            "t0": self._t0,
            "n_fit": self._n_fit,
            "n_updates": self.n_updates_,
            "n_samples_seen": self.n_samples_seen_,
            "mean_log_likelihood": _float_or_none(self.mean_log_likelihood_),
            "converged": self.converged_,
            "n_iter": self.n_iter_,
            "step": _float_or_none(self.step_),
            "n_reseeds": self.n_reseeds_,
            "n_repairs": self.n_repairs_,
            "last_reseed": self._last_reseed,
            "boost": {"factor": self._boost_factor, "half_life": self._boost_half_life, "age": self._boost_age},
            "bic": [[k, v] for k, v in self.bic_.items()],
            # PCG64 state integers are 128-bit: strings keep them JSON-safe
            "rng": {
                "state": str(bg["state"]["state"]),
                "inc": str(bg["state"]["inc"]),
                "has_uint32": int(bg["has_uint32"]),
                "uinteger": int(bg["uinteger"]),
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> StepwiseGMM:
        """Rebuild a model from :meth:`to_state` output (e.g. after ``orjson.loads``)."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"unsupported model state: format {state.get('format')!r} version {state.get('version')!r}"
            )
        m = cls(**state["params"])
        m.n_features_in_ = state["n_features_in"]
        names = state["feature_names_in"]
        m.feature_names_in_ = None if names is None else list(names)
        d = m.n_features_in_ or 0

        def rows(values: Any) -> np.ndarray:
            # A model that has seen nothing has no width: reshape(-1, 0) of nothing is undefined.
            arr = np.array(values, dtype=np.float64)
            return arr.reshape(-1, d) if d else arr.reshape(0, 0)

        bx = rows(state["buffer"]["X"])
        if len(bx):
            m._buffer_X = [bx]
            m._buffer_w = [np.array(state["buffer"]["w"], dtype=np.float64)]
            m._buffered = len(bx)
        pend = rows(state["pending"])
        m._pending = list(pend)
        m._shift = np.array(state["shift"], dtype=np.float64)
        m._scale = np.array(state["scale"], dtype=np.float64)
        st = state["stats"]
        if st is not None:
            s0 = np.array(st["s0"], dtype=np.float64)
            K = len(s0)
            m._stats = Statistics(
                s0,
                np.array(st["mean"], dtype=np.float64).reshape(K, d),
                np.array(st["scatter"], dtype=np.float64).reshape(K, d, d),
            )
        m._t = int(state["t"])
        m._t0 = None if state["t0"] is None else float(state["t0"])
        m._n_fit = float(state["n_fit"])
        m.n_updates_ = int(state["n_updates"])
        m.n_samples_seen_ = float(state["n_samples_seen"])
        m.mean_log_likelihood_ = _none_to_nan(state["mean_log_likelihood"])
        m.converged_ = bool(state["converged"])
        m.n_iter_ = int(state["n_iter"])
        m.step_ = _none_to_nan(state["step"])
        m._last_reseed = int(state["last_reseed"])
        boost = state["boost"]
        m._boost_factor = float(boost["factor"])
        m._boost_half_life = float(boost["half_life"])
        m._boost_age = int(boost["age"])
        m.bic_ = {int(k): float(v) for k, v in state["bic"]}
        rng = state["rng"]
        m._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(rng["state"]), "inc": int(rng["inc"])},
            "has_uint32": int(rng["has_uint32"]),
            "uinteger": int(rng["uinteger"]),
        }
        if m._stats is not None:
            m._update_derived()
        m.n_repairs_ = int(state["n_repairs"])
        m.n_reseeds_ = int(state["n_reseeds"])
        return m

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_weight(sample_weight: Any, n: int) -> np.ndarray:
        if sample_weight is None:
            return np.ones(n)
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if len(w) != n:
            raise ValueError(f"sample_weight has {len(w)} entries for {n} rows")
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("sample_weight must be finite and >= 0")
        return w

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"StepwiseGMM({params})"
