"""Window features: scale-free across key sizes, sensitive to the anomalies users care about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamdetect import _feature_kernels as kernels
from streamdetect.config import ConfigError, FeatureConfig, WindowConfig
from streamdetect.features import AVAILABLE_FEATURES, FeatureExtractor, saved_arrays
from streamdetect.windows import ClosedRound

MIN = 60_000


def make_round(start_ms: int, counts: np.ndarray, rng: np.random.Generator, ticket_scale=None, price_factor=1.0):
    """A round for len(counts) keys; key i sells tickets around ticket_scale[i] (log-normal)."""
    n = len(counts)
    ticket_scale = np.full(n, 20.0) if ticket_scale is None else ticket_scale
    rev, mx, s1, s2 = (np.zeros(n) for _ in range(4))
    for i, c in enumerate(counts.astype(int)):
        if c:
            t = ticket_scale[i] * np.exp(rng.normal(0, 0.5, c)) * price_factor
            rev[i], mx[i] = t.sum(), t.max()
            s1[i], s2[i] = np.log1p(t).sum(), (np.log1p(t) ** 2).sum()
    counts = counts.astype(float)
    return ClosedRound(
        start_ms, start_ms + MIN, np.arange(n), counts, rev, mx, counts * 1.5,
        np.minimum(counts, 10.0), s1, s2, np.full(n, start_ms), counts * np.log1p(1.5), counts * np.log1p(1.5) ** 2,
    )


def train(fx: FeatureExtractor, rates: np.ndarray, minutes: int, rng, ticket_scale=None, start_minute=0):
    for m in range(start_minute, start_minute + minutes):
        rnd = make_round(m * MIN, rng.poisson(rates), rng, ticket_scale)
        fx.update(rnd, fx.transform(rnd), np.ones(len(rates), dtype=bool))


def column(fx: FeatureExtractor, name: str) -> int:
    return fx.names.index(name)


def test_count_z_is_comparable_across_keys_of_very_different_size():
    rng = np.random.default_rng(0)
    rates = np.array([0.5, 5.0, 50.0])
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, rates, 2 * 60, rng)
    zs = []
    for m in range(120, 300):
        rnd = make_round(m * MIN, rng.poisson(rates), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(3, dtype=bool))
        zs.append(f.values[:, column(fx, "count_z")])
    sd = np.array(zs).std(axis=0)
    # Poisson noise maps to about unit variance whatever the rate (0.5 to 50 sales a minute).
    assert np.all((sd > 0.6) & (sd < 1.5)), sd


def test_outage_drop_and_spike_move_count_features_in_the_right_direction():
    rng = np.random.default_rng(1)
    rates = np.array([10.0, 10.0, 10.0])
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, rates, 120, rng)
    rnd = make_round(120 * MIN, np.array([0, 3, 40]), rng)
    f = fx.transform(rnd)
    z = f.values[:, column(fx, "count_z")]
    # In its first week a key's day-of-week effect is unknown: the evidence is discounted.
    assert z[0] < -3 and z[1] < -1.5 and z[2] > 4
    assert f.expected["count"][0] == pytest.approx(10.0, rel=0.3)


def test_count_z_is_more_confident_once_the_hour_of_week_is_known():
    rng = np.random.default_rng(1)
    rates = np.array([10.0, 10.0, 10.0])
    # At the first window of a day: the level has learned nothing of today's factor yet, which in a
    # key's first week is unknown (the doubt shrinks as the level learns the day).
    first, known = (FeatureExtractor(FeatureConfig(), WindowConfig()) for _ in range(2))
    train(first, rates, 120, rng, start_minute=7 * 1440 - 120)
    train(known, rates, 7 * 1440, rng)  # the same hour of the previous week has been seen
    rnd = make_round(7 * 1440 * MIN, np.array([0, 3, 40]), rng)
    z_first, z_known = (fx.transform(rnd).values[:, column(fx, "count_z")] for fx in (first, known))
    assert z_known[0] < -4.0 and z_known[2] > 5.5  # no sale where 10 were expected; 40 where 10
    assert np.all(np.abs(z_known) > 1.2 * np.abs(z_first))


def test_expected_count_follows_the_rate_within_the_hour():
    # A shop that ramps up over its first quarter hour and winds down in its last: the hour's
    # mean (10 a minute) is a third too high at opening and twice too high before closing.
    rng = np.random.default_rng(4)
    quarter_rates = np.array([5.0, 12.0, 13.0, 10.0, 0.0, 0.0, 0.0, 0.0])  # 9:00-9:59, closed 10:00-10:59
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    day = 1440
    expected: dict[int, list[float]] = {0: [], 3: []}
    for d in range(4):
        for m in range(120):  # 9:00 to 10:59
            start = (d * day + 9 * 60 + m) * MIN
            rnd = make_round(start, rng.poisson(quarter_rates[m // 15 : m // 15 + 1]), rng)
            f = fx.transform(rnd)
            if d == 3 and m // 15 in expected:
                expected[m // 15].append(float(f.expected["count"][0]))
            fx.update(rnd, f, np.ones(1, dtype=bool))
    # By the fourth day the expectation is the quarter's rate, not the hour's (it was 10 in both).
    assert np.mean(expected[0]) == pytest.approx(5.0, rel=0.25)
    assert np.mean(expected[3]) == pytest.approx(10.0, rel=0.2)
    assert np.mean(expected[0]) < 0.7 * np.mean(expected[3])


def test_a_key_at_one_event_a_window_has_no_shape_within_the_hour():
    # A metric sampled once a window (NAB's CloudWatch series): every quarter holds the hour's rate,
    # whatever weights the first windows were learned with, so the expectation stays the hour's.
    count, n = np.zeros((1, 96)), np.zeros((1, 96))
    for i, weight in enumerate([0.1, 1.0, 0.3, 1.0, 0.05, 1.0, 1.0, 1.0]):
        kernels._learn_quarter(n, count, 0, 36 + i % 4, 1.0, 0.25, weight)
    hour = kernels._hour_of_quarters(count, n, 0, 9)
    assert hour == 1.0
    assert [kernels.within_hour_shape(count[0, q], n[0, q], hour, 1.0) for q in range(36, 40)] == [1.0] * 4


def test_quiet_store_outage_shows_in_context_features_after_a_few_windows():
    rng = np.random.default_rng(2)
    rates = np.array([1.0])
    fx = FeatureExtractor(FeatureConfig(context_windows=5), WindowConfig())
    train(fx, rates, 180, rng)
    ctx = []
    for m in range(180, 185):
        rnd = make_round(m * MIN, np.array([0]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.array([True]))  # not alerts yet: an alert would restart the context
        ctx.append(f.values[0, column(fx, "count_context_z")])
    single = f.values[0, column(fx, "count_z")]
    assert ctx[-1] < -2.5 and single > -1.5  # one empty minute is normal at 1 sale/min; five are not
    assert ctx[-1] < ctx[0]


def test_a_spike_already_alerted_does_not_linger_in_the_context():
    rng = np.random.default_rng(3)
    rates = np.array([5.0])
    context = {}
    for alerted in (False, True):
        fx = FeatureExtractor(FeatureConfig(context_windows=5), WindowConfig())
        train(fx, rates, 180, np.random.default_rng(3))
        spike = make_round(180 * MIN, np.array([60]), rng)
        fx.update(spike, fx.transform(spike), np.array([not alerted]))
        after = make_round(181 * MIN, np.array([5]), rng)
        context[alerted] = fx.transform(after).values[0, column(fx, "count_context_z")]
    # Unreported, the spike still weighs on the next window's context; reported, it restarted it.
    assert context[False] > 3.0 and abs(context[True]) < 1.0, context


def test_price_glitch_and_tiny_tickets_show_in_ticket_features():
    rng = np.random.default_rng(3)
    rates = np.array([8.0, 8.0, 8.0])
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, rates, 180, rng)
    normal = fx.transform(make_round(180 * MIN, np.array([8, 8, 8]), rng))
    glitch = fx.transform(make_round(180 * MIN, np.array([8, 8, 8]), rng, price_factor=100.0))
    tiny = fx.transform(make_round(180 * MIN, np.array([8, 8, 8]), rng, price_factor=0.01))
    j, jm = column(fx, "mean_ticket_z"), column(fx, "max_ticket_z")
    assert np.all(np.abs(normal.values[:, j]) < 4)
    assert np.all(glitch.values[:, j] > 8) and np.all(glitch.values[:, jm] > 4)
    assert np.all(tiny.values[:, j] < -8)


def test_windows_not_learned_do_not_move_the_baselines():
    rng = np.random.default_rng(4)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, np.array([10.0]), 120, rng)
    before = fx.to_state()["arrays"]
    rnd = make_round(120 * MIN, np.array([100]), rng)
    fx.update(rnd, fx.transform(rnd), np.array([False]))
    after = fx.to_state()["arrays"]
    for name in ("how_count", "hod_count", "level", "recent_count", "tk_w"):
        assert before[name] == after[name], name
    assert before["ctx_count"] != after["ctx_count"]  # context records what happened


def test_keys_are_immature_until_their_seasonal_bucket_has_data():
    rng = np.random.default_rng(5)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    rnd = make_round(0, np.array([5]), rng)
    assert not fx.transform(rnd).mature[0]
    train(fx, np.array([5.0]), 30, rng)
    assert fx.transform(make_round(30 * MIN, np.array([5]), rng)).mature[0]


def test_every_available_feature_is_finite_including_zero_windows():
    rng = np.random.default_rng(6)
    fx = FeatureExtractor(FeatureConfig(features=AVAILABLE_FEATURES), WindowConfig())
    train(fx, np.array([0.2, 3.0]), 90, rng)
    f = fx.transform(make_round(90 * MIN, np.array([0, 0]), rng))
    assert f.values.shape == (2, len(AVAILABLE_FEATURES))
    assert np.isfinite(f.values).all()


def test_unknown_feature_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown feature 'revenu'"):
        FeatureExtractor(FeatureConfig(features=("revenu",)), WindowConfig())


def test_state_round_trips_and_evict_resets_a_key():
    rng = np.random.default_rng(7)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, np.array([4.0, 9.0]), 90, rng)
    clone = FeatureExtractor.from_state(orjson.loads(orjson.dumps(fx.to_state())))
    rnd = make_round(90 * MIN, np.array([3, 12]), rng)
    np.testing.assert_array_equal(fx.transform(rnd).values, clone.transform(rnd).values)
    fx.evict([1])
    assert not fx.transform(rnd).mature[1]
    assert fx.transform(rnd).mature[0]


def test_a_state_holds_the_rows_of_its_keys_and_one_of_the_release_before_restores():
    """Packed arrays of the keys' rows only: a key new after the restore starts from scratch as
    it would have; a version-2 state (lists of numbers) restores to the same baselines."""
    rng = np.random.default_rng(8)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, np.array([4.0, 9.0]), 90, rng)
    state = orjson.loads(orjson.dumps(fx.to_state(rows=2)))
    assert state["version"] == 3 and state["arrays"]["how_count"]["shape"] == [2, 168]
    clone = FeatureExtractor.from_state(state)
    rnd = make_round(90 * MIN, np.array([3, 12, 7]), rng)  # key 2 is new
    np.testing.assert_array_equal(fx.transform(rnd).values, clone.transform(rnd).values)
    old = {**state, "version": 2, "arrays": {k: v.tolist() for k, v in saved_arrays(state).items()}}
    restored = FeatureExtractor.from_state(orjson.loads(orjson.dumps(old)))
    for name, arr in clone._arrays.items():
        np.testing.assert_array_equal(restored._arrays[name][:2], arr[:2], err_msg=name)
        assert restored._arrays[name].dtype == arr.dtype, name


def test_a_state_saved_under_other_horizons_restores_with_its_scan_and_context_restarted():
    """A checkpoint of a release (or a configuration) with other ``scan_windows`` or
    ``context_windows``: the baselines carry on, the sums laid out by those lengths restart."""
    rng = np.random.default_rng(9)
    before = FeatureConfig(scan_windows=(5, 15, 30, 60, 120), context_windows=5)
    fx = FeatureExtractor(before, WindowConfig())
    train(fx, np.array([4.0, 9.0]), 90, rng)
    state = orjson.loads(orjson.dumps(fx.to_state(rows=2)))
    after = FeatureConfig(scan_windows=(5, 15, 30, 60, 120, 240), context_windows=8)
    clone = FeatureExtractor.from_state(state, after, WindowConfig())
    assert clone._arrays["scan_ring_c"].shape == (2, 241) and clone._arrays["ctx_count"].shape == (2, 8)
    for name in ("how_count", "hod_count", "level", "tk_s1", "last_start"):
        np.testing.assert_array_equal(clone._arrays[name], fx._arrays[name][:2], err_msg=name)
    assert not clone._arrays["scan_n"].any() and not clone._arrays["ctx_pos"].any()
    assert fx._arrays["scan_n"][:2].all()
    # It scores and learns on: the scan sums build up again from the next window.
    for m in range(90, 95):
        rnd = make_round(m * MIN, rng.poisson(np.array([4.0, 9.0])), rng)
        f = clone.transform(rnd)
        clone.update(rnd, f, np.ones(2, dtype=bool))
        assert f.mature.all() and np.isfinite(f.values).all()
    assert (clone._arrays["scan_n"] == 5).all()


def test_scan_sees_a_sustained_drop_that_single_windows_do_not_and_the_level_waits():
    rng = np.random.default_rng(7)
    rates = np.array([1.0, 1.0])
    cfg = FeatureConfig(features=("count_z", "count_scan_z", "count_trend_z"))
    fx = FeatureExtractor(cfg, WindowConfig())
    start = 7 * 1440 + 3 * 60  # a week and three hours: the hour of week is known
    train(fx, rates, start, rng)
    level_before = fx._arrays["level_how"][:2].copy()
    scan, per_window = [], []
    for m in range(start, start + 45):  # key 0 sells at 30 % of its rate, key 1 as usual
        rnd = make_round(m * MIN, rng.poisson(rates * np.array([0.3, 1.0])), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(2, dtype=bool))  # no single window is flagged, so none is held back
        scan.append(f.values[:, 1])
        per_window.append(f.values[:, 0])
    scan_a, per_window_a = np.array(scan), np.array(per_window)
    assert scan_a[:, 0].min() < -3.5 and scan_a[:, 1].min() > -3.0
    assert per_window_a[:, 0].min() > -2.0  # a quiet key: no single window is alarming
    # An alert reports the count over the strongest horizon against what was expected there.
    assert f.observed["count_scan"][0] < 0.6 * f.expected["count_scan"][0]
    assert f.expected["count_scan"][0] >= 5.0
    # While the deviation is in progress, the key's level does not absorb it.
    level_after = fx._arrays["level_how"][:2]
    assert abs(level_after[0] - level_before[0]) < 0.1
    state = orjson.loads(orjson.dumps(fx.to_state()))
    clone = FeatureExtractor.from_state(state, cfg, WindowConfig())
    rnd = make_round((start + 45) * MIN, np.array([0.0, 1.0]), rng)
    assert np.array_equal(clone.transform(rnd).values, fx.transform(rnd).values)


def test_a_key_with_a_new_normal_moves_its_level_again():
    rng = np.random.default_rng(8)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    start = 7 * 1440 + 3 * 60
    train(fx, np.array([5.0, 5.0]), start, rng)
    level_before = fx._arrays["level_how"][:2].copy()
    for m in range(start, start + 60):  # both keys sell half as much for an hour
        rnd = make_round(m * MIN, rng.poisson(np.array([2.5, 2.5])), rng)
        # key 1 has been flagged for long (its episode is a new normal): its level follows
        fx.update(rnd, fx.transform(rnd), np.ones(2, dtype=bool), new_normal=np.array([False, True]))
    moved = fx._arrays["level_how"][:2] - level_before
    assert abs(moved[0]) < 0.1 and moved[1] < -0.15


def test_trend_z_restarts_after_a_flagged_window_and_allows_for_overdispersion():
    rng = np.random.default_rng(11)
    rates = np.array([20.0, 20.0])
    cfg = FeatureConfig(features=("count_trend_z",), trend_half_life=1200)
    fx = FeatureExtractor(cfg, WindowConfig())
    # Key 0's rate wanders by about 40 % from hour to hour; key 1 is Poisson around its rate.
    train_minutes = 7 * 1440 + 8 * 60  # past the first week, whose day-of-week effect is unknown
    for m in range(train_minutes):
        wander = np.array([np.exp(0.45 * np.sin(m / 37.0) + 0.45 * np.cos(m / 23.0)), 1.0])
        rnd = make_round(m * MIN, rng.poisson(rates * wander), rng)
        fx.update(rnd, fx.transform(rnd), np.ones(2, dtype=bool))
    phi = fx._arrays["tr_phi"][:2]
    # The wandering key is overdispersed (0.05); the other's counts vary as Poisson's do, and its
    # level is unbiased, so the squared log ratios beyond Poisson's variance average about zero.
    assert phi[0] > 0.03 and abs(phi[1]) < 0.003, phi
    # The same sustained excess (x1.5 for 20 minutes) is stronger evidence for the steady key.
    for m in range(train_minutes, train_minutes + 20):
        expected = fx.transform(make_round(m * MIN, rates, rng)).expected_count
        rnd = make_round(m * MIN, np.round(1.5 * expected), rng)  # each key 1.5 x its own expectation
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(2, dtype=bool))
    z = f.values[:, 0]
    # Per unit of log ratio (observed over expected), the steady key's evidence is stronger.
    assert z[1] > 1.0 and z[1] / f.trend_log_ratio[1] > 1.5 * z[0] / f.trend_log_ratio[0]
    # A flagged window restarts the sums: the evidence it was flagged on does not linger.
    fx.update(rnd, f, np.array([False, True]))
    assert fx._arrays["tr_count"][0] == 0.0 and fx._arrays["tr_count"][1] > 200
    rnd = make_round((train_minutes + 20) * MIN, np.array([20.0, 20.0]), rng)
    after = fx.transform(rnd)
    assert after.observed["count_recent_hour"][0] == 20.0  # only the new window
    assert after.values[1, 0] > 1.0  # the unflagged key keeps its evidence


def sales_round(start_ms: int, sales: list[list[tuple[float, float, str]]]) -> ClosedRound:
    """A round from each key's sales (ticket, units, SKU), aggregated as the windows do."""
    from streamdetect.events import sku_hash
    from streamdetect.windows import estimate_distinct, sku_bits

    n = len(sales)
    agg = {f: np.zeros(n) for f in ("count", "rev", "mx", "units", "s1", "s2", "u1", "u2")}
    bits = np.zeros((n, 16), dtype=np.uint64)
    for i, key_sales in enumerate(sales):
        for ticket, units, sku in key_sales:
            lt, lu = np.log1p(ticket), np.log1p(units)
            for f, v in (("count", 1), ("rev", ticket), ("units", units), ("s1", lt), ("s2", lt * lt),
                         ("u1", lu), ("u2", lu * lu)):
                agg[f][i] += v
            agg["mx"][i] = max(agg["mx"][i], ticket)
            word, bit = sku_bits(np.array([sku_hash(sku)], dtype=np.uint64))
            bits[i, word[0]] |= bit[0]
    return ClosedRound(
        start_ms, start_ms + MIN, np.arange(n), agg["count"], agg["rev"], agg["mx"], agg["units"],
        estimate_distinct(bits), agg["s1"], agg["s2"], np.full(n, start_ms), agg["u1"], agg["u2"],
    )


def test_per_sale_features_allow_for_sales_that_come_together():
    # Key 0 sells independent items; key 1 sells invoices: a window's lines share the customer's
    # price level and pack size. Judged as independent sales, key 1's means would be many sigma
    # off every few windows; with the between-window variance they stay about N(0, 1).
    rng = np.random.default_rng(5)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())

    def window(m: int) -> ClosedRound:
        c = rng.poisson(8.0, 2)
        level, pack = rng.normal(0, 0.8), rng.choice([1, 6, 12, 24])
        iid = [(float(np.exp(rng.normal(3, 0.8))), float(rng.choice([1, 6, 12, 24])), f"s{rng.integers(10**6)}")
               for _ in range(c[0])]
        invoice = [(float(np.exp(3 + level + rng.normal(0, 0.2))), float(pack), f"s{rng.integers(10**6)}")
                   for _ in range(c[1])]
        return sales_round(m * MIN, [iid, invoice])

    zs, naive = [], []
    for m in range(1500):
        rnd = window(m)
        f = fx.transform(rnd)
        if m >= 600:
            zs.append(f.values[:, [column(fx, "mean_ticket_z"), column(fx, "units_per_event_z")]])
            t = f.ticket
            naive.append(np.where(t.seen, t.dev * np.sqrt(rnd.count) / np.sqrt(t.per_sale_var), np.nan))
        fx.update(rnd, f, np.ones(2, dtype=bool))
    sd = np.array(zs).std(axis=0)  # (key, feature)
    assert np.all((sd > 0.6) & (sd < 1.5)), sd
    assert np.nanstd(np.array(naive)[:, 1]) > 2.5  # what the invoices would have looked like


def test_repeated_skus_are_judged_by_how_unlikely_they_are():
    rng = np.random.default_rng(6)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    col = column(fx, "distinct_skus_z")

    def sales(c: int, sku=None) -> list[tuple[float, float, str]]:
        return [(20.0, 1.0, sku or f"s{rng.integers(5000)}") for _ in range(c)]

    zs = []
    for m in range(900):
        rnd = sales_round(m * MIN, [sales(int(rng.poisson(8)))])
        f = fx.transform(rnd)
        fx.update(rnd, f, np.array([True]))
        if m >= 300:
            zs.append(f.values[0, col])
    # SKUs from 5,000 rarely repeat within a window: nothing in the ordinary ones pages.
    assert min(zs) > -3.5 and np.std(zs) < 1.2, (min(zs), np.std(zs))
    # Nor do they sit on a few values (one per window size, when nothing repeats): the count is
    # spread over its step (a randomised residual), so the mixture sees a continuous feature.
    values, counts = np.unique(np.round(zs, 3), return_counts=True)
    assert len(values) > 250 and counts.max() < 0.03 * len(zs), (len(values), counts.max())
    one_repeat = fx.transform(sales_round(900 * MIN, [sales(7) + sales(1, "s1") + sales(1, "s1")]))
    bot = fx.transform(sales_round(900 * MIN, [sales(30, "same")]))
    # One repeat among nine sales from 5,000 SKUs happens about once in 140 windows, and the sketch
    # itself merges two of nine SKUs about once in 60: unusual, not alarming.
    assert -3.0 < one_repeat.values[0, col] < -1.0
    assert bot.values[0, col] < -6.0
    assert bot.expected["distinct_skus"][0] > 25 and bot.observed["distinct_skus"][0] < 1.5


def test_new_skus_of_a_key_that_sells_one_sku_read_as_noise_about_zero():
    # Keyed by SKU no sale brings a new one: the count tells nothing, and on the arcsine scale
    # every window of a few sales read about +1 and those of none or one exactly 0 (steps the
    # mixture learned as certain, then put the busier SKUs' windows in its tail). Its randomised
    # quantile residual is N(0, 1), whatever the window size, empty windows included.
    rng = np.random.default_rng(9)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    col = column(fx, "distinct_skus_z")
    by_size: dict[int, list[float]] = {}
    for m in range(3000):
        c = int(rng.poisson(3.0))
        rnd = sales_round(m * MIN, [[(20.0, 1.0, "one")] * c])
        f = fx.transform(rnd)
        fx.update(rnd, f, np.array([True]))
        if m >= 500:
            by_size.setdefault(min(c, 5), []).append(f.values[0, col])
    assert sorted(by_size) == [0, 1, 2, 3, 4, 5]
    for c, zs in by_size.items():
        assert abs(np.mean(zs)) < 0.15 and 0.8 < np.std(zs) < 1.2, (c, np.mean(zs), np.std(zs))


def test_a_state_of_other_features_is_refused():
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    state = orjson.loads(orjson.dumps(fx.to_state()))
    with pytest.raises(ValueError, match="not the configured ones"):
        FeatureExtractor.from_state(state, FeatureConfig(features=("count_z", "revenue_ratio")))
    with pytest.raises(ValueError, match="older release"):
        FeatureExtractor.from_state({**state, "version": 1})


def test_sales_that_come_in_clumps_are_counted_in_clumps():
    # Key 0 sells one item at a time; key 1 sells invoices of 1 to 24 lines, each line an event:
    # its counts vary about E[L^2] / E[L] = 16.3 times more than Poisson at the same mean.
    rng = np.random.default_rng(8)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())

    def counts() -> np.ndarray:
        return np.array([rng.poisson(12.5), rng.integers(1, 25, rng.poisson(1.0)).sum()])

    zs, expected = [], []
    for m in range(2400):
        rnd = make_round(m * MIN, counts(), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(2, dtype=bool))
        if m >= 1200:
            zs.append(f.values[:, column(fx, "count_z")])
            expected.append(f.expected_count)
    clump = f.clump
    assert clump[0] < 1.3 and 12.0 < clump[1] < 21.0, clump
    # Judged in clumps, an ordinary invoice is not a spike: count_z is about N(0, 1) for both.
    sd = np.array(zs).std(axis=0)
    assert np.all((sd > 0.6) & (sd < 1.5)), sd
    # The level follows the mean, not the median of a count that is mostly 0.
    assert np.mean(expected, axis=0)[1] == pytest.approx(12.5, rel=0.3)
    # An hour without an invoice is an outage all the same.
    for m in range(2400, 2460):
        rnd = make_round(m * MIN, np.array([rng.poisson(12.5), 0]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(2, dtype=bool))
    assert f.values[1, column(fx, "count_scan_z")] < -5.0


def test_an_alert_expects_the_key_s_usual_units_per_sale():
    # Half the sales are of 1 unit, half of 11: 6 units per sale on average.
    rng = np.random.default_rng(9)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    for m in range(600):
        rnd = sales_round(m * MIN, [[(20.0, u, f"s{rng.integers(5000)}") for u in (1.0, 11.0) * 4]])
        fx.update(rnd, fx.transform(rnd), np.array([True]))
    f = fx.transform(sales_round(600 * MIN, [[(20.0, 1.0, "a"), (20.0, 11.0, "b")]]))
    assert f.observed["units_per_sale"][0] == 6.0
    assert f.expected["units_per_sale"][0] == pytest.approx(6.0, rel=0.25)



def test_returns_are_reported_with_their_window_and_leave_the_features_alone():
    rng = np.random.default_rng(3)
    fx, plain = (FeatureExtractor(FeatureConfig(), WindowConfig()) for _ in range(2))
    train(fx, np.array([10.0]), 120, np.random.default_rng(1))
    train(plain, np.array([10.0]), 120, np.random.default_rng(1))
    rnd = make_round(120 * MIN, np.array([10]), rng)
    with_returns = make_round(120 * MIN, np.array([10]), np.random.default_rng(3))
    with_returns.returns, with_returns.refunds = np.array([3.0]), np.array([45.0])
    f, g = plain.transform(rnd), fx.transform(with_returns)
    assert np.array_equal(f.values, g.values)
    assert g.observed["returns"].tolist() == [3.0] and g.observed["refunds"].tolist() == [45.0]
    assert f.observed["returns"].tolist() == [0.0]


def test_kernels_compile_where_no_cache_directory_is_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A read-only install with no writable home: numba refuses to cache and raises at decoration,
    # which would make the package unimportable; the kernels compile in memory instead.
    import numba

    from streamdetect import _jit

    real = numba.njit

    def njit(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(*args, **kwargs)

    monkeypatch.setattr(_jit.numba, "njit", njit)
    twice = _jit.compiled(lambda x: 2 * x)
    assert twice(21) == 42 and hasattr(twice, "signatures")  # a numba dispatcher, not the Python function


def test_kernels_take_the_state_arrays_in_state_order() -> None:
    # The extractor passes its arrays positionally in STATE_ORDER: a kernel whose parameter list
    # drifted from it would read one baseline as another without any error.
    import inspect

    n = len(kernels.STATE_ORDER)
    for kernel in (kernels.transform_round, kernels.update_round):
        params = list(inspect.signature(kernel.py_func).parameters)
        assert tuple(params[-n:]) == kernels.STATE_ORDER, kernel.py_func.__name__
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    assert set(kernels.STATE_ORDER) <= set(fx._arrays)


def test_a_cached_kernel_is_compiled_afresh_when_any_kernel_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # numba checks a cached kernel against its own file only; the kernels here call each other
    # across files, so their stamp covers every kernel source (streamdetect._jit).
    import importlib
    import sys

    from streamdetect import _jit

    (tmp_path / "cache_probe_kernel.py").write_text(
        "from streamdetect._jit import compiled\n\n\n@compiled\ndef twice(x):\n    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def load() -> Any:
        sys.modules.pop("cache_probe_kernel", None)
        probe = importlib.import_module("cache_probe_kernel")
        assert probe.twice(21) == 42
        return probe.twice.stats

    assert load().cache_misses  # compiled, and saved
    assert load().cache_hits  # loaded
    monkeypatch.setattr(_jit, "_SOURCES_DIGEST", b"another version of a kernel source")
    stale = load()
    assert stale.cache_misses and not stale.cache_hits


def test_every_module_with_kernels_is_a_kernel_source() -> None:
    from streamdetect import _jit

    package = Path(_jit.__file__).parent
    users = {p.name for p in package.glob("*.py") if "streamdetect._jit import" in p.read_text()}
    assert users <= set(_jit.KERNEL_SOURCES), users - set(_jit.KERNEL_SOURCES)
    assert all((package / name).is_file() for name in _jit.KERNEL_SOURCES)


def test_the_scan_counts_sparse_clumps_in_clumps():
    # A key whose sales come in rare clumps of 20 (a batch every 40 windows on average): the
    # hours between two clumps are ordinary. A continuity correction of half a sale (rather than
    # half a clump) read each such gap as a deficit of six sigma or more.
    rng = np.random.default_rng(5)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    scan = []
    for m in range(6000):
        rnd = make_round(m * MIN, np.array([20 * rng.poisson(1 / 40)]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(1, dtype=bool))
        if m >= 3000:
            scan.append(f.values[0, column(fx, "count_scan_z")])
    assert f.clump[0] > 10.0, f.clump
    assert np.quantile(scan, 0.001) > -4.0, np.quantile(scan, [0.001, 0.01, 0.5])


def test_a_shop_that_closes_early_on_sundays_is_expected_closed_on_the_second_sunday():
    # Open 9:00-20:00, on Sundays 9:00-17:00; after closing, the key keeps producing empty windows
    # until its idle timeout (an hour), then none until it sells again. The first Sunday's early
    # closing is news (the detector flags it, so those windows are not learned), but once the
    # key has gone quiet for the night, its silence is what its Sunday evenings look like.
    rng = np.random.default_rng(11)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    monday = 4 * 1440  # minutes: 1970-01-05 was a Monday
    scan_col = column(fx, "count_scan_z")
    second_sunday: list[float] = []
    for day in range(14):
        sunday = day % 7 == 6
        close = 17 * 60 if sunday else 20 * 60
        for minute in range(9 * 60, close + 60):
            m = monday + day * 1440 + minute
            c = rng.poisson(5.0) if minute < close else 0
            rnd = make_round(m * MIN, np.array([c]), rng)
            f = fx.transform(rnd)
            flagged = sunday and day < 7 and minute >= close
            fx.update(rnd, f, np.array([not flagged]))
            if day == 13 and minute >= close:
                second_sunday.append(f.values[0, scan_col])
                assert f.expected_count[0] < 0.5, (minute, f.expected_count)
    assert min(second_sunday) > -3.0, min(second_sunday)


def shop_minutes(days: int, opens: int = 9 * 60, closes: int = 20 * 60):
    """``(day, minute of the day, window start in ms)`` of a shop open from ``opens`` to ``closes``
    (minutes of the day) every day from a Monday; closed, it has no windows."""
    monday = 4 * 1440  # minutes: 1970-01-05 was a Monday
    for day in range(days):
        for minute in range(opens, closes):
            yield day, minute, (monday + day * 1440 + minute) * MIN


def expected_a_week_later(day: int, hours: tuple[int, int], rate: float, seed: int) -> float:
    """The mean expected count of a shop selling 10 a minute (see :func:`shop_minutes`), a week
    after ``day``, whose ``hours`` (from, to) that day sold ``rate`` a minute."""
    rng = np.random.default_rng(seed)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    expected: list[float] = []
    for d, minute, start in shop_minutes(day + 8):
        within = hours[0] * 60 <= minute < hours[1] * 60
        rnd = make_round(start, np.array([rng.poisson(rate if d == day and within else 10.0)]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(1, dtype=bool))
        if d == day + 7 and within:
            expected.append(float(f.expected_count[0]))
    return float(np.mean(expected))


def test_one_afternoon_s_mood_is_not_expected_again_a_week_later():
    # A shop selling 10 a minute, 9:00-20:00, whose first Monday happened to sell 12.5 a minute
    # from 14:00 to 15:00. The hour of the week holds that one afternoon; the hour of day pools the
    # week. A week later the hour is expected near the usual 10, not at last Monday's 12.5: nearer
    # the one than the other, and less than 40 % of the afternoon's excess carried over against the
    # same shop without it (30 %; 37 % while the key's level learned with its small-count bias, whose
    # expectations sat 5 % low and kept this one under 10.8).
    expected = expected_a_week_later(day=0, hours=(14, 15), rate=12.5, seed=5)
    usual = expected_a_week_later(day=0, hours=(14, 15), rate=10.0, seed=5)
    assert 9.0 < expected < 11.25 and expected - usual < 0.4 * (12.5 - 10.0), (expected, usual)


def test_a_level_learned_before_closing_time_is_not_expected_the_next_morning():
    # A shop selling 10 a minute, 9:00-20:00, whose third evening sells 3 a minute from 18:00 on,
    # long enough to be its new normal (its level follows). Closed overnight (no windows), it opens
    # the next morning expected near its usual 10, not at the evening's level (3.8 before).
    rng = np.random.default_rng(11)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    morning: list[float] = []
    for day, minute, start in shop_minutes(4):
        evening = day == 2 and minute >= 18 * 60
        rnd = make_round(start, np.array([rng.poisson(3.0 if evening else 10.0)]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(1, dtype=bool), new_normal=np.array([evening]))
        if day == 3 and minute < 9 * 60 + 30:
            morning.append(float(f.expected_count[0]))
    assert 8.5 < np.mean(morning) < 11.5, np.mean(morning)


def test_a_bucket_learned_from_deviating_windows_holds_little_evidence():
    # An hour of windows two standard deviations out (robustness weight 1 / (1 + 2^2)) counts as
    # 60 / 4 = 15 windows of evidence, short of the 20 that make an hour of the week trusted;
    # its mean is still the mean of what it saw. An ordinary window counts whole.
    from streamdetect import _feature_kernels as kernels

    n, count, rev = np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2))
    for _ in range(60):
        kernels._learn_bucket(n, count, rev, 0, 0, 5.0, 100.0, 0.01, 0.2, kernels._evidence(0.2))
    assert n[0, 0] == pytest.approx(15.0)
    assert count[0, 0] == pytest.approx(5.0, abs=0.3)
    kernels._learn_bucket(n, count, rev, 0, 1, 5.0, 100.0, 0.01, 0.6, kernels._evidence(0.6))
    assert n[0, 1] == 1.0


def test_a_first_week_level_shift_is_not_expected_on_its_hour_a_week_later():
    # A shop selling 10 a minute, 9:00-20:00, whose first Wednesday sold 5 a minute from 14:00 to
    # 17:00. Once the level has learned the day, the shift reads beyond the freeze and is not
    # learned; what is learned of it, deviating, counts as little evidence. Before, the next
    # Wednesday afternoon was expected at 4.9 a minute (the hour of the week held the shift).
    expected = expected_a_week_later(day=2, hours=(14, 17), rate=5.0, seed=7)
    assert 7.5 < expected < 11.0, expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_day_of_week_doubt_shrinks_as_the_level_learns_the_day(seed):
    # In its first week a key's hour of the week is unknown, and so is today's day-of-week
    # factor: a doubling at opening could be Thursday's way, and reads about 2 (within the
    # freeze). By mid-afternoon the level has learned today's factor, and the same doubling reads
    # beyond the freeze (1.6-2.5 before: the doubt was counted in full all day).
    rng = np.random.default_rng(seed)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    morning, afternoon = [], []
    for day, minute, start in shop_minutes(4):
        at_opening = day == 3 and 9 * 60 <= minute < 9 * 60 + 30
        later = day == 3 and 15 * 60 <= minute < 15 * 60 + 30
        rnd = make_round(start, np.array([rng.poisson(20.0 if at_opening or later else 10.0)]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(1, dtype=bool))
        if at_opening and minute >= 9 * 60 + 20:
            morning.append(float(f.scan_z[0]))
        if later and minute >= 15 * 60 + 20:
            afternoon.append(float(f.scan_z[0]))
    freeze_z = FeatureConfig().freeze_z
    assert np.median(morning) < freeze_z < np.median(afternoon), (np.median(morning), np.median(afternoon))


def test_a_window_of_a_new_normal_restarts_the_sums_as_an_alerted_window_does():
    # A key flagged for long has a new normal: its windows are learned, and still alerted. Like
    # any alerted window, each restarts the context, trend and scan sums, or a spike's last
    # windows, once its new normal, kept the scan up after it ended (seed 2's store-014: its scan
    # at 5.4 to 2.6 for twenty minutes after a 42-minute spike, alerting on 10 windows).
    rng = np.random.default_rng(3)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, np.array([10.0, 10.0]), 2 * 1440, rng)
    for m in range(2 * 1440, 2 * 1440 + 40):
        rnd = make_round(m * MIN, rng.poisson(np.array([40.0, 40.0])), rng)
        streak = m - 2 * 1440 + 1
        # key 0 alerted throughout (never learned); key 1 alerted, a new normal past 30 windows
        fx.update(rnd, fx.transform(rnd), np.array([False, streak > 30]), new_normal=np.array([False, streak > 30]))
    a = fx._arrays
    for name in ("scan_tot_c", "tr_count", "ctx_count"):
        assert np.all(a[name][:2] == 0.0), (name, a[name][:2])


class Sku:
    """A key's per-SKU price references, fed sales ``every_ms`` apart on a clock of its own."""

    def __init__(self) -> None:
        from streamdetect._price_kernels import SLOTS

        self.table = (np.zeros((1, SLOTS), dtype=np.int64), *np.zeros((3, 1, SLOTS)))
        self.clock = 0

    def sell(self, prices: list[float], skus: list[int], every_ms: int = 600_000) -> np.ndarray:
        from streamdetect._price_kernels import price_deviations

        ts = self.clock + np.arange(len(prices), dtype=np.int64) * every_ms
        self.clock = int(ts[-1]) + every_ms
        keys = np.zeros(len(prices), dtype=np.int64)
        return price_deviations(keys, ts, np.array(skus, dtype=np.uint64), np.log(np.array(prices)), *self.table)


def test_a_sale_far_from_its_skus_usual_price_reads_as_such_and_does_not_move_it():
    key = Sku()
    dev = key.sell([10.0] * 8 + [0.1, 1000.0, 10.0], [7] * 11)  # a sale every 10 minutes
    assert np.allclose(dev[:8], 0.0)  # trusted once sales have held its price for an hour
    assert dev[8] == pytest.approx(np.log(0.01)) and dev[9] == pytest.approx(np.log(100.0))
    assert dev[10] == pytest.approx(0.0)  # the reference did not learn the glitches


def test_tickets_at_scattered_wrong_prices_never_make_a_reference():
    """A SKU first sold at all sorts of tiny prices (a flood of tiny tickets) is not trusted at
    them: its normal sales afterwards read nothing rather than a hundred times too much."""
    rng = np.random.default_rng(0)
    key = Sku()
    tiny = list(20.0 * rng.uniform(0.005, 0.02, 30))
    assert np.allclose(key.sell(tiny + [20.0] * 6, [9] * 36), 0.0)


def test_a_repricing_is_learned_and_a_glitch_among_normal_sales_is_not():
    from streamdetect._price_kernels import CAP

    key = Sku()
    key.sell([10.0] * 30, [3] * 30)
    dev = key.sell([50.0] * 40, [3] * 40)
    worn = int(CAP) - 2  # sales until fewer than TRUST are left of the reference's evidence
    assert np.allclose(dev[:worn], np.log(5.0))  # reported while the old price is trusted
    assert np.allclose(dev[worn:], 0.0)  # then the new price is learned, and trusted in its turn
    assert key.sell([10.0], [3])[0] == pytest.approx(np.log(0.2))
    # interleaved with sales at the usual price, a wrong price never becomes the SKU's
    key = Sku()
    key.sell([10.0] * 30, [3] * 30)
    dev = key.sell([50.0, 10.0] * 20, [3] * 40)
    assert np.allclose(dev[::2], np.log(5.0)) and np.allclose(dev[1::2], 0.0)


def test_a_price_that_wore_its_reference_out_is_trusted_only_after_holding_for_an_hour():
    """A trusted reference worn out by sales at half as much again moves to the new price; the
    new price is read from only once it has held for an hour, as a first price is."""
    key = Sku()
    key.sell([10.0] * 8, [7] * 8)  # trusted: an hour and more at 10
    dev = key.sell([15.0] * 20, [7] * 20, every_ms=60_000)
    assert dev[0] == pytest.approx(np.log(1.5))  # read while the old reference holds
    assert np.allclose(dev[8:], 0.0)  # then worn out: the new price is not yet trusted
    assert key.sell([0.15], [7], every_ms=60_000)[0] == 0.0
    key.sell([15.0] * 60, [7] * 60, every_ms=60_000)
    assert key.sell([0.15], [7])[0] == pytest.approx(np.log(0.01), abs=0.05)


def test_a_sku_sold_at_all_sorts_of_prices_reads_little_and_a_glitch_leaves_no_reference():
    """Customer price tiers (a log-normal spread of 0.3): trusted only by the chance of a few
    close prices in a row, and briefly; a half-hour glitch's cent-rounded prices, identical, do
    not make a reference (they did not hold for an hour) that the normal sales then contradict."""
    rng = np.random.default_rng(4)
    key = Sku()
    normal = lambda k: list(np.round(2.7 * np.exp(rng.normal(0.0, 0.3, k)), 2))  # noqa: E731
    before = key.sell(normal(300), [5] * 300)
    assert np.count_nonzero(before) <= 6 and np.abs(before).max() < np.log(2.0), before[before != 0]
    key.sell([0.03] * 10, [5] * 10, every_ms=180_000)  # a glitch at a hundredth, half an hour
    after = key.sell(normal(300), [5] * 300)
    assert np.abs(after).max() < np.log(2.0), after[after != 0]


def test_price_deviations_do_not_depend_on_batching_and_skip_sales_without_sku_or_price():
    rng = np.random.default_rng(1)
    n = 3000
    skus = np.minimum(rng.zipf(1.3, n), 399)  # a few best-sellers and a long tail
    prices = np.exp(rng.normal(2.0, 1.0, 400))[skus] * np.where(rng.random(n) < 0.01, 100.0, 1.0)
    whole = Sku().sell(list(prices), list(skus), every_ms=60_000)
    key = Sku()
    parts = np.concatenate([key.sell(list(prices[i : i + 7]), list(skus[i : i + 7]), every_ms=60_000)
                            for i in range(0, n, 7)])  # fmt: skip
    assert np.array_equal(whole, parts)
    assert (np.abs(whole) > 4).sum() >= 10  # the glitched sales of SKUs the sketch holds
    assert np.allclose(Sku().sell([5.0] * 10 + [0.05], [0] * 11), 0.0)


def test_the_skus_a_key_sells_most_keep_their_references_among_many_rare_ones():
    """Two best-sellers amid a stream of rare SKUs passing through their buckets: the
    best-sellers' glitches are still read."""
    rng = np.random.default_rng(2)
    best = [1, 2]
    skus, prices = [], []
    for _ in range(400):
        skus += [best[rng.integers(2)], int(rng.integers(1000, 100_000))]
        prices += [10.0 if skus[-2] == 1 else 30.0, 5.0]
    key = Sku()
    key.sell(prices, skus, every_ms=60_000)
    assert np.allclose(key.sell([0.1, 0.3], best), [np.log(0.01), np.log(0.01)])


def test_a_window_keeps_its_sale_farthest_from_its_skus_price():
    from streamdetect.windows import WindowAggregator

    agg = WindowAggregator(WindowConfig())
    ts = np.array([1_000, 2_000, 3_000, 61_000])
    agg.add(ts, [("s",)] * 4, amount=np.ones(4), quantity=np.ones(4), sku_hash=np.ones(4, dtype=np.uint64),
            price_dev=np.array([0.5, -4.0, 0.0, 2.0]))  # fmt: skip
    agg.advance(10 * MIN)
    rounds = agg.close_rounds()
    assert rounds is not None and rounds.price_dev is not None
    assert rounds.price_dev[rounds.count > 0].tolist() == [-4.0, 2.0]


def test_the_price_feature_is_the_part_beyond_a_factor_three_and_the_alert_reports_it_whole():
    """Within a factor three a price is one the SKU may well have (a customer's tier, a discount):
    the feature reads 0 there and the distance beyond it past; ``price_vs_usual`` reports the
    sale's whole ratio."""
    import dataclasses

    from streamdetect._price_kernels import ADOPT

    rng = np.random.default_rng(0)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, np.full(5, 3.0), 30, rng)
    dev = np.log(np.array([1.0, 0.5, 2.9, 0.01, 10.0]))
    rnd = dataclasses.replace(make_round(30 * MIN, np.full(5, 3.0), rng), price_dev=dev)
    f = fx.transform(rnd)
    got = f.values[:, column(fx, "price_ratio")]
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, np.log(0.01) + ADOPT, np.log(10.0) - ADOPT])
    np.testing.assert_allclose(f.observed["price_vs_usual"], [1.0, 0.5, 2.9, 0.01, 10.0])


def test_the_compiled_round_counts_the_price_beyond_a_factor_three_as_numpy_does():
    from streamdetect import _feature_kernels as kernels
    from streamdetect._price_kernels import beyond_plausible

    dev = np.log(np.array([1.0, 0.5, 2.9, 0.01, 10.0, 1e-6]))
    n = len(dev)
    one = np.ones(n)
    codes = np.array([kernels.VALUE_CODES["price_ratio"]], dtype=np.int64)
    got = np.empty((n, 1))
    assert kernels.values_round(got, np.zeros((n, kernels.T_COLUMNS)), codes, one, one, one, one, one, dev, np.zeros(8))
    np.testing.assert_array_equal(got[:, 0], beyond_plausible(dev))
    assert not np.signbit(got[:3, 0]).any()  # a plain 0, not -0.0, within the factor


def test_a_run_of_empty_windows_is_judged_by_how_unlikely_it_is_for_its_key():
    # Three keys at 10, 1 and 0.05 sales a minute go silent for half an hour. The busy key's run
    # is beyond a risk of 4e-5 within two windows, the middling key's within about a quarter hour
    # (at 1 a minute, a dozen empty minutes are already rare), the quiet key's never: an empty
    # half hour is ordinary at one sale in twenty minutes.
    rng = np.random.default_rng(8)
    rates = np.array([10.0, 1.0, 0.05])
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, rates, 240, rng)
    sold = make_round(240 * MIN, np.array([3, 3, 3]), rng)
    before = fx.transform(sold)
    fx.update(sold, before, np.ones(3, dtype=bool))
    assert np.all(before.silent_windows == 0) and np.all(before.silence_log_p == 0.0)
    runs, expected, log_p = [], [], []
    for m in range(241, 271):
        rnd = make_round(m * MIN, np.zeros(3), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(3, dtype=bool))
        runs.append(f.silent_windows)
        expected.append(f.silent_expected)
        log_p.append(f.silence_log_p)
    runs_, expected_, log_p_ = np.array(runs), np.array(expected), np.array(log_p)
    assert runs_.tolist() == [[m, m, m] for m in range(1, 31)]  # from the last window with a sale
    assert expected_[-1, 0] == pytest.approx(300.0, rel=0.3)
    assert np.all(np.diff(log_p_, axis=0) <= 0.0)  # the longer the run, the less likely
    beyond = log_p_ < np.log(4e-5)
    first = [int(np.argmax(beyond[:, k])) + 1 if beyond[:, k].any() else None for k in range(3)]
    assert first[0] is not None and first[0] <= 2
    assert first[1] is not None and 5 <= first[1] <= 20, first
    assert first[2] is None, log_p_[-1]


def test_an_alert_restarts_the_run_the_silence_test_judges_not_the_run_reported():
    # A key at 1 sale a minute goes silent for 20 minutes and is alerted for its 8th empty window
    # (learn False): the run judged starts again after it (the evidence already reported), the
    # whole run goes on (what a later alert reports), and a sale ends both. A state saved in the
    # middle of the run carries it on.
    rng = np.random.default_rng(10)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    train(fx, np.array([1.0]), 240, rng)
    judged, whole = [], []
    for m in range(240, 261):
        if m == 250:
            fx = FeatureExtractor.from_state(orjson.loads(orjson.dumps(fx.to_state())), FeatureConfig(), WindowConfig())
        rnd = make_round(m * MIN, np.array([0.0 if m < 260 else 3.0]), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.array([m != 247]))
        judged.append(int(f.silent_windows[0]))
        whole.append(int(f.empty_windows[0]))
    assert whole == [*range(1, 21), 0]
    # The window after the alert is the first of the restarted sums, with none before it to judge
    # a run by; the next judges two windows, and so on.
    assert judged == [*range(1, 9), 0, *range(2, 13), 0], str(judged)


def test_a_window_says_what_its_expectations_were_taken_from():
    # A new key is judged against its recent windows; once an hour of the day has held enough
    # windows, against that hour on the other days; once an earlier week has shown the hour of
    # the week, against it.
    from streamdetect.alerts import REFERENCES

    rng = np.random.default_rng(12)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    rate = np.array([2.0])

    def reference_at(minute: int) -> str:
        rnd = make_round(minute * MIN, rng.poisson(rate), rng)
        return REFERENCES[int(fx.transform(rnd).reference[0])]

    assert reference_at(0) == "recent"
    train(fx, rate, 2 * 24 * 60, rng)  # two days
    assert reference_at(2 * 24 * 60) == "hour_of_day"
    train(fx, rate, 6 * 24 * 60, rng, start_minute=2 * 24 * 60)  # to the end of the eighth day
    assert reference_at(8 * 24 * 60) == "hour_of_week"


def test_a_run_of_hopping_windows_expects_only_the_sales_of_the_span_it_covers():
    # Five-minute windows every minute: 15 empty ones cover 19 minutes, not 75, and at 10 sales
    # a minute about 190 sales went missing, not the 700 or so their windows' expectations add up to.
    rng = np.random.default_rng(9)
    fx = FeatureExtractor(FeatureConfig(), WindowConfig(size=300, hop=60))
    rate = np.array([50.0])  # sales a five-minute window
    train(fx, rate, 240, rng)
    for m in range(240, 255):
        rnd = make_round(m * MIN, np.zeros(1), rng)
        f = fx.transform(rnd)
        fx.update(rnd, f, np.ones(1, dtype=bool))
    assert f.silent_windows[0] == 15
    assert f.silent_expected[0] == pytest.approx(190.0, rel=0.2)


def test_an_alert_expects_the_revenue_a_key_takes_however_few_its_sales():
    """The revenue level's log ratios average below the log of the mean revenue (a few tickets,
    or none, a window): an alert reports the expected count at the reference's revenue per sale
    instead. A series of one sample a window keeps the level's expectation (its value level)."""
    rng = np.random.default_rng(4)
    rates = np.array([0.4, 1.5, 20.0])
    fx = FeatureExtractor()
    train(fx, rates, 3 * 1440, rng)
    reported, level, taken, count, sold = (np.zeros(3) for _ in range(5))
    for m in range(3 * 1440, 4 * 1440):
        rnd = make_round(m * MIN, rng.poisson(rates), rng)
        feats = fx.transform(rnd)
        reported += feats.expected["revenue"]
        level += feats.columns[:, kernels.T_EXPECTED_REV]
        taken += rnd.revenue
        count += feats.expected_count
        sold += rnd.count
        fx.update(rnd, feats, np.ones(3, dtype=bool))
    # Per sale as taken; the quietest key's expected count is itself some 10 % high.
    assert np.all(np.abs(reported / taken / (count / sold) - 1.0) < 0.05), (reported / taken, count / sold)
    assert np.all(np.abs(reported / taken - 1.0) < 0.15), reported / taken
    assert level[0] / taken[0] < 0.8, level / taken  # what it reported before

    values = FeatureExtractor()
    for m in range(2 * 1440):  # one sample a window: count 1, its value as the revenue
        rnd = make_round(m * MIN, np.ones(1), rng)
        feats = values.transform(rnd)
        values.update(rnd, feats, np.ones(1, dtype=bool))
    assert feats.expected["revenue"][0] == pytest.approx(feats.columns[0, kernels.T_EXPECTED_REV], rel=1e-3)


def test_a_key_s_first_few_sales_at_one_price_do_not_make_its_next_quantity_many_sigma():
    # A SKU's key: a sale of one unit at 24.99 every twenty minutes. Its first sales leave its
    # tickets no spread of their own; one sale of two units is then not a 14-sigma event.
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    for m in range(4 * 60):
        rnd = sales_round(m * MIN, [[(24.99, 1.0, "SKU-1")] if m % 20 == 0 else []])
        fx.update(rnd, fx.transform(rnd), np.ones(1, dtype=bool))
    rnd = sales_round(4 * 60 * MIN, [[(49.98, 2.0, "SKU-1")]])
    f = fx.transform(rnd)
    assert 0.5 < f.values[0, column(fx, "mean_ticket_z")] < 3.0
    assert 0.5 < f.values[0, column(fx, "units_per_event_z")] < 3.0
    # A glitch of a hundred times the price is still far out.
    glitch = fx.transform(sales_round(4 * 60 * MIN, [[(2499.0, 1.0, "SKU-1")]]))
    assert glitch.values[0, column(fx, "mean_ticket_z")] > 8.0


def test_a_key_s_first_sale_is_judged_by_its_count_not_by_a_ticket_it_has_no_measure_of():
    # Before its first sale a key knows no ticket: its first sale of 25 is one sale where few were
    # expected (revenue about twice what one ticket more than expected makes), not revenue 26
    # times the expected, and the max ticket has nothing to be far from.
    fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    for m in range(60):
        rnd = sales_round(m * MIN, [[]])
        fx.update(rnd, fx.transform(rnd), np.ones(1, dtype=bool))
    f = fx.transform(sales_round(60 * MIN, [[(24.99, 1.0, "SKU-1")]]))
    assert f.values[0, column(fx, "revenue_ratio")] <= np.log(2.0) + 1e-9
    assert f.values[0, column(fx, "max_ticket_z")] == 0.0
