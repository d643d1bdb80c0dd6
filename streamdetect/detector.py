"""The detector core: raw sales events in, scored windows and alerts out, no I/O.

One :class:`Detector` serves one stream (one Kafka partition, or one replayed file):

1. decode and validate the events (:mod:`streamdetect.events`); bad ones are returned as
   rejects with a reason, good ones go on;
2. event-time windows per key with a watermark (:mod:`streamdetect.windows`); events behind the
   watermark are rejected as ``late``;
3. per round of closed windows, scale-free features against each key's baselines
   (:mod:`streamdetect.features`), standardised (:mod:`streamdetect.scaling`);
4. score-then-learn: the negative log-likelihood under the stepwise-EM mixture
   (:mod:`streamdetect.model`) is compared with an adaptive threshold
   (:mod:`streamdetect.threshold`); windows above it become alerts with an explanation, and so
   does an empty window whose key's run of them its count model finds less likely than
   ``silence_risk`` (``silence_alerts``: an outage, caught in the fewest windows its rate allows);
5. the model, the threshold and the drift monitor (:mod:`streamdetect.drift`) learn from the
   scores and windows in fixed-size batches; flagged windows are not learned unless so many are
   flagged that it is a regime change, or a key stays flagged for long (its new normal).

Warm-up: until ``model.warmup`` windows from keys with trustworthy baselines have been seen (or
they span ``model.warmup_span`` of event time, for sparse streams), no window is scored; then the
scaler and the mixture are fitted (the highest-scoring ``trim_fraction`` of the warm-up windows
left out). The threshold calibrates on the first ``threshold.n_init`` out-of-sample scores (or
those of ``threshold.calibration_span``); alerts start after that.

An aggregated series (``events.value_field`` or ``events.count_field``) has one sample per window:
a window without one is a missing measurement, not a zero, so it is neither scored nor learned. A
value series' window with several samples (an irregular sampling clock) is judged by their mean,
as one sample; a count series' counts add up.

Everything proceeds in event time and in window rounds, so the output does not depend on how the
input is cut into batches, and the same input gives the same output byte for byte.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamdetect._json_kernels import rehash
from streamdetect._round_kernel import NEEDS_NUMPY, STEP_DUE, score_rounds
from streamdetect._sorted_kernels import replace_sorted
from streamdetect.alerts import (
    REFERENCES,
    SEVERITIES,
    VALUE_SERIES_NAMES,
    Alert,
    Contribution,
    EpisodeResolved,
    Silence,
    format_time,
)
from streamdetect.config import DetectorConfig, EventSchema, WindowConfig
from streamdetect.drift import ScoreDriftMonitor
from streamdetect.events import NO_ID, EventBatch, Rejected, RejectReason, decode_events, decode_records
from streamdetect.features import (
    FeatureExtractor,
    WindowFeatures,
    expected_max_z_table,
    pack_array,
    saved_array,
    unavailable_features,
)
from streamdetect.features import compile_kernels as compile_feature_kernels
from streamdetect.model import StepwiseGMM
from streamdetect.scaling import RobustScaler
from streamdetect.threshold import fit_truncated_gpd, make_threshold, threshold_from_state
from streamdetect.windows import ClosedRound, ClosedRounds, WindowAggregator

__all__ = ["Detector", "DetectorOutput", "DetectorStats", "ScoredWindows", "compile_kernels", "sparse_keys_advice"]

STATE_VERSION = 1


@dataclass
class ScoredWindows:
    """One row per scored window (columnar)."""

    keys: list[dict[str, str]]
    start_ms: np.ndarray
    end_ms: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    probability: np.ndarray
    is_anomaly: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    event_time_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls, feature_names: tuple[str, ...]) -> ScoredWindows:
        i64, f64 = np.zeros(0, dtype=np.int64), np.zeros(0)
        return cls([], i64, i64.copy(), f64, f64.copy(), f64.copy(), np.zeros(0, dtype=bool),
                   np.zeros((0, len(feature_names))), feature_names, i64.copy())

    @classmethod
    def concat(cls, parts: Sequence[ScoredWindows], feature_names: tuple[str, ...]) -> ScoredWindows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(feature_names)
        return cls(
            keys=[k for p in parts for k in p.keys],
            start_ms=np.concatenate([p.start_ms for p in parts]),
            end_ms=np.concatenate([p.end_ms for p in parts]),
            score=np.concatenate([p.score for p in parts]),
            threshold=np.concatenate([p.threshold for p in parts]),
            probability=np.concatenate([p.probability for p in parts]),
            is_anomaly=np.concatenate([p.is_anomaly for p in parts]),
            features=np.concatenate([p.features for p in parts]),
            feature_names=feature_names,
            event_time_ms=np.concatenate([p.event_time_ms for p in parts]),
        )


@dataclass
class DetectorOutput:
    alerts: list[Alert]
    rejected: list[Rejected]
    scored: ScoredWindows
    n_valid: int
    drift_detected: bool
    n_returns: int = 0  # valid events that were returns (in n_valid)
    resolved: list[EpisodeResolved] = field(default_factory=list)  # episodes that ended
    # The alerts and the resolutions in the order they happened: what the alerts stream carries.
    messages: list[Alert | EpisodeResolved] = field(default_factory=list)


@dataclass
class DetectorStats:
    warmed_up: bool
    threshold: float
    drift_statistic: float
    drift_events: int
    mean_log_likelihood: float
    component_weights: list[float]
    model_updates: int
    active_keys: int
    open_windows: int
    open_episodes: int  # keys with an episode of alerts not yet resolved
    watermark_ms: int | None
    late_events: int
    newest_event_ms: int | None = None  # the newest event time seen (the watermark may run ahead: advance)
    # Windows closed since this detector was made (warm-up included), those that held no event,
    # and the events in them: how sparse the keys are (see sparse_keys_advice).
    windows_closed: int = 0
    windows_empty: int = 0
    window_events: float = 0.0


@dataclass
class _RoundScores:
    """What one round (or a stretch of compiled rounds) contributed to the output, before concatenation."""

    key_ids: np.ndarray
    start_ms: np.ndarray
    end_ms: np.ndarray
    score: np.ndarray
    threshold: float
    probability: np.ndarray | None  # None until Detector._settle_probabilities
    is_anomaly: np.ndarray
    features: np.ndarray
    event_time_ms: np.ndarray


@dataclass
class _Pending:
    """Windows scored since the last learning step (learning runs in fixed-size batches)."""

    X: list[np.ndarray] = field(default_factory=list)
    weight: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    n: int = 0

    def add(self, X: np.ndarray, weight: np.ndarray, score: np.ndarray) -> None:
        self.X.append(X)
        self.weight.append(weight)
        self.score.append(score)
        self.n += len(X)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = (np.concatenate(self.X), np.concatenate(self.weight), np.concatenate(self.score))
        self.X, self.weight, self.score, self.n = [], [], [], 0
        return out


class _HeldScores:
    """Scores on their way to the threshold, each held until the windows of its key that follow it
    within ``span_ms`` have been scored, and dropped if one of them was flagged.

    An anomaly rarely starts with an alert: its first windows score high without crossing the
    threshold, and learning them fattens the very tail that sets it (on the generator, labelled
    windows were 29 % of the scores the threshold's peaks came from). The windows just after an
    alert are kept out already (``calm``); this keeps out those just before one too.
    """

    def __init__(self, span_ms: int) -> None:
        self.span_ms = span_ms
        self.key_id = np.zeros(0, dtype=np.int64)
        self.start_ms = np.zeros(0, dtype=np.int64)
        self.score = np.zeros(0)
        self.calm = np.zeros(0, dtype=bool)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, key_id: np.ndarray, start_ms: np.ndarray, score: np.ndarray, calm: np.ndarray) -> None:
        self._parts.append((key_id, start_ms, score, calm))

    def _gather(self) -> None:
        if self._parts:
            parts = [(self.key_id, self.start_ms, self.score, self.calm), *self._parts]
            columns = (np.concatenate(col) for col in zip(*parts, strict=True))
            self.key_id, self.start_ms, self.score, self.calm = columns
            self._parts = []

    def flagged(self, key_ids: np.ndarray, start_ms: int) -> None:
        """Keys flagged in the window starting at ``start_ms``: their windows just before it go."""
        self._gather()
        before = np.flatnonzero((self.start_ms >= start_ms - self.span_ms) & (self.start_ms < start_ms))
        self.calm[before[np.isin(self.key_id[before], key_ids)]] = False

    def release(self, scored_until_ms: int) -> np.ndarray:
        """The calm scores of the windows whose followers are all scored (the last window scored
        starts at ``scored_until_ms``), which leave the hold."""
        self._gather()
        ready = self.start_ms + self.span_ms <= scored_until_ms
        out = self.score[ready & self.calm]
        keep = ~ready
        self.key_id, self.start_ms, self.score, self.calm = (
            self.key_id[keep], self.start_ms[keep], self.score[keep], self.calm[keep]
        )
        return out

    def to_state(self) -> dict[str, dict[str, Any]]:
        """The held scores as packed arrays (a partition of many keys holds hundreds of thousands)."""
        self._gather()
        return {"key_id": pack_array(self.key_id), "start_ms": pack_array(self.start_ms),
                "score": pack_array(self.score), "calm": pack_array(self.calm)}  # fmt: skip

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state`'s arrays, or the lists of numbers of the releases before."""
        self._parts = [(saved_array(state["key_id"], np.int64), saved_array(state["start_ms"], np.int64),
                        saved_array(state["score"], np.float64), saved_array(state["calm"], bool))]  # fmt: skip


_NEVER_FLAGGED = 1 << 40
# The detector's per-key arrays (indexed by key id), with their dtype and the value of a key they
# know nothing of; saved in the state under these names (an older release's state may lack some).
_PER_KEY: dict[str, tuple[type, float]] = {
    "flag_streak": (np.int64, 0),  # flagged windows since the key was last calm (its new normal)
    "since_flag": (np.int64, _NEVER_FLAGGED),  # windows since the key's last alert
    "episode_alerts": (np.int64, 0),  # alerts of the key's open episode (0: none open)
    "episode_quiet": (np.int64, 0),  # windows since then without an alert or a sustained deviation
    "episode_start": (np.int64, -1),  # first window of the key's last episode (-1: unknown)
    "episode_end": (np.int64, -1),  # end of the open episode's last alerting window
    "episode_peak": (np.float64, 0.0),  # the open episode's highest score
    "episode_severity": (np.int64, 0),  # and its highest severity (an index of SEVERITIES)
    "unit": (np.float64, 0.0),  # the factor a value series' samples are multiplied by (0: none yet)
}
_UNIT_VALUE = 100.0  # a value series whose first sample is below 1 is rescaled to put it here
# What an alert reports in a value series' own units (the detector works in shifted and rescaled
# ones), each with the count of samples it adds up (that many offsets to take off).
_VALUE_QUANTITIES = {
    "revenue": "count",
    "mean_ticket": "count",
    "max_ticket": "count",
    "revenue_recent_windows": "count_recent_windows",
    "revenue_recent_hour": "count_recent_hour",
}
# What an alert reports of its window besides the model's features, by the kind of input: sales
# have tickets, baskets, SKUs and returns; a count series has counts (and their revenue when it has
# a value column); a value series has its value.
_SALES_QUANTITIES = ("count", "revenue", "mean_ticket", "max_ticket", "units_per_sale", "distinct_skus", "returns",
                     "refunds")
_UNPRICED_QUANTITIES = ("count", "units_per_sale", "distinct_skus", "returns")  # sales without amounts
_ROWS_PER_FEATURE = 50  # the least warm-up a mixture with full covariances is fitted on
_MIN_CALIBRATION = 100  # the fewest scores a threshold is calibrated on (threshold.n_init's floor)


def warmup_needs(config: DetectorConfig) -> str:
    """What ends the warm-up, in words.

    >>> warmup_needs(DetectorConfig()).split(" (")[0]
    '5,000 scorable windows, or 24 h of them with at least 50 per model feature'
    """
    m = config.model
    span = f"{m.warmup_span / 3600:g} h"
    return (
        f"{m.warmup:,} scorable windows, or {span} of them with at least {_ROWS_PER_FEATURE} per model feature"
        " (a key's windows are scorable once its seasonal baseline is trusted)"
    )


def calibration_needs(config: DetectorConfig) -> str:
    """What ends the threshold's calibration, in words.

    >>> calibration_needs(DetectorConfig())
    '2,000 scores, or 24 h of them and at least 100'
    """
    t = config.threshold
    return f"{t.n_init:,} scores, or {t.calibration_span / 3600:g} h of them and at least {_MIN_CALIBRATION}"


# sparse_keys_advice speaks once this many windows have closed, when more than this share of them
# held no event and those that did held fewer than this many on average.
_SPARSE_MIN_WINDOWS = 5_000
_SPARSE_EMPTY_SHARE = 0.9
_SPARSE_EVENTS_PER_WINDOW = 2.0
_WINDOW_SIZES = ((300, "5 min"), (900, "15 min"), (3_600, "1 h"), (21_600, "6 h"), (86_400, "1 day"))


def sparse_keys_advice(stats: DetectorStats, window_s: float) -> str | None:
    """Advice when the keys sell too rarely for their windows (else ``None``), in words.

    Keyed finely (a store and a SKU, say), most keys sell a few times a day: nearly every minute
    window is empty, a key's silence is no evidence (nothing was expected), and the windows with a
    sale hold one, which the per-sale features judge on a single draw. The mixture then learns
    the empty windows as a point mass and the windows with a sale drift into its tail (measured: a
    week of 50 stores x 2,000 SKUs in minute windows raised an alert for most sales; hourly windows
    on four days of 10 x 500: 1 alert in 5,483 windows). Longer windows or coarser keys give each
    window a few sales.

    >>> sparse = DetectorStats(True, 20.0, 0.0, 0, 0.0, [], 0, 5_000, 0, 0, None, 0,
    ...                        windows_closed=200_000, windows_empty=192_000, window_events=9_700.0)
    >>> print(sparse_keys_advice(sparse, 60.0))  # doctest: +NORMALIZE_WHITESPACE
    96 % of the 200,000 windows closed held no event, and those with events held 1.2 on average:
    the keys sell too rarely for windows of 60 s (a key's silence is evidence only where sales were
    expected, and one sale says little). Windows of 1 h (windows.size, --window) or coarser keys
    (events.key_fields, --key) would give each window a few.
    >>> busy = DetectorStats(True, 20.0, 0.0, 0, 0.0, [], 0, 20, 0, 0, None, 0,
    ...                      windows_closed=200_000, windows_empty=60_000, window_events=800_000.0)
    >>> sparse_keys_advice(busy, 60.0) is None
    True
    """
    n, empty = stats.windows_closed, stats.windows_empty
    if n < _SPARSE_MIN_WINDOWS or empty <= _SPARSE_EMPTY_SHARE * n:
        return None
    per_busy_window = stats.window_events / max(n - empty, 1)
    if per_busy_window >= _SPARSE_EVENTS_PER_WINDOW:
        return None  # events come in clumps (an invoice's lines): each busy window says enough
    # A window long enough for about two events of an average key, rounded up to a usual size.
    wanted = window_s * _SPARSE_EVENTS_PER_WINDOW * n / max(stats.window_events, 1.0)
    size = next((name for s, name in _WINDOW_SIZES if s >= wanted), _WINDOW_SIZES[-1][1])
    return (
        f"{100 * empty / n:.0f} % of the {n:,} windows closed held no event, and those with events held"
        f" {per_busy_window:.1f} on average: the keys sell too rarely for windows of {window_s:g} s"
        " (a key's silence is evidence only where sales were expected, and one sale says little)."
        f" Windows of {size} (windows.size, --window) or coarser keys (events.key_fields, --key)"
        " would give each window a few."
    )


def _record(
    batch: EventBatch, rows: np.ndarray, rejected: list[Rejected], reason: RejectReason, detail: Callable[[int], str]
) -> None:
    """Add the batch's ``rows`` (positions) to ``rejected`` (kept in input order) with ``reason``
    and ``detail(row)``."""
    for pos in rows.tolist():
        rejected.append(Rejected(int(batch.index[pos]), reason, detail(pos)))
    rejected.sort(key=lambda r: r.index)


def _refused(
    batch: EventBatch, refuse: np.ndarray, rejected: list[Rejected], reason: RejectReason, detail: Callable[[int], str]
) -> EventBatch:
    """``batch`` without the rows marked in ``refuse``, which join ``rejected`` (:func:`_record`)."""
    if not refuse.any():
        return batch
    _record(batch, np.flatnonzero(refuse), rejected, reason, detail)
    return batch.take(np.flatnonzero(~refuse))


def _mean_sample(rounds: ClosedRounds) -> ClosedRounds:
    """A series' window as one sample: the mean of its samples (a level, not a sum of levels); a
    round whose windows all hold one sample or none is left as it is."""
    c = np.maximum(rounds.count, 1.0)
    several = c != 1.0
    if not several.any():
        return rounds
    touched = np.repeat(np.add.reduceat(several, rounds.offsets[:-1]) > 0, np.diff(rounds.offsets))
    c = np.where(touched, c, 1.0)
    return replace(
        rounds,
        count=np.where(touched, np.minimum(rounds.count, 1.0), rounds.count),
        revenue=rounds.revenue / c,
        units=rounds.units / c,
        distinct_skus=np.where(touched, np.minimum(rounds.distinct_skus, 1.0), rounds.distinct_skus),
        log_ticket_sum=rounds.log_ticket_sum / c,
        log_ticket_sq_sum=rounds.log_ticket_sq_sum / c,
    )


def compile_kernels() -> float:
    """Compile (or load from numba's cache) the events', the windows', the features', the
    mixture's, the threshold's and the detector's kernels; the seconds it took. A service calls it
    before joining its consumer group: compiling afresh takes seconds, which inside the first batch
    could outlast the group's ``max.poll.interval.ms``.

    >>> compile_kernels() >= 0.0
    True
    """
    started = time.perf_counter()
    decode_events([b'{"ts": "2024-03-01T12:00:00.000Z", "store_id": "k", "amount": 1}'], EventSchema())
    rehash(np.full(2, -1, dtype=np.int64), np.zeros(0, dtype=np.uint64), 0)  # the scanner's string ids, grown
    StepwiseGMM(n_components=1, n_init=1).fit(np.arange(20.0).reshape(10, 2) % 7)  # the batch EM's M-step
    compile_feature_kernels()
    fit_truncated_gpd(np.linspace(0.1, 1.0, 40), 2.0)  # SPOT's tail refits: their likelihood and searches
    one = np.ones(1)
    replace_sorted(one, one, one)  # SPOT's sorted window
    windows = WindowAggregator()
    windows.add(np.zeros(1, dtype=np.int64), [("k",)], amount=one, quantity=one, sku_hash=np.zeros(1, dtype=np.uint64))
    list(windows.pop_closed(flush=True))
    Detector()._compile()
    return time.perf_counter() - started


def _window_config(config: DetectorConfig) -> WindowConfig:
    """The windows as configured; for an aggregated series, no zero windows for silent keys."""
    if not config.events.aggregated:
        return config.windows
    # One sample per window: a window without one is a missing measurement, not a zero.
    return replace(config.windows, idle_timeout=0.0)


def _severity(tail: np.ndarray, risk: float) -> np.ndarray:
    """Severity (an index of ``SEVERITIES``) from the tail probability relative to the alert budget:
    ``warning`` past the threshold, ``major`` ten times below ``risk``, ``critical`` a hundred."""
    return (tail < risk / 10).astype(np.int64) + (tail < risk / 100)


class Detector:
    """The streaming detector for one input stream; see the module docstring.

    Examples
    --------
    >>> import orjson
    >>> det = Detector()
    >>> out = det.process([b'{"ts": "2026-01-05T10:00:00Z", "store_id": "s1", "quantity": 2, "unit_price": 5}',
    ...                    b'not json'])
    >>> out.n_valid, [(r.index, str(r.reason)) for r in out.rejected]
    (1, [(1, 'decode')])
    >>> det.stats().warmed_up
    False
    """

    # the per-key arrays of ``_PER_KEY``
    _flag_streak: np.ndarray
    _since_flag: np.ndarray
    _episode_alerts: np.ndarray
    _episode_quiet: np.ndarray
    _episode_start: np.ndarray
    _episode_end: np.ndarray
    _episode_peak: np.ndarray
    _episode_severity: np.ndarray
    _unit: np.ndarray

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = cfg = config or DetectorConfig()
        self.windows = WindowAggregator(_window_config(cfg))
        self.features = FeatureExtractor(cfg.features, cfg.windows, unavailable=unavailable_features(cfg.events))
        self._use_zones()
        self.scaler = RobustScaler()
        self.model = self._new_model()
        self.threshold = make_threshold(cfg.threshold)
        self.drift = ScoreDriftMonitor(cfg.drift)
        self._warmup_rows: list[np.ndarray] = []
        self._warmup_n = 0
        self._warmup_from_ms: int | None = None  # event time of the first warm-up window
        self._fitted_at_ms: int | None = None  # event time at which the mixture was first fitted
        self._pending = _Pending()
        # Rounds of the compiled path whose probabilities are computed together, before the
        # threshold next changes (one call instead of one per round).
        self._unsettled: list[_RoundScores] = []
        for name, (dtype, _) in _PER_KEY.items():
            setattr(self, "_" + name, np.zeros(0, dtype=dtype))
        self._cooldown = 2 * cfg.features.context_windows
        self._held = _HeldScores(self._cooldown * cfg.windows.hop_ms)
        # A value series' samples are levels (a window of several is their mean); counts add up.
        self._samples_are_levels = cfg.events.value_series
        # Below this log probability a key's run of empty windows flags its window (-inf: never;
        # a value series' empty window is a missing sample).
        silence_risk = cfg.silence_risk if cfg.silence_risk is not None else cfg.threshold.risk
        self._silence_log_risk = (
            math.log(silence_risk) if cfg.silence_alerts and not cfg.events.value_series else -math.inf
        )
        # Per-SKU prices, where the model reads them (not of a count or value series: see
        # features.unavailable_features).
        self._prices = "price_ratio" in self.features.names
        ev = cfg.events
        self._alert_names = VALUE_SERIES_NAMES if ev.value_series else {}
        self._alert_quantities: tuple[str, ...] = (
            ("revenue",) if ev.value_series
            else ("count",) if ev.count_field is not None and ev.value_field is None
            else ("count", "revenue", "mean_ticket") if ev.count_field is not None
            else _UNPRICED_QUANTITIES if ev.unpriced
            else _SALES_QUANTITIES
        )
        self.windows_scored = 0
        self.regime_changes = 0
        # Event ids accepted recently, in two generations (see _refuse_duplicates); not in the state.
        self._ids_current: set[int] = set()
        self._ids_previous: set[int] = set()
        self._ids_since_ms: int | None = None
        self._windows_closed = 0
        self._windows_empty = 0
        self._window_events = 0.0

    def _new_model(self, min_variance: tuple[float, ...] | float = 0.0) -> StepwiseGMM:
        m = self.config.model
        return StepwiseGMM(
            min_variance=min_variance,
            n_components=m.n_components,
            max_components=m.max_components,
            step_exponent=m.step_exponent,
            step_floor=m.step_floor,
            reg_covar=m.reg_covar,
            warmup=m.warmup,
            n_init=m.n_init,
            seed=m.seed,
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.features.names

    @property
    def warmed_up(self) -> bool:
        return self.model.is_fitted

    # ------------------------------------------------------------------ public API
    def process(self, values: Sequence[bytes | None], now_ms: int | None = None) -> DetectorOutput:
        """Process raw event values (e.g. Kafka message values) in arrival order."""
        batch, rejected = decode_events(values, self.config.events)  # type: ignore[arg-type]
        return self._run(batch, rejected, now_ms)

    def process_records(self, records: Sequence[Mapping[str, Any]], now_ms: int | None = None) -> DetectorOutput:
        """Process already parsed events (e.g. CSV rows) in arrival order."""
        batch, rejected = decode_records(records, self.config.events)
        return self._run(batch, rejected, now_ms)

    def flush(self, now_ms: int | None = None) -> DetectorOutput:
        """End of input: close and score every open window."""
        return self._run(EventBatch.empty(), [], now_ms, flush=True)

    def advance(self, clock_ms: int, now_ms: int | None = None) -> DetectorOutput:
        """The stream's event time has reached ``clock_ms`` though no event came (the service's
        clock for a partition gone quiet): the windows the watermark now passes close and are
        scored, so keys that stopped selling get their zero windows. Events older than the new
        watermark are late from then on, as after any event that recent."""
        self.windows.advance(clock_ms)
        return self._run(EventBatch.empty(), [], now_ms)

    def stats(self) -> DetectorStats:
        fitted = self.model.is_fitted
        return DetectorStats(
            warmed_up=fitted,
            threshold=float(self.threshold.threshold),
            drift_statistic=float(self.drift.psi_),
            drift_events=int(self.drift.drift_events_),
            mean_log_likelihood=float(self.model.mean_log_likelihood_) if fitted else float("nan"),
            component_weights=[float(w) for w in self.model.weights_] if fitted else [],
            model_updates=int(self.model.n_updates_) if fitted else 0,
            active_keys=self.windows.active_keys,
            open_windows=self.windows.open_windows,
            open_episodes=int(np.count_nonzero(self._episode_alerts)),
            watermark_ms=self.windows.watermark_ms,
            late_events=self.windows.late_events,
            newest_event_ms=self.windows.newest_event_ms,
            windows_closed=self._windows_closed,
            windows_empty=self._windows_empty,
            window_events=self._window_events,
        )

    # ------------------------------------------------------------------ pipeline
    def _run(
        self, batch: EventBatch, rejected: list[Rejected], now_ms: int | None, flush: bool = False
    ) -> DetectorOutput:
        if len(batch):
            batch = self._refuse_ahead_of_clock(batch, rejected, now_ms)
        if batch.id_hash is not None and len(batch):
            batch = self._refuse_duplicates(batch, rejected)
        if len(self.windows.keys) + len(batch) > self.config.windows.max_keys:
            batch = self._refuse_new_keys(batch, rejected)
        # A value series' amounts are rescaled per key, and sales are priced per key: the key ids
        # serve both.
        per_key = self._samples_are_levels or self._prices
        key_ids = self.windows.keys.ids(batch.keys) if per_key and len(batch) else None
        late = self.windows.add(
            batch.ts_ms,
            batch.keys,
            amount=self._in_units(batch, key_ids),
            quantity=batch.quantity,
            sku_hash=batch.sku_hash,
            count=batch.count,
            key_ids=key_ids,
            is_return=batch.is_return,
            price_dev=self._price_deviations(batch, key_ids),
        )
        if len(late):
            wm = self.windows.watermark_ms
            _record(
                batch, late, rejected, RejectReason.LATE,
                lambda pos: f"event time {format_time(int(batch.ts_ms[pos]))} is behind the watermark"
                f" {format_time(wm) if wm is not None else '-'} by more than the allowed lateness",
            )  # fmt: skip

        messages: list[Alert | EpisodeResolved] = []
        rounds: list[_RoundScores] = []
        drift = False
        closed = self.windows.close_rounds(flush=flush)
        if closed is not None:
            if self._samples_are_levels:
                closed = _mean_sample(closed)
            self._windows_closed += len(closed.count)
            self._windows_empty += int(np.count_nonzero(closed.count == 0))
            self._window_events += float(closed.count.sum())
            drift = self._process_rounds(closed, now_ms, messages, rounds)
        self._settle_probabilities()
        if self.windows.evicted:
            self._forget(self.windows.evicted, self.windows.evicted_keys, now_ms, messages)
            self.windows.evicted.clear()
            self.windows.evicted_keys.clear()
        return DetectorOutput(
            alerts=[m for m in messages if isinstance(m, Alert)],
            rejected=rejected,
            scored=self._collect(rounds),
            n_valid=len(batch) - len(late),
            drift_detected=drift,
            n_returns=0 if batch.is_return is None else int(np.count_nonzero(np.delete(batch.is_return, late))),
            resolved=[m for m in messages if isinstance(m, EpisodeResolved)],
            messages=messages,
        )

    def _refuse_new_keys(self, batch: EventBatch, rejected: list[Rejected]) -> EventBatch:
        """``batch`` without the events of keys that would take the detector past
        ``windows.max_keys`` (new keys are admitted in arrival order while there is room), which
        join ``rejected``."""
        room = self.config.windows.max_keys - len(self.windows.keys)
        refused: dict[tuple[str, ...], bool] = {}
        refuse = np.zeros(len(batch), dtype=bool)
        for pos in np.flatnonzero(~self.windows.keys.known(batch.keys)).tolist():
            key = batch.keys[pos]
            if key not in refused:
                refused[key] = room <= 0
                room -= 1
            refuse[pos] = refused[key]
        limit, fields = self.config.windows.max_keys, self.config.events.key_fields
        return _refused(
            batch, refuse, rejected, RejectReason.KEY_LIMIT,
            lambda pos: f"key {dict(zip(fields, batch.keys[pos], strict=False))}: a new key beyond"
            f" windows.max_keys ({limit:,} keys held); raise it, or key coarser",
        )  # fmt: skip

    def _refuse_duplicates(self, batch: EventBatch, rejected: list[Rejected]) -> EventBatch:
        """``batch`` without the events whose id was accepted before (``events.deduplicate``),
        which join ``rejected``.

        The ids are kept in two generations of sets, each as long in event time as an event's
        windows can stay open (window, lateness, ``max_ahead``): an id stays at least that long,
        and a repeat that comes later finds its windows closed and is refused as late anyway.
        """
        w = self.config.windows
        clock = self.windows.max_event_ms
        if clock is not None:
            span = w.size_ms + w.lateness_ms + w.max_ahead_ms
            if self._ids_since_ms is None:
                self._ids_since_ms = clock
            elif clock - self._ids_since_ms >= span:
                self._ids_previous, self._ids_current, self._ids_since_ms = self._ids_current, set(), clock
        assert batch.id_hash is not None
        has_id = batch.id_hash != NO_ID
        ids = batch.id_hash[has_id].tolist()
        current, previous = self._ids_current, self._ids_previous
        if previous.isdisjoint(ids) and current.isdisjoint(ids):
            before = len(current)
            current.update(ids)
            if len(current) - before == len(ids):
                return batch  # no id seen before, none twice in the batch
            current.difference_update(ids)  # one came twice in the batch: none of them was in before
        repeated = np.zeros(len(batch), dtype=bool)
        for pos, h in zip(np.flatnonzero(has_id).tolist(), ids, strict=True):
            if h in current or h in previous:
                repeated[pos] = True
            else:
                current.add(h)
        detail = f"{self.config.events.event_id_field}: an event with this id was accepted already (a retry?)"
        return _refused(batch, repeated, rejected, RejectReason.DUPLICATE, lambda pos: detail)

    def _refuse_ahead_of_clock(self, batch: EventBatch, rejected: list[Rejected], now_ms: int | None) -> EventBatch:
        """``batch`` without the events too far ahead of the clock (``windows.max_ahead``), which
        join ``rejected``: the service's clock (``now_ms``) or, in a replay, the machine's."""
        clock = now_ms if now_ms is not None else int(time.time() * 1000)
        ahead = batch.ts_ms > clock + self.config.windows.max_ahead_ms
        limit_s = self.config.windows.max_ahead_ms / 1000

        def detail(pos: int) -> str:
            ts = int(batch.ts_ms[pos])
            return (
                f"event time {format_time(ts)} is {(ts - clock) / 1000:,.0f} s ahead of the clock"
                f" ({format_time(clock)}), more than windows.max_ahead ({limit_s:g} s): a clock running fast?"
            )

        return _refused(batch, ahead, rejected, RejectReason.BAD_TIMESTAMP, detail)

    def _forget(
        self,
        evicted: list[int],
        evicted_keys: list[tuple[tuple[str, ...], int]],
        now_ms: int | None,
        messages: list[Alert | EpisodeResolved],
    ) -> None:
        """Drop what is known of evicted keys; an episode still open ends as ``expired`` (a pager
        would otherwise keep an incident open for a key that no longer exists)."""
        self.features.evict(evicted)
        for kid, (key, at_ms) in zip(evicted, evicted_keys, strict=True):
            if kid < len(self._episode_alerts) and self._episode_alerts[kid] > 0:
                messages.append(self._resolution(kid, self._key_dict(kid, key), at_ms, 0, "expired", now_ms))
        gone = np.asarray(evicted, dtype=np.int64)
        gone = gone[gone < len(self._flag_streak)]  # a key never scored nor rescaled has nothing here
        for name, (_, fill) in _PER_KEY.items():
            getattr(self, "_" + name)[gone] = fill

    def _resolution(
        self, kid: int, key: dict[str, str], at_ms: int, calm_windows: int, reason: str, now_ms: int | None
    ) -> EpisodeResolved:
        start = int(self._episode_start[kid])
        end = int(self._episode_end[kid])
        return EpisodeResolved.build(
            key=key,
            episode_start_ms=start,
            episode_end_ms=end if end >= 0 else start,  # a state from before episodes had ends
            alerts=int(self._episode_alerts[kid]),
            peak_score=float(self._episode_peak[kid]),
            peak_severity=SEVERITIES[int(self._episode_severity[kid])],
            resolved_at_ms=at_ms,
            calm_windows=calm_windows,
            reason=reason,
            model_version=self._model_version() if self.model.is_fitted else "",
            detected_at_ms=now_ms if now_ms is not None else at_ms,
        )

    def _price_deviations(self, batch: EventBatch, key_ids: np.ndarray | None) -> np.ndarray | None:
        """Each sale's log ratio to its SKU's usual unit price (None: the features do not read it)."""
        if not self._prices or key_ids is None:
            return None
        sku = batch.sku_hash
        if batch.is_return is not None:  # a return is not a sale at a price
            sku = np.where(batch.is_return, np.uint64(0), sku)
        return self.features.price_deviations(key_ids, batch.ts_ms, sku, batch.amount, batch.quantity)

    def _in_units(self, batch: EventBatch, kid: np.ndarray | None) -> np.ndarray:
        """The amounts; a value series' samples (``kid``: their key ids) shifted by
        ``events.value_offset`` (floored at zero) and rescaled per key when its first sample is below 1.

        The value features work on ``log1p`` of values and ratios smoothed by a typical value plus
        one: in a series of fractions, rates or seconds they would be flattened into noise. The
        factor is fixed per key at its first non-zero sample (so the result does not depend on the
        batching); alerts report values in the series' own units.
        """
        if not self._samples_are_levels or kid is None:  # not a value series, or no event
            return batch.amount
        amount = batch.amount
        offset = self.config.events.value_offset
        if offset:
            amount = np.maximum(amount + offset, 0.0)
        self._grow_per_key(int(kid.max()) + 1)
        fresh = np.flatnonzero((self._unit[kid] == 0.0) & (amount != 0.0))
        if len(fresh):
            keys, first = np.unique(kid[fresh], return_index=True)
            v = np.abs(amount[fresh[first]])
            self._unit[keys] = np.where(v < 1.0, _UNIT_VALUE / v, 1.0)
        unit = self._unit[kid]
        return np.asarray(amount * np.where(unit > 0.0, unit, 1.0))

    def _process_round(
        self,
        rnd: ClosedRound,
        now_ms: int | None,
        messages: list[Alert | EpisodeResolved],
        rounds: list[_RoundScores],
    ) -> bool:
        zones = self._zones(rnd.key_id)
        feats = self.features.transform(rnd, zones)
        if not self.model.is_fitted:
            self.features.update(rnd, feats, np.ones(len(rnd), dtype=bool), zones=zones)
            self._warm_up(rnd, feats.values[feats.mature])
            return False

        mature = np.flatnonzero(feats.mature)
        learn = np.ones(len(rnd), dtype=bool)
        new_normal = np.zeros(len(rnd), dtype=bool)
        drift = False
        if len(mature):
            X = self.scaler.transform(feats.values[mature])
            score = self.model.anomaly_score(X)
            crossed = self.threshold.classify(score)
            log_p = feats.silence_log_p[mature]
            silent = log_p < self._silence_log_risk
            flags = crossed | silent
            threshold = float(self.threshold.threshold)
            key_ids = rnd.key_id[mature]
            self._grow_per_key(int(key_ids.max()) + 1)
            since = np.where(flags, 0, self._since_flag[key_ids] + 1)
            self._since_flag[key_ids] = since
            # An anomaly rarely ends on its last alert: the windows around it score high without
            # crossing the threshold, and learning them would fatten the very tail that sets it.
            calm = since > self._cooldown
            # Flagged windows since the key was last calm: past `relearn_after` of them the key has
            # a new normal (a new normal that scores around the threshold stays one streak).
            before = self._flag_streak[key_ids]
            streak = np.where(flags, before + 1, np.where(calm, 0, before))
            self._flag_streak[key_ids] = streak
            new_normal[mature] = streak > self.config.relearn_after
            learn[mature] = ~flags | new_normal[mature]
            probability = self.threshold.probability(score)
            # A window is as unusual as the stronger of its two tests says.
            probability = np.where(silent, np.maximum(probability, -np.expm1(log_p)), probability)
            deviating = np.abs(feats.scan_z[mature]) >= self.config.features.freeze_z
            self._track_episodes(rnd, key_ids, flags, deviating, score, probability, messages, now_ms)
            if flags.any():
                self._held.flagged(key_ids[flags], rnd.start_ms)
                messages.extend(
                    self._alerts(rnd, feats, mature, X, score, threshold, probability, crossed, silent, now_ms)
                )
            rounds.append(
                _RoundScores(
                    key_ids=key_ids,
                    start_ms=np.full(len(key_ids), rnd.start_ms, dtype=np.int64),
                    end_ms=np.full(len(key_ids), rnd.end_ms, dtype=np.int64),
                    score=score,
                    threshold=threshold,
                    probability=probability,
                    is_anomaly=flags,
                    features=feats.values[mature],
                    event_time_ms=rnd.last_event_ms[mature],
                )
            )
            self.windows_scored += len(mature)
            # A key flagged for long enough has a new normal: its baselines follow (above), but
            # the mixture does not learn the transitional vectors, only what comes after. Nor
            # does it learn a key's windows while its counts deviate (the baselines are frozen
            # then too): a drop still building up its evidence is not what normal looks like.
            self._pending.add(X, (~flags & ~deviating).astype(np.float64), score)
            # Nor does the threshold learn them: an anomaly that never alerts (a quiet store's slow
            # drop) would otherwise fill the tail it is judged against.
            self._held.add(key_ids, np.full(len(key_ids), rnd.start_ms, dtype=np.int64), score, calm & ~deviating)
            drift = self._learn_when_due(rnd.end_ms)
        self.features.update(rnd, feats, learn, new_normal, zones)
        return drift

    def _warm_up(self, rnd: ClosedRound, rows: np.ndarray) -> None:
        """Keep a warm-up round's mature feature vectors; fit the mixture once there are enough."""
        if len(rows):
            self._keep_warmup(rows, rnd.start_ms)
            self._fit_warmup_when_due(rnd.end_ms)

    def _keep_warmup(self, rows: np.ndarray, start_ms: int) -> None:
        """Keep warm-up rows, the first of them from a window starting at ``start_ms``."""
        self._warmup_rows.append(rows)
        self._warmup_n += len(rows)
        if self._warmup_from_ms is None:
            self._warmup_from_ms = start_ms

    def _fit_warmup_when_due(self, now_ms: int) -> None:
        """Fit the mixture on the warm-up rows once there are enough (or enough spanning long enough)."""
        m = self.config.model
        assert self._warmup_from_ms is not None
        spanned = now_ms - self._warmup_from_ms >= m.warmup_span * 1000 > 0
        if self._warmup_n >= m.warmup or (spanned and self._warmup_n >= _ROWS_PER_FEATURE * len(self.features.names)):
            self._fit_warmup()
            self._fitted_at_ms = now_ms

    def _learn_when_due(self, now_ms: int) -> bool:
        """Learn the pending windows once there is a batch of them (or the calibration is due)."""
        calibration_due = self._calibration_due(now_ms)
        if self._pending.n < self.config.model.learn_batch and not calibration_due:
            return False
        drift = self._learn(now_ms - self.windows.config.size_ms)
        if calibration_due:
            self.threshold.calibrate()
        return drift

    def _process_rounds(
        self,
        closed: ClosedRounds,
        now_ms: int | None,
        messages: list[Alert | EpisodeResolved],
        rounds: list[_RoundScores],
    ) -> bool:
        """Closed rounds in order: stretches of them through the compiled kernel, the rounds it
        leaves (a flag, the end of an episode, a new key) through :meth:`_process_round`."""
        buckets = self.features.round_buckets(closed.starts, closed.offsets, self._zones(closed.key_id))
        drift = False
        r = 0
        while r < len(closed):
            done, needs_numpy, step_drift = self._compiled_rounds(closed, buckets, r, rounds)
            drift |= step_drift
            r += done
            if needs_numpy:
                drift |= self._process_round(closed.round(r), now_ms, messages, rounds)
                r += 1
        return drift

    def _compiled_rounds(
        self,
        batch: ClosedRounds,
        buckets: tuple[np.ndarray, np.ndarray, np.ndarray],
        first: int,
        rounds: list[_RoundScores],
    ) -> tuple[int, bool, bool]:
        """Rounds from ``first`` on through ``_round_kernel.score_rounds`` (what
        :meth:`_process_round` does with a round that flags nothing, or one of the warm-up), up to
        the next learning step or warm-up fit, which it then takes: ``(rounds done, whether the
        next needs _process_round, drift)``."""
        codes = self.features.value_codes
        if codes is None:
            return 0, True, False
        cfg = self.config.model
        fitted = self.model.is_fitted
        if fitted:
            decision = self.threshold.decision()
            if decision is None:
                return 0, True, False
            shift, spread, proj, const = self.model.scoring_params()
            center, scale = self.scaler.center_, self.scaler.scale_
            assert center is not None and scale is not None
            stop_rows, span_ms, span_rows, from_ms = cfg.learn_batch - self._pending.n, 0.0, 0, -1
            calibration_ms, calibration_rows = self._calibration_time()
        else:  # the warm-up: features only, the kernel neither scores nor reads these
            decision, unused = (0.0, math.inf), np.zeros(0)
            center = scale = shift = spread = const = unused
            proj = np.zeros((0, 0))
            stop_rows, span_ms = cfg.warmup - self._warmup_n, cfg.warmup_span * 1000.0
            span_rows = _ROWS_PER_FEATURE * len(codes) - self._warmup_n
            from_ms = -1 if self._warmup_from_ms is None else self._warmup_from_ms
            calibration_ms, calibration_rows = math.inf, 0
        b = batch
        done, why, rows, values, X, score, calm, steady = score_rounds(
            first, b.starts, b.size_ms, b.offsets, *buckets,
            b.key_id, b.count, b.revenue, b.units, b.max_ticket, b.log_ticket_sum, b.log_ticket_sq_sum,
            b.log_units_sum, b.log_units_sq_sum, b.distinct_skus,
            b.price_dev if b.price_dev is not None else np.zeros(len(b.count)),
            self.features.kernel_params, codes, expected_max_z_table(),
            fitted, center, scale, shift, spread, proj, const, *decision, self._silence_log_risk,
            self._since_flag, self._flag_streak, self._episode_alerts, self._episode_quiet,
            self._cooldown, self.config.relearn_after,
            stop_rows, span_ms, span_rows, from_ms, calibration_ms, calibration_rows,
            self.features.state_arrays,
        )  # fmt: skip
        step_due, needs_numpy = why == STEP_DUE, why == NEEDS_NUMPY
        last_end = int(b.starts[first + done - 1]) + b.size_ms if done else 0
        if not fitted:
            if len(rows):
                self._keep_warmup(values, int(b.starts[b.round_of(rows[0])]))
            if step_due:
                self._fit_warmup_when_due(last_end)
            return done, needs_numpy, False
        if len(rows):
            starts = b.starts[b.round_of(rows)]
            scored = _RoundScores(
                key_ids=b.key_id[rows],
                start_ms=starts,
                end_ms=starts + b.size_ms,
                score=score,
                threshold=float(self.threshold.threshold),
                probability=None,
                is_anomaly=np.zeros(len(rows), dtype=bool),
                features=values,
                event_time_ms=b.last_event_ms[rows],
            )
            rounds.append(scored)
            self._unsettled.append(scored)
            self.windows_scored += len(rows)
            self._pending.add(X, steady.astype(np.float64), score)
            self._held.add(b.key_id[rows], starts, score, calm)
        return done, needs_numpy, self._learn_when_due(last_end) if step_due else False

    def _calibration_time(self) -> tuple[float, int]:
        """When :meth:`_calibration_due` can first hold: ``(event time, more windows scored)``."""
        span_ms = self.config.threshold.calibration_span * 1000
        if self.threshold.is_calibrated or self._fitted_at_ms is None or not span_ms > 0:
            return math.inf, 0
        return self._fitted_at_ms + span_ms, _MIN_CALIBRATION - self.windows_scored

    def _settle_probabilities(self) -> None:
        """The probabilities of the compiled path's rounds, under the threshold they were scored
        against (so before it learns)."""
        if not self._unsettled:
            return
        scored = self._unsettled
        probability = self.threshold.probability(np.concatenate([r.score for r in scored]))
        at = 0
        for r in scored:
            r.probability = probability[at : at + len(r.score)]
            at += len(r.score)
        self._unsettled = []

    def _compile(self) -> None:
        """Compile (or load from the cache) :meth:`_compiled_rounds`' kernel on one made-up round."""
        one, key = np.ones(1), np.zeros(1, dtype=np.int64)
        batch = ClosedRounds(np.zeros(1, dtype=np.int64), self.windows.config.size_ms, np.array([0, 1]),
                             key, one, one, one, one, one, one, one, key, one, one, one, one)  # fmt: skip
        self._compiled_rounds(batch, self.features.round_buckets(batch.starts, batch.offsets), 0, [])

    def _track_episodes(
        self,
        rnd: ClosedRound,
        key_ids: np.ndarray,
        flags: np.ndarray,
        deviating: np.ndarray,
        score: np.ndarray,
        probability: np.ndarray,
        messages: list[Alert | EpisodeResolved],
        now_ms: int | None,
    ) -> None:
        """Open, extend and end the keys' episodes with a round's scored windows.

        An episode ends once its key has gone more than ``_cooldown`` windows without an alert or
        a sustained deviation of its counts (``|count_scan_z| >= features.freeze_z``): an outage
        that keeps its key at zero while it alerts in bursts (the scan restarts after each alert)
        stays one episode instead of ending and opening again between the bursts.
        """
        open_before = self._episode_alerts[key_ids] > 0
        quiet = np.where(flags | deviating, 0, self._episode_quiet[key_ids] + 1)
        self._episode_quiet[key_ids] = quiet
        ended = np.flatnonzero(open_before & (quiet > self._cooldown))
        if len(ended):
            detected = now_ms if now_ms is not None else int(rnd.end_ms + self.config.windows.lateness_ms)
            gone = key_ids[ended]
            messages.extend(
                self._resolution(kid, self._key_dict(kid), rnd.end_ms, int(n), "calm", detected)
                for kid, n in zip(gone.tolist(), quiet[ended].tolist(), strict=True)
            )
            self._episode_alerts[gone] = 0
        if not flags.any():
            return
        kids, first = key_ids[flags], ~open_before[flags]
        severity = _severity(1.0 - probability[flags], self.config.threshold.risk)
        self._episode_alerts[kids] += 1
        self._episode_start[kids[first]] = rnd.start_ms
        self._episode_end[kids] = rnd.end_ms
        peak = self._episode_peak[kids]
        self._episode_peak[kids] = np.where(first, score[flags], np.maximum(peak, score[flags]))
        self._episode_severity[kids] = np.where(first, severity, np.maximum(self._episode_severity[kids], severity))

    def _calibration_due(self, now_ms: int) -> bool:
        """A sparse stream has scored for ``calibration_span`` without reaching ``n_init``."""
        at_ms, more_windows = self._calibration_time()
        return now_ms >= at_ms and more_windows <= 0

    def _grow_per_key(self, need: int) -> None:
        """The per-key arrays (``_PER_KEY``) cover ids below ``need``."""
        have = len(self._flag_streak)
        if need > have:
            grow = max(need, 2 * have) - have
            for name, (dtype, fill) in _PER_KEY.items():
                old = getattr(self, "_" + name)
                setattr(self, "_" + name, np.concatenate([old, np.full(grow, fill, dtype=dtype)]))

    def _fit_warmup(self) -> None:
        X = np.concatenate(self._warmup_rows)
        self._warmup_rows, self._warmup_n = [], 0
        self.scaler.fit(X)
        Xs = self.scaler.transform(X)
        min_variance = tuple(self.scaler.min_variance(X))
        model = self._new_model(min_variance)
        model.fit(Xs)
        trim = self.config.trim_fraction
        if trim > 0:
            # Anomalies in the warm-up would otherwise become part of the baseline.
            scores = model.anomaly_score(Xs)
            keep = scores <= np.quantile(scores, 1.0 - trim)
            model = self._new_model(min_variance)
            model.fit(Xs[keep])
        self.model = model

    def _learn(self, scored_until_ms: int) -> bool:
        """Learn the pending windows; the last window scored starts at ``scored_until_ms``."""
        self._settle_probabilities()
        X, weight, score = self._pending.take()
        if (weight == 0).mean() > self.config.regime_change_fraction:
            # So many flagged windows at once is a new regime, not a burst of anomalies.
            weight = np.ones_like(weight)
            self.regime_changes += 1
        if weight.sum() > 0:
            self.model.partial_fit(X, sample_weight=weight)
        self.threshold.learn(self._held.release(scored_until_ms))
        drift = bool(self.drift.update(score))
        if drift:
            self.model.boost(self.config.drift.boost, self.config.drift.boost_half_life)
        return drift

    def _alerts(
        self,
        rnd: ClosedRound,
        feats: WindowFeatures,
        mature: np.ndarray,
        X: np.ndarray,
        score: np.ndarray,
        threshold: float,
        probability: np.ndarray,
        crossed: np.ndarray,
        silent: np.ndarray,
        now_ms: int | None,
    ) -> list[Alert]:
        """The alerts of a round's flagged windows: those whose score ``crossed`` the threshold and
        those ``silent`` (an improbable run of empty windows), either or both."""
        cfg = self.config
        rows = np.flatnonzero(crossed | silent)
        expl = self.model.explain(X[rows])
        severities = [SEVERITIES[i] for i in _severity(1.0 - probability[rows], cfg.threshold.risk).tolist()]
        # Without a wall clock (replays), the event time at which the window closed: the same
        # whatever the batching.
        detected = now_ms if now_ms is not None else int(rnd.end_ms + self.config.windows.lateness_ms)
        names = self.features.names
        version = self._model_version()
        offset = cfg.events.value_offset if self._samples_are_levels else 0.0
        out = []
        for j, row in enumerate(rows.tolist()):
            pos = int(mature[row])
            kid = int(rnd.key_id[pos])
            key = self._key_dict(kid)
            unit = float(self._unit[kid]) or 1.0  # 0: not a rescaled value series

            def own_units(quantity: str, x: float, pos: int = pos, unit: float = unit) -> float:
                samples = _VALUE_QUANTITIES.get(quantity)
                if samples is None:
                    return x
                return x / unit - offset * float(feats.observed[samples][pos])

            order = np.argsort(-np.abs(expl.z[j]), kind="stable")[: cfg.max_contributions]
            contributions = []
            for f in order.tolist():
                quantity = self.features.explained_quantity(names[f])
                observed = feats.observed.get(quantity)
                expected = feats.expected.get(quantity)
                contributions.append(
                    Contribution(
                        feature=self._alert_names.get(quantity, quantity),
                        observed=own_units(quantity, float(observed[pos]))
                        if observed is not None
                        else float(feats.values[pos, f]),
                        expected=own_units(quantity, float(expected[pos])) if expected is not None else float(
                            expl.expected[j, f] * self.scaler.scale_[f] + self.scaler.center_[f]  # type: ignore[index]
                        ),
                        z=float(expl.z[j, f]),
                    )
                )
            window_features = {name: float(feats.values[pos, f]) for f, name in enumerate(names)}
            for quantity in self._alert_quantities:
                name = self._alert_names.get(quantity, quantity)
                window_features[name] = own_units(quantity, float(feats.observed[quantity][pos]))
            if "count" in self._alert_quantities:
                window_features["expected_count"] = float(feats.expected_count[pos])
            if "revenue" in self._alert_quantities:
                name = "expected_" + self._alert_names.get("revenue", "revenue")
                window_features[name] = own_units("revenue", float(feats.expected["revenue"][pos]))
            silence = None
            if silent[row]:
                silence = Silence(
                    windows=int(feats.silent_windows[pos]),
                    expected=float(feats.silent_expected[pos]),
                    chance=math.exp(float(feats.silence_log_p[pos])),
                    total=int(feats.empty_windows[pos]),
                )
                window_features["silent_windows"] = float(silence.windows)
                window_features["expected_count_silent"] = silence.expected
                window_features["silent_windows_total"] = float(silence.total)
            out.append(
                Alert.build(
                    key=key,
                    window_start_ms=rnd.start_ms,
                    window_end_ms=rnd.end_ms,
                    score=float(score[row]),
                    threshold=threshold,
                    probability=float(probability[row]),
                    severity=severities[j],
                    features=window_features,
                    contributions=contributions,
                    model_version=version,
                    detected_at_ms=detected,
                    episode_start_ms=int(self._episode_start[kid]) if self._episode_start[kid] >= 0 else None,
                    episode_alert=int(self._episode_alerts[kid]),
                    crossed=bool(crossed[row]),
                    silence=silence,
                    reference=REFERENCES[int(feats.reference[pos])],
                )
            )
        return out

    def _model_version(self) -> str:
        m = self.model
        return f"gmm-k{len(m.weights_)}-d{m.n_features_in_}-u{m.n_updates_}"

    def _key_dict(self, key_id: int, key: tuple[str, ...] | None = None) -> dict[str, str]:
        """The key fields of a key id (or of ``key``, an evicted id's former key)."""
        key = key or self.windows.keys.keys[key_id]
        return dict(zip(self.config.events.key_fields, key or (), strict=False))

    def _collect(self, rounds: list[_RoundScores]) -> ScoredWindows:
        if not rounds:
            return ScoredWindows.empty(self.features.names)
        lengths = [len(r.key_ids) for r in rounds]
        key_ids = np.concatenate([r.key_ids for r in rounds])
        cache: dict[int, dict[str, str]] = {}
        keys = []
        for kid in key_ids.tolist():
            d = cache.get(kid)
            if d is None:
                d = cache[kid] = self._key_dict(kid)
            keys.append(d)
        return ScoredWindows(
            keys=keys,
            start_ms=np.concatenate([r.start_ms for r in rounds]),
            end_ms=np.concatenate([r.end_ms for r in rounds]),
            score=np.concatenate([r.score for r in rounds]),
            threshold=np.repeat([r.threshold for r in rounds], lengths).astype(np.float64),
            probability=np.concatenate([r.probability for r in rounds]),
            is_anomaly=np.concatenate([r.is_anomaly for r in rounds]),
            features=np.concatenate([r.features for r in rounds]),
            feature_names=self.features.names,
            event_time_ms=np.concatenate([r.event_time_ms for r in rounds]),
        )

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """A plain, versioned, orjson-serialisable snapshot of everything the detector has learned."""
        pending = self._pending
        return {
            "version": STATE_VERSION,
            "windows": self.windows.to_state(),
            "features": self.features.to_state(rows=self.windows.keys.capacity),
            "scaler": self.scaler.to_state(),
            "model": self.model.to_state(),
            "threshold": self.threshold.to_state(),
            "drift": self.drift.to_state(),
            "warmup_rows": np.concatenate(self._warmup_rows).tolist() if self._warmup_rows else [],
            "pending": {
                "X": np.concatenate(pending.X).tolist() if pending.X else [],
                "weight": np.concatenate(pending.weight).tolist() if pending.weight else [],
                "score": np.concatenate(pending.score).tolist() if pending.score else [],
            },
            "held": self._held.to_state(),
            **{name: getattr(self, "_" + name).tolist() for name in _PER_KEY},
            "windows_scored": self.windows_scored,
            "regime_changes": self.regime_changes,
            "warmup_from_ms": self._warmup_from_ms,
            "fitted_at_ms": self._fitted_at_ms,
        }

    def _use_zones(self) -> None:
        """Keys get their time zones (``features.timezones``) as the key index assigns their ids."""
        if self.features.zoned:
            self.windows.keys.use_zones(self.features.zone_of)

    def _zones(self, key_ids: np.ndarray) -> np.ndarray | None:
        """The time zone of each key (None where every key keeps ``features.timezone``)."""
        return self.windows.keys.zones[key_ids] if self.features.zoned else None

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: DetectorConfig | None = None) -> Detector:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported detector state version {state.get('version')!r}")
        det = cls(config)
        cfg = det.config
        det.windows = WindowAggregator.from_state(state["windows"], _window_config(cfg))
        det.features = FeatureExtractor.from_state(
            state["features"], cfg.features, cfg.windows, unavailable=unavailable_features(cfg.events)
        )
        det._use_zones()
        det.scaler = RobustScaler.from_state(state["scaler"])
        det.model = StepwiseGMM.from_state(state["model"])
        det.threshold = threshold_from_state(state["threshold"])
        det.drift = ScoreDriftMonitor.from_state(state["drift"], cfg.drift)
        d = len(det.features.names)
        rows = np.array(state["warmup_rows"], dtype=np.float64).reshape(-1, d)
        det._warmup_rows = [rows] if len(rows) else []
        det._warmup_n = len(rows)
        p = state["pending"]
        if p["X"]:
            det._pending.add(
                np.array(p["X"], dtype=np.float64).reshape(-1, d),
                np.array(p["weight"], dtype=np.float64),
                np.array(p["score"], dtype=np.float64),
            )
        if "held" in state:
            det._held.load(state["held"])
        elif p["X"]:  # a state from before the hold: its pending windows go to the threshold as they were
            score, calm = np.array(p["score"], dtype=np.float64), np.array(p["calm"], dtype=bool)
            never = np.full(len(score), np.iinfo(np.int64).min // 2, dtype=np.int64)
            det._held.add(np.zeros(len(score), dtype=np.int64), never, score, calm)
        # One length for the per-key arrays (states from before the units and episodes lack some).
        saved: dict[str, np.ndarray] = {
            name: np.array(state.get(name, []), dtype=dtype) for name, (dtype, _) in _PER_KEY.items()
        }
        if "episode_alerts" not in state:  # a state from before: its flag streaks counted the episodes
            saved["episode_alerts"] = saved["flag_streak"].copy()
        det._grow_per_key(max(len(a) for a in saved.values()))
        for name, arr in saved.items():
            getattr(det, "_" + name)[: len(arr)] = arr
        det.windows_scored = int(state["windows_scored"])
        det.regime_changes = int(state["regime_changes"])
        # States written before the warm-up and calibration spans existed lack these: counts only.
        det._warmup_from_ms = state.get("warmup_from_ms")
        det._fitted_at_ms = state.get("fitted_at_ms")
        return det
