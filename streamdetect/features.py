"""Window features per key: scale-free deviations from the key's own baselines.

One model serves keys of very different size, so every model feature compares a window with what
*that key* usually does, in units where the noise is comparable across keys:

* ``count_z`` -- the Anscombe-transformed difference between the window's event count and its
  expected count, ``2 (sqrt(c + 3/8) - sqrt(lambda + 3/8))``, about N(0, 1) for a Poisson count
  whatever its rate, divided by ``sqrt(1 + phi lambda)`` where ``phi`` is the key's
  overdispersion (how much its rate wanders beyond Poisson noise, learned, at least
  ``_PHI_FLOOR``): a busy key's ordinary ups and downs are not a quiet key's anomaly. The
  expectation is the key's seasonal baseline (hour of week once that hour has been seen in an
  earlier week, else hour of day, with the day-of-week effect counted as unknown in ``phi``)
  times the key's level today relative to that baseline. Sales that come in clumps (an
  invoice's lines, a basket scanned at once, a producer's batch) are counted in clumps: ``c / D``
  against ``lambda / D``, ``D`` the key's index of dispersion (variance over mean of its window
  counts, learned from consecutive windows, at least 1), so that an ordinary invoice of 24 lines
  is not a spike and an hour without one is still an outage. Every count feature and the key's
  level do the same.
* ``revenue_ratio`` -- log ratio of revenue to its expectation, smoothed by one typical ticket.
* ``mean_ticket_z`` / ``max_ticket_z`` -- the window's mean and max log ticket against the key's
  ticket distribution (the max is corrected by the expected maximum of ``c`` normal draws), which
  catches price glitches and floods of tiny tickets.
* ``units_per_event_z`` -- the window's mean log1p(units per sale) against the key's basket sizes.
  The mean z-scores allow for sales that come together: the variance of a window's mean of ``n``
  sales is ``v / n + tau^2 (1 - 1/n)``, where ``tau^2`` is what a window's sales share (an
  invoice's lines, one customer's pack size), learned per key as the variance of the window means
  beyond ``v / n`` (one-way random effects). Without it, the lines of one invoice count as ``n``
  independent witnesses and an ordinary invoice pages.
* ``distinct_skus_z`` -- of a window's sales after its first, those that brought a SKU not yet
  sold in it: a binomial count against the key's usual share, on Anscombe's variance-stabilising
  arcsine scale and allowing for the key's intra-window correlation, so that it means the same for
  a shop of one best-seller and one of a thousand items: a bot buying one SKU thirty times is far
  out, one repeat among a handful of sales is mild. The count is spread over its step by a
  deterministic uniform per key and window (a randomised quantile residual, Dunn and Smyth 1996):
  where almost every window brings only new SKUs, the plain residual sat on one value per window
  size, and the mixture read one repeat as many sigma (39 of 134 alerts on a plain invoice export
  with no anomaly; 7 of 87 with the spread). (``units_per_event_ratio`` and
  ``distinct_skus_ratio``, the plain log ratios to recent values, stay available.)
* ``count_context_z``, ``revenue_context_ratio`` -- the same over the last ``context_windows``
  windows, which makes sustained small deviations (a store selling nothing at a quiet hour, a
  level shift) visible; the sums restart after an alert.
* ``count_scan_z`` -- the count of the last L windows against its expectation for each L in
  ``scan_windows`` (5 to 120 by default), as a log ratio over its standard deviation (Poisson
  plus ``phi``); the horizon with the strongest evidence speaks, so a drop of a quiet store shows
  after the hour it needs while a busy one shows in minutes. The sums restart after an alert.
* ``count_trend_z`` (optional) -- the log ratio of exponentially weighted sums of observed and
  expected counts (half-life ``trend_half_life``), divided by its standard deviation under Poisson
  noise *plus* the key's own overdispersion (how much its rate wanders beyond Poisson, learned
  over about a day); the sums restart after a flagged window, as a CUSUM restarts after its alarm.

Raw aggregates (``count``, ``revenue``, ``log_count``, ...), ratios to the recent baseline
(``count_ratio_recent``, ``revenue_ratio_recent``), ratios to the seasonal one
(``count_ratio_seasonal``) and cyclic encodings (``hour_sin``, ``hour_cos``, ``dow_sin``,
``dow_cos``) are available for :attr:`FeatureConfig.features` too. The defaults leave the raw and
cyclic ones out: raw values are not comparable across keys, and the seasonal baselines already
take out the time of day and week, so cyclic inputs would only make the mixture model the joint
of time and value.

A window's returns (cancelled lines, refunds) are reported with it (``observed["returns"]``,
``["refunds"]``), not modelled: almost every window has none, and a Gaussian mixture reads a
feature that sits on one value for 99 % of the windows as near-certain, so an ordinary cancelled
invoice scored as a 40-sigma event (an Anscombe ``returns_z`` raised 586 false alerts in 60 days
of an invoice export).

Everything is computed vectorised over a :class:`~streamdetect.windows.ClosedRound` (all keys'
windows that close together); baselines are updated afterwards, and only from windows the caller
says to learn from (anomalies do not become the new normal). They learn robustly: a window weighs
``1 / (1 + z^2)`` by its ``count_scan_z`` z, and while ``|z| >= freeze_z`` not at all, so that a
change still building up its evidence is not absorbed; after ``freeze_limit``, or once the
caller says the key has been flagged for long (``new_normal``), they follow it at full weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from scipy.special import ndtri

from streamdetect.config import ConfigError, EventSchema, FeatureConfig, WindowConfig
from streamdetect.windows import SKETCH_BITS, ClosedRound

__all__ = [
    "AVAILABLE_FEATURES",
    "PER_EVENT_FEATURES",
    "PER_SALE_FEATURES",
    "REVENUE_FEATURES",
    "FeatureExtractor",
    "WindowFeatures",
    "unavailable_features",
]

AVAILABLE_FEATURES: tuple[str, ...] = (
    "count_z",
    "revenue_ratio",
    "mean_ticket_z",
    "max_ticket_z",
    "units_per_event_z",
    "distinct_skus_z",
    "units_per_event_ratio",
    "distinct_skus_ratio",
    "count_context_z",
    "revenue_context_ratio",
    "count_trend_z",
    "count_scan_z",
    "revenue_trend_ratio",
    "count_ratio_recent",
    "count_ratio_seasonal",
    "revenue_ratio_recent",
    "count",
    "revenue",
    "log_count",
    "log_revenue",
    "mean_ticket",
    "max_ticket",
    "units",
    "distinct_skus",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
)

# What an alert reports for each feature: the human-facing quantity with its observed and
# expected values (the model's z says how far apart they are).
_EXPLAINED_AS: dict[str, str] = {
    "count_z": "count",
    "count_ratio_recent": "count",
    "count_ratio_seasonal": "count",
    "count": "count",
    "log_count": "count",
    "revenue_ratio": "revenue",
    "revenue_ratio_recent": "revenue",
    "revenue": "revenue",
    "log_revenue": "revenue",
    "mean_ticket_z": "mean_ticket",
    "mean_ticket": "mean_ticket",
    "max_ticket_z": "max_ticket",
    "max_ticket": "max_ticket",
    "units_per_event_z": "units_per_sale",
    "units_per_event_ratio": "units_per_sale",
    "units": "units_per_sale",
    "distinct_skus_z": "distinct_skus",
    "distinct_skus_ratio": "distinct_skus",
    "distinct_skus": "distinct_skus",
    "count_context_z": "count_recent_windows",
    "revenue_context_ratio": "revenue_recent_windows",
    "count_trend_z": "count_recent_hour",
    "count_scan_z": "count_scan",
    "revenue_trend_ratio": "revenue_recent_hour",
}

# What needs single sales (baskets, assortment, the largest ticket): a count series has totals only.
PER_EVENT_FEATURES: frozenset[str] = frozenset({
    "units_per_event_z", "units_per_event_ratio", "units", "distinct_skus_z", "distinct_skus_ratio", "distinct_skus",
    "max_ticket_z", "max_ticket",
})
# What describes sales rather than values: in a value series every window holds exactly one
# sample by construction, so the counts say nothing there (and their jitter would only add noise).
PER_SALE_FEATURES: frozenset[str] = PER_EVENT_FEATURES | {
    "count_z", "count_context_z", "count_scan_z", "count_trend_z", "count_ratio_recent",
    "count_ratio_seasonal", "count", "log_count",
}
# What needs amounts: a count series without values has none.
REVENUE_FEATURES: frozenset[str] = frozenset({
    "revenue_ratio", "mean_ticket_z", "max_ticket_z", "revenue_context_ratio", "revenue_trend_ratio",
    "revenue_ratio_recent", "revenue", "log_revenue", "mean_ticket", "max_ticket",
})


def unavailable_features(schema: EventSchema) -> frozenset[str]:
    """The features the events of ``schema`` say nothing about (left out of the model).

    >>> sorted(unavailable_features(EventSchema(count_field="orders")))[:3]
    ['distinct_skus', 'distinct_skus_ratio', 'distinct_skus_z']
    >>> unavailable_features(EventSchema()) == frozenset()
    True
    """
    if schema.count_field is not None:
        return PER_EVENT_FEATURES | (frozenset() if schema.value_field is not None else REVENUE_FEATURES)
    if schema.value_field is not None:
        return PER_SALE_FEATURES
    if schema.unpriced:
        return REVENUE_FEATURES
    return frozenset()


_HOURS_PER_WEEK = 168
# A seasonal bucket is trusted once it holds this many windows, or three occurrences of its hour
# when windows are long (an hourly window visits each hour-of-week bucket once a week).
_MIN_BUCKET = 20
_MIN_OCCURRENCES = 3
_MIN_HALF_LIFE_WINDOWS = 5.0
_EPOCH_WEEKDAY_HOURS = 3 * 24  # 1970-01-01 was a Thursday; shift so that bucket 0 is Monday 00:00 UTC
_TICKET_HALF_LIFE_S = 86_400.0
_SIGMA_FLOOR = 0.05
_MAX_LEVEL = 2.0  # |log| of the key's level against its seasonal pattern (x7.4 either way)
# Overdispersion of the trend sums (variance of the log rate beyond Poisson noise): a prior worth
# `_PHI_PRIOR_WINDOWS` windows, then an exponentially weighted estimate over about a day.
_PHI_PRIOR = 0.01
_PHI_PRIOR_WINDOWS = 120.0
_PHI_HALF_LIFE_S = 86_400.0
_DOW_VAR = 0.1  # variance of log day-of-week factors (about +-30 %), unknown until a week is seen
_PHI_FLOOR = 0.02  # no expected rate is known better than about +-14 %
# Between-window variance of a per-sale mean (tickets, basket sizes): a prior of no extra
# variance worth this many windows of evidence.
_TAU_PRIOR_WINDOWS = 5.0
# Intra-window correlation of new SKUs (a beta-binomial's rho): a prior of none, worth this many
# extra sales.
_SHARE_RHO_PRIOR = 20.0
_SHARE_CLIP = 1e-3  # no key's share of new SKUs is taken as exactly 0 or 1
# Sales that come in clumps (an invoice's lines, a basket scanned at once, a batch a producer
# flushes): a prior of single sales (Poisson) worth this many sales.
_CLUMP_PRIOR_SALES = 20.0
_MAX_CLUMP = 1000.0
_INT_ARRAYS = ("ctx_pos", "last_start", "how_hour", "scan_n", "scan_pos")
_CTX_ARRAYS = ("ctx_count", "ctx_exp_count", "ctx_rev", "ctx_exp_rev")


@dataclass
class _SaleMean:
    """A window's mean of a per-sale quantity (log ticket, log units) against the key's distribution."""

    dev: np.ndarray  # window mean minus the key's mean
    per_sale_var: np.ndarray  # the key's variance of one sale
    var: np.ndarray  # variance of the window's mean (what its sales share included)
    seen: np.ndarray  # bool: the window has sales and the key a distribution

    @property
    def z(self) -> np.ndarray:
        return np.where(self.seen, self.dev / np.sqrt(self.var), 0.0)


@dataclass
class _NewSkus:
    """Of a window's sales after its first, those that brought a SKU not yet sold in the window,
    against the key's usual share of them."""

    z: np.ndarray  # variance-stabilised and allowing for the key's intra-window correlation
    raw: np.ndarray  # the same under a plain binomial (what the correlation is learned from)
    expected_distinct: np.ndarray
    seen: np.ndarray  # bool: two sales or more, and the key has a usual share


@dataclass
class WindowFeatures:
    """Features of one round: ``values`` feed the model; the rest explains and updates."""

    values: np.ndarray  # (n, d) in config.features order
    mature: np.ndarray  # bool: the key's baselines are trustworthy for this window
    observed: dict[str, np.ndarray]  # human-facing quantities (see _EXPLAINED_AS)
    expected_of: Callable[[], dict[str, np.ndarray]] = field(repr=False)
    expected_count: np.ndarray
    expected_revenue: np.ndarray
    seasonal_refs: tuple[np.ndarray, ...]  # how_ok, fallback count and revenue, hour-of-week count and revenue
    how: np.ndarray
    hod: np.ndarray
    trend: dict[str, np.ndarray]  # exponentially weighted sums, stored by update()
    trend_log_ratio: np.ndarray  # log(observed / expected) of the weighted count sums
    trend_poisson_var: np.ndarray  # its variance if counts were Poisson around the expectation
    scan: dict[str, np.ndarray]  # running totals since the scan restarted, stored by update()
    scan_z: np.ndarray  # count_scan_z
    clump: np.ndarray  # the key's index of dispersion D (counts are judged in clumps of D)
    # The per-sale means and the new SKUs, from which update() learns what a window's sales share
    # (None where no configured feature needs them).
    ticket: _SaleMean
    units: _SaleMean | None
    new_skus: _NewSkus | None

    @cached_property
    def expected(self) -> dict[str, np.ndarray]:
        """What each human-facing quantity was expected to be (built when an alert asks)."""
        return self.expected_of()


def _uniform(key_id: np.ndarray, start_ms: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) per key and window (splitmix64 of both): the same input
    gives the same features, whatever the batching."""
    with np.errstate(over="ignore"):
        z = key_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(start_ms & ((1 << 63) - 1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _anscombe_z(count: np.ndarray, expected: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Anscombe residual of a count against its expectation, in units of its noise: about
    N(0, 1) for a Poisson count whatever the rate, divided by ``sqrt(1 + phi mu)`` for a rate that
    itself wanders (a negative binomial with variance ``mu + phi mu^2``), so that a busy key's
    ordinary ups and downs do not look like a quiet key's anomaly.

    >>> z = _anscombe_z(np.array([0.0, 0.0]), np.array([50.0, 50.0]), np.array([0.0, 0.02]))
    >>> z.round(1).tolist()
    [-13.0, -9.2]
    """
    raw = 2.0 * (np.sqrt(count + 0.375) - np.sqrt(np.maximum(expected, 0.0) + 0.375))
    return raw / np.sqrt(1.0 + phi * np.maximum(expected, 0.0))


def _between_variance(excess_sum: np.ndarray, weight_sum: np.ndarray) -> np.ndarray:
    """The between-window variance of a per-sale mean (the moment estimator of a one-way random
    effects model), shrunk towards 0 by a prior worth ``_TAU_PRIOR_WINDOWS`` windows."""
    return np.maximum(excess_sum, 0.0) / (weight_sum + _TAU_PRIOR_WINDOWS)


def _mean_variance(per_sale_var: np.ndarray, between_var: np.ndarray | float, n: np.ndarray) -> np.ndarray:
    """Variance of the mean of ``n`` sales of one window: ``v / n`` if sales were independent,
    plus what they share within the window (an invoice's lines, a customer's basket, the hour's
    mood), ``tau^2 (1 - 1/n)``, so that a window of correlated sales is not taken for ``n``
    independent witnesses.

    >>> _mean_variance(np.array([1.0, 1.0]), np.array([0.0, 0.5]), np.array([4.0, 4.0])).tolist()
    [0.25, 0.625]
    """
    n_safe = np.maximum(n, 1.0)
    return per_sale_var / n_safe + between_var * (1.0 - 1.0 / n_safe)


def _sketch_variance(distinct: np.ndarray) -> np.ndarray:
    """Variance of the linear-counting estimate of ``distinct`` SKUs in the windows' bitmap (Whang
    et al., 1990): about 0.1 at 16 SKUs, 1 at 45, tens once the bitmap fills."""
    t = np.minimum(np.maximum(distinct, 0.0) / SKETCH_BITS, 20.0)
    return SKETCH_BITS * (np.exp(t) - t - 1.0)


class FeatureExtractor:
    """Per-key baselines in flat arrays indexed by key id; see the module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from streamdetect.windows import SKETCH_BITS, ClosedRound
    >>> fx = FeatureExtractor(FeatureConfig(), WindowConfig())
    >>> def rnd(start, count):
    ...     c = np.array([count], dtype=float)
    ...     return ClosedRound(start, start + 60_000, np.array([0]), c, 10 * c, np.where(c > 0, 10.0, 0),
    ...                        c, c, c * np.log1p(10.0), c * np.log1p(10.0) ** 2, np.array([start]),
    ...                        c * np.log(2.0), c * np.log(2.0) ** 2)
    >>> for m in range(30):
    ...     r = rnd(m * 60_000, 5.0); f = fx.transform(r); fx.update(r, f, np.array([True]))
    >>> f = fx.transform(rnd(30 * 60_000, 0.0))
    >>> bool(f.mature[0]), round(float(f.values[0, 0]), 2)  # (its first week: day of week unknown)
    (True, -2.63)
    """

    def __init__(
        self,
        config: FeatureConfig | None = None,
        windows: WindowConfig | None = None,
        unavailable: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config or FeatureConfig()
        self.windows = windows or WindowConfig()
        unknown = [f for f in self.config.features if f not in AVAILABLE_FEATURES]
        if unknown:
            raise ConfigError(
                f"features.features: unknown feature {unknown[0]!r}; available: {', '.join(AVAILABLE_FEATURES)}"
            )
        # An aggregated series lacks what single sales carry: those features are left out.
        self.names: tuple[str, ...] = tuple(f for f in self.config.features if f not in unavailable)
        # In an aggregated series a row's sales all carry its mean ticket: the spread of tickets
        # within a window, and so what a window's sales share, cannot be seen there.
        self._single_sales = not (PER_EVENT_FEATURES & unavailable)
        # Baselines only the configured features need (each costs a few array passes per round).
        self._basket_z = "units_per_event_z" in self.names
        self._new_skus_z = "distinct_skus_z" in self.names
        self._ratios = bool({"units_per_event_ratio", "distinct_skus_ratio"} & set(self.names))
        if not self.names:
            raise ConfigError(
                f"features.features: {', '.join(self.config.features)} all need what these events do not carry"
                " (an aggregated series, events.value_field or events.count_field, has no single sales);"
                " add e.g. revenue_ratio for values, count_z for counts"
            )
        hop_s = self.windows.hop_ms / 1000.0
        windows_per_hour = max(3600.0 / hop_s, 1.0)
        self._min_bucket = min(_MIN_BUCKET, _MIN_OCCURRENCES * windows_per_hour)

        def decay(half_life_s: float) -> float:
            # Per window; with long windows (hourly, daily) a half-life of a few windows at least,
            # or each baseline would be little more than the previous window.
            return float(2.0 ** (-hop_s / max(half_life_s, _MIN_HALF_LIFE_WINDOWS * hop_s)))

        # Per-window EWMA rates: the newest week (hour-of-week) or day (hour-of-day) of a bucket
        # weighs `seasonal_rate`; the level and recent baselines have `baseline_half_life`.
        self._season_rate = 1.0 - (1.0 - self.config.seasonal_rate) ** (1.0 / windows_per_hour)
        self._level_rate = 1.0 - decay(self.config.baseline_half_life)
        self._ticket_decay = decay(_TICKET_HALF_LIFE_S)
        self._k = self.config.context_windows
        self._trend_decay = decay(self.config.trend_half_life)
        self._phi_rate = 1.0 - decay(_PHI_HALF_LIFE_S)
        self._freeze_limit = self.config.freeze_limit / hop_s
        self._scan = np.array(sorted(set(self.config.scan_windows)), dtype=np.int64)
        self._ring = int(self._scan[-1]) + 1
        self._arrays: dict[str, np.ndarray] = {}
        self._allocate(0)

    # ------------------------------------------------------------------ storage
    _SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {
        "how_count": (_HOURS_PER_WEEK,),
        "how_rev": (_HOURS_PER_WEEK,),
        "how_n": (_HOURS_PER_WEEK,),
        "hod_count": (24,),
        "hod_rev": (24,),
        "hod_n": (24,),
        "level": (),
        "level_rev": (),
        "level_how": (),
        "level_rev_how": (),
        "how_hour": (),
        "how_hour_n": (),
        "recent_count": (),
        "recent_rev": (),
        "recent_n": (),
        "tk_w": (),
        "tk_s1": (),
        "tk_s2": (),
        "tk_tau_a": (),
        "tk_tau_b": (),
        "uq_w": (),
        "uq_s1": (),
        "uq_s2": (),
        "uq_tau_a": (),
        "uq_tau_b": (),
        "ds_w": (),
        "ds_s": (),
        "ds_tau_a": (),
        "ds_tau_b": (),
        "upe": (),
        "upe_n": (),
        "dsr": (),
        "dsr_n": (),
        "ctx_count": (-1,),
        "ctx_exp_count": (-1,),
        "ctx_rev": (-1,),
        "ctx_exp_rev": (-1,),
        "ctx_pos": (),
        "tr_count": (),
        "tr_exp_count": (),
        "tr_rev": (),
        "tr_exp_rev": (),
        "tr_exp2_count": (),
        "tr_phi": (),
        "clump_a": (),
        "clump_b": (),
        "clump_n": (),
        "prev_count": (),
        "tr_phi_n": (),
        "frozen_n": (),
        "scan_ring_c": (-2,),
        "scan_ring_e": (-2,),
        "scan_tot_c": (),
        "scan_tot_e": (),
        "scan_n": (),
        "scan_pos": (),
        "last_start": (),
    }

    def _allocate(self, capacity: int) -> None:
        old = self._arrays
        new: dict[str, np.ndarray] = {}
        for name, shape in self._SHAPES.items():
            full = (capacity, *({-1: self._k, -2: self._ring}.get(s, s) for s in shape))
            dtype = np.int64 if name in _INT_ARRAYS else np.float64
            arr = np.zeros(full, dtype=dtype)
            if name == "last_start":
                arr[:] = np.iinfo(np.int64).min // 2
            if name in old:
                arr[: len(old[name])] = old[name]
            new[name] = arr
        self._arrays = new

    def _ensure(self, key_ids: np.ndarray) -> None:
        if len(key_ids) and int(key_ids.max()) >= len(self._arrays["level"]):
            self._allocate(max(int(key_ids.max()) + 1, 2 * len(self._arrays["level"]), 16))

    def evict(self, key_ids: list[int] | np.ndarray) -> None:
        """Forget evicted keys so that a reused id starts from scratch."""
        ids = np.asarray(key_ids, dtype=np.int64)
        ids = ids[ids < len(self._arrays["level"])]
        for name, arr in self._arrays.items():
            arr[ids] = np.iinfo(np.int64).min // 2 if name == "last_start" else 0

    # ------------------------------------------------------------------ features
    def transform(self, rnd: ClosedRound) -> WindowFeatures:
        """Features of a round of windows under the baselines as they are (nothing is updated)."""
        self._ensure(rnd.key_id)
        a, k = self._arrays, rnd.key_id
        hour = rnd.start_ms // 3_600_000
        how = int((hour + _EPOCH_WEEKDAY_HOURS) % _HOURS_PER_WEEK)
        hod = int(hour % 24)
        c, r = rnd.count, rnd.revenue

        # An hour of week is trusted once it held enough windows before this occurrence of the
        # hour: the current occurrence alone would only echo the current hour back.
        this_hour = a["how_hour"][k] == hour
        how_ok = a["how_n"][k, how] - np.where(this_hour, a["how_hour_n"][k], 0.0) >= self._min_bucket
        hod_ok = a["hod_n"][k, hod] >= self._min_bucket
        recent_ok = a["recent_n"][k] > 0
        mature = how_ok | hod_ok
        # Two seasonal references, each with its own level (today's ratio to it), so that the
        # switch from hour of day to hour of week does not count the day-of-week effect twice.
        fallback_count = np.where(hod_ok, a["hod_count"][k, hod], a["recent_count"][k])
        fallback_rev = np.where(hod_ok, a["hod_rev"][k, hod], a["recent_rev"][k])
        how_count, how_rev = a["how_count"][k, how], a["how_rev"][k, how]
        seasonal_count = np.where(how_ok, how_count, fallback_count)
        seasonal_rev = np.where(how_ok, how_rev, fallback_rev)
        expected_count = seasonal_count * np.exp(np.where(how_ok, a["level_how"][k], a["level"][k]))
        expected_rev = seasonal_rev * np.exp(np.where(how_ok, a["level_rev_how"][k], a["level_rev"][k]))

        # The key's ticket distribution (log1p of amounts), exponentially weighted over a day.
        has_tickets, mu, var = self._key_moments("tk", k)
        sigma = np.sqrt(var)
        typical_ticket = np.expm1(mu) + 1.0
        sold = c > 0
        c_safe = np.maximum(c, 1.0)
        mean_log_ticket = rnd.log_ticket_sum / c_safe
        expected_max_z = np.where(c > 1, ndtri((c_safe - 0.375) / (c_safe + 0.25)), 0.0)
        ticket = self._sale_mean(
            "tk", k, mean_log_ticket - mu, sigma * sigma, c, has_tickets & sold, between=self._single_sales
        )
        units = self._basket(k, rnd, c) if self._basket_z else None
        # Returns are reported with a window, not modelled (see the module docstring).
        no_returns = np.zeros(len(k))
        returns = rnd.returns if rnd.returns is not None else no_returns
        refunds = rnd.refunds if rnd.refunds is not None else no_returns
        new_skus = self._new_skus(k, rnd, c) if self._new_skus_z else None

        # Short-horizon context: this window plus the previous ones, reset after a gap.
        contiguous = a["last_start"][k] == rnd.start_ms - self.windows.hop_ms
        ctx_c = np.where(contiguous, a["ctx_count"][k].sum(axis=1), 0.0) + c
        ctx_e = np.where(contiguous, a["ctx_exp_count"][k].sum(axis=1), 0.0) + expected_count
        ctx_r = np.where(contiguous, a["ctx_rev"][k].sum(axis=1), 0.0) + r
        ctx_er = np.where(contiguous, a["ctx_exp_rev"][k].sum(axis=1), 0.0) + expected_rev

        # Longer horizon: exponentially weighted sums (half-life `trend_half_life`), for sustained
        # changes too small to see in a few windows of a quiet key.
        dec = np.where(contiguous, self._trend_decay, 0.0)
        trend = {
            "tr_count": dec * a["tr_count"][k] + c,
            "tr_exp_count": dec * a["tr_exp_count"][k] + expected_count,
            "tr_rev": dec * a["tr_rev"][k] + r,
            "tr_exp_rev": dec * a["tr_exp_rev"][k] + expected_rev,
            "tr_exp2_count": dec * dec * a["tr_exp2_count"][k] + expected_count,
        }
        # Sustained deviations are judged against the key's own overdispersion: real rates wander
        # (weather, promotions, the hour's mood) far more than Poisson noise over an hour of a
        # busy key, and a z-score that ignored it would page on every busy afternoon.
        tr_e = trend["tr_exp_count"] + 0.5
        trend_log_ratio = np.log((trend["tr_count"] + 0.5) / tr_e)
        trend_poisson_var = (trend["tr_exp2_count"] + 0.25) / (tr_e * tr_e)
        # Sales that come in clumps of about D vary D times more than single ones (a compound
        # Poisson): every count is judged in clumps, c / D against lambda / D.
        clump = self._clump_size(k)
        trend_poisson_var = trend_poisson_var * clump
        phi = np.where(a["tr_phi_n"][k] > 0, np.maximum(a["tr_phi"][k], _PHI_FLOOR), _PHI_PRIOR)
        # Until the key's hour of week is known, the day-of-week effect is unknown too.
        phi = phi + np.where(how_ok, 0.0, _DOW_VAR)

        # Scan over several horizons: the count of the last L windows against its expectation,
        # for each L in `scan_windows`, as a log ratio over its standard deviation (Poisson plus
        # the key's overdispersion); the horizon with the strongest evidence speaks. Whatever the
        # length of a change, one horizon about matches it. The sums restart after an alert.
        scan = {
            "scan_tot_c": np.where(contiguous, a["scan_tot_c"][k], 0.0) + c,
            "scan_tot_e": np.where(contiguous, a["scan_tot_e"][k], 0.0) + expected_count,
            "scan_n": np.where(contiguous, a["scan_n"][k], 0) + 1,
        }
        lags = self._scan[None, :]
        slot = (a["scan_pos"][k][:, None] - lags) % self._ring
        full = scan["scan_n"][:, None] > lags
        rows = k[:, None]
        sum_c = scan["scan_tot_c"][:, None] - np.where(full, a["scan_ring_c"][rows, slot], 0.0)
        sum_e = scan["scan_tot_e"][:, None] - np.where(full, a["scan_ring_e"][rows, slot], 0.0)
        sum_e = np.maximum(sum_e, 0.0) + 0.5
        z_all = np.log((np.maximum(sum_c, 0.0) + 0.5) / sum_e) / np.sqrt(clump[:, None] / sum_e + phi[:, None])
        strongest = np.abs(z_all).argmax(axis=1)
        rows_n = np.arange(len(k))
        scan_z = z_all[rows_n, strongest]
        # What an alert reports: the count over the strongest horizon and what was expected.
        scan_count = np.maximum(sum_c[rows_n, strongest], 0.0)
        scan_expected = sum_e[rows_n, strongest] - 0.5

        mean_ticket = np.where(sold, r / c_safe, 0.0)
        units_per_event = np.where(sold, rnd.units / c_safe, 0.0)
        if self._ratios:
            log_upe = np.log(np.maximum(units_per_event, 1e-9))
            log_dsr = np.log((rnd.distinct_skus + 1.0) / (c + 1.0))
            upe_base = np.where(a["upe_n"][k] > 0, a["upe"][k], log_upe)
            dsr_base = np.where(a["dsr_n"][k] > 0, a["dsr"][k], log_dsr)
        angle_h = 2 * np.pi * ((rnd.start_ms / 3_600_000.0) % 24) / 24
        angle_w = 2 * np.pi * (((rnd.start_ms / 86_400_000.0) + 3) % 7) / 7
        n = len(k)

        computed: dict[str, Any] = {
            "count_z": lambda: _anscombe_z(c / clump, expected_count / clump, phi),
            "revenue_ratio": lambda: np.log((r + typical_ticket) / (expected_rev + typical_ticket)),
            "mean_ticket_z": lambda: ticket.z,
            "max_ticket_z": lambda: np.where(
                sold, (np.log1p(rnd.max_ticket) - mu) / sigma - expected_max_z, 0.0
            ),
            "units_per_event_z": lambda: units.z,  # type: ignore[union-attr]  # set when configured
            "distinct_skus_z": lambda: new_skus.z,  # type: ignore[union-attr]
            "units_per_event_ratio": lambda: np.where(sold, log_upe - upe_base, 0.0),
            "distinct_skus_ratio": lambda: np.where(sold, log_dsr - dsr_base, 0.0),
            "count_context_z": lambda: _anscombe_z(ctx_c / clump, ctx_e / clump, phi),
            "revenue_context_ratio": lambda: np.log((ctx_r + typical_ticket) / (ctx_er + typical_ticket)),
            "count_trend_z": lambda: trend_log_ratio / np.sqrt(trend_poisson_var + phi),
            "count_scan_z": lambda: scan_z,
            "revenue_trend_ratio": lambda: np.log(
                (trend["tr_rev"] + typical_ticket) / (trend["tr_exp_rev"] + typical_ticket)
            ),
            "count_ratio_recent": lambda: np.log((c + 1.0) / (np.where(recent_ok, a["recent_count"][k], c) + 1.0)),
            "count_ratio_seasonal": lambda: np.log((c + 1.0) / (expected_count + 1.0)),
            "revenue_ratio_recent": lambda: np.log(
                (r + typical_ticket) / (np.where(recent_ok, a["recent_rev"][k], r) + typical_ticket)
            ),
            "count": lambda: c,
            "revenue": lambda: r,
            "log_count": lambda: np.log1p(c),
            "log_revenue": lambda: np.log1p(np.maximum(r, 0.0)),
            "mean_ticket": lambda: mean_ticket,
            "max_ticket": lambda: rnd.max_ticket,
            "units": lambda: rnd.units,
            "distinct_skus": lambda: rnd.distinct_skus,
            "hour_sin": lambda: np.full(n, np.sin(angle_h)),
            "hour_cos": lambda: np.full(n, np.cos(angle_h)),
            "dow_sin": lambda: np.full(n, np.sin(angle_w)),
            "dow_cos": lambda: np.full(n, np.cos(angle_w)),
        }
        values = np.empty((n, len(self.names)))
        for j, name in enumerate(self.names):
            values[:, j] = computed[name]()
        if not np.isfinite(values).all():
            np.nan_to_num(values, copy=False, nan=0.0, posinf=1e6, neginf=-1e6)

        observed = {
            "count": c,
            "revenue": r,
            "mean_ticket": mean_ticket,
            "max_ticket": rnd.max_ticket,
            "units_per_sale": units_per_event,
            "distinct_skus": np.round(rnd.distinct_skus),  # a count: the sketch's estimate, rounded
            "count_recent_windows": ctx_c,
            "revenue_recent_windows": ctx_r,
            "count_recent_hour": trend["tr_count"],
            "revenue_recent_hour": trend["tr_rev"],
            "count_scan": scan_count,
            "returns": returns,
            "refunds": refunds,
        }
        def expected_units() -> np.ndarray:
            if units is not None:  # E[units] of a sale whose log1p is about normal
                mu_u = rnd.log_units_sum / c_safe - units.dev  # the key's mean log1p(units)
                return np.where(units.seen, np.exp(mu_u + units.per_sale_var / 2.0) - 1.0, units_per_event)
            return np.exp(upe_base) if self._ratios else units_per_event

        def expected_distinct() -> np.ndarray:
            if new_skus is not None:
                return np.where(new_skus.seen, new_skus.expected_distinct, rnd.distinct_skus)
            return np.exp(dsr_base) * (c + 1.0) - 1.0 if self._ratios else rnd.distinct_skus

        def expected() -> dict[str, np.ndarray]:  # only alerts need these: computed on demand
            return {
                "count": expected_count,
                "revenue": expected_rev,
                "mean_ticket": np.where(has_tickets, np.expm1(mu), mean_ticket),
                "max_ticket": np.where(has_tickets, np.expm1(mu + sigma * expected_max_z), rnd.max_ticket),
                "units_per_sale": expected_units(),
                "distinct_skus": expected_distinct(),
                "count_recent_windows": ctx_e,
                "revenue_recent_windows": ctx_er,
                "count_recent_hour": trend["tr_exp_count"],
                "revenue_recent_hour": trend["tr_exp_rev"],
                "count_scan": scan_expected,
            }

        return WindowFeatures(
            values=values,
            mature=mature,
            observed=observed,
            expected_of=expected,
            expected_count=expected_count,
            expected_revenue=expected_rev,
            seasonal_refs=(how_ok, fallback_count, fallback_rev, how_count, how_rev),
            how=np.full(n, how),
            hod=np.full(n, hod),
            trend=trend,
            trend_log_ratio=trend_log_ratio,
            trend_poisson_var=trend_poisson_var,
            scan=scan,
            scan_z=scan_z,
            clump=clump,
            ticket=ticket,
            units=units,
            new_skus=new_skus,
        )

    def _key_moments(self, prefix: str, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whether the key has a distribution of a per-sale log quantity yet, its mean and its
        variance (floored), from the exponentially weighted sums ``{prefix}_w``, ``_s1``, ``_s2``."""
        a = self._arrays
        w = a[prefix + "_w"][k]
        known = w > 1.0
        mu = np.where(known, a[prefix + "_s1"][k] / np.maximum(w, 1e-12), 0.0)
        var = np.where(known, a[prefix + "_s2"][k] / np.maximum(w, 1e-12) - mu * mu, 1.0)
        return known, mu, np.maximum(var, _SIGMA_FLOOR**2)

    def _learn_moments(self, prefix: str, k: np.ndarray, c: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> None:
        a, d = self._arrays, self._ticket_decay
        a[prefix + "_w"][k] = a[prefix + "_w"][k] * d + c
        a[prefix + "_s1"][k] = a[prefix + "_s1"][k] * d + s1
        a[prefix + "_s2"][k] = a[prefix + "_s2"][k] * d + s2

    def _sale_mean(
        self, prefix: str, k: np.ndarray, dev: np.ndarray, per_sale_var: np.ndarray, n: np.ndarray,
        seen: np.ndarray, between: bool = True,
    ) -> _SaleMean:
        a = self._arrays
        tau2 = _between_variance(a[prefix + "_tau_a"][k], a[prefix + "_tau_b"][k]) if between else 0.0
        return _SaleMean(dev, per_sale_var, _mean_variance(per_sale_var, tau2, n), seen)

    def _basket(self, k: np.ndarray, rnd: ClosedRound, c: np.ndarray) -> _SaleMean:
        """Basket size: the window's mean log1p(units per sale) against the key's, as for the tickets."""
        known, mu, var = self._key_moments("uq", k)
        dev = rnd.log_units_sum / np.maximum(c, 1.0) - mu
        return self._sale_mean("uq", k, dev, var, c, known & (c > 0))

    def _new_skus(self, k: np.ndarray, rnd: ClosedRound, c: np.ndarray) -> _NewSkus:
        """Assortment: of the ``n = c - 1`` sales after a window's first, the ``x`` that brought a
        SKU not yet sold in it, against the key's usual share ``p``: a binomial count, judged on
        Anscombe's variance-stabilising scale ``2 sqrt(n) (asin sqrt((x + 3/8) / (n + 3/4)) -
        asin sqrt(p))``, about N(0, 1) whatever ``p`` (a shop of one best-seller or of a thousand
        items) and with the right tails for small counts: thirty sales of one SKU where each
        usually brings a new one are far out, one repeat among a handful is mild. It is divided by
        ``sqrt(1 + (n - 1) rho)``, ``rho`` the key's intra-window correlation (a customer who buys
        several of one item), plus the sketch's own counting error (which a collision of two SKUs
        can be, where real repeats are rarer still)."""
        a = self._arrays
        n = np.maximum(c - 1.0, 0.0)
        n_safe = np.maximum(n, 1.0)
        share = np.minimum(np.maximum(a["ds_s"][k] / np.maximum(a["ds_w"][k], 1e-12), _SHARE_CLIP), 1.0 - _SHARE_CLIP)
        new = np.minimum(np.maximum(rnd.distinct_skus - 1.0, 0.0), n)
        # A randomised residual (Dunn and Smyth): the count's step is spread over the interval
        # between its neighbours, so the feature is continuous and the mixture does not read the
        # one value most windows share as near-certain.
        jitter = _uniform(k, rnd.start_ms) - 0.5
        spread = np.minimum(np.maximum(new + jitter, 0.0), n)
        raw = 2.0 * np.sqrt(n) * (np.arcsin(np.sqrt((spread + 0.375) / (n + 0.75))) - np.arcsin(np.sqrt(share)))
        expected_distinct = np.where(c > 0, 1.0 + n * share, 0.0)
        binomial_var = n_safe * share * (1.0 - share)
        rho = np.maximum(a["ds_tau_a"][k], 0.0) / (a["ds_tau_b"][k] + _SHARE_RHO_PRIOR)
        inflation = 1.0 + np.maximum(n - 1.0, 0.0) * rho + _sketch_variance(expected_distinct) / binomial_var
        seen = (a["ds_w"][k] > 1.0) & (n > 0)
        return _NewSkus(
            z=np.where(seen, raw / np.sqrt(inflation), 0.0),
            raw=raw,
            expected_distinct=expected_distinct,
            seen=seen,
        )

    def explained_quantity(self, feature: str) -> str:
        """The human-facing quantity an alert reports for a model feature."""
        return _EXPLAINED_AS.get(feature, feature)

    # ------------------------------------------------------------------ learning
    def update(
        self, rnd: ClosedRound, feats: WindowFeatures, learn: np.ndarray, new_normal: np.ndarray | None = None
    ) -> None:
        """Fold a round into the baselines; only rows with ``learn`` move them.

        Rows with ``new_normal`` (a key flagged for long) move them even while they deviate.

        The short-horizon context records every window (it is what happened, anomalous or not),
        and, like the scan and the trend sums, restarts after a flagged one.
        """
        a, k_all = self._arrays, rnd.key_id
        flagged = None if learn.all() else ~learn
        # Context ring: every row.
        contiguous = a["last_start"][k_all] == rnd.start_ms - self.windows.hop_ms
        self._learn_clump_size(k_all, rnd.count, contiguous & learn)
        reset = k_all[~contiguous]
        for name in _CTX_ARRAYS:
            a[name][reset] = 0.0
        # Store the k-1 most recent windows: together with the current one that makes k.
        pos = a["ctx_pos"][k_all] % (self._k - 1)
        a["ctx_count"][k_all, pos] = rnd.count
        a["ctx_exp_count"][k_all, pos] = feats.expected_count
        a["ctx_rev"][k_all, pos] = rnd.revenue
        a["ctx_exp_rev"][k_all, pos] = feats.expected_revenue
        a["ctx_pos"][k_all] += 1
        a["last_start"][k_all] = rnd.start_ms
        if flagged is not None:
            # A flagged window restarts the context: a spike already reported must not keep the
            # next windows alerting while it is still in their sum.
            for name in _CTX_ARRAYS:
                a[name][k_all[flagged]] = 0.0
        pos = a["scan_pos"][k_all] % self._ring
        a["scan_ring_c"][k_all, pos] = feats.scan["scan_tot_c"]
        a["scan_ring_e"][k_all, pos] = feats.scan["scan_tot_e"]
        a["scan_pos"][k_all] += 1
        # A flagged window restarts the trend sums and the scan (as a CUSUM restarts after its
        # alarm): evidence already reported must not keep the key alerting after a short anomaly.
        for name, value in (*feats.trend.items(), *feats.scan.items()):
            a[name][k_all] = value if flagged is None else np.where(flagged, 0, value)

        how, hod = int(feats.how[0]), int(feats.hod[0])
        # A sustained deviation in progress freezes the key's baselines, or they would absorb a
        # drop or a level shift before it is evidence enough to alert on. Past `freeze_limit`, or
        # once the key has been flagged for long, the key has a new normal and they follow it.
        deviating = np.abs(feats.scan_z) >= self.config.freeze_z
        frozen_n = np.where(deviating, a["frozen_n"][k_all] + 1.0, 0.0)
        a["frozen_n"][k_all] = frozen_n
        settled = deviating & (frozen_n > self._freeze_limit)
        if new_normal is not None:
            settled |= new_normal
        sel = np.flatnonzero(learn & (~deviating | settled))
        if len(sel) == 0:
            return
        k = k_all[sel]
        c, r = rnd.count[sel], rnd.revenue[sel]
        # Robust learning (an M-estimate, as in robust exponential smoothing): below the freeze,
        # a window weighs 1 / (1 + z^2) by its sustained deviation z, so a change the scan is
        # still building evidence for hardly moves the count baselines. A new normal weighs 1.
        weight = np.where(settled[sel], 1.0, 1.0 / (1.0 + feats.scan_z[sel] ** 2))
        self._learn_bucket("how", how, k, c, r, weight)
        # Windows learned in this occurrence of the hour: they do not make it trusted yet.
        hour = rnd.start_ms // 3_600_000
        a["how_hour_n"][k] = np.where(a["how_hour"][k] == hour, a["how_hour_n"][k] + 1.0, 1.0)
        a["how_hour"][k] = hour
        self._learn_bucket("hod", hod, k, c, r, weight)

        mature = feats.mature[sel]
        # Overdispersion: mean squared log ratio beyond the Poisson part, on mature baselines.
        km = k[mature]
        if len(km):
            excess = feats.trend_log_ratio[sel][mature] ** 2 - feats.trend_poisson_var[sel][mature]
            n_phi = a["tr_phi_n"][km] + 1.0
            prior_weighted = np.where(a["tr_phi_n"][km] > 0, a["tr_phi"][km], _PHI_PRIOR)
            rate_phi = np.maximum(1.0 / (n_phi + _PHI_PRIOR_WINDOWS), self._phi_rate)
            a["tr_phi"][km] = prior_weighted + rate_phi * (excess - prior_weighted)
            a["tr_phi_n"][km] = n_phi

        # The key's levels relative to its two seasonal references (log ratios, bounded), in clumps:
        # for sales that come in clumps of about D most windows hold none and a few hold many,
        # and the mean of log((c + 1/2) / (lambda + 1/2)) would put the level a third as high as
        # it is; counted in clumps, log((c / D + 1/2) / (lambda / D + 1/2)), it is about right.
        how_ok, fb_c, fb_r, how_c, how_r = (x[sel] for x in feats.seasonal_refs)
        half = 0.5 * feats.clump[sel]
        for name, target, use in (
            ("level", np.log((c + half) / (fb_c + half)), mature),
            ("level_rev", np.log((r + 2.0 * half) / (fb_r + 2.0 * half)), mature),
            ("level_how", np.log((c + half) / (how_c + half)), how_ok),
            ("level_rev_how", np.log((r + 2.0 * half) / (how_r + 2.0 * half)), how_ok),
        ):
            old = a[name][k]
            moved = np.minimum(np.maximum(old + self._level_rate * weight * (target - old), -_MAX_LEVEL), _MAX_LEVEL)
            a[name][k] = np.where(use, moved, np.where(mature, old, 0.0))

        rn = a["recent_n"][k] + 1.0
        rate = np.maximum(1.0 / rn, self._level_rate)
        a["recent_n"][k] = rn
        a["recent_count"][k] += rate * (c - a["recent_count"][k])
        a["recent_rev"][k] += rate * (r - a["recent_rev"][k])

        d = self._ticket_decay
        self._learn_moments("tk", k, c, rnd.log_ticket_sum[sel], rnd.log_ticket_sq_sum[sel])
        if self._single_sales:
            self._learn_sale_mean("tk", k, feats.ticket, sel, c)
        if feats.units is not None:
            self._learn_moments("uq", k, c, rnd.log_units_sum[sel], rnd.log_units_sq_sum[sel])
            self._learn_sale_mean("uq", k, feats.units, sel, c)
        if feats.new_skus is not None:
            more = np.maximum(c - 1.0, 0.0)
            a["ds_w"][k] = a["ds_w"][k] * d + more
            a["ds_s"][k] = a["ds_s"][k] * d + np.minimum(np.maximum(rnd.distinct_skus[sel] - 1.0, 0.0), more)
            # Intra-window correlation: a beta-binomial's variance is the binomial's times
            # 1 + (n - 1) rho, so E[raw^2 - 1] = rho E[n - 1] (moment estimate).
            ns = feats.new_skus
            seen = ns.seen[sel] & (more >= 2)
            a["ds_tau_a"][k] = a["ds_tau_a"][k] * d + np.where(seen, ns.raw[sel] ** 2 - 1.0, 0.0)
            a["ds_tau_b"][k] = a["ds_tau_b"][k] * d + np.where(seen, more - 1.0, 0.0)

        if self._ratios:
            sold = c > 0
            ks = k[sold]
            cs = c[sold]
            for name, target in (
                ("upe", np.log(np.maximum(rnd.units[sel][sold] / cs, 1e-9))),
                ("dsr", np.log((rnd.distinct_skus[sel][sold] + 1.0) / (cs + 1.0))),
            ):
                nn = a[f"{name}_n"][ks] + 1.0
                rate_s = np.maximum(1.0 / nn, self._level_rate)
                a[f"{name}_n"][ks] = nn
                a[name][ks] += rate_s * (target - a[name][ks])

    def _clump_size(self, k: np.ndarray) -> np.ndarray:
        """The key's index of dispersion D = Var(c) / E(c) of its window counts: 1 for sales that
        come one by one (Poisson), about the mean squared over the mean clump size for sales that
        come in clumps (an invoice's 12 lines on average: about 16)."""
        a = self._arrays
        d = (a["clump_a"][k] + _CLUMP_PRIOR_SALES) / (a["clump_b"][k] + _CLUMP_PRIOR_SALES)
        # Taken at its lower two-sigma bound (the estimate's relative error is about sqrt(2 / n)
        # over n pairs of windows): sales that come one by one keep D = 1, not the 1.05-1.2 that
        # the noise of a few hours would give them.
        lower = d * (1.0 - 2.0 * np.sqrt(2.0 / np.maximum(a["clump_n"][k], 8.0)))
        return np.minimum(np.maximum(lower, 1.0), _MAX_CLUMP)

    def _learn_clump_size(self, k: np.ndarray, c: np.ndarray, contiguous: np.ndarray) -> None:
        """Learn D from consecutive windows, E[(c_t - c_{t-1})^2] = 2 Var(c) where the rate
        hardly moves from one window to the next: no baseline is needed, so a baseline that is
        still wrong cannot bias it (exponentially weighted over about a day, like the tickets)."""
        a = self._arrays
        prev = a["prev_count"][k]
        decay = np.where(contiguous, self._ticket_decay, 1.0)
        a["clump_a"][k] = a["clump_a"][k] * decay + np.where(contiguous, (c - prev) ** 2, 0.0)
        a["clump_b"][k] = a["clump_b"][k] * decay + np.where(contiguous, c + prev, 0.0)
        a["clump_n"][k] = a["clump_n"][k] * decay + (contiguous & (c + prev > 0))
        a["prev_count"][k] = c

    def _learn_sale_mean(self, prefix: str, k: np.ndarray, m: _SaleMean, sel: np.ndarray, c: np.ndarray) -> None:
        """What a window's sales share: from windows of two sales or more against a known
        distribution, the squared deviation of their mean beyond what ``v / n`` explains, per unit
        of ``1 - 1/n`` (exponentially weighted like the tickets)."""
        a, d = self._arrays, self._ticket_decay
        seen = m.seen[sel] & (c >= 2)
        c_safe = np.maximum(c, 1.0)
        excess = np.where(seen, m.dev[sel] ** 2 - m.per_sale_var[sel] / c_safe, 0.0)
        a[prefix + "_tau_a"][k] = a[prefix + "_tau_a"][k] * d + excess
        a[prefix + "_tau_b"][k] = a[prefix + "_tau_b"][k] * d + np.where(seen, 1.0 - 1.0 / c_safe, 0.0)

    def _learn_bucket(
        self, prefix: str, bucket: int, k: np.ndarray, c: np.ndarray, r: np.ndarray, weight: np.ndarray
    ) -> None:
        a = self._arrays
        # Column views: one 1-D gather and scatter per array instead of 2-D fancy indexing.
        n_col, count_col, rev_col = (a[prefix + suffix][:, bucket] for suffix in ("_n", "_count", "_rev"))
        n = n_col[k] + 1.0
        rate = np.maximum(1.0 / n, self._season_rate) * weight
        n_col[k] = n
        old = count_col[k]
        count_col[k] = old + rate * (c - old)
        old = rev_col[k]
        rev_col[k] = old + rate * (r - old)

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        return {
            "version": 2,
            "names": list(self.names),
            "arrays": {name: arr.tolist() for name, arr in self._arrays.items()},
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        config: FeatureConfig | None = None,
        windows: WindowConfig | None = None,
        unavailable: frozenset[str] = frozenset(),
    ) -> FeatureExtractor:
        if state.get("version") == 1:
            # Version 1 did not record its features, and its default basket and assortment
            # features were ratios where version 2's are z-scores: a model fitted on those would
            # misread the new ones. The caller starts afresh (the service: a new warm-up).
            raise ValueError("feature state from an older release (version 1): its features cannot be checked")
        if state.get("version") != 2:
            raise ValueError(f"unsupported feature state version {state.get('version')!r}")
        fx = cls(config, windows, unavailable)
        if tuple(state["names"]) != fx.names:
            raise ValueError(
                f"the state's features ({', '.join(state['names'])}) are not the configured ones"
                f" ({', '.join(fx.names)}): its model cannot score them"
            )
        for name, values in state["arrays"].items():
            dtype = np.int64 if name in _INT_ARRAYS else np.float64
            arr = np.array(values, dtype=dtype)
            if arr.size == 0:
                arr = arr.reshape(fx._arrays[name].shape)
            fx._arrays[name] = arr
        # Arrays a state from an older release lacks start from scratch at the right capacity.
        fx._allocate(len(fx._arrays["level"]))
        return fx
