"""Realistic synthetic sales events with labelled anomalies, for tests, benchmarks and the demo.

Each store has its own size (log-uniform peak rate, about 0.4 to 30 sales per minute), opening
hours (physical stores 7-10 h to 19-22 h, some with short Sundays; ``online_share`` of the stores
are 24/7 online channels), a daily profile (opening ramp, lunch and evening peaks), a weekly profile
(weekend up or down), a slow trend and multiplicative day and hour noise (overdispersion: counts
are Poisson around a rate that itself varies). Tickets draw a SKU from the store's catalogue
(Zipf popularity, log-normal prices), a quantity 1-5 (geometric) and a channel.

After ``clean_days`` (the model's training period), anomalies are injected during opening hours,
non-overlapping per store (at least :data:`MIN_GAP_MINUTES` apart), only where at least
:data:`MIN_EXPECTED_EVENTS` sales are expected over the interval, so each one is visible:

==============  ==============================================  ===========================
type            effect                                          ``magnitude``
==============  ==============================================  ===========================
spike           sales rate x3-6 for 10-45 min                   rate factor
drop            sales rate x0.1-0.3 for 15-60 min               rate factor
outage          no sales at all for 10-60 min                   0.0
price_glitch    30-60 % of sales priced x0.01 or x100, 10-40 m  price factor
tiny_tickets    extra tiny tickets (~1 % of a normal price),    total rate factor (3-5)
                total rate x3-5, 10-40 min
level_shift     rate x1.8-2.5 or x0.3-0.45 for 2-5 hours,       rate factor
                then back to normal; the whole interval is
                labelled (its start and its revert are both
                legitimate detections)
==============  ==============================================  ===========================

Anomaly intervals start and end on whole minutes. Events are returned in *arrival* order:
arrival = event time + uniform jitter in ``[0, out_of_order_seconds]``, so an event's time is never
more than ``out_of_order_seconds`` behind the largest event time that arrived before it, except
for the ``late_fraction`` of events delayed beyond ``allowed_lateness`` (they should be rejected
as late). ``malformed_fraction`` adds broken records (not JSON, a missing field, a wrong type, a
bad timestamp, an absurd amount) next to valid events; non-JSON ones are ``bytes``, the others
``dict``. :func:`encode_event` turns either into one JSONL line's bytes.

Everything is drawn from random streams keyed by ``(seed, store, day)``, so the output is the same
byte for byte for a seed, whether built at once (:func:`generate`) or lazily day by day
(:func:`iter_events`).

>>> events, labels = generate(GeneratorConfig(stores=2, days=3, seed=1))
>>> sorted(events[0])
['amount', 'channel', 'currency', 'event_id', 'quantity', 'sku', 'store_id', 'ts', 'unit_price']
>>> all(lab.type in ANOMALY_TYPES and lab.start >= "2026-01-07" for lab in labels)  # clean_days=2
True
>>> [e["event_id"] for e in iter_events(GeneratorConfig(stores=2, days=3, seed=1))][:3] == [
...     e["event_id"] for e in events[:3]]
True
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

__all__ = [
    "ANOMALY_TYPES",
    "MALFORMED_KINDS",
    "MIN_EXPECTED_EVENTS",
    "MIN_GAP_MINUTES",
    "EventStream",
    "GeneratorConfig",
    "Label",
    "encode_event",
    "generate",
    "iter_events",
    "parse_time_ms",
    "read_jsonl",
    "write_jsonl",
]

ANOMALY_TYPES = ("spike", "drop", "outage", "price_glitch", "tiny_tickets", "level_shift")
MALFORMED_KINDS = ("not_json", "missing_field", "wrong_type", "bad_timestamp", "absurd_amount")
CHANNELS = ("store", "web", "app")
MIN_EXPECTED_EVENTS = 30.0  # an anomaly is placed only where this many sales are expected over it
MIN_GAP_MINUTES = 30  # quiet minutes between two anomalies of the same store
# What EventStream.counts counts from the start (plus the malformed kinds, once they occur).
_COUNTED = ("events", "valid", "late", "malformed", "returns")
AMOUNT_ABSENT_FRACTION = 0.1  # share of events without ``amount`` (consumers use quantity x unit_price)

_DURATIONS = {  # minutes, inclusive
    "spike": (10, 45),
    "drop": (15, 60),
    "outage": (10, 60),
    "price_glitch": (10, 40),
    "tiny_tickets": (10, 40),
    "level_shift": (120, 300),
}
_PEAK_RANGE = (0.4, 30.0)  # sales per minute at the daily peak, smallest and biggest store
_RATE_TYPES = ("spike", "drop", "outage", "level_shift")
_MINUTE_MS = 60_000
_DAY_MINUTES = 1440
_DAY_MS = 86_400_000
# Timestamp formats: share of 'Z' strings, '+01:00', '-05:00'; the rest are epoch-millisecond ints.
_TS_MIX = (0.65, 0.15, 0.12)


def parse_time_ms(value: str | int | float) -> int:
    """RFC 3339 string (any offset) or epoch milliseconds -> epoch milliseconds.

    >>> parse_time_ms("2026-01-05T01:00:00+01:00"), parse_time_ms(1767571200000)
    (1767571200000, 1767571200000)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    dt = datetime.fromisoformat(value.replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _format_time(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ") if ms % 1000 == 0 else dt.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class GeneratorConfig:
    """The scenario to generate.

    ``anomalies_per_store_week`` is the mean number of anomalies per store and week after
    ``clean_days``; ``allowed_lateness`` (seconds) is the detector's, used only to make the
    ``late_fraction`` of events really late. ``return_fraction`` of the sales are returned 5
    minutes to 3 hours later: a return event (negative quantity, the same store, SKU, channel and
    unit price) that the detector counts apart from the sales.
    """

    stores: int = 20
    days: int = 14
    seed: int = 0
    start: str = "2026-01-05T00:00:00Z"
    anomalies_per_store_week: float = 2.5
    clean_days: int = 2
    out_of_order_seconds: float = 20.0
    late_fraction: float = 0.0
    malformed_fraction: float = 0.0
    return_fraction: float = 0.0
    allowed_lateness: float = 120.0
    skus_per_store: int = 300
    currency: str = "EUR"
    online_share: float = 0.15

    def __post_init__(self) -> None:
        checks = [
            (self.stores >= 1, "stores must be >= 1"),
            (self.stores <= 999, "stores must be <= 999 (store ids are store-001 ... store-999)"),
            (self.days >= 1, "days must be >= 1"),
            (self.clean_days >= 0, "clean_days must be >= 0"),
            (self.anomalies_per_store_week >= 0, "anomalies_per_store_week must be >= 0"),
            (self.out_of_order_seconds >= 0, "out_of_order_seconds must be >= 0"),
            (0 <= self.late_fraction <= 1, "late_fraction must be in [0, 1]"),
            (0 <= self.malformed_fraction <= 1, "malformed_fraction must be in [0, 1]"),
            (0 <= self.return_fraction <= 1, "return_fraction must be in [0, 1]"),
            (self.allowed_lateness >= 0, "allowed_lateness must be >= 0"),
            (self.skus_per_store >= 1, "skus_per_store must be >= 1"),
            (0 <= self.online_share <= 1, "online_share must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GeneratorConfig: {message}")
        parse_time_ms(self.start)

    @property
    def start_ms(self) -> int:
        return parse_time_ms(self.start)


@dataclass(frozen=True)
class Label:
    """One injected anomaly: ``[start, end)`` on the store ``key``."""

    anomaly_id: str
    type: str
    key: dict[str, str]
    start: str
    end: str
    magnitude: float

    @property
    def start_ms(self) -> int:
        return parse_time_ms(self.start)

    @property
    def end_ms(self) -> int:
        return parse_time_ms(self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # as asdict() would give it

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Label:
        return cls(
            anomaly_id=str(data["anomaly_id"]),
            type=str(data["type"]),
            key={str(k): str(v) for k, v in data["key"].items()},
            start=str(data["start"]),
            end=str(data["end"]),
            magnitude=float(data["magnitude"]),
        )


@dataclass(frozen=True)
class _Anomaly:
    type: str
    start_min: int  # minute of the day
    end_min: int  # exclusive
    magnitude: float
    share: float = 1.0  # price_glitch: share of affected sales


@dataclass
class _Store:
    index: int
    store_id: str
    peak: float
    online: bool
    profile: np.ndarray  # (1440,) weekday daily profile, max 1, 0 when closed
    sunday_profile: np.ndarray
    week: np.ndarray  # (7,) Monday..Sunday factors
    trend: float  # log growth per week
    channel_cdf: np.ndarray
    sku_names: np.ndarray  # str array
    prices: np.ndarray
    sku_cdf: np.ndarray
    qty_p: float

    def day_profile(self, dow: int) -> np.ndarray:
        return self.sunday_profile if dow == 6 else self.profile


def _gauss(h: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((h - center) / width) ** 2)


def _hours() -> np.ndarray:
    return (np.arange(_DAY_MINUTES) + 0.5) / 60.0


def _physical_profile(rng: np.random.Generator, open_h: float, close_h: float) -> np.ndarray:
    h = _hours()
    shape = (
        0.3
        + 0.25 * _gauss(h, 10.0, 1.5)
        + rng.uniform(0.3, 0.8) * _gauss(h, rng.uniform(12.2, 13.0), 1.0)
        + rng.uniform(0.5, 1.0) * _gauss(h, rng.uniform(17.0, 18.8), 1.7)
    )
    ramp = np.clip((h - open_h) / 0.75, 0.35, 1.0) * np.clip((close_h - h) / 0.5, 0.5, 1.0)
    prof = np.where((h >= open_h) & (h < close_h), shape * ramp, 0.0)
    return prof / prof.max()


def _online_profile(rng: np.random.Generator) -> np.ndarray:
    h = _hours()
    night = rng.uniform(0.04, 0.1)
    prof = (
        night
        + 0.3 * _gauss(h, 9.0, 1.5)
        + rng.uniform(0.3, 0.5) * _gauss(h, 12.5, 1.5)
        + _gauss(h, rng.uniform(20.0, 21.5), 2.0)
        + night * _gauss(h, 24.0, 1.5)
    )
    return prof / prof.max()


class EventStream:
    """The scenario of a :class:`GeneratorConfig`: its labels, and its events generated lazily.

    Iterating yields the events in arrival order, one day of all stores at a time; ``labels`` is
    known up front (anomalies are planned from the expected rates, not from the drawn events).
    ``counts`` holds running totals (``events``, ``valid``, ``late``, ``malformed``, and one entry
    per malformed kind) of what has been generated by the current iteration (``events`` counts what
    was yielded). Anomalies never cross midnight (also in 24/7 stores).

    >>> stream = iter_events(GeneratorConfig(stores=1, days=2, seed=3, clean_days=1))
    >>> n = sum(1 for _ in stream)
    >>> n == stream.counts["events"] == stream.counts["valid"] > 100
    True
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        self.config = config or GeneratorConfig()
        self.counts: dict[str, int] = dict.fromkeys(_COUNTED, 0)

    # -- per-store parameters ---------------------------------------------------------------
    @cached_property
    def stores(self) -> list[_Store]:
        cfg = self.config
        # Stratified log-uniform peak rates: every run has tiny and big stores.
        mix_rng = np.random.default_rng([cfg.seed, 9])
        strata = mix_rng.permutation(cfg.stores)
        online_set = set(mix_rng.permutation(cfg.stores)[: round(cfg.stores * cfg.online_share)].tolist())
        catalog_rng = np.random.default_rng([cfg.seed, 3])
        pool = max(2000, 4 * cfg.skus_per_store)
        pool_prices = np.exp(catalog_rng.normal(np.log(12.0), 0.85, pool))
        pool_names = np.array([f"SKU-{i:05d}" for i in range(pool)])
        stores = []
        for s in range(cfg.stores):
            rng = np.random.default_rng([cfg.seed, 0, s])
            u = (strata[s] + rng.uniform()) / cfg.stores
            peak = float(np.exp(np.log(_PEAK_RANGE[0]) + u * (np.log(_PEAK_RANGE[1]) - np.log(_PEAK_RANGE[0]))))
            online = s in online_set
            if online:
                profile = _online_profile(rng)
                sunday = profile
                weekend = rng.uniform(1.0, 1.3)
                week = np.array([1.0, 0.97, 0.98, 1.02, 1.08, weekend, weekend * rng.uniform(0.95, 1.1)])
                channel_p = np.array([0.0, rng.uniform(0.4, 0.7), 0.0])
                channel_p[2] = 1.0 - channel_p[1]
            else:
                open_h = float(rng.choice([7.0, 8.0, 9.0, 10.0]))
                close_h = float(rng.choice([19.0, 20.0, 21.0, 22.0]))
                profile = _physical_profile(rng, open_h, close_h)
                short_sunday = rng.uniform() < 0.3
                sunday = _physical_profile(rng, 10.0, 18.0) if short_sunday else profile
                weekend = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
                week = np.array([1.0, 0.96, 0.99, 1.03, 1.12, weekend, weekend * rng.uniform(0.7, 0.95)])
                web = rng.uniform(0.02, 0.06)
                app = rng.uniform(0.03, 0.1)
                channel_p = np.array([1.0 - web - app, web, app])
            chosen = rng.choice(pool, size=min(cfg.skus_per_store, pool), replace=False)
            prices = np.maximum(
                np.round(pool_prices[chosen] * rng.uniform(0.95, 1.05, chosen.size) * 2) / 2 - 0.01, 0.49
            )
            popularity = 1.0 / np.arange(1, chosen.size + 1) ** rng.uniform(0.9, 1.2)
            popularity = popularity[rng.permutation(chosen.size)]
            stores.append(
                _Store(
                    index=s,
                    store_id=f"store-{s + 1:03d}",
                    peak=peak,
                    online=online,
                    profile=profile,
                    sunday_profile=sunday,
                    week=week,
                    trend=float(rng.uniform(-0.04, 0.06)),
                    channel_cdf=np.cumsum(channel_p) / channel_p.sum(),
                    sku_names=pool_names[chosen],
                    prices=np.round(prices, 2),
                    sku_cdf=np.cumsum(popularity) / popularity.sum(),
                    qty_p=float(rng.uniform(0.5, 0.7)),
                )
            )
        return stores

    def _day_start_ms(self, day: int) -> int:
        return self.config.start_ms + day * _DAY_MS

    def _dow(self, day: int) -> int:
        return (datetime.fromtimestamp(self._day_start_ms(day) / 1000, tz=UTC).weekday()) % 7

    # -- planning: expected rates and anomalies of one store-day -----------------------------
    def _plan(self, store: _Store, day: int) -> tuple[np.ndarray, list[_Anomaly]]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 2, store.index, day])
        dow = self._dow(day)
        profile = store.day_profile(dow)
        knots = np.exp(rng.normal(0.0, 0.1, 26))
        hourly = np.interp(_hours(), np.arange(26) - 0.5, knots)
        rate = (
            store.peak
            * profile
            * store.week[dow]
            * np.exp(store.trend * day / 7.0)
            * np.exp(rng.normal(0.0, 0.08))
            * hourly
        )
        anomalies: list[_Anomaly] = []
        if day < cfg.clean_days or cfg.anomalies_per_store_week <= 0:
            return rate, anomalies
        wanted = min(int(rng.poisson(cfg.anomalies_per_store_week / 7.0)), 3)
        cum = np.concatenate([[0.0], np.cumsum(rate)])
        open_cum = np.concatenate([[0], np.cumsum(profile <= 0)])
        busy = np.zeros(_DAY_MINUTES + 1, dtype=np.int64)  # cumulative count of taken minutes
        taken = np.zeros(_DAY_MINUTES, dtype=bool)
        for _ in range(wanted):
            kind = ANOMALY_TYPES[int(rng.integers(len(ANOMALY_TYPES)))]
            lo, hi = _DURATIONS[kind]
            for _attempt in range(40):
                dur = int(rng.integers(lo, hi + 1))
                start = int(rng.integers(0, _DAY_MINUTES - dur + 1))
                end = start + dur
                g0, g1 = max(0, start - MIN_GAP_MINUTES), min(_DAY_MINUTES, end + MIN_GAP_MINUTES)
                if (
                    open_cum[end] - open_cum[start] == 0
                    and cum[end] - cum[start] >= MIN_EXPECTED_EVENTS
                    and busy[g1] - busy[g0] == 0
                ):
                    break
            else:
                continue
            share = 1.0
            if kind == "spike":
                magnitude = rng.uniform(3.0, 6.0)
            elif kind == "drop":
                magnitude = rng.uniform(0.1, 0.3)
            elif kind == "outage":
                magnitude = 0.0
            elif kind == "price_glitch":
                magnitude = float(rng.choice([0.01, 100.0]))
                share = rng.uniform(0.3, 0.6)
            elif kind == "tiny_tickets":
                magnitude = rng.uniform(3.0, 5.0)
            else:  # level_shift
                magnitude = rng.uniform(1.8, 2.5) if rng.uniform() < 0.5 else rng.uniform(0.3, 0.45)
            anomalies.append(_Anomaly(kind, start, end, round(float(magnitude), 3), float(share)))
            taken[start:end] = True
            busy[1:] = np.cumsum(taken)
        anomalies.sort(key=lambda a: a.start_min)
        return rate, anomalies

    def _label(self, store: _Store, day: int, j: int, a: _Anomaly) -> Label:
        base = self._day_start_ms(day)
        return Label(
            anomaly_id=f"a{self.config.seed}-{store.index + 1:03d}-{day:03d}-{j}",
            type=a.type,
            key={"store_id": store.store_id},
            start=_format_time(base + a.start_min * _MINUTE_MS),
            end=_format_time(base + a.end_min * _MINUTE_MS),
            magnitude=a.magnitude,
        )

    @cached_property
    def labels(self) -> list[Label]:
        """Every injected anomaly, ordered by start then store."""
        out: list[Label] = []
        for day in range(self.config.days):
            for store in self.stores:
                _, anomalies = self._plan(store, day)
                out.extend(self._label(store, day, j, a) for j, a in enumerate(anomalies))
        out.sort(key=lambda lab: (lab.start_ms, lab.key["store_id"]))
        return out

    # -- drawing the events of one store-day --------------------------------------------------
    def _store_day(self, store: _Store, day: int) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """(arrival_ms, seq, events) of one store-day; ``events`` in event-time order."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1, store.index, day])
        rate, anomalies = self._plan(store, day)
        mod = rate.copy()
        for a in anomalies:
            if a.type in _RATE_TYPES:
                mod[a.start_min : a.end_min] *= a.magnitude
        counts = rng.poisson(mod)
        minute = np.repeat(np.arange(_DAY_MINUTES), counts)
        n = minute.size
        sku = np.minimum(np.searchsorted(store.sku_cdf, rng.random(n), side="right"), store.prices.size - 1)
        qty = np.minimum(rng.geometric(store.qty_p, n), 5)
        price = store.prices[sku]
        for a in anomalies:
            if a.type == "price_glitch":
                hit = (minute >= a.start_min) & (minute < a.end_min) & (rng.random(minute.size) < a.share)
                price = price.copy()
                price[hit] = np.maximum(np.round(price[hit] * a.magnitude, 2), 0.01)
            elif a.type == "tiny_tickets":
                extra = rng.poisson(rate[a.start_min : a.end_min] * (a.magnitude - 1.0))
                x_min = np.repeat(np.arange(a.start_min, a.end_min), extra)
                x_sku = np.minimum(
                    np.searchsorted(store.sku_cdf, rng.random(x_min.size), side="right"), store.prices.size - 1
                )
                x_price = np.maximum(np.round(store.prices[x_sku] * rng.uniform(0.005, 0.02, x_min.size), 2), 0.01)
                minute = np.concatenate([minute, x_min])
                sku = np.concatenate([sku, x_sku])
                qty = np.concatenate([qty, np.ones(x_min.size, dtype=qty.dtype)])
                price = np.concatenate([price, x_price])
        n = minute.size
        ts = self._day_start_ms(day) + minute.astype(np.int64) * _MINUTE_MS + rng.integers(0, _MINUTE_MS, n)
        order = np.argsort(ts, kind="stable")
        ts, sku, qty, price = ts[order], sku[order], qty[order], price[order]
        channel = np.searchsorted(store.channel_cdf, rng.random(n), side="right").clip(0, 2)
        amount = np.round(qty * price, 2)
        absent = rng.random(n) < AMOUNT_ABSENT_FRACTION

        # timestamps: a mix of 'Z', '+01:00', '-05:00' strings and epoch-millisecond ints
        u = rng.random(n)
        c1, c2, c3 = np.cumsum(_TS_MIX)
        ts_obj = np.empty(n, dtype=object)
        dt = ts.astype("datetime64[ms]")
        m = u < c1
        ts_obj[m] = np.datetime_as_string(dt[m], unit="ms", timezone="UTC").tolist()
        for sel, shift, suffix in (
            ((u >= c1) & (u < c2), 3_600_000, "+01:00"),
            ((u >= c2) & (u < c3), -18_000_000, "-05:00"),
        ):
            local = np.datetime_as_string(dt[sel] + np.timedelta64(shift, "ms"), unit="ms")
            ts_obj[sel] = [s + suffix for s in local.tolist()]
        m = u >= c3
        ts_obj[m] = ts[m].tolist()

        arrival = ts + rng.integers(0, round(cfg.out_of_order_seconds * 1000) + 1, n)
        late = rng.random(n) < cfg.late_fraction
        n_late = int(late.sum())
        if n_late:
            jitter_ms = round(cfg.out_of_order_seconds * 1000)
            arrival[late] += (
                round(cfg.allowed_lateness * 1000) + _MINUTE_MS + jitter_ms + rng.integers(1000, 600_000, n_late)
            )

        prefix = f"e{cfg.seed}-{store.index + 1:03d}-{day:03d}-"
        sid, cur = store.store_id, cfg.currency
        names = store.sku_names[sku].tolist()
        channels = [CHANNELS[c] for c in channel.tolist()]
        events: list[Any] = [
            {
                "event_id": f"{prefix}{i:06d}",
                "ts": t,
                "store_id": sid,
                "sku": k,
                "channel": c,
                "quantity": q,
                "unit_price": p,
                "amount": am,
                "currency": cur,
            }
            for i, t, k, c, q, p, am in zip(
                range(n), ts_obj.tolist(), names, channels, qty.tolist(), price.tolist(), amount.tolist(), strict=True
            )
        ]
        for i in np.flatnonzero(absent).tolist():
            del events[i]["amount"]
        seq = np.arange(n, dtype=np.int64)
        self.counts["valid"] += n
        self.counts["late"] += n_late

        n_ret = int(rng.binomial(n, cfg.return_fraction)) if n and cfg.return_fraction > 0 else 0
        if n_ret:
            src = rng.choice(n, n_ret, replace=False)
            delay = rng.integers(5 * _MINUTE_MS, 180 * _MINUTE_MS, n_ret)
            events.extend(
                {
                    "event_id": f"{prefix}r{j:05d}",
                    "ts": int(ts[s]) + d,
                    "store_id": sid,
                    "sku": events[s]["sku"],
                    "channel": events[s]["channel"],
                    "quantity": -events[s]["quantity"],
                    "unit_price": events[s]["unit_price"],
                    "currency": cur,
                }
                for j, (s, d) in enumerate(zip(src.tolist(), delay.tolist(), strict=True))
            )
            arrival = np.concatenate([arrival, arrival[src] + delay])
            seq = np.concatenate([seq, n + np.arange(n_ret, dtype=np.int64)])
            self.counts["valid"] += n_ret
            self.counts["returns"] += n_ret

        n_bad = int(rng.binomial(n, cfg.malformed_fraction)) if n and cfg.malformed_fraction > 0 else 0
        if n_bad:
            src = rng.integers(0, n, n_bad)
            kinds = rng.integers(0, len(MALFORMED_KINDS), n_bad)
            variants = rng.integers(0, 4, n_bad)
            bad = [
                _corrupt(events[s], MALFORMED_KINDS[k], v, f"{prefix}x{j:05d}")
                for j, (s, k, v) in enumerate(zip(src.tolist(), kinds.tolist(), variants.tolist(), strict=True))
            ]
            for k in kinds.tolist():
                self.counts[MALFORMED_KINDS[k]] = self.counts.get(MALFORMED_KINDS[k], 0) + 1
            self.counts["malformed"] += n_bad
            arrival = np.concatenate([arrival, arrival[src]])
            seq = np.concatenate([seq, n + n_ret + np.arange(n_bad, dtype=np.int64)])
            events.extend(bad)
        return arrival, seq, events

    # -- arrival order, day by day -------------------------------------------------------------
    def iter_with_arrival(self) -> Iterator[tuple[int, dict[str, Any] | bytes]]:
        """Yield ``(arrival_ms, event)`` in arrival order (a live demo can pace itself on it)."""
        self.counts = dict.fromkeys(_COUNTED, 0)
        carry_arrival = np.zeros(0, dtype=np.int64)
        carry_store = np.zeros(0, dtype=np.int64)
        carry_seq = np.zeros(0, dtype=np.int64)
        carry_events: list[Any] = []
        for day in range(self.config.days):
            arrivals, stores, seqs = [carry_arrival], [carry_store], [carry_seq]
            events = list(carry_events)
            for store in self.stores:
                a, s, ev = self._store_day(store, day)
                arrivals.append(a)
                stores.append(np.full(a.size, store.index, dtype=np.int64))
                seqs.append(s)
                events.extend(ev)
            arrival = np.concatenate(arrivals)
            store_ix = np.concatenate(stores)
            seq = np.concatenate(seqs)
            order = np.lexsort((seq, store_ix, arrival))
            last = day == self.config.days - 1
            cut = arrival.size if last else int(np.searchsorted(arrival[order], self._day_start_ms(day + 1)))
            now, later = order[:cut], order[cut:]
            for ms, i in zip(arrival[now].tolist(), now.tolist(), strict=True):
                self.counts["events"] += 1
                yield ms, events[i]
            carry_arrival, carry_store, carry_seq = arrival[later], store_ix[later], seq[later]
            carry_events = [events[i] for i in later.tolist()]

    def __iter__(self) -> Iterator[dict[str, Any] | bytes]:
        for _, event in self.iter_with_arrival():
            yield event


def iter_events(config: GeneratorConfig | None = None) -> EventStream:
    """The events of ``config`` lazily, in arrival order, with ``.labels`` alongside.

    >>> stream = iter_events(GeneratorConfig(stores=3, days=4, seed=5))
    >>> first = next(iter(stream))
    >>> first["store_id"].startswith("store-"), len(stream.labels) > 0
    (True, True)
    """
    return EventStream(config)


def generate(config: GeneratorConfig | None = None) -> tuple[list[dict[str, Any] | bytes], list[Label]]:
    """All events of ``config`` in arrival order, and the labelled anomalies.

    Events are ``dict`` (valid or malformed records) or ``bytes`` (malformed, not JSON);
    with the default ``malformed_fraction=0`` they are all ``dict``.

    >>> events, labels = generate(GeneratorConfig(stores=2, days=2, seed=0, clean_days=1))
    >>> all(isinstance(e, dict) for e in events), all(lab.start >= "2026-01-06" for lab in labels)
    (True, True)
    """
    stream = EventStream(config)
    return list(stream), stream.labels


# -- malformed records ------------------------------------------------------------------------
def _corrupt(event: Mapping[str, Any], kind: str, variant: int, event_id: str) -> dict[str, Any] | bytes:
    e = dict(event)
    e["event_id"] = event_id
    if kind == "not_json":
        raw = orjson.dumps(e)
        return [
            raw[: len(raw) // 2],
            b"\xff\xfe" + raw[2:],
            raw.replace(b'":', b"'=", 2),
            b"sale store=" + str(e["store_id"]).encode() + b" qty=1",
        ][variant]
    if kind == "missing_field":
        if variant == 0:
            del e["ts"]
        elif variant == 1:
            del e["store_id"]
        elif variant == 2:
            e.pop("amount", None)
            del e["quantity"]
        else:
            e.pop("amount", None)
            del e["unit_price"]
        return e
    if kind == "wrong_type":
        field_name, value = [
            ("quantity", "two"),
            ("unit_price", "12,99 EUR"),
            ("quantity", [1, 2]),
            ("unit_price", {"value": 3}),
        ][variant]
        e.pop("amount", None)
        e[field_name] = value
        return e
    if kind == "bad_timestamp":
        e["ts"] = ["2026-13-45T25:61:00Z", "yesterday", -5, 32_503_680_000_000][variant]
        return e
    # absurd_amount
    e.pop("amount", None)
    if variant == 0:
        e["quantity"] = 1e9
    elif variant == 1:
        e["unit_price"] = -12.5
    elif variant == 2:
        e["amount"] = 5e12
    else:
        e["unit_price"] = 1e10
    return e


# -- files ------------------------------------------------------------------------------------
def encode_event(event: Mapping[str, Any] | bytes) -> bytes:
    """One JSONL line's content (no newline): ``bytes`` as they are, records via orjson.

    >>> encode_event({"a": 1}), encode_event(b"{oops")
    (b'{"a":1}', b'{oops')
    """
    return event if isinstance(event, bytes) else orjson.dumps(event)


def _open_write(path: str | Path) -> IO[bytes]:
    if str(path) == "-":
        import sys

        return io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "w", closefd=False))
    if str(path).endswith(".gz"):
        return gzip.open(path, "wb")  # type: ignore[return-value]
    return open(path, "wb")


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any] | bytes | Label]) -> int:
    """Write records (dicts, raw bytes or labels) one per line (gzip for ``.gz``, ``-`` is stdout).

    Returns the number of lines written.
    """
    n = 0
    with _open_write(path) as out:
        buf: list[bytes] = []
        for r in records:
            buf.append(r.to_json() if isinstance(r, Label) else encode_event(r))
            n += 1
            if len(buf) >= 8192:
                out.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            out.write(b"\n".join(buf) + b"\n")
    return n


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL (or ``.jsonl.gz``) file of JSON objects, skipping blank lines."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]
