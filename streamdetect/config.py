"""Typed configuration of the detector core.

Every section is a frozen dataclass validated once, in ``__post_init__``: wrong configuration fails
at start-up with a :class:`ConfigError` that names the setting and says what to fix.
:func:`from_mapping` builds a section (and its nested sections) from a plain mapping such as a
parsed TOML table, rejecting unknown keys.

>>> cfg = from_mapping(DetectorConfig, {"windows": {"size": 300}, "threshold": {"method": "quantile"}})
>>> cfg.windows.size, cfg.threshold.method
(300.0, 'quantile')
>>> from_mapping(DetectorConfig, {"windows": {"sise": 300}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamdetect.config.ConfigError: detector.windows: unknown setting 'sise' (known: allowed_lateness, ...
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "DEFAULT_FEATURES",
    "ConfigError",
    "DetectorConfig",
    "DriftConfig",
    "EventSchema",
    "FeatureConfig",
    "ModelConfig",
    "ThresholdConfig",
    "WindowConfig",
    "from_mapping",
]


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message says which one and what to do."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class EventSchema:
    """Where the fields of a sales event live, and what counts as an absurd value.

    ``amount`` defaults to ``quantity * unit_price`` when absent. ``value_field`` switches to an
    already aggregated series: each row is one event whose amount is that value (quantity 1).
    ``count_field`` switches to an aggregated series of sales counts: each row is that many sales
    (a non-negative integer), whose total amount is ``value_field`` when that is set too. A series'
    value is checked against ``max_value`` (a metric in bytes passes 1e9 easily), a sale's amount
    against ``max_amount``.
    ``returns``: a sale whose quantity or amount is negative (a cancelled invoice line, a refund)
    is a *return*: its magnitude is checked as a sale's, and it is counted apart from the sales
    (the window's ``returns`` and ``refunds``) instead of being dead-lettered. Off, such an event
    is ``out_of_range``. ``allow_negative`` (for signed series) lets negative values in as they
    are, and then a negative sale is a sale.
    ``time_format``: ``"auto"`` (RFC 3339 strings, epoch-millisecond numbers), ``"epoch_s"``,
    ``"epoch_ms"``, or a ``strptime`` pattern such as ``"%d/%m/%Y %H:%M"`` (UTC unless it has ``%z``).
    ``unpriced``: sales events without amounts (a till's log of items sold, a transaction list):
    each event is one sale of ``quantity`` (1 when absent), with no amount; the revenue and
    ticket features are left out and alerts report counts, units and SKUs.
    ``numeric_strings`` reads numbers written as JSON strings (``"199.00"``, as some shop
    platforms send money) instead of rejecting them as ``bad_type``.
    A field name with dots (``"payload.amount"``, ``"after.store_id"``) is a path into nested
    objects, as Kafka Connect's JSON envelope and change-data-capture records nest them; a key
    that holds the dots literally wins.
    ``value_offset`` is added to every value of a value series before the features: a signed series
    (temperatures in degrees Celsius, differences) is on an interval scale, while the value
    features compare levels by their ratios; a value still below zero after it reads as zero.
    Alerts report the series' own values.
    ``deduplicate``: an event whose ``event_id_field`` repeats the id of one already accepted while
    its windows may still be open (a producer's retry, a connector re-sending after a restart) is
    refused as ``duplicate``, so that a re-sent burst is not a spike. Events without an id are
    never duplicates. Off by default: only where that field is unique per event (one that repeats
    on an order's lines would refuse all its lines but the first), and it costs about a tenth of
    the decode's time; off, ids are not read.
    """

    time_field: str = "ts"
    time_format: str = "auto"
    key_fields: tuple[str, ...] = ("store_id",)
    sku_field: str = "sku"
    channel_field: str = "channel"
    quantity_field: str = "quantity"
    unit_price_field: str = "unit_price"
    amount_field: str = "amount"
    event_id_field: str = "event_id"
    currency_field: str = "currency"
    value_field: str | None = None
    count_field: str | None = None
    max_event_bytes: int = 65_536
    max_amount: float = 1e9
    max_value: float = 1e15
    max_quantity: float = 1e6
    allow_negative: bool = False
    returns: bool = True
    numeric_strings: bool = False
    unpriced: bool = False
    value_offset: float = 0.0
    deduplicate: bool = False
    min_time_ms: int = 946_684_800_000  # 2000-01-01: anything earlier is a broken clock, not a sale
    max_time_ms: int = 4_102_444_800_000  # 2100-01-01

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_fields", tuple(self.key_fields))
        _require(len(self.key_fields) > 0, "events.key_fields: give at least one key field, e.g. ['store_id']")
        _require(
            self.count_field is None or self.count_field != self.value_field,
            "events.count_field and events.value_field name the same field; a count series with revenue needs two",
        )
        _require(
            self.time_format in ("auto", "epoch_s", "epoch_ms") or "%" in self.time_format,
            f"events.time_format is {self.time_format!r}; use 'auto', 'epoch_s', 'epoch_ms' or a strptime"
            " pattern such as '%d/%m/%Y %H:%M'",
        )
        _require(self.max_event_bytes > 0, "events.max_event_bytes must be > 0")
        _require(self.max_amount > 0, "events.max_amount must be > 0")
        _require(self.max_value > 0, "events.max_value must be > 0")
        _require(self.max_quantity > 0, "events.max_quantity must be > 0")
        for name in self.field_names:
            _require(
                "" not in name.split("."),
                f"events: field name {name!r} has an empty path segment; write nested fields as 'payload.amount'",
            )
        _require(math.isfinite(self.value_offset), "events.value_offset must be a finite number")
        _require(
            self.value_offset == 0.0 or self.value_series,
            "events.value_offset shifts a value series: set events.value_field (without events.count_field),"
            " or leave value_offset at 0",
        )
        _require(self.min_time_ms < self.max_time_ms, "events.min_time_ms must be below events.max_time_ms")
        _require(
            not (self.unpriced and self.aggregated),
            "events.unpriced reads sales events without amounts; an aggregated series (events.value_field or"
            " events.count_field) is not one: set one or the other",
        )

    @property
    def field_names(self) -> tuple[str, ...]:
        """Every field the events are read from."""
        names = (
            self.time_field,
            *self.key_fields,
            self.sku_field,
            self.channel_field,
            self.quantity_field,
            self.unit_price_field,
            self.amount_field,
            self.event_id_field,
            self.currency_field,
            self.value_field,
            self.count_field,
        )
        return tuple(n for n in names if n is not None)

    @property
    def nested_fields(self) -> tuple[str, ...]:
        """The fields that are paths into nested objects (names with dots)."""
        return tuple(n for n in self.field_names if "." in n)

    @property
    def value_series(self) -> bool:
        """Rows are samples of a value series (``value_field`` without ``count_field``): levels, not sales."""
        return self.value_field is not None and self.count_field is None

    @property
    def aggregated(self) -> bool:
        """Rows are samples of an aggregated series (values or sales counts), not single sales."""
        return self.value_field is not None or self.count_field is not None


_MIN_DEFAULT_AHEAD_S = 60.0  # unsynchronised clocks drift by seconds to a minute


@dataclass(frozen=True)
class WindowConfig:
    """Event-time windows per key, in seconds.

    ``size`` is the window length; ``hop`` (when set, a divisor of ``size``) makes them hopping.
    The watermark is the largest event time seen minus ``allowed_lateness``; a window closes when
    the watermark passes its end. A key that falls silent keeps producing zero-sales windows for
    ``idle_timeout``; its baselines are forgotten after ``key_ttl`` without events.

    An event more than ``max_ahead`` ahead of the machine's clock is refused (``bad_timestamp``):
    accepted, it would move the watermark with it and make every other key's on-time events late
    (one sale stamped a few years ahead would dead-letter the rest of its stream). By default that
    is the allowed lateness, the most a clock may run ahead before its events make on-time ones
    late, but at least a minute, for producers whose clocks are not kept in sync.

    At most ``max_keys`` keys are held at once (each costs some 20 KB): an event of a new key
    beyond that is refused (``key_limit``), so that a key field gone wrong (an order id where the
    store was meant) cannot exhaust the memory; keys free their place after ``key_ttl``.
    """

    size: float = 60.0
    hop: float | None = None
    allowed_lateness: float = 120.0
    idle_timeout: float = 3600.0
    key_ttl: float = 8 * 86400.0
    max_ahead: float | None = None
    max_keys: int = 100_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", float(self.size))
        _require(self.size >= 1.0, "windows.size is in seconds and must be >= 1 (default 60)")
        if self.hop is not None:
            object.__setattr__(self, "hop", float(self.hop))
            assert self.hop is not None
            _require(0 < self.hop <= self.size, "windows.hop must be in (0, windows.size]")
            _require(
                (self.size / self.hop).is_integer(),
                f"windows.hop ({self.hop:g}) must divide windows.size ({self.size:g}) exactly",
            )
        _require(self.allowed_lateness >= 0, "windows.allowed_lateness must be >= 0 seconds")
        _require(self.max_keys >= 1, "windows.max_keys must be >= 1 (default 100000)")
        _require(
            self.max_ahead is None or self.max_ahead >= 0,
            "windows.max_ahead must be >= 0 seconds (leave it out for the default: the allowed lateness, at least 60)",
        )
        _require(self.idle_timeout >= 0, "windows.idle_timeout must be >= 0 seconds")
        _require(self.key_ttl >= self.idle_timeout, "windows.key_ttl must be >= windows.idle_timeout")

    @property
    def size_ms(self) -> int:
        return round(self.size * 1000)

    @property
    def hop_ms(self) -> int:
        return round((self.hop or self.size) * 1000)

    @property
    def lateness_ms(self) -> int:
        return round(self.allowed_lateness * 1000)

    @property
    def max_ahead_ms(self) -> int:
        """How far ahead of the machine's clock an event's time may be (see the class docstring).

        >>> WindowConfig().max_ahead_ms, WindowConfig(allowed_lateness=0).max_ahead_ms
        (120000, 60000)
        >>> WindowConfig(max_ahead=5).max_ahead_ms
        5000
        """
        if self.max_ahead is not None:
            return round(self.max_ahead * 1000)
        return round(max(self.allowed_lateness, _MIN_DEFAULT_AHEAD_S) * 1000)


DEFAULT_FEATURES: tuple[str, ...] = (
    "count_z",
    "revenue_ratio",
    "mean_ticket_z",
    "max_ticket_z",
    "units_per_event_z",
    "distinct_skus_z",
    "count_context_z",
    "revenue_context_ratio",
    "count_scan_z",
    "price_ratio",
)


def _require_zone(zone: str, where: str) -> None:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: unknown time zone {zone!r}; give an IANA name such as"
            " 'Europe/Paris' or 'America/New_York' (or 'UTC')"
        ) from None


@dataclass(frozen=True)
class FeatureConfig:
    """Which window features feed the model and how their baselines adapt.

    ``baseline_half_life`` (seconds) sets the key's recent (EWMA) baseline; ``seasonal_rate`` is the
    weight of the newest week in the hour-of-week baseline; ``context_windows`` is how many recent
    windows the short-horizon context features sum over; ``trend_half_life`` (seconds) is the
    half-life of the exponentially weighted sums behind the longer-horizon trend features;
    ``scan_windows`` are the horizons (in windows) ``count_scan_z`` compares counts over: up to
    four hours of 1-minute windows by default, so that a quiet key's change that lasts an
    afternoon gathers the evidence it needs (the longest sets the ring each key keeps, 16 bytes a
    window).
    While a key's ``count_scan_z`` (for its baselines: the same evidence read with a Poisson
    count's tails, ``_feature_kernels.rate_z``) is beyond ``freeze_z`` its baselines do not learn (a drop or a
    level shift would otherwise be absorbed before it is evidence enough), for at most
    ``freeze_limit`` seconds or until the key has been flagged for long (a new normal), and
    neither the mixture nor the threshold learns its windows. A window whose mean ticket is beyond
    ``freeze_z`` (a price glitch) teaches the seasonal revenue baselines its count at the hour's
    usual revenue per sale, not its own revenue.
    ``timezone`` (an IANA name) is where the hours of the day and of the week are counted: the
    seasonal baselines follow the shops' clocks, so a change to or from daylight saving time moves
    their opening hour with them instead of an hour against the learned week. ``timezones`` gives
    keys that keep another clock theirs, by the value of the first key field (a store id to
    ``America/New_York``); the others keep ``timezone``.
    """

    features: tuple[str, ...] = DEFAULT_FEATURES
    baseline_half_life: float = 3600.0
    seasonal_rate: float = 0.25
    context_windows: int = 5
    trend_half_life: float = 1200.0
    scan_windows: tuple[int, ...] = (5, 15, 30, 60, 120, 240)
    freeze_z: float = 3.0
    freeze_limit: float = 7200.0
    timezone: str = "UTC"
    timezones: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "timezones", dict(self.timezones))
        object.__setattr__(self, "scan_windows", tuple(self.scan_windows))
        _require(
            len(self.scan_windows) > 0 and min(self.scan_windows) >= 1,
            "features.scan_windows: give at least one horizon, each >= 1 window, e.g. [5, 15, 30, 60, 120, 240]",
        )
        _require(len(self.features) > 0, "features.features: choose at least one feature")
        _require_zone(self.timezone, "features.timezone")
        for value, zone in self.timezones.items():
            _require_zone(zone, f"features.timezones[{value!r}]")
        _require(self.baseline_half_life > 0, "features.baseline_half_life must be > 0 seconds")
        _require(0 < self.seasonal_rate <= 1, "features.seasonal_rate must be in (0, 1]")
        _require(self.context_windows >= 2, "features.context_windows must be >= 2")
        _require(self.trend_half_life > 0, "features.trend_half_life must be > 0 seconds")
        _require(self.freeze_z > 0, "features.freeze_z must be > 0 (inf never freezes the baselines)")
        _require(self.freeze_limit >= 0, "features.freeze_limit must be >= 0 seconds")


@dataclass(frozen=True)
class ModelConfig:
    """The stepwise-EM Gaussian mixture (see :class:`streamdetect.model.StepwiseGMM`).

    The warm-up ends after ``warmup`` windows from keys with trustworthy baselines, or once those
    windows span ``warmup_span`` seconds of event time and number at least 50 per feature: a
    stream of a few keys (one store, one metric series) would otherwise wait weeks.
    """

    n_components: int | Literal["auto"] = "auto"
    max_components: int = 6
    step_exponent: float = 0.6
    step_floor: float = 2e-3
    reg_covar: float = 0.05
    warmup: int = 5000
    warmup_span: float = 86_400.0
    n_init: int = 3
    learn_batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_components != "auto":
            _require(
                isinstance(self.n_components, int) and self.n_components >= 1,
                "model.n_components must be a positive integer or 'auto'",
            )
        _require(self.max_components >= 1, "model.max_components must be >= 1")
        _require(0.5 < self.step_exponent <= 1.0, "model.step_exponent must be in (0.5, 1]")
        _require(0 < self.step_floor < 1, "model.step_floor must be in (0, 1)")
        _require(self.reg_covar >= 0, "model.reg_covar must be >= 0")
        _require(self.warmup >= 50, "model.warmup must be >= 50 windows")
        _require(self.warmup_span >= 0, "model.warmup_span must be >= 0 seconds (0: end the warm-up by count only)")
        _require(self.n_init >= 1, "model.n_init must be >= 1")
        _require(self.learn_batch >= 1, "model.learn_batch must be >= 1")


@dataclass(frozen=True)
class ThresholdConfig:
    """How the alert threshold on the anomaly score is set.

    ``method``: ``"spot"`` (EVT peaks-over-threshold), ``"dspot"`` (SPOT on scores minus their
    recent mean, for a drifting level) or ``"quantile"`` (rolling empirical quantile). ``risk`` is
    the target probability that a normal window whose counts are steady crosses it (the alert
    budget per window; windows of a key whose counts deviate do not calibrate it, and cross it
    more often).
    Calibration ends after ``n_init`` scores, or once the scores span ``calibration_span`` seconds
    of event time and number at least 100. SPOT's peaks are the scores above the ``level`` quantile
    of the last ``window`` normal scores (at most ``max_excess`` of them); ``window`` is also the
    quantile method's window.
    """

    method: Literal["spot", "dspot", "quantile"] = "spot"
    risk: float = 4e-5
    level: float = 0.98
    n_init: int = 2000
    calibration_span: float = 86_400.0
    max_excess: int = 2000
    window: int = 50_000
    depth: int = 50

    def __post_init__(self) -> None:
        _require(
            self.method in ("spot", "dspot", "quantile"),
            f"threshold.method is {self.method!r}; use 'spot', 'dspot' or 'quantile'",
        )
        _require(0 < self.risk < 0.5, "threshold.risk must be in (0, 0.5), e.g. 1e-4")
        _require(0.5 <= self.level < 1, "threshold.level must be in [0.5, 1), e.g. 0.98")
        _require(
            self.risk < 1 - self.level,
            f"threshold.risk ({self.risk:g}) must be below 1 - threshold.level ({1 - self.level:g})",
        )
        _require(self.n_init >= 100, "threshold.n_init must be >= 100 scores")
        _require(
            self.calibration_span >= 0,
            "threshold.calibration_span must be >= 0 seconds (0: calibrate after n_init scores only)",
        )
        _require(self.max_excess >= 30, "threshold.max_excess must be >= 30")
        _require(self.window >= self.n_init, "threshold.window must be >= threshold.n_init")
        _require(self.depth >= 2, "threshold.depth must be >= 2")


@dataclass(frozen=True)
class DriftConfig:
    """Score-drift monitoring: a river drift detector on the score stream plus PSI of score deciles.

    On drift the model's step floor is multiplied by ``boost`` and decays back with a half-life of
    ``boost_half_life`` learning steps.
    """

    detector: Literal["page_hinkley", "adwin"] = "page_hinkley"
    reference_size: int = 30_000
    recent_size: int = 10_000
    boost: float = 10.0
    boost_half_life: float = 20.0

    def __post_init__(self) -> None:
        _require(
            self.detector in ("page_hinkley", "adwin"),
            f"drift.detector is {self.detector!r}; use 'page_hinkley' or 'adwin'",
        )
        _require(self.reference_size >= 100, "drift.reference_size must be >= 100")
        _require(self.recent_size >= 100, "drift.recent_size must be >= 100")
        _require(self.boost >= 1, "drift.boost must be >= 1")
        _require(self.boost_half_life > 0, "drift.boost_half_life must be > 0")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything the pure detector core needs; one instance serves one input partition.

    ``regime_change_fraction``: when more than this share of a learning batch is flagged, the
    batch is learned anyway (a regime change, not a burst of anomalies). ``relearn_after``: a key
    flagged for more than this many consecutive windows is learned again (its new normal).
    ``trim_fraction``: share of the highest-scoring warm-up windows left out of the first fit, so
    anomalies in the warm-up do not become the baseline. ``silence_alerts``: a key whose run of
    windows without a sale is less likely than ``silence_risk`` (``threshold.risk`` when left out)
    under its own count model alerts even before the mixture's score crosses the threshold (a store
    that stops selling, caught in the fewest windows its rate allows); value series never (an empty
    window there is a missing sample, not a zero).
    """

    events: EventSchema = field(default_factory=EventSchema)
    windows: WindowConfig = field(default_factory=WindowConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    regime_change_fraction: float = 0.25
    relearn_after: int = 30
    trim_fraction: float = 0.01
    max_contributions: int = 3
    silence_alerts: bool = True
    silence_risk: float | None = None

    def __post_init__(self) -> None:
        _require(0 < self.regime_change_fraction <= 1, "detector.regime_change_fraction must be in (0, 1]")
        _require(self.relearn_after >= 1, "detector.relearn_after must be >= 1 window")
        _require(0 <= self.trim_fraction < 0.5, "detector.trim_fraction must be in [0, 0.5)")
        _require(self.max_contributions >= 1, "detector.max_contributions must be >= 1")
        _require(
            self.silence_risk is None or 0 < self.silence_risk < 0.5,
            "detector.silence_risk must be in (0, 0.5), e.g. 4e-5; leave it out to use threshold.risk",
        )


_T = TypeVar("_T")

_SECTION_NAMES = {
    DetectorConfig: "detector",
    EventSchema: "events",
    WindowConfig: "windows",
    FeatureConfig: "features",
    ModelConfig: "model",
    ThresholdConfig: "threshold",
    DriftConfig: "drift",
}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a TOML/env value to the declared type, or say what type was expected."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
        return _build(annotation, value, where)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where} is {value!r}; choose one of {', '.join(map(repr, choices))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
                    return None
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{where}: invalid value {value!r}")
    # A Mapping setting is a table of strings (the librdkafka pass-through tables, typed dict, are
    # nested and flattened by streamdetect.settings).
    if origin is collections.abc.Mapping:
        if isinstance(value, str):  # an environment variable: "key=value, key=value"
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ConfigError(f"{where}: expected a table or 'key=value, key=value', got {value!r}")
            value = {k.strip(): v.strip() for k, _, v in pairs}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        item = typing.get_args(annotation)[1] if typing.get_args(annotation) else str
        return {str(k): _coerce(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = (typing.get_args(annotation) or (str,))[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[_T], mapping: Mapping[str, Any], where: str) -> _T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in mapping.items()}
    return cls(**kwargs)


def from_mapping(cls: type[_T], mapping: Mapping[str, Any], where: str | None = None) -> _T:
    """Build the config section ``cls`` from a mapping (e.g. a TOML table), validating everything."""
    return _build(cls, mapping, where or _SECTION_NAMES.get(cls, cls.__name__))
