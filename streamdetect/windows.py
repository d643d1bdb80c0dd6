"""Event-time windows per key, with a watermark, lateness and idle keys.

:class:`WindowAggregator` accumulates valid events into tumbling (or hopping) windows per key and
closes them when the watermark -- the largest event time seen minus the allowed lateness -- passes
their end. Windows close in *rounds*: one round is every key's window that starts at the same
instant. Rounds come out in event-time order, whatever the size of the input batches, so everything
downstream (features, model, threshold) sees the same sequence in a replay and in the Kafka
service.

A key that has been active and then goes silent keeps producing windows with zero sales until
``idle_timeout`` has passed since its last sale: a store that stops selling is what users most
want to see. Keys without events for ``key_ttl`` are evicted, which bounds the state by the number
of recently active keys.

Aggregates per window: event count, revenue, max ticket, units, approximate distinct SKUs (linear
counting on a 1024-bit bitmap: exact but for a collision or two up to a few dozen SKUs, within
a few percent up to thousands), and the sums and sums of squares of log ticket amounts and log
units per sale (so features can compare the window's tickets and baskets with the key's usual
distributions). Returns (cancelled lines, refunds: see :mod:`streamdetect.events`) are counted
apart: a window's ``returns`` and ``refunds`` (their summed amount); they are not sales, so they
add nothing to the other aggregates.

Examples
--------
>>> import numpy as np
>>> from streamdetect.config import WindowConfig
>>> agg = WindowAggregator(WindowConfig(size=60, allowed_lateness=0, idle_timeout=180))
>>> ts = np.array([0, 30_000, 70_000, 250_000], dtype=np.int64)
>>> late = agg.add(ts, [("a",), ("a",), ("a",), ("b",)], amount=np.array([10.0, 5.0, 8.0, 1.0]),
...                quantity=np.ones(4), sku_hash=np.arange(4, dtype=np.uint64))
>>> late.tolist()
[]
>>> [(int(r.start_ms), r.count.tolist()) for r in agg.pop_closed()]
[(0, [2.0]), (60000, [1.0]), (120000, [0.0]), (180000, [0.0])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from streamdetect._window_kernels import accumulate, close_rounds
from streamdetect.config import WindowConfig

__all__ = [
    "SKETCH_BITS", "ClosedRound", "ClosedRounds", "KeyIndex", "WindowAggregator", "estimate_distinct", "sku_bits",
]  # fmt: skip

# A 64-bit bitmap (the first design) lost a SKU to a collision in one window of 64 with two
# SKUs, and its estimate of 16 SKUs was off by 3 or more in one window of 80: enough for a
# distinct-SKU feature to page on noise. 16 words cost the same per event.
_WORDS = 16
SKETCH_BITS = 64 * _WORDS  # the distinct-SKU bitmap's size


def estimate_distinct(bits: np.ndarray) -> np.ndarray:
    """Linear-counting estimate of distinct SKUs from bitmaps of ``_WORDS`` 64-bit words (one row each).

    >>> rows = np.zeros((3, _WORDS), dtype=np.uint64); rows[1, 0] = 1; rows[2, :2] = [1, 3]
    >>> estimate_distinct(rows).round(2).tolist()
    [0.0, 1.0, 3.0]
    """
    ones = np.bitwise_count(bits.astype(np.uint64)).sum(axis=-1).astype(np.float64)
    zeros = np.maximum(SKETCH_BITS - ones, 0.5)  # a saturated bitmap means "about 7,800 or more"
    return SKETCH_BITS * np.log(SKETCH_BITS / zeros)


def sku_bits(sku_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bitmap word and the bit within it of each SKU hash."""
    position = np.asarray(sku_hash, dtype=np.uint64) % np.uint64(SKETCH_BITS)
    return (position >> np.uint64(6)).astype(np.intp), np.left_shift(np.uint64(1), position & np.uint64(63))


class KeyIndex:
    """Dense integer ids for key tuples, reusing the ids of evicted keys.

    >>> idx = KeyIndex()
    >>> idx.ids([("a",), ("b",), ("a",)]).tolist()
    [0, 1, 0]
    >>> idx.evict([0]); idx.ids([("c",)]).tolist()
    [0]
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, ...], int] = {}
        self.keys: list[tuple[str, ...] | None] = []
        self._free: list[int] = []
        # Each key's time zone (an index into FeatureExtractor's zones), once a rule is set.
        self._zone_of: Callable[[tuple[str, ...]], int] | None = None
        self.zones = np.zeros(0, dtype=np.int64)

    def use_zones(self, zone_of: Callable[[tuple[str, ...]], int]) -> None:
        """Give every key, held and to come, the time zone ``zone_of`` assigns it (``zones[id]``);
        an id freed and reused takes its new key's.

        >>> idx = KeyIndex(); idx.ids([("paris",)]).tolist()
        [0]
        >>> idx.use_zones(lambda key: 1 if key[0] == "tokyo" else 0); idx.evict([0])
        >>> idx.ids([("tokyo",), ("oslo",)]).tolist(), idx.zones[:2].tolist()
        ([0, 1], [1, 0])
        """
        self._zone_of = zone_of
        self.zones = np.array([zone_of(k) if k is not None else 0 for k in self.keys], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def capacity(self) -> int:
        return len(self.keys)

    def ids(self, keys: Sequence[tuple[str, ...]]) -> np.ndarray:
        lookup = self._ids
        found = list(map(lookup.get, keys))
        if None in found:
            for i in [i for i, kid in enumerate(found) if kid is None]:
                kid = lookup.get(keys[i])  # a key new in this batch may come again in it
                found[i] = kid if kid is not None else self._assign(keys[i])
        return np.array(found, dtype=np.int64)

    def known(self, keys: Sequence[tuple[str, ...]]) -> np.ndarray:
        """Whether each key has an id already (without assigning any)."""
        return np.fromiter(map(self._ids.__contains__, keys), dtype=bool, count=len(keys))

    def _assign(self, key: tuple[str, ...]) -> int:
        if self._free:
            kid = self._free.pop()
            self.keys[kid] = key
        else:
            kid = len(self.keys)
            self.keys.append(key)
        self._ids[key] = kid
        if self._zone_of is not None:
            if kid >= len(self.zones):
                self.zones = np.concatenate([self.zones, np.zeros(max(len(self.zones), 16), dtype=np.int64)])
            self.zones[kid] = self._zone_of(key)
        return kid

    def evict(self, ids: Sequence[int] | np.ndarray) -> None:
        for kid in ids:
            key = self.keys[int(kid)]
            if key is not None:
                del self._ids[key]
                self.keys[int(kid)] = None
                self._free.append(int(kid))

    def to_state(self) -> dict[str, Any]:
        return {"keys": [list(k) if k is not None else None for k in self.keys], "free": list(self._free)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KeyIndex:
        idx = cls()
        idx.keys = [tuple(k) if k is not None else None for k in state["keys"]]
        idx._ids = {k: i for i, k in enumerate(idx.keys) if k is not None}
        idx._free = [int(i) for i in state["free"]]
        return idx


@dataclass(slots=True)
class ClosedRound:
    """Every key's window starting at ``start_ms`` (columnar, one row per key)."""

    start_ms: int
    end_ms: int
    key_id: np.ndarray  # int64, sorted
    count: np.ndarray
    revenue: np.ndarray
    max_ticket: np.ndarray
    units: np.ndarray
    distinct_skus: np.ndarray
    log_ticket_sum: np.ndarray
    log_ticket_sq_sum: np.ndarray
    last_event_ms: np.ndarray  # int64; the window start for zero-sales windows
    # Sums of log1p(units per sale) and of its square (a basket-size distribution, as the tickets').
    log_units_sum: np.ndarray
    log_units_sq_sum: np.ndarray
    # Returns in the window and their summed amount (None: the round's source counts none).
    returns: np.ndarray | None = None
    refunds: np.ndarray | None = None
    # The log ratio of the window's sale farthest from its SKU's usual unit price to that price
    # (0 where no sale had a trusted reference; None: the round's source reads no prices).
    price_dev: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.key_id)


@dataclass
class ClosedRounds:
    """Consecutive closed rounds as one set of rows: round ``r`` starts at ``starts[r]`` and is rows
    ``offsets[r]:offsets[r + 1]`` of the other arrays (as :class:`ClosedRound`'s)."""

    starts: np.ndarray
    size_ms: int
    offsets: np.ndarray
    key_id: np.ndarray
    count: np.ndarray
    revenue: np.ndarray
    max_ticket: np.ndarray
    units: np.ndarray
    distinct_skus: np.ndarray
    log_ticket_sum: np.ndarray
    log_ticket_sq_sum: np.ndarray
    last_event_ms: np.ndarray
    log_units_sum: np.ndarray
    log_units_sq_sum: np.ndarray
    returns: np.ndarray
    refunds: np.ndarray
    price_dev: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def round(self, r: int) -> ClosedRound:
        lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
        start = int(self.starts[r])
        rows: list[Any] = [None if (a := getattr(self, name)) is None else a[lo:hi] for name in _ROUND_ROWS]
        return ClosedRound(start, start + self.size_ms, *rows)

    def round_of(self, rows: np.ndarray) -> np.ndarray:
        """The round of each row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1


# ClosedRound's row arrays, in its order (ClosedRounds holds the same, for every round at once).
_ROUND_ROWS = tuple(f.name for f in fields(ClosedRound) if f.name not in ("start_ms", "end_ms"))
_NO_TIME = int(np.iinfo(np.int64).min)  # before any event time
_FIELDS = (
    "count", "revenue", "max_ticket", "units",
    "log_ticket_sum", "log_ticket_sq_sum", "log_units_sum", "log_units_sq_sum", "returns", "refunds",
    "price_up", "price_down",
)
# Per-field grid 2^-k of the fixed-point values: sums stay exact up to 2^(53-k) per window, i.e.
# 1.4e11 of revenue or units at a resolution of 1.5e-5, and 3e7 / 5e8 of log sums (millions of
# events) at 4e-9 / 6e-8.
_FIXED_POINT = np.array(
    [1.0, 2.0**16, 2.0**16, 2.0**16, 2.0**28, 2.0**24, 2.0**28, 2.0**24, 1.0, 2.0**16, 2.0**28, 2.0**28]
)
# Maxima, not sums: the largest ticket, and the largest price deviation each way.
_MAXIMA = tuple(_FIELDS.index(name) for name in ("max_ticket", "price_up", "price_down"))
_SUMMED = tuple(i for i in range(len(_FIELDS)) if i not in _MAXIMA)
_TICKET_MAXIMUM = _MAXIMA[:1]  # all a batch without prices takes the maximum of (the others stay 0)
_FIRST_RETURN = _FIELDS.index("returns")  # the returns' fields come last: the sales' are before them
_SALES_SUMMED = tuple(i for i in _SUMMED if i < _FIRST_RETURN)  # all a batch without returns adds to


class _OpenWindows:
    """Accumulators of the open windows in flat arrays indexed by slot (vectorised updates)."""

    def __init__(self) -> None:
        # start -> {key id: slot}, in the order the windows opened: a round closes with one pop.
        self.by_start: dict[int, dict[int, int]] = {}
        self.key_of_slot = np.zeros(0, dtype=np.int64)
        self.values = np.zeros((len(_FIELDS), 0))
        self.bits = np.zeros((0, _WORDS), dtype=np.uint64)
        self.last_ms = np.zeros(0, dtype=np.int64)
        self.free: list[int] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _grow(self, needed: int) -> None:
        cap = len(self.bits)
        if len(self.free) >= needed:
            return
        new_cap = max(64, 2 * cap, cap + needed)
        self.values = np.concatenate([self.values, np.zeros((len(_FIELDS), new_cap - cap))], axis=1)
        self.bits = np.concatenate([self.bits, np.zeros((new_cap - cap, _WORDS), dtype=np.uint64)])
        self.last_ms = np.concatenate([self.last_ms, np.zeros(new_cap - cap, dtype=np.int64)])
        self.key_of_slot = np.concatenate([self.key_of_slot, np.zeros(new_cap - cap, dtype=np.int64)])
        self.free.extend(range(new_cap - 1, cap - 1, -1))

    def slots(self, key_ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Slot of each of the distinct (key, start) pairs, opening the windows that do not exist yet.

        Looked up one start at a time, in plain lists (a batch has many windows but few starts);
        the windows a start gains join it in the order of their pairs.
        """
        n = len(key_ids)
        self._grow(n)
        order = np.argsort(starts, kind="stable")
        ordered_starts = starts[order]
        bounds = [0, *(np.flatnonzero(ordered_starts[1:] != ordered_starts[:-1]) + 1).tolist(), n]
        keys = key_ids[order].tolist()
        found: list[int] = [-1] * n
        new: list[int] = []  # positions (in start order) whose window opens here
        by_start, free = self.by_start, self.free
        for start, a, b in zip(ordered_starts[bounds[:-1]].tolist(), bounds[:-1], bounds[1:], strict=True):
            inner = by_start.get(start)
            if inner is None:
                inner = by_start[start] = {}
                fresh: Iterable[int] = range(a, b)
            else:
                get = inner.get
                for p in range(a, b):
                    slot = get(keys[p])
                    if slot is not None:
                        found[p] = slot
                fresh = [p for p in range(a, b) if found[p] < 0]
            for p in fresh:
                found[p] = slot = free.pop()
                inner[keys[p]] = slot
                new.append(p)
        out = np.empty(n, dtype=np.int64)
        out[order] = found
        if new:
            self._count += len(new)
            opened = np.array([found[p] for p in new], dtype=np.int64)
            self.key_of_slot[opened] = np.array([keys[p] for p in new], dtype=np.int64)
            self.values[:, opened] = 0.0
            self.values[2, opened] = -np.inf  # max ticket
            self.bits[opened] = 0
            self.last_ms[opened] = _NO_TIME
        return out

    def pop_start(self, start: int) -> np.ndarray:
        slots = list(self.by_start.pop(start, {}).values())
        self.free.extend(slots)
        self._count -= len(slots)
        return np.array(slots, dtype=np.int64)

    def min_start(self) -> int | None:
        return min(self.by_start) if self.by_start else None

    def max_start(self) -> int | None:
        return max(self.by_start) if self.by_start else None

    def open_slots(self) -> list[int]:
        return [slot for inner in self.by_start.values() for slot in inner.values()]

    def to_state(self) -> dict[str, Any]:
        windows = []
        pairs = sorted((kid, start, slot) for start, inner in self.by_start.items() for kid, slot in inner.items())
        for kid, start, slot in pairs:
            windows.append(
                [kid, start, *self.values[:, slot].tolist(), *self.bits[slot].tolist(), int(self.last_ms[slot])]
            )
        return {"windows": windows}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _OpenWindows:
        ow = cls()
        rows = state["windows"]
        if rows:
            kids = np.array([r[0] for r in rows], dtype=np.int64)
            starts = np.array([r[1] for r in rows], dtype=np.int64)
            slots = ow.slots(kids, starts)
            # Rows hold the fields and bitmap words of their release. The first release had six
            # fields and one word (its bits land in word 0, where they count the same SKUs); later
            # ones add fields at the end (a window saved before returns were counted has none).
            n, words = (6, 1) if len(rows[0]) == 10 else (len(rows[0]) - 3 - _WORDS, _WORDS)
            ow.values[:n, slots] = np.array([r[2 : 2 + n] for r in rows], dtype=np.float64).T
            ow.bits[slots, :words] = np.array([r[2 + n : 2 + n + words] for r in rows], dtype=np.uint64)
            ow.last_ms[slots] = np.array([r[2 + n + words] for r in rows], dtype=np.int64)
        return ow


class WindowAggregator:
    """Per-key event-time windows closed by a watermark; see the module docstring."""

    def __init__(self, config: WindowConfig | None = None) -> None:
        self.config = config or WindowConfig()
        self.keys = KeyIndex()
        self.max_event_ms: int | None = None  # the stream's clock: its newest event time, or later (advance)
        self.newest_event_ms: int | None = None  # the newest event time seen
        self.next_start: int | None = None  # start of the next round to close
        self.late_events = 0
        self._open = _OpenWindows()
        # Per key: end of the last window that had sales (0 = none yet) and the last event time.
        self._last_data_end = np.zeros(0, dtype=np.int64)
        self._last_event = np.zeros(0, dtype=np.int64)
        self.evicted: list[int] = []  # key ids evicted since the caller last cleared this list
        # ... and, in the same order, the keys they had and the watermark at which they went
        self.evicted_keys: list[tuple[tuple[str, ...], int]] = []

    # ------------------------------------------------------------------ properties
    @property
    def watermark_ms(self) -> int | None:
        if self.max_event_ms is None:
            return None
        return self.max_event_ms - self.config.lateness_ms

    @property
    def open_windows(self) -> int:
        return len(self._open)

    @property
    def active_keys(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------------ input
    def add(
        self,
        ts_ms: np.ndarray,
        keys: Sequence[tuple[str, ...]],
        *,
        amount: np.ndarray,
        quantity: np.ndarray,
        sku_hash: np.ndarray,
        count: np.ndarray | None = None,
        key_ids: np.ndarray | None = None,
        is_return: np.ndarray | None = None,
        price_dev: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add valid events (in arrival order); return the positions of the late ones.

        ``count`` makes each event that many sales with ``amount`` their total (a count series);
        their tickets count as that many tickets of the mean amount. ``key_ids`` are the keys' ids
        (``self.keys.ids(keys)``) when the caller has looked them up already. Rows marked in
        ``is_return`` are returns of ``amount`` (magnitudes): counted apart, not as sales.
        ``price_dev`` is each sale's log ratio to its SKU's usual unit price (0: none known); a
        window keeps the largest each way.

        An event is late when every window it belongs to had already closed at its arrival, by
        the watermark of the events before it (so the verdict does not depend on batching).
        """
        n = len(ts_ms)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        cfg = self.config
        size, hop, lateness = cfg.size_ms, cfg.hop_ms, cfg.lateness_ms
        ts = np.asarray(ts_ms, dtype=np.int64)

        # Watermark in force when each event arrived: running max of the events before it.
        before = np.empty(n, dtype=np.int64)
        before[0] = self.max_event_ms if self.max_event_ms is not None else _NO_TIME // 2
        if n > 1:
            np.maximum.accumulate(ts[:-1], out=before[1:])
            np.maximum(before[1:], before[0], out=before[1:])
        watermark = before - lateness
        self.max_event_ms = int(max(before[0], ts.max()))
        self.newest_event_ms = int(max(self.newest_event_ms or ts.max(), ts.max()))

        if key_ids is None:
            key_ids = self.keys.ids(keys)
        self._ensure_key_capacity()

        replicas = size // hop
        last_start = (ts // hop) * hop
        floor_start = self.next_start if self.next_start is not None else _NO_TIME
        accepted = np.zeros(n, dtype=bool)
        ticket = np.where(amount > 0, amount, 0.0)
        # One sale per event, or `count` of them at their mean ticket (the same values for one sale).
        sales = np.ones(n) if count is None else np.asarray(count, dtype=np.float64)
        mean_ticket = ticket / np.maximum(sales, 1.0)
        log_ticket = np.log1p(mean_ticket)
        log_sum = sales * log_ticket
        log_units = np.log1p(np.maximum(quantity, 0.0) / np.maximum(sales, 1.0))
        log_units_sum = sales * log_units
        returned = np.zeros(n) if is_return is None else np.asarray(is_return, dtype=np.float64)
        dev = np.zeros(n) if price_dev is None else np.asarray(price_dev, dtype=np.float64)
        # One row per event, its fields side by side: what the accumulation kernel reads.
        per_event = np.stack([
            sales, ticket, mean_ticket, quantity,
            log_sum, log_sum * log_ticket, log_units_sum, log_units_sum * log_units,
            returned, returned * np.abs(amount), np.maximum(dev, 0.0), np.maximum(-dev, 0.0),
        ], axis=1)
        word, bit = sku_bits(sku_hash)
        summed = _SALES_SUMMED if is_return is None else _SUMMED  # the returns' sums stay 0 without any
        maxed = _TICKET_MAXIMUM if price_dev is None else _MAXIMA
        if is_return is not None:
            # A return is not a sale: it leaves the sales' sums, maximum and SKUs alone.
            per_event[:, :_FIRST_RETURN] *= (1.0 - returned)[:, None]
            bit = np.where(is_return, np.uint64(0), bit)
        # Fixed-point values: sums of multiples of 2^-k are exact in float64 (below 2^(53-k)), so a
        # window's sums, and everything downstream, do not depend on how the input was batched.
        per_event = np.round(per_event * _FIXED_POINT) / _FIXED_POINT
        for j in range(replicas):
            start = last_start - j * hop
            ok = (start + size > watermark) & (start >= floor_start)
            if not ok.any():
                continue
            accepted |= ok
            self._accumulate(key_ids[ok], start[ok], per_event[ok], word[ok], bit[ok], ts[ok], summed, maxed)

        late = np.flatnonzero(~accepted)
        self.late_events += len(late)
        if len(late) < n:
            ok_ids = key_ids[accepted]
            np.maximum.at(self._last_event, ok_ids, ts[accepted])
        return late

    def _accumulate(
        self,
        key_ids: np.ndarray,
        starts: np.ndarray,
        per_event: np.ndarray,
        word: np.ndarray,
        bit: np.ndarray,
        ts: np.ndarray,
        summed: tuple[int, ...] = _SUMMED,
        maxed: tuple[int, ...] = _MAXIMA,
    ) -> None:
        # The distinct windows first (their slots are looked up once each), then every event into its own.
        code = key_ids * (1 << 31) + (starts // self.config.hop_ms - (starts.min() // self.config.hop_ms))
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        slots = self._open.slots(key_ids[first], starts[first])
        accumulate(
            slots[inverse], per_event, word, bit, ts,
            np.array(summed, dtype=np.int64), np.array(maxed, dtype=np.int64),
            self._open.values, self._open.bits, self._open.last_ms,
        )  # fmt: skip

    def _ensure_key_capacity(self) -> None:
        cap = self.keys.capacity
        if len(self._last_data_end) < cap:
            grow = cap - len(self._last_data_end)
            self._last_data_end = np.concatenate([self._last_data_end, np.zeros(grow, dtype=np.int64)])
            self._last_event = np.concatenate(
                [self._last_event, np.full(grow, _NO_TIME // 2, dtype=np.int64)]
            )

    # ------------------------------------------------------------------ output
    def advance(self, clock_ms: int) -> None:
        """The stream's clock reads ``clock_ms`` though no event says so (an idle partition whose
        time goes on): the watermark follows, and :meth:`pop_closed` closes what it passes.
        Nothing happens before the first event or to a clock that would go back.

        >>> agg = WindowAggregator()
        >>> late = agg.add(np.array([30_000]), [("s",)], amount=np.ones(1), quantity=np.ones(1),
        ...                sku_hash=np.zeros(1, dtype=np.uint64))
        >>> [r.start_ms for r in agg.pop_closed()]
        []
        >>> agg.advance(60_000 + 120_000)  # the window's end plus the allowed lateness
        >>> [r.start_ms for r in agg.pop_closed()], agg.newest_event_ms
        ([0], 30000)
        """
        if self.max_event_ms is not None and clock_ms > self.max_event_ms:
            self.max_event_ms = int(clock_ms)

    def pop_closed(self, *, flush: bool = False) -> Iterator[ClosedRound]:
        """Yield the rounds whose windows the watermark has closed, oldest first.

        With ``flush=True`` (end of input) every open window is closed.
        """
        closed = self.close_rounds(flush=flush)
        if closed is not None:
            yield from (closed.round(r) for r in range(len(closed)))

    def close_rounds(self, *, flush: bool = False) -> ClosedRounds | None:
        """The rounds whose windows the watermark has closed, oldest first, as one set of rows
        (None: none); :meth:`pop_closed` one by one.

        Which rounds close is decided here, start by start (a round closes if it has windows or
        some key is idle, else the clock skips to the next open window); their rows come from one
        compiled call (``_window_kernels.close_rounds``), which replays the keys' last data ends
        and the evictions in the same order.
        """
        if self.max_event_ms is None:
            return None
        cfg = self.config
        size, hop = cfg.size_ms, cfg.hop_ms
        if self.next_start is None:
            first = self._open.min_start()
            if first is None:
                return None
            # Start at the earliest window that can still receive on-time events, so that the
            # first round does not depend on which events happened to come in the first batch.
            earliest_open = (self.max_event_ms - cfg.lateness_ms - size) // hop * hop + hop
            self.next_start = min(first, earliest_open)
        if flush:
            last_open = self._open.max_start()
            limit = (last_open + size) if last_open is not None else self.next_start
        else:
            limit = self.watermark_ms  # type: ignore[assignment]
        idle_ms = cfg.idle_timeout * 1000
        replay = self._last_data_end.copy()  # what close_rounds replays the rounds from
        latest = int(self._last_data_end.max()) if len(self._last_data_end) else 0  # the newest data end
        starts: list[int] = []
        slots: list[np.ndarray] = []
        unsynced = 0  # rounds whose data ends _last_data_end does not hold yet
        evict_before: list[int] = []
        evicted: list[np.ndarray] = []
        while self.next_start + size <= limit:
            start = self.next_start
            end = start + size
            open_slots = self._open.pop_start(start)
            closes = len(open_slots) > 0 or (latest > 0 and end - latest <= round(idle_ms))
            if closes:
                starts.append(start)
                slots.append(open_slots)
                if len(open_slots):
                    latest = end
            if (end // hop) % 64 == 0:  # eviction reads and writes _last_data_end: bring it up to date
                for s, w in zip(starts[unsynced:], slots[unsynced:], strict=True):
                    self._last_data_end[self._open.key_of_slot[w]] = s + size
                unsynced = len(starts)
                stale = self._evict_stale(end)
                if len(stale):
                    evict_before.append(len(starts))
                    evicted.append(stale)
                    latest = int(self._last_data_end.max())
            self.next_start = start + hop
            if closes or (latest > 0 and self.next_start + size - latest <= idle_ms):
                continue
            # Nothing open and no idle key to emit zero windows for: skip to the next data.
            upcoming = self._open.min_start()
            if upcoming is None:
                if flush:
                    break
                upcoming = (limit - size) // hop * hop + hop
            self.next_start = max(self.next_start, upcoming)
        if not starts and not evicted:
            return None
        slot_offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum([len(w) for w in slots], out=slot_offsets[1:])
        evict_offsets = np.zeros(len(evicted) + 1, dtype=np.int64)
        np.cumsum([len(k) for k in evicted], out=evict_offsets[1:])
        no_ids = np.zeros(0, dtype=np.int64)
        offsets, key_id, vals, distinct, last = close_rounds(
            np.array(starts, dtype=np.int64), size, slot_offsets,
            np.concatenate(slots) if slots else no_ids, round(idle_ms),
            self._open.values, self._open.bits, self._open.last_ms, self._open.key_of_slot, replay,
            np.array(evict_before, dtype=np.int64), evict_offsets, np.concatenate(evicted) if evicted else no_ids,
        )  # fmt: skip
        self._last_data_end = replay
        if not starts:
            return None
        return ClosedRounds(
            starts=np.array(starts, dtype=np.int64),
            size_ms=size,
            offsets=offsets,
            key_id=key_id,
            count=vals[0],
            revenue=vals[1],
            max_ticket=vals[2],
            units=vals[3],
            distinct_skus=distinct,
            log_ticket_sum=vals[4],
            log_ticket_sq_sum=vals[5],
            last_event_ms=last,
            log_units_sum=vals[6],
            log_units_sq_sum=vals[7],
            returns=vals[8],
            refunds=vals[9],
            price_dev=np.where(vals[10] >= vals[11], vals[10], -vals[11]),
        )

    def _evict_stale(self, now_ms: int) -> np.ndarray:
        """Evict the keys without events for ``key_ttl`` and without an open window; their ids.
        Only keys with no open window can go; it is a full scan, run every 64 hops."""
        ttl_ms = round(self.config.key_ttl * 1000)
        stale = np.flatnonzero(
            (self._last_event < now_ms - ttl_ms) & np.array([k is not None for k in self.keys.keys], dtype=bool)
        )
        if len(stale) == 0:
            return stale
        open_keys = set(self._open.key_of_slot[self._open.open_slots()].tolist())
        stale = np.array([k for k in stale.tolist() if k not in open_keys], dtype=np.int64)
        if len(stale):
            self.evicted_keys.extend((self.keys.keys[k], now_ms) for k in stale.tolist())  # type: ignore[misc]
            self.keys.evict(stale)
            self._last_data_end[stale] = 0
            self._last_event[stale] = _NO_TIME // 2
            self.evicted.extend(stale.tolist())
        return stale

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "keys": self.keys.to_state(),
            "max_event_ms": self.max_event_ms,
            "newest_event_ms": self.newest_event_ms,
            "next_start": self.next_start,
            "late_events": self.late_events,
            "last_data_end": self._last_data_end.tolist(),
            "last_event": self._last_event.tolist(),
            "open": self._open.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: WindowConfig | None = None) -> WindowAggregator:
        if state.get("version") != 1:
            raise ValueError(f"unsupported window state version {state.get('version')!r}")
        agg = cls(config)
        agg.keys = KeyIndex.from_state(state["keys"])
        agg.max_event_ms = state["max_event_ms"]
        agg.newest_event_ms = state.get("newest_event_ms", agg.max_event_ms)  # older states: no advance
        agg.next_start = state["next_start"]
        agg.late_events = int(state["late_events"])
        agg._last_data_end = np.array(state["last_data_end"], dtype=np.int64)
        agg._last_event = np.array(state["last_event"], dtype=np.int64)
        agg._open = _OpenWindows.from_state(state["open"])
        return agg
