"""Event-time windows: watermark, lateness edges, idle keys, hopping windows, state."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import orjson
import pytest

from streamdetect.config import WindowConfig
from streamdetect.windows import ClosedRound, ClosedRounds, KeyIndex, WindowAggregator, estimate_distinct

MIN = 60_000


def add(agg: WindowAggregator, ts, keys, amount=None, sku=None) -> list[int]:
    ts = np.asarray(ts, dtype=np.int64)
    n = len(ts)
    keys = [(k,) if isinstance(k, str) else k for k in keys]
    amount = np.ones(n) if amount is None else np.asarray(amount, dtype=float)
    sku = np.arange(n, dtype=np.uint64) if sku is None else np.asarray(sku, dtype=np.uint64)
    return agg.add(ts, keys, amount=amount, quantity=np.ones(n), sku_hash=sku).tolist()


def closed(agg: WindowAggregator, flush: bool = False) -> list[tuple[int, str, float]]:
    out = []
    for rnd in agg.pop_closed(flush=flush):
        for kid, c in zip(rnd.key_id.tolist(), rnd.count.tolist(), strict=True):
            out.append((rnd.start_ms // MIN, agg.keys.keys[kid][0], c))
    return out


def test_window_closes_only_when_watermark_passes_its_end():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=30))
    add(agg, [10_000, 50_000], ["a", "a"])
    assert closed(agg) == []
    # Watermark = 89_999 - 30_000 < 60_000: still open.
    add(agg, [89_999], ["a"])
    assert closed(agg) == []
    # Watermark reaches exactly the window end: it closes.
    add(agg, [90_000], ["a"])
    assert closed(agg) == [(0, "a", 2.0)]


def test_late_event_rejected_at_exact_boundary_and_accepted_just_inside():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=30))
    add(agg, [150_000], ["a"])  # watermark 120_000: windows ending at or before 120_000 are closed
    assert add(agg, [119_999], ["a"]) == [0]  # window [60_000, 120_000) closed
    assert add(agg, [120_000], ["a"]) == []  # window [120_000, 180_000) open
    assert agg.late_events == 1


def test_lateness_uses_the_watermark_of_the_events_before_it_in_the_same_batch():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=60))
    # The second event pushes the watermark to 240_000, so the third (window 2) is late,
    # but the first one (same window as the third) arrived before and counts.
    late = add(agg, [130_000, 300_000, 125_000], ["a", "a", "a"])
    assert late == [2]
    assert (2, "a", 1.0) in closed(agg)


def test_verdicts_do_not_depend_on_batching():
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(0, 3_600_000, 2000)) + rng.integers(-200_000, 20_000, 2000)
    keys = [f"k{i}" for i in rng.integers(0, 5, 2000)]

    def run(batch: int):
        agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=60, idle_timeout=600))
        late, rounds = [], []
        for s in range(0, len(ts), batch):
            late += [s + i for i in add(agg, ts[s : s + batch], keys[s : s + batch])]
            rounds += closed(agg)
        rounds += closed(agg, flush=True)
        return late, rounds

    assert run(1) == run(37) == run(2000)


def test_idle_key_emits_zero_windows_until_idle_timeout():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=180))
    add(agg, [0, 5_000], ["quiet", "busy"])
    # "busy" keeps selling for ten minutes; "quiet" says nothing after its first sale.
    add(agg, [m * MIN + 1 for m in range(1, 11)], ["busy"] * 10)
    rows = closed(agg)
    quiet = [(m, c) for m, k, c in rows if k == "quiet"]
    # Data window 0, then zero windows whose end is within 3 minutes of the last data end (1 min).
    assert quiet == [(0, 1.0), (1, 0.0), (2, 0.0), (3, 0.0)]
    busy = [m for m, k, c in rows if k == "busy"]
    assert busy == list(range(10))


def test_store_that_stops_selling_produces_zero_windows_while_others_sell():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=3600))
    ts = [m * MIN + 1 for m in range(30)]
    events = sorted([(t, "a") for t in ts] + [(t, "b") for t in ts[:10]])  # b stops at minute 10
    add(agg, [t for t, _ in events], [k for _, k in events])
    rows = closed(agg)
    b = [(m, c) for m, k, c in rows if k == "b"]
    assert [c for _, c in b[:10]] == [1.0] * 10
    assert [c for _, c in b[10:]] == [0.0] * (len(b) - 10)
    assert [m for m, _ in b] == list(range(29))


def test_gap_with_no_active_keys_is_skipped_without_emitting_rounds():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=60))
    add(agg, [0, 10 * 86_400_000], ["a", "a"])
    rows = closed(agg)
    assert rows == [(0, "a", 1.0), (1, "a", 0.0)]


def test_hopping_windows_count_each_event_in_every_window_it_belongs_to():
    agg = WindowAggregator(WindowConfig(size=120, hop=60, allowed_lateness=0, idle_timeout=0))
    add(agg, [70_000], ["a"])
    add(agg, [400_000], ["b"])
    rows = [(m, k, c) for m, k, c in closed(agg) if k == "a"]
    assert rows == [(0, "a", 1.0), (1, "a", 1.0)]


def test_aggregates_of_a_window():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=0))
    add(agg, [1, 2, 3], ["a"] * 3, amount=[10.0, 30.0, 20.0], sku=[7, 7, 9])
    add(agg, [10 * MIN], ["z"])
    rnd = next(iter(agg.pop_closed()))
    assert rnd.count.tolist() == [3.0]
    assert rnd.revenue.tolist() == [60.0]
    assert rnd.max_ticket.tolist() == [30.0]
    assert rnd.units.tolist() == [3.0]
    assert rnd.distinct_skus[0] == pytest.approx(2.0, abs=0.1)
    assert rnd.last_event_ms.tolist() == [3]


def test_returns_are_counted_apart_from_the_sales():
    """A return (a cancelled line, a refund) is counted with its amount, and leaves the sales'
    count, revenue, largest ticket, units and SKUs as they were without it."""
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=0))
    ts = np.array([1, 2, 3, 4], dtype=np.int64)
    agg.add(ts, [("a",)] * 4, amount=np.array([10.0, 30.0, 99.0, 5.5]), quantity=np.array([1.0, 2.0, 9.0, 1.0]),
            sku_hash=np.array([7, 7, 9, 11], dtype=np.uint64), is_return=np.array([False, False, True, True]))
    add(agg, [10 * MIN], ["z"])
    rnd = next(iter(agg.pop_closed()))
    assert rnd.count.tolist() == [2.0] and rnd.revenue.tolist() == [40.0] and rnd.max_ticket.tolist() == [30.0]
    assert rnd.units.tolist() == [3.0] and rnd.distinct_skus[0] == pytest.approx(1.0, abs=0.01)
    assert rnd.returns is not None and rnd.returns.tolist() == [2.0]
    assert rnd.refunds is not None and rnd.refunds.tolist() == [104.5]


def test_a_window_saved_before_returns_were_counted_is_restored_with_none():
    """Open windows in a checkpoint of the release before returns (8 fields) restore their sums,
    with no returns."""
    cfg = WindowConfig(size=60, allowed_lateness=600)
    a = WindowAggregator(cfg)
    add(a, [1, 2], ["a", "a"], amount=[4.0, 6.0])
    state = orjson.loads(orjson.dumps(a.to_state()))
    row = state["open"]["windows"][0]
    del row[2 + 8 : 2 + 10]  # the two return fields, after the eight older ones
    b = WindowAggregator.from_state(state, cfg)
    rnd = next(iter(b.pop_closed(flush=True)))
    assert rnd.count.tolist() == [2.0] and rnd.revenue.tolist() == [10.0]
    assert rnd.returns is not None and rnd.returns.tolist() == [0.0]


def test_flush_closes_every_open_window():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=600))
    add(agg, [0, 70_000, 130_000], ["a", "a", "b"])
    assert closed(agg) == []
    starts = {(m, k) for m, k, _ in closed(agg, flush=True)}
    assert {(0, "a"), (1, "a"), (2, "b")} <= starts


def test_state_round_trips_and_continues_identically():
    cfg = WindowConfig(size=60, allowed_lateness=60, idle_timeout=300)
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, 1_800_000, 500))
    keys = [f"k{i}" for i in rng.integers(0, 4, 500)]
    a = WindowAggregator(cfg)
    add(a, ts[:250], keys[:250])
    closed(a)
    b = WindowAggregator.from_state(orjson.loads(orjson.dumps(a.to_state())), cfg)
    assert b.to_state() == a.to_state()
    add(a, ts[250:], keys[250:])
    add(b, ts[250:], keys[250:])
    assert closed(a, flush=True) == closed(b, flush=True)


def test_keys_are_evicted_after_ttl_and_ids_reused():
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=60, key_ttl=600))
    add(agg, [0], ["old"])
    for m in range(1, 200):
        add(agg, [m * MIN], ["new"])
        closed(agg)
    assert "old" not in {k[0] for k in agg.keys.keys if k is not None}
    assert agg.active_keys == 1
    assert agg.evicted  # reported so feature state can be dropped


def test_key_index_and_distinct_estimate():
    idx = KeyIndex()
    assert idx.ids([("a", "x"), ("b", "x"), ("a", "x")]).tolist() == [0, 1, 0]
    bits = np.zeros((1, 16), dtype=np.uint64)
    bits[0, :2] = (1 << 64) - 1, (1 << 36) - 1  # 100 of 1024 bits set
    assert estimate_distinct(bits)[0] == pytest.approx(105.2, abs=0.1)


@pytest.mark.parametrize("n_skus", [2, 16, 60, 600])
def test_distinct_skus_of_a_window_are_counted_closely(n_skus):
    # Every SKU sold twice, in two batches: the estimate is of distinct SKUs, merged across batches.
    from streamdetect.events import sku_hash

    hashes = np.array([sku_hash(f"sku-{n_skus}-{i}") for i in range(n_skus)], dtype=np.uint64)
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0))
    for _ in range(2):
        agg.add(np.full(n_skus, 1_000, dtype=np.int64), [("k",)] * n_skus, amount=np.ones(n_skus),
                quantity=np.ones(n_skus), sku_hash=hashes)
    agg.add(np.array([120_000], dtype=np.int64), [("k",)], amount=np.ones(1), quantity=np.ones(1),
            sku_hash=np.zeros(1, dtype=np.uint64))
    (first, *_) = list(agg.pop_closed())
    assert first.count[0] == 2 * n_skus
    # A 64-bit bitmap was off by 3 or more at 16 SKUs in one window of 80; 1024 bits: within a
    # SKU up to a few dozen, and a few percent in the hundreds.
    assert abs(first.distinct_skus[0] - n_skus) <= max(1.0, 0.05 * n_skus)


def test_a_closed_round_estimates_distinct_skus_as_the_reference_formula():
    # The compiled round closing counts bits its own way: it must agree with estimate_distinct.
    from streamdetect.windows import sku_bits

    rng = np.random.default_rng(5)
    agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0))
    n = 3000
    keys = [(f"k{i}",) for i in rng.integers(0, 40, n)]
    hashes = rng.integers(0, 2**63, n, dtype=np.uint64) % np.uint64(rng.integers(1, 5000))
    agg.add(np.full(n, 1_000, dtype=np.int64), keys, amount=np.ones(n), quantity=np.ones(n), sku_hash=hashes)
    agg.add(np.array([120_000], dtype=np.int64), [("k0",)], amount=np.ones(1), quantity=np.ones(1),
            sku_hash=np.zeros(1, dtype=np.uint64))
    (first, *_) = list(agg.pop_closed())
    kid = agg.keys.ids(keys)
    word, bit = sku_bits(hashes)
    bits = np.zeros((len(first.key_id), 16), dtype=np.uint64)
    row = {int(k): r for r, k in enumerate(first.key_id)}
    for k, w, b in zip(kid.tolist(), word.tolist(), bit.tolist(), strict=True):
        bits[row[k], w] |= np.uint64(b)
    np.testing.assert_allclose(first.distinct_skus, estimate_distinct(bits), rtol=1e-14)
    assert first.distinct_skus.max() > 50


@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_rounds_idle_windows_and_evictions_do_not_depend_on_the_batching(chunk):
    # The rounds a batch closes are decided in Python (which starts, the skips, the evictions) and
    # closed in one compiled call; a batch boundary can fall anywhere in that. One event at a
    # time, 7 or 50 at a time must give the same rounds, zero windows and evictions (with a
    # key_ttl as short as the idle timeout, so that they come often) as the whole input at once.
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(0, 6 * 3600_000, 400)).astype(np.int64)
    keys = [f"k{i}" for i in rng.integers(0, 6, 400)]
    keys[200:] = [k if k != "k0" else "k1" for k in keys[200:]]  # k0 goes quiet halfway
    config = WindowConfig(size=60, allowed_lateness=0, idle_timeout=1800, key_ttl=1800)

    def run(step: int) -> tuple[list[tuple[int, list[int], list[float]]], list[tuple[tuple[str, ...], int]]]:
        agg = WindowAggregator(config)
        out = []
        for i in range(0, len(ts), step):
            add(agg, ts[i : i + step], keys[i : i + step])
            out += [(r.start_ms, r.key_id.tolist(), r.count.tolist()) for r in agg.pop_closed()]
        out += [(r.start_ms, r.key_id.tolist(), r.count.tolist()) for r in agg.pop_closed(flush=True)]
        return out, list(agg.evicted_keys)

    whole = run(len(ts))
    assert whole[1], "no key was evicted: the eviction path was not tested"
    assert any(0.0 in counts for _, _, counts in whole[0]), "no zero window: the idle path was not tested"
    assert run(chunk) == whole


def test_closed_rounds_hold_a_closed_round_s_row_arrays_in_its_order():
    # ClosedRounds.round() passes its arrays to ClosedRound by position: the two lists must agree.
    rows = [f.name for f in fields(ClosedRound)][2:]
    assert [f.name for f in fields(ClosedRounds)][3:] == rows
