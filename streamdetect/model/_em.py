"""The numerical steps of (stepwise) EM for a full-covariance Gaussian mixture.

Small private functions, one per step, in the spirit of ``sklearn.mixture``. Everything works on
arrays in the model's *internal* coordinates (features shifted and scaled by the warm-up mean and
standard deviation, so that values are of order one).

Sufficient statistics are kept **centred**: per component ``s0`` (mass, sums to one), ``mean``
(= s1 / s0) and ``scatter`` (= s0 * the covariance about that mean, without ``reg_covar``). Blending
two sets of statistics uses the parallel-moments formula (Chan et al.), which is algebraically the
same as blending the raw moments ``s1 = s0 mu`` and ``s2 = s0 (Sigma + mu mu^T)`` of the notes, but
does not lose digits to the cancellation in ``s2/s0 - mu mu^T``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from streamdetect.model import _em_kernels

LOG_2PI = float(np.log(2.0 * np.pi))
_TINY = 10.0 * np.finfo(np.float64).eps
_JITTER_TRIES = 6
_MIN_EIGENVALUE = 1e-9
# exp() of arguments far below zero hits libm's slow underflow path (3-4x slower per element);
# exp(-300) ~ 5e-131 is nothing next to the largest term (1), so clipping there changes no digit
# of a log-likelihood and no responsibility by more than 1e-130.
_EXP_CLIP = -300.0


class Statistics(NamedTuple):
    """Centred expected sufficient statistics of a mixture (internal coordinates)."""

    s0: np.ndarray  # (K,)      mass per component, sums to one
    mean: np.ndarray  # (K, d)   s1 / s0
    scatter: np.ndarray  # (K, d, d)  s0 * covariance about ``mean`` (no reg_covar)


class Derived(NamedTuple):
    """Everything scoring needs, recomputed from the statistics after each M-step."""

    log_weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    covariances: np.ndarray  # (K, d, d), reg_covar and any repair included
    prec_chol: np.ndarray  # (K, d, d): P with P P^T = Sigma^-1
    log_det: np.ndarray  # (K,) sum(log diag P) = -0.5 log|Sigma|
    mean_prec: np.ndarray  # (K, d) mu_k^T P_k, so that (x - mu)^T P = x^T P - mu^T P
    repaired: np.ndarray  # (K,) bool: the covariance needed jitter or an eigenvalue clamp
    proj: np.ndarray  # (K*d, d+1): rows k*d..k*d+d-1 = [P_k^T | -P_k^T mu_k]
    const: np.ndarray  # (K,): log pi_k + log_det_k - 0.5 d log(2 pi)


# ----------------------------------------------------------------------------- Cholesky / M-step
def _repair_covariance(cov: np.ndarray, reg_covar: np.ndarray) -> np.ndarray:
    """Make one symmetric matrix positive definite: jitter retries, then an eigenvalue clamp (§2.3)."""
    d = cov.shape[0]
    reg = float(np.min(reg_covar))
    cov = np.where(np.isfinite(cov), cov, 0.0)
    cov = 0.5 * (cov + cov.T)
    scale = max(float(np.trace(cov)) / d, 1.0)
    base = max(reg, 1e-12) * scale
    eye = np.eye(d)
    for j in range(1, _JITTER_TRIES + 1):
        candidate = cov + (10.0**j) * base * eye
        try:
            np.linalg.cholesky(candidate)
        except np.linalg.LinAlgError:
            continue
        return candidate
    vals, vecs = np.linalg.eigh(cov)
    floor = max(_MIN_EIGENVALUE * scale, reg)
    fixed: np.ndarray = (vecs * np.maximum(vals, floor)) @ vecs.T
    return 0.5 * (fixed + fixed.T)


def _compute_precision_cholesky(
    covariances: np.ndarray, reg_covar: np.ndarray, copy: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cholesky factors of the precisions, ``P_k = L_k^{-T}`` with ``Sigma_k = L_k L_k^T``.

    Returns ``(prec_chol, covariances, repaired)``: a covariance that is not numerically positive
    definite is repaired first (jitter, then eigenvalue clamp) and the repaired matrix returned
    (in place when ``copy`` is False).
    """
    if copy:
        covariances = covariances.copy()
    repaired = np.zeros(len(covariances), dtype=bool)
    try:
        chol = np.linalg.cholesky(covariances)
        ok = bool(np.isfinite(chol).all())
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        chol = np.empty_like(covariances)
        for k in range(len(covariances)):
            try:
                chol[k] = np.linalg.cholesky(covariances[k])
                if not np.isfinite(chol[k]).all():
                    raise np.linalg.LinAlgError("non-finite Cholesky factor")
            except np.linalg.LinAlgError:
                covariances[k] = _repair_covariance(covariances[k], reg_covar)
                chol[k] = np.linalg.cholesky(covariances[k])
                repaired[k] = True
    prec_chol = np.linalg.inv(chol).transpose(0, 2, 1)
    return prec_chol, covariances, repaired


def _m_step(stats: Statistics, reg_covar: float | np.ndarray, log_det_shift: float = 0.0) -> Derived:
    """theta = theta_bar(s): weights, means, covariances and the scoring precomputations.

    ``reg_covar`` is added to every covariance's diagonal: one number, or one per feature.

    ``log_det_shift`` is added to every ``log_det`` (the Jacobian of a change of units, so that
    log-likelihoods come out in the caller's units). One compiled loop (``_em_kernels.m_step``);
    :func:`_m_step_numpy` where a covariance needs repair.
    """
    s0, mean, scatter = stats
    K, d = mean.shape
    reg_covar = _diagonal(reg_covar, d)
    log_weights, log_det = np.empty(K), np.empty(K)
    cov, prec_chol, mean_prec = np.empty((K, d, d)), np.empty((K, d, d)), np.empty((K, d))
    if not _em_kernels.m_step(s0, mean, scatter, reg_covar, log_weights, cov, prec_chol, log_det, mean_prec):
        return _m_step_numpy(stats, reg_covar, log_det_shift)
    if log_det_shift:
        log_det += log_det_shift
    return _derive(log_weights, mean.copy(), cov, prec_chol, log_det, mean_prec, np.zeros(K, dtype=bool))


def _diagonal(reg_covar: float | np.ndarray, d: int) -> np.ndarray:
    """``reg_covar`` as one float per feature (an array of them is taken as it is, not copied)."""
    reg = np.asarray(reg_covar, dtype=np.float64)
    if reg.ndim == 0:
        return np.full(d, float(reg))
    if reg.shape != (d,):
        raise ValueError(f"reg_covar has shape {reg.shape} for {d} features")
    return reg


def _m_step_numpy(stats: Statistics, reg_covar: float | np.ndarray, log_det_shift: float = 0.0) -> Derived:
    """:func:`_m_step` with numpy, repairing a covariance that is not positive definite."""
    s0, mean, scatter = stats
    s0c = np.maximum(s0, 1e-300)
    log_weights = np.log(s0c / s0c.sum())
    cov = scatter / s0c[:, None, None]
    cov += cov.transpose(0, 2, 1)
    cov *= 0.5
    d = mean.shape[1]
    reg_covar = _diagonal(reg_covar, d)
    idx = np.arange(d)
    cov[:, idx, idx] += reg_covar
    prec_chol, cov, repaired = _compute_precision_cholesky(cov, reg_covar, copy=False)
    log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if log_det_shift:
        log_det += log_det_shift
    mean_prec = np.einsum("kd,kde->ke", mean, prec_chol)
    return _derive(log_weights, mean.copy(), cov, prec_chol, log_det, mean_prec, repaired)


def _derive(
    log_weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    prec_chol: np.ndarray,
    log_det: np.ndarray,
    mean_prec: np.ndarray,
    repaired: np.ndarray,
) -> Derived:
    """Assemble :class:`Derived`, with the stacked layout the E-step GEMM uses."""
    K, d = means.shape
    proj = np.empty((K, d, d + 1))
    proj[:, :, :d] = prec_chol.transpose(0, 2, 1)
    proj[:, :, d] = -mean_prec
    const = log_weights + log_det - 0.5 * d * LOG_2PI
    return Derived(
        log_weights, means, covariances, prec_chol, log_det, mean_prec, repaired, proj.reshape(K * d, d + 1), const
    )


# ----------------------------------------------------------------------------- E-step
# The E-step works on the *transposed, augmented* batch ``ZT1`` of shape (d+1, n): row j < d is
# feature j of every row, the last row is all ones. Component-major arrays (K, n) keep every
# reduction over components a contiguous element-wise operation, which is what makes a batch of
# 1000 rows cheap; public methods transpose back to (n, K).
def _augment(X: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``ZT1`` (d+1, n): the standardised rows ``(x - shift) / scale``, transposed, plus a row of ones."""
    n, d = X.shape
    ZT1 = np.empty((d + 1, n))
    np.subtract(X.T, shift[:, None], out=ZT1[:d])
    ZT1[:d] /= scale[:, None]
    ZT1[d] = 1.0
    return ZT1


def _estimate_weighted_log_prob(ZT1: np.ndarray, derived: Derived) -> np.ndarray:
    """``log pi_k + log N(z_n | mu_k, Sigma_k)`` for every component and row, shape (K, n).

    ``y_k = P_k^T (z - mu_k)`` for all k at once: one GEMM of the stacked ``[P_k^T | -P_k^T mu_k]``
    (K*d, d+1) against the augmented batch; the Mahalanobis distance is ``|y_k|^2``.
    """
    K = len(derived.const)
    n = ZT1.shape[1]
    Y = derived.proj @ ZT1
    np.square(Y, out=Y)
    joint = Y.reshape(K, -1, n).sum(axis=1)
    joint *= -0.5
    joint += derived.const[:, None]
    return joint


def _estimate_log_prob(ZT1: np.ndarray, derived: Derived) -> np.ndarray:
    """``log N(z_n | mu_k, Sigma_k)``, shape (K, n) (the weighted log-probability minus log pi)."""
    out = _estimate_weighted_log_prob(ZT1, derived)
    out -= derived.log_weights[:, None]
    return out


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """``log sum_k exp(a_kn)`` over axis 0 of a (K, n) array, stable for any finite input."""
    m = a.max(axis=0)
    m = np.where(np.isfinite(m), m, 0.0)
    e = a - m
    np.maximum(e, _EXP_CLIP, out=e)
    np.exp(e, out=e)
    return np.log(e.sum(axis=0)) + m


def _estimate_resp(ZT1: np.ndarray, derived: Derived) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood and responsibilities ``(ll (n,), resp (K, n))`` via log-sum-exp.

    One exponentiation: ``r_kn = exp(a_kn - m_n) / sum_j exp(a_jn - m_n)``, ``m_n = max_k a_kn``.
    """
    return _normalise(_estimate_weighted_log_prob(ZT1, derived))


def _normalise(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ll, resp)`` of :func:`_estimate_resp` from the weighted log-probabilities (overwritten)."""
    m = joint.max(axis=0)
    joint -= m
    np.maximum(joint, _EXP_CLIP, out=joint)
    np.exp(joint, out=joint)
    total = joint.sum(axis=0)
    joint /= total
    return np.log(total) + m, joint


def _estimate_log_resp(ZT1: np.ndarray, derived: Derived) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood and log responsibilities: ``(ll (n,), log_resp (K, n))``."""
    joint = _estimate_weighted_log_prob(ZT1, derived)
    ll = _logsumexp(joint)
    joint -= ll
    return ll, joint


# ----------------------------------------------------------------------------- statistics
def _estimate_statistics(ZT: np.ndarray, resp: np.ndarray) -> Statistics:
    """Centred statistics of one batch: ``ZT`` (d, n), ``resp`` (K, n) with the sample weights in.

    Normalised by the total weight, so ``s0`` sums to one. The batch is first centred on its own
    weighted mean, so a stream that has drifted far from the warm-up keeps its digits; the
    second moments of all components then come from one GEMM, ``[r_1 z; ...; r_K z] z^T``. A
    component with no responsibility gets mean 0 and scatter 0 (mass 0: no weight in a blend).
    """
    d, n = ZT.shape
    K = resp.shape[0]
    nk = resp.sum(axis=1)
    total = float(nk.sum())
    centre = (ZT @ resp.sum(axis=0)) / max(total, 1e-300)
    ZcT = ZT - centre[:, None]
    s1 = resp @ ZcT.T  # (K, d)
    W = resp[:, None, :] * ZcT[None, :, :]  # (K, d, n)
    raw = (W.reshape(K * d, n) @ ZcT.T).reshape(K, d, d)
    return _statistics_of_moments(nk, total, s1, raw, centre)


def _statistics_of_moments(
    nk: np.ndarray, total: float, s1: np.ndarray, raw: np.ndarray, centre: np.ndarray | float
) -> Statistics:
    """Statistics from each component's mass ``nk``, first and second moments ``s1`` (K, d) and
    ``raw`` (K, d, d) about ``centre``, normalised by the batch's ``total`` weight."""
    live = nk > _TINY * max(total, 1.0)
    nkc = np.where(live, nk, 1.0)
    mu_c = s1 / nkc[:, None]
    scatter = raw - nkc[:, None, None] * mu_c[:, :, None] * mu_c[:, None, :]
    scatter = 0.5 * (scatter + scatter.transpose(0, 2, 1))
    scatter[~live] = 0.0
    mean = np.where(live[:, None], mu_c + centre, 0.0)
    scatter /= total
    return Statistics(nk / total, mean, scatter)


# Batch EM runs on the same rows every iteration: both of its steps read them through the rows'
# outer products z_i z_j (i <= j), computed once per fit, stacked with the rows and a row of ones,
# so that each step is one GEMM against that stack instead of forming per-component weighted or
# projected copies of the batch anew. Both expand the squares about the origin: the batch is the
# warm-up standardised by its own mean and deviation, so there are no digits to lose to a
# far-away centre. The stepwise path, whose stream may drift far from the warm-up, keeps the
# centred forms above.
class Products(NamedTuple):
    """A fixed batch for batch EM: its rows' monomials of degree 2, 1 and 0, (d(d+1)/2 + d + 1, n)."""

    stack: np.ndarray  # rows: z_i z_j for the pairs i <= j, then z_1 .. z_d, then ones
    pairs: tuple[np.ndarray, np.ndarray]  # (i, j) of each product row
    doubled: np.ndarray  # (d(d+1)/2,): 2 off the diagonal, 1 on it (a quadratic form's weights)


def _outer_products(ZT: np.ndarray) -> Products:
    d, n = ZT.shape
    i, j = np.triu_indices(d)
    stack = np.empty((len(i) + d + 1, n))
    np.multiply(ZT[i], ZT[j], out=stack[: len(i)])
    stack[len(i) : -1] = ZT
    stack[-1] = 1.0
    return Products(stack, (i, j), np.where(i == j, 1.0, 2.0))


def _coefficients(batch: Products, derived: Derived) -> np.ndarray:
    """Coefficients (K, rows of the stack) of each component's weighted log-probability over the
    batch's monomials: with the precision ``A = P P^T``,
    ``(z - mu)^T A (z - mu) = sum_{i<=j} c_ij z_i z_j - 2 (A mu)^T z + |P^T mu|^2``."""
    P = derived.prec_chol
    A = P @ P.transpose(0, 2, 1)
    T = len(batch.doubled)
    coef = np.empty((len(P), batch.stack.shape[0]))
    np.multiply(A[:, batch.pairs[0], batch.pairs[1]], -0.5 * batch.doubled, out=coef[:, :T])
    coef[:, T:-1] = np.einsum("kde,ke->kd", P, derived.mean_prec)  # A mu
    coef[:, -1] = derived.const - 0.5 * (derived.mean_prec**2).sum(axis=1)
    return coef


def _coefficients_of_moments(batch: Products, moments: np.ndarray, reg_covar: float | np.ndarray) -> np.ndarray:
    """:func:`_coefficients` of the M-step of :func:`_statistics_of_products_moments`: statistics,
    M-step and coefficients in one compiled loop; numpy's M-step where a covariance needs repair."""
    reg_covar = _diagonal(reg_covar, moments.shape[1] - len(batch.doubled) - 1)
    coef = np.empty((len(moments), batch.stack.shape[0]))
    total = float(moments[:, -1].sum())
    if _em_kernels.coefficients_of_moments(moments, total, _TINY, reg_covar, *batch.pairs, batch.doubled, coef):
        return coef
    return _coefficients(batch, _m_step_numpy(_statistics_of_products_moments(batch, moments), reg_covar))


def _statistics_of_products_moments(batch: Products, moments: np.ndarray) -> Statistics:
    """:func:`_estimate_statistics` of a fixed batch from its moments ``resp @ stack.T``
    (K, T + d + 1): second moments about the origin, first moments and masses, from one GEMM of
    the responsibilities against the stack."""
    T = len(batch.doubled)
    d = batch.stack.shape[0] - T - 1
    K = moments.shape[0]
    nk = moments[:, -1]
    total = float(nk.sum())
    raw = np.empty((K, d, d))
    raw[:, batch.pairs[0], batch.pairs[1]] = moments[:, :T]
    raw[:, batch.pairs[1], batch.pairs[0]] = moments[:, :T]
    return _statistics_of_moments(nk, total, moments[:, T:-1], raw, 0.0)


def _blend_statistics(old: Statistics, new: Statistics, eta: float) -> Statistics:
    """``s <- (1 - eta) s + eta s_hat`` for centred statistics (exact parallel-moments update)."""
    a, b = 1.0 - eta, eta
    s0 = a * old.s0 + b * new.s0
    s0c = np.where(s0 > 0, s0, 1.0)
    mean = (a * old.s0[:, None] * old.mean + b * new.s0[:, None] * new.mean) / s0c[:, None]
    mean = np.where((s0 > 0)[:, None], mean, old.mean)
    d_old = old.mean - mean
    d_new = new.mean - mean
    scatter = (
        a * old.scatter
        + b * new.scatter
        + (a * old.s0)[:, None, None] * d_old[:, :, None] * d_old[:, None, :]
        + (b * new.s0)[:, None, None] * d_new[:, :, None] * d_new[:, None, :]
    )
    scatter = 0.5 * (scatter + scatter.transpose(0, 2, 1))
    return Statistics(s0, mean, scatter)


def _statistics_from_parameters(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> Statistics:
    """s0 = pi, mean = mu, scatter = pi Sigma (covariances without reg_covar)."""
    return Statistics(weights.copy(), means.copy(), weights[:, None, None] * covariances)


# ----------------------------------------------------------------------------- initialisation
def _kmeans_plusplus(
    Z: np.ndarray, n_clusters: int, rng: np.random.Generator, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (``2 + ln K`` candidates per centre, as in scikit-learn).

    Returns the indices of the rows chosen as centres.
    """
    n = len(Z)
    w = np.ones(n) if sample_weight is None else sample_weight
    n_trials = 2 + int(np.log(n_clusters))
    first = int(rng.choice(n, p=w / w.sum()))
    indices = [first]
    closest = ((Z - Z[first]) ** 2).sum(axis=1)
    potential = float(w @ closest)
    for _ in range(1, n_clusters):
        if potential <= 0.0:  # every point sits on a centre already (duplicates)
            indices.append(int(rng.integers(n)))
            continue
        cum = np.cumsum(w * closest)
        cand = np.searchsorted(cum, rng.random(n_trials) * cum[-1])
        cand = np.minimum(cand, n - 1)
        dist = ((Z[None, :, :] - Z[cand][:, None, :]) ** 2).sum(axis=2)
        np.minimum(dist, closest, out=dist)
        pots = dist @ w
        best = int(np.argmin(pots))
        indices.append(int(cand[best]))
        closest, potential = dist[best], float(pots[best])
    return np.asarray(indices, dtype=np.int64)


def _initial_resp(Z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Hard responsibilities (K, n): each row to its nearest centre (sklearn's ``k-means++`` init)."""
    d2 = (centres**2).sum(axis=1)[:, None] - 2.0 * centres @ Z.T
    labels = np.argmin(d2, axis=0)
    resp = np.zeros((len(centres), len(Z)))
    resp[labels, np.arange(len(Z))] = 1.0
    return resp


class EMResult(NamedTuple):
    stats: Statistics
    mean_log_likelihood: float
    converged: bool
    n_iter: int


def _em(
    ZT1: np.ndarray,
    weight: np.ndarray,
    n_components: int,
    reg_covar: float | np.ndarray,
    rng: np.random.Generator,
    n_init: int,
    max_iter: int,
    tol: float,
) -> EMResult:
    """Batch EM from ``n_init`` k-means++ seedings; keeps the best final mean log-likelihood.

    ``ZT1`` is the augmented, transposed batch of :func:`_augment`.
    """
    best: EMResult | None = None
    wsum = float(weight.sum())
    unweighted = bool((weight == 1.0).all())  # then the responsibilities need no multiplying
    ZT = ZT1[:-1]
    Z = ZT.T
    reg_covar = _diagonal(reg_covar, len(ZT))
    batch = _outer_products(ZT)
    stackT = batch.stack.T
    for _ in range(n_init):
        centres = Z[_kmeans_plusplus(Z, n_components, rng, weight)]
        # Each iteration carries the moments of its responsibilities (one GEMM); the statistics,
        # the M-step and the next coefficients come from them in one compiled call.
        moments = (_initial_resp(Z, centres) * weight) @ stackT
        prev = -np.inf
        converged = False
        n_iter = 0
        ll_mean = -np.inf
        for n_iter in range(1, max_iter + 1):  # noqa: B007
            ll, resp = _normalise(_coefficients_of_moments(batch, moments, reg_covar) @ batch.stack)
            ll_mean = float(weight @ ll) / wsum
            if abs(ll_mean - prev) < tol:
                converged = True
                break
            prev = ll_mean
            if not unweighted:
                resp *= weight
            moments = resp @ stackT
        result = EMResult(_statistics_of_products_moments(batch, moments), ll_mean, converged, n_iter)
        if best is None or result.mean_log_likelihood > best.mean_log_likelihood:
            best = result
    assert best is not None
    return best


def _n_parameters(n_components: int, n_features: int) -> int:
    """Free parameters of a full-covariance mixture (for BIC)."""
    d = n_features
    return n_components * d + n_components * d * (d + 1) // 2 + n_components - 1
