"""Window features per key: scale-free deviations from the key's own baselines.

One model serves keys of very different size, so every model feature compares a window with what
*that key* usually does, in units where the noise is comparable across keys:

* ``count_z`` -- the Anscombe-transformed difference between the window's event count and its
  expected count, ``2 (sqrt(c + 3/8) - sqrt(lambda + 3/8))``, about N(0, 1) for a Poisson count
  whatever its rate, divided by ``sqrt(1 + phi lambda)`` where ``phi`` is the key's
  overdispersion (how much its rate wanders beyond Poisson noise, learned, at least
  ``_PHI_FLOOR``): a busy key's ordinary ups and downs are not a quiet key's anomaly. The
  expectation is the key's seasonal baseline (hour of week once that hour has been seen in an
  earlier week, else hour of day, with the day-of-week effect counted as unknown in ``phi`` for
  as much of today's factor as the key's level has not learned yet; a bucket is trusted by the
  evidence its windows carry, a window of a key with trustworthy baselines counting whole within
  ``ROBUST_SCALE`` (2.385) standard deviations of its expectation and as ``(2.385 / z)^2``
  beyond, so that an hour seen once through a level shift is not a weekly pattern),
  shaped within the hour by the key's quarter hours of the day (a quarter's mean count over its
  hour's, shrunk towards 1 by a prior of ``SHAPE_PRIOR_SALES`` sales counted in clumps), times the
  key's level today relative to that baseline (which reverts to that baseline at its own rate
  while the key is closed, without windows: an evening's level is not the next morning's; it
  learns from each window's smoothed log ratio plus that log's average shortfall for a Poisson
  count of the expected mean, ``log_count_gap``, so that it settles where the expectation is the
  mean count: learned from the log ratios alone, a key selling about one sale a window was
  expected 25-30 % below its rate). Once
  both are known, the hour of week's expectation and the hour of day's (each with its own level)
  are averaged in logs, the hour of week weighing more as they disagree (``pooled_expected``):
  one week's hour is one day's realisation of it, that day's mood included, where the hour of day
  pools every day. Hourly buckets alone put an
  opening ramp's first minutes, and the half hour before closing, at the hour's mean: a third to
  twice too high, and where the ramp ended too low (on the generator, 64 of 142 false alerts of
  physical stores outside a first Sunday fell in a store's first or last hour). Sales that come in
  clumps (an invoice's lines, a basket scanned at once, a producer's batch) are counted in
  clumps: ``c / D`` against ``lambda / D``, ``D`` the key's index of dispersion (variance over
  mean of its window counts, learned from consecutive windows, at least 1), so that an ordinary
  invoice of 24 lines is not a spike and an hour without one is still an outage. Every count
  feature and the key's level do the same.
* ``revenue_ratio`` -- log ratio of revenue to its expectation, smoothed by one typical ticket
  (the mean of the key's sales so far, in logs; before its first, the window's own): a key's
  first sale of 25 is one sale more than expected, not revenue 26 times the expected.
* ``mean_ticket_z`` / ``max_ticket_z`` -- the window's mean and max log ticket against the key's
  ticket distribution (the max is corrected by the expected maximum of ``c`` normal draws), which
  catches price glitches and floods of tiny tickets; 0 until the key has a distribution. A key's
  spread of tickets (and of units per sale) is shrunk towards a standard deviation of 0.5 in logs
  by a prior worth ``TICKET_PRIOR_SALES`` (5) sales, which a busy key's own sales soon outweigh:
  a key of few sales, all of one quantity at one price (a SKU's, keyed by SKU), otherwise had no
  spread at all, and its next sale of two units read as 14 sigma (keyed by store and SKU, the
  generator's four days paged 0.20 false alerts per key-day, 0.07 with the prior and the typical
  ticket above; docs/measurements.md has the larger keyings where it still pages by the
  thousand).
* ``units_per_event_z`` -- the window's mean log1p(units per sale) against the key's basket sizes.
  The mean z-scores allow for sales that come together: the variance of a window's mean of ``n``
  sales is ``v / n + tau^2 (1 - 1/n)``, where ``tau^2`` is what a window's sales share (an
  invoice's lines, one customer's pack size), learned per key as the variance of the window means
  beyond ``v / n`` (one-way random effects). Without it, the lines of one invoice count as ``n``
  independent witnesses and an ordinary invoice pages.
* ``distinct_skus_z`` -- of a window's sales after its first, those that brought a SKU not yet
  sold in it: a beta-binomial count against the key's usual share and intra-window correlation,
  read as its randomised quantile residual (Dunn and Smyth 1996: ``Phi^-1`` of a point drawn by a
  deterministic uniform per key and window between ``P(X < k)`` and ``P(X <= k)``), N(0, 1)
  while the key behaves as it has, whatever its share and window sizes: a bot buying one SKU
  thirty times is far out, one repeat among a handful of sales is mild. A key whose sales bring
  no second SKU to a window (a SKU's own key, a one-product shop) has nothing to judge, and every
  window of it reads as noise, those of one sale or none too; elsewhere a window of fewer than two
  sales reads 0, as the other per-sale features do. On Anscombe's arcsine scale (still used beyond
  400 sales a window, where it is as accurate) a shop whose windows almost never repeat a SKU sat
  on one value per window size (39 of 134 alerts on a plain invoice export with no anomaly), and
  keyed by SKU every window of two sales read about +1 beside the 0 of those of one: the mixture
  put a store's busier SKUs in its tail (a week of 50 stores x 2,000 SKUs raised 57,357 alerts,
  50,612 of them led by this feature; 5,529 with the residual, none led by it).
  (``units_per_event_ratio`` and ``distinct_skus_ratio``, the plain log ratios to recent values,
  stay available.)
* ``count_context_z``, ``revenue_context_ratio`` -- the same over the last ``context_windows``
  windows, which makes sustained small deviations (a store selling nothing at a quiet hour, a
  level shift) visible; the sums restart after an alert.
* ``count_scan_z`` -- the count of the last L windows against its expectation for each L in
  ``scan_windows`` (5 to 240 by default: a quiet key's change that lasts an afternoon gathers
  its evidence over hours), as a log ratio over its standard deviation (Poisson
  plus ``phi``), counted in clumps like the rest (the gaps between a sparse key's batches are
  ordinary hours, not deficits); the horizon with the strongest evidence speaks, so a drop of a
  quiet store shows after the hour it needs while a busy one shows in minutes. The sums restart
  after an alert. While it is beyond ``freeze_z`` the key's windows teach neither its baselines
  nor the mixture.
* ``price_ratio`` -- the log ratio of the window's sale farthest from its SKU's usual unit price
  (``amount / quantity``) to that price, beyond a factor three (``ADOPT``; within it a price is one
  the SKU may well have: a customer's tier, a discount, a repricing), 0 where no sale's SKU has a
  trusted reference or none is that far. A sale rung
  up at a hundredth of its price is an ordinary ticket among a key's many (the mean ticket hardly
  moves where items cost from cents to hundreds) and unusual only for its SKU. Each key keeps a
  reference price for the SKUs it sells most (a sketch of 128, see
  :mod:`streamdetect._price_kernels`), learned sale by sale as events arrive: trusted once a
  few more sales held its price than not and it has held for an hour (a glitch's prices, rounded
  to the same cents, do not become one), worn by each sale at another price (a price more than
  three times away is not learned), so that a glitch among normal sales leaves it, a repricing
  replaces it within some twenty sales, and a SKU sold at all sorts of prices (customer tiers)
  reads little (seldom trusted, and briefly). Left out for count and value series and for events without a SKU.
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

Everything is computed over a :class:`~streamdetect.windows.ClosedRound` (all keys' windows that
close together) in one compiled loop over its rows (:mod:`streamdetect._feature_kernels`: each key's
baselines are a recurrence over its windows, and as numpy expressions a round of a few keys was
some 250 small-array operations); baselines are updated afterwards, and only from windows the caller
says to learn from (anomalies do not become the new normal). They learn robustly: a window weighs
``1 / (1 + (z / 2.385)^2)`` by the scan's z (Cauchy's weight at its usual tuning,
``robust_weight``), and while ``|z| >= freeze_z`` not at all, so that a
change still building up its evidence is not absorbed; after ``freeze_limit``, or once the
caller says the key has been flagged for long (``new_normal``), they follow it at full weight.
Both read the scan's evidence with a Poisson count's tails (``rate_z``: a log ratio whose
Poisson part is taken on Anscombe's symmetrising 2/3 power), not ``count_scan_z``'s log ratio,
whose long lower tail at small counts kept a quiet key's lulls out of its baselines more than its
busy spells and put its expected count 13-14 % above its rate; and the freeze's clock restarts
only once that z has fallen under half of ``freeze_z`` (a drop to a tenth that dipped under it
now and then was never learned as the new normal).
The seasonal buckets keep a running mean of revenue, which one price glitch would own for weeks: a
window whose mean ticket deviates beyond ``freeze_z`` teaches them its count at the hour's usual
revenue per sale (a 38-minute glitch of prices x100 in a store's first week had its hour of the
week page a week later, on normal sales).
A key that goes quiet until its idle timeout (no more windows until it sells again) has closed for
the day: the empty windows that were not learned (flagged, or frozen) are learned then into the
seasonal buckets that have no estimate yet, so that a shop's first early-closing Sunday, which pages
as it must, teaches it what its Sunday evenings look like (otherwise every Sunday would page again,
and the mixture would learn that an hour without a sale is ordinary). A bucket that has an estimate
keeps it.

A deviation that comes back at the same hour of the day on consecutive days (the hour deviated one
way, by its scan and its short context, for ``RECUR_QUALIFY_S`` on two days in a row, the later of
them today or yesterday) is a new pattern of the key's day, not an anomaly: new opening hours,
evenings that have become quiet. Its windows are learned at ``RECUR_SPEEDUP`` times the seasonal
rate into that hour's buckets, and into the same hour of the other days of the week whose estimate
there was close, and not into the level (the rest of the day did not change); with windows of a
quarter hour or shorter only. Frozen and learned only as a new normal into buckets that move a
quarter a week, a store's evenings fallen to a twelfth paged every evening; now from the sixth
evening on they do not. An hour of the week whose windows deviated one way for a quarter hour
(``STALE_QUALIFY_S``) today and on the same day a week before was learned wrong (a level shift
in a key's first week, learned while its day of the week was unknown, pages on that hour every
week after, and its windows, flagged or frozen, are not learned back): from then on its
deviating windows are learned into it at the same fast rate.
"""

from __future__ import annotations

import base64
import time
import zlib
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np
from scipy.special import ndtri

from streamdetect import _feature_kernels as kernels
from streamdetect import _price_kernels as prices
from streamdetect.config import ConfigError, EventSchema, FeatureConfig, WindowConfig
from streamdetect.windows import ClosedRound

__all__ = [
    "AVAILABLE_FEATURES",
    "PER_EVENT_FEATURES",
    "PER_SALE_FEATURES",
    "REVENUE_FEATURES",
    "FeatureExtractor",
    "LocalClock",
    "WindowFeatures",
    "compile_kernels",
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
    "price_ratio",
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
    "price_ratio": "price_vs_usual",
}

# What needs single sales (baskets, assortment, the largest ticket): a count series has totals only.
PER_EVENT_FEATURES: frozenset[str] = frozenset({
    "units_per_event_z", "units_per_event_ratio", "units", "distinct_skus_z", "distinct_skus_ratio", "distinct_skus",
    "max_ticket_z", "max_ticket", "price_ratio",
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
    "revenue_ratio_recent", "revenue", "log_revenue", "mean_ticket", "max_ticket", "price_ratio",
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
_PHI_HALF_LIFE_S = 86_400.0
_INT_ARRAYS = (
    "ctx_pos", "last_start", "how_hour", "scan_n", "scan_pos", "dev_day", "dev_cnt_day", "how_dev", "level_day",
    "price_tag", "empty_n",
)
# Columns of the kernel's output that make up a per-sale mean, the new SKUs, the context and the trend.
_TICKET_COLUMNS = (kernels.T_TICKET_DEV, kernels.T_TICKET_SALE_VAR, kernels.T_TICKET_VAR, kernels.T_TICKET_SEEN)
_UNITS_COLUMNS = (kernels.T_UNITS_DEV, kernels.T_UNITS_SALE_VAR, kernels.T_UNITS_VAR, kernels.T_UNITS_SEEN)
_SKUS_COLUMNS = (kernels.T_SKUS_Z, kernels.T_SKUS_RAW, kernels.T_SKUS_EXPECTED, kernels.T_SKUS_SEEN)
_CTX_COLUMNS = (kernels.T_CTX_COUNT, kernels.T_CTX_EXP_COUNT, kernels.T_CTX_REV, kernels.T_CTX_EXP_REV)
_TREND_COLUMNS = (kernels.T_TR_COUNT, kernels.T_TR_EXP_COUNT, kernels.T_TR_REV, kernels.T_TR_EXP_REV)


@dataclass
class _SaleMean:
    """A window's mean of a per-sale quantity (log ticket, log units) against the key's distribution."""

    dev: np.ndarray  # window mean minus the key's mean
    per_sale_var: np.ndarray  # the key's variance of one sale
    var: np.ndarray  # variance of the window's mean (what its sales share included)
    seen: np.ndarray  # bool: the window has sales and the key a distribution

    @classmethod
    def of(cls, columns: np.ndarray, which: tuple[int, int, int, int]) -> _SaleMean:
        dev, per_sale_var, var, seen = which
        return cls(columns[:, dev], columns[:, per_sale_var], columns[:, var], columns[:, seen] != 0.0)


@dataclass
class _NewSkus:
    """Of a window's sales after its first, those that brought a SKU not yet sold in the window,
    against the key's usual share of them."""

    z: np.ndarray  # variance-stabilised and allowing for the key's intra-window correlation
    raw: np.ndarray  # the same under a plain binomial (what the correlation is learned from)
    expected_distinct: np.ndarray
    seen: np.ndarray  # bool: two sales or more, and the key has a usual share

    @classmethod
    def of(cls, columns: np.ndarray, which: tuple[int, int, int, int]) -> _NewSkus:
        z, raw, expected_distinct, seen = which
        return cls(columns[:, z], columns[:, raw], columns[:, expected_distinct], columns[:, seen] != 0.0)


@dataclass
class WindowFeatures:
    """Features of one round: ``values`` feed the model; the rest explains and updates."""

    values: np.ndarray  # (n, d) in config.features order
    mature: np.ndarray  # bool: the key's baselines are trustworthy for this window
    observed: dict[str, np.ndarray]  # human-facing quantities (see _EXPLAINED_AS)
    expected_of: Callable[[], dict[str, np.ndarray]] = field(repr=False)
    expected_count: np.ndarray
    trend_log_ratio: np.ndarray  # log(observed / expected) of the weighted count sums
    scan_z: np.ndarray  # count_scan_z
    clump: np.ndarray  # the key's index of dispersion D (counts are judged in clumps of D)
    # The key's current run of windows without a sale since its last alert (0 where this one has
    # some), the sales expected over it, and its log probability under the key's count model; and
    # the whole run, which no alert restarts.
    silent_windows: np.ndarray
    silent_expected: np.ndarray
    silence_log_p: np.ndarray
    empty_windows: np.ndarray
    # The per-sale means and the new SKUs, from which update() learns what a window's sales share
    # (None where no configured feature needs them).
    ticket: _SaleMean
    units: _SaleMean | None
    new_skus: _NewSkus | None
    columns: np.ndarray = field(repr=False)  # the round's kernel output (see _feature_kernels), for update()

    @cached_property
    def expected(self) -> dict[str, np.ndarray]:
        """What each human-facing quantity was expected to be (built when an alert asks)."""
        return self.expected_of()

    @cached_property
    def reference(self) -> np.ndarray:
        """Each window's index into :data:`streamdetect.alerts.REFERENCES` (built when an alert asks)."""
        cols = self.columns
        return np.where(cols[:, kernels.T_HOW_OK] != 0.0, 2, np.where(cols[:, kernels.T_MATURE] != 0.0, 1, 0))


def expected_revenue(columns: np.ndarray, level_revenue: np.ndarray, poisson: np.ndarray) -> np.ndarray:
    """The revenue a window was expected to bring, as alerts report it: the expected count at the
    trusted reference's revenue per sale, weighed against the revenue level's expectation
    (``level_revenue``) by how Poisson the key's counts are (``poisson``: 1 for sales, 0 for a
    series of one sample a window, whose value only the revenue level follows).

    The revenue level is a running mean of ``log((r + D) / (R + D))``, and the log of a window's
    revenue (a few heavy-tailed tickets, or none) averages well below the log of its mean: on the
    generator's stores the level's expectation was 0.24-0.96 of the revenue taken (0.80 summed),
    the expected count at the bucket's revenue per sale (a ratio of two running means, which has
    no such gap) 0.74-1.22, as the count's own expectation was (0.985 summed). The features keep
    the level's ratios (the mixture learns their distribution, offset and all); what an alert says
    was expected is in the user's units.

    >>> cols = np.zeros((2, kernels.T_COLUMNS))
    >>> cols[:, kernels.T_EXPECTED_COUNT] = 2.0
    >>> cols[:, kernels.T_FALLBACK_COUNT], cols[:, kernels.T_FALLBACK_REV] = 4.0, 100.0
    >>> expected_revenue(cols, np.array([20.0, 20.0]), np.array([1.0, 0.0])).tolist()
    [50.0, 20.0]
    """
    how = columns[:, kernels.T_HOW_OK] != 0.0
    ref_count = np.where(how, columns[:, kernels.T_HOW_COUNT], columns[:, kernels.T_FALLBACK_COUNT])
    ref_revenue = np.where(how, columns[:, kernels.T_HOW_REV], columns[:, kernels.T_FALLBACK_REV])
    known = ref_count > 0.0
    per_sale = np.divide(ref_revenue, ref_count, out=np.zeros(len(ref_count)), where=known)
    share = np.where(known, poisson, 0.0)
    return share * columns[:, kernels.T_EXPECTED_COUNT] * per_sale + (1.0 - share) * level_revenue


@cache
def expected_max_z_table() -> np.ndarray:
    """Blom's expected maximum of c standard normals for the whole counts c below
    ``kernels.MAX_Z_COUNTS`` (0 for c <= 1), as :meth:`FeatureExtractor.transform` computes it.

    >>> expected_max_z_table()[[0, 1, 2, 100]].round(3).tolist()
    [0.0, 0.0, 0.589, 2.499]
    """
    c = np.arange(kernels.MAX_Z_COUNTS, dtype=np.float64)
    c_safe = np.maximum(c, 1.0)
    return np.where(c > 1, ndtri((c_safe - 0.375) / (c_safe + 0.25)), 0.0)


_Starts = TypeVar("_Starts", int, np.ndarray)


class LocalClock:
    """Where a time zone's clock stands at a UTC instant: the instant shifted by the zone's offset
    then, so that hour buckets count the shops' hours (``features.timezone``).

    >>> paris = LocalClock("Europe/Paris")  # daylight saving time from 2026-03-29 01:00 UTC
    >>> [int(h) % 24 for h in hour_buckets(paris.local_ms(np.array([1774744200000, 1774747800000])))[0]]
    [1, 3]
    >>> LocalClock("UTC").local_ms(5) == 5
    True
    """

    _STEP_MS = 900_000  # offsets change on a quarter hour in every zone

    def __init__(self, timezone: str = "UTC") -> None:
        self.zone = None if timezone == "UTC" else zoneinfo.ZoneInfo(timezone)
        self._offsets: dict[int, int] = {}  # quarter hour since the epoch -> offset in ms

    def local_ms(self, start_ms: _Starts) -> _Starts:
        if self.zone is None:
            return start_ms
        steps = np.asarray(start_ms) // self._STEP_MS
        uniq, inverse = np.unique(steps, return_inverse=True)
        offsets = np.array([self._offset(int(q)) for q in uniq.ravel().tolist()], dtype=np.int64)
        shifted = start_ms + offsets[inverse].reshape(np.shape(start_ms))
        return shifted if isinstance(start_ms, np.ndarray) else int(shifted)

    def _offset(self, quarter: int) -> int:
        off = self._offsets.get(quarter)
        if off is None:
            at = datetime.fromtimestamp(quarter * self._STEP_MS / 1000, tz=self.zone)
            delta = at.utcoffset()
            off = self._offsets[quarter] = round(delta.total_seconds() * 1000) if delta is not None else 0
        return off


def hour_buckets(start_ms: _Starts) -> tuple[_Starts, _Starts, _Starts]:
    """The hour since the epoch a window starts in, its hour of week (0 = Monday 00:00) and its
    quarter hour of the day (0-95), on the clock ``start_ms`` is given in (UTC, or a zone's wall
    clock: :class:`LocalClock`); of one start, or of every start in an array.

    >>> hour_buckets(0)  # 1970-01-01 was a Thursday
    (0, 72, 0)
    >>> [b.tolist() for b in hour_buckets(np.array([0, 86_400_000 + 2_700_000]))]
    [[0, 24], [72, 96], [0, 3]]
    """
    hour = start_ms // 3_600_000
    return hour, (hour + _EPOCH_WEEKDAY_HOURS) % _HOURS_PER_WEEK, (start_ms // 900_000) % 96


# Per-key sums laid out by a configured length (a ring of the scan's longest horizon, of the
# context's windows): a state saved under another length restarts them, all of a group together.
_RESIZED_SUMS: tuple[tuple[str, ...], ...] = (
    ("scan_ring_c", "scan_ring_e", "scan_tot_c", "scan_tot_e", "scan_n", "scan_pos"),
    ("ctx_count", "ctx_exp_count", "ctx_rev", "ctx_exp_rev", "ctx_pos"),
)


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
    >>> bool(f.mature[0]), round(float(f.values[0, 0]), 2)  # (its first week: today's factor half known)
    (True, -2.75)
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
        # within a window, and so what a window's sales share, cannot be seen there; a value
        # series' row is one sample, a count series' several sales.
        self._tickets = (
            kernels.TICKETS_SINGLE if not PER_EVENT_FEATURES & unavailable
            else kernels.TICKETS_SAMPLES if unavailable >= PER_SALE_FEATURES
            else kernels.TICKETS_ROWS
        )
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
        self._overlap = float(self.windows.size_ms / self.windows.hop_ms)  # 1 for tumbling windows
        windows_per_hour = max(3600.0 / hop_s, 1.0)
        self._min_bucket = float(min(_MIN_BUCKET, _MIN_OCCURRENCES * windows_per_hour))

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
        self._freeze_limit = float(self.config.freeze_limit / hop_s)
        self._scan = np.array(sorted(set(self.config.scan_windows)), dtype=np.int64)
        self._ring = int(self._scan[-1]) + 1
        # The configured features as values_round's codes, where it computes them all.
        codes = [kernels.VALUE_CODES.get(name, -1) for name in self.names]
        self.value_codes = np.array(codes, dtype=np.int64) if min(codes) >= 0 else None
        # Clocks: the default zone's first, then each other zone `timezones` names for some keys.
        zones = [self.config.timezone]
        zones += sorted(set(self.config.timezones.values()) - {self.config.timezone})
        self.clocks = [LocalClock(zone) for zone in zones]
        self._zone_of_value = {value: zones.index(zone) for value, zone in self.config.timezones.items()}
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
        "qod_count": (96,),
        "qod_n": (96,),
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
        "quiet_n": (_HOURS_PER_WEEK,),
        "quiet_total": (),
        "dev_day": (24,),
        "dev_run": (24,),
        "dev_cnt_day": (24,),
        "dev_cnt": (24,),
        "how_dev": (_HOURS_PER_WEEK,),
        "level_day": (),
        "day_learned": (),
        "empty_n": (),
        # Per-SKU reference prices (see _price_kernels), read and learned sale by sale as events
        # arrive, not by the window kernels.
        "price_tag": (prices.SLOTS,),
        "price_ref": (prices.SLOTS,),
        "price_n": (prices.SLOTS,),
        "price_since": (prices.SLOTS,),
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
        self._state = tuple(new[name] for name in kernels.STATE_ORDER)  # the kernels' parameters

    def _ensure(self, key_ids: np.ndarray) -> None:
        if len(key_ids) and int(key_ids.max()) >= len(self._arrays["level"]):
            self._allocate(max(int(key_ids.max()) + 1, 2 * len(self._arrays["level"]), 16))

    def evict(self, key_ids: list[int] | np.ndarray) -> None:
        """Forget evicted keys so that a reused id starts from scratch."""
        ids = np.asarray(key_ids, dtype=np.int64)
        ids = ids[ids < len(self._arrays["level"])]
        for name, arr in self._arrays.items():
            arr[ids] = np.iinfo(np.int64).min // 2 if name == "last_start" else 0

    @cached_property
    def kernel_params(self) -> tuple[Any, ...]:
        """What the kernels take besides a round and the state (``_round_kernel.score_round``'s ``params``)."""
        return (
            self.windows.hop_ms, self._min_bucket, self._trend_decay, self._tickets, self._basket_z,
            self._new_skus_z, self._scan, self._season_rate, self._level_rate, self._ticket_decay,
            self._phi_rate, float(self.config.freeze_z), self._freeze_limit, self._ratios, self._overlap,
        )  # fmt: skip

    def price_deviations(
        self, key_ids: np.ndarray, ts_ms: np.ndarray, sku_hash: np.ndarray, amount: np.ndarray, quantity: np.ndarray
    ) -> np.ndarray:
        """Each sale's log ratio of its unit price (``amount / quantity``) to its SKU's usual one, 0
        where the SKU has no trusted reference yet (or the sale no SKU, or no positive price);
        the references learn the sales, in order (see :mod:`streamdetect._price_kernels`).

        >>> fx = FeatureExtractor()
        >>> ids, sku, ts = np.zeros(5, dtype=np.int64), np.full(5, np.uint64(77)), np.arange(5) * 1_800_000
        >>> amount, quantity = np.array([4.0, 4.0, 8.0, 4.0, 400.0]), np.array([1, 1, 2, 1, 1.0])
        >>> fx.price_deviations(ids, ts, sku, amount, quantity).round(2)  # trusted after an hour
        array([0.  , 0.  , 0.  , 0.  , 4.61])
        """
        self._ensure(key_ids)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_price = np.where((amount > 0) & (quantity > 0), np.log(amount / quantity), np.nan)
        a = self._arrays
        return prices.price_deviations(
            key_ids, ts_ms, sku_hash, log_price, a["price_tag"], a["price_ref"], a["price_n"], a["price_since"]
        )

    @property
    def state_arrays(self) -> tuple[np.ndarray, ...]:
        """The baselines in ``kernels.STATE_ORDER`` (the kernels' last parameters)."""
        return self._state

    # ------------------------------------------------------------------ features
    def transform(self, rnd: ClosedRound, zones: np.ndarray | None = None) -> WindowFeatures:
        """Features of a round of windows under the baselines as they are (nothing is updated);
        ``zones`` is each key's time zone (:meth:`zone_of`), None for ``features.timezone``."""
        self._ensure(rnd.key_id)
        a, k = self._arrays, rnd.key_id
        local_ms = self._round_local_ms(rnd, zones)
        hour, how, quarter = hour_buckets(local_ms)
        c, r = rnd.count, rnd.revenue
        # Seasonal expectations, the key's tickets, baskets and assortment, the context, trend and
        # scan sums (see the module docstring), one row per window.
        cols = np.empty((len(k), kernels.T_COLUMNS))
        kernels.transform_round(
            cols, k, rnd.start_ms, self.windows.hop_ms, hour, how, quarter,
            c, r, rnd.log_ticket_sum, rnd.log_units_sum, rnd.distinct_skus,
            self._min_bucket, self._trend_decay, self._level_rate, self._tickets, self._basket_z,
            self._new_skus_z, self._scan, self._overlap, *self._state,
        )  # fmt: skip
        mature, recent_ok = cols[:, kernels.T_MATURE] != 0.0, cols[:, kernels.T_RECENT_OK] != 0.0
        expected_count, expected_rev = cols[:, kernels.T_EXPECTED_COUNT], cols[:, kernels.T_EXPECTED_REV]
        has_tickets = cols[:, kernels.T_HAS_TICKETS] != 0.0
        mu, sigma = cols[:, kernels.T_MU], cols[:, kernels.T_SIGMA]
        typical_ticket = cols[:, kernels.T_TYPICAL_TICKET]
        sold = c > 0
        c_safe = np.maximum(c, 1.0)
        expected_max_z = np.where(c > 1, ndtri((c_safe - 0.375) / (c_safe + 0.25)), 0.0)
        ticket = _SaleMean.of(cols, _TICKET_COLUMNS)
        units = _SaleMean.of(cols, _UNITS_COLUMNS) if self._basket_z else None
        new_skus = _NewSkus.of(cols, _SKUS_COLUMNS) if self._new_skus_z else None
        # Returns are reported with a window, not modelled (see the module docstring).
        no_returns = np.zeros(len(k))
        returns = rnd.returns if rnd.returns is not None else no_returns
        refunds = rnd.refunds if rnd.refunds is not None else no_returns
        ctx_c, ctx_e, ctx_r, ctx_er = (cols[:, j] for j in _CTX_COLUMNS)
        tr_count, tr_exp_count, tr_rev, tr_exp_rev = (cols[:, j] for j in _TREND_COLUMNS)
        trend_log_ratio = cols[:, kernels.T_TREND_LOG_RATIO]
        trend_poisson_var = cols[:, kernels.T_TREND_POISSON_VAR]
        clump, phi, scan_z = cols[:, kernels.T_CLUMP], cols[:, kernels.T_PHI], cols[:, kernels.T_SCAN_Z]

        mean_ticket = np.where(sold, r / c_safe, 0.0)
        units_per_event = np.where(sold, rnd.units / c_safe, 0.0)
        if self._ratios:
            log_upe = np.log(np.maximum(units_per_event, 1e-9))
            log_dsr = np.log((rnd.distinct_skus + 1.0) / (c + 1.0))
            upe_base = np.where(a["upe_n"][k] > 0, a["upe"][k], log_upe)
            dsr_base = np.where(a["dsr_n"][k] > 0, a["dsr"][k], log_dsr)
        angle_h = 2 * np.pi * ((local_ms / 3_600_000.0) % 24) / 24
        angle_w = 2 * np.pi * (((local_ms / 86_400_000.0) + 3) % 7) / 7
        n = len(k)

        computed: dict[str, Any] = {
            "count_z": lambda: cols[:, kernels.T_COUNT_Z],
            "revenue_ratio": lambda: cols[:, kernels.T_REVENUE_RATIO],
            "mean_ticket_z": lambda: cols[:, kernels.T_TICKET_Z],
            "max_ticket_z": lambda: np.where(
                sold & has_tickets, (np.log1p(rnd.max_ticket) - mu) / sigma - expected_max_z, 0.0
            ),
            "units_per_event_z": lambda: cols[:, kernels.T_UNITS_Z],
            "distinct_skus_z": lambda: new_skus.z,  # type: ignore[union-attr]
            "units_per_event_ratio": lambda: np.where(sold, log_upe - upe_base, 0.0),
            "distinct_skus_ratio": lambda: np.where(sold, log_dsr - dsr_base, 0.0),
            "count_context_z": lambda: cols[:, kernels.T_COUNT_CONTEXT_Z],
            "revenue_context_ratio": lambda: cols[:, kernels.T_REVENUE_CONTEXT_RATIO],
            "count_trend_z": lambda: trend_log_ratio / np.sqrt(trend_poisson_var + phi),
            "count_scan_z": lambda: scan_z,
            "price_ratio": lambda: np.zeros(n) if rnd.price_dev is None else prices.beyond_plausible(rnd.price_dev),
            "revenue_trend_ratio": lambda: np.log((tr_rev + typical_ticket) / (tr_exp_rev + typical_ticket)),
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
            "hour_sin": lambda: np.sin(angle_h),
            "hour_cos": lambda: np.cos(angle_h),
            "dow_sin": lambda: np.sin(angle_w),
            "dow_cos": lambda: np.cos(angle_w),
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
            "count_recent_hour": tr_count,
            "revenue_recent_hour": tr_rev,
            "count_scan": cols[:, kernels.T_SCAN_COUNT],
            # The sale farthest from its SKU's usual price, as a multiple of that price.
            "price_vs_usual": np.exp(rnd.price_dev) if rnd.price_dev is not None else np.ones(n),
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
            revenue = expected_revenue(cols, expected_rev, cols[:, kernels.T_POISSON_SHARE])
            # The context's and the trend's sums carry the same bias as the window's expectation.
            bias = np.divide(revenue, expected_rev, out=np.ones(n), where=expected_rev > 0.0)
            return {
                "count": expected_count,
                "revenue": revenue,
                "mean_ticket": np.where(has_tickets, np.expm1(mu), mean_ticket),
                "max_ticket": np.where(has_tickets, np.expm1(mu + sigma * expected_max_z), rnd.max_ticket),
                "units_per_sale": expected_units(),
                "distinct_skus": expected_distinct(),
                "count_recent_windows": ctx_e,
                "revenue_recent_windows": ctx_er * bias,
                "count_recent_hour": tr_exp_count,
                "revenue_recent_hour": tr_exp_rev * bias,
                "count_scan": cols[:, kernels.T_SCAN_EXPECTED],
                "price_vs_usual": np.ones(n),
            }

        return WindowFeatures(
            values=values,
            mature=mature,
            observed=observed,
            expected_of=expected,
            expected_count=expected_count,
            trend_log_ratio=trend_log_ratio,
            scan_z=scan_z,
            clump=clump,
            silent_windows=cols[:, kernels.T_SILENT_WINDOWS],
            silent_expected=cols[:, kernels.T_SILENT_EXPECTED],
            silence_log_p=cols[:, kernels.T_SILENCE_LOG_P],
            empty_windows=cols[:, kernels.T_EMPTY_RUN],
            ticket=ticket,
            units=units,
            new_skus=new_skus,
            columns=cols,
        )

    def zone_of(self, key: tuple[str, ...]) -> int:
        """A key's time zone, by the value of its first key field (``features.timezones``); 0 is
        ``features.timezone``."""
        return self._zone_of_value.get(key[0], 0) if key else 0

    @property
    def zoned(self) -> bool:
        """Whether some keys keep another time zone than ``features.timezone``."""
        return bool(self._zone_of_value)

    def local_ms(self, start_ms: np.ndarray, zones: np.ndarray | None = None) -> np.ndarray:
        """Window starts on their keys' wall clocks (``zones`` as :meth:`zone_of`, None: all on
        ``features.timezone``'s)."""
        if zones is None or len(self.clocks) == 1:
            return self.clocks[0].local_ms(start_ms)
        out = np.empty_like(start_ms)
        for zone in np.unique(zones).tolist():
            rows = zones == zone
            out[rows] = self.clocks[zone].local_ms(start_ms[rows])
        return out

    def _round_local_ms(self, rnd: ClosedRound, zones: np.ndarray | None) -> np.ndarray:
        if zones is None or len(self.clocks) == 1:  # one clock: the round's one start, shifted once
            return np.full(len(rnd), self.clocks[0].local_ms(rnd.start_ms), dtype=np.int64)
        return self.local_ms(np.full(len(rnd), rnd.start_ms, dtype=np.int64), zones)

    def round_buckets(
        self, starts: np.ndarray, offsets: np.ndarray, zones: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`hour_buckets` of every row of consecutive rounds (round ``r`` starts at
        ``starts[r]`` and is rows ``offsets[r]:offsets[r + 1]``) on its key's clock."""
        per_round = np.diff(offsets)
        if zones is None or len(self.clocks) == 1:
            hour, how, quarter = hour_buckets(self.clocks[0].local_ms(starts))
            return np.repeat(hour, per_round), np.repeat(how, per_round), np.repeat(quarter, per_round)
        return hour_buckets(self.local_ms(np.repeat(starts, per_round), zones))

    def explained_quantity(self, feature: str) -> str:
        """The human-facing quantity an alert reports for a model feature."""
        return _EXPLAINED_AS.get(feature, feature)

    # ------------------------------------------------------------------ learning
    def update(
        self,
        rnd: ClosedRound,
        feats: WindowFeatures,
        learn: np.ndarray,
        new_normal: np.ndarray | None = None,
        zones: np.ndarray | None = None,
    ) -> None:
        """Fold a round into the baselines; only rows with ``learn`` move them (``zones`` as
        :meth:`transform`'s).

        Rows with ``new_normal`` (a key flagged for long) move them even while they deviate.

        The short-horizon context records every window (it is what happened, anomalous or not),
        and, like the scan and the trend sums, restarts after a flagged one.
        """
        hour, how, quarter = hour_buckets(self._round_local_ms(rnd, zones))
        kernels.update_round(
            rnd.key_id, rnd.start_ms, self.windows.hop_ms, hour, how, quarter,
            rnd.count, rnd.revenue, rnd.units, rnd.log_ticket_sum, rnd.log_ticket_sq_sum,
            rnd.log_units_sum, rnd.log_units_sq_sum, rnd.distinct_skus,
            feats.columns, learn, new_normal if new_normal is not None else np.zeros(len(learn), dtype=bool),
            self._season_rate, self._level_rate, self._ticket_decay, self._phi_rate,
            float(self.config.freeze_z), self._freeze_limit, self._min_bucket,
            self._tickets, self._basket_z, self._new_skus_z, self._ratios, *self._state,
        )  # fmt: skip

    # ------------------------------------------------------------------ state
    def to_state(self, rows: int | None = None) -> dict[str, Any]:
        """The baselines as JSON, each array packed as bytes (see :func:`pack_array`); ``rows``:
        only the first, the key ids ever assigned (the arrays grow by doubling, and a row no key
        had holds nothing)."""
        return {
            "version": 3,
            "names": list(self.names),
            "arrays": {name: pack_array(arr[:rows]) for name, arr in self._arrays.items()},
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
        if state.get("version") not in (2, 3):
            raise ValueError(f"unsupported feature state version {state.get('version')!r}")
        fx = cls(config, windows, unavailable)
        if tuple(state["names"]) != fx.names:
            raise ValueError(
                f"the state's features ({', '.join(state['names'])}) are not the configured ones"
                f" ({', '.join(fx.names)}): its model cannot score them"
            )
        saved = saved_arrays(state)
        for name, arr in saved.items():
            if arr.size == 0:
                saved[name] = arr.reshape((0, *fx._arrays[name].shape[1:]))
        for group in _RESIZED_SUMS:
            # Saved under other horizons (`scan_windows`, `context_windows`): those sums restart,
            # as after an alert, and the rest of the baselines carry on.
            if any(saved[n].shape[1:] != fx._arrays[n].shape[1:] for n in group if n in saved):
                for n in group:
                    saved.pop(n, None)
        fx._arrays.update(saved)
        # Arrays a state from an older release lacks start from scratch at the right capacity.
        fx._allocate(len(fx._arrays["level"]))
        return fx


def pack_array(arr: np.ndarray) -> dict[str, Any]:
    """An array as JSON: its dtype, shape and bytes (zlib, then base64). A partition's baselines
    are some 12 KB per key; as lists of numbers, 20,000 keys took 2.5 s to write out and 4 s to
    read back, a stall of the service's loop at every checkpoint (each `kafka.checkpoint_interval`).

    >>> a = np.arange(6.0).reshape(2, 3)
    >>> packed = pack_array(a)
    >>> packed["dtype"], packed["shape"], np.array_equal(unpack_array(packed), a)
    ('<f8', [2, 3], True)
    """
    data = zlib.compress(np.ascontiguousarray(arr).tobytes(), 1)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "zlib": base64.b64encode(data).decode("ascii")}


def unpack_array(packed: dict[str, Any]) -> np.ndarray:
    """The array :func:`pack_array` packed (writable)."""
    data = bytearray(zlib.decompress(base64.b64decode(packed["zlib"])))
    return np.frombuffer(data, dtype=np.dtype(packed["dtype"])).reshape(packed["shape"])


def saved_array(values: dict[str, Any] | list[Any], dtype: type) -> np.ndarray:
    """An array of ``dtype`` from a saved state: packed by :func:`pack_array`, or a list of numbers
    (the releases before 2026-12-01's sixth stop)."""
    return (unpack_array(values) if isinstance(values, dict) else np.array(values)).astype(dtype, copy=False)


def saved_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The baselines of a saved :class:`FeatureExtractor` state, by name (version 3: packed;
    version 2: lists of numbers)."""
    return {
        name: saved_array(values, np.int64 if name in _INT_ARRAYS else np.float64)
        for name, values in state["arrays"].items()
    }


def compile_kernels() -> float:
    """Compile (or load from numba's cache) the per-round kernels by running one round through a
    throwaway extractor, and the per-SKU price references on one sale; the seconds it took. A
    service calls it before joining its consumer group: compiling afresh takes seconds, which
    inside the first batch could outlast the group's ``max.poll.interval.ms``.

    >>> compile_kernels() >= 0.0
    True
    """
    started = time.perf_counter()
    fx = FeatureExtractor(FeatureConfig(features=AVAILABLE_FEATURES), WindowConfig())
    one, zero = np.ones(1), np.zeros(1, dtype=np.int64)
    rnd = ClosedRound(0, fx.windows.size_ms, zero, one, one, one, one, one, one, one, zero, one, one)
    fx.update(rnd, fx.transform(rnd), np.ones(1, dtype=bool), np.zeros(1, dtype=bool))
    fx.price_deviations(zero, zero, np.ones(1, dtype=np.uint64), one, one)
    return time.perf_counter() - started
