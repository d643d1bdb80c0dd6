"""Compiled per-round kernels of :class:`~streamdetect.features.FeatureExtractor`.

A round holds one window per key (a few to a few thousand rows) and every key's baselines are a
recurrence over its windows, so the rounds of a stream are processed one after the other. As
numpy expressions, a round cost about 250 array operations of a microsecond each whatever its
size, and a stream of few keys (a store, a metric series, a partition of a service) spent most of
its time in that fixed cost. Here the same arithmetic runs as one loop over the round's rows,
compiled by numba: each row reads and writes its own key's baselines only, so the loop gives
what the vectorised code gave, up to the last bit of a logarithm (numpy's vectorised ``log`` and
``exp`` may round the last bit differently from the C library's).

The formulas and their reasons are documented in :mod:`streamdetect.features`; the numbered
columns of :func:`transform_round`'s output are named by the ``T_*`` constants.
"""

from __future__ import annotations

import math

import numpy as np

from streamdetect._jit import compiled as _compiled
from streamdetect._price_kernels import ADOPT as PLAUSIBLE_PRICE
from streamdetect.windows import SKETCH_BITS

# Columns of transform_round's output (one row per window of the round).
(
    T_MATURE,
    T_HOW_OK,
    T_RECENT_OK,
    T_FALLBACK_COUNT,
    T_FALLBACK_REV,
    T_HOW_COUNT,
    T_HOW_REV,
    T_EXPECTED_COUNT,
    T_EXPECTED_REV,
    T_HAS_TICKETS,
    T_MU,
    T_SIGMA,
    T_TICKET_DEV,
    T_TICKET_SALE_VAR,
    T_TICKET_VAR,
    T_TICKET_SEEN,
    T_UNITS_DEV,
    T_UNITS_SALE_VAR,
    T_UNITS_VAR,
    T_UNITS_SEEN,
    T_SKUS_Z,
    T_SKUS_RAW,
    T_SKUS_EXPECTED,
    T_SKUS_SEEN,
    T_CTX_COUNT,
    T_CTX_EXP_COUNT,
    T_CTX_REV,
    T_CTX_EXP_REV,
    T_TR_COUNT,
    T_TR_EXP_COUNT,
    T_TR_REV,
    T_TR_EXP_REV,
    T_TR_EXP2_COUNT,
    T_TREND_LOG_RATIO,
    T_TREND_POISSON_VAR,
    T_CLUMP,
    T_PHI,
    T_SCAN_TOT_C,
    T_SCAN_TOT_E,
    T_SCAN_N,
    T_SCAN_Z,
    T_SCAN_COUNT,
    T_SCAN_EXPECTED,
    T_TYPICAL_TICKET,
    T_TICKET_Z,
    T_UNITS_Z,
    T_COUNT_Z,
    T_COUNT_CONTEXT_Z,
    T_REVENUE_RATIO,
    T_REVENUE_CONTEXT_RATIO,
    T_SILENT_WINDOWS,
    T_SILENT_EXPECTED,
    T_SILENCE_LOG_P,
    T_EMPTY_RUN,
    T_POISSON_SHARE,
    T_LEARN_Z,
    T_COLUMNS,
) = range(57)

# The baselines the kernels read and write, in the order of their parameters.
STATE_ORDER: tuple[str, ...] = (
    "how_count", "how_rev", "how_n", "hod_count", "hod_rev", "hod_n", "qod_count", "qod_n",
    "level", "level_rev", "level_how", "level_rev_how", "how_hour", "how_hour_n",
    "recent_count", "recent_rev", "recent_n",
    "tk_w", "tk_s1", "tk_s2", "tk_tau_a", "tk_tau_b",
    "uq_w", "uq_s1", "uq_s2", "uq_tau_a", "uq_tau_b",
    "ds_w", "ds_s", "ds_tau_a", "ds_tau_b", "upe", "upe_n", "dsr", "dsr_n",
    "ctx_count", "ctx_exp_count", "ctx_rev", "ctx_exp_rev", "ctx_pos",
    "tr_count", "tr_exp_count", "tr_rev", "tr_exp_rev", "tr_exp2_count", "tr_phi", "tr_phi_n",
    "clump_a", "clump_b", "clump_n", "prev_count", "frozen_n",
    "scan_ring_c", "scan_ring_e", "scan_tot_c", "scan_tot_e", "scan_n", "scan_pos", "last_start",
    "quiet_n", "quiet_total", "dev_day", "dev_run", "dev_cnt_day", "dev_cnt", "how_dev",
    "level_day", "day_learned", "empty_n",
)

# Constants of the formulas (see streamdetect.features for their reasons).
SIGMA_FLOOR = 0.05
# What a sale's log ticket (and log units) varies by before a key's own sales say: a standard
# deviation of 0.5 (a ticket within a factor 2.7 of the key's typical one at two sigma), worth
# TICKET_PRIOR_SALES sales. Without it a key's first few sales, all of one quantity at one price
# (a SKU's), gave it a spread at the floor, and its next sale of two units read as 14 sigma.
TICKET_PRIOR_VAR = 0.25
TICKET_PRIOR_SALES = 5.0
# Where a key's hour of the week and its hour of day (each with its own level) disagree by about
# this log ratio or less, the difference is read as the noise of the weeks the hour of the week
# holds, not as that hour's own pattern (measured on the generator: 0.17-0.35 all do as well).
REFERENCE_NOISE_LOG = 0.25
MAX_LEVEL = 2.0  # |log| of the key's level against its seasonal pattern (x7.4 either way)
# Overdispersion of the trend sums (variance of the log rate beyond Poisson noise): a prior worth
# PHI_PRIOR_WINDOWS windows, then an exponentially weighted estimate over about a day.
PHI_PRIOR = 0.01
PHI_PRIOR_WINDOWS = 120.0
DOW_VAR = 0.1  # variance of log day-of-week factors (about +-30 %), unknown until a week is seen
PHI_FLOOR = 0.02  # no expected rate is known better than about +-14 %
# The tuning constant of Cauchy's weight function for 95 % efficiency at the normal (Holland and
# Welsch, 1977): the scale of the count baselines' robust learning, in standard deviations.
ROBUST_SCALE = 2.3849
# A new pattern of part of the day (see _recurring): an hour of the day counts as changed on a day
# once this many seconds of its windows deviated one way, with the short context agreeing by at
# least RECUR_CONTEXT_Z; from the second such day in a row its deviating windows are learned at
# RECUR_SPEEDUP times the seasonal rate (in log: an hour moves two thirds), into its hour of the
# week and into the other days' same hour where their estimate was within RECUR_SHARE_LOG of it.
RECUR_QUALIFY_S = 1800.0
RECUR_CONTEXT_Z = 2.0
RECUR_SPEEDUP = 4.0
RECUR_SHARE_LOG = 0.25
# An hour of the week is stale (see _stale_hour_of_week) once this many seconds of its windows
# deviated one way on the same day two weeks running: a week apart, a quarter hour of agreement is
# as telling as half an hour a day apart (half an hour left echoes of a few windows unhealed).
STALE_QUALIFY_S = 900.0
# Only with windows of a quarter hour or shorter: with longer ones an hour of the day is one window
# or none, too little to tell a new pattern from an anomaly (daily windows would take two days of
# deviation in a row for one).
RECUR_MAX_HOP_MS = 900_000
# Between-window variance of a per-sale mean (tickets, basket sizes): a prior of no extra
# variance worth this many windows of evidence.
TAU_PRIOR_WINDOWS = 5.0
# What a window's tickets are (the kernels' `tickets`): single sales, whose spread within a
# window and what they share can be seen; rows of one sample each (a value series); rows of
# several sales at their mean ticket (a count series).
TICKETS_SINGLE, TICKETS_SAMPLES, TICKETS_ROWS = 0, 1, 2
# An aggregated series' per-sale variance (see `_row_variance`): a prior of the moments' variance
# worth this many rows.
ROW_PRIOR = 5.0
# Intra-window correlation of new SKUs (a beta-binomial's rho): a prior of none, worth this many
# extra sales.
SHARE_RHO_PRIOR = 20.0
SHARE_CLIP = 1e-3  # no key's share of new SKUs is taken as exactly 0 or 1
# Sales that come in clumps (an invoice's lines, a basket scanned at once, a batch a producer
# flushes): a prior of single sales (Poisson) worth this many sales.
CLUMP_PRIOR_SALES = 20.0
MAX_CLUMP = 1000.0
# The shape of the rate within an hour (an opening ramp, the last half hour before closing), from
# the hour of day's quarters: a quarter's share of its hour, shrunk towards an even share by a
# prior worth this many sales, so that a quiet key's few sales per quarter do not make a shape.
QUARTERS_PER_HOUR = 4
SHAPE_PRIOR_SALES = 20.0



_U64_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U64_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_U64_MIX2 = np.uint64(0x94D049BB133111EB)
_U64_LOW63 = np.uint64((1 << 63) - 1)


@_compiled(nrt=False)
def uniform(key: int, start_ms: int) -> float:
    """A deterministic uniform in [0, 1) per key and window (splitmix64 of both): the same input
    gives the same features, whatever the batching.

    >>> 0.0 <= uniform(3, 60_000) < 1.0, uniform(3, 60_000) == uniform(3, 60_000) != uniform(4, 60_000)
    (True, True)
    """
    z = np.uint64(key) * _U64_GOLDEN + (np.uint64(start_ms) & _U64_LOW63)
    z = (z ^ (z >> np.uint64(30))) * _U64_MIX1
    z = (z ^ (z >> np.uint64(27))) * _U64_MIX2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) / 9007199254740992.0  # 2 ** 53


@_compiled(nrt=False)
def anscombe_z(count: float, expected: float, phi: float) -> float:
    """Anscombe residual of a count against its expectation, in units of its noise: about
    N(0, 1) for a Poisson count whatever the rate, divided by ``sqrt(1 + phi mu)`` for a rate that
    itself wanders (a negative binomial with variance ``mu + phi mu^2``), so that a busy key's
    ordinary ups and downs do not look like a quiet key's anomaly.

    >>> round(anscombe_z(0.0, 50.0, 0.0), 1), round(anscombe_z(0.0, 50.0, 0.02), 1)
    (-13.0, -9.2)
    """
    raw = 2.0 * (math.sqrt(count + 0.375) - math.sqrt(max(expected, 0.0) + 0.375))
    return raw / math.sqrt(1.0 + phi * max(expected, 0.0))


# Acklam's rational approximation of the standard normal quantile, central and tail pieces.
_QA = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716,
       2.506628277459239)
_QB = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
_QC = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968,
       2.938163982698783)
_QD = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
# A new-SKU count is judged exactly (``new_skus_residual``) up to this many sales after a window's
# first; beyond, on Anscombe's arcsine scale, which is as accurate there and costs no loop.
EXACT_SHARE_SALES = 400
RESIDUAL_CLIP = 20.0  # |z| of a residual whose chance underflows


@_compiled(nrt=False)
def normal_quantile(p: float) -> float:
    """The standard normal quantile: Acklam's rational approximation (relative error below
    1.2e-9, plenty for a feature); ``p`` at or beyond 0 and 1 gives -+``RESIDUAL_CLIP``.

    >>> round(normal_quantile(0.975), 6), round(normal_quantile(1e-10), 4), normal_quantile(0.5)
    (1.959964, -6.3613, 0.0)
    """
    if p <= 0.0:
        return -RESIDUAL_CLIP
    if p >= 1.0:
        return RESIDUAL_CLIP
    if p < 0.02425 or p > 0.97575:
        q = math.sqrt(-2.0 * math.log(min(p, 1.0 - p)))
        x = ((((( _QC[0] * q + _QC[1]) * q + _QC[2]) * q + _QC[3]) * q + _QC[4]) * q + _QC[5]) / (
            (((_QD[0] * q + _QD[1]) * q + _QD[2]) * q + _QD[3]) * q + 1.0)
        if p > 0.5:
            x = -x
    else:
        q = p - 0.5
        r = q * q
        x = (((((_QA[0] * r + _QA[1]) * r + _QA[2]) * r + _QA[3]) * r + _QA[4]) * r + _QA[5]) * q / (
            ((((_QB[0] * r + _QB[1]) * r + _QB[2]) * r + _QB[3]) * r + _QB[4]) * r + 1.0)
    return min(max(x, -RESIDUAL_CLIP), RESIDUAL_CLIP)


@_compiled(nrt=False)
def new_skus_residual(k: int, m: int, share: float, rho: float, v: float) -> float:
    """How unusual ``k`` new SKUs among ``m`` sales are for a key whose sales bring a new one at
    rate ``share`` with intra-window correlation ``rho`` (a beta-binomial): the randomised quantile
    residual of Dunn and Smyth (1996), ``Phi^-1(u)`` for ``u`` drawn by ``v`` between
    ``P(X < k)`` and ``P(X <= k)``. Exactly N(0, 1) while the key behaves as it has, whatever
    ``m`` and ``share``: a count that cannot tell anything (a SKU's own key, where no sale brings a
    new one) reads as noise about 0, not as a step on one side, and a shop of a thousand items
    reads one repeat among nine sales by its real chance.

    >>> round(new_skus_residual(0, 3, 1e-3, 0.0, 0.5), 2)  # nothing new where nothing ever is
    -0.0
    >>> round(new_skus_residual(7, 8, 0.999, 0.0, 0.5), 2)  # one repeat in nine, 1 in 1,000 a sale
    -2.65
    >>> round(new_skus_residual(0, 29, 0.99, 0.0, 0.5), 1), round(new_skus_residual(0, 29, 0.99, 0.3, 0.5), 1)
    (-16.2, -4.4)
    """
    if m <= 0:
        return 0.0
    # Summed from the rarer outcome's side: its P(X = 0), a product of m factors of at least
    # 1 - p >= 0.5, stays above 1e-121 for m up to EXACT_SHARE_SALES.
    flip = share > 0.5
    p = 1.0 - share if flip else share
    j = m - k if flip else k
    w = 1.0 - v if flip else v
    s = 1.0 / min(max(rho, 1e-9), 0.999) - 1.0
    a = p * s
    b = (1.0 - p) * s
    pmf = 1.0
    for i in range(m):
        pmf *= (b + i) / (a + b + i)
    below = 0.0
    for i in range(j):
        below += pmf
        pmf *= (m - i) / (i + 1.0) * (a + i) / (b + m - i - 1.0)
    at = pmf
    lower = below + w * at
    if lower < 0.5:
        z = normal_quantile(lower)
    else:
        # The upper tail summed term by term (1 - below - at would lose a far tail to rounding),
        # only here: most windows hold the rarer outcome at or below its median.
        above = 0.0
        for i in range(j, m):
            pmf *= (m - i) / (i + 1.0) * (a + i) / (b + m - i - 1.0)
            above += pmf
        z = -normal_quantile(above + (1.0 - w) * at)
    return -z if flip else z


@_compiled(nrt=False)
def rate_z(count: float, expected: float, phi: float) -> float:
    """How many standard deviations ``count`` lies from ``expected`` (both in clumps, half a clump
    of continuity correction added to each) for a Poisson count whose rate wanders by a log-normal
    factor of variance ``phi``: the log ratio ``log(c / e)`` over ``sqrt(1 / e + phi)``, except that
    its Poisson part is taken on Anscombe's symmetrising 2/3 power, ``1.5 ((c / e)^(2/3) - 1)``,
    which reads the same near ``e`` but has a Poisson count's tails. The two are weighed by their
    shares of the variance, so a busy key (``phi`` dominates) keeps its log ratio.

    What the baselines learn by (their robust weights and their freeze; ``count_scan_z`` itself
    stays a log ratio). The log of a small count has a long lower tail: fifteen empty windows of
    a key selling 0.3 a window read -4.6 (``phi`` 0.05; here -2.8) where their chance (1 %) is
    -2.3, so a quiet key's ordinary lulls froze its baselines or weighed little in them, its busy
    spells did not, and its expected count settled 13-14 % above its rate (generator seed 0, the
    three stores under 0.4 sales a minute; -1 to +7 % this way). Fed to the mixture as the
    feature, the symmetric scale lost recall: the log ratio's heavy lower tail is where a quiet
    store's drop shows first. Against a Poisson count's mid-p tails (10 expected: none, -4.08;
    twenty, 2.80), with the log ratio's reading second:

    >>> round(rate_z(0.5, 10.5, 0.0), 2), round(rate_z(20.5, 10.5, 0.0), 2)
    (-4.22, 2.73)
    >>> round(math.log(0.5 / 10.5) / math.sqrt(1 / 10.5), 2), round(math.log(20.5 / 10.5) / math.sqrt(1 / 10.5), 2)
    (-9.87, 2.17)
    >>> round(rate_z(2000.0, 1000.0, 0.03), 2), round(rate_z(500.0, 1000.0, 0.03), 2)  # log ratio +-3.94
    (3.97, -3.91)
    """
    poisson_var = 1.0 / expected
    ratio = count / expected
    return _symmetric_z(ratio, math.log(ratio), poisson_var, phi, math.sqrt(poisson_var + phi))


@_compiled(nrt=False)
def _symmetric_z(ratio: float, log_ratio: float, poisson_var: float, phi: float, sd: float) -> float:
    """:func:`rate_z` from what the scan has computed for the log ratio's z already (``log_ratio``
    over ``sd = sqrt(poisson_var + phi)``), so that its loop over horizons takes no second
    logarithm or square root."""
    share = poisson_var / (poisson_var + phi)
    symmetric = 1.5 * (ratio ** (2.0 / 3.0) - 1.0)
    return (share * symmetric + (1.0 - share) * log_ratio) / sd


@_compiled(nrt=False)
def pooled_expected(week_ref: float, day_ref: float) -> float:
    """The expected count from the hour of the week's reference and the hour of day's: their
    average in logs (half a sale added), weighted towards the hour of the week by
    ``d^2 / (d^2 + s^2)``, ``d`` their log ratio and ``s`` :data:`REFERENCE_NOISE_LOG`.

    The hour of the week holds the hour as it went on one or a few days, that day's mood included;
    the hour of day pools every day, and today's level carries the day of the week. Where they
    nearly agree the hour of day is the better estimate (on the generator's second week, the
    expected count's error in logs had a standard deviation of 0.25 with the hour of the week
    alone, 0.20 pooled, 0.11 being the rate's own wandering); where they disagree a lot, the
    hour of the week knows something the other days do not (a shop that closes early on Sundays).

    >>> round(pooled_expected(12.0, 10.0), 2), round(pooled_expected(0.0, 10.0), 2)
    (10.62, 0.01)
    """
    log_day = math.log(day_ref + 0.5)
    d = math.log(week_ref + 0.5) - log_day
    w = d * d / (d * d + REFERENCE_NOISE_LOG * REFERENCE_NOISE_LOG)
    return max(math.exp(log_day + w * d) - 0.5, 0.0)


@_compiled(nrt=False)
def _moments(w: float, s1: float, s2: float) -> tuple[bool, float, float]:
    """Whether a key has a distribution of a per-sale log quantity, its mean and floored variance."""
    known = w > 1.0
    mu = s1 / max(w, 1e-12) if known else 0.0
    var = s2 / max(w, 1e-12) - mu * mu if known else 1.0
    return known, mu, max(var, SIGMA_FLOOR * SIGMA_FLOOR)


@_compiled(nrt=False)
def _with_prior(var: float, w: float) -> float:
    """A key's per-sale variance of a log quantity shrunk towards ``TICKET_PRIOR_VAR`` by a prior
    worth ``TICKET_PRIOR_SALES`` sales (``w``: the sales its own variance comes from).

    >>> round(_with_prior(0.0025, 2.0), 4), round(_with_prior(0.81, 10_000.0), 4)
    (0.1793, 0.8097)
    """
    return (w * var + TICKET_PRIOR_SALES * TICKET_PRIOR_VAR) / (w + TICKET_PRIOR_SALES)


@_compiled(nrt=False)
def _mean_variance(per_sale_var: float, between_var: float, n: float) -> float:
    """Variance of the mean of ``n`` sales of one window: ``v / n`` if sales were independent,
    plus what they share within the window (an invoice's lines, a customer's basket, the hour's
    mood), ``tau^2 (1 - 1/n)``, so that a window of correlated sales is not taken for ``n``
    independent witnesses.

    >>> _mean_variance(1.0, 0.0, 4.0), _mean_variance(1.0, 0.5, 4.0)
    (0.25, 0.625)
    """
    n_safe = max(n, 1.0)
    return per_sale_var / n_safe + between_var * (1.0 - 1.0 / n_safe)


@_compiled(nrt=False)
def _row_variance(row_sum: float, row_weight: float, moments_var: float) -> float:
    """The per-sale variance of an aggregated series, whose row of ``c`` sales carries their mean
    only: the mean of ``c (m - mu)^2`` over its rows (each has expectation ``v`` whatever ``c``),
    with a prior of the moments' variance worth ``ROW_PRIOR`` rows.

    The moments (:func:`_moments`) see a row as ``c`` sales of one ticket, so for them the sales
    vary as much as the rows' means do, about ``v / c``: a series of 6 orders a row read its
    per-sale variance as a sixth of what it is, and every row's mean ticket 2.4 times as far out
    as it lies.

    >>> round(_row_variance(4 * 0.25, 4.0, 0.04), 3), round(_row_variance(400 * 0.25, 400.0, 0.04), 3)
    (0.133, 0.247)
    """
    return max((row_sum + ROW_PRIOR * moments_var) / (row_weight + ROW_PRIOR), SIGMA_FLOOR * SIGMA_FLOOR)


@_compiled(nrt=False)
def _learn_rows(row_sum, row_weight, key, decay, seen, dev, c):
    """What :func:`_row_variance` reads: a row's ``c dev^2``, exponentially weighted like the moments."""
    row_sum[key] = row_sum[key] * decay + (c * dev * dev if seen else 0.0)
    row_weight[key] = row_weight[key] * decay + (1.0 if seen else 0.0)


@_compiled(nrt=False)
def _between_variance(excess_sum: float, weight_sum: float) -> float:
    """The between-window variance of a per-sale mean (the moment estimator of a one-way random
    effects model), shrunk towards 0 by a prior worth ``TAU_PRIOR_WINDOWS`` windows."""
    return max(excess_sum, 0.0) / (weight_sum + TAU_PRIOR_WINDOWS)


@_compiled(nrt=False)
def dispersion_index(clump_a: float, clump_b: float) -> float:
    """The key's Var(c) / E(c) of its window counts as measured (see :func:`clump_size`), with a
    prior of ``CLUMP_PRIOR_SALES`` sales that come one by one: about 1 for Poisson sales, about 0
    for a series of one sample a window."""
    return (clump_a + CLUMP_PRIOR_SALES) / (clump_b + CLUMP_PRIOR_SALES)


@_compiled(nrt=False)
def poisson_share(clump_a: float, clump_b: float, clump: float) -> float:
    """How Poisson the key's counts are in clumps of ``clump``: its Var(c) / E(c) (see
    :func:`dispersion_index`) over ``clump``, at most 1; 0 for a series of one sample a window,
    whose count has no Jensen gap to correct.

    >>> poisson_share(0.0, 0.0, 1.0), round(poisson_share(0.0, 1e6, 1.0), 6)
    (1.0, 2e-05)
    """
    return min(dispersion_index(clump_a, clump_b) / clump, 1.0)


@_compiled(nrt=False)
def clump_size(clump_a: float, clump_b: float, clump_n: float) -> float:
    """The key's index of dispersion D = Var(c) / E(c) of its window counts, from the sums of
    squared differences of consecutive counts (``clump_a``, E[(c_t - c_{t-1})^2] = 2 Var(c)) and of
    their sums (``clump_b``): 1 for sales that come one by one (Poisson), about the mean squared
    over the mean clump size for sales that come in clumps. Taken at its lower two-sigma bound
    (the estimate's relative error is about sqrt(2 / n) over n pairs of windows), so that sales
    that come one by one keep D = 1, not the 1.05-1.2 that the noise of a few hours would give.

    >>> clump_size(0.0, 0.0, 0.0), round(clump_size(1600.0, 100.0, 400.0), 1)
    (1.0, 11.6)
    """
    d = dispersion_index(clump_a, clump_b)
    lower = d * (1.0 - 2.0 * math.sqrt(2.0 / max(clump_n, 8.0)))
    return min(max(lower, 1.0), MAX_CLUMP)


@_compiled(nrt=False)
def _learn_bucket(n, count, rev, key, bucket, c, r, rate_floor, weight, evidence=1.0):
    """A seasonal bucket's running means of count and revenue, moved by the window at the
    window's robustness weight over the evidence the bucket holds with it (a young bucket's
    running mean), at least ``rate_floor`` times that weight.

    ``n`` is that evidence, the window adding ``evidence`` (:func:`_evidence` of its weight once
    the key's baselines are trustworthy, a whole window before): a bucket learned from windows
    that deviated (a level shift in the key's first week, the only occurrence of its hour of the
    week) is not trusted as if they had been ordinary ones. Counted as whole windows, such an
    hour was trusted, and a week later expected at the shifted rate, and alerted on for hours.
    """
    held = n[key, bucket] + evidence
    rate = max(weight / held, rate_floor * weight)
    n[key, bucket] = held
    count[key, bucket] += rate * (c - count[key, bucket])
    rev[key, bucket] += rate * (r - rev[key, bucket])


@_compiled(nrt=False)
def robust_weight(z: float) -> float:
    """How much a window whose sustained deviation is ``z`` teaches the count baselines: Cauchy's
    weight ``1 / (1 + (z / c)^2)`` at its usual tuning ``c`` = :data:`ROBUST_SCALE`.

    With ``c`` = 1 an ordinary window weighed 0.4 on average (``count_scan_z`` is the strongest
    of several horizons: its median is about 1.2 where nothing happens) and, a small count's log
    ratio being skewed, a quiet key's slow windows weighed less than its busy ones: the baselines
    of keys selling about one sale a window or less settled 10-35 % above their rate.

    >>> robust_weight(0.0), round(robust_weight(ROBUST_SCALE), 3), round(robust_weight(-6.0), 3)
    (1.0, 0.5, 0.136)
    """
    return 1.0 / (1.0 + (z / ROBUST_SCALE) ** 2)


@_compiled(nrt=False)
def _evidence(weight):
    """What a window learned at robustness ``weight`` (:func:`robust_weight`) counts for in a
    bucket: a whole window while within ``ROBUST_SCALE`` standard deviations of its expectation,
    ``(ROBUST_SCALE / z)^2`` beyond.

    >>> _evidence(1.0), _evidence(0.5), round(_evidence(robust_weight(2 * ROBUST_SCALE)), 2), _evidence(0.0)
    (1.0, 1.0, 0.25, 0.0)
    """
    return 1.0 if weight >= 0.5 else weight / (1.0 - weight)


@_compiled(nrt=False)
def _learn_quarter(n, count, key, quarter, c, hour_rate, weight):
    """A quarter of the hour of day's running mean count, its newest day weighing as much as the
    hour's (a quarter sees a quarter of the hour's windows); ``n`` stops at the average's
    effective number of windows, which is what :func:`within_hour_shape` weighs it by. A quarter's
    first window sets it whatever its weight: a mean started from 0 would keep the weight that
    window lacked, and quarters of one hour learned with different weights would differ where the
    rate does not."""
    rate_floor = 1.0 - (1.0 - hour_rate) ** QUARTERS_PER_HOUR
    rate = max(1.0 / (n[key, quarter] + 1.0), rate_floor) * weight if n[key, quarter] > 0.0 else 1.0
    n[key, quarter] = min(n[key, quarter] + 1.0, 2.0 / rate_floor - 1.0)
    count[key, quarter] += rate * (c - count[key, quarter])


@_compiled(nrt=False)
def _hour_of_quarters(count, n, key, hod):
    """The hour's mean count from its quarters' (each weighed by its windows), so that a quarter
    is compared with an hour learned the same way."""
    total = 0.0
    weight = 0.0
    for j in range(QUARTERS_PER_HOUR):
        q = hod * QUARTERS_PER_HOUR + j
        total += n[key, q] * count[key, q]
        weight += n[key, q]
    return total / weight if weight > 0.0 else 0.0


@_compiled(nrt=False)
def within_hour_shape(quarter_mean: float, quarter_n: float, hour_mean: float, clump: float) -> float:
    """A quarter's rate relative to its hour's: its mean count over the hour's, from ``quarter_n``
    windows, shrunk towards 1 by a prior worth ``SHAPE_PRIOR_SALES`` sales, or as many clumps of
    ``clump`` sales (an invoice's lines say less about the rate than as many single sales).

    >>> within_hour_shape(0.0, 0.0, 10.0, 1.0), round(within_hour_shape(5.0, 60.0, 10.0, 1.0), 3)
    (1.0, 0.516)
    >>> within_hour_shape(0.5, 60.0, 1.0, 1.0)  # a quiet key's shape is shrunk further
    0.625
    """
    if hour_mean <= 0.0:
        return 1.0
    prior_n = SHAPE_PRIOR_SALES * clump / hour_mean
    return (quarter_n * quarter_mean + prior_n * hour_mean) / ((quarter_n + prior_n) * hour_mean)


@_compiled(nrt=False)
def _learn_moments(w, s1, s2, key, decay, c, sum1, sum2):
    """The exponentially weighted count, sum and sum of squares of a per-sale log quantity."""
    w[key] = w[key] * decay + c
    s1[key] = s1[key] * decay + sum1
    s2[key] = s2[key] * decay + sum2


@_compiled(nrt=False)
def _learn_shared(tau_a, tau_b, key, decay, seen, dev, sale_var, c):
    """What a window's sales share: from windows of two sales or more against a known
    distribution, the squared deviation of their mean beyond what ``v / n`` explains, per unit of
    ``1 - 1/n`` (one-way random effects, exponentially weighted like the moments)."""
    c_safe = max(c, 1.0)
    tau_a[key] = tau_a[key] * decay + (dev**2 - sale_var / c_safe if seen else 0.0)
    tau_b[key] = tau_b[key] * decay + (1.0 - 1.0 / c_safe if seen else 0.0)


@_compiled(nrt=False)
def _learn_mean(value, n, key, target, rate_floor):
    """A running mean: the plain mean of the first windows, then an EWMA at ``rate_floor``."""
    nn = n[key] + 1.0
    rate = max(1.0 / nn, rate_floor)
    n[key] = nn
    value[key] += rate * (target - value[key])


@_compiled(nrt=False)
def _moved(old: float, step: float, target: float) -> float:
    """A level moved by ``step`` towards ``target``, bounded to +-MAX_LEVEL."""
    return min(max(old + step * (target - old), -MAX_LEVEL), MAX_LEVEL)


def _log_count_gap_table(lo: float, hi: float, n: int) -> np.ndarray:
    """``log(m + 1/2) - E[log(c + 1/2)]`` for ``c ~ Poisson(m)``, ``log m`` on ``n`` points from
    ``lo`` to ``hi``."""
    from scipy.special import gammaln

    out = np.empty(n)
    for i, log_m in enumerate(np.linspace(lo, hi, n)):
        m = math.exp(log_m)
        c = np.arange(int(m + 12.0 * math.sqrt(m) + 40.0), dtype=np.float64)
        pmf = np.exp(c * log_m - m - gammaln(c + 1.0))
        out[i] = math.log(m + 0.5) - float(pmf @ np.log(c + 0.5)) / float(pmf.sum())
    return out


_GAP_LOG_LO, _GAP_LOG_HI, _GAP_POINTS = -6.0, 9.0, 301
_GAP_STEP = (_GAP_LOG_HI - _GAP_LOG_LO) / (_GAP_POINTS - 1)
_GAP = _log_count_gap_table(_GAP_LOG_LO, _GAP_LOG_HI, _GAP_POINTS)
_GAP_MEAN_LO = math.exp(_GAP_LOG_LO)


@_compiled(nrt=False)
def log_count_gap(mean: float) -> float:
    """How far below ``log(mean + 1/2)`` a Poisson count's ``log(c + 1/2)`` falls on average
    (Jensen's inequality): the bias a level learned from smoothed log ratios would take on.

    >>> round(log_count_gap(0.0), 3), round(log_count_gap(1.4), 3), round(log_count_gap(25.0), 3)
    (0.0, 0.226, 0.02)
    """
    if mean <= 0.0:
        return 0.0
    x = (math.log(mean) - _GAP_LOG_LO) / _GAP_STEP
    if x <= 0.0:  # linear in the mean below the table
        return _GAP[0] * mean / _GAP_MEAN_LO
    if x >= _GAP_POINTS - 1:  # the delta method's 1 / (2 m), exact enough out here
        return 0.5 * mean / (mean + 0.5) ** 2
    j = int(x)
    t = x - j
    return _GAP[j] * (1.0 - t) + _GAP[j + 1] * t


@_compiled(nrt=False)
def _level_step(level: float, step: float, count: float, base: float, clump: float, poisson: float) -> float:
    """A key's log level against ``base`` moved by ``step`` towards the window's ``count``, bounded
    to +-MAX_LEVEL; ``clump`` is the key's clump size D, ``poisson`` the share of a Poisson count's
    variance (in clumps) its counts show (1 for sales, 0 for one sample a window).

    The step is the smoothed log ratio of the count to its expectation under the level, plus the
    average shortfall of that log for a count of that mean and variance, so that the level settles
    where the expectation equals the mean count. Without the correction a key selling about one
    sale a window settled 25-30 % below its rate (the log of a small count averages well under
    the log of its mean), and every window of it looked busy and every drop smaller than it was.
    """
    mu = base * math.exp(level)
    half = 0.5 * clump
    gap = poisson * log_count_gap(mu / clump)
    return min(max(level + step * (math.log((count + half) / (mu + half)) + gap), -MAX_LEVEL), MAX_LEVEL)


@_compiled(nrt=False)
def _forget_quiet(quiet_n, quiet_total, key):
    """Forget a key's silent windows kept aside."""
    for b in range(quiet_n.shape[1]):
        quiet_n[key, b] = 0.0
    quiet_total[key] = 0.0


@_compiled(nrt=False)
def _recurring(dev_day, dev_run, dev_cnt_day, dev_cnt, key, hod, day, sign, qualify):
    """Whether a deviating window (``sign`` its direction) belongs to a new pattern of its hour of
    the day: the hour qualified that way on two days in a row, the later of them today or
    yesterday. A day qualifies when its ``qualify``-th deviating window at that hour is counted,
    in that window's direction. Counts the window towards today's."""
    if dev_cnt_day[key, hod] != day:
        dev_cnt_day[key, hod] = day
        dev_cnt[key, hod] = 0.0
    dev_cnt[key, hod] += 1.0
    if dev_cnt[key, hod] == qualify:
        run = dev_run[key, hod]
        same = dev_day[key, hod] == day - 1 and run * sign > 0.0
        dev_run[key, hod] = run + sign if same else sign
        dev_day[key, hod] = day
    recent = dev_day[key, hod] == day or dev_day[key, hod] == day - 1
    return recent and dev_run[key, hod] * sign >= 2.0


@_compiled(nrt=False)
def _stale_hour_of_week(how_dev, key, how, day, sign, qualified):
    """Whether a deviating window's hour of the week is stale: ``STALE_QUALIFY_S`` of its windows
    deviated the same way today and on the same day a week before. ``how_dev`` holds each hour of
    the week's last qualifying day, ``sign * (2 * (day + 1) + stale)``; ``qualified`` says this
    window made today qualify, which records it."""
    if qualified:
        prev = how_dev[key, how]
        week_before = prev != 0 and (prev > 0) == (sign > 0) and abs(prev) // 2 - 1 == day - 7
        how_dev[key, how] = int(sign) * (2 * (day + 1) + (1 if week_before else 0))
    return how_dev[key, how] == int(sign) * (2 * (day + 1) + 1)


@_compiled(nrt=False)
def _learn_new_pattern(how_n, how_count, how_rev, hod_n, hod_count, hod_rev, qod_n, qod_count,
                       key, how, hod, quarter, c, r, rate):
    """Learn a window of a recurring new pattern at ``rate``: into its hour of the week, its hour
    of the day and its quarter, and into the other days' same hour where their estimate was close
    to this day's (days that looked alike at this hour change alike; a Saturday open later does
    not take a weekday's new closing time)."""
    own = how_count[key, how]
    for dow in range(7):
        b = dow * 24 + hod
        alike = how_n[key, b] > 0.0 and abs(math.log((how_count[key, b] + 0.5) / (own + 0.5))) <= RECUR_SHARE_LOG
        if b != how and alike:
            _learn_bucket(how_n, how_count, how_rev, key, b, c, r, rate, 1.0)
    _learn_bucket(how_n, how_count, how_rev, key, how, c, r, rate, 1.0)
    _learn_bucket(hod_n, hod_count, hod_rev, key, hod, c, r, rate, 1.0)
    _learn_quarter(qod_n, qod_count, key, quarter, c, rate, 1.0)


@_compiled(nrt=False)
def _seasonal_revenue(c, r, f, freeze_z):
    """The revenue a window teaches the seasonal buckets: its own, unless its mean ticket deviates
    beyond ``freeze_z`` (a price glitch, a flood of tiny tickets); then its count at the hour's
    usual revenue per sale. A bucket is a running mean of revenue, and a young one learns fast: a
    38-minute glitch of prices x100 put the hour of the week at 20 times its revenue, and the
    same hour paged a week later, and the week after, on normal sales. The ticket features judge
    such windows; the key's level and ticket moments still learn them (a price change that lasts
    is learned there first, and reaches the buckets once the tickets no longer deviate)."""
    if abs(f[T_TICKET_Z]) < freeze_z or c == 0.0:
        return r
    e_c = f[T_EXPECTED_COUNT]
    return c * (f[T_EXPECTED_REV] / e_c if e_c > 0.0 else f[T_TYPICAL_TICKET])


@_compiled(nrt=False)
def _learn_closed(how_count, how_rev, how_n, hod_count, hod_rev, hod_n, quiet_n, key, season_rate, min_bucket):
    """Learn the silent windows of a key that closed (went quiet until its idle timeout) into the
    seasonal buckets that hold no estimate yet: a shop's first early-closing Sunday was flagged,
    as it had to be, but it is what its Sunday evenings look like. A bucket with an estimate keeps
    it (a silence there is judged as any window is)."""
    for b in range(quiet_n.shape[1]):
        k = int(quiet_n[key, b])
        hb = b % 24
        for _ in range(k):
            if how_n[key, b] < min_bucket:
                _learn_bucket(how_n, how_count, how_rev, key, b, 0.0, 0.0, season_rate, 1.0)
            if hod_n[key, hb] < min_bucket:
                _learn_bucket(hod_n, hod_count, hod_rev, key, hb, 0.0, 0.0, season_rate, 1.0)


@_compiled(nrt=False)
def _level_kept(start_ms, last, hop_ms, level_rate):
    """The share of a key's levels (its ratios to its seasonal references today) kept across a gap
    in its windows: a key without windows was closed, and its levels revert to its seasonal
    pattern at their own rate over the windows it missed, as they do over windows that sell as
    usual. A level is a day's; without this the level that a shop's early closing taught (learned
    as its new normal) was expected of its next morning: 3.8 sales a minute where it sells 10."""
    gap = (start_ms - last) / hop_ms - 1.0
    return (1.0 - level_rate) ** gap if gap > 0.0 else 1.0


@_compiled(nrt=False)
def _local_day(local_hour):
    """The day a window is of, as ``level_day`` records it: days since the epoch on the key's
    clock (``local_hour`` counts its hours), plus 1 so that 0 means none yet."""
    return local_hour // 24 + 1


@_compiled(nrt=False)
def _learned_today(level_day, day_learned, key, local_hour):
    """The share of a key's level learned from its windows of today (its local day): a day's
    sales differ from the day before by a day-of-week factor, which the level learns as the day
    goes on. As an exponential smoother it is ``1 - prod(1 - step)`` over today's steps, and 0 on
    a day it has not learned yet (``level_day`` is the :func:`_local_day` the level last learned)."""
    return day_learned[key] if level_day[key] == _local_day(local_hour) else 0.0


@_compiled(nrt=False)
def _silent_run(ring_c, pos, tot_c, seen_n):
    """How many windows, the current one included, the key has sold nothing in: the longest run
    its scan ring can tell (``seen_n`` windows since the sums restarted, at most the ring less one).

    ``ring_c`` holds the running count total as it stood after each of the last windows, so the
    count of the last ``L`` windows is ``tot_c`` less the total ``L`` windows ago; that count only
    grows with ``L``, so the run's end is found by bisection, not by walking a quiet night back.
    """
    ring = len(ring_c)
    lo = 1  # the current window, empty
    hi = min(seen_n, ring - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tot_c - (ring_c[(pos - mid) % ring] if seen_n > mid else 0.0) > 0.0:
            hi = mid - 1
        else:
            lo = mid
    return lo


# Gauss-Hermite nodes and log weights for an expectation over a standard normal.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(32)
_GH_LOG_WEIGHTS = np.log(_GH_WEIGHTS / _GH_WEIGHTS.sum())


@_compiled(nrt=False)
def zero_log_p(mean, phi):
    """``log P(0)`` of a count of mean ``mean`` whose rate wanders by a log-normal factor of
    squared coefficient of variation ``phi`` (Poisson-log-normal; Poisson at ``phi`` 0): how
    unlikely an empty run is. The rate's wandering is log-normal here as in the count features,
    which judge log ratios in units of ``sqrt(phi)``; a gamma's (the negative binomial's) heavier
    lower tail would make a busy hour's empty quarter hour several times likelier than that.

    >>> round(zero_log_p(10.0, 0.0), 6), round(zero_log_p(10.0, 0.1), 2), zero_log_p(0.0, 0.1)
    (-10.0, -7.3, 0.0)
    """
    if mean <= 0.0:
        return 0.0
    if phi <= 0.0:
        return -mean
    s2 = math.log1p(phi)
    s = math.sqrt(s2)
    best = -math.inf  # a running log-sum-exp of the nodes' terms
    total = 0.0
    for i in range(len(_GH_NODES)):
        term = _GH_LOG_WEIGHTS[i] - mean * math.exp(s * _GH_NODES[i] - 0.5 * s2)
        if term > best:
            total = total * math.exp(best - term) + 1.0
            best = term
        else:
            total += math.exp(term - best)
    return best + math.log(total)


@_compiled(nrt=False)
def transform_round(
    out, keys, start_ms, hop_ms, hour, how, quarter,
    count, revenue, log_ticket_sum, log_units_sum, distinct_skus,
    min_bucket, trend_decay, level_rate, tickets, basket, new_skus, scan, overlap,
    how_count, how_rev, how_n, hod_count, hod_rev, hod_n, qod_count, qod_n,
    level, level_rev, level_how, level_rev_how, how_hour, how_hour_n,
    recent_count, recent_rev, recent_n,
    tk_w, tk_s1, tk_s2, tk_tau_a, tk_tau_b,
    uq_w, uq_s1, uq_s2, uq_tau_a, uq_tau_b,
    ds_w, ds_s, ds_tau_a, ds_tau_b, upe, upe_n, dsr, dsr_n,
    ctx_count, ctx_exp_count, ctx_rev, ctx_exp_rev, ctx_pos,
    tr_count, tr_exp_count, tr_rev, tr_exp_rev, tr_exp2_count, tr_phi, tr_phi_n,
    clump_a, clump_b, clump_n, prev_count, frozen_n,
    scan_ring_c, scan_ring_e, scan_tot_c, scan_tot_e, scan_n, scan_pos, last_start,
    quiet_n, quiet_total, dev_day, dev_run, dev_cnt_day, dev_cnt, how_dev,
    level_day, day_learned, empty_n,
):
    """The round's features under the baselines as they are (nothing else is written), into the
    first ``len(keys)`` rows of ``out`` (``T_COLUMNS`` wide); ``overlap`` is the window's size over
    its hop (1 for tumbling windows)."""
    n = len(keys)
    n_ctx = ctx_count.shape[1]
    ring = scan_ring_c.shape[1]
    for i in range(n):
        key = keys[i]
        c = count[i]
        r = revenue[i]
        o = out[i]
        # An hour of week is trusted once it held enough windows before this occurrence of the
        # hour: the current occurrence alone would only echo the current hour back.
        this_hour = how_hour[key] == hour[i]
        # (Evidence is a sum of fractions: this occurrence's own, subtracted, leaves a rounding.)
        how_ok = how_n[key, how[i]] - (how_hour_n[key] if this_hour else 0.0) >= min_bucket - 1e-9
        q = quarter[i]
        hod = q // QUARTERS_PER_HOUR
        hod_ok = hod_n[key, hod] >= min_bucket
        # Hourly references, shaped within the hour by the hour of day's quarters.
        # Sales that come in clumps of about D vary D times more than single ones (a compound
        # Poisson): every count is judged in clumps, c / D against lambda / D.
        clump = clump_size(clump_a[key], clump_b[key], clump_n[key])
        shape = 1.0
        if hod_ok and hop_ms < 3_600_000:
            hour_mean = _hour_of_quarters(qod_count, qod_n, key, hod)
            shape = within_hour_shape(qod_count[key, q], qod_n[key, q], hour_mean, clump)
        fb_c = hod_count[key, hod] * shape if hod_ok else recent_count[key]
        fb_r = hod_rev[key, hod] * shape if hod_ok else recent_rev[key]
        h_c = how_count[key, how[i]] * shape
        h_r = how_rev[key, how[i]] * shape
        # Two seasonal references, each with its own level (today's ratio to it), so that the
        # switch from hour of day to hour of week does not count the day-of-week effect twice.
        keep = _level_kept(start_ms, last_start[key], hop_ms, level_rate)
        lv_c = keep * (level_how[key] if how_ok else level[key])
        lv_r = keep * (level_rev_how[key] if how_ok else level_rev[key])
        expected_count = (h_c if how_ok else fb_c) * math.exp(lv_c)
        if how_ok and hod_ok:
            expected_count = pooled_expected(expected_count, fb_c * math.exp(keep * level[key]))
        expected_rev = (h_r if how_ok else fb_r) * math.exp(lv_r)
        o[T_MATURE] = how_ok or hod_ok
        o[T_HOW_OK] = how_ok
        o[T_RECENT_OK] = recent_n[key] > 0
        o[T_FALLBACK_COUNT] = fb_c
        o[T_FALLBACK_REV] = fb_r
        o[T_HOW_COUNT] = h_c
        o[T_HOW_REV] = h_r
        o[T_EXPECTED_COUNT] = expected_count
        o[T_EXPECTED_REV] = expected_rev

        # The window's mean log ticket against the key's ticket distribution (log1p of amounts,
        # exponentially weighted over a day), allowing for what a window's sales share.
        c_safe = max(c, 1.0)
        has_tickets, mu, var = _moments(tk_w[key], tk_s1[key], tk_s2[key])
        if tickets == TICKETS_ROWS:
            # Rows of several sales: their means are all there is (`_row_variance`; the state
            # that holds what single sales share holds them).
            var = _row_variance(tk_tau_a[key], tk_tau_b[key], var)
        elif tickets == TICKETS_SINGLE:
            var = _with_prior(var, tk_w[key])
        sigma = math.sqrt(var)
        sale_var = sigma * sigma
        tau2 = _between_variance(tk_tau_a[key], tk_tau_b[key]) if tickets == TICKETS_SINGLE else 0.0
        o[T_HAS_TICKETS] = has_tickets
        o[T_MU] = mu
        o[T_SIGMA] = sigma
        o[T_TICKET_DEV] = log_ticket_sum[i] / c_safe - mu
        o[T_TICKET_SALE_VAR] = sale_var
        o[T_TICKET_VAR] = _mean_variance(sale_var, tau2, c)
        seen_tickets = has_tickets and c > 0
        o[T_TICKET_SEEN] = seen_tickets
        o[T_TICKET_Z] = o[T_TICKET_DEV] / math.sqrt(o[T_TICKET_VAR]) if seen_tickets else 0.0
        # The ratios' smoothing needs a ticket's size even before the key's spread is known: the
        # mean of its sales so far, else this window's (1 + ticket, in logs). Taken as 1, a key's
        # first sale of 25 read as revenue 26 times the expected.
        if tk_w[key] > 0.0:
            typical_ticket = math.exp(tk_s1[key] / tk_w[key])
        else:
            typical_ticket = math.exp(log_ticket_sum[i] / c) if c > 0.0 else 1.0
        o[T_TYPICAL_TICKET] = typical_ticket
        o[T_REVENUE_RATIO] = math.log((r + typical_ticket) / (expected_rev + typical_ticket))

        if basket:
            known_u, mu_u, var_u = _moments(uq_w[key], uq_s1[key], uq_s2[key])
            if tickets == TICKETS_SINGLE:
                var_u = _with_prior(var_u, uq_w[key])
            o[T_UNITS_DEV] = log_units_sum[i] / c_safe - mu_u
            o[T_UNITS_SALE_VAR] = var_u
            o[T_UNITS_VAR] = _mean_variance(var_u, _between_variance(uq_tau_a[key], uq_tau_b[key]), c)
            seen_units = known_u and c > 0
            o[T_UNITS_SEEN] = seen_units
            o[T_UNITS_Z] = o[T_UNITS_DEV] / math.sqrt(o[T_UNITS_VAR]) if seen_units else 0.0

        if new_skus:
            # Of the m = c - 1 sales after the window's first, those that brought a SKU not yet sold
            # in it, against the key's usual share p and intra-window correlation rho (a customer
            # buying several of one item): a beta-binomial count, read exactly (new_skus_residual)
            # up to EXACT_SHARE_SALES, beyond on Anscombe's arcsine scale 2 sqrt(m) (asin sqrt((x +
            # 3/8) / (m + 3/4)) - asin sqrt(p)) over sqrt(1 + (m - 1) rho); either way with the
            # sketch's own counting error on top. `raw`, the arcsine residual, is what rho learns
            # from.
            m = max(c - 1.0, 0.0)
            m_safe = max(m, 1.0)
            learned_share = ds_s[key] / max(ds_w[key], 1e-12)
            share = min(max(learned_share, SHARE_CLIP), 1.0 - SHARE_CLIP)
            new = min(max(distinct_skus[i] - 1.0, 0.0), m)
            v = uniform(key, start_ms)
            spread = min(max(new + (v - 0.5), 0.0), m)
            stabilised = math.asin(math.sqrt((spread + 0.375) / (m + 0.75))) - math.asin(math.sqrt(share))
            raw = 2.0 * math.sqrt(m) * stabilised
            expected_distinct = 1.0 + m * share if c > 0 else 0.0
            binomial_var = m_safe * share * (1.0 - share)
            rho = max(ds_tau_a[key], 0.0) / (ds_tau_b[key] + SHARE_RHO_PRIOR)
            # The linear-counting sketch's own variance (Whang et al., 1990): 0.1 at 16 SKUs, 1 at 45.
            t = min(max(expected_distinct, 0.0) / SKETCH_BITS, 20.0)
            sketch_var = SKETCH_BITS * (math.exp(t) - t - 1.0)
            correlation = 1.0 + max(m - 1.0, 0.0) * rho
            seen = ds_w[key] > 1.0 and m > 0
            if learned_share < SHARE_CLIP:
                # A key whose sales bring no second SKU to a window (a SKU's own key, a one-product
                # shop): the count can take one value, its residual is a uniform's, and every
                # window of the key reads as noise, those of one sale or none too; a 0 for
                # those beside noise for the rest was a step the mixture learned as certain.
                z = normal_quantile(v)
            elif not seen:
                z = 0.0
            elif m <= EXACT_SHARE_SALES:
                # Exactly, where the arcsine's normal approximation is poor (few sales, or a share
                # near 0 or 1: keyed by SKU, where no sale brings a new one, every window of two
                # sales read about +1); the sketch's error on top, as its share of the variance.
                k = int(min(max(round(new), 0.0), m))
                exact = new_skus_residual(k, int(m + 0.5), share, rho, v)
                z = exact / math.sqrt(1.0 + sketch_var / (binomial_var * correlation))
            else:
                z = raw / math.sqrt(correlation + sketch_var / binomial_var)
            o[T_SKUS_Z] = z
            o[T_SKUS_RAW] = raw
            o[T_SKUS_EXPECTED] = expected_distinct
            o[T_SKUS_SEEN] = seen

        # Short-horizon context: this window plus the previous ones, reset after a gap.
        contiguous = last_start[key] == start_ms - hop_ms
        s_c = 0.0
        s_e = 0.0
        s_r = 0.0
        s_er = 0.0
        if contiguous:
            for j in range(n_ctx):
                s_c += ctx_count[key, j]
                s_e += ctx_exp_count[key, j]
                s_r += ctx_rev[key, j]
                s_er += ctx_exp_rev[key, j]
        o[T_CTX_COUNT] = s_c + c
        o[T_CTX_EXP_COUNT] = s_e + expected_count
        o[T_CTX_REV] = s_r + r
        o[T_CTX_EXP_REV] = s_er + expected_rev
        # Longer horizon: exponentially weighted sums (half-life `trend_half_life`), for sustained
        # changes too small to see in a few windows of a quiet key.
        dec = trend_decay if contiguous else 0.0
        t_c = dec * tr_count[key] + c
        t_e = dec * tr_exp_count[key] + expected_count
        t_e2 = dec * dec * tr_exp2_count[key] + expected_count
        o[T_TR_COUNT] = t_c
        o[T_TR_EXP_COUNT] = t_e
        o[T_TR_REV] = dec * tr_rev[key] + r
        o[T_TR_EXP_REV] = dec * tr_exp_rev[key] + expected_rev
        o[T_TR_EXP2_COUNT] = t_e2
        # Sustained deviations are judged against the key's own overdispersion: real rates wander
        # (weather, promotions, the hour's mood) far more than Poisson noise over an hour of a
        # busy key, and a z-score that ignored it would page on every busy afternoon.
        tr_e = t_e + 0.5
        o[T_TREND_LOG_RATIO] = math.log((t_c + 0.5) / tr_e)
        o[T_TREND_POISSON_VAR] = (t_e2 + 0.25) / (tr_e * tr_e) * clump
        o[T_CLUMP] = clump
        o[T_POISSON_SHARE] = poisson_share(clump_a[key], clump_b[key], clump)
        phi = max(tr_phi[key], PHI_FLOOR) if tr_phi_n[key] > 0 else PHI_PRIOR
        # Until the key's hour of week is known, the day-of-week effect is unknown too: today's
        # factor, of which the level has learned a share since the day began.
        if not how_ok:
            unknown = 1.0 - _learned_today(level_day, day_learned, key, hour[i])
            phi = phi + DOW_VAR * unknown * unknown
        o[T_PHI] = phi
        o[T_COUNT_Z] = anscombe_z(c / clump, expected_count / clump, phi)
        o[T_COUNT_CONTEXT_Z] = anscombe_z(o[T_CTX_COUNT] / clump, o[T_CTX_EXP_COUNT] / clump, phi)
        o[T_REVENUE_CONTEXT_RATIO] = math.log(
            (o[T_CTX_REV] + typical_ticket) / (o[T_CTX_EXP_REV] + typical_ticket)
        )

        # Scan over several horizons: the count of the last L windows against its expectation,
        # for each L in `scan`, as a log ratio over its standard deviation (Poisson plus the key's
        # overdispersion); the horizon with the strongest evidence speaks. Whatever the length of
        # a change, one horizon about matches it. The sums restart after an alert.
        tot_c = (scan_tot_c[key] if contiguous else 0.0) + c
        tot_e = (scan_tot_e[key] if contiguous else 0.0) + expected_count
        seen_n = (scan_n[key] if contiguous else 0) + 1
        # Half a clump of continuity correction: counted in clumps, as the level is.
        half = 0.5 * clump
        best_z = 0.0
        best_c = 0.0
        best_e = 0.0
        learn_z = 0.0
        for j in range(len(scan)):
            lag = scan[j]
            slot = (scan_pos[key] - lag) % ring
            full = seen_n > lag
            sum_c = tot_c - (scan_ring_c[key, slot] if full else 0.0)
            sum_e = max(tot_e - (scan_ring_e[key, slot] if full else 0.0), 0.0) + half
            ratio = (max(sum_c, 0.0) + half) / sum_e
            log_ratio = math.log(ratio)
            poisson_var = clump / sum_e
            sd = math.sqrt(poisson_var + phi)
            z = log_ratio / sd
            if j == 0 or abs(z) > abs(best_z):
                best_z, best_c, best_e = z, sum_c, sum_e
            # What the baselines learn by: the same evidence with a Poisson count's tails.
            z_sym = _symmetric_z(ratio, log_ratio, poisson_var, phi, sd)
            if j == 0 or abs(z_sym) > abs(learn_z):
                learn_z = z_sym
        silent = 0
        silent_e = 0.0
        log_p = 0.0
        if c == 0.0 and seen_n >= 2:
            silent = _silent_run(scan_ring_c[key], scan_pos[key], tot_c, seen_n)
            slot = (scan_pos[key] - silent) % ring
            silent_e = max(tot_e - (scan_ring_e[key, slot] if seen_n > silent else 0.0), 0.0)
            # Hopping windows overlap: a run of them spans overlap - 1 + silent hops, not
            # overlap * silent, and only the sales expected over that span went missing.
            silent_e *= (overlap - 1.0 + silent) / (overlap * silent)
            log_p = zero_log_p(silent_e / clump, phi)
        o[T_SILENT_WINDOWS] = silent
        o[T_SILENT_EXPECTED] = silent_e
        o[T_SILENCE_LOG_P] = log_p
        # The whole run, which no alert restarts (what an alert reports of a long silence).
        o[T_EMPTY_RUN] = (empty_n[key] if contiguous else 0) + 1 if c == 0.0 else 0
        o[T_SCAN_TOT_C] = tot_c
        o[T_SCAN_TOT_E] = tot_e
        o[T_SCAN_N] = seen_n
        o[T_SCAN_Z] = best_z
        o[T_LEARN_Z] = learn_z
        # What an alert reports: the count over the strongest horizon and what was expected.
        o[T_SCAN_COUNT] = max(best_c, 0.0)
        o[T_SCAN_EXPECTED] = best_e - half


@_compiled(nrt=False)
def update_round(
    keys, start_ms, hop_ms, hour, how, quarter,
    count, revenue, units, log_ticket_sum, log_ticket_sq_sum, log_units_sum, log_units_sq_sum, distinct_skus,
    feats, learn, new_normal,
    season_rate, level_rate, ticket_decay, phi_rate, freeze_z, freeze_limit, min_bucket,
    tickets, basket, new_skus, ratios,
    how_count, how_rev, how_n, hod_count, hod_rev, hod_n, qod_count, qod_n,
    level, level_rev, level_how, level_rev_how, how_hour, how_hour_n,
    recent_count, recent_rev, recent_n,
    tk_w, tk_s1, tk_s2, tk_tau_a, tk_tau_b,
    uq_w, uq_s1, uq_s2, uq_tau_a, uq_tau_b,
    ds_w, ds_s, ds_tau_a, ds_tau_b, upe, upe_n, dsr, dsr_n,
    ctx_count, ctx_exp_count, ctx_rev, ctx_exp_rev, ctx_pos,
    tr_count, tr_exp_count, tr_rev, tr_exp_rev, tr_exp2_count, tr_phi, tr_phi_n,
    clump_a, clump_b, clump_n, prev_count, frozen_n,
    scan_ring_c, scan_ring_e, scan_tot_c, scan_tot_e, scan_n, scan_pos, last_start,
    quiet_n, quiet_total, dev_day, dev_run, dev_cnt_day, dev_cnt, how_dev,
    level_day, day_learned, empty_n,
):
    """Fold a round into the baselines (see FeatureExtractor.update); ``feats`` is transform_round's."""
    n_ctx = ctx_count.shape[1]
    ring = scan_ring_c.shape[1]
    d = ticket_decay
    recur_qualify = max(math.ceil(RECUR_QUALIFY_S * 1000.0 / hop_ms), 1.0)
    stale_qualify = max(math.ceil(STALE_QUALIFY_S * 1000.0 / hop_ms), 1.0)
    recur_rate = 1.0 - (1.0 - season_rate) ** RECUR_SPEEDUP
    for i in range(len(keys)):
        key = keys[i]
        c = count[i]
        r = revenue[i]
        f = feats[i]
        flagged = not learn[i]
        # What the key has been alerted for: a flagged window, or one of a new normal (alerted and
        # learned); either restarts the sums below.
        reported = flagged or new_normal[i]
        contiguous = last_start[key] == start_ms - hop_ms
        if not contiguous:  # a key that was closed (see _level_kept)
            keep = _level_kept(start_ms, last_start[key], hop_ms, level_rate)
            level[key] *= keep
            level_rev[key] *= keep
            level_how[key] *= keep
            level_rev_how[key] *= keep
        if quiet_total[key] > 0.0 and (c > 0.0 or not contiguous):
            if not contiguous:
                # The key went quiet until its idle timeout: closed for the rest of the day.
                _learn_closed(
                    how_count, how_rev, how_n, hod_count, hod_rev, hod_n, quiet_n, key, season_rate, min_bucket
                )
            _forget_quiet(quiet_n, quiet_total, key)

        # The clump size D from consecutive windows, E[(c_t - c_{t-1})^2] = 2 Var(c) where the rate
        # hardly moves from one window to the next: no baseline is needed, so a baseline that is
        # still wrong cannot bias it.
        paired = contiguous and learn[i]
        prev = prev_count[key]
        decay = d if paired else 1.0
        clump_a[key] = clump_a[key] * decay + ((c - prev) ** 2 if paired else 0.0)
        clump_b[key] = clump_b[key] * decay + (c + prev if paired else 0.0)
        clump_n[key] = clump_n[key] * decay + (1.0 if paired and c + prev > 0 else 0.0)
        prev_count[key] = c

        # The context ring records every window, anomalous or not; a gap restarts it, and so does
        # a reported window: a spike already reported must not keep the next windows alerting
        # while it is still in their sum.
        if reported or not contiguous:
            for j in range(n_ctx):
                ctx_count[key, j] = 0.0
                ctx_exp_count[key, j] = 0.0
                ctx_rev[key, j] = 0.0
                ctx_exp_rev[key, j] = 0.0
        if not reported:
            # The k - 1 most recent windows (with the current one, the context's k); the ring's
            # last column stays 0 (a layout the saved states share).
            pos = ctx_pos[key] % (n_ctx - 1)
            ctx_count[key, pos] = c
            ctx_exp_count[key, pos] = f[T_EXPECTED_COUNT]
            ctx_rev[key, pos] = r
            ctx_exp_rev[key, pos] = f[T_EXPECTED_REV]
        ctx_pos[key] += 1
        last_start[key] = start_ms
        pos = scan_pos[key] % ring
        scan_ring_c[key, pos] = f[T_SCAN_TOT_C]
        scan_ring_e[key, pos] = f[T_SCAN_TOT_E]
        scan_pos[key] += 1
        empty_n[key] = np.int64(f[T_EMPTY_RUN])
        # A reported window restarts the trend sums and the scan (as a CUSUM restarts after its
        # alarm): evidence already reported must not keep the key alerting after a short anomaly,
        # nor the last windows of a long one, learned as its new normal, after it ended.
        if reported:
            tr_count[key] = 0.0
            tr_exp_count[key] = 0.0
            tr_rev[key] = 0.0
            tr_exp_rev[key] = 0.0
            tr_exp2_count[key] = 0.0
            scan_tot_c[key] = 0.0
            scan_tot_e[key] = 0.0
            scan_n[key] = 0
        else:
            tr_count[key] = f[T_TR_COUNT]
            tr_exp_count[key] = f[T_TR_EXP_COUNT]
            tr_rev[key] = f[T_TR_REV]
            tr_exp_rev[key] = f[T_TR_EXP_REV]
            tr_exp2_count[key] = f[T_TR_EXP2_COUNT]
            scan_tot_c[key] = f[T_SCAN_TOT_C]
            scan_tot_e[key] = f[T_SCAN_TOT_E]
            scan_n[key] = np.int64(f[T_SCAN_N])

        # A sustained deviation in progress freezes the key's baselines, or they would absorb a
        # drop or a level shift before it is evidence enough to alert on. Past `freeze_limit`, or
        # once the key has been flagged for long, the key has a new normal and they follow it. A
        # key that expects nothing yet (its first window) has nothing to deviate from. The scan's
        # evidence is read with a Poisson count's tails here (`rate_z`): with the log ratio's long
        # lower tail a quiet key's lulls were kept out more than its busy spells, and its baselines
        # settled high. The freeze's clock restarts only once the deviation has fallen under half
        # of `freeze_z`: a lasting drop that dips under it now and then is still one change.
        learn_z = f[T_LEARN_Z]
        deviating = abs(learn_z) >= freeze_z and f[T_RECENT_OK] != 0.0
        calm = abs(learn_z) < 0.5 * freeze_z
        frozen = frozen_n[key] + 1.0 if deviating else (0.0 if calm else frozen_n[key])
        frozen_n[key] = frozen
        settled = (deviating and frozen > freeze_limit) or new_normal[i]
        hod = quarter[i] // QUARTERS_PER_HOUR
        r_season = _seasonal_revenue(c, r, f, freeze_z)
        sustained = deviating and f[T_COUNT_CONTEXT_Z] * learn_z >= RECUR_CONTEXT_Z * abs(learn_z)
        if sustained and hop_ms <= RECUR_MAX_HOP_MS:
            # A deviation that comes back at the same hour day after day is a new pattern of the
            # key's day (new opening hours, quieter evenings), not an anomaly: its hour learns it
            # fast, and the level does not (the rest of the day did not change). Otherwise such a
            # change, frozen beyond `freeze_z` and learned into buckets that move a quarter a
            # week, paged every day (17-72 alert windows an evening in the test's scenario).
            sign = 1.0 if learn_z > 0.0 else -1.0
            day = hour[i] // 24
            if _recurring(dev_day, dev_run, dev_cnt_day, dev_cnt, key, hod, day, sign, recur_qualify):
                _learn_new_pattern(how_n, how_count, how_rev, hod_n, hod_count, hod_rev, qod_n, qod_count,
                                   key, how[i], hod, quarter[i], c, r_season, recur_rate)
                continue
            # An hour of the week that deviates the same way week after week was learned wrong
            # (a first week's level shift, learned while the day of the week was unknown): its
            # windows are flagged or frozen, so at the seasonal rate it paged for weeks.
            qualified = dev_cnt_day[key, hod] == day and dev_cnt[key, hod] == stale_qualify
            if _stale_hour_of_week(how_dev, key, how[i], day, sign, qualified):
                _learn_bucket(how_n, how_count, how_rev, key, how[i], c, r_season, recur_rate, 1.0)
                continue
        if flagged or (deviating and not settled):
            if c == 0.0:
                # Not learned: kept aside in case the silence turns out to be closing time.
                quiet_n[key, how[i]] += 1.0
                quiet_total[key] += 1.0
            continue
        # Robust learning (an M-estimate, as in robust exponential smoothing): below the freeze,
        # a window weighs by its sustained deviation z (Cauchy's weight), so a change the scan is
        # still building evidence for hardly moves the count baselines. A new normal weighs 1.
        weight = 1.0 if settled else robust_weight(learn_z)

        mature = f[T_MATURE] != 0.0
        # A deviation means something only from a trustworthy expectation; before, a window counts whole.
        evidence = _evidence(weight) if mature else 1.0
        _learn_bucket(how_n, how_count, how_rev, key, how[i], c, r_season, season_rate, weight, evidence)
        # The evidence learned in this occurrence of the hour: it does not make it trusted yet.
        how_hour_n[key] = how_hour_n[key] + evidence if how_hour[key] == hour[i] else evidence
        how_hour[key] = hour[i]
        _learn_bucket(hod_n, hod_count, hod_rev, key, hod, c, r_season, season_rate, weight, evidence)
        _learn_quarter(qod_n, qod_count, key, quarter[i], c, season_rate, weight)

        if mature:
            # Overdispersion: mean squared log ratio beyond the Poisson part, on mature baselines.
            excess = f[T_TREND_LOG_RATIO] ** 2 - f[T_TREND_POISSON_VAR]
            n_phi = tr_phi_n[key] + 1.0
            prior = tr_phi[key] if tr_phi_n[key] > 0 else PHI_PRIOR
            rate_phi = max(1.0 / (n_phi + PHI_PRIOR_WINDOWS), phi_rate)
            tr_phi[key] = prior + rate_phi * (excess - prior)
            tr_phi_n[key] = n_phi

        # The key's levels relative to its two seasonal references (log ratios, bounded), in
        # clumps: for sales that come in clumps of about D most windows hold none and a few hold
        # many, and the mean of log((c + 1/2) / (lambda + 1/2)) would put the level a third as
        # high as it is; counted in clumps, log((c / D + 1/2) / (lambda / D + 1/2)), about right.
        how_ok = f[T_HOW_OK] != 0.0
        half = 0.5 * f[T_CLUMP]
        half_rev = 2.0 * half  # revenue is smoothed by a clump of unit tickets
        step = level_rate * weight
        # How Poisson the key's counts are, with this window's pair counted in.
        poisson = poisson_share(clump_a[key], clump_b[key], f[T_CLUMP])
        if mature:
            # The share of the level learned today: what is known of today's day-of-week factor.
            day_learned[key] = 1.0 - (1.0 - _learned_today(level_day, day_learned, key, hour[i])) * (1.0 - step)
            level_day[key] = _local_day(hour[i])
            level[key] = _level_step(level[key], step, c, f[T_FALLBACK_COUNT], f[T_CLUMP], poisson)
            level_rev[key] = _moved(level_rev[key], step, math.log((r + half_rev) / (f[T_FALLBACK_REV] + half_rev)))
        else:
            level[key] = 0.0
            level_rev[key] = 0.0
        if how_ok:
            level_how[key] = _level_step(level_how[key], step, c, f[T_HOW_COUNT], f[T_CLUMP], poisson)
            level_rev_how[key] = _moved(level_rev_how[key], step, math.log((r + half_rev) / (f[T_HOW_REV] + half_rev)))
        elif not mature:
            level_how[key] = 0.0
            level_rev_how[key] = 0.0

        rn = recent_n[key] + 1.0
        rate = max(1.0 / rn, level_rate)
        recent_n[key] = rn
        recent_count[key] += rate * (c - recent_count[key])
        recent_rev[key] += rate * (r - recent_rev[key])

        _learn_moments(tk_w, tk_s1, tk_s2, key, d, c, log_ticket_sum[i], log_ticket_sq_sum[i])
        if tickets == TICKETS_SINGLE:
            seen = f[T_TICKET_SEEN] != 0.0 and c >= 2
            _learn_shared(tk_tau_a, tk_tau_b, key, d, seen, f[T_TICKET_DEV], f[T_TICKET_SALE_VAR], c)
        elif tickets == TICKETS_ROWS:
            _learn_rows(tk_tau_a, tk_tau_b, key, d, f[T_TICKET_SEEN] != 0.0, f[T_TICKET_DEV], c)
        if basket:
            _learn_moments(uq_w, uq_s1, uq_s2, key, d, c, log_units_sum[i], log_units_sq_sum[i])
            seen = f[T_UNITS_SEEN] != 0.0 and c >= 2
            _learn_shared(uq_tau_a, uq_tau_b, key, d, seen, f[T_UNITS_DEV], f[T_UNITS_SALE_VAR], c)
        if new_skus:
            more = max(c - 1.0, 0.0)
            ds_w[key] = ds_w[key] * d + more
            ds_s[key] = ds_s[key] * d + min(max(distinct_skus[i] - 1.0, 0.0), more)
            # Intra-window correlation: a beta-binomial's variance is the binomial's times
            # 1 + (n - 1) rho, so E[raw^2 - 1] = rho E[n - 1] (moment estimate).
            seen = f[T_SKUS_SEEN] != 0.0 and more >= 2
            ds_tau_a[key] = ds_tau_a[key] * d + (f[T_SKUS_RAW] ** 2 - 1.0 if seen else 0.0)
            ds_tau_b[key] = ds_tau_b[key] * d + (more - 1.0 if seen else 0.0)
        if ratios and c > 0:
            _learn_mean(upe, upe_n, key, math.log(max(units[i] / c, 1e-9)), level_rate)
            _learn_mean(dsr, dsr_n, key, math.log((distinct_skus[i] + 1.0) / (c + 1.0)), level_rate)


# The features values_round computes: a column of transform_round's output, or (from _COMPUTED
# on) one computed from it and the round (the others stay with FeatureExtractor.transform).
_COMPUTED = 100
(
    V_MAX_TICKET_Z, V_COUNT_TREND_Z, V_COUNT_RATIO_SEASONAL, V_REVENUE_TREND_RATIO, V_COUNT, V_REVENUE,
    V_LOG_COUNT, V_LOG_REVENUE, V_MEAN_TICKET, V_MAX_TICKET, V_UNITS, V_DISTINCT_SKUS, V_PRICE_RATIO,
) = range(_COMPUTED, _COMPUTED + 13)  # fmt: skip
VALUE_CODES: dict[str, int] = {
    "count_z": T_COUNT_Z,
    "revenue_ratio": T_REVENUE_RATIO,
    "mean_ticket_z": T_TICKET_Z,
    "units_per_event_z": T_UNITS_Z,
    "distinct_skus_z": T_SKUS_Z,
    "count_context_z": T_COUNT_CONTEXT_Z,
    "revenue_context_ratio": T_REVENUE_CONTEXT_RATIO,
    "count_scan_z": T_SCAN_Z,
    "max_ticket_z": V_MAX_TICKET_Z,
    "count_trend_z": V_COUNT_TREND_Z,
    "count_ratio_seasonal": V_COUNT_RATIO_SEASONAL,
    "revenue_trend_ratio": V_REVENUE_TREND_RATIO,
    "count": V_COUNT,
    "revenue": V_REVENUE,
    "log_count": V_LOG_COUNT,
    "log_revenue": V_LOG_REVENUE,
    "mean_ticket": V_MEAN_TICKET,
    "max_ticket": V_MAX_TICKET,
    "units": V_UNITS,
    "distinct_skus": V_DISTINCT_SKUS,
    "price_ratio": V_PRICE_RATIO,
}
# Blom's expected maximum of c standard normals, ndtri((c - 0.375) / (c + 0.25)), for whole counts
# below this; values_round leaves a round with a larger or fractional count to numpy.
MAX_Z_COUNTS = 1 << 16


@_compiled(nrt=False)
def values_round(out, cols, codes, count, revenue, units, max_ticket, distinct_skus, price_dev, max_z):
    """The model's feature vectors of a round (``codes``: VALUE_CODES of the configured features, in
    order), as FeatureExtractor.transform computes them, non-finite values replaced as there, into
    the first ``len(count)`` rows of ``out``; False (nothing written) where a count is fractional
    or not below ``len(max_z)``."""
    n = len(count)
    for i in range(n):
        c = count[i]
        if c != math.floor(c) or c >= len(max_z):
            return False
    for i in range(n):
        o = cols[i]
        c = count[i]
        r = revenue[i]
        sold = c > 0
        c_safe = max(c, 1.0)
        for j in range(len(codes)):
            code = codes[j]
            if code < _COMPUTED:
                v = o[code]
            elif code == V_MAX_TICKET_Z:
                emz = max_z[int(c)] if c > 1 else 0.0
                known = sold and o[T_HAS_TICKETS] != 0.0
                v = (math.log1p(max_ticket[i]) - o[T_MU]) / o[T_SIGMA] - emz if known else 0.0
            elif code == V_COUNT_TREND_Z:
                v = o[T_TREND_LOG_RATIO] / math.sqrt(o[T_TREND_POISSON_VAR] + o[T_PHI])
            elif code == V_COUNT_RATIO_SEASONAL:
                v = math.log((c + 1.0) / (o[T_EXPECTED_COUNT] + 1.0))
            elif code == V_REVENUE_TREND_RATIO:
                tt = o[T_TYPICAL_TICKET]
                v = math.log((o[T_TR_REV] + tt) / (o[T_TR_EXP_REV] + tt))
            elif code == V_COUNT:
                v = c
            elif code == V_REVENUE:
                v = r
            elif code == V_LOG_COUNT:
                v = math.log1p(c)
            elif code == V_LOG_REVENUE:
                v = math.log1p(max(r, 0.0))
            elif code == V_MEAN_TICKET:
                v = r / c_safe if sold else 0.0
            elif code == V_MAX_TICKET:
                v = max_ticket[i]
            elif code == V_UNITS:
                v = units[i]
            elif code == V_PRICE_RATIO:
                d = price_dev[i]  # only beyond a plausible price counts (_price_kernels.beyond_plausible)
                v = 0.0
                if d > PLAUSIBLE_PRICE:
                    v = d - PLAUSIBLE_PRICE
                elif d < -PLAUSIBLE_PRICE:
                    v = d + PLAUSIBLE_PRICE
            else:
                v = distinct_skus[i]
            if math.isnan(v):
                v = 0.0
            elif math.isinf(v):
                v = 1e6 if v > 0 else -1e6
            out[i, j] = v
    return True
