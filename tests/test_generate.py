"""The synthetic sales generator: determinism, event fields, anomaly placement and visibility."""

from __future__ import annotations

import argparse
import itertools
import re
from collections import Counter, defaultdict
from functools import cache
from typing import Any

import numpy as np
import orjson
import pytest

from streamdetect.generate import (
    ANOMALY_TYPES,
    CHANNELS,
    MALFORMED_KINDS,
    MIN_EXPECTED_EVENTS,
    MIN_GAP_MINUTES,
    EventStream,
    GeneratorConfig,
    Label,
    encode_event,
    generate,
    iter_events,
    parse_time_ms,
    read_jsonl,
    write_jsonl,
)

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
FIELDS = {"event_id", "ts", "store_id", "sku", "channel", "quantity", "unit_price", "amount", "currency"}
# Many anomalies on few stores, long enough for "same minute one week before" comparisons.
RICH = GeneratorConfig(stores=6, days=9, seed=7, anomalies_per_store_week=12)


def ts_of(e: Any) -> int:
    return parse_time_ms(e["ts"])


def valid(e: Any) -> bool:
    """A small stand-in for the decoder's checks (EventSchema defaults)."""
    if not isinstance(e, dict):
        return False
    try:
        ms = parse_time_ms(e["ts"])
    except (KeyError, ValueError, TypeError):
        return False
    num = (int, float)
    q, p = e.get("quantity"), e.get("unit_price")
    if not (946_684_800_000 <= ms < 4_102_444_800_000 and isinstance(e.get("store_id"), str)):
        return False
    if isinstance(q, bool) or not isinstance(q, num) or isinstance(p, bool) or not isinstance(p, num):
        return False
    amount = e.get("amount", q * p)
    return 0 < q <= 1e6 and p >= 0 and isinstance(amount, num) and 0 <= amount <= 1e9


@cache
def rich() -> tuple[list[dict[str, Any]], list[Label], EventStream]:
    stream = EventStream(RICH)
    events = list(stream)
    return events, stream.labels, stream  # type: ignore[return-value]


@cache
def per_store() -> dict[str, tuple[np.ndarray, list[dict[str, Any]]]]:
    """Each store's events sorted by event time, with their times."""
    events, _, _ = rich()
    out: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    for i, e in enumerate(events):
        out[e["store_id"]].append((parse_time_ms(e["ts"]), i, e))
    result = {}
    for k, rows in out.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        result[k] = (np.array([r[0] for r in rows], dtype=np.int64), [r[2] for r in rows])
    return result


def count(store: str, start: int, end: int) -> int:
    ts = per_store()[store][0]
    return int(np.searchsorted(ts, end) - np.searchsorted(ts, start))


def events_in(label: Label) -> list[dict[str, Any]]:
    ts, evs = per_store()[label.key["store_id"]]
    return evs[np.searchsorted(ts, label.start_ms) : np.searchsorted(ts, label.end_ms)]


# -- determinism ----------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_lazy_equals_eager(tmp_path):
    cfg = GeneratorConfig(stores=3, days=3, seed=4, malformed_fraction=0.02, late_fraction=0.01)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, EventStream(cfg))
    events, labels = generate(cfg)
    write_jsonl(b, events)
    assert a.read_bytes() == b.read_bytes()
    assert [x.to_json() for x in labels] == [x.to_json() for x in iter_events(cfg).labels]
    other, _ = generate(GeneratorConfig(stores=3, days=3, seed=5))
    assert [encode_event(e) for e in other[:100]] != [encode_event(e) for e in events[:100]]


def test_iteration_is_lazy_day_by_day():
    stream = iter_events(GeneratorConfig(stores=2, days=200, seed=1))
    it = iter(stream)
    first = [next(it) for _ in range(10)]  # would take minutes if all 200 days were built first
    assert all(ts_of(e) < GeneratorConfig().start_ms + DAY_MS for e in first)


# -- fields -----------------------------------------------------------------------------------------
def test_event_fields_and_types():
    events, _, _ = rich()
    assert len(events) > 50_000
    assert all(isinstance(e, dict) and valid(e) for e in events)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    absent = 0
    formats: Counter[str] = Counter()
    for e in events:
        assert set(e) <= FIELDS and FIELDS - set(e) <= {"amount"}
        assert re.fullmatch(r"store-\d{3}", e["store_id"]) and e["channel"] in CHANNELS
        assert isinstance(e["quantity"], int) and 1 <= e["quantity"] <= 5
        assert isinstance(e["unit_price"], float) and e["unit_price"] > 0 and e["currency"] == "EUR"
        assert isinstance(e["sku"], str)
        if "amount" in e:
            assert e["amount"] == round(e["quantity"] * e["unit_price"], 2)
        else:
            absent += 1
        ts = e["ts"]
        formats["int" if isinstance(ts, int) else ts[-6:] if ts[-6] in "+-" else ts[-1]] += 1
    assert 0.05 < absent / len(events) < 0.15
    assert set(formats) == {"Z", "+01:00", "-05:00", "int"}
    assert min(formats.values()) > 0.03 * len(events)


def test_stores_differ_in_size_hours_and_channels():
    events, _, stream = rich()
    sizes = Counter(e["store_id"] for e in events)
    assert max(sizes.values()) > 8 * min(sizes.values())
    online = [s.store_id for s in stream.stores if s.online]
    assert len(online) == 1
    hours: dict[str, set[int]] = defaultdict(set)
    channels: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        hours[e["store_id"]].add(parse_time_ms(e["ts"]) // 3_600_000 % 24)
        channels[e["store_id"]][e["channel"]] += 1
    assert len(hours[online[0]]) == 24 and channels[online[0]]["store"] == 0
    physical = [s for s in sizes if s not in online]
    assert all(len(hours[s]) <= 15 for s in physical)
    assert all(channels[s].most_common(1)[0][0] == "store" for s in physical)


# -- labels and placement -----------------------------------------------------------------------------
def test_label_json_shape():
    _, labels, _ = rich()
    d = orjson.loads(labels[0].to_json())
    assert set(d) == {"anomaly_id", "type", "key", "start", "end", "magnitude"}
    assert d["key"] == {"store_id": labels[0].key["store_id"]} and Label.from_dict(d) == labels[0]
    assert len({lab.anomaly_id for lab in labels}) == len(labels)


def test_anomaly_placement_constraints():
    _, labels, stream = rich()
    assert {lab.type for lab in labels} == set(ANOMALY_TYPES)
    start = RICH.start_ms
    by_store: dict[str, list[Label]] = defaultdict(list)
    stores = {s.store_id: s for s in stream.stores}
    for lab in labels:
        assert lab.start_ms >= start + RICH.clean_days * DAY_MS
        assert lab.start_ms % 60_000 == 0 and lab.end_ms % 60_000 == 0
        assert 10 * 60_000 <= lab.end_ms - lab.start_ms <= 300 * 60_000
        day, m0 = divmod((lab.start_ms - start) // 60_000, 1440)
        m1 = m0 + (lab.end_ms - lab.start_ms) // 60_000
        assert m1 <= 1440, "an anomaly stays inside its day"
        rate, _ = stream._plan(stores[lab.key["store_id"]], int(day))
        assert rate[m0:m1].sum() >= MIN_EXPECTED_EVENTS and (rate[m0:m1] > 0).all()  # open and busy enough
        by_store[lab.key["store_id"]].append(lab)
    for labs in by_store.values():
        labs.sort(key=lambda x: x.start_ms)
        for a, b in itertools.pairwise(labs):
            assert b.start_ms >= a.end_ms + MIN_GAP_MINUTES * 60_000


def test_no_anomalies_when_disabled_or_in_clean_days():
    _, labels = generate(GeneratorConfig(stores=3, days=3, clean_days=3, anomalies_per_store_week=20))
    assert labels == []
    _, labels = generate(GeneratorConfig(stores=3, days=3, anomalies_per_store_week=0))
    assert labels == []


# -- anomalies are visible in aggregates -----------------------------------------------------------------
def test_outage_minutes_have_no_events():
    _, labels, _ = rich()
    outages = [lab for lab in labels if lab.type == "outage"]
    assert outages
    for lab in outages:
        assert count(lab.key["store_id"], lab.start_ms, lab.end_ms) == 0
        assert count(lab.key["store_id"], lab.start_ms - 3_600_000, lab.start_ms) > 0


def test_rate_anomalies_match_their_magnitude_and_the_week_before():
    _, labels, stream = rich()
    stores = {s.store_id: s for s in stream.stores}
    checked_week = 0
    for lab in labels:
        if lab.type not in ("spike", "drop", "level_shift", "tiny_tickets"):
            continue
        sid = lab.key["store_id"]
        day, m0 = divmod((lab.start_ms - RICH.start_ms) // 60_000, 1440)
        m1 = m0 + (lab.end_ms - lab.start_ms) // 60_000
        rate, _ = stream._plan(stores[sid], int(day))
        expected = rate[m0:m1].sum()
        observed, mean = count(sid, lab.start_ms, lab.end_ms), expected * lab.magnitude
        assert abs(observed - mean) <= 4 * mean**0.5 + 3, (lab, observed, mean)  # Poisson around rate x magnitude
        if lab.start_ms - WEEK_MS >= RICH.start_ms and lab.type in ("spike", "tiny_tickets"):
            before = count(sid, lab.start_ms - WEEK_MS, lab.end_ms - WEEK_MS)
            assert count(sid, lab.start_ms, lab.end_ms) > 2 * max(before, 1)
            checked_week += 1
    assert checked_week >= 1


def test_price_glitch_and_tiny_tickets_change_prices():
    _, labels, _ = rich()
    for lab in labels:
        inside = events_in(lab)
        if lab.type == "price_glitch":
            typical = np.median([e["unit_price"] for e in per_store()[lab.key["store_id"]][1][:2000]])
            odd = [e for e in inside if not 0.05 * typical < e["unit_price"] < 20 * typical]
            assert len(odd) >= 0.2 * len(inside), lab
        elif lab.type == "tiny_tickets":
            tiny = [e for e in inside if e["quantity"] * e["unit_price"] < 1.0]
            assert len(tiny) >= 0.5 * len(inside), lab


# -- malformed, late, arrival order ----------------------------------------------------------------------
def test_malformed_fraction_and_kinds():
    cfg = GeneratorConfig(stores=3, days=2, seed=2, malformed_fraction=0.05)
    stream = EventStream(cfg)
    events = list(stream)
    bad = [e for e in events if not valid(e)]
    n_valid = len(events) - len(bad)
    assert len(bad) == stream.counts["malformed"]
    assert len(bad) / n_valid == pytest.approx(0.05, rel=0.15)
    assert all(stream.counts[k] > 0 for k in MALFORMED_KINDS)
    raw = [e for e in bad if isinstance(e, bytes)]
    assert len(raw) == stream.counts["not_json"]
    for r in raw:
        assert b"\n" not in r
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(r)


def test_arrival_order_has_bounded_disorder():
    cfg = GeneratorConfig(stores=4, days=2, seed=3, out_of_order_seconds=20)
    ts = np.array([ts_of(e) for e in generate(cfg)[0]])
    lag = np.maximum.accumulate(ts) - ts
    assert lag.max() <= 20_000
    assert (lag > 0).mean() > 0.05  # it is really out of order


def test_late_fraction_arrives_after_the_allowed_lateness():
    cfg = GeneratorConfig(stores=4, days=2, seed=3, late_fraction=0.02, allowed_lateness=120)
    stream = EventStream(cfg)
    ts = np.array([ts_of(e) for e in stream])
    # late: its window [floor(t), +60 s) closed, i.e. max event time seen - lateness >= window end
    window_end = (ts // 60_000 + 1) * 60_000
    late = (np.maximum.accumulate(ts) - 120_000) >= window_end
    assert late.sum() == pytest.approx(stream.counts["late"], rel=0.05)
    assert late.mean() == pytest.approx(0.02, rel=0.2)


# -- files and CLI ----------------------------------------------------------------------------------------
def test_jsonl_round_trip_gzip(tmp_path):
    events, labels = generate(GeneratorConfig(stores=1, days=1, seed=0))
    path = tmp_path / "e.jsonl.gz"
    assert write_jsonl(path, events) == len(events)
    assert read_jsonl(path) == events
    write_jsonl(tmp_path / "l.jsonl", labels)
    assert [Label.from_dict(d) for d in read_jsonl(tmp_path / "l.jsonl")] == labels


def test_cli_generate(tmp_path, capsys):
    from streamdetect.cli import generate as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out, lab = tmp_path / "ev.jsonl", tmp_path / "lab.jsonl"
    args = parser.parse_args(
        ["generate", "--stores", "2", "--days", "4", "--seed", "3", "--out", str(out), "--labels", str(lab),
         "--malformed-fraction", "0.01"]
    )  # fmt: skip
    assert args.handler(args) == 0
    lines = out.read_bytes().splitlines()
    events, labels = generate(GeneratorConfig(stores=2, days=4, seed=3, malformed_fraction=0.01))
    assert lines == [encode_event(e) for e in events]
    assert [Label.from_dict(d) for d in read_jsonl(lab)] == labels
    assert "events" in capsys.readouterr().err

    from streamdetect.config import ConfigError

    bad = parser.parse_args(["generate", "--stores", "0", "--out", str(out)])
    with pytest.raises(ConfigError):
        bad.handler(bad)


def test_returns_follow_sales_and_reach_the_detector_as_returns():
    cfg = GeneratorConfig(stores=3, days=2, seed=1, return_fraction=0.02)
    events, _ = generate(cfg)
    plain, _ = generate(GeneratorConfig(stores=3, days=2, seed=1))
    returns = [e for e in events if isinstance(e, dict) and e["quantity"] < 0]
    sales: dict[tuple, list[int]] = defaultdict(list)
    for e in plain:
        sales[(e["store_id"], e["sku"], e["unit_price"])].append(parse_time_ms(e["ts"]))
    assert 0.01 < len(returns) / len(plain) < 0.03
    assert len(events) == len(plain) + len(returns)  # the sales themselves are unchanged
    for r in returns:  # a return follows a sale of the same store, SKU and price
        key = (r["store_id"], r["sku"], r["unit_price"])
        assert any(5 * 60_000 <= r["ts"] - t < 180 * 60_000 for t in sales[key]), r

    from streamdetect.detector import Detector

    out = Detector().process([encode_event(e) for e in events])
    assert out.rejected == [] and out.n_returns == len(returns)
