"""The detector's common round as one compiled call: features, scores, flags, learning.

Most rounds of a stream flag nothing. For them :meth:`Detector._process_round` did a fixed
sequence -- the features' two kernels, ~30 numpy operations around them, the scaler, the
mixture's log-likelihood, the threshold's comparison, the per-key flag counters -- each a call of
a few microseconds whatever the round's size, so a stream of few keys per round (one store, a
metric series, a service's partition of a few keys) spent its time in call overheads.
:func:`score_round` runs that sequence as one loop over the round's rows.

Rounds of the warm-up (before the mixture is fitted) take the same call without the scoring:
features are computed and learned, and the mature rows' vectors kept for the fit.

:func:`score_rounds` runs consecutive rounds in one call, up to the next learning step (which
changes the mixture and the threshold) or the next round that needs the numpy path.

It is all or nothing: it first computes without writing anything, and where the round needs what
only the Python path does -- a flagged window (alerts, episodes), a window that ends an episode,
a key beyond the arrays' capacity, a count the feature kernel does not cover -- it returns without
having written anything and the detector runs the round the ordinary way. The detector computes
the rounds' probabilities later, in one call per stretch of rounds that the threshold did not
change in between.
"""

from __future__ import annotations

import math

import numpy as np

from streamdetect._feature_kernels import (
    T_COLUMNS,
    T_MATURE,
    T_SCAN_Z,
    T_SILENCE_LOG_P,
    transform_round,
    update_round,
    values_round,
)
from streamdetect._jit import compiled
from streamdetect.model._em import _EXP_CLIP
from streamdetect.scaling import _CLIP as _SCALED_CLIP


@compiled(nrt=False)
def log_likelihood(x, shift, spread, proj, const, z, joint):
    """``log p(x)`` of one scaled feature vector under the mixture: ``_em._estimate_resp``'s ``ll``
    for one row (``proj``, ``const`` and the model's own standardisation ``shift``, ``spread``
    from the fitted model). ``z`` (``len(x)``) and ``joint`` (``len(const)``) are scratch space,
    given by the caller so that a call per window makes no arrays."""
    d = len(x)
    n_components = len(const)
    for j in range(d):
        z[j] = (x[j] - shift[j]) / spread[j]
    best = -np.inf
    for k in range(n_components):
        total = 0.0
        for j in range(d):
            row = proj[k * d + j]
            y = row[d]
            for m in range(d):
                y += row[m] * z[m]
            total += y * y
        joint[k] = -0.5 * total + const[k]
        best = max(best, joint[k])
    summed = 0.0
    for k in range(n_components):
        summed += math.exp(max(joint[k] - best, _EXP_CLIP))
    return math.log(summed) + best


@compiled(nrt=False)
def score_round(
    keys, start_ms, hour, how, quarter,
    count, revenue, units, max_ticket, log_ticket_sum, log_ticket_sq_sum, log_units_sum, log_units_sq_sum,
    distinct_skus, price_dev, params, codes, max_z,
    scoring, center, scale, shift, spread, proj, const, offset, z, silence_log_risk,
    since_flag, flag_streak, episode_alerts, episode_quiet, cooldown, relearn_after,
    state, scratch, out, at, first_row,
):  # fmt: skip
    """One round through features, scaling, scoring and learning; see the module docstring.

    ``params`` are FeatureExtractor.kernel_params; ``codes``, ``max_z`` values_round's; ``center``
    and ``scale`` the RobustScaler's; flags are ``score - offset > z`` (Threshold.decision()) and
    a run of empty windows whose log probability is below ``silence_log_risk`` (-inf: never).
    Returns -1 (nothing written but scratch) or the number of rows it scored: the mature rows,
    written to ``out`` = ``(rows, values, X, score, calm, steady)`` from row ``at`` on -- their
    index (the round's row plus ``first_row``), their feature vectors, scaled, their scores,
    whether the threshold may learn each score (its key unflagged for longer than the cooldown,
    its counts steady), and whether its counts are steady (``|count_scan_z|`` within
    ``freeze_z``) for the mixture to learn its vector. ``scratch`` = ``(cols, values, learn,
    new_normal, z, joint)`` holds the round's intermediate rows (at least ``len(keys)`` each;
    ``z``, ``joint`` :func:`log_likelihood`'s), given by the caller so that a round makes no
    arrays. Without ``scoring`` (the warm-up, before the mixture is fitted) the round's features
    are learned and the mature rows and their vectors written, ``X`` to ``steady`` untouched; the
    per-key flag and episode counters are then neither read nor written.
    """
    (hop_ms, min_bucket, trend_decay, tickets, basket, new_skus, scan,
     season_rate, level_rate, ticket_decay, phi_rate, freeze_z, freeze_limit, ratios, overlap) = params  # fmt: skip
    cols_scratch, values_scratch, learn_scratch, new_normal_scratch, z_scratch, joint_scratch = scratch
    out_rows, out_values, X, score, calm, steady = out
    n = len(keys)
    capacity = min(len(state[0]), len(since_flag)) if scoring else len(state[0])
    for i in range(n):
        if keys[i] >= capacity:
            return -1
    cols = cols_scratch[:n]
    transform_round(
        cols, keys, start_ms, hop_ms, hour, how, quarter,
        count, revenue, log_ticket_sum, log_units_sum, distinct_skus,
        min_bucket, trend_decay, level_rate, tickets, basket, new_skus, scan, overlap, *state,
    )  # fmt: skip
    values = values_scratch[:n]
    if not values_round(values, cols, codes, count, revenue, units, max_ticket, distinct_skus, price_dev, max_z):
        return -1
    d = values.shape[1]
    m = at
    for i in range(n):
        if cols[i, T_MATURE] == 0.0:
            continue
        out_rows[m] = first_row + i
        if scoring:
            key = keys[i]
            # An episode that this window ends (calm for more than `cooldown` windows, no
            # sustained deviation) is resolved by the numpy path, which writes the message.
            deviating = abs(cols[i, T_SCAN_Z]) >= freeze_z
            if episode_alerts[key] > 0 and not deviating and episode_quiet[key] + 1 > cooldown:
                return -1
            for j in range(d):
                X[m, j] = min(max((values[i, j] - center[j]) / scale[j], -_SCALED_CLIP), _SCALED_CLIP)
            score[m] = -log_likelihood(X[m], shift, spread, proj, const, z_scratch, joint_scratch)
            if not score[m] - offset <= z:  # flagged, or NaN: a score the model cannot explain
                return -1
            if cols[i, T_SILENCE_LOG_P] < silence_log_risk:  # an improbable run of empty windows
                return -1
        m += 1

    # Nothing flagged: from here on the round is written.
    learn, new_normal = learn_scratch[:n], new_normal_scratch[:n]
    for i in range(n):
        learn[i] = True
        new_normal[i] = False
    if scoring:
        for row in range(at, m):
            i = out_rows[row] - first_row
            key = keys[i]
            since = since_flag[key] + 1
            since_flag[key] = since
            quiet = since > cooldown
            steady[row] = abs(cols[i, T_SCAN_Z]) < freeze_z
            calm[row] = quiet and steady[row]
            streak = 0 if quiet else flag_streak[key]
            flag_streak[key] = streak
            new_normal[i] = streak > relearn_after
            episode_quiet[key] = episode_quiet[key] + 1 if steady[row] else 0
    update_round(
        keys, start_ms, hop_ms, hour, how, quarter,
        count, revenue, units, log_ticket_sum, log_ticket_sq_sum, log_units_sum, log_units_sq_sum, distinct_skus,
        cols, learn, new_normal,
        season_rate, level_rate, ticket_decay, phi_rate, freeze_z, freeze_limit, min_bucket,
        tickets, basket, new_skus, ratios, *state,
    )  # fmt: skip
    for row in range(at, m):
        i = out_rows[row] - first_row
        for j in range(d):
            out_values[row, j] = values[i, j]
    return m - at


# Why score_rounds stopped (its second result).
ALL_DONE, NEEDS_NUMPY, STEP_DUE = 0, 1, 2


@compiled
def score_rounds(
    first, starts, size_ms, offsets, hour, how, quarter,
    keys, count, revenue, units, max_ticket, log_ticket_sum, log_ticket_sq_sum, log_units_sum, log_units_sq_sum,
    distinct_skus, price_dev, params, codes, max_z,
    scoring, center, scale, shift, spread, proj, const, offset, z, silence_log_risk,
    since_flag, flag_streak, episode_alerts, episode_quiet, cooldown, relearn_after,
    stop_rows, span_ms, span_rows, from_ms, calibration_ms, calibration_rows,
    state,
):  # fmt: skip
    """:func:`score_round` over consecutive rounds, from round ``first`` of a batch of them (round
    ``r`` is rows ``offsets[r]:offsets[r + 1]`` of the row arrays, from ``starts[r]`` for
    ``size_ms``; ``hour``, ``how`` and ``quarter`` are row arrays too, each on its key's clock), as far
    as nothing changes the mixture or the threshold: one call instead of one per round.

    It stops after the round at which the learning step is due (``stop_rows`` more windows
    scored, or the threshold's calibration: a round ending at ``calibration_ms`` or later once
    ``calibration_rows`` more are scored) or, in the warm-up (no ``scoring``), the mixture's fit
    (``stop_rows`` more mature rows, or ``span_rows`` of them spanning ``span_ms`` since
    ``from_ms``, -1: since the first of them); or before a round that score_round leaves to numpy.
    A stop that proves early costs a call: the detector checks the conditions again.

    Returns ``(done, why, rows, values, X, score, calm, steady)``: the rounds done, ALL_DONE,
    STEP_DUE or NEEDS_NUMPY (for round ``first + done``), and score_round's results over the rounds
    done, with ``rows`` indexing the row arrays.
    """
    n_rounds = len(starts)
    total = offsets[n_rounds] - offsets[first]
    d = len(codes)
    rows = np.empty(total, dtype=np.int64)
    values = np.empty((total, d))
    n_out = total if scoring else 0
    X = np.empty((n_out, d))
    score = np.empty(n_out)
    calm = np.empty(n_out, dtype=np.bool_)
    steady = np.empty(n_out, dtype=np.bool_)
    widest = 0
    for r in range(first, n_rounds):
        widest = max(widest, offsets[r + 1] - offsets[r])
    scratch = (
        np.empty((widest, T_COLUMNS)), np.empty((widest, d)), np.empty(widest, dtype=np.bool_),
        np.empty(widest, dtype=np.bool_), np.empty(d), np.empty(len(const)),
    )  # fmt: skip
    out = (rows, values, X, score, calm, steady)
    m = 0
    why = ALL_DONE
    r = first
    while r < n_rounds:
        lo, hi = offsets[r], offsets[r + 1]
        start = starts[r]
        k = score_round(
            keys[lo:hi], start, hour[lo:hi], how[lo:hi], quarter[lo:hi],
            count[lo:hi], revenue[lo:hi], units[lo:hi], max_ticket[lo:hi], log_ticket_sum[lo:hi],
            log_ticket_sq_sum[lo:hi], log_units_sum[lo:hi], log_units_sq_sum[lo:hi], distinct_skus[lo:hi],
            price_dev[lo:hi], params, codes, max_z,
            scoring, center, scale, shift, spread, proj, const, offset, z, silence_log_risk,
            since_flag, flag_streak, episode_alerts, episode_quiet, cooldown, relearn_after,
            state, scratch, out, m, lo,
        )  # fmt: skip
        if k < 0:
            why = NEEDS_NUMPY
            break
        m += k
        r += 1
        end = start + size_ms
        if scoring:
            if m >= stop_rows or (end >= calibration_ms and m >= calibration_rows):
                why = STEP_DUE
                break
        elif k:
            if from_ms < 0:
                from_ms = start
            if m >= stop_rows or (span_ms > 0 and end - from_ms >= span_ms and m >= span_rows):
                why = STEP_DUE
                break
    return r - first, why, rows[:m], values[:m], X[:m], score[:m], calm[:m], steady[:m]
