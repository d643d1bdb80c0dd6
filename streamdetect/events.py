"""Decoding and validation of raw sales events into a columnar :class:`EventBatch`.

Every input either becomes one row of the batch or one :class:`Rejected` naming its position, a
:class:`RejectReason` and a short text saying what was wrong; one bad event never affects the
others. Rules (field names come from :class:`~streamdetect.config.EventSchema`):

* ``too_large``: the raw value is longer than ``max_event_bytes`` (checked before parsing).
* ``decode``: no value (``None``), not UTF-8, not JSON (including numbers that overflow a double,
  such as ``1e400``, and nesting deeper than 1024).

Values in the Confluent Schema Registry wire format (a zero byte, a 4-byte schema id, then the
payload), as the JSON Schema serializer writes them, are read as their JSON payload; the schema
id is not looked up. An Avro or Protobuf payload in that frame is a ``decode`` reject that says so.
* ``bad_type``: JSON but not an object, or a field of the wrong type. Numbers must be JSON numbers
  (``"12.5"`` is refused); key fields must be strings or integers (integers become ``str(n)``);
  the SKU must be a string or an integer. ``null`` in a required field (time, keys) is a
  ``bad_type``; ``null`` in an optional field (amount, quantity, unit price, SKU) means absent.
* ``missing_field``: the time field or a key field is absent; or ``amount`` is absent and
  ``quantity`` or ``unit_price`` is too.
* ``bad_timestamp``: not an RFC 3339 string nor epoch milliseconds (or not in
  ``events.time_format`` when that is set), or outside ``[min_time_ms, max_time_ms)``.
* ``out_of_range``: NaN/inf, a negative unit price, a negative quantity or amount of a series row
  (unless ``allow_negative``, in which case the magnitude is checked), a negative quantity or
  amount of a sale when ``returns`` is off, ``|amount| > max_amount``, ``|quantity| > max_quantity``.
* ``late`` is never produced here: the window stage decides it.

Returns: with ``returns`` on (the default) a sale whose quantity or amount is negative (an
invoice line cancelled, a refund) is valid: the batch holds its magnitudes and marks it in
``is_return``, and the windows count it apart from the sales.

Amount and quantity: ``amount`` wins when present, and ``quantity`` then defaults to 1 when absent
(``unit_price`` is ignored); without ``amount``, both ``quantity`` and ``unit_price`` are required
and ``amount = quantity * unit_price``. With ``value_field`` set (an aggregated series) the amount
is that field, the quantity is 1 and the SKU is ignored. With ``count_field`` set (a series of sales
counts) a row is that many sales (``out_of_range`` unless a whole number >= 0), with
``value_field`` as their total amount when set (else 0). An absent or empty SKU hashes to 0.

Timestamps without an offset (``2024-03-01T12:00:00``) are taken as UTC.

>>> from streamdetect.config import EventSchema
>>> batch, rejected = decode_events(
...     [b'{"ts": "2024-03-01T12:00:00Z", "store_id": "s1", "quantity": 2, "unit_price": 5.5}',
...      b'{"ts": "2024-03-01T12:00:00Z", "store_id": "s1", "quantity": "abc", "unit_price": 1}',
...      b'not json'],
...     EventSchema(),
... )
>>> len(batch), batch.amount.tolist(), batch.keys
(1, [11.0], [('s1',)])
>>> [(r.index, str(r.reason), r.detail) for r in rejected][0]
(1, 'bad_type', "quantity: expected a number, got 'abc'")
>>> rejected[1].reason
<RejectReason.DECODE: 'decode'>
"""

from __future__ import annotations

import contextlib
import enum
import functools
import gc
import hashlib
import math
import numbers
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from streamdetect.config import EventSchema

__all__ = [
    "EventBatch",
    "RejectReason",
    "Rejected",
    "decode_events",
    "decode_records",
    "field_value",
    "parse_number",
    "parse_timestamp",
    "sku_hash",
    "time_parser",
]


class RejectReason(enum.StrEnum):
    """Why an event was refused (also the ``reason`` label of ``events_rejected_total``)."""

    DECODE = "decode"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_TIMESTAMP = "bad_timestamp"
    OUT_OF_RANGE = "out_of_range"
    TOO_LARGE = "too_large"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class Rejected:
    """One refused event: its position in the input, the reason and a short human explanation."""

    index: int
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class EventBatch:
    """Valid events, columnar, in input order.

    >>> b = EventBatch.empty()
    >>> len(b), b.ts_ms.dtype, b.sku_hash.dtype
    (0, dtype('int64'), dtype('uint64'))
    """

    index: np.ndarray
    ts_ms: np.ndarray
    amount: np.ndarray
    quantity: np.ndarray
    sku_hash: np.ndarray
    keys: list[tuple[str, ...]]
    # Sales per row of a count series (events.count_field); None: each row is one sale.
    count: np.ndarray | None = None
    # Rows that are returns (a negative quantity or amount, stored as magnitudes); None: no return.
    is_return: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> EventBatch:
        """A batch with no events (e.g. for a flush)."""
        return cls(
            index=np.zeros(0, dtype=np.int64),
            ts_ms=np.zeros(0, dtype=np.int64),
            amount=np.zeros(0, dtype=np.float64),
            quantity=np.zeros(0, dtype=np.float64),
            sku_hash=np.zeros(0, dtype=np.uint64),
            keys=[],
        )


# --------------------------------------------------------------------------- timestamps

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# RFC 3339 plus the common relaxations (space or lower-case separator, no seconds, no offset, an
# offset without colon); fromisoformat alone would also accept week dates and bare dates.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::(\d{2})(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)
_FRAC_SCALE = (0, 100, 10, 1)
# Second-resolution prefix (plus offset) -> epoch ms of that second. Events come many per
# second, so this turns an expensive datetime parse into a dict lookup for almost every event.
_SECOND_CACHE: dict[str, int] = {}
_SECOND_CACHE_MAX = 1 << 16


def _parse_iso_slow(s: str) -> int:
    m = _RFC3339.fullmatch(s)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {_show(s)}")
    text = s.upper()
    leap = 0
    if m.group(1) == "60":  # a leap second: 23:59:60 is one second after 23:59:59
        text = text[:17] + "59" + text[19:]
        leap = 1000
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {_show(s)} ({exc})") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS + leap


def _parse_iso(s: str) -> int:
    """Epoch ms of an RFC 3339 string, via the per-second cache when the shape is the usual one."""
    tail = s[19:]
    if tail:
        c = tail[0]
        if c == ".":
            if tail[-1] == "Z":
                off, digits = "Z", tail[1:-1]
            elif len(tail) >= 7 and tail[-6] in "+-":
                off, digits = tail[-6:], tail[1:-6]
            else:
                off, digits = "", tail[1:]
            if not (digits.isdigit() and digits.isascii()):
                return _parse_iso_slow(s)
            d3 = digits[:3]
            frac = int(d3) * _FRAC_SCALE[len(d3)]
        elif c == "Z" or c == "+" or c == "-":
            off, frac = tail, 0
        else:
            return _parse_iso_slow(s)
    else:
        off, frac = "", 0
    key = s[:19] + off
    base = _SECOND_CACHE.get(key)
    if base is None:
        # Only valid prefixes are cached, so a hit proves the prefix and offset are well formed.
        base = _parse_iso_slow(key)
        if len(_SECOND_CACHE) >= _SECOND_CACHE_MAX:
            _SECOND_CACHE.clear()
        _SECOND_CACHE[key] = base
    return base + frac


@functools.cache
def time_parser(time_format: str) -> Callable[[Any], int] | None:
    """The parser of ``events.time_format`` (None for ``"auto"``); it raises ValueError or
    TypeError on a value that does not match.

    >>> time_parser("epoch_s")(1709294400), time_parser("epoch_ms")("1709294400123")
    (1709294400000, 1709294400123)
    >>> time_parser("%d/%m/%Y %H:%M")("01/03/2024 12:00")
    1709294400000
    """
    if time_format == "auto":
        return None
    if time_format in ("epoch_s", "epoch_ms"):
        scale = 1000 if time_format == "epoch_s" else 1

        def epoch(value: Any) -> int:
            if isinstance(value, bool):
                raise TypeError("a boolean is not a time")
            if isinstance(value, int):
                return value * scale
            f = float(value)  # a number, or a numeric string (CSV cells)
            if not math.isfinite(f):
                raise ValueError("not a finite number")
            return math.floor(f * scale)

        return epoch

    @functools.lru_cache(maxsize=1 << 16)  # times repeat: many events share a second
    def pattern(value: str) -> int:
        if not isinstance(value, str):
            raise TypeError("not a string")
        dt = datetime.strptime(value, time_format)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // _MS

    return pattern


def parse_timestamp(value: object) -> int:
    """Epoch milliseconds (UTC) of an RFC 3339 string or an epoch-milliseconds number.

    Any offset is accepted (``Z``, ``+05:30``, ``-08:00``), fractional seconds of any precision
    (truncated to the millisecond), a space instead of ``T``; a string without an offset is UTC.
    Numbers are epoch milliseconds; fractions of a millisecond are floored.

    Raises
    ------
    ValueError
        When the value is neither.

    Examples
    --------
    >>> parse_timestamp("2024-03-01T12:00:00Z")
    1709294400000
    >>> parse_timestamp("2024-03-01 17:30:00.1239+05:30")
    1709294400123
    >>> parse_timestamp(1709294400123.9)
    1709294400123
    >>> parse_timestamp("yesterday")
    Traceback (most recent call last):
    ...
    ValueError: not an RFC 3339 timestamp: 'yesterday'
    """
    if isinstance(value, str):
        return _parse_iso(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"expected an RFC 3339 string or epoch milliseconds, got {_show(value)}")
    if isinstance(value, numbers.Integral):
        return int(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"not a finite number: {_show(value)}")
    return math.floor(f)


# --------------------------------------------------------------------------- SKU hash

# One shared tuple per single-field key value: fewer allocations, less for the cyclic GC to scan.
# Only str values go in (an int key takes the slow path), so 1 and "1" never share an entry.
_KEY_CACHE: dict[str, tuple[str, ...]] = {}
_KEY_CACHE_MAX = 1 << 16
_SKU_CACHE: dict[str, int] = {}
_SKU_CACHE_MAX = 1 << 20


def sku_hash(sku: str) -> int:
    """Stable 64-bit hash of a SKU (BLAKE2b, the same in every process); ``""`` hashes to 0.

    >>> sku_hash("") , sku_hash("A-1") == sku_hash("A-1"), 0 < sku_hash("A-1") < 2**64
    (0, True, True)
    """
    h = _SKU_CACHE.get(sku)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(sku.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        if not sku:
            h = 0
        if len(_SKU_CACHE) >= _SKU_CACHE_MAX:
            _SKU_CACHE.clear()
        _SKU_CACHE[sku] = h
    return h


# --------------------------------------------------------------------------- validation


def _show(v: object, limit: int = 40) -> str:
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, dict | Mapping):
        return "an object"
    if isinstance(v, list | tuple):
        return "an array"
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class _Invalid(Exception):
    """Internal: one event is refused (cheap to raise, only on the slow path)."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class _Slow(Exception):
    """Internal: leave the fast path for :func:`_validate`."""


class _DecodeFailure:
    """Placeholder for a raw value that did not parse."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


_INT_TEXT = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def parse_number(text: str) -> int | float | None:
    """The number a text writes (a CSV cell, a JSON string holding a number), or None.

    >>> parse_number("12"), parse_number("-0.5e3"), parse_number("12,5"), parse_number(" 7")
    (12, -500.0, None, None)
    """
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _FLOAT_TEXT.fullmatch(text):
        return float(text)
    return None


def _number(d: Mapping[str, Any], field: str, required: bool, strings: bool = False) -> float | int | None:
    v = d.get(field)
    if v is None:
        if required:
            raise _Invalid(RejectReason.MISSING_FIELD, f"{field}: missing")
        return None
    if isinstance(v, str):
        parsed = parse_number(v.strip())
        if not strings or parsed is None:
            hint = " (events.numeric_strings reads numbers written as strings)" if parsed is not None else ""
            raise _Invalid(RejectReason.BAD_TYPE, f"{field}: expected a number, got {_show(v)}{hint}")
        v = parsed
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise _Invalid(RejectReason.BAD_TYPE, f"{field}: expected a number, got {_show(v)}")
    if isinstance(v, numbers.Integral):
        return int(v)
    f = float(v)
    if not math.isfinite(f):
        raise _Invalid(RejectReason.OUT_OF_RANGE, f"{field}: not a finite number ({f})")
    return f


def _fmt(v: float) -> str:
    try:
        return f"{v:g}"
    except OverflowError:  # an integer too large for a double
        return _show(v)


def _check_range(field: str, v: float, limit: float | None, schema: EventSchema, returns: bool | None = None) -> None:
    """``returns``: None for a field that is never negative (a price, a series value); else whether
    a negative value is a return (a sale's quantity or amount), whose magnitude is then checked."""
    if v < 0 and not (schema.allow_negative or returns):
        setting = "events.allow_negative" if returns is None else "events.returns"
        raise _Invalid(RejectReason.OUT_OF_RANGE, f"{field}: {_fmt(v)} is negative ({setting} is off)")
    if limit is not None and abs(v) > limit:
        raise _Invalid(RejectReason.OUT_OF_RANGE, f"{field}: {_fmt(v)} is above the limit {limit:g}")


def _series_value(d: Mapping[str, Any], field: str, schema: EventSchema) -> float | int:
    """A series row's value: required, a number, within ``max_value``."""
    value = _number(d, field, required=True, strings=schema.numeric_strings)
    assert value is not None
    _check_range(field, value, schema.max_value, schema)
    return value


def _validate(d: object, schema: EventSchema) -> tuple[int, tuple[str, ...], float, float, int]:
    """The reference rules for one event: (ts_ms, keys, amount, quantity, sku_hash) or _Invalid.

    The batch loop takes a shortcut for the common shape and defers to this for anything else,
    so this function alone defines what is valid.
    """
    if isinstance(d, _DecodeFailure):
        raise _Invalid(RejectReason.DECODE, d.detail)
    if not isinstance(d, Mapping):
        raise _Invalid(RejectReason.BAD_TYPE, f"event: expected a JSON object, got {_show(d)}")

    tf = schema.time_field
    if tf not in d:
        raise _Invalid(RejectReason.MISSING_FIELD, f"{tf}: missing")
    t = d[tf]
    parse = time_parser(schema.time_format)
    if parse is not None:
        try:
            ms = parse(t)
        except (ValueError, TypeError, OverflowError):
            raise _Invalid(
                RejectReason.BAD_TIMESTAMP, f"{tf}: {_show(t)} does not match events.time_format {schema.time_format!r}"
            ) from None
    elif isinstance(t, str):
        try:
            ms = _parse_iso(t)
        except ValueError as exc:
            raise _Invalid(RejectReason.BAD_TIMESTAMP, f"{tf}: {exc}") from None
    elif isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise _Invalid(
            RejectReason.BAD_TYPE, f"{tf}: expected an RFC 3339 string or epoch milliseconds, got {_show(t)}"
        )
    else:
        try:
            ms = parse_timestamp(t)
        except ValueError as exc:
            raise _Invalid(RejectReason.BAD_TIMESTAMP, f"{tf}: {exc}") from None
    if not schema.min_time_ms <= ms < schema.max_time_ms:
        hint = ""
        if parse is None and not isinstance(t, str) and schema.min_time_ms <= ms * 1000 < schema.max_time_ms:
            hint = " (looks like epoch seconds; expected milliseconds, or set events.time_format = 'epoch_s')"
        raise _Invalid(RejectReason.BAD_TIMESTAMP, f"{tf}: {_show(t)} is outside the accepted time range{hint}")

    keys = []
    for kf in schema.key_fields:
        if kf not in d:
            raise _Invalid(RejectReason.MISSING_FIELD, f"{kf}: missing")
        k = d[kf]
        if isinstance(k, str):
            keys.append(k)
        elif isinstance(k, numbers.Integral) and not isinstance(k, bool):
            keys.append(str(int(k)))
        else:
            raise _Invalid(RejectReason.BAD_TYPE, f"{kf}: expected a string or an integer, got {_show(k)}")

    if schema.count_field is not None:
        # A count series: the row is that many sales, the value (if any) their total amount.
        count = _number(d, schema.count_field, required=True, strings=schema.numeric_strings)
        assert count is not None
        if count < 0 or count != int(count):
            raise _Invalid(
                RejectReason.OUT_OF_RANGE, f"{schema.count_field}: {_fmt(count)} is not a count (a whole number >= 0)"
            )
        _check_range(schema.count_field, count, schema.max_quantity, schema)
        total = 0.0 if schema.value_field is None else _series_value(d, schema.value_field, schema)
        return ms, tuple(keys), total, count, 0

    if schema.value_field is not None:
        return ms, tuple(keys), _series_value(d, schema.value_field, schema), 1, 0

    strings = schema.numeric_strings
    returns = schema.returns
    if schema.unpriced:
        # One sale of `quantity` items, without an amount (a till's log of items sold).
        quantity = _number(d, schema.quantity_field, required=False, strings=strings)
        if quantity is None:
            quantity = 1
        else:
            _check_range(schema.quantity_field, quantity, schema.max_quantity, schema, returns)
        return ms, tuple(keys), 0.0, quantity, _sku(d, schema)
    amount = _number(d, schema.amount_field, required=False, strings=strings)
    if amount is None:
        quantity = _number(d, schema.quantity_field, required=True, strings=strings)
        price = _number(d, schema.unit_price_field, required=True, strings=strings)
        assert quantity is not None and price is not None
        _check_range(schema.quantity_field, quantity, schema.max_quantity, schema, returns)
        _check_range(schema.unit_price_field, price, None, schema)
        amount = quantity * price
        if abs(amount) > schema.max_amount or (isinstance(amount, float) and not math.isfinite(amount)):
            raise _Invalid(
                RejectReason.OUT_OF_RANGE,
                f"{schema.amount_field}: quantity * unit_price = {_fmt(amount)} is above the limit"
                f" {schema.max_amount:g}",
            )
    else:
        _check_range(schema.amount_field, amount, schema.max_amount, schema, returns)
        quantity = _number(d, schema.quantity_field, required=False, strings=strings)
        if quantity is None:
            quantity = 1
        else:
            _check_range(schema.quantity_field, quantity, schema.max_quantity, schema, returns)

    return ms, tuple(keys), amount, quantity, _sku(d, schema)


def _sku(d: Mapping[str, Any], schema: EventSchema) -> int:
    """The hash of an event's SKU (0 when absent)."""
    sku = d.get(schema.sku_field)
    if sku is None:
        return 0
    if isinstance(sku, str):
        return sku_hash(sku)
    if isinstance(sku, numbers.Integral) and not isinstance(sku, bool):
        return sku_hash(str(int(sku)))
    raise _Invalid(RejectReason.BAD_TYPE, f"{schema.sku_field}: expected a string, got {_show(sku)}")


# Byte layout of the canonical "YYYY-MM-DDTHH:MM:SS.fffZ" (JavaScript's toISOString, and
# alerts.format_time): these are parsed for a whole batch at once with numpy.
_CANON_LEN = 24
_CANON_SEP_POS = np.array([4, 7, 10, 13, 16, 19, 23])
_CANON_SEP = np.frombuffer(b"--T::.Z", dtype=np.uint8)
_CANON_DIGIT_POS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22])
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


_OFFSET_LEN = 29  # "YYYY-MM-DDTHH:MM:SS.fff+hh:mm": the canonical form with an offset


def _parse_canonical(strs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of ``YYYY-MM-DDTHH:MM:SS.fffZ`` strings, or of the same with an offset
    (``.fff+01:00``), and which ones were valid.

    Invalid rows (wrong shape, impossible dates or offsets, leap seconds) are flagged, not
    guessed: the caller sends them through the reference rules, which decide.

    >>> ms, ok = _parse_canonical(["2024-02-29T23:59:59.999Z", "2023-02-29T00:00:00.000Z",
    ...                            "2024-03-01T00:59:59.999+01:00"])
    >>> ms[0].item() == parse_timestamp("2024-02-29T23:59:59.999Z") == ms[2].item(), ok.tolist()
    (True, [True, False, True])
    """
    n = len(strs)
    rows = _byte_rows(strs, _CANON_LEN)
    if rows is not None:  # the usual batch: every one in the Z form
        return _parse_zulu(rows)
    ms, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    lengths = np.fromiter(map(len, strs), dtype=np.int64, count=n)
    zulu = np.flatnonzero(lengths == _CANON_LEN)
    if len(zulu) and (rows := _byte_rows([strs[i] for i in zulu.tolist()], _CANON_LEN)) is not None:
        ms[zulu], ok[zulu] = _parse_zulu(rows)
    shifted = np.flatnonzero(lengths == _OFFSET_LEN)
    if len(shifted):
        sub = [strs[i] for i in shifted.tolist()]
        local = _byte_rows([x[:23] + "Z" for x in sub], _CANON_LEN)
        offsets = _byte_rows([x[23:] for x in sub], 6)
        if local is not None and offsets is not None:
            (local_ms, ok_local), (east_ms, ok_offset) = _parse_zulu(local), _parse_offsets(offsets)
            ms[shifted], ok[shifted] = local_ms - east_ms, ok_local & ok_offset
    return ms, ok


def _byte_rows(strs: list[str], width: int) -> np.ndarray | None:
    """The bytes of ASCII strings of ``width`` characters, one row each; None if they are not."""
    blob = "".join(strs)
    if len(blob) != len(strs) * width or not blob.isascii():
        return None
    return np.frombuffer(blob.encode("ascii"), dtype=np.uint8).reshape(len(strs), width)


def _parse_offsets(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds east of UTC of ``+hh:mm`` / ``-hh:mm`` rows (hh < 24, mm < 60), and which were valid."""
    a = rows.astype(np.int64)
    dg = a[:, [1, 2, 4, 5]] - 48
    hours, minutes = dg[:, 0] * 10 + dg[:, 1], dg[:, 2] * 10 + dg[:, 3]
    ok = ((a[:, 0] == ord("+")) | (a[:, 0] == ord("-"))) & (a[:, 3] == ord(":"))
    ok &= ((dg >= 0) & (dg <= 9)).all(axis=1) & (hours <= 23) & (minutes <= 59)
    sign = np.where(a[:, 0] == ord("-"), -1, 1)
    return sign * (hours * 3_600_000 + minutes * 60_000), ok


def _parse_zulu(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of ``YYYY-MM-DDTHH:MM:SS.fffZ`` rows of bytes, and which ones were valid."""
    ok = (a[:, _CANON_SEP_POS] == _CANON_SEP).all(axis=1)
    dg = a[:, _CANON_DIGIT_POS].astype(np.int64) - 48
    ok &= ((dg >= 0) & (dg <= 9)).all(axis=1)
    year = dg[:, 0] * 1000 + dg[:, 1] * 100 + dg[:, 2] * 10 + dg[:, 3]
    month = dg[:, 4] * 10 + dg[:, 5]
    day = dg[:, 6] * 10 + dg[:, 7]
    hour = dg[:, 8] * 10 + dg[:, 9]
    minute = dg[:, 10] * 10 + dg[:, 11]
    second = dg[:, 12] * 10 + dg[:, 13]
    milli = dg[:, 14] * 100 + dg[:, 15] * 10 + dg[:, 16]
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (hour <= 23) & (minute <= 59) & (second <= 59)
    month = np.where(ok, month, 1)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    ok &= (day >= 1) & (day <= _DAYS_IN_MONTH[month] + ((month == 2) & leap))
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
    ms = days * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000 + milli
    return ms, ok


def field_value(d: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value of field ``name`` of an event: the key itself when present, else, for a name with
    dots, the path into nested objects; ``default`` when absent.

    >>> field_value({"payload": {"store": {"id": "s1"}}}, "payload.store.id")
    's1'
    >>> field_value({"a.b": 1, "a": {"b": 2}}, "a.b"), field_value({"a": 3}, "a.b", "absent")
    (1, 'absent')
    """
    if name in d:
        return d[name]
    if "." not in name:
        return default
    cur: Any = d
    for part in name.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur


_ABSENT = object()


def _with_nested(objs: list[Any], names: tuple[str, ...]) -> list[Any]:
    """Each event with its nested fields also under their dotted names, for the rules to read."""
    out = []
    for d in objs:
        if isinstance(d, dict):
            found = {n: v for n in names if n not in d and (v := field_value(d, n, _ABSENT)) is not _ABSENT}
            if found:
                d = {**d, **found}
        out.append(d)
    return out


def _columns(
    objs: Sequence[Any], positions: Sequence[int] | None, schema: EventSchema, rejected: list[Rejected]
) -> EventBatch:
    """Validate parsed events; ``positions[j]`` is the input index of ``objs[j]`` (identity if None)."""
    ts: list[int] = []
    amounts: list[float] = []
    quantities: list[float] = []
    skus: list[int] = []
    keys: list[tuple[str, ...]] = []
    canon: list[str] = []
    bad: list[int] = []

    # Local bindings: this loop runs once per event and attribute lookups dominate otherwise.
    tf = schema.time_field
    key_fields = schema.key_fields
    k0 = key_fields[0]
    single_key = len(key_fields) == 1
    af, qf, pf, sf, vf = (
        schema.amount_field,
        schema.quantity_field,
        schema.unit_price_field,
        schema.sku_field,
        schema.value_field,
    )
    lo_t, hi_t = schema.min_time_ms, schema.max_time_ms
    parse_time = time_parser(schema.time_format)
    counted = schema.count_field is not None
    # count series and sales without amounts: rows are few, the reference rules take them all
    by_rules = counted or schema.unpriced
    # Placeholder time of a canonical string left for the vectorised pass; never a valid time.
    canon_mark = lo_t - 1
    max_a, max_q, max_v = schema.max_amount, schema.max_quantity, schema.max_value
    # A sale with a negative quantity or amount is a return (when `returns`): only its magnitude
    # is checked here; the rows are marked after the loop.
    returns = vf is None and not counted and schema.returns and not schema.allow_negative
    lo_a = -max_a if schema.allow_negative or returns else 0
    lo_v = -max_v if schema.allow_negative else 0
    lo_q = -max_q if schema.allow_negative or returns else 0
    lo_p = -math.inf if schema.allow_negative else 0
    sku_cache = _SKU_CACHE
    parse_iso = _parse_iso
    str_, int_, float_ = str, int, float
    ts_append, a_append, q_append = ts.append, amounts.append, quantities.append
    s_append, k_append, c_append = skus.append, keys.append, canon.append

    ms: int
    key: Any
    h: int
    a: Any
    q: Any
    p: Any
    slow = _Slow()
    key_cache = _KEY_CACHE
    for d in objs:
        # Fast path for the usual shapes, straight-line. Anything unusual, including every invalid
        # event, raises and falls through to _validate, which alone defines the rules: a wrong
        # shortcut here can cost speed, never correctness.
        try:
            if by_rules:
                raise slow
            t = d[tf]
            if parse_time is not None:
                ms = parse_time(t)
                if not lo_t <= ms < hi_t:
                    raise slow
            elif type(t) is str_ and (len(t) == 24 or len(t) == 29):
                ms = canon_mark
            else:
                if type(t) is str_:
                    ms = parse_iso(t)
                elif type(t) is int_:
                    ms = t
                else:
                    raise slow
                if not lo_t <= ms < hi_t:
                    raise slow
            if single_key:
                k = d[k0]
                key = key_cache.get(k)
                if key is None:
                    if type(k) is not str_:
                        raise slow
                    key = (k,)
                    if len(key_cache) >= _KEY_CACHE_MAX:
                        key_cache.clear()
                    key_cache[k] = key
            else:
                key = tuple([d[f] for f in key_fields])
                for k in key:
                    if type(k) is not str_:
                        raise slow
            if vf is None:
                a = d.get(af)
                if a is None:
                    q = d[qf]
                    p = d[pf]
                    tq, tp = type(q), type(p)
                    if not (
                        (tq is float_ or tq is int_)
                        and (tp is float_ or tp is int_)
                        and lo_q <= q <= max_q
                        and lo_p <= p
                    ):
                        raise slow
                    a = q * p
                    if not lo_a <= a <= max_a:
                        raise slow
                else:
                    ta = type(a)
                    if not ((ta is float_ or ta is int_) and lo_a <= a <= max_a):
                        raise slow
                    q = d.get(qf)
                    if q is None:
                        q = 1
                    else:
                        tq = type(q)
                        if not ((tq is float_ or tq is int_) and lo_q <= q <= max_q):
                            raise slow
                s = d.get(sf)
                if type(s) is str_:
                    h = sku_cache[s]
                elif s is None:
                    h = 0
                else:
                    raise slow
            else:
                a = d[vf]
                ta = type(a)
                if not ((ta is float_ or ta is int_) and lo_v <= a <= max_v):
                    raise slow
                q = 1
                h = 0
        except (_Slow, KeyError, TypeError, ValueError, AttributeError, OverflowError):
            try:
                ms, key, a, q, h = _validate(d, schema)
            except _Invalid as exc:
                j = len(ts) + len(bad)
                bad.append(j)
                rejected.append(Rejected(j if positions is None else positions[j], exc.reason, exc.detail))
                continue
        ts_append(ms)
        if ms == canon_mark:
            c_append(t)
        k_append(key)
        a_append(a)
        q_append(q)
        s_append(h)

    obj_rows = np.arange(len(objs), dtype=np.int64)
    if bad:
        obj_rows = np.delete(obj_rows, bad)
    index = obj_rows if positions is None else np.asarray(positions, dtype=np.int64)[obj_rows]
    ts_arr = np.array(ts, dtype=np.int64)
    amount_arr = np.array(amounts, dtype=np.float64)
    quantity_arr = np.array(quantities, dtype=np.float64)
    sku_arr = np.array(skus, dtype=np.uint64)

    if canon:
        rows = np.flatnonzero(ts_arr == canon_mark)
        parsed, ok_arr = _parse_canonical(canon)
        ok_arr &= (parsed >= lo_t) & (parsed < hi_t)
        ts_arr[rows] = parsed
        if not ok_arr.all():
            drop: list[int] = []
            for r in rows[~ok_arr].tolist():
                try:
                    ts_arr[r] = _validate(objs[int(obj_rows[r])], schema)[0]
                except _Invalid as exc:
                    drop.append(r)
                    rejected.append(Rejected(int(index[r]), exc.reason, exc.detail))
            if drop:
                keep = np.ones(len(ts_arr), dtype=bool)
                keep[drop] = False
                index, ts_arr, amount_arr = index[keep], ts_arr[keep], amount_arr[keep]
                quantity_arr, sku_arr = quantity_arr[keep], sku_arr[keep]
                keys = [k for k, m in zip(keys, keep.tolist(), strict=True) if m]
                rejected.sort(key=lambda r: r.index)

    is_return = None
    if returns and len(amount_arr):
        negative = (amount_arr < 0) | (quantity_arr < 0)
        if negative.any():
            is_return = negative
            amount_arr, quantity_arr = np.abs(amount_arr), np.abs(quantity_arr)

    return EventBatch(
        index=index,
        ts_ms=ts_arr,
        amount=amount_arr,
        quantity=quantity_arr,
        sku_hash=sku_arr,
        keys=keys,
        count=quantity_arr if counted else None,
        is_return=is_return,
    )


# --------------------------------------------------------------------------- parsing


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC while a batch is decoded.

    Decoding allocates tens of thousands of small dicts that die right after the batch; with the
    default thresholds the GC would otherwise scan them dozens of times per batch (about a third
    of the decode time). JSON cannot build reference cycles, so there is nothing for it to find;
    the allocation count is kept, so a collection that is due simply runs after the batch.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_SMALL = 16
_JOIN_MAX = 2048
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


_FRAME = 5  # the Confluent wire format's header: magic byte 0, then a 4-byte big-endian schema id


def _unframed(v: Any) -> Any:
    """The JSON object of a value in the Confluent wire format; any other value as it is (one
    framed with another payload is left for :func:`_parse_one` to explain).

    JSON text never starts with a zero byte, so the frame is recognised without configuration.

    >>> _unframed(b'\\x00\\x00\\x00\\x00\\x07{"a": 1}'), _unframed(b'{"a": 1}')
    (b'{"a": 1}', b'{"a": 1}')
    """
    if v[:1] == b"\x00" and v[_FRAME : _FRAME + 1] == b"{":
        return v[_FRAME:]
    return v


def _parse_one(v: Any) -> object:
    try:
        return _loads(v)
    except _JSONDecodeError as exc:
        if isinstance(v, bytes | bytearray | memoryview) and v[:1] == b"\x00" and len(v) > _FRAME:
            framed = _parse_one(v[_FRAME:])
            if isinstance(framed, _DecodeFailure):
                schema_id = int.from_bytes(bytes(v[1:_FRAME]), "big")
                return _DecodeFailure(f"Confluent wire format (schema id {schema_id}) without a JSON payload"
                                      " (Avro or Protobuf?): only JSON is read")
            return framed
        msg = str(exc)
        return _DecodeFailure("invalid JSON: " + (msg if len(msg) <= 100 else msg[:97] + "..."))
    except TypeError:
        return _DecodeFailure(f"expected bytes, got {type(v).__name__}")


def _parse_many(vals: list[Any], out: list[object]) -> None:
    """Parse ``vals`` into ``out``, one parse for the whole list when every value is valid.

    The values are joined into one array with a random per-call sentinel between them. A value
    such as ``1,2`` or an unterminated string can shift elements across value boundaries; the
    sentinel must then be missing from some odd position (nobody can forge it without knowing
    it), so the check below catches any misalignment, not just a changed element count. On
    failure the list is bisected, which isolates a few bad values in O(bad * log n) parses.
    """
    n = len(vals)
    if n <= _SMALL:
        out.extend(_parse_one(v) for v in vals)
        return
    if n > _JOIN_MAX:
        # A few hundred kilobytes per parse stays in cache; one huge document is slower per byte.
        for i in range(0, n, _JOIN_MAX):
            _parse_many(vals[i : i + _JOIN_MAX], out)
        return
    nonce = secrets.randbits(62) | (1 << 62)
    sep = b",%d," % nonce
    try:
        arr = _loads(b"[" + sep.join(vals) + b"]")
    except (_JSONDecodeError, TypeError):
        arr = None
    if type(arr) is list and len(arr) == 2 * n - 1 and arr[1::2].count(nonce) == n - 1:
        out.extend(arr[0::2])
        return
    half = n // 2
    _parse_many(vals[:half], out)
    _parse_many(vals[half:], out)


def decode_events(values: Sequence[bytes], schema: EventSchema) -> tuple[EventBatch, list[Rejected]]:
    """Decode and validate raw JSON event values (e.g. Kafka message values), in input order.

    Parameters
    ----------
    values
        One JSON object per value, as bytes; ``None`` (a tombstone) is rejected as ``decode``.
    schema
        Field names and limits.

    Returns
    -------
    (EventBatch, list[Rejected])
        The valid events and the refused ones (sorted by index); every input index is in exactly
        one of the two.

    Examples
    --------
    >>> from streamdetect.config import EventSchema
    >>> ok = b'{"ts": 1709294400000, "store_id": 7, "amount": 3.5, "sku": "A"}'
    >>> batch, rejected = decode_events([ok, None, b'{"ts": 1}'], EventSchema())
    >>> batch.index.tolist(), batch.keys, batch.quantity.tolist()
    ([0], [('7',)], [1.0])
    >>> [(r.index, r.reason.value) for r in rejected]
    [(1, 'decode'), (2, 'bad_timestamp')]
    """
    vals = values if isinstance(values, list) else list(values)
    n = len(vals)
    rejected: list[Rejected] = []
    if n == 0:
        return EventBatch.empty(), rejected
    max_bytes = schema.max_event_bytes
    positions: list[int] | None = None
    try:
        clean = None not in vals and max(map(len, vals)) <= max_bytes
    except TypeError:  # a value without len(): handled one by one below
        clean = False
    if not clean:
        positions = []
        kept = []
        for i, v in enumerate(vals):
            if v is None:
                rejected.append(Rejected(i, RejectReason.DECODE, "no value (null message)"))
                continue
            try:
                size = len(v)
            except TypeError:
                rejected.append(Rejected(i, RejectReason.DECODE, f"expected bytes, got {type(v).__name__}"))
                continue
            if size > max_bytes:
                rejected.append(
                    Rejected(i, RejectReason.TOO_LARGE, f"{size} bytes is above events.max_event_bytes ({max_bytes})")
                )
                continue
            positions.append(i)
            kept.append(v)
        vals = kept
    if vals and isinstance(vals[0], bytes) and vals[0][:1] == b"\x00":
        # A topic written by a Schema Registry serializer frames every value; one that is not
        # (a mixed batch) is unframed one by one when its parse fails.
        vals = [_unframed(v) for v in vals]
    objs: list[object] = []
    with _gc_paused():
        _parse_many(vals, objs)
        if schema.nested_fields:
            objs = _with_nested(objs, schema.nested_fields)
        batch = _columns(objs, positions, schema, rejected)
        del objs
    if positions is not None:
        rejected.sort(key=lambda r: r.index)
    return batch, rejected


def decode_records(records: Sequence[Mapping[str, Any]], schema: EventSchema) -> tuple[EventBatch, list[Rejected]]:
    """Validate already parsed events (e.g. CSV rows), with the same rules as :func:`decode_events`.

    Examples
    --------
    >>> from streamdetect.config import EventSchema
    >>> schema = EventSchema(time_field="timestamp", value_field="value", key_fields=("series",))
    >>> rows = [{"timestamp": "2024-03-01T00:00:00Z", "series": "s", "value": 12.5},
    ...         {"timestamp": "2024-03-01T00:01:00Z", "series": "s", "value": "n/a"}]
    >>> batch, rejected = decode_records(rows, schema)
    >>> batch.amount.tolist(), rejected[0].detail
    ([12.5], "value: expected a number, got 'n/a'")
    """
    objs = records if isinstance(records, list) else list(records)
    rejected: list[Rejected] = []
    with _gc_paused():
        if schema.nested_fields:
            objs = _with_nested(objs, schema.nested_fields)
        batch = _columns(objs, None, schema, rejected)
    return batch, rejected
