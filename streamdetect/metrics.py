"""Prometheus metrics, health state and the one HTTP server that serves them.

:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (so tests and several
services in one process do not collide) and registers every metric named in ``docs/contracts.md``:
prefix ``streamdetect_``, base units, counters whose exposition name ends in ``_total``, histograms
with explicit buckets, no per-key labels and no ``*_created`` series.

:class:`Health` tracks liveness (the main loop's heartbeat is recent and no fatal error was
recorded) and readiness (connected, partitions assigned, state restored).

:func:`serve` starts one small WSGI server (stdlib :mod:`wsgiref`, no extra dependency) in a daemon
thread with ``/metrics``, ``/healthz`` and ``/readyz``.

>>> m = Metrics()
>>> m.record_consumed("sales", 3)
>>> m.value("streamdetect_events_consumed_total", topic="sales")
3.0
>>> h = Health(max_heartbeat_age=30.0)
>>> h.live()[0], h.ready()[0]
(False, False)
>>> h.heartbeat(); h.set_connected(True); h.set_assigned(True); h.set_state_restored(True)
>>> h.live()[0], h.ready()[0]
(True, True)
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streamdetect import __version__
from streamdetect.alerts import REFERENCES, RESOLUTION_REASONS, SEVERITIES

__all__ = [
    "ALERT_LATENCY_BUCKETS",
    "BATCH_DURATION_BUCKETS",
    "DEFAULT_METRICS_PATH",
    "DEFAULT_METRICS_PORT",
    "METRIC_NAMES",
    "SCORE_BUCKETS",
    "Health",
    "Metrics",
    "MetricsServer",
    "serve",
]

log = logging.getLogger(__name__)

# One process-wide switch in prometheus-client: the ``*_created`` series only double the number of
# series and nothing here queries them.
prometheus_client.disable_created_metrics()

DEFAULT_METRICS_PORT = 9108
DEFAULT_METRICS_PATH = "/metrics"
PREFIX = "streamdetect_"

#: Anomaly scores are negative log-likelihoods of the window's (scaled) feature vector: a few units
#: below zero for the densest windows, tens for ordinary ones, hundreds and more for gross outliers.
SCORE_BUCKETS: tuple[float, ...] = (
    -10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 25.0, 30.0, 40.0, 50.0,
    75.0, 100.0, 150.0, 250.0, 500.0, 1000.0,
)
#: One consume-score-produce-commit round trip: milliseconds when idle, up to seconds under load.
BATCH_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: Writing out the snapshots of the assigned partitions (serialise, compress, queue): the loop
#: waits for it at every checkpoint, milliseconds for a few keys, seconds for hundreds of thousands.
CHECKPOINT_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: From the newest event time in a window to the alert being delivered: the window size plus the
#: allowed lateness dominates (a minute or more), so the buckets reach into hours for replays.
ALERT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1800.0, 3600.0,
)

#: Every metric family :class:`Metrics` registers, as it appears in the exposition (``_total`` for
#: counters), with its type and label names. ``docs/contracts.md`` holds the same table.
METRIC_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "streamdetect_events_consumed_total": ("counter", ("topic",)),
    "streamdetect_events_rejected_total": ("counter", ("reason",)),
    "streamdetect_events_late_total": ("counter", ()),
    "streamdetect_returns_total": ("counter", ()),
    "streamdetect_windows_scored_total": ("counter", ()),
    "streamdetect_anomalies_total": ("counter", ("severity", "reference")),
    "streamdetect_anomaly_episodes_total": ("counter", ()),
    "streamdetect_silence_alerts_total": ("counter", ()),
    "streamdetect_anomaly_episodes_resolved_total": ("counter", ("reason",)),
    "streamdetect_open_anomaly_episodes": ("gauge", ("partition",)),
    "streamdetect_alerts_produced_total": ("counter", ()),
    "streamdetect_delivery_failures_total": ("counter", ("topic",)),
    "streamdetect_anomaly_score": ("histogram", ()),
    "streamdetect_threshold": ("gauge", ("partition",)),
    "streamdetect_score_drift": ("gauge", ("partition",)),
    "streamdetect_drift_events_total": ("counter", ()),
    "streamdetect_model_log_likelihood": ("gauge", ("partition",)),
    "streamdetect_model_component_weight": ("gauge", ("partition", "component")),
    "streamdetect_model_updates_total": ("counter", ()),
    "streamdetect_consumer_lag_messages": ("gauge", ("topic", "partition")),
    "streamdetect_batch_duration_seconds": ("histogram", ()),
    "streamdetect_alert_latency_seconds": ("histogram", ()),
    "streamdetect_checkpoints_total": ("counter", ("result",)),
    "streamdetect_last_checkpoint_timestamp_seconds": ("gauge", ()),
    "streamdetect_checkpoint_duration_seconds": ("histogram", ()),
    "streamdetect_checkpoint_bytes": ("gauge", ("partition",)),
    "streamdetect_commits_total": ("counter", ("result",)),
    "streamdetect_rebalances_total": ("counter", ("event",)),
    "streamdetect_assigned_partitions": ("gauge", ()),
    "streamdetect_last_event_timestamp_seconds": ("gauge", ()),
    "streamdetect_build_info": ("gauge", ("version", "librdkafka")),
}

REJECT_REASONS = (
    "decode", "missing_field", "bad_type", "bad_timestamp", "out_of_range", "too_large", "late", "duplicate",
    "key_limit",
)
REBALANCE_EVENTS = ("assign", "revoke", "lost")
RESULTS = ("ok", "error")


class BatchHistogram(Collector):
    """A histogram observed a batch of values at a time, with numpy, and exposed by a collector.

    ``prometheus_client.Histogram.observe`` takes one value (a lock and a bucket search in Python
    each): one per scored window was a tenth of the service's time. The exposition is that of a
    ``Histogram`` with the same buckets (``_bucket`` with ``le``, ``_count``, ``_sum`` unless a
    bucket is negative).

    >>> r = CollectorRegistry()
    >>> h = BatchHistogram("score", "Scores.", (1.0, 2.0), registry=r)
    >>> h.observe_many(np.array([0.5, 1.0, 1.5, 7.0, np.nan]))
    >>> r.get_sample_value("score_bucket", {"le": "1.0"}), r.get_sample_value("score_count")
    (2.0, 4.0)
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.array([b for b in buckets if b != math.inf], dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value but NaN."""
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        if len(v) == 0:
            return
        # A value equal to a bound counts in that bound's bucket ("le").
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._counts))
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).astype(np.float64).tolist(), self._sum
        les = [floatToGoString(b) for b in self._bounds.tolist()] + ["+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation, labels=[])
        family.add_metric([], list(zip(les, cumulative, strict=True)), sum_value=None)
        family.add_sample(f"{self.name}_count", {}, cumulative[-1])
        if self._bounds[0] >= 0:  # as Histogram: no sum beside a negative bucket (OpenMetrics)
            family.add_sample(f"{self.name}_sum", {}, total)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _result(ok: bool) -> str:
    return "ok" if ok else "error"


def _reason(value: Any) -> str:
    """The label value of a reject reason: a ``StrEnum`` member, its ``.value`` or a plain string."""
    reason = getattr(value, "reason", value)
    return str(getattr(reason, "value", reason))


def _librdkafka_version() -> str:
    try:
        import confluent_kafka

        return str(confluent_kafka.libversion()[0])
    except Exception:  # pragma: no cover - confluent-kafka is a dependency; be defensive anyway
        return "unknown"


class Metrics:
    """Every streamdetect metric, in a registry of its own.

    Parameters
    ----------
    registry
        Where to register; a fresh :class:`~prometheus_client.CollectorRegistry` when ``None``.
    version, librdkafka
        Labels of ``streamdetect_build_info``; the package version and ``confluent_kafka.libversion()``
        by default.
    process_collectors
        Also register the ``process_*``/``python_*`` collectors (CPU, RSS, GC) in this registry.

    Notes
    -----
    Partition-labelled gauges (threshold, drift, log-likelihood, component weights) describe the
    detector of one input partition; :meth:`remove_partition` drops them when the partition is
    revoked so that stale values do not linger. Cumulative detector counts (``model_updates``) are
    turned into counter increments by remembering the last value seen per partition.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str | None = None,
        librdkafka: str | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_collectors:
            prometheus_client.ProcessCollector(registry=r)
            prometheus_client.PlatformCollector(registry=r)
            prometheus_client.GCCollector(registry=r)

        p = PREFIX
        self.events_consumed = Counter(f"{p}events_consumed", "Events read from the input topics.", ["topic"],
                                       registry=r)
        self.events_rejected = Counter(
            f"{p}events_rejected", "Events rejected (sent to the dead-letter topic), by reason; includes late events.",
            ["reason"], registry=r)
        self.events_late = Counter(f"{p}events_late", "Events behind the watermark by more than the allowed lateness.",
                                   registry=r)
        self.returns = Counter(f"{p}returns", "Sales events read as returns (a negative quantity or amount).",
                               registry=r)
        self.windows_scored = Counter(f"{p}windows_scored", "Windows closed and scored.", registry=r)
        self.anomalies = Counter(f"{p}anomalies", "Anomalous windows detected, by severity and by what their"
                                 " expectations were taken from (hour_of_day: the key's weekly pattern not known yet).",
                                 ["severity", "reference"], registry=r)
        self.anomaly_episodes = Counter(f"{p}anomaly_episodes",
                                        "Episodes of consecutive anomalous windows of one key started.",
                                        registry=r)
        self.silence_alerts = Counter(f"{p}silence_alerts",
                                      "Anomalous windows flagged by their key's improbable run of empty windows"
                                      " alone (the score below the threshold).", registry=r)
        self.episodes_resolved = Counter(f"{p}anomaly_episodes_resolved",
                                         "Episodes of alerts that ended, by reason (calm: the key had no alert for"
                                         " a while; expired: the key fell silent and was forgotten).",
                                         ["reason"], registry=r)
        self.open_episodes = Gauge(f"{p}open_anomaly_episodes",
                                   "Keys of the partition with an episode of alerts not yet resolved.",
                                   ["partition"], registry=r)
        self.alerts_produced = Counter(f"{p}alerts_produced", "Alerts delivered to the alerts topic.", registry=r)
        self.delivery_failures = Counter(f"{p}delivery_failures", "Messages whose delivery failed, by topic.",
                                         ["topic"], registry=r)
        self.anomaly_score = BatchHistogram(f"{p}anomaly_score",
                                            "Anomaly score (negative log-likelihood) of scored windows.",
                                            buckets=SCORE_BUCKETS, registry=r)
        self.threshold = Gauge(f"{p}threshold", "Current anomaly-score threshold of the partition's detector.",
                               ["partition"], registry=r)
        self.score_drift = Gauge(f"{p}score_drift", "Score drift statistic (PSI, recent vs reference scores).",
                                 ["partition"], registry=r)
        self.drift_events = Counter(f"{p}drift_events", "Score-drift detections (the model was boosted).", registry=r)
        self.model_log_likelihood = Gauge(f"{p}model_log_likelihood",
                                          "Mean log-likelihood of recent windows under the partition's model.",
                                          ["partition"], registry=r)
        self.model_component_weight = Gauge(f"{p}model_component_weight", "Mixture weight of each model component.",
                                            ["partition", "component"], registry=r)
        self.model_updates = Counter(f"{p}model_updates", "Stepwise-EM model updates.", registry=r)
        self.consumer_lag = Gauge(f"{p}consumer_lag_messages", "Consumer lag (messages) per input partition.",
                                  ["topic", "partition"], registry=r)
        self.batch_duration = Histogram(f"{p}batch_duration_seconds",
                                        "Time to process one consumed batch (score, produce, commit).",
                                        buckets=BATCH_DURATION_BUCKETS, registry=r)
        self.alert_latency = Histogram(f"{p}alert_latency_seconds",
                                       "From the newest event time in the window to the alert being produced.",
                                       buckets=ALERT_LATENCY_BUCKETS, registry=r)
        self.checkpoints = Counter(f"{p}checkpoints", "State checkpoints written, by result.", ["result"], registry=r)
        self.last_checkpoint = Gauge(f"{p}last_checkpoint_timestamp_seconds",
                                     "Unix time of the last successful state checkpoint.", registry=r)
        self.checkpoint_duration = Histogram(
            f"{p}checkpoint_duration_seconds",
            "Time to write out one checkpoint's snapshots (serialise, compress, queue).",
            buckets=CHECKPOINT_DURATION_BUCKETS, registry=r,
        )
        self.checkpoint_bytes = Gauge(f"{p}checkpoint_bytes", "Size of the partition's last snapshot (compressed).",
                                      ["partition"], registry=r)
        self.commits = Counter(f"{p}commits", "Offset commits, by result.", ["result"], registry=r)
        self.rebalances = Counter(f"{p}rebalances", "Consumer-group rebalance callbacks, by event.", ["event"],
                                  registry=r)
        self.assigned_partitions = Gauge(f"{p}assigned_partitions", "Input partitions currently assigned.",
                                         registry=r)
        self.last_event_timestamp = Gauge(f"{p}last_event_timestamp_seconds",
                                          "Event time (Unix seconds) of the newest event processed.", registry=r)
        self.build_info = Gauge(f"{p}build_info", "Build information (always 1).", ["version", "librdkafka"],
                                registry=r)
        self.build_info.labels(version or __version__, librdkafka or _librdkafka_version()).set(1)

        # Pre-create the children of bounded label sets so that rate() and absent-series checks see 0,
        # not "no data", before the first event of each kind.
        for reason in REJECT_REASONS:
            self.events_rejected.labels(reason)
        for severity in SEVERITIES:
            for reference in REFERENCES:
                self.anomalies.labels(severity, reference)
        for reason in RESOLUTION_REASONS:
            self.episodes_resolved.labels(reason)
        for event in REBALANCE_EVENTS:
            self.rebalances.labels(event)
        for result in RESULTS:
            self.checkpoints.labels(result)
            self.commits.labels(result)

        self._lock = threading.Lock()
        self._updates_seen: dict[int, int] = {}
        self._components: dict[int, int] = {}
        self._lag_children: set[tuple[str, str]] = set()
        self._last_event_ts = -math.inf

    # -- detector output -----------------------------------------------------------------------------

    def observe_output(self, partition: int, output: Any, stats: Any | None = None) -> None:
        """Record what one :meth:`Detector.process` call produced for one input partition.

        Parameters
        ----------
        partition
            The input partition whose detector produced ``output``.
        output
            A ``DetectorOutput`` (duck-typed: ``alerts`` with ``severity``, ``rejected`` with
            ``reason``, ``scored`` with ``score`` and ``event_time_ms``, ``drift_detected``; optionally
            ``resolved`` with ``reason``).
        stats
            The detector's ``DetectorStats`` after the call, for the partition gauges; optional.
        """
        if output.rejected:
            for reason, count in collections.Counter(map(_reason, output.rejected)).items():
                self.events_rejected.labels(reason).inc(count)
                if reason == "late":
                    self.events_late.inc(count)
        returns = getattr(output, "n_returns", 0)
        if returns:
            self.returns.inc(returns)
        for alert in output.alerts:
            self.anomalies.labels(str(alert.severity), str(alert.reference)).inc()
            if getattr(alert, "episode_alert", 1) == 1:
                self.anomaly_episodes.inc()
            if getattr(alert, "triggers", ("score",)) == ["silence"]:
                self.silence_alerts.inc()
        for resolution in getattr(output, "resolved", ()):
            self.episodes_resolved.labels(str(resolution.reason)).inc()
        scored = output.scored
        scores = getattr(scored, "score", ())
        n = len(scores)
        if n:
            self.windows_scored.inc(n)
            self.anomaly_score.observe_many(np.asarray(scores, dtype=np.float64))
            event_times = getattr(scored, "event_time_ms", None)
            if event_times is not None and len(event_times):
                self.observe_event_time(float(max(event_times)) / 1000.0)
        if output.drift_detected:
            self.drift_events.inc()
        if stats is not None:
            self.observe_stats(partition, stats)

    def observe_stats(self, partition: int, stats: Any, *, baseline: bool = False) -> None:
        """Set the partition gauges from a ``DetectorStats`` and count new model updates.

        Parameters
        ----------
        partition
            The input partition.
        stats
            ``DetectorStats`` (duck-typed).
        baseline
            Only remember ``stats.model_updates`` without counting it: call with ``True`` right after
            restoring a detector from a checkpoint, so its past updates are not counted again.
        """
        label = str(partition)
        self.threshold.labels(label).set(float(stats.threshold))
        self.score_drift.labels(label).set(float(stats.drift_statistic))
        self.model_log_likelihood.labels(label).set(float(stats.mean_log_likelihood))
        open_episodes = getattr(stats, "open_episodes", None)
        if open_episodes is not None:
            self.open_episodes.labels(label).set(int(open_episodes))
        weights = list(stats.component_weights)
        with self._lock:
            previous = self._components.get(partition, 0)
            for i in range(len(weights), previous):  # the mixture shrank: drop vanished components
                self._remove(self.model_component_weight, label, str(i))
            self._components[partition] = len(weights)
            seen = self._updates_seen.get(partition)
            updates = int(stats.model_updates)
            self._updates_seen[partition] = updates
        for i, w in enumerate(weights):
            self.model_component_weight.labels(label, str(i)).set(float(w))
        if not baseline:
            delta = updates if seen is None or updates < seen else updates - seen
            if delta > 0:
                self.model_updates.inc(delta)
        # the newest event, not the watermark: an idle partition's clock runs on without events,
        # and the event-time delay must still show that none came
        newest = getattr(stats, "newest_event_ms", None)
        if newest is None:
            newest = getattr(stats, "watermark_ms", None)
        if newest is not None:
            self.observe_event_time(newest / 1000.0)

    def observe_event_time(self, ts_seconds: float) -> None:
        """Advance ``streamdetect_last_event_timestamp_seconds`` (it never goes backwards)."""
        with self._lock:
            if ts_seconds > self._last_event_ts:
                self._last_event_ts = ts_seconds
                self.last_event_timestamp.set(ts_seconds)

    # -- Kafka client --------------------------------------------------------------------------------

    def declare_topics(self, inputs: Iterable[str] = (), outputs: Iterable[str] = ()) -> None:
        """Create the zero-valued children of the topic-labelled counters at start-up.

        Parameters
        ----------
        inputs
            Input topics (``events_consumed_total``).
        outputs
            Topics the service produces to: alerts, dead-letter, state (``delivery_failures_total``).

        Without this a counter has no series until its first increment, and ``rate()`` over it
        returns no data rather than 0.
        """
        for topic in inputs:
            self.events_consumed.labels(topic)
        for topic in outputs:
            self.delivery_failures.labels(topic)

    def record_consumed(self, topic: str, n: int) -> None:
        """Count ``n`` events read from ``topic``."""
        if n:
            self.events_consumed.labels(topic).inc(n)

    def record_rejected(self, reason: str, n: int = 1) -> None:
        """Count events rejected outside the detector (e.g. oversized or undecodable Kafka messages)."""
        if n:
            self.events_rejected.labels(_reason(reason)).inc(n)

    def record_alerts_produced(self, n: int) -> None:
        """Count alerts whose delivery to the alerts topic was confirmed."""
        if n:
            self.alerts_produced.inc(n)

    def record_delivery_failure(self, topic: str, n: int = 1) -> None:
        """Count messages to ``topic`` whose delivery failed."""
        self.delivery_failures.labels(topic).inc(n)

    def record_commit(self, ok: bool) -> None:
        """Count one offset commit, successful or not."""
        self.commits.labels(_result(ok)).inc()

    def record_checkpoint(self, ok: bool, ts: float | None = None) -> None:
        """Count one state checkpoint; a successful one also sets its Unix time (now when ``ts`` is ``None``)."""
        self.checkpoints.labels(_result(ok)).inc()
        if ok:
            self.last_checkpoint.set(time.time() if ts is None else ts)

    def record_snapshots(self, seconds: float, sizes: Mapping[int, int]) -> None:
        """Time one checkpoint's writing out of snapshots, and each partition's snapshot size in bytes."""
        self.checkpoint_duration.observe(seconds)
        for partition, size in sizes.items():
            self.checkpoint_bytes.labels(str(partition)).set(size)

    def record_rebalance(self, event: str, assigned_count: int) -> None:
        """Count one rebalance callback (``assign``, ``revoke`` or ``lost``) and set the assignment size."""
        self.rebalances.labels(event).inc()
        self.assigned_partitions.set(assigned_count)

    def set_lag(self, topic: str, partition: int, lag: float) -> None:
        """Set the consumer lag of one input partition (negative values mean unknown and are skipped)."""
        if lag < 0:
            return
        key = (topic, str(partition))
        self.consumer_lag.labels(*key).set(lag)
        with self._lock:
            self._lag_children.add(key)

    def observe_batch_seconds(self, seconds: float) -> None:
        """Observe the processing time of one batch."""
        self.batch_duration.observe(seconds)

    def observe_alert_latency(self, seconds: float | Iterable[float]) -> None:
        """Observe event-time-to-alert latency, for one alert or many."""
        values = [seconds] if isinstance(seconds, int | float) else seconds
        for s in values:
            self.alert_latency.observe(max(float(s), 0.0))

    def remove_partition(self, partition: int, topics: Sequence[str] | None = None) -> None:
        """Drop the per-partition gauge children of a revoked or lost partition.

        Parameters
        ----------
        partition
            The input partition.
        topics
            Only drop the lag of these topics; of every topic when ``None``.
        """
        label = str(partition)
        for gauge in (self.threshold, self.score_drift, self.model_log_likelihood, self.open_episodes,
                      self.checkpoint_bytes):
            self._remove(gauge, label)
        with self._lock:
            n_components = self._components.pop(partition, 0)
            self._updates_seen.pop(partition, None)
            lag_keys = [k for k in self._lag_children if k[1] == label and (topics is None or k[0] in topics)]
            self._lag_children.difference_update(lag_keys)
        for i in range(n_components):
            self._remove(self.model_component_weight, label, str(i))
        for key in lag_keys:
            self._remove(self.consumer_lag, *key)

    @staticmethod
    def _remove(metric: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    # -- reading back (tests, demo summaries) --------------------------------------------------------

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one sample in the exposition, or ``None`` when it is absent."""
        return self.registry.get_sample_value(name, labels)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return prometheus_client.generate_latest(self.registry)


# -- health ------------------------------------------------------------------------------------------


@dataclass
class Health:
    """Liveness and readiness of the service, set by its main loop.

    Parameters
    ----------
    max_heartbeat_age
        Liveness fails when the main loop has not called :meth:`heartbeat` for this many seconds
        (keep it below the consumer's ``max.poll.interval.ms``).
    clock
        Monotonic clock, injectable for tests.
    """

    max_heartbeat_age: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _last_heartbeat: float | None = field(default=None, init=False)
    _fatal: str | None = field(default=None, init=False)
    _connected: bool = field(default=False, init=False)
    _assigned: bool = field(default=False, init=False)
    _restored: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def heartbeat(self) -> None:
        """Mark the main loop as alive (call once per poll iteration)."""
        with self._lock:
            self._last_heartbeat = self.clock()

    def set_fatal(self, reason: str) -> None:
        """Record a fatal error: liveness fails from now on."""
        with self._lock:
            self._fatal = reason

    def set_connected(self, value: bool = True) -> None:
        """Whether the broker is reachable."""
        with self._lock:
            self._connected = value

    def set_assigned(self, value: bool = True) -> None:
        """Whether the consumer received its (possibly empty) partition assignment."""
        with self._lock:
            self._assigned = value

    def set_state_restored(self, value: bool = True) -> None:
        """Whether the detector state of the assigned partitions has been restored."""
        with self._lock:
            self._restored = value

    def live(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, body)``: the heartbeat is recent and no fatal error was recorded."""
        with self._lock:
            age = None if self._last_heartbeat is None else self.clock() - self._last_heartbeat
            fatal = self._fatal
        reasons = []
        if fatal is not None:
            reasons.append(f"fatal error: {fatal}")
        if age is None:
            reasons.append("main loop has not started")
        elif age > self.max_heartbeat_age:
            reasons.append(f"main loop heartbeat is {age:.1f}s old (max {self.max_heartbeat_age:g}s)")
        body: dict[str, Any] = {
            "status": "ok" if not reasons else "fail",
            "heartbeat_age_seconds": None if age is None else round(age, 3),
        }
        if reasons:
            body["reasons"] = reasons
        return not reasons, body

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, body)``: live, connected, assignment received and state restored."""
        live, live_body = self.live()
        with self._lock:
            checks = {"connected": self._connected, "assigned": self._assigned, "state_restored": self._restored}
        reasons = [] if live else list(live_body.get("reasons", []))
        reasons += [f"not {name.replace('_', ' ')}" for name, ok in checks.items() if not ok]
        body: dict[str, Any] = {"status": "ok" if not reasons else "fail", **checks}
        if reasons:
            body["reasons"] = reasons
        return not reasons, body


# -- HTTP --------------------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """Request handler that logs through :mod:`logging` at DEBUG instead of writing to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def _json(start_response: Callable[..., Any], ok: bool, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                            ("Cache-Control", "no-store")])
    return [payload]


def make_app(metrics: Metrics, health: Health | None = None) -> Callable[..., Iterable[bytes]]:
    """The WSGI application: ``/metrics``, ``/healthz``, ``/readyz``; 404 elsewhere."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path == DEFAULT_METRICS_PATH:
            return metrics_app(environ, start_response)
        if path == "/healthz":
            if health is None:
                return _json(start_response, True, {"status": "ok"})
            return _json(start_response, *health.live())
        if path == "/readyz":
            if health is None:
                return _json(start_response, True, {"status": "ok"})
            return _json(start_response, *health.ready())
        body = b"not found: try /metrics, /healthz or /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@dataclass
class MetricsServer:
    """Handle of a running :func:`serve` server."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(metrics: Metrics, health: Health | None = None, host: str = "0.0.0.0",
          port: int = DEFAULT_METRICS_PORT) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on one port from a daemon thread.

    Parameters
    ----------
    metrics
        Whose registry ``/metrics`` exposes.
    health
        Backs ``/healthz`` and ``/readyz``; both always answer 200 when ``None``.
    host, port
        Where to listen; port 0 picks a free port (see :attr:`MetricsServer.port`).

    Returns
    -------
    MetricsServer
        The handle; call :meth:`MetricsServer.shutdown` to stop.
    """
    class Server(socketserver.ThreadingMixIn, _ThreadingWSGIServer):
        if ":" in host:
            address_family = socket.AF_INET6

    server = make_server(host, port, make_app(metrics, health), server_class=Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="streamdetect-metrics-http", daemon=True)
    thread.start()
    bound_port = int(server.server_address[1])
    log.info("serving metrics on http://%s:%d/metrics", host, bound_port)
    return MetricsServer(host, bound_port, server, thread)

