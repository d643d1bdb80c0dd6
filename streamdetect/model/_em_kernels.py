"""Compiled M-step of the mixture: from its statistics to its parameters (:func:`m_step`, for the
stepwise updates) or straight to the coefficients of its log-probabilities over a fixed batch's
monomials (:func:`coefficients`, for batch EM; :class:`streamdetect.model._em.Products`).

numpy's M-step is a dozen calls on a stack of K small matrices (Cholesky, inverse, einsums), a
fixed cost that was the largest part of a batch-EM iteration on a warm-up of a few thousand rows;
this is one loop. A covariance that is not positive definite makes it give up, and the caller
takes numpy's M-step, which repairs it.
"""

from __future__ import annotations

import math

import numpy as np

from streamdetect._jit import compiled

LOG_2PI = math.log(2.0 * math.pi)


@compiled
def _factor(cov, L, Linv):
    """Cholesky factor ``L`` of ``cov`` (L L^T = cov) and its inverse, in place; False if ``cov``
    is not numerically positive definite."""
    d = len(cov)
    for j in range(d):
        s = cov[j, j]
        for m in range(j):
            s -= L[j, m] * L[j, m]
        if not (s > 0.0 and s < math.inf):
            return False
        L[j, j] = math.sqrt(s)
        for i in range(j + 1, d):
            s = cov[i, j]
            for m in range(j):
                s -= L[i, m] * L[j, m]
            L[i, j] = s / L[j, j]
    for c in range(d):
        for i in range(c, d):
            s = 1.0 if i == c else 0.0
            for m in range(c, i):
                s -= L[i, m] * Linv[m, c]
            Linv[i, c] = s / L[i, i]
    return True


@compiled
def _covariance(s0c, scatter_k, reg_covar, cov):
    """The M-step's covariance of one component: its scatter over its mass, symmetrised, plus
    ``reg_covar[i]`` on the diagonal (the operations of ``_em._m_step``, in its order)."""
    d = len(cov)
    for i in range(d):
        for j in range(d):
            cov[i, j] = (scatter_k[i, j] / s0c + scatter_k[j, i] / s0c) * 0.5
        cov[i, i] += reg_covar[i]


@compiled
def _total_mass(s0):
    total = 0.0
    for k in range(len(s0)):
        total += max(s0[k], 1e-300)
    return total


@compiled
def _component(s0c, scatter_k, mean_k, reg_covar, cov, L, Linv, y):
    """One component's M-step: its covariance (into ``cov``), ``L`` (``L L^T = cov``), ``L^-1``
    and ``y = L^-1 mu``; ``(False, 0)`` if the covariance is not numerically positive definite,
    else ``(True, sum(log(diag(L^-1))))``, that is ``-0.5 log|cov|``."""
    _covariance(s0c, scatter_k, reg_covar, cov)
    if not _factor(cov, L, Linv):
        return False, 0.0
    log_det = 0.0
    for i in range(len(cov)):
        log_det += math.log(Linv[i, i])
        s = 0.0
        for m in range(i + 1):
            s += Linv[i, m] * mean_k[m]
        y[i] = s
    return True, log_det


@compiled
def m_step(s0, mean, scatter, reg_covar, log_weights, cov, prec_chol, log_det, mean_prec):
    """``_em._m_step`` into the arrays given: weights, covariances, precision Cholesky factors
    ``P = L^-T``, ``log_det = sum(log(diag(P)))`` and ``mean_prec = mu^T P``; False, unfinished,
    if a covariance is not numerically positive definite (numpy's M-step repairs it)."""
    K, d = mean.shape
    total = _total_mass(s0)
    L = np.zeros((d, d))
    Linv = np.zeros((d, d))
    for k in range(K):
        s0c = max(s0[k], 1e-300)
        log_weights[k] = math.log(s0c / total)
        ok, log_det[k] = _component(s0c, scatter[k], mean[k], reg_covar, cov[k], L, Linv, mean_prec[k])
        if not ok:
            return False
        for i in range(d):
            for j in range(d):
                prec_chol[k, j, i] = Linv[i, j]
    return True


@compiled
def coefficients(s0, mean, scatter, reg_covar, pair_i, pair_j, doubled, coef):
    """Fill ``coef`` (K, T + d + 1) so that ``coef @ stack`` is each component's weighted
    log-probability of each row (see ``_em._coefficients``); False, with ``coef`` unfinished, if
    a covariance is not numerically positive definite.

    >>> s0, mean = np.array([0.25, 0.75]), np.array([[0.0, 1.0], [2.0, -1.0]])
    >>> scatter = s0[:, None, None] * np.array([[[1.0, 0.5], [0.5, 2.0]], [[0.5, 0.0], [0.0, 0.5]]])
    >>> i, j = np.triu_indices(2)
    >>> coef = np.empty((2, 6))
    >>> coefficients(s0, mean, scatter, np.zeros(2), i, j, np.where(i == j, 1.0, 2.0), coef)
    True
    >>> z = np.array([0.5, 0.5])  # stack column: z_i z_j (i <= j), z, 1
    >>> from scipy.stats import multivariate_normal as mvn
    >>> expect = np.log(0.25) + mvn(mean[0], [[1.0, 0.5], [0.5, 2.0]]).logpdf(z)
    >>> bool(np.isclose(coef[0] @ np.array([0.25, 0.25, 0.25, 0.5, 0.5, 1.0]), expect))
    True
    """
    K, d = mean.shape
    T = len(pair_i)
    total = _total_mass(s0)
    cov = np.empty((d, d))
    L = np.zeros((d, d))
    Linv = np.zeros((d, d))
    y = np.empty(d)
    for k in range(K):
        s0c = max(s0[k], 1e-300)
        ok, log_det = _component(s0c, scatter[k], mean[k], reg_covar, cov, L, Linv, y)
        if not ok:
            return False
        quad = 0.0  # mu^T A mu = |L^-1 mu|^2
        for i in range(d):
            quad += y[i] * y[i]
        for t in range(T):
            a, b = pair_i[t], pair_j[t]
            s = 0.0
            for m in range(max(a, b), d):
                s += Linv[m, a] * Linv[m, b]
            coef[k, t] = -0.5 * s * doubled[t]
        for i in range(d):  # A mu = L^-T (L^-1 mu)
            s = 0.0
            for m in range(i, d):
                s += Linv[m, i] * y[m]
            coef[k, T + i] = s
        coef[k, T + d] = math.log(s0c / total) + log_det - 0.5 * d * LOG_2PI - 0.5 * quad
    return True


@compiled
def coefficients_of_moments(moments, total, tiny, reg_covar, pair_i, pair_j, doubled, coef):
    """:func:`coefficients` of the M-step of a fixed batch's moments (``resp @ stack.T``: its
    products' sums, then its rows', then its masses, per component), with the statistics formed
    here as ``_em._statistics_of_products_moments`` forms them (same operations, same order)
    instead of a dozen numpy calls between the two. ``total`` is the masses' sum (numpy's, so
    that both agree to the bit). False, with ``coef`` unfinished, as :func:`coefficients`."""
    K = moments.shape[0]
    T = len(pair_i)
    d = moments.shape[1] - T - 1
    s0 = np.empty(K)
    mean = np.empty((K, d))
    scatter = np.empty((K, d, d))
    raw = np.empty((d, d))
    mu = np.empty(d)
    floor = tiny * max(total, 1.0)
    for k in range(K):
        nk = moments[k, T + d]
        live = nk > floor
        nkc = nk if live else 1.0
        for t in range(T):
            raw[pair_i[t], pair_j[t]] = moments[k, t]
            raw[pair_j[t], pair_i[t]] = moments[k, t]
        for i in range(d):
            mu[i] = moments[k, T + i] / nkc
        for i in range(d):
            for j in range(d):
                if live:
                    a = raw[i, j] - nkc * mu[i] * mu[j]
                    b = raw[j, i] - nkc * mu[j] * mu[i]
                    scatter[k, i, j] = 0.5 * (a + b) / total
                else:
                    scatter[k, i, j] = 0.0 / total
            mean[k, i] = mu[i] + 0.0 if live else 0.0
        s0[k] = nk / total
    return coefficients(s0, mean, scatter, reg_covar, pair_i, pair_j, doubled, coef)
