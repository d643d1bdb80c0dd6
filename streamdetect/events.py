"""Decoding and validation of raw sales events into a columnar :class:`EventBatch`.

Every input either becomes one row of the batch or one :class:`Rejected` naming its position, a
:class:`RejectReason` and a short text saying what was wrong; one bad event never affects the
others. Rules (field names come from :class:`~streamdetect.config.EventSchema`):

* ``too_large``: the raw value is longer than ``max_event_bytes`` (checked before parsing).
* ``decode``: no value (``None``), not UTF-8, not JSON (including a number that overflows a
  double, such as ``1e400``, in a field the rules read, and nesting deeper than Python's
  recursion limit, about 1,000). The fields the rules do not read are checked for well-formed
  JSON and UTF-8 only: they are not built. A compiled scanner (:mod:`streamdetect._json_kernels`)
  reads most events' bytes straight into columns; the events it cannot read exactly as msgspec
  would go to msgspec, which decodes each straight into the fields read. Which of the two reads
  an event never changes what it becomes.

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
import itertools
import math
import numbers
import operator
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
import numpy as np

from streamdetect import _json_kernels, _time_kernels
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
    DUPLICATE = "duplicate"
    KEY_LIMIT = "key_limit"


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
    # hash() of each row's event id (events.event_id_field), NO_ID where it has none; None: no row
    # has one. Only equality matters (hash() is salted per process), for deduplication.
    id_hash: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> EventBatch:
        """The batch's rows at positions ``rows`` (in that order).

        >>> b = EventBatch(np.arange(3), np.array([5, 6, 7]), np.ones(3), np.ones(3),
        ...                np.zeros(3, dtype=np.uint64), [("a",), ("b",), ("c",)])
        >>> t = b.take(np.array([0, 2])); t.index.tolist(), t.ts_ms.tolist(), t.keys
        ([0, 2], [5, 7], [('a',), ('c',)])
        """
        return EventBatch(
            index=self.index[rows],
            ts_ms=self.ts_ms[rows],
            amount=self.amount[rows],
            quantity=self.quantity[rows],
            sku_hash=self.sku_hash[rows],
            keys=[self.keys[i] for i in rows.tolist()],
            count=None if self.count is None else self.count[rows],
            is_return=None if self.is_return is None else self.is_return[rows],
            id_hash=None if self.id_hash is None else self.id_hash[rows],
        )

    @classmethod
    def merged(cls, a: EventBatch, b: EventBatch) -> EventBatch:
        """The rows of two batches of one input in input order (by ``index``).

        >>> one = EventBatch(np.array([0, 3]), np.array([5, 8]), np.ones(2), np.ones(2),
        ...                  np.zeros(2, dtype=np.uint64), [("a",), ("d",)])
        >>> two = EventBatch(np.array([2]), np.array([7]), np.ones(1), np.ones(1), np.zeros(1, dtype=np.uint64),
        ...                  [("c",)], is_return=np.array([True]))
        >>> m = EventBatch.merged(one, two); m.index.tolist(), m.keys, m.is_return.tolist()
        ([0, 2, 3], [('a',), ('c',), ('d',)], [False, True, False])
        """

        def both(x: np.ndarray | None, y: np.ndarray | None, fill: Any) -> np.ndarray | None:
            if x is None and y is None:
                return None
            return np.concatenate([np.full(len(a), fill) if x is None else x,
                                   np.full(len(b), fill) if y is None else y])  # fmt: skip

        whole = cls(
            index=np.concatenate([a.index, b.index]),
            ts_ms=np.concatenate([a.ts_ms, b.ts_ms]),
            amount=np.concatenate([a.amount, b.amount]),
            quantity=np.concatenate([a.quantity, b.quantity]),
            sku_hash=np.concatenate([a.sku_hash, b.sku_hash]),
            keys=a.keys + b.keys,
            count=both(a.count, b.count, 1.0),
            is_return=both(a.is_return, b.is_return, False),
            id_hash=both(a.id_hash, b.id_hash, NO_ID),
        )
        return whole.take(np.argsort(whole.index, kind="stable"))

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

    The column checks of :func:`_columns` read the common shapes for a whole batch and leave
    anything else to this, so this function alone defines what is valid.
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
        elif parse is None and not isinstance(t, str) and schema.min_time_ms <= ms // 1000 < schema.max_time_ms:
            hint = " (looks like epoch microseconds; expected milliseconds)"
        raise _Invalid(RejectReason.BAD_TIMESTAMP, f"{tf}: {_show(t)} is outside the accepted time range{hint}")

    keys = []
    for kf in schema.key_fields:
        if kf not in d:
            raise _Invalid(RejectReason.MISSING_FIELD, f"{kf}: missing")
        k = d[kf]
        if isinstance(k, str):
            if not k:
                raise _Invalid(RejectReason.MISSING_FIELD, f"{kf}: empty")
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


def _parse_canonical(strs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of ``YYYY-MM-DDTHH:MM:SS.fffZ`` strings, or of the same with an offset
    (``.fff+01:00``) or to the second (``:SSZ``, ``:SS+01:00``), and which ones were valid, in one
    compiled loop over their bytes.

    Other strings and invalid ones (impossible dates or offsets, leap seconds) are flagged, not
    guessed: the caller reads them with the full parser.

    >>> ms, ok = _parse_canonical(["2024-02-29T23:59:59.999Z", "2023-02-29T00:00:00.000Z",
    ...                            "2024-03-01T00:59:59.999+01:00", "2024-03-01T00:59:59.9Z",
    ...                            "2024-03-01T00:59:59.99éZ"])
    >>> ms[0].item() == parse_timestamp("2024-02-29T23:59:59.999Z") == ms[2].item(), ok.tolist()
    (True, [True, False, True, False, False])
    >>> (_parse_canonical(["2024-03-01T00:59:59+01:00"])[0] == parse_timestamp("2024-02-29T23:59:59Z")).item()
    True
    """
    n = len(strs)
    lengths = np.fromiter(map(len, strs), dtype=np.int64, count=n)
    blob = "".join(strs)
    if not blob.isascii():
        # A string's bytes must start where its characters do: the others, never canonical, are
        # blanked (NUL is neither a digit nor a separator).
        blob = "".join(x if x.isascii() else "\0" * len(x) for x in strs)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    ms, ok = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
    _time_kernels.parse_canonical(np.frombuffer(blob.encode("ascii"), dtype=np.uint8), starts, lengths, ms, ok)
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


# An absent field reads as NaN, which JSON cannot write: a column of numbers, nulls and absent
# values converts to floats in one call (null and absent both NaN: both mean "no value").
_MISSING = math.nan
# Type codes of column values, for numpy masks (an object array of types is slow to build).
_OTHER, _INT, _FLOAT, _STR, _NULL = range(5)
_KIND = {int: _INT, float: _FLOAT, str: _STR, type(None): _NULL}
_NUMBERS_OR_NULL = {int, float, type(None)}


def _kinds(col: list[Any]) -> np.ndarray:
    return np.fromiter(map(_KIND.get, map(type, col), itertools.repeat(_OTHER)), dtype=np.int8, count=len(col))


def _is_missing(v: Any) -> bool:
    return type(v) is float and v != v


class _Rows(Protocol):
    """The events of a batch as columns of the fields the rules read.

    An absent field reads as ``None`` (as a null) or, where the events cannot hold a NaN
    (``nan_is_absent``: JSON), as ``_MISSING``; elsewhere a NaN is a value, refused by the rules.
    The typed columns (``times``, ``keys``, ``numbers``, ``sku_hashes``) say for each row whether
    their shortcut read it; a row one of them did not read goes to the rules.
    """

    nan_is_absent: bool

    def __len__(self) -> int: ...

    def column(self, field: str) -> list[Any]: ...

    def event(self, j: int) -> object:
        """Event ``j`` as :func:`_validate` takes it."""
        ...

    def times(self, schema: EventSchema) -> tuple[np.ndarray, np.ndarray]: ...

    def keys(self, key_fields: tuple[str, ...]) -> tuple[list[Any], np.ndarray]: ...

    def numbers(self, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def sku_hashes(self, field: str) -> tuple[np.ndarray, np.ndarray]: ...


class _ListRows:
    """Typed columns read from Python values (:meth:`column`), for the rows that hold them."""

    nan_is_absent: bool

    def column(self, field: str) -> list[Any]:
        raise NotImplementedError

    def times(self, schema: EventSchema) -> tuple[np.ndarray, np.ndarray]:
        return _times(self.column(schema.time_field), schema)

    def keys(self, key_fields: tuple[str, ...]) -> tuple[list[Any], np.ndarray]:
        return _keys(self.column, key_fields)

    def numbers(self, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _numbers(self.column(field), self.nan_is_absent)

    def sku_hashes(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        return _sku_hashes(self.column(field), self.nan_is_absent)


class _DictRows(_ListRows):
    """Parsed events (dicts, or anything else JSON or a CSV reader gives)."""

    nan_is_absent = False

    def __init__(self, objs: Sequence[Any]) -> None:
        self.objs = objs

    def __len__(self) -> int:
        return len(self.objs)

    def column(self, field: str) -> list[Any]:
        try:
            return [d.get(field) for d in self.objs]
        except (AttributeError, TypeError):  # an event that is not an object: the rules say why
            return [d.get(field) if isinstance(d, Mapping) else None for d in self.objs]

    def event(self, j: int) -> object:
        return self.objs[j]


class _StructRows(_ListRows):
    """Events decoded straight into structs of the fields the rules read (no dict per event)."""

    nan_is_absent = True

    def __init__(self, events: list[Any], failures: dict[int, object], attrs: Mapping[str, str]) -> None:
        self.events = events
        self.failures = failures  # position -> what the value was instead (not JSON, not an object)
        self.attrs = attrs  # field name -> struct attribute

    def __len__(self) -> int:
        return len(self.events)

    def column(self, field: str) -> list[Any]:
        return list(map(operator.attrgetter(self.attrs[field]), self.events))

    def event(self, j: int) -> object:
        if j in self.failures:
            return self.failures[j]
        e = self.events[j]
        return {f: v for f, a in self.attrs.items() if not _is_missing(v := getattr(e, a))}


def _numbers(col: list[Any], nan_is_absent: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, is_number, is_absent)`` of a column: JSON numbers (not booleans) as float64 (0
    where not), and the rows without a value (absent or null); rows that are neither (a NaN
    that is a value among them) are for the rules."""
    types = set(map(type, col))
    kind = None
    odd: list[int] = []
    if nan_is_absent and not types <= _NUMBERS_OR_NULL:
        # A few values of another type (a malformed event's string, array, boolean): converted
        # as nulls, then marked for the rules; the rest of the column is read in one call.
        others = types - _NUMBERS_OR_NULL
        is_odd = np.fromiter(map(others.__contains__, map(type, col)), dtype=bool, count=len(col))
        odd = np.flatnonzero(is_odd).tolist()
        col = col.copy()
        for i in odd:
            col[i] = None
    if nan_is_absent or types <= _NUMBERS_OR_NULL:
        try:
            values = np.array(col, dtype=np.float64)  # null -> NaN
        except OverflowError:  # an integer beyond a double: the rules reject it
            pass
        else:
            nan = np.isnan(values)
            if not nan.any():
                return values, np.ones(len(col), dtype=bool), nan
            if nan_is_absent:
                values[nan] = 0.0
                is_number, absent = ~nan, nan
                is_number[odd] = False
                absent[odd] = False
                return values, is_number, absent
            kind = _kinds(col)
    if kind is None:
        kind = _kinds(col)
        kind[odd] = _OTHER
    is_number = (kind == _INT) | (kind == _FLOAT)
    values = np.zeros(len(col))
    rows = np.flatnonzero(is_number).tolist()
    try:
        values[rows] = [col[i] for i in rows]
    except OverflowError:
        for i in rows:
            try:
                values[i] = col[i]
            except OverflowError:
                is_number[i] = False
    nan = np.isnan(values)
    values[nan] = 0.0
    absent = (kind == _NULL) | (nan if nan_is_absent else False)
    return values, is_number & ~nan, absent


def _times(col: list[Any], schema: EventSchema) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of a time column and which rows the shortcut read; the others are for the rules."""
    n = len(col)
    parse = time_parser(schema.time_format)
    if parse is not None:  # a configured format: its parser, one row at a time (it caches)
        return _times_one_by_one(col, parse, range(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))
    types = set(map(type, col))
    if types == {str}:
        return _iso_times(col)
    if types == {int}:
        with contextlib.suppress(OverflowError):
            return np.array(col, dtype=np.int64), np.ones(n, dtype=bool)
    ms, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    kind = _kinds(col)
    is_str = kind == _STR
    if is_str.any():
        ms[is_str], ok[is_str] = _iso_times(list(itertools.compress(col, is_str.tolist())))
    is_int = kind == _INT
    if is_int.any():
        ints = np.flatnonzero(is_int)
        try:
            ms[ints] = list(itertools.compress(col, is_int.tolist()))
            ok[ints] = True
        except OverflowError:  # one beyond int64: one by one
            _times_one_by_one(col, None, ints.tolist(), ms, ok)
    return ms, ok


def _iso_times(col: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_times` of strings: the canonical shapes for all at once, the others one by one."""
    ms, ok = _parse_canonical(col)
    if ok.all():
        return ms, ok
    return _times_one_by_one(col, None, np.flatnonzero(~ok).tolist(), ms, ok)


def _times_one_by_one(
    col: list[Any], parse: Callable[[Any], int] | None, rows: Iterable[int], ms: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    for i in rows:
        t = col[i]
        try:
            if parse is not None:
                ms[i] = parse(t)
            elif type(t) is str:
                ms[i] = _parse_iso(t)
            elif type(t) is int:
                ms[i] = t
            else:
                continue
        except (ValueError, TypeError, OverflowError):
            continue
        ok[i] = True
    return ms, ok


def _keys(column: Callable[[str], list[Any]], key_fields: tuple[str, ...]) -> tuple[list[Any], np.ndarray]:
    """Each row's key tuple and whether the shortcut read it (every key field a string)."""
    if len(key_fields) == 1:
        col = column(key_fields[0])
        n = len(col)
        cache = _KEY_CACHE
        try:
            keys: list[Any] = list(map(cache.get, col))
        except TypeError:  # an unhashable value (an object, an array)
            keys = [cache.get(k) if type(k) is str else None for k in col]
        ok = np.ones(n, dtype=bool)
        if None in keys:
            for i in [i for i, k in enumerate(keys) if k is None]:
                k = col[i]
                if type(k) is not str or not k:  # an empty key is for the rules (missing)
                    ok[i] = False
                    continue
                if len(cache) >= _KEY_CACHE_MAX:
                    cache.clear()
                keys[i] = cache[k] = (k,)
        return keys, ok
    cols = [column(f) for f in key_fields]
    ok = np.ones(len(cols[0]), dtype=bool)
    for col in cols:
        if set(map(type, col)) != {str} or "" in col:
            ok &= np.array([type(k) is str and k != "" for k in col], dtype=bool)
    return list(zip(*cols, strict=True)), ok


NO_ID = -1  # hash() never returns -1 (CPython reserves it), so no id hashes to it
# What a row without an id holds: absent (a struct's default), null or an empty string.
_NO_ID_HASHES = np.array([hash(_MISSING), hash(None), hash("")], dtype=np.int64)


def _id_hashes(rows: _Rows, field: str) -> np.ndarray | None:
    """hash() of each row's event id (strings and numbers; anything else is no id), ``NO_ID``
    where there is none; ``None`` when no row has one."""
    try:
        col = rows.column(field)
    except (AttributeError, TypeError):  # a row that is not an object: it has no id
        col = [e.get(field) if isinstance(e := rows.event(j), dict) else None for j in range(len(rows))]
    try:
        hashes = np.fromiter(map(hash, col), dtype=np.int64, count=len(col))
    except TypeError:  # an unhashable id (an array, an object)
        hashes = np.array([hash(v) if isinstance(v, str | int | float) else NO_ID for v in col], dtype=np.int64)
    absent = np.isin(hashes, _NO_ID_HASHES)
    if absent.all():
        return None
    hashes[absent] = NO_ID
    return hashes


def _sku_hashes(col: list[Any], nan_is_absent: bool) -> tuple[np.ndarray, np.ndarray]:
    """The SKU hash of each row (0 when absent) and whether the shortcut read it (a string)."""
    n = len(col)
    cache = _SKU_CACHE
    try:  # every SKU seen before: straight into the array
        return np.fromiter(map(cache.get, col), dtype=np.uint64, count=n), np.ones(n, dtype=bool)
    except TypeError:  # a new SKU (None), an absent or unhashable one: one by one below
        pass
    try:
        hashes: list[Any] = list(map(cache.get, col))
    except TypeError:
        hashes = [cache.get(s) if type(s) is str else None for s in col]
    ok = np.ones(n, dtype=bool)
    if None in hashes:
        for i in [i for i, h in enumerate(hashes) if h is None]:
            s = col[i]
            if type(s) is str:
                hashes[i] = sku_hash(s)
            elif s is None or (nan_is_absent and _is_missing(s)):
                hashes[i] = 0
            else:
                hashes[i] = 0
                ok[i] = False
    return np.array(hashes, dtype=np.uint64), ok


def _columns(
    rows: _Rows, positions: Sequence[int] | None, schema: EventSchema, rejected: list[Rejected]
) -> EventBatch:
    """Validate a batch column by column; ``positions[j]`` is the input index of row ``j``
    (identity if None).

    The usual shapes are read for the whole batch at once with numpy. A row any column cannot
    read that way (every invalid event, and the unusual valid ones) goes to :func:`_validate`,
    which alone defines the rules: a wrong shortcut here can cost speed, never correctness.
    """
    n = len(rows)
    if n == 0:
        return EventBatch.empty()
    vf = schema.value_field
    counted = schema.count_field is not None
    ts_ms = np.zeros(n, dtype=np.int64)
    amount = np.zeros(n)
    quantity = np.ones(n)
    skus = np.zeros(n, dtype=np.uint64)
    keys: list[Any] = [None] * n
    returns = vf is None and not counted and schema.returns and not schema.allow_negative
    if counted or schema.unpriced:
        ok = np.zeros(n, dtype=bool)  # count series and sales without amounts: few rows, all by the rules
    else:
        ts_ms, ok = rows.times(schema)
        ok &= (ts_ms >= schema.min_time_ms) & (ts_ms < schema.max_time_ms)
        keys, keys_ok = rows.keys(schema.key_fields)
        ok &= keys_ok
        # A sale with a negative quantity or amount is a return (when `returns`): only its
        # magnitude is checked here; the rows are marked below.
        signed = schema.allow_negative or returns
        if vf is not None:
            amount, is_number, _ = rows.numbers(vf)
            lo_v = -schema.max_value if schema.allow_negative else 0.0
            ok &= is_number & (amount >= lo_v) & (amount <= schema.max_value)
        else:
            max_a, max_q = schema.max_amount, schema.max_quantity
            lo_a, lo_q = (-max_a, -max_q) if signed else (0.0, 0.0)
            a, a_number, a_absent = rows.numbers(schema.amount_field)
            q, q_number, q_absent = rows.numbers(schema.quantity_field)
            if a_absent.any():
                p, p_number, _ = rows.numbers(schema.unit_price_field)
                lo_p = -math.inf if schema.allow_negative else 0.0
                with np.errstate(over="ignore", invalid="ignore"):  # huge products are rejected below
                    product = q * p
                priced = q_number & p_number & (p >= lo_p) & (product >= lo_a) & (product <= max_a)
                a = np.where(a_absent, product, a)
            else:
                priced = np.zeros(n, dtype=bool)
            q_ok = q_number & (q >= lo_q) & (q <= max_q)
            # amount given: quantity optional (1); amount absent: quantity and unit price required
            ok &= np.where(a_absent, priced & q_ok, a_number & (a >= lo_a) & (a <= max_a) & (q_ok | q_absent))
            amount = a
            quantity = np.where(q_absent, 1.0, q)
            skus, skus_ok = rows.sku_hashes(schema.sku_field)
            ok &= skus_ok

    ids = _id_hashes(rows, schema.event_id_field) if schema.deduplicate else None
    index = np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    slow = np.flatnonzero(~ok)
    if len(slow):
        bad: list[int] = []
        for j in slow.tolist():
            try:
                ts_ms[j], keys[j], amount[j], quantity[j], skus[j] = _validate(rows.event(j), schema)
            except _Invalid as exc:
                bad.append(j)
                rejected.append(Rejected(int(index[j]), exc.reason, exc.detail))
        if bad:
            keep = np.ones(n, dtype=bool)
            keep[bad] = False
            index, ts_ms, amount, quantity, skus = index[keep], ts_ms[keep], amount[keep], quantity[keep], skus[keep]
            keys = list(itertools.compress(keys, keep.tolist()))
            ids = ids[keep] if ids is not None else None

    is_return = None
    if returns and len(amount):
        negative = (amount < 0) | (quantity < 0)
        if negative.any():
            is_return = negative
            amount, quantity = np.abs(amount), np.abs(quantity)

    return EventBatch(
        index=index,
        ts_ms=ts_ms,
        amount=amount,
        quantity=quantity,
        sku_hash=skus,
        keys=keys,
        count=quantity if counted else None,
        is_return=is_return,
        id_hash=ids,
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


_loads = msgspec.json.decode
# Malformed JSON; a number beyond a double; nesting beyond the decoder's recursion limit.
_JSONDecodeError = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


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


@functools.cache
def _struct_decoders(fields: tuple[str, ...]) -> tuple[Any, Any, dict[str, str]]:
    """For the fields the rules read: the struct type, its decoder, and each field's attribute
    (field names need not be identifiers)."""
    attrs = {f: f"f{i}" for i, f in enumerate(fields)}
    # Not tracked by the cyclic GC (gc=False): decoded JSON cannot refer back to its struct, and
    # thousands of tracked structs per batch made the collector run after nearly every batch.
    struct = msgspec.defstruct(
        "Event", [(a, Any, _MISSING) for a in attrs.values()], rename={a: f for f, a in attrs.items()}, gc=False
    )
    return struct, msgspec.json.Decoder(struct), attrs


def _read_fields(schema: EventSchema) -> tuple[str, ...]:
    names = (schema.time_field, *schema.key_fields, schema.amount_field, schema.quantity_field,
             schema.unit_price_field, schema.sku_field, schema.value_field, schema.count_field,
             schema.event_id_field if schema.deduplicate else None)  # fmt: skip
    return tuple(dict.fromkeys(f for f in names if f is not None))


def _decode_each(vals: list[Any], one: Any) -> list[object]:
    """Each value decoded alone into its struct, or what it is instead: a decode failure, or the
    JSON value that is not an object (the rules say why).

    One decoder call per value: measured against decoding the values joined into one JSON array
    (which needs a check that no value shifted elements across its neighbours, and a fallback
    whenever one value is bad), it is as fast on clean batches (0.51 us a sale either way) and
    much faster on batches with a bad value in them (0.51 against 0.88 us at 1 % malformed).
    The calls run in ``list.extend(map(...))`` (no Python loop per value: 0.52 against 0.58 us
    a sale), which keeps what it decoded before a bad value: that one goes the slow way
    (:func:`_decode_one`), and decoding resumes after it.
    """
    decode = one.decode
    out: list[object] = []
    n = len(vals)
    while len(out) < n:
        try:
            out.extend(map(decode, vals[len(out) :] if out else vals))
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, TypeError):
            out.append(_decode_one(vals[len(out)], decode))
    # The decoder does not check the text of the fields it skips: a struct of text that is not
    # UTF-8 is a failure.
    try:
        clean = all(map(bytes.isascii, vals))
    except TypeError:  # a value that is not bytes (a str, a bytearray, a memoryview)
        clean = False
    if not clean:
        struct = one.type
        for i, v in enumerate(vals):
            if type(out[i]) is struct and not (v.isascii() or _is_utf8(v) if type(v) is bytes else _is_text(v)):
                out[i] = _DecodeFailure("invalid JSON: not UTF-8")
    return out


def _decode_one(v: Any, decode: Any) -> object:
    """What :func:`_decode_each` makes of a value its decoder refused (or of one it took)."""
    try:
        return decode(v)
    except msgspec.ValidationError as exc:
        try:
            value = _loads(v)
        except _JSONDecodeError:
            return _DecodeFailure(f"invalid JSON: {exc}")
        # Valid JSON but not an object; or an object with a number beyond a double in a field read.
        return value if not isinstance(value, dict) else _DecodeFailure(f"invalid JSON: {exc}")
    except (msgspec.DecodeError, RecursionError, TypeError):
        return _parse_one(v)  # the reference says what it is (a framed value, not JSON, ...)


def _is_text(v: Any) -> bool:
    """A value that is no ``bytes``: a str is text; other buffers are text when UTF-8."""
    return isinstance(v, str) or _is_utf8(bytes(v))


def _decode_structs(vals: list[Any], schema: EventSchema) -> _StructRows:
    """Decode JSON values into structs of the fields the rules read (:func:`_decode_each`).

    Only the fields read are kept: the others are checked for well-formed JSON but not built,
    which is most of what decoding a sale costs. A value that is no struct (not JSON, not an
    object) is kept apart for the rules, a blank struct in its place.
    """
    struct, one, attrs = _struct_decoders(_read_fields(schema))
    events = _decode_each(vals, one)
    failures: dict[int, object] = {}
    if set(map(type, events)) != {struct}:
        blank = struct()
        for i, e in enumerate(events):
            if type(e) is not struct:
                failures[i] = e
                events[i] = blank
    return _StructRows(events, failures, attrs)


class _StringIds:
    """Ids for the strings of scanned batches (keys, or SKUs), kept across batches, and what each
    stands for (``derive`` of its text), so that Python looks at a string once, not per event.

    Bounded like the caches it replaces: past ``max_entries`` strings or ``max_bytes`` of them it
    starts afresh (before a batch, never within one).
    """

    def __init__(self, derive: Callable[[str], Any], dtype: Any, none: Any, max_entries: int, max_bytes: int) -> None:
        self._derive, self._dtype, self._none = derive, dtype, none
        self._max_entries, self._max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()  # one table, however many detectors decode at once
        self._clear()

    def _clear(self) -> None:
        self._slots = np.full(1024, -1, dtype=np.int64)
        self._hash = np.zeros(512, dtype=np.uint64)
        self._start = np.zeros(512, dtype=np.int64)
        self._len = np.zeros(512, dtype=np.int64)
        self._arena = np.zeros(1 << 14, dtype=np.uint8)
        self._counts = np.zeros(2, dtype=np.int64)  # entries, arena bytes used
        # What entry e stands for is at e + 1; at 0, what a row without a string gets.
        self._derived = np.full(513, self._none, dtype=self._dtype)

    def _make_room(self, rows: int, size: int) -> None:
        entries, used = int(self._counts[0]), int(self._counts[1])
        if entries + rows > self._max_entries or used + size > self._max_bytes:
            self._clear()
            entries, used = 0, 0
        need = entries + rows
        if need > len(self._hash):
            grow = max(need, 2 * len(self._hash)) - len(self._hash)
            self._hash = np.concatenate([self._hash, np.zeros(grow, dtype=np.uint64)])
            self._start = np.concatenate([self._start, np.zeros(grow, dtype=np.int64)])
            self._len = np.concatenate([self._len, np.zeros(grow, dtype=np.int64)])
            self._derived = np.concatenate([self._derived, np.full(grow, self._none, dtype=self._dtype)])
        if 2 * need > len(self._slots):
            self._slots = np.full(1 << (2 * need - 1).bit_length(), -1, dtype=np.int64)
            _json_kernels.rehash(self._slots, self._hash, entries)
        if used + size > len(self._arena):
            grow = max(used + size, 2 * len(self._arena)) - len(self._arena)
            self._arena = np.concatenate([self._arena, np.zeros(grow, dtype=np.uint8)])

    def lookup(self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, use: np.ndarray) -> np.ndarray:
        """What the string at each row where ``use`` stands for; ``none`` at the others."""
        with self._lock:
            self._make_room(int(np.count_nonzero(use)), int(lengths[use].sum()))
            before = int(self._counts[0])
            ids = np.empty(len(starts), dtype=np.int64)
            _json_kernels.intern_spans(buf, starts, lengths, use, self._slots, self._hash, self._start, self._len,
                                       self._arena, self._counts, ids)  # fmt: skip
            arena = self._arena
            for e in range(before, int(self._counts[0])):
                at = int(self._start[e])
                self._derived[e + 1] = self._derive(arena[at : at + int(self._len[e])].tobytes().decode("utf-8"))
            return self._derived[ids + 1]


_KEY_IDS = _StringIds(lambda k: (k,), object, None, _KEY_CACHE_MAX, 1 << 24)
_SKU_IDS = _StringIds(sku_hash, np.uint64, 0, _SKU_CACHE_MAX, 1 << 26)


@functools.cache
def _scanned_names(fields: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The names the scanner looks for: their bytes end to end, where each starts, its length,
    and the table of their slots (:func:`_json_kernels.name_slots`)."""
    names = [f.encode("utf-8", "surrogatepass") for f in fields]
    lengths = np.array([len(b) for b in names], dtype=np.int64)
    starts = np.zeros(len(names), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.frombuffer(b"".join(names), dtype=np.uint8), starts, lengths, _json_kernels.name_slots(names)


class _ScannedRows:
    """Events read by :func:`_json_kernels.scan_objects` into typed columns without a Python
    object per event; a value the scanner left, or that a column cannot read, goes to the rules
    decoded by msgspec as :class:`_StructRows` would (:meth:`event`)."""

    nan_is_absent = True

    def __init__(self, vals: list[Any], schema: EventSchema, buf: np.ndarray, starts: np.ndarray,
                 lengths: np.ndarray) -> None:  # fmt: skip
        fields = _read_fields(schema)
        self.vals, self.schema, self.buf = vals, schema, buf
        self.rows: np.ndarray | None = None  # after take(): the position in vals of each row
        self.field = {f: i for i, f in enumerate(fields)}
        n, k = len(vals), len(fields)
        self.kind = np.zeros((k, n), dtype=np.int8)
        self.num = np.zeros((k, n))
        self.whole = np.zeros((k, n), dtype=np.int64)
        self.text_start = np.zeros((k, n), dtype=np.int64)
        self.text_len = np.zeros((k, n), dtype=np.int64)
        self.taken = np.zeros(n, dtype=bool)
        _json_kernels.scan_objects(buf, starts, lengths, *_scanned_names(fields), self.kind, self.num, self.whole,
                                   self.text_start, self.text_len, self.taken)  # fmt: skip

    def __len__(self) -> int:
        return len(self.taken)

    def _value(self, j: int) -> Any:
        return self.vals[j if self.rows is None else int(self.rows[j])]

    def take(self, rows: np.ndarray) -> _ScannedRows:
        """The rows at positions ``rows``, as read."""
        out = object.__new__(_ScannedRows)
        out.vals, out.rows = self.vals, rows if self.rows is None else self.rows[rows]
        out.schema, out.buf, out.field = self.schema, self.buf, self.field
        # In the layout the kernels were compiled for (an index along the second axis is not).
        out.kind = np.ascontiguousarray(self.kind[:, rows])
        out.num = np.ascontiguousarray(self.num[:, rows])
        out.whole = np.ascontiguousarray(self.whole[:, rows])
        out.text_start = np.ascontiguousarray(self.text_start[:, rows])
        out.text_len = np.ascontiguousarray(self.text_len[:, rows])
        out.taken = self.taken[rows]
        return out

    def column(self, field: str) -> list[Any]:
        """The values of a field read as msgspec gives them (the event ids, for their hashes)."""
        f = self.field[field]
        kind = self.kind[f]
        out = np.full(len(kind), _MISSING, dtype=object)
        for code, value in ((_json_kernels.NULL, None), (_json_kernels.TRUE, True), (_json_kernels.FALSE, False)):
            out[kind == code] = value
        for code, values in ((_json_kernels.INT, self.whole[f]), (_json_kernels.FLOAT, self.num[f])):
            rows = kind == code
            out[rows] = values[rows].tolist()
        rows = np.flatnonzero(kind == _json_kernels.STRING)
        buf, at, n = self.buf, self.text_start[f, rows].tolist(), self.text_len[f, rows].tolist()
        out[rows] = [buf[a : a + k].tobytes().decode("utf-8") for a, k in zip(at, n, strict=True)]
        left = np.flatnonzero(~self.taken)
        if len(left):  # the values the scanner left, as msgspec reads them
            read = _decode_structs([self._value(j) for j in left.tolist()], self.schema).column(field)
            for j, value in zip(left.tolist(), read, strict=True):
                out[j] = value  # one by one: a list (an id that is an array) is one element
        return out.tolist()

    def event(self, j: int) -> object:
        return _decode_structs([self._value(j)], self.schema).event(0)

    def times(self, schema: EventSchema) -> tuple[np.ndarray, np.ndarray]:
        f = self.field[schema.time_field]
        kind = self.kind[f]
        ms, ok = np.empty(len(kind), dtype=np.int64), np.empty(len(kind), dtype=bool)
        _time_kernels.parse_canonical(self.buf, self.text_start[f], self.text_len[f], ms, ok)
        is_str = kind == _json_kernels.STRING
        ok &= is_str
        other = np.flatnonzero(is_str & ~ok)
        if len(other):  # other RFC 3339 shapes (no milliseconds, another offset): as _iso_times reads them
            at, n = self.text_start[f, other].tolist(), self.text_len[f, other].tolist()
            buf = self.buf
            texts = [buf[a : a + k].tobytes().decode("utf-8") for a, k in zip(at, n, strict=True)]
            ms[other], ok[other] = _times_one_by_one(
                texts, None, range(len(texts)), np.zeros(len(texts), dtype=np.int64), np.zeros(len(texts), dtype=bool)
            )
        is_int = kind == _json_kernels.INT
        if is_int.any():
            ms[is_int] = self.whole[f, is_int]
            ok |= is_int
        return ms, ok

    def _names(self, field: str, table: _StringIds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(what the table makes of each row's text, rows with a string, rows with an integer)``
        of a field whose integers stand for their decimal text (keys, SKUs): an integer is written
        as ``str(n)`` writes it, but for ``-0``, which the rules read."""
        f = self.field[field]
        kind, length = self.kind[f], self.text_len[f]
        is_str = kind == _json_kernels.STRING
        is_int = (kind == _json_kernels.INT) & ~((self.whole[f] == 0) & (length == 2))
        return table.lookup(self.buf, self.text_start[f], length, is_str | is_int), is_str, is_int

    def keys(self, key_fields: tuple[str, ...]) -> tuple[list[Any], np.ndarray]:
        ok = np.ones(len(self), dtype=bool)
        parts = []
        for name in key_fields:
            key, is_str, is_int = self._names(name, _KEY_IDS)
            ok &= (is_str & (self.text_len[self.field[name]] > 0)) | is_int  # an empty key is for the rules
            parts.append(key)
        if len(parts) == 1:
            return parts[0].tolist(), ok
        return [None if None in t else sum(t, ()) for t in zip(*parts, strict=True)], ok

    def numbers(self, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = self.field[field]
        kind = self.kind[f]
        is_number = (kind == _json_kernels.INT) | (kind == _json_kernels.FLOAT)
        absent = (kind == _json_kernels.ABSENT) | (kind == _json_kernels.NULL)
        return np.where(is_number, self.num[f], 0.0), is_number, absent

    def sku_hashes(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        hashes, is_str, is_int = self._names(field, _SKU_IDS)
        kind = self.kind[self.field[field]]
        return hashes, is_str | is_int | (kind == _json_kernels.ABSENT) | (kind == _json_kernels.NULL)


def _scannable(schema: EventSchema) -> bool:
    """Whether :class:`_ScannedRows` reads events of this schema (its columns are those of a
    sale or a value series, with the automatic time format)."""
    return not (schema.nested_fields or schema.count_field is not None or schema.unpriced
                or time_parser(schema.time_format) is not None)  # fmt: skip


def _scan(vals: list[Any], schema: EventSchema, lengths: np.ndarray | None = None) -> _ScannedRows | None:
    """The batch's values (of ``lengths``, when known) read by the scanner; None when they are
    not all bytes-like."""
    try:
        blob = b"".join(vals)
        if lengths is None:
            lengths = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
    except TypeError:  # a str value: msgspec reads it
        return None
    if int(lengths.sum()) != len(blob):  # a buffer of items wider than a byte
        return None
    starts = np.zeros(len(vals), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return _ScannedRows(vals, schema, np.frombuffer(blob, dtype=np.uint8), starts, lengths)


# The scanner leaves a value it cannot read (not JSON, a nested object, a \\u escape) to msgspec.
# A few such values (the odd malformed record) are read one by one by the rules, with the
# scanned rows; more go through msgspec as a batch of their own, merged back after.
_LEFT_ONE_BY_ONE = 64


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
    lengths: np.ndarray | None = None
    try:  # len(None) raises too
        lengths = np.fromiter(map(len, vals), dtype=np.int64, count=n)
        clean = int(lengths.max()) <= max_bytes
    except TypeError:  # a value without len(): handled one by one below
        clean = False
    if not clean:
        lengths = None
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
        lengths = None
    with _gc_paused():
        rows: _Rows
        scanned = _scan(vals, schema, lengths) if _scannable(schema) else None
        left_n = 0 if scanned is None else len(scanned) - int(np.count_nonzero(scanned.taken))
        if scanned is not None and left_n > _LEFT_ONE_BY_ONE:
            # The values the scanner left (a nested object, a \\u escape, bytes that are not
            # UTF-8, not JSON) go the way they went before it, as a batch of their own.
            at = np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
            taken, left = np.flatnonzero(scanned.taken), np.flatnonzero(~scanned.taken)
            structs = _decode_structs([vals[j] for j in left.tolist()], schema)
            batch = EventBatch.merged(
                _columns(scanned.take(taken), at[taken].tolist(), schema, rejected),
                _columns(structs, at[left].tolist(), schema, rejected),
            )
            rejected.sort(key=lambda r: r.index)
        else:
            if scanned is not None:
                rows = scanned
            elif schema.nested_fields:
                rows = _DictRows(_with_nested(list(map(_parse_one, vals)), schema.nested_fields))
            else:
                rows = _decode_structs(vals, schema)
            batch = _columns(rows, positions, schema, rejected)
            del rows
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
        batch = _columns(_DictRows(objs), None, schema, rejected)
    return batch, rejected
