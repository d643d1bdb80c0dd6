"""Thresholds (SPOT, DSPOT, rolling quantile) and score-drift monitoring."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdetect.config import ConfigError, DriftConfig, ModelConfig, ThresholdConfig
from streamdetect.drift import ScoreDriftMonitor, psi
from streamdetect.threshold import (
    DSPOT,
    SPOT,
    QuantileThreshold,
    fit_gpd,
    fit_truncated_gpd,
    make_threshold,
    shrunk_gpd,
    threshold_from_state,
)


def gpd_sample(rng: np.random.Generator, gamma: float, sigma: float, n: int) -> np.ndarray:
    u = rng.uniform(size=n)
    if gamma == 0:
        return -sigma * np.log(u)
    return sigma / gamma * (u ** (-gamma) - 1.0)


@pytest.mark.parametrize("gamma", [0.3, 0.0, -0.2])
def test_fit_gpd_recovers_the_parameters(gamma):
    y = gpd_sample(np.random.default_rng(0), gamma, 2.0, 20_000)
    g, s, ll = fit_gpd(y)
    assert abs(g - gamma) < 0.05
    assert abs(s - 2.0) < 0.15
    assert math.isfinite(ll)


def test_fit_gpd_exponential_log_likelihood_is_the_exponential_one():
    # At gamma = 0 the log-likelihood is -N log(sigma) - sum(y)/sigma; at sigma = mean, -N (1 + log mean).
    y = np.random.default_rng(1).exponential(3.0, 5000)
    g, _, ll = fit_gpd(y)
    assert abs(g) < 0.05
    exp_ll = -len(y) * (1 + math.log(y.mean()))
    assert ll >= exp_ll - 1e-6  # the best candidate is at least as good as the exponential fit


def test_fit_gpd_degenerate_inputs():
    assert fit_gpd(np.array([]))[0] == 0.0
    g, s, _ = fit_gpd(np.full(50, 2.0))
    assert math.isfinite(g) and s > 0


def test_nothing_is_flagged_before_calibration():
    spot = SPOT(risk=1e-3, n_init=1000)
    spot.learn(np.arange(999.0))
    assert not spot.is_calibrated and math.isinf(spot.threshold)
    assert not spot.classify(np.array([1e12, np.inf])).any()
    spot.learn(np.array([1.0]))
    assert spot.is_calibrated and math.isfinite(spot.threshold)


@pytest.mark.parametrize("method", ["spot", "dspot", "quantile"])
def test_calibration_can_end_early_on_the_scores_so_far(method):
    threshold = make_threshold(ThresholdConfig(method=method, risk=1e-3, n_init=2000))
    threshold.calibrate()  # nothing learned yet: nothing to calibrate on
    assert not threshold.is_calibrated
    threshold.learn(np.random.default_rng(0).normal(size=600))
    assert not threshold.is_calibrated and math.isinf(threshold.threshold)
    threshold.calibrate()
    assert threshold.is_calibrated and 2.0 < threshold.threshold < 5.0  # N(0, 1): 3.09
    assert threshold.classify(np.array([0.0, 10.0])).tolist() == [False, True]
    restored = threshold_from_state(orjson.loads(orjson.dumps(threshold.to_state())))
    assert restored.is_calibrated and restored.threshold == threshold.threshold


def test_spans_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"threshold\.calibration_span"):
        ThresholdConfig(calibration_span=-1)
    with pytest.raises(ConfigError, match=r"model\.warmup_span"):
        ModelConfig(warmup_span=-1)


@pytest.mark.parametrize(
    ("tail", "risk"), [("t5", 1e-3), ("t5", 1e-4), ("gamma", 1e-3), ("gamma", 1e-4)]
)
def test_spot_false_alarm_rate_is_close_to_the_risk(tail, risk):
    rng = np.random.default_rng(2)

    def draw(n: int) -> np.ndarray:
        return rng.standard_t(5, n) if tail == "t5" else rng.gamma(4.0, size=n)

    spot = SPOT(risk=risk, level=0.98, n_init=20_000, max_excess=2000)
    spot.learn(draw(20_000))
    flagged = 0
    n = 400_000
    for _ in range(n // 1000):
        batch = draw(1000)
        flagged += int(spot.classify(batch).sum())
        spot.learn(batch)
    rate = flagged / n
    assert risk / 3 < rate < risk * 3, rate


def test_anomalies_in_the_calibration_sample_do_not_inflate_the_threshold():
    rng = np.random.default_rng(3)
    clean = rng.normal(size=5000)
    dirty = clean.copy()
    dirty[rng.choice(5000, 15, replace=False)] = 500.0
    a, b = SPOT(risk=1e-3, n_init=5000), SPOT(risk=1e-3, n_init=5000)
    a.learn(clean)
    b.learn(dirty)
    assert abs(a.threshold - b.threshold) < 0.5
    assert b.threshold < 5


def test_a_long_anomaly_does_not_drag_the_threshold_up():
    rng = np.random.default_rng(12)
    spot = SPOT(risk=1e-4, n_init=5000)
    spot.learn(rng.gamma(4.0, size=5000))
    before = spot.threshold
    for _ in range(20):  # 2,000 anomalous scores in a row, then normal again
        spot.learn(np.concatenate([rng.gamma(4.0, size=900), rng.uniform(before * 1.2, before * 2, 100)]))
    assert spot.threshold < before * 1.1


def test_anomalous_scores_do_not_enter_the_peaks():
    rng = np.random.default_rng(4)
    spot = SPOT(risk=1e-3, n_init=2000)
    spot.learn(rng.normal(size=2000))
    before = spot.threshold
    n_before = spot.n_
    spot.learn(np.full(50, 1e6))
    assert spot.threshold == before and spot.n_ == n_before


def test_probability_is_calibrated_monotonic_and_bounded():
    rng = np.random.default_rng(5)
    spot = SPOT(risk=1e-3, n_init=5000)
    spot.learn(rng.normal(size=5000))
    x = np.array([-10.0, -1.0, 0.0, 1.0, 2.0, 3.0, 10.0, np.nan, np.inf])
    p = spot.probability(x)
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(np.diff(p[:7]) >= 0)
    assert p[-2] == p[-1] == 1.0  # a score the model cannot explain is as unusual as it gets
    assert abs(p[2] - 0.5) < 0.03 and abs(p[4] - 0.977) < 0.01
    fresh = rng.normal(size=20_000)
    # P(probability > 0.99) on fresh data is about 1 %: it is a calibrated probability.
    assert abs((spot.probability(fresh) > 0.99).mean() - 0.01) < 0.004


def test_dspot_follows_a_drifting_level_where_spot_would_alarm():
    rng = np.random.default_rng(6)
    dspot = DSPOT(risk=1e-3, n_init=1000, depth=30)
    spot = SPOT(risk=1e-3, n_init=1000)
    flagged_d = flagged_s = 0
    for i, level in enumerate(np.linspace(0, 50, 200)):
        batch = level + rng.normal(size=100)
        if i >= 20:
            flagged_d += int(dspot.classify(batch).sum())
            flagged_s += int(spot.classify(batch).sum())
        dspot.learn(batch)
        spot.learn(batch)
    assert flagged_d < 60  # ~18 expected at q = 1e-3 over 18,000 scores; SPOT flags the whole ramp
    assert flagged_s > 10_000
    assert dspot.classify(np.array([50.0 + 10.0]))[0]
    assert 45 < dspot.threshold < 60


def test_quantile_threshold_is_the_rolling_quantile():
    rng = np.random.default_rng(7)
    q = QuantileThreshold(risk=1e-2, n_init=500, window=2000)
    x = rng.exponential(size=10_000)
    q.learn(x[:400])
    assert not q.is_calibrated and math.isinf(q.threshold)
    q.learn(x[400:])
    assert q.threshold == pytest.approx(np.quantile(x[-2000:], 0.99), rel=0.02)


@pytest.mark.parametrize("method", ["spot", "dspot", "quantile"])
def test_state_round_trip(method):
    rng = np.random.default_rng(8)
    cfg = ThresholdConfig(method=method, risk=1e-3, n_init=500, window=2000)
    th = make_threshold(cfg)
    th.learn(rng.normal(size=1500))
    state = orjson.loads(orjson.dumps(th.to_state()))
    clone = threshold_from_state(state)
    assert type(clone) is type(th)
    assert clone.threshold == th.threshold
    more = rng.normal(size=700)
    th.learn(more)
    clone.learn(more)
    probe = rng.normal(scale=3, size=50)
    assert clone.threshold == th.threshold
    assert np.array_equal(clone.probability(probe), th.probability(probe))
    assert orjson.dumps(clone.to_state()) == orjson.dumps(th.to_state())


def test_unknown_threshold_state_is_refused():
    with pytest.raises(ConfigError):
        threshold_from_state({"kind": "magic", "version": 1})


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(9)
    ref = rng.gamma(2.0, size=10_000)
    assert psi(ref, rng.gamma(2.0, size=10_000)) < 0.01
    assert 0.1 < psi(ref, rng.gamma(2.0, size=10_000) * 1.3) < 0.5
    assert psi(ref, ref + 5) > 1.0
    assert psi(np.full(100, 1.0), np.full(100, 1.0)) == 0.0


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin"])
def test_drift_monitor_is_quiet_on_a_stationary_stream_and_detects_a_shift(detector):
    rng = np.random.default_rng(10)
    mon = ScoreDriftMonitor(DriftConfig(detector=detector, reference_size=2000, recent_size=2000))
    quiet = [mon.update(rng.gamma(2.0, size=256) * 3) for _ in range(300)]
    assert sum(quiet) == 0
    assert mon.psi_ < 0.1
    shifted = [mon.update(rng.gamma(2.0, size=256) * 3 + 4.0) for _ in range(30)]
    assert any(shifted) and shifted.index(True) < 15
    assert mon.drift_events_ >= 1


def test_drift_monitor_state_round_trip():
    rng = np.random.default_rng(11)
    mon = ScoreDriftMonitor(DriftConfig(reference_size=500, recent_size=500))
    for _ in range(10):
        mon.update(rng.normal(size=100))
    clone = ScoreDriftMonitor.from_state(orjson.loads(orjson.dumps(mon.to_state())), mon.config)
    assert clone.to_state() == mon.to_state()
    batch = rng.normal(size=100)
    assert clone.update(batch) == mon.update(batch)
    assert clone.psi_ == mon.psi_


def test_a_short_calibration_still_fits_a_sane_tail():
    # 200 calibration scores at level 0.98 would leave 4 peaks to fit; the peaks threshold is
    # lowered to keep 30, and the threshold stays in the range of the data's real tail.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        spot = SPOT(risk=1e-3, level=0.98, n_init=200)
        spot.learn(rng.gamma(4.0, size=200))
        assert spot.n_peaks_ >= 30
        assert 8.0 < spot.threshold < 30.0, (seed, spot.threshold)  # the exact quantile is 13.1


def test_a_few_dozen_peaks_keep_the_exponential_tail_unless_the_data_insist():
    # With 40 exponential peaks the maximum-likelihood shape is noise; the likelihood-ratio test
    # keeps gamma = 0. A clearly heavy tail still gets its shape.
    rng = np.random.default_rng(14)
    kept = [fit_gpd(rng.exponential(2.0, 40))[0] == 0.0 for _ in range(50)]
    assert sum(kept) >= 40
    assert fit_gpd(gpd_sample(rng, 0.5, 1.0, 2000))[0] > 0.3


def test_a_heavy_looking_calibration_day_does_not_blind_the_threshold():
    """A day of 5-minute scores (288) whose two dozen peaks happen to look heavy-tailed: the plain
    maximum-likelihood shape (about 1.1) put the threshold near 1000, 70 times the largest score,
    and a later anomaly scoring 20-40 for a day stayed below it, was learned as normal and
    fattened the tail further (thresholds up to 800 000 on a real CPU series). The shape is taken
    at the bottom of its confidence interval: the threshold stays within a few times the day's
    largest score, and the anomaly alarms."""
    rng = np.random.default_rng(7)
    day = np.concatenate([rng.normal(-1.4, 0.6, 270), rng.exponential(3.0, 18) + 1.0])
    rng.shuffle(day)
    spot = SPOT(risk=1e-4, n_init=288)
    spot.learn(day)
    # The day's largest score (14.2, 1.6 times the next) is beyond what the calibration's own fit
    # expects of 288 clean scores: it is dropped as an outlier, and the threshold is above the rest.
    assert np.sort(day)[-2] < spot.threshold < 3 * day.max(), spot.threshold
    anomaly = rng.uniform(30.0, 60.0, 100)
    assert spot.classify(anomaly).all()


def test_score_window_keeps_its_sorted_copy_exact_across_pushes():
    from streamdetect.threshold import _ScoreWindow

    rng = np.random.default_rng(0)
    for size in (7, 8, 16, 100, 2000):
        w = _ScoreWindow(size)
        for _ in range(300):
            x = np.round(rng.normal(size=int(rng.integers(0, size // 6 + 2))), 1)  # many ties
            if rng.random() < 0.1:
                x = np.append(x, np.inf)
            w.push(x)
            w.survival(np.array([0.0]))  # the sorted copy exists from here on
            assert np.array_equal(w._sorted, np.sort(w.values[: w.n]))


def test_a_sorted_copy_that_lost_a_score_is_sorted_afresh_not_merged_out_of_bounds():
    # The merge trusts that the sorted copy holds every score it drops; were it ever not so (a
    # state restored from elsewhere), the merge must not write past its output: the copy is
    # rebuilt from the window instead.
    from streamdetect.threshold import _ScoreWindow

    w = _ScoreWindow(64)
    w.push(np.arange(64.0))
    w.sorted()
    assert w._sorted is not None
    w._sorted[3] = 3.5  # 3.0, about to be overwritten, is no longer in the copy
    w.push(np.array([100.0, 101.0, 102.0, 103.0]))  # a small push: merged, not re-sorted
    assert np.array_equal(w.sorted(), np.sort(w.values[: w.n]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.floats(min_value=1e-300, max_value=1e12, allow_nan=False, allow_infinity=False), min_size=1, max_size=200
    )
)
def test_the_tail_fit_never_raises(excesses: list[float]) -> None:
    """Whatever the excesses (tiny, huge, repeated), the shrunk fit returns a finite shape and a
    positive scale: a failed fit would stop the service (a bracketing failure did, on NAB)."""
    gamma, sigma = shrunk_gpd(np.array(excesses))
    assert math.isfinite(gamma) and math.isfinite(sigma) and sigma > 0


def test_spot_refits_its_tail_once_the_window_has_moved_enough():
    # A refit passes logarithms over every peak a few hundred times: it waits until 1/16 of the
    # window is new, and the state remembers how far it has got, so a restored threshold refits
    # at the same moments as the one that kept running.
    rng = np.random.default_rng(4)
    spot = SPOT(risk=1e-3, n_init=2000, window=20000)
    spot.learn(rng.exponential(size=20000))
    spot.learn(rng.exponential(size=20000))
    fits, before = spot.n_fits_, spot.z_
    spot.learn(rng.exponential(size=1000))  # 1,000 new scores of 20,000: not yet
    assert spot.n_fits_ == fits and spot.z_ == before
    clone = SPOT.from_state(orjson.loads(orjson.dumps(spot.to_state())))
    for _ in range(30):
        batch = rng.exponential(size=200)
        spot.learn(batch)
        clone.learn(batch)
        assert clone.z_ == spot.z_
    assert spot.n_fits_ > fits
    assert abs(spot.z_ - math.log(1e3)) < 0.5  # still the exponential's 1e-3 quantile


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 2.0), (-1.0, 0.5), (3.0, 1.0)])
def test_spot_follows_a_score_distribution_that_moves_after_calibration(shift, scale):
    """A model that keeps learning moves its scores. With the peaks threshold fixed by the first
    scores, scores that spread out (x2) alarmed at 500 times the risk (the alarms were kept out of
    a fit that then looked bounded), and scores that settled lower never alarmed again (no peak
    was left above the old peaks threshold). Now the peaks threshold follows the window and the
    fit knows its sample is truncated at the alert threshold."""
    risk = 1e-4
    rng = np.random.default_rng(5)
    spot = SPOT(risk=risk, n_init=2000, window=20000)
    spot.learn(rng.gamma(4.0, size=2000))
    for _ in range(40):
        spot.learn(shift + scale * rng.gamma(4.0, size=1000))
    flagged, n = 0, 300_000
    for _ in range(n // 1000):
        batch = shift + scale * rng.gamma(4.0, size=1000)
        flagged += int(spot.classify(batch).sum())
        spot.learn(batch)
    assert risk / 3 < flagged / n < risk * 3, flagged / n
    assert abs(spot.n_peaks_ / spot.n_ - 0.02) < 0.002  # the peaks are the window's top 2 %


def test_the_calibration_scores_leave_the_window_once_as_many_are_learned_since():
    """The calibration's scores come from the mixture as its warm-up fitted it, before any
    stepwise update: the heaviest tail the model will have. Kept in a window of 50,000, a short
    series' first day of them set its threshold for weeks (a two-store count series of 5-minute
    windows: a two-hour drop to a third went unflagged in 4 of 20 draws, where 0-1 of 20 once
    they leave). They serve until as many scores have been learned since, then leave: here a
    calibration of Exp(3) scores, then settled Exp(1) ones, whose 1e-3 quantile is 6.9."""
    rng = np.random.default_rng(6)
    spot = SPOT(risk=1e-3, n_init=1000, window=50000)
    spot.learn(rng.exponential(3.0, 1000))
    assert 14.0 < spot.threshold < 30.0  # 3 ln(1000) = 20.7
    for _ in range(9):
        spot.learn(rng.exponential(1.0, 100))
    assert spot.threshold > 12.0  # 900 since: the calibration still serves
    clone = SPOT.from_state(orjson.loads(orjson.dumps(spot.to_state())))
    batch = rng.exponential(1.0, 100)
    spot.learn(batch)
    clone.learn(batch)
    assert 5.0 < spot.threshold < 9.5, spot.threshold
    assert clone.threshold == spot.threshold and spot.recent_.n == 1000


def test_a_truncated_sample_is_fitted_as_one():
    # Excesses of Exp(scale 2) seen only below 3, in two stretches with different limits.
    rng = np.random.default_rng(6)
    y = rng.exponential(2.0, 40_000)
    limits = np.where(np.arange(len(y)) < 20_000, 3.0, 5.0)
    seen = y <= limits
    gamma, sigma = fit_truncated_gpd(y[seen], limits[seen])
    assert gamma == 0.0 and abs(sigma - 2.0) < 0.1
    naive_gamma, _ = shrunk_gpd(y[seen])
    assert naive_gamma < -0.2  # read as complete, the same sample looks bounded


def test_the_compiled_truncated_likelihood_is_scipys_generalised_pareto():
    # The kernel against scipy's GPD density and distribution function, shapes either side of 0
    # (one within rounding of it), and the cases it answers -inf.
    from scipy.stats import genpareto

    from streamdetect._gpd_kernels import truncated_log_likelihood

    rng = np.random.default_rng(3)
    y = rng.exponential(1.5, 300)
    limits = np.array([3.0, 4.5, 9.0])
    counts = np.array([40.0, 7.0, 1.0])
    for gamma in (-0.1, 0.0, 1e-13, 0.25, 0.8):
        for sigma in (0.7, 2.0):
            dist = genpareto(gamma, scale=sigma)
            expected = dist.logpdf(y).sum() - counts @ dist.logcdf(limits)
            got = truncated_log_likelihood(y, limits, counts, gamma, sigma)
            assert got == pytest.approx(expected, rel=1e-10), (gamma, sigma)
    # A bounded tail ending below the largest peak; a limit beyond its end keeps all of it.
    assert truncated_log_likelihood(y, limits, counts, -0.5, 0.5 * y.max()) == -math.inf
    end = 1.2 * y.max()
    bounded = genpareto(-0.5, scale=0.5 * end)
    far = np.array([3.0, 2.0 * end])
    assert bounded.logcdf(far[1]) == 0.0
    got = truncated_log_likelihood(y, far, counts[:2], -0.5, 0.5 * end)
    assert got == pytest.approx(bounded.logpdf(y).sum() - counts[:2] @ bounded.logcdf(far), rel=1e-10)
    assert truncated_log_likelihood(y, limits, counts, 0.1, 0.0) == -math.inf


def test_the_compiled_tail_searches_find_what_scipys_would_to_the_last_bit():
    # The refit's two searches are scipy's Nelder-Mead and bounded Brent, step for step, compiled
    # with the likelihood: on truncated samples of tails of every kind, from starts near and far,
    # they must land on scipy's point and cost exactly (the refits, and so every threshold and
    # alert, are then what they were with scipy).
    from scipy.optimize import minimize, minimize_scalar

    from streamdetect._gpd_kernels import bounded_exponential_scale, nelder_mead_shape_scale
    from streamdetect._gpd_kernels import truncated_log_likelihood as loglik

    rng = np.random.default_rng(11)
    precision = 12.5
    compared = 0
    for _ in range(300):
        gamma = float(rng.choice([-0.4, -0.1, 0.0, 0.1, 0.3, 0.8]))
        y = gpd_sample(rng, gamma, float(rng.uniform(0.1, 5.0)), int(rng.integers(30, 1500)))
        run_limits = np.quantile(y, rng.uniform(0.7, 0.999, int(rng.integers(1, 5))))
        c = run_limits[rng.integers(0, len(run_limits), len(y))]
        y, c = y[y <= c], c[y <= c]
        if len(y) < 30:
            continue
        u, counts = np.unique(c, return_counts=True)
        counts = counts.astype(np.float64)

        def cost(theta, y=y, u=u, counts=counts):
            ll = loglik(y, u, counts, float(theta[0]), math.exp(theta[1]))
            return math.inf if not math.isfinite(ll) else -(ll - precision * float(theta[0]) ** 2)

        def cost_exponential(log_sigma, y=y, u=u, counts=counts):
            ll = loglik(y, u, counts, 0.0, math.exp(log_sigma))
            return math.inf if not math.isfinite(ll) else -ll

        x0 = np.array([rng.normal(0.0, 0.3), math.log(float(y.mean()) * rng.uniform(0.3, 3.0))])
        if not math.isfinite(cost(x0)):
            continue
        simplex = x0 + np.array([[0.0, 0.0], [0.02, 0.0], [0.0, 0.02]])
        with np.errstate(invalid="ignore"):
            expected = minimize(
                cost, x0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-5, "initial_simplex": simplex}
            )
        assert nelder_mead_shape_scale(y, u, counts, precision, simplex, 1e-3, 1e-5) == (
            expected.x[0], expected.x[1], expected.fun)
        bounds = (math.log(float(y.mean())) - 5.0, math.log(float(y.mean())) + 10.0)
        expected = minimize_scalar(cost_exponential, bounds=bounds, method="bounded")
        assert bounded_exponential_scale(y, u, counts, *bounds) == (float(expected.x), float(expected.fun))
        compared += 1
    assert compared > 200


def test_the_peaks_threshold_is_numpys_quantile_of_the_sorted_window_to_the_last_bit():
    from streamdetect.threshold import _sorted_quantile

    rng = np.random.default_rng(5)
    for i in range(3000):
        n = int(rng.integers(1, 30_000)) if i % 2 else int(rng.integers(1, 40))
        s = np.sort(rng.normal(size=n) * rng.uniform(0.1, 100.0) + rng.uniform(-50.0, 50.0))
        if i % 5 == 0:
            s = np.round(s, 1)  # ties
        q = float(rng.choice([rng.uniform(), 0.98, 0.5, max(0.98 - 30.0 / n, 0.0), 0.0, 1.0]))
        assert _sorted_quantile(s, q) == np.quantile(s, q), (n, q)


def test_a_version_1_spot_state_is_refitted_on_load():
    # Checkpoints written before the peaks came from the window (a fixed peaks threshold and a
    # buffer of its own peaks) still restore: the window is refitted.
    rng = np.random.default_rng(8)
    scores = rng.gamma(4.0, size=5000)
    fresh = SPOT(risk=1e-3, n_init=5000)
    fresh.learn(scores)
    old = {
        "kind": "spot", "version": 1, "recent": scores.tolist(), "init_t": 9.0, "peaks": [0.5, 1.0],
        "n": 5000.0, "n_peaks": 100.0, "gamma": 0.0, "sigma": 1.2, "z": 20.0, "n_fits": 3,
        "n_imputed": 0, "censor_budget": 0.0, "peaks_since_fit": 0,
        "params": {"risk": 1e-3, "level": 0.98, "n_init": 5000, "max_excess": 2000, "window": 20000},
    }  # fmt: skip
    restored = threshold_from_state(old)
    assert restored.is_calibrated
    assert restored.threshold == pytest.approx(fresh.threshold, rel=0.1)


@pytest.mark.parametrize("method", ["spot", "dspot"])
def test_constant_scores_calibrate_without_a_tail(method):
    # A peer model that scores every window alike (HalfSpaceTrees on a flat NAB series did) leaves
    # no peak above the peaks threshold: the calibration must not divide by the empty tail.
    th = make_threshold(ThresholdConfig(method=method, risk=1e-4, n_init=200, window=1000))
    th.learn(np.full(500, 0.25))
    assert th.is_calibrated and math.isfinite(th.threshold)
    assert th.classify(np.array([0.25, 0.5])).tolist() == [False, True]
    th.learn(np.full(2000, 0.25))
    assert math.isfinite(th.threshold)
