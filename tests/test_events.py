"""Event decoding and validation: every reject reason, isolation of bad events, timestamps."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import unittest.mock
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import msgspec
import numba
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamdetect.events as events_module
from streamdetect.config import ConfigError, EventSchema
from streamdetect.events import (
    NO_ID,
    EventBatch,
    Rejected,
    RejectReason,
    _validate,
    decode_events,
    decode_records,
    parse_timestamp,
    sku_hash,
)
from streamdetect.generate import GeneratorConfig, encode_event, generate

SCHEMA = EventSchema()
T0 = 1_709_294_400_000  # 2024-03-01T12:00:00Z
R = RejectReason


def ev(**fields: object) -> bytes:
    base: dict[str, object] = {
        "ts": "2024-03-01T12:00:00.000Z",
        "store_id": "s1",
        "sku": "A",
        "quantity": 2,
        "unit_price": 5.0,
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def one(value: bytes | None, schema: EventSchema = SCHEMA) -> tuple[EventBatch, list[Rejected]]:
    return decode_events([value], schema)  # type: ignore[list-item]


def reason_of(value: bytes | None, schema: EventSchema = SCHEMA) -> tuple[RejectReason, str]:
    batch, rejected = one(value, schema)
    assert len(batch) == 0 and len(rejected) == 1, (batch, rejected)
    return rejected[0].reason, rejected[0].detail


def good(n: int, start: int = 0) -> list[bytes]:
    return [ev(ts=f"2024-03-01T12:00:{(start + i) % 60:02d}.{i % 1000:03d}Z", sku=f"S{i}") for i in range(n)]


# --------------------------------------------------------------------------- valid events


def test_valid_event_columns() -> None:
    batch, rejected = one(ev())
    assert rejected == []
    assert batch.index.tolist() == [0]
    assert batch.ts_ms.tolist() == [T0]
    assert batch.amount.tolist() == [10.0]
    assert batch.quantity.tolist() == [2.0]
    assert batch.keys == [("s1",)]
    assert batch.sku_hash.dtype == np.uint64 and batch.sku_hash.tolist() == [sku_hash("A")]
    assert batch.index.dtype == np.int64 and batch.ts_ms.dtype == np.int64
    assert batch.amount.dtype == np.float64 and batch.quantity.dtype == np.float64


def test_amount_wins_and_quantity_defaults_to_one() -> None:
    batch, _ = one(ev(amount=7.5, quantity=..., unit_price=...))
    assert batch.amount.tolist() == [7.5] and batch.quantity.tolist() == [1.0]
    batch, _ = one(ev(amount=7.5, quantity=3, unit_price="ignored"))
    assert batch.amount.tolist() == [7.5] and batch.quantity.tolist() == [3.0]
    batch, _ = one(ev(amount=None))  # null amount is absent: quantity * unit_price
    assert batch.amount.tolist() == [10.0]


def test_int_keys_become_strings_and_multi_keys_keep_order() -> None:
    schema = EventSchema(key_fields=("store_id", "channel"))
    batch, rejected = decode_events([ev(store_id=42, channel="web"), ev(store_id="7", channel=3)], schema)
    assert rejected == [] and batch.keys == [("42", "web"), ("7", "3")]


def test_sku_hash_is_stable_blake2b_and_absent_is_zero() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"SKU-1", digest_size=8).digest(), "little")
    assert sku_hash("SKU-1") == expected
    batch, _ = decode_events([ev(sku="SKU-1"), ev(sku=...), ev(sku=None), ev(sku=""), ev(sku=12)], SCHEMA)
    assert batch.sku_hash.tolist() == [expected, 0, 0, 0, sku_hash("12")]


def test_value_field_series_mode() -> None:
    schema = EventSchema(time_field="timestamp", value_field="value", key_fields=("series",))
    values = [
        orjson.dumps({"timestamp": "2024-03-01T12:00:00Z", "series": "x", "value": 12.5, "sku": [1]}),
        orjson.dumps({"timestamp": T0, "series": "x", "value": "12.5"}),
        orjson.dumps({"timestamp": T0, "series": "x"}),
        orjson.dumps({"timestamp": T0, "series": "x", "value": -1}),
    ]
    batch, rejected = decode_events(values, schema)
    assert batch.amount.tolist() == [12.5] and batch.quantity.tolist() == [1.0] and batch.sku_hash.tolist() == [0]
    assert [(r.index, r.reason) for r in rejected] == [(1, R.BAD_TYPE), (2, R.MISSING_FIELD), (3, R.OUT_OF_RANGE)]
    batch, rejected = decode_events(
        values[3:],
        EventSchema(time_field="timestamp", value_field="value", key_fields=("series",), allow_negative=True),
    )
    assert rejected == [] and batch.amount.tolist() == [-1.0]
    # A series' values have their own bound: a metric in bytes passes a sales amount's limit easily.
    big = [orjson.dumps({"timestamp": T0, "series": "x", "value": v}) for v in (5e9, 2e15)]
    batch, rejected = decode_events(big, schema)
    assert batch.amount.tolist() == [5e9] and [(r.index, r.reason) for r in rejected] == [(1, R.OUT_OF_RANGE)]


@pytest.mark.parametrize(
    ("time_format", "good", "bad"),
    [
        ("epoch_s", [1709294400, 1709294400.5, "1709294400"], ["2024-03-01T12:00:00Z", True, 1709294400123]),
        ("epoch_ms", [1709294400000, "1709294400000"], ["soon", 1709294400]),
        ("%d/%m/%Y %H:%M", ["01/03/2024 12:00", "1/3/2024 12:00"], ["2024-03-01T12:00:00Z", "31/02/2024 12:00", 5]),
        ("%Y-%m-%d %H:%M:%S%z", ["2024-03-01 13:00:00+0100"], ["2024-03-01 12:00:00"]),
    ],
)
def test_time_format(time_format: str, good: list, bad: list) -> None:
    """Other ways of writing the time (what exported sales and metric files use), fast path and
    reference rules alike: every good one is 2024-03-01T12:00:00Z, every bad one a bad_timestamp."""
    schema = EventSchema(time_format=time_format)
    events = [{"ts": t, "store_id": "s1", "amount": 1.0} for t in good + bad]
    # The same events through the fast path and, with an integer key, through _validate.
    for extra in ({}, {"store_id": 7}):
        batch, rejected = decode_records([{**e, **extra} for e in events], schema)
        assert (batch.ts_ms // 1000 * 1000).tolist() == [1709294400000] * len(good)
        assert [(r.index, r.reason) for r in rejected] == [(len(good) + i, R.BAD_TIMESTAMP) for i in range(len(bad))]
        assert all("events.time_format" in r.detail or "time range" in r.detail for r in rejected), rejected


def test_a_time_format_that_is_not_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="time_format"):
        EventSchema(time_format="dd/mm/yyyy")


def test_count_series_rows_are_that_many_sales() -> None:
    schema = EventSchema(time_field="t", count_field="orders", value_field="revenue", key_fields=("store",))
    rows = [
        {"t": T0, "store": "a", "orders": 3, "revenue": 30.0},
        {"t": T0, "store": "a", "orders": 0.0, "revenue": 0},  # a quiet interval: zero sales, not missing
        {"t": T0, "store": "a", "orders": 2.5, "revenue": 5},
        {"t": T0, "store": "a", "orders": -1, "revenue": 5},
        {"t": T0, "store": "a", "revenue": 5},
        {"t": T0, "store": "a", "orders": 1},
    ]
    batch, rejected = decode_records(rows, schema)
    assert batch.count is not None and batch.count.tolist() == [3.0, 0.0]
    assert batch.amount.tolist() == [30.0, 0.0]
    assert [(r.index, r.reason) for r in rejected] == [
        (2, R.OUT_OF_RANGE), (3, R.OUT_OF_RANGE), (4, R.MISSING_FIELD), (5, R.MISSING_FIELD)
    ]
    batch, _ = decode_records([{"t": T0, "store": "a", "orders": 4}], EventSchema(time_field="t", count_field="orders",
                                                                                   key_fields=("store",)))
    assert batch.count.tolist() == [4.0] and batch.amount.tolist() == [0.0]
    sales = EventSchema(time_field="t", key_fields=("store",), amount_field="revenue")
    assert decode_records(rows[:1], sales)[0].count is None
    with pytest.raises(ConfigError, match="same field"):
        EventSchema(count_field="v", value_field="v")


def test_unicode_keys_and_skus() -> None:
    batch, rejected = one(ev(store_id="magasin-é-東京-🛒", sku="ß✓"))
    assert rejected == [] and batch.keys == [("magasin-é-東京-🛒",)] and batch.sku_hash[0] == sku_hash("ß✓")


def test_empty_input_and_empty_batch() -> None:
    batch, rejected = decode_events([], SCHEMA)
    assert len(batch) == 0 and rejected == []
    empty = EventBatch.empty()
    assert len(empty) == 0 and empty.sku_hash.dtype == np.uint64
    batch, rejected = decode_records([], SCHEMA)
    assert len(batch) == 0 and rejected == []


# --------------------------------------------------------------------------- reject reasons


def test_too_large_is_checked_before_parsing() -> None:
    schema = EventSchema(max_event_bytes=50)
    reason, detail = reason_of(b"{" + b" " * 60 + b"not json at all", schema)
    assert reason == R.TOO_LARGE and "60" not in detail and "max_event_bytes" in detail


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"   ",
        b"not json",
        b'{"ts": ',
        b'{"a": "\xff\xfe"}',
        b"\xef\xbb\xbf{}",
        b'{"quantity": 1e400}',
        b"[" * 2000 + b"]" * 2000,
        b'{"a": NaN}',
        b"{'single': 'quotes'}",
    ],
)
def test_decode(value: bytes | None) -> None:
    reason, detail = reason_of(value)
    assert reason == R.DECODE and detail


def test_fields_not_read_are_checked_as_json_but_not_built() -> None:
    """A field the rules do not read must be well-formed JSON in UTF-8, but its value is not
    built: a number beyond a double there is no reason to refuse the sale (in a field read it is)."""
    sale = b'{"ts": "2024-03-01T12:00:00Z", "store_id": "s1", "amount": 5'
    values = [
        sale + b', "discount": 1e400}',
        sale + b', "note": "\xff"}',  # not UTF-8
        sale + b', "tags": [1, 2}',  # not JSON
        sale + b"}",
        sale + b'0, "amount": 1e400}',
    ]
    for copies, kind in ((1, bytes), (10, bytes), (10, bytearray), (10, memoryview)):  # alone; among others
        batch, rejected = decode_events([kind(v) for v in values] * copies, SCHEMA)  # type: ignore[misc]
        assert batch.index.tolist() == [i + 5 * c for c in range(copies) for i in (0, 3)]
        assert batch.amount.tolist() == [5.0] * 2 * copies
        bad = [(i + 5 * c, R.DECODE) for c in range(copies) for i in (1, 2, 4)]
        assert [(r.index, r.reason) for r in rejected] == bad


def test_event_ids_are_read_as_hashes_for_deduplication() -> None:
    """An id that is a string or a number is kept (as its hash: only equality matters); absent,
    null, empty or an array is none. A batch without ids carries none, and off (the default), ids
    are not read."""
    ids: list[object] = ["e-1", "e-1", 7, ..., None, "", [1], "e-2"]
    values = [ev(event_id=i, sku=f"S{j}") for j, i in enumerate(ids)]
    dedup = replace(SCHEMA, deduplicate=True)
    for batch, _ in (decode_events(values, dedup), decode_records([orjson.loads(v) for v in values], dedup)):
        h = batch.id_hash
        assert h is not None and len(h) == len(ids)
        assert h[0] == h[1] != h[2] and len({h[0], h[2], h[7]}) == 3
        assert h[3:7].tolist() == [NO_ID] * 4 and NO_ID not in (h[0], h[2], h[7])
    assert decode_events(good(5), dedup)[0].id_hash is None
    assert decode_events(values, SCHEMA)[0].id_hash is None
    batch, rejected = decode_events([ev(event_id="x"), b"{oops", b"[1]", ev(event_id="y")] * 20, dedup)
    assert len(batch) == 40 and len(rejected) == 40 and batch.id_hash is not None
    assert len(set(batch.id_hash.tolist())) == 2


def _framed(value: bytes, schema_id: int = 42) -> bytes:
    """A value as Confluent's Schema Registry serializers frame it: magic byte 0, schema id, payload."""
    return b"\x00" + schema_id.to_bytes(4, "big") + value


@pytest.mark.parametrize("layout", ["all framed", "framed after plain", "one framed"])
def test_schema_registry_framed_json_is_read_as_its_payload(layout: str) -> None:
    """A topic written by the JSON Schema serializer (a 5-byte frame before each JSON object) decodes
    to the same batch as the bare JSON, whether the batch starts framed (one pass) or a framed
    value sits among plain ones (found when the joined parse fails); an Avro payload in the same
    frame is a decode reject that says what it is."""
    plain = good(60)
    framed = {
        "all framed": [_framed(v) for v in plain],
        "framed after plain": plain[:30] + [_framed(v) for v in plain[30:]],
        "one framed": [*plain[:59], _framed(plain[59])],
    }[layout]
    avro = _framed(b"\x02\x0estore-7\xa0\x1f", schema_id=7)
    expected, _ = decode_events(plain, SCHEMA)
    batch, rejected = decode_events([*framed, avro], SCHEMA)
    assert batch.index.tolist() == expected.index.tolist() and batch.keys == expected.keys
    assert batch.ts_ms.tolist() == expected.ts_ms.tolist() and batch.amount.tolist() == expected.amount.tolist()
    assert [(r.index, r.reason) for r in rejected] == [(60, R.DECODE)]
    assert "Confluent wire format (schema id 7)" in rejected[0].detail and "Avro" in rejected[0].detail


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b"[1, 2]", "event"),
        (b'"a string"', "event"),
        (b"42", "event"),
        (b"null", "event"),
        (ev(quantity="abc"), "quantity"),
        (ev(quantity="2"), "quantity"),
        (ev(quantity=True), "quantity"),
        (ev(unit_price=[5]), "unit_price"),
        (ev(amount="10"), "amount"),
        (ev(store_id={"id": 1}), "store_id"),
        (ev(store_id=[1]), "store_id"),
        (ev(store_id=None), "store_id"),
        (ev(store_id=True), "store_id"),
        (ev(store_id=1.5), "store_id"),
        (ev(sku=["A"]), "sku"),
        (ev(sku=1.5), "sku"),
        (ev(ts=None), "ts"),
        (ev(ts=True), "ts"),
        (ev(ts={"t": 1}), "ts"),
    ],
)
def test_bad_type(value: bytes, field: str) -> None:
    reason, detail = reason_of(value)
    assert reason == R.BAD_TYPE
    assert detail.startswith(f"{field}:")


def test_bad_type_detail_text() -> None:
    assert reason_of(ev(quantity="abc")) == (R.BAD_TYPE, "quantity: expected a number, got 'abc'")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (ev(ts=...), "ts"),
        (ev(store_id=...), "store_id"),
        (ev(quantity=...), "quantity"),
        (ev(unit_price=...), "unit_price"),
        (ev(quantity=None), "quantity"),
        (b"{}", "ts"),
    ],
)
def test_missing_field(value: bytes, field: str) -> None:
    assert reason_of(value) == (R.MISSING_FIELD, f"{field}: missing")


def test_an_empty_key_is_missing_in_a_batch_as_alone() -> None:
    """An empty key value would pool every event without one under a key ``""``."""
    assert reason_of(ev(store_id="")) == (R.MISSING_FIELD, "store_id: empty")
    two = replace(SCHEMA, key_fields=("store_id", "sku"))
    values = [ev(store_id="s1"), ev(store_id=""), ev(sku=""), ev(store_id="s2")] * 10
    for schema, bad in ((SCHEMA, [1]), (two, [1, 2])):
        batch, rejected = decode_events(values, schema)
        assert [(r.index % 4, r.reason) for r in rejected] == [(i, R.MISSING_FIELD) for _ in range(10) for i in bad]
        assert "" not in {k for key in batch.keys for k in key}


@pytest.mark.parametrize(
    "ts",
    [
        "yesterday",
        "",
        "2024-03-01",  # a date is not a time
        "20240301T120000Z",  # basic format is not RFC 3339
        "2024-13-01T12:00:00.000Z",  # canonical shape, impossible month
        "2023-02-29T12:00:00.000Z",  # not a leap year
        "2024-03-01T25:00:00.000Z",
        "2024-03-01T12:00:00.12xZ",
        "2024-03-01T12:00:00.١٢٣Z",  # non-ASCII digits
        "2024-03-01T12:00:00+25:00",
        "2024-03-01T12:00:00Zjunk",
        "1999-12-31T23:59:59.999Z",  # before min_time_ms
        "2100-01-01T00:00:00.000Z",  # max_time_ms is exclusive
        1_709_294_400,  # epoch seconds
        -5,
        4_102_444_800_000,
    ],
)
def test_bad_timestamp(ts: object) -> None:
    reason, detail = reason_of(ev(ts=ts))
    assert reason == R.BAD_TIMESTAMP and detail.startswith("ts:")


def test_epoch_seconds_get_a_hint() -> None:
    assert "epoch seconds" in reason_of(ev(ts=1_709_294_400))[1]
    assert "epoch microseconds" in reason_of(ev(ts=1_709_294_400_000_000))[1]
    assert "epoch" not in reason_of(ev(ts=-5))[1]


@pytest.mark.parametrize(
    "fields",
    [
        {"unit_price": -0.01},
        {"quantity": -1, "unit_price": -0.01},
        {"amount": 2e9},
        {"amount": -2e9},  # a return's magnitude is checked as a sale's
        {"quantity": -2e6, "amount": -1},
        {"quantity": 2e6, "amount": 1},
        {"quantity": 1e6, "unit_price": 1e4},  # product above max_amount
        {"unit_price": 1e308, "quantity": 10},  # product overflows to inf
        {"quantity": 18446744073709551615},
    ],
)
def test_out_of_range(fields: dict[str, object]) -> None:
    reason, detail = reason_of(ev(**fields))
    assert reason == R.OUT_OF_RANGE and detail


def test_returns_are_valid_and_marked_with_their_magnitudes() -> None:
    """A cancelled line (negative quantity) or a refund (negative amount) is not a broken event:
    the batch keeps it, as magnitudes, marked as a return; sales around it are unmarked."""
    batch, rejected = decode_events(
        [ev(quantity=2), ev(quantity=-2), ev(amount=-7.5), ev(amount=-7.5, quantity=3), ev(amount=4.0, quantity=-1)],
        SCHEMA,
    )
    assert rejected == []
    assert batch.amount.tolist() == [10.0, 10.0, 7.5, 7.5, 4.0]
    assert batch.quantity.tolist() == [2.0, 2.0, 2.0, 3.0, 1.0]
    assert batch.is_return is not None and batch.is_return.tolist() == [False, True, True, True, True]
    sales_only, _ = decode_events([ev(quantity=2), ev(amount=3.0)], SCHEMA)
    assert sales_only.is_return is None  # nothing to mark: the common case costs nothing


def test_returns_off_rejects_negative_sales() -> None:
    schema = EventSchema(returns=False)
    for fields in ({"quantity": -1}, {"amount": -3}):
        reason, detail = reason_of(ev(**fields), schema)
        assert reason == R.OUT_OF_RANGE and "is negative (events.returns is off)" in detail


def test_a_series_has_no_returns() -> None:
    """In a value or count series a negative value is out of range (or, with allow_negative, a
    value): returns are sales' business."""
    records = [{"ts": T0, "store_id": "s", "amount": -3.0}, {"ts": T0, "store_id": "s", "amount": 2.0}]
    batch, rejected = decode_records(records, EventSchema(value_field="amount"))
    assert [(r.index, r.reason) for r in rejected] == [(0, R.OUT_OF_RANGE)] and batch.is_return is None
    batch, rejected = decode_records(records, EventSchema(value_field="amount", allow_negative=True))
    assert rejected == [] and batch.amount.tolist() == [-3.0, 2.0] and batch.is_return is None


def test_allow_negative_checks_magnitude() -> None:
    schema = EventSchema(allow_negative=True)
    batch, rejected = decode_events([ev(quantity=-1), ev(amount=-5.0), ev(amount=-2e9)], schema)
    assert batch.amount.tolist() == [-5.0, -5.0]
    assert [(r.index, r.reason) for r in rejected] == [(2, R.OUT_OF_RANGE)]


def test_nan_and_inf_in_records() -> None:
    base = {"ts": T0, "store_id": "s", "quantity": 1, "unit_price": 1.0}
    records = [
        {**base, "amount": math.nan},
        {**base, "unit_price": math.inf},
        {**base, "ts": math.nan},
        {**base, "quantity": 10**400},
        base,
    ]
    batch, rejected = decode_records(records, SCHEMA)
    assert batch.index.tolist() == [4]
    assert [(r.index, r.reason) for r in rejected] == [
        (0, R.OUT_OF_RANGE),
        (1, R.OUT_OF_RANGE),
        (2, R.BAD_TIMESTAMP),
        (3, R.OUT_OF_RANGE),
    ]


def test_records_accept_numpy_scalars_and_reject_non_mappings() -> None:
    rec = {"ts": np.int64(T0), "store_id": np.int32(5), "quantity": np.float32(2), "unit_price": np.float64(1.5)}
    batch, rejected = decode_records([rec, ["not", "a", "mapping"]], SCHEMA)  # type: ignore[list-item]
    assert batch.keys == [("5",)] and batch.amount.tolist() == [3.0] and batch.ts_ms.tolist() == [T0]
    assert rejected[0].index == 1 and rejected[0].reason == R.BAD_TYPE


def test_late_is_never_produced_here() -> None:
    values = [ev(ts="2024-03-01T12:00:00.000Z"), ev(ts="2020-01-01T00:00:00.000Z")]
    batch, rejected = decode_events(values, SCHEMA)
    assert len(batch) == 2 and rejected == []


# --------------------------------------------------------------------------- batches


def test_bad_events_between_good_ones_do_not_affect_them() -> None:
    goods = good(40)
    bads: list[bytes | None] = [None, b"{", ev(quantity="x"), ev(ts="nope"), b"[]", ev(store_id=...)]
    mixed: list[bytes | None] = []
    where = []
    for i, g in enumerate(goods):
        mixed.append(g)
        if i % 7 == 3:
            where.append(len(mixed))
            mixed.append(bads[len(where) % len(bads)])
    batch, rejected = decode_events(mixed, SCHEMA)  # type: ignore[arg-type]
    alone, _ = decode_events(goods, SCHEMA)
    assert [r.index for r in rejected] == where
    assert [i for i in range(len(mixed)) if i not in where] == batch.index.tolist()
    for col in ("ts_ms", "amount", "quantity", "sku_hash"):
        np.testing.assert_array_equal(getattr(batch, col), getattr(alone, col))
    assert batch.keys == alone.keys


def test_big_batch_with_bad_event_at_the_end_and_start() -> None:
    values = [b"oops", *good(3000), ev(ts=None)]
    batch, rejected = decode_events(values, SCHEMA)
    assert len(batch) == 3000 and [r.index for r in rejected] == [0, 3001]
    assert batch.index.tolist() == list(range(1, 3001))


def test_many_bad_values_in_a_big_batch_read_as_one_by_one() -> None:
    """Bad values scattered and clustered through a long batch (bad UTF-8 among them): the result
    is what each value decoded alone gives."""
    rng = np.random.default_rng(3)
    raw = ev()
    bads: list[bytes | None] = [
        raw[: len(raw) // 2], b"\xff\xfe" + raw[2:], raw.replace(b'":', b"'=", 2), b"sale qty=1",
        b"1,2", b'"x', ev(quantity="x"), ev(amount=True), None, b"[]", "caf\u00e9".encode("latin-1"),
    ]
    values: list[bytes | None] = list(good(5000))
    for at in sorted(rng.choice(len(values), 120, replace=False).tolist(), reverse=True):
        values[at:at] = [bads[int(rng.integers(len(bads)))] for _ in range(int(rng.integers(1, 4)))]
    batch, rejected = decode_events(values, SCHEMA)  # type: ignore[arg-type]
    one = [decode_events([v], SCHEMA) for v in values]  # type: ignore[list-item]
    expected_rejects = [(i, r[0].reason, r[0].detail) for i, (_, r) in enumerate(one) if r]
    assert [(r.index, r.reason, r.detail) for r in rejected] == expected_rejects
    assert batch.index.tolist() == [i for i, (b, _) in enumerate(one) if len(b)]
    assert batch.ts_ms.tolist() == [int(b.ts_ms[0]) for b, _ in one if len(b)]
    assert batch.amount.tolist() == [float(b.amount[0]) for b, _ in one if len(b)]
    assert batch.keys == [b.keys[0] for b, _ in one if len(b)]


@pytest.mark.parametrize(
    "smuggled",
    [
        [b"1,2"],
        [b'{"a":1},{"b":2}'],
        [b'{"a":"}', b'{","b":1}', b"{},{}"],  # a split string, and an extra element to keep the count
        [b'"x', b'y"', ev() + b"," + ev()],
        [ev()[:-1], b"}"],
        [b"]", b"["],
    ],
)
def test_smuggling_elements_across_values(smuggled: list[bytes]) -> None:
    values = [*good(20), *smuggled, *good(20, start=30)]
    batch, rejected = decode_events(values, SCHEMA)
    bad_idx = list(range(20, 20 + len(smuggled)))
    assert [r.index for r in rejected] == bad_idx
    assert all(r.reason in (R.DECODE, R.BAD_TYPE) for r in rejected)
    expected, _ = decode_events([*good(20), *good(20, start=30)], SCHEMA)
    np.testing.assert_array_equal(batch.ts_ms, expected.ts_ms)
    assert batch.index.tolist() == [i for i in range(len(values)) if i not in bad_idx]


def test_rejected_are_sorted_with_prefilter_and_canonical_rejects() -> None:
    schema = EventSchema(max_event_bytes=300)
    values = [
        ev(ts="2023-02-29T00:00:00.000Z"),
        None,
        b"x" * 400,
        ev(quantity="q"),
        ev(),
        ev(ts="2024-02-30T00:00:00.000Z"),
    ]
    batch, rejected = decode_events(values, schema)  # type: ignore[arg-type]
    assert [(r.index, r.reason) for r in rejected] == [
        (0, R.BAD_TIMESTAMP),
        (1, R.DECODE),
        (2, R.TOO_LARGE),
        (3, R.BAD_TYPE),
        (5, R.BAD_TIMESTAMP),
    ]
    assert batch.index.tolist() == [4] and batch.ts_ms.tolist() == [T0]


def test_non_canonical_but_valid_24_char_strings_use_the_full_parser() -> None:
    # 24 characters but not "...SS.fffZ": must be parsed, not rejected, by the vectorised pass.
    values = [
        ev(ts="2024-03-01T12:00:00+0000"),
        ev(ts="2024-03-01 12:00:00.000Z"),
        ev(ts="2024-03-01t12:00:00.000z"),
    ]
    batch, rejected = decode_events(values, SCHEMA)
    assert rejected == [] and batch.ts_ms.tolist() == [T0, T0, T0]


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-03-01T12:00:00Z", T0),
        ("2024-03-01T12:00:00z", T0),
        ("2024-03-01T12:00:00+00:00", T0),
        ("2024-03-01T12:00:00-00:00", T0),
        ("2024-03-01T17:30:00+05:30", T0),
        ("2024-03-01T04:00:00-08:00", T0),
        ("2024-03-01T04:00:00.250-08:00", T0 + 250),
        ("2024-03-01T12:00:00.1Z", T0 + 100),
        ("2024-03-01T12:00:00.12Z", T0 + 120),
        ("2024-03-01T12:00:00.123Z", T0 + 123),
        ("2024-03-01T12:00:00.123999Z", T0 + 123),
        ("2024-03-01T12:00:00.123456789Z", T0 + 123),
        ("2024-03-01 12:00:00.5+00:00", T0 + 500),
        ("2024-03-01t12:00:00Z", T0),
        ("2024-03-01T12:00:00", T0),  # naive: UTC
        ("2024-03-01T12:00:00.042", T0 + 42),
        ("2024-03-01T12:00Z", T0),
        ("2024-03-01T17:30:00+0530", T0),
        ("2024-03-01T11:59:60Z", T0),  # leap second
        (T0, T0),
        (float(T0) + 0.9, T0),
    ],
)
def test_timestamp_formats(text: object, ms: int) -> None:
    assert parse_timestamp(text) == ms
    batch, rejected = one(ev(ts=text))
    assert rejected == [] and batch.ts_ms.tolist() == [ms]


def test_parse_timestamp_rejects_non_timestamps() -> None:
    for bad in (True, None, [1], "12:00", math.inf, math.nan, "2024-03-01T12:00:00.Z"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)), st.sampled_from([0, 1, 3, 6]))
def test_canonical_and_full_parser_agree(dt: datetime, digits: int) -> None:
    dt = dt.replace(tzinfo=UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{dt.microsecond:06d}"[: digits + 1] if digits else "") + "Z"
    expected = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if digits < 3:
        expected -= dt.microsecond // 1000 - int((f"{dt.microsecond:06d}"[:digits] or "0").ljust(3, "0"))
    # Enough events to go through the joined parse and the vectorised pass.
    batch, rejected = decode_events([ev(ts=text)] * 20, SCHEMA)
    assert rejected == [] and set(batch.ts_ms.tolist()) == {expected}
    assert parse_timestamp(text) == expected


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.none(), st.binary(max_size=60), st.sampled_from([*good(3), b"1,2", b'"a', b'b"'])), max_size=60
    )
)
def test_decode_never_raises_and_partitions_the_input(values: list[bytes | None]) -> None:
    batch, rejected = decode_events(values, EventSchema(max_event_bytes=50))  # type: ignore[arg-type]
    seen = batch.index.tolist() + [r.index for r in rejected]
    assert sorted(seen) == list(range(len(values)))
    assert [r.index for r in rejected] == sorted(r.index for r in rejected)
    assert batch.index.tolist() == sorted(batch.index.tolist())
    assert len(batch.ts_ms) == len(batch.amount) == len(batch.quantity) == len(batch.sku_hash) == len(batch)


_field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["2024-03-01T12:00:00.123Z", "2024-03-01T12:00:00Z", "2024-02-30T00:00:00.000Z", "s1", "A"]),
    st.sampled_from([
        "2024-03-01T12:00:00.123+05:30", "2024-03-01T00:30:00.000-00:00", "2024-03-01T12:00:00.123+24:00",
        "2024-02-30T00:00:00.000+01:00", "2024-03-01T12:00:00.123456789", "2024-03-01 12:00:00.123+01:00",
    ]),
    st.sampled_from(["2024-03-01 12:00", "1709294400", 1709294400, 1709294400.5, 3, 2.0]),
    st.just(T0),
    st.lists(st.integers(), max_size=2),
)
_event_dicts = st.dictionaries(
    st.sampled_from(["ts", "store_id", "sku", "quantity", "unit_price", "amount"]), _field_values, max_size=6
)


_schemas = st.sampled_from([
    {},
    {"time_format": "epoch_s"},
    {"time_format": "epoch_ms"},
    {"time_format": "%Y-%m-%d %H:%M"},
    {"value_field": "amount"},
    {"count_field": "quantity"},
    {"count_field": "quantity", "value_field": "amount", "time_format": "epoch_s"},
    {"numeric_strings": True},
    {"numeric_strings": True, "count_field": "quantity"},
    {"returns": False},
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_event_dicts, max_size=30), st.booleans(), _schemas)
def test_fast_path_matches_the_reference_rules(records: list[dict], allow_negative: bool, options: dict) -> None:
    """Whatever the schema (time formats, value and count series), the batch takes exactly the
    events the reference rules take, with the same values, and rejects the others for the same
    reason; nothing raises."""
    schema = EventSchema(allow_negative=allow_negative, **options)
    _assert_as_the_rules_say(records, decode_records(records, schema), schema)
    # As Kafka message values (the standard library writes what JSON cannot hold, NaN and inf,
    # as invalid JSON): decoded into structs of the fields read, then validated by column.
    values = [json.dumps(r).encode() for r in records]
    parsed = []
    for v in values:
        try:
            parsed.append(msgspec.json.decode(v))
        except msgspec.MsgspecError:
            parsed.append(None)
    batch, rejected = decode_events(values, schema)
    undecodable = [i for i, p in enumerate(parsed) if p is None]
    assert [r.index for r in rejected if r.reason == RejectReason.DECODE] == undecodable
    keep = [i for i in range(len(values)) if parsed[i] is not None]
    rejected = [replace(r, index=keep.index(r.index)) for r in rejected if r.reason != RejectReason.DECODE]
    batch.index = np.array([keep.index(i) for i in batch.index.tolist()], dtype=np.int64)
    _assert_as_the_rules_say([parsed[i] for i in keep], (batch, rejected), schema)


_BASE_SALE = {"ts": "2024-03-01T12:00:00.123Z", "store_id": "s1", "sku": "A", "quantity": 2, "unit_price": 2.5}
_perturbed_sales = st.builds(
    lambda field, value, drop, with_amount, amount: {
        k: v
        for k, v in {**_BASE_SALE, **({"amount": amount} if with_amount else {}), field: value}.items()
        if not (drop and k == field)
    },
    st.sampled_from(["ts", "store_id", "sku", "quantity", "unit_price", "amount"]),
    _field_values | st.floats(min_value=-2e9, max_value=2e9) | st.integers(min_value=-(2 * 10**6), max_value=2 * 10**6),
    st.booleans(),
    st.booleans(),
    st.floats(min_value=-2e9, max_value=2e9),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_perturbed_sales, min_size=17, max_size=40), st.booleans(), _schemas)
def test_fast_path_matches_the_reference_rules_one_field_off(
    records: list[dict], allow_negative: bool, options: dict
) -> None:
    """The same on sales that are valid but for one field at most, where each of the shortcut's
    checks decides (ranges, types, absent fields), in batches long enough to be decoded whole."""
    test_fast_path_matches_the_reference_rules.hypothesis.inner_test(records, allow_negative, options)  # type: ignore[attr-defined]


def _assert_as_the_rules_say(records: list, decoded: tuple, schema: EventSchema) -> None:
    batch, rejected = decoded
    by_index = {r.index: r for r in rejected}
    assert len(by_index) + len(batch) == len(records)
    rows = iter(range(len(batch)))
    for i, rec in enumerate(records):
        try:
            ms, key, amount, quantity, h = _validate(rec, schema)
        except Exception as exc:  # the reference rejects: so must the batch, for the same reason
            assert i in by_index and by_index[i].reason == exc.reason and by_index[i].detail == exc.detail  # type: ignore[attr-defined]
            continue
        r = next(rows)
        assert batch.index[r] == i
        assert batch.ts_ms[r] == ms and batch.keys[r] == key and batch.sku_hash[r] == h
        # A sale with a negative quantity or amount is a return, held as magnitudes.
        returns = schema.returns and not schema.allow_negative and not schema.aggregated
        is_return = returns and (amount < 0 or quantity < 0)
        assert bool(batch.is_return is not None and batch.is_return[r]) == is_return
        held = abs if is_return else float
        assert batch.amount[r] == held(float(amount)) and batch.quantity[r] == held(float(quantity))


def _payload(options: dict) -> dict:
    fields = ("time_field", "sku_field", "quantity_field", "unit_price_field", "amount_field")
    defaults = EventSchema()
    nested: dict = {f: "payload." + getattr(defaults, f) for f in fields}
    nested["key_fields"] = ("payload.store_id",)
    for f in ("value_field", "count_field"):
        if f in options:
            nested[f] = "payload." + options[f]
    return {**options, **nested}


@settings(max_examples=200, deadline=None)
@given(st.lists(_event_dicts, max_size=30), st.booleans(), _schemas)
def test_nested_fields_read_as_the_same_events_flat(records: list[dict], allow_negative: bool, options: dict) -> None:
    """Kafka Connect's JSON envelope ({"schema": ..., "payload": {...}}): with the fields named
    'payload.ts', 'payload.store_id', ... every event is taken or rejected exactly as the same
    event unwrapped is under the plain names (the reasons' details name the dotted fields)."""
    flat_schema = EventSchema(allow_negative=allow_negative, **options)
    nested_schema = EventSchema(allow_negative=allow_negative, **_payload(options))
    wrapped = [{"schema": {"type": "struct"}, "payload": r} for r in records]
    pairs = [(decode_records(wrapped, nested_schema), decode_records(records, flat_schema))]
    # As Kafka message values (the standard library writes what orjson cannot: big ints, inf).
    flat_values = [json.dumps(r).encode() for r in records]
    values = [json.dumps(w).encode() for w in wrapped]
    pairs.append((decode_events(values, nested_schema), decode_events(flat_values, flat_schema)))
    for (batch, rejected), (flat_batch, flat_rejected) in pairs:
        assert batch.index.tolist() == flat_batch.index.tolist()
        assert batch.ts_ms.tolist() == flat_batch.ts_ms.tolist() and batch.keys == flat_batch.keys
        assert batch.amount.tolist() == flat_batch.amount.tolist()
        assert batch.quantity.tolist() == flat_batch.quantity.tolist()
        assert [(r.index, r.reason) for r in rejected] == [(r.index, r.reason) for r in flat_rejected]
        details = [r.detail.replace("payload.", "") for r in rejected if r.reason != RejectReason.DECODE]
        assert details == [r.detail for r in flat_rejected if r.reason != RejectReason.DECODE]


def test_a_change_data_capture_record_reads_its_after_image() -> None:
    """Debezium's envelope: the row is under 'after'; a delete has none and is dead-lettered with
    the missing field named, and a field name with an empty segment fails at start-up."""
    schema = EventSchema(time_field="after.created_at", key_fields=("after.store_id",), amount_field="after.total")
    insert = {"before": None, "after": {"created_at": "2026-03-01T12:00:00Z", "store_id": "s9", "total": 42.5},
              "op": "c", "ts_ms": 1772366400123}
    delete = {"before": insert["after"], "after": None, "op": "d"}
    batch, rejected = decode_events([orjson.dumps(insert), orjson.dumps(delete)], schema)
    assert batch.keys == [("s9",)] and batch.amount.tolist() == [42.5]
    assert [(r.index, r.reason.value, r.detail) for r in rejected] == [
        (1, "missing_field", "after.created_at: missing")
    ]
    with pytest.raises(ConfigError, match="empty path segment"):
        EventSchema(amount_field="after..total")


def test_numbers_written_as_strings_are_read_when_asked() -> None:
    """Some shop platforms send money as strings ("199.00"). By default that is a bad_type whose
    detail names the setting; with events.numeric_strings the event is taken, and a string that is
    not a number is still refused."""
    shop = {"ts": "2026-03-01T12:00:00-05:00", "store_id": "s1", "amount": "199.00", "quantity": "2"}
    values = [orjson.dumps(shop), orjson.dumps({**shop, "amount": "12,5"}), orjson.dumps({**shop, "amount": " 7 "})]
    batch, rejected = decode_events(values, EventSchema())
    assert len(batch) == 0 and {r.reason for r in rejected} == {RejectReason.BAD_TYPE}
    assert "events.numeric_strings" in rejected[0].detail
    batch, rejected = decode_events(values, EventSchema(numeric_strings=True))
    assert batch.index.tolist() == [0, 2] and batch.amount.tolist() == [199.0, 7.0]
    assert batch.quantity.tolist() == [2.0, 2.0]
    assert [(r.index, r.reason, r.detail) for r in rejected] == [
        (1, RejectReason.BAD_TYPE, "amount: expected a number, got '12,5'")
    ]


def test_timestamps_with_offsets_in_a_batch_read_as_one_by_one():
    """The batch reads millisecond timestamps with an offset at once; each must be the instant the
    reference parser gives, and the odd ones (an impossible offset or date, a space, nanoseconds)
    must be judged by the reference rules."""
    stamps = ["2024-03-01T12:00:00.123+05:30", "2024-03-01T00:30:00.000-00:00", "2024-12-31T23:59:59.999-05:00",
              "2024-03-01T12:00:00.123+24:00", "2024-02-30T00:00:00.000+01:00", "2024-03-01 12:00:00.123+01:00",
              "2024-03-01T12:00:00.123456789", "2024-03-01T12:00:00.000Z"]
    records = [{"ts": t, "store_id": "s", "amount": 1.0} for t in stamps]
    batch, rejected = decode_records(records, SCHEMA)
    for r, i in enumerate(batch.index.tolist()):
        assert batch.ts_ms[r] == parse_timestamp(stamps[i]), stamps[i]
    expected_bad = []
    for i, t in enumerate(stamps):
        try:
            parse_timestamp(t)
        except ValueError:
            expected_bad.append(i)
    assert [(r.index, r.reason) for r in rejected] == [(i, R.BAD_TIMESTAMP) for i in expected_bad]
    assert len(expected_bad) == 2  # +24:00 and 30 February


def test_unpriced_sales_are_one_sale_each_without_an_amount() -> None:
    """events.unpriced: a line with no amount is one sale of its quantity (1 when absent), a
    negative quantity a return, a bad quantity still bad_type; an amount is ignored."""
    schema = EventSchema(unpriced=True)
    batch, rejected = decode_events([
        ev(quantity=..., unit_price=...),
        ev(quantity=-2, unit_price=...),
        ev(quantity="x", unit_price=...),
        ev(amount=5.0),
    ], schema)
    assert batch.index.tolist() == [0, 1, 3] and batch.amount.tolist() == [0.0, 0.0, 0.0]
    assert batch.quantity.tolist() == [1.0, 2.0, 2.0] and batch.is_return is not None
    assert batch.is_return.tolist() == [False, True, False]
    assert [(r.index, r.reason) for r in rejected] == [(2, R.BAD_TYPE)]
    with pytest.raises(ConfigError, match="unpriced"):
        EventSchema(unpriced=True, value_field="v")


# --------------------------------------------------------------------------- the compiled scanner

_NUMBER_TEXTS = [
    b"0", b"-0", b"-0.0", b"0.0", b"1", b"12", b"-7", b"2.5", b"18.98", b"1e5", b"1E+5", b"1.5e-3", b"-2.5E2",
    b"0e400", b"1e22", b"1e23", b"1e-22", b"1e-23", b"123456789012345", b"1234567890123456", b"123456789012345678",
    b"1234567890123456789", b"99999999999999999999999", b"0.1", b"0.30000000000000004", b"9007199254740993",
    b"1709294400000", b"1709294400000.0", b"1e400", b"-1e400", b"4.9e-324", b"1.7976931348623157e308", b"00",
    b"01", b"1.", b".5", b"+1", b"-", b"1e", b"1e+", b"--1", b"1.5.5", b"0x10", b"1000000000", b"1000000001",
]  # fmt: skip
_STRING_TEXTS = [
    b'"s1"', b'""', b'"A"', b'"2024-03-01T12:00:00.123Z"', b'"2024-03-01T12:00:00Z"',
    b'"2024-03-01T12:00:00.123+01:00"', b'"2024-02-30T00:00:00.000Z"', b'"a\\"b"', b'"\\u0041"', b'"caf\xc3\xa9"',
    b'"\xff"', b'"tab\tin"', b'"x', b'"\x7f"', b'"12.5"', b'"\\ud800"', b'"\\ud83d\\ude00"', b'"\\udc00"',
    b'"\\u00e9"', b'"\\uZZZZ"', b'"\\ud83dx"', b'"\\ud83d\\u0041"', b'"s\\u0031"', b'"\\/"', b'"\\u002"',
]  # fmt: skip
_OTHER_TEXTS = [
    b"null", b"true", b"false", b"[]", b"[1, 2]", b'{"a": 1}', b"nul", b"tru", b"NaN", b"Infinity", b"",
    b'{"a": [1, {"b": null}], "c": "\\u00e9"}', b"[1,]", b'{"a" 1}', b"[[[[[]]]]]", b'{"a":{}}', b"[1 2]",
    b'{"a":1,}', b"{,}", b"[}", b'{"\\ud83d\\ude00": 1}', b"[" * 70 + b"]" * 70, b"[" * 60 + b"]" * 60,
    b'[{"a": [true, false, null, -1.5e3, "x"]}, {}]', b'{"a": 1e400}', b"[01]", b'{"a": "\\u12"}',
]  # fmt: skip
_NAME_TEXTS = [
    b'"ts"', b'"store_id"', b'"sku"', b'"quantity"', b'"unit_price"', b'"amount"', b'"channel"', b'"t\\u0073"',
    b'"ts "', b'"STORE_ID"', b'"\xc3\xa9"', b"ts",
]  # fmt: skip
_SPACES = [b"", b" ", b"\n", b"\t \r\n", b"\x0b", b"\xc2\xa0"]  # the last two are not JSON whitespace
_BASE_FIELDS = [
    (b'"ts"', b'"2024-03-01T12:00:00.123Z"'), (b'"store_id"', b'"s1"'), (b'"sku"', b'"A"'), (b'"quantity"', b"2"),
    (b'"unit_price"', b"5.5"), (b'"amount"', b"11.0"), (b'"channel"', b'"web"'),
]  # fmt: skip


@st.composite
def _json_texts(draw: st.DrawFn) -> bytes:
    """A sale written as JSON text by hand: most fields as a producer writes them, a few
    rewritten (number spellings, escapes, nesting, bytes beyond ASCII, fields twice, broken
    syntax) and the whitespace varied."""
    fields = list(_BASE_FIELDS)
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.sampled_from(_NUMBER_TEXTS + _STRING_TEXTS + _OTHER_TEXTS))
        if draw(st.booleans()):
            fields[draw(st.integers(0, len(fields) - 1))] = (draw(st.sampled_from(_NAME_TEXTS)), value)
        else:
            fields.insert(draw(st.integers(0, len(fields))), (draw(st.sampled_from(_NAME_TEXTS)), value))
    if draw(st.booleans()):
        del fields[draw(st.integers(0, len(fields) - 1))]
    fields = draw(st.permutations(fields)) if draw(st.booleans()) else fields

    def space() -> bytes:
        return draw(st.sampled_from(_SPACES)) if draw(st.integers(0, 5)) == 0 else b""

    sep = draw(st.sampled_from([b",", b",", b",", b", ", b" ,", b""]))
    body = sep.join(space() + name + space() + b":" + space() + value + space() for name, value in fields)
    return space() + b"{" + body + b"}" + space()


@contextlib.contextmanager
def _without_the_scanner() -> Iterator[None]:
    with unittest.mock.patch.object(events_module, "_scannable", lambda schema: False):
        yield


def _same_batches(a: EventBatch, b: EventBatch) -> None:
    assert a.index.tolist() == b.index.tolist()
    assert a.keys == b.keys
    for name in ("ts_ms", "amount", "quantity", "sku_hash", "count", "is_return", "id_hash"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:  # bit for bit: -0.0 is not 0.0 here
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_json_texts(), min_size=1, max_size=25),
    st.sampled_from([
        {}, {"returns": False}, {"allow_negative": True}, {"value_field": "amount"},
        {"key_fields": ("store_id", "channel")}, {"max_amount": 10.0},
        {"deduplicate": True, "event_id_field": "channel"},  # the id a field read, with every kind of value
    ]),
    st.sampled_from([0, 10**9]),
)  # fmt: skip
def test_the_scanner_decodes_every_value_as_msgspec_and_the_rules_do(
    values: list[bytes], options: dict, one_by_one: int
) -> None:
    """The compiled scanner takes only what it reads exactly: with it and without it (msgspec
    structs, then the columns' checks) every value of a batch ends the same, bit for bit, as a row
    or as a reject with the same reason and text, whether the values it leaves are read one by one
    with its rows or as a batch of their own."""
    schema = EventSchema(**options)
    with unittest.mock.patch.object(events_module, "_LEFT_ONE_BY_ONE", one_by_one):
        batch, rejected = decode_events(values, schema)
    with _without_the_scanner():
        reference, reference_rejected = decode_events(values, schema)
    _same_batches(batch, reference)
    assert rejected == reference_rejected


@pytest.mark.parametrize("options", [
    {}, {"value_field": "amount"}, {"key_fields": ("store_id", "channel")},
    {"deduplicate": True, "event_id_field": "channel"},
])  # fmt: skip
@pytest.mark.parametrize("one_by_one", [0, 10**9], ids=["left-as-a-batch", "left-one-by-one"])
def test_the_scanner_agrees_on_every_edge_value_in_every_field(options: dict, one_by_one: int) -> None:
    """Each hand-picked value text (number spellings, escapes, surrogates, nesting, broken syntax)
    in place of each field of a sale, read and unread ones, and as a field of its own: the same
    rows and rejects with the scanner as without it. (A read field holding ``{"a": 1e400}``,
    which msgspec refuses as a whole, was caught this way.)"""
    schema = EventSchema(**options)
    values = []
    for text in _NUMBER_TEXTS + _STRING_TEXTS + _OTHER_TEXTS:
        for at in range(len(_BASE_FIELDS) + 1):
            fields = list(_BASE_FIELDS)
            if at < len(fields):
                fields[at] = (fields[at][0], text)
            else:
                fields.append((b'"extra"', text))
            values.append(b"{" + b",".join(name + b":" + value for name, value in fields) + b"}")
    with unittest.mock.patch.object(events_module, "_LEFT_ONE_BY_ONE", one_by_one):
        batch, rejected = decode_events(values, schema)
    with _without_the_scanner():
        reference, reference_rejected = decode_events(values, schema)
    _same_batches(batch, reference)
    assert rejected == reference_rejected
    assert len(batch) > len(values) // 3 and len(rejected) > len(values) // 5


def test_the_scanner_takes_what_producers_write() -> None:
    """Sales as the generator writes them, and with spaces, other field orders, integer times,
    keys and SKUs, times to the second or with an offset, text beyond ASCII and an escape in a
    field not read: every one read by the scanner and its columns, none left to the rules one by
    one (the test above would pass were the scanner to leave everything to msgspec)."""
    values = [encode_event(e) for e in generate(GeneratorConfig(stores=3, days=1, seed=5))[0]]
    values += [
        b'{ "store_id" : "s1", "ts" : 1709294400000, "amount" : 1e1 }',
        b'{"store_id": 12, "ts": "2024-03-01T12:00:00Z", "amount": 2, "sku": 7}',
        b'{"store_id": "s1", "ts": "2024-03-01T12:00:00+01:00", "amount": 2, "name": "caf\xc3\xa9"}',
        b'{"amount":-2.5,"ts":"2024-03-01T12:00:00.000+05:30","store_id":"s1","note":"a \\"b\\""}\n',
    ]
    rows = events_module._scan(values, SCHEMA)
    assert rows is not None and rows.taken.all()
    with unittest.mock.patch.object(events_module, "_validate", wraps=events_module._validate) as rules:
        batch, rejected = decode_events(values, SCHEMA)
    assert rules.call_count == len(rejected) == 0
    with _without_the_scanner():
        reference, reference_rejected = decode_events(values, SCHEMA)
    _same_batches(batch, reference)
    assert rejected == reference_rejected
    assert batch.keys[-3] == ("12",) and batch.sku_hash[-3] == sku_hash("7")


def test_the_scanners_strings_keep_their_ids_across_batches_and_start_afresh_when_full() -> None:
    table = events_module._StringIds(lambda s: (s,), object, None, max_entries=4, max_bytes=1 << 10)
    text = b"abcab"
    buf = np.frombuffer(text, dtype=np.uint8)
    starts, lengths, use = np.array([0, 2, 3]), np.array([2, 1, 2]), np.array([True, True, True])
    assert table.lookup(buf, starts, lengths, use).tolist() == [("ab",), ("c",), ("ab",)]
    assert table.lookup(buf, starts[:1], lengths[:1], use[:1]).tolist() == [("ab",)]
    assert int(table._counts[0]) == 2  # "ab" was known
    more = np.frombuffer(b"wxyz", dtype=np.uint8)
    got = table.lookup(more, np.arange(4), np.ones(4, dtype=np.int64), np.array([True, False, True, True]))
    assert got.tolist() == [("w",), None, ("y",), ("z",)]
    assert int(table._counts[0]) == 3  # full: started afresh before the batch
    many = np.frombuffer(b"".join(b"%03d" % i for i in range(100)), dtype=np.uint8)
    table = events_module._StringIds(lambda s: s, object, None, max_entries=1000, max_bytes=1 << 10)
    for _ in range(2):  # grown and rehashed, then found
        got = table.lookup(many, 3 * np.arange(100), np.full(100, 3), np.ones(100, dtype=bool))
        assert got.tolist() == [f"{i:03d}" for i in range(100)] and len(table._slots) >= 200


def test_the_per_byte_kernels_count_no_references() -> None:
    """The scanner, the interning and the timestamp parser are compiled without numba's runtime:
    with it, the reference counts of the arrays their helpers pass around were three quarters of
    the scanner's time (atomic increments and decrements on every byte's branch)."""
    from streamdetect import _json_kernels, _time_kernels

    values = [encode_event(e) for e in generate(GeneratorConfig(stores=2, days=1, seed=0))[0][:50]]
    batch, rejected = decode_events(values, EventSchema())
    assert len(batch) == 50 and not rejected
    kernels = (_json_kernels.scan_objects, _json_kernels.intern_spans, _time_kernels.parse_canonical)
    for kernel in kernels:
        assert kernel.signatures, kernel  # the decode above ran it
        # Compiled afresh with the kernel's options: numba shows no code of a kernel it loaded from its cache.
        options = {k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")}
        fresh = numba.njit(**options)(kernel.py_func)
        fresh.compile(kernel.signatures[0])
        ir = fresh.inspect_llvm(kernel.signatures[0])
        assert "define" in ir and "NRT_incref" not in ir and "NRT_decref" not in ir, kernel
