"""Compiled generalised Pareto likelihoods, and the searches over them, for SPOT's tail fits.

A refit of the tail (:func:`streamdetect.threshold.fit_truncated_gpd`) evaluates the truncated
likelihood some sixty times on a few hundred peaks: with numpy, each evaluation was a dozen array
operations whose calls cost more than their arithmetic, and the refits were a thirteenth of the
pipeline's time. One compiled pass over the peaks and the limits does the same sums, and the two
searches that call it run compiled too.
"""

from __future__ import annotations

import math

import numpy as np

from streamdetect._jit import compiled


@compiled(nrt=False)
def truncated_log_likelihood(y, limits, counts, gamma, sigma):
    """Log-likelihood under GPD(``gamma``, ``sigma``) of excesses ``y`` of which ``counts[j]`` could
    only be seen up to ``limits[j]``: ``sum log f(y_i) - sum_j counts[j] log F(limits[j])``, ``-inf``
    where a peak lies beyond a bounded tail's end or the scale is not positive.

    ``log F`` is ``log(-expm1(log S))`` with ``log S = -log1p(gamma x / sigma) / gamma``, and log1p
    throughout: a shape within rounding of 0 must give the exponential's likelihood.

    >>> import numpy as np
    >>> y, limits, counts = np.array([0.5, 1.0, 2.0]), np.array([3.0]), np.array([3.0])
    >>> exponential = -3 * math.log(2.0) - 3.5 / 2.0 - 3 * math.log(1 - math.exp(-1.5))
    >>> abs(truncated_log_likelihood(y, limits, counts, 0.0, 2.0) - exponential) < 1e-12
    True
    >>> abs(truncated_log_likelihood(y, limits, counts, 1e-14, 2.0) - exponential) < 1e-9
    True
    >>> truncated_log_likelihood(y, limits, counts, -1.0, 1.5)   # the tail ends at 1.5, a peak at 2
    -inf
    """
    if not sigma > 0.0 or not math.isfinite(sigma):
        return -math.inf
    ll = -y.shape[0] * math.log(sigma)
    if gamma == 0.0:
        total = 0.0
        for i in range(y.shape[0]):
            total += y[i]
        ll -= total / sigma
        for j in range(limits.shape[0]):
            ll -= counts[j] * math.log(-math.expm1(-limits[j] / sigma))
        return ll
    total = 0.0
    for i in range(y.shape[0]):
        z = gamma * y[i] / sigma
        if z <= -1.0:
            return -math.inf
        total += math.log1p(z)
    ll -= (1.0 + 1.0 / gamma) * total
    for j in range(limits.shape[0]):
        z = gamma * limits[j] / sigma
        if z > -1.0:  # beyond a bounded tail's end all of it is kept: log F = 0
            ll -= counts[j] * math.log(-math.expm1(-math.log1p(z) / gamma))
    return ll


# The two searches of a refit, compiled with the likelihood they search: through scipy, each of a
# refit's ~60 evaluations was a Python call with its own array copies and checks, and the searches
# cost more than the sums they called. They are scipy's algorithms step for step (its
# ``_minimize_neldermead`` without bounds or adaptation, and ``_minimize_scalar_bounded``), so a
# refit finds what scipy's would, to the last bit (``tests/test_threshold.py`` checks them against it).


@compiled(nrt=False)
def shape_scale_cost(y, limits, counts, precision, gamma, log_sigma):
    """The shape-and-scale search's cost: minus the log posterior (a normal prior on the shape)."""
    ll = truncated_log_likelihood(y, limits, counts, gamma, math.exp(log_sigma))
    if not math.isfinite(ll):
        return math.inf
    return -(ll - precision * gamma**2)


@compiled(nrt=False)
def _sort_simplex(sim, fsim):
    """Order the vertices by cost, ties kept in place (what numpy's argsort does for three)."""
    for i in range(1, fsim.shape[0]):
        j = i
        while j > 0 and fsim[j] < fsim[j - 1]:
            fsim[j], fsim[j - 1] = fsim[j - 1], fsim[j]
            for k in range(sim.shape[1]):
                sim[j, k], sim[j - 1, k] = sim[j - 1, k], sim[j, k]
            j -= 1


@compiled
def nelder_mead_shape_scale(y, limits, counts, precision, simplex, xatol, fatol):
    """Minimise :func:`shape_scale_cost` over ``(gamma, log sigma)`` from ``simplex`` (3 x 2) by
    Nelder-Mead: ``(gamma, log_sigma, cost)`` of the best vertex.

    scipy's ``minimize(method="Nelder-Mead")`` with ``initial_simplex``, ``xatol`` and ``fatol``
    and its defaults otherwise (reflection 1, expansion 2, contraction and shrink 1/2, at most 400
    evaluations and 400 iterations).

    >>> import numpy as np
    >>> y = np.random.default_rng(0).exponential(2.0, 20000)
    >>> y = y[y <= 3.0]
    >>> start = np.array([[0.0, 0.5], [0.02, 0.5], [0.0, 0.52]])
    >>> gamma, log_sigma, _ = nelder_mead_shape_scale(y, np.array([3.0]), np.array([float(len(y))]),
    ...                                               12.5, start, 1e-3, 1e-5)
    >>> abs(gamma) < 0.2, round(math.exp(log_sigma), 1)
    (True, 2.0)
    """
    maxfun = 400
    maxiter = 400
    sim = simplex.copy()
    fsim = np.empty(3)
    for k in range(3):
        fsim[k] = shape_scale_cost(y, limits, counts, precision, sim[k, 0], sim[k, 1])
    nfev = 3
    _sort_simplex(sim, fsim)
    xr = np.empty(2)
    xe = np.empty(2)
    iterations = 1
    while nfev < maxfun and iterations < maxiter:
        converged = True
        for j in range(1, 3):
            for k in range(2):
                if not abs(sim[j, k] - sim[0, k]) <= xatol:
                    converged = False
            if not abs(fsim[0] - fsim[j]) <= fatol:
                converged = False
        if converged:
            break
        out_of_calls = False
        xbar0 = (sim[0, 0] + sim[1, 0]) / 2
        xbar1 = (sim[0, 1] + sim[1, 1]) / 2
        xr[0] = 2.0 * xbar0 - 1.0 * sim[2, 0]
        xr[1] = 2.0 * xbar1 - 1.0 * sim[2, 1]
        fxr = shape_scale_cost(y, limits, counts, precision, xr[0], xr[1])
        nfev += 1
        doshrink = False
        if fxr < fsim[0]:
            if nfev >= maxfun:
                out_of_calls = True
            else:
                xe[0] = 3.0 * xbar0 - 2.0 * sim[2, 0]
                xe[1] = 3.0 * xbar1 - 2.0 * sim[2, 1]
                fxe = shape_scale_cost(y, limits, counts, precision, xe[0], xe[1])
                nfev += 1
                if fxe < fxr:
                    sim[2, 0], sim[2, 1], fsim[2] = xe[0], xe[1], fxe
                else:
                    sim[2, 0], sim[2, 1], fsim[2] = xr[0], xr[1], fxr
        elif fxr < fsim[1]:
            sim[2, 0], sim[2, 1], fsim[2] = xr[0], xr[1], fxr
        elif nfev >= maxfun:
            out_of_calls = True
        elif fxr < fsim[2]:  # outside contraction
            xe[0] = 1.5 * xbar0 - 0.5 * sim[2, 0]
            xe[1] = 1.5 * xbar1 - 0.5 * sim[2, 1]
            fxc = shape_scale_cost(y, limits, counts, precision, xe[0], xe[1])
            nfev += 1
            if fxc <= fxr:
                sim[2, 0], sim[2, 1], fsim[2] = xe[0], xe[1], fxc
            else:
                doshrink = True
        else:  # inside contraction
            xe[0] = 0.5 * xbar0 + 0.5 * sim[2, 0]
            xe[1] = 0.5 * xbar1 + 0.5 * sim[2, 1]
            fxcc = shape_scale_cost(y, limits, counts, precision, xe[0], xe[1])
            nfev += 1
            if fxcc < fsim[2]:
                sim[2, 0], sim[2, 1], fsim[2] = xe[0], xe[1], fxcc
            else:
                doshrink = True
        if doshrink:
            for j in range(1, 3):
                sim[j, 0] = sim[0, 0] + 0.5 * (sim[j, 0] - sim[0, 0])
                sim[j, 1] = sim[0, 1] + 0.5 * (sim[j, 1] - sim[0, 1])
                if nfev >= maxfun:
                    out_of_calls = True
                    break
                fsim[j] = shape_scale_cost(y, limits, counts, precision, sim[j, 0], sim[j, 1])
                nfev += 1
        if not out_of_calls:
            iterations += 1
        _sort_simplex(sim, fsim)
    return sim[0, 0], sim[0, 1], fsim.min()


@compiled(nrt=False)
def _sign(x):
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x  # 0 or nan, as numpy's sign


@compiled(nrt=False)
def _nan_max(a, b):
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


@compiled(nrt=False)
def bounded_exponential_scale(y, limits, counts, lo, hi):
    """Minimise the exponential tail's cost (:func:`shape_scale_cost` at shape 0, without the
    prior) over ``log sigma`` in ``[lo, hi]`` by Brent's bounded method: ``(log_sigma, cost)``.

    scipy's ``minimize_scalar(method="bounded")`` with its defaults (``xatol`` 1e-5, at most 500
    evaluations).

    >>> import numpy as np
    >>> y = np.random.default_rng(0).exponential(2.0, 20000)
    >>> y = y[y <= 3.0]
    >>> log_sigma, _ = bounded_exponential_scale(y, np.array([3.0]), np.array([float(len(y))]), -5.0, 10.0)
    >>> round(math.exp(log_sigma), 1)
    2.0
    """
    xatol = 1e-5
    maxfun = 500
    sqrt_eps = math.sqrt(2.2e-16)
    golden_mean = 0.5 * (3.0 - math.sqrt(5.0))
    a, b = lo, hi
    fulc = a + golden_mean * (b - a)
    nfc, xf = fulc, fulc
    rat = e = 0.0
    x = xf
    fx = shape_scale_cost(y, limits, counts, 0.0, 0.0, x)
    num = 1
    ffulc = fnfc = fx
    xm = 0.5 * (a + b)
    tol1 = sqrt_eps * abs(xf) + xatol / 3.0
    tol2 = 2.0 * tol1
    while abs(xf - xm) > (tol2 - 0.5 * (b - a)):
        golden = True
        if abs(e) > tol1:  # a parabolic step, if acceptable
            golden = False
            r = (xf - nfc) * (fx - ffulc)
            q = (xf - fulc) * (fx - fnfc)
            p = (xf - fulc) * q - (xf - nfc) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            r = e
            e = rat
            if (abs(p) < abs(0.5 * q * r)) and (p > q * (a - xf)) and (p < q * (b - xf)):
                rat = (p + 0.0) / q
                x = xf + rat
                if ((x - a) < tol2) or ((b - x) < tol2):
                    si = _sign(xm - xf) + (1.0 if (xm - xf) == 0 else 0.0)
                    rat = tol1 * si
            else:
                golden = True
        if golden:
            e = a - xf if xf >= xm else b - xf
            rat = golden_mean * e
        si = _sign(rat) + (1.0 if rat == 0 else 0.0)
        x = xf + si * _nan_max(abs(rat), tol1)
        fu = shape_scale_cost(y, limits, counts, 0.0, 0.0, x)
        num += 1
        if fu <= fx:
            if x >= xf:
                a = xf
            else:
                b = xf
            fulc, ffulc = nfc, fnfc
            nfc, fnfc = xf, fx
            xf, fx = x, fu
        else:
            if x < xf:
                a = x
            else:
                b = x
            if (fu <= fnfc) or (nfc == xf):
                fulc, ffulc = nfc, fnfc
                nfc, fnfc = x, fu
            elif (fu <= ffulc) or (fulc == xf) or (fulc == nfc):  # noqa: SIM109 (scipy's test, as written)
                fulc, ffulc = x, fu
        xm = 0.5 * (a + b)
        tol1 = sqrt_eps * abs(xf) + xatol / 3.0
        tol2 = 2.0 * tol1
        if num >= maxfun:
            break
    return xf, fx
