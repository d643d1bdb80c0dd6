"""The consumer-group service behind ``streamdetect run``.

One :class:`~streamdetect.detector.Detector` per assigned input partition. Per consumed batch the
messages are grouped by partition and each group goes through its partition's detector; alerts go to
the alerts topic (key ``alert.message_key()``, value ``alert.to_json()``), rejected events to the
dead-letter topic (original key and bytes plus ``error.*``/``source.*`` headers).

Checkpoint (every ``kafka.checkpoint_interval`` seconds, when ``kafka.max_pending`` outputs are in
flight, on revocation and at shutdown), in this order:

1. wait until every alert and dead letter produced so far is acknowledged (failed ones are produced
   again; the consumer is paused meanwhile and still polled, so the group membership survives a slow
   or frozen broker);
2. write the snapshot ``{"version", "next_offset", "detector"}`` of every partition that processed
   input since the last checkpoint to the state topic and wait for its acknowledgement;
3. commit ``next_offset`` of those partitions (asynchronously in the loop, synchronously on
   revocation and shutdown).

So a committed offset never runs ahead of the snapshot, and a snapshot never runs ahead of the
outputs it caused: at-least-once. After a crash the partition resumes at its snapshot's
``next_offset`` (which is what the detector state contains), whatever the committed offset says;
the alerts of the last unfinished checkpoint interval come out again, with the same ``alert_id``.

In the opt-in exactly-once mode (``kafka.processing = "exactly_once"``, Apache Kafka only: Tansu
accepts the calls but does not isolate aborted records) outputs, snapshots and offsets of one
checkpoint interval are one transaction (``send_offsets_to_transaction``); on an abortable error the
transaction is aborted and every partition is rewound to its last snapshot.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamdetect.config import DetectorConfig
from streamdetect.detector import compile_kernels, sparse_keys_advice
from streamdetect.kafka.admin import ensure_topics, service_topics
from streamdetect.kafka.checkpoint import StateStore
from streamdetect.kafka.clients import (
    admin_config,
    consumer_config,
    producer_config,
    reader_config,
    redacted_client_config,
)
from streamdetect.kafka.dlq import dlq_headers
from streamdetect.kafka.producer import DeliveryError, OutputProducer
from streamdetect.metrics import Health, Metrics
from streamdetect.settings import AppConfig

__all__ = ["PartitionState", "Service", "ServiceTotals"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
# The share of the service's time that checkpoints taken early, at a backlog's end, may use.
CATCH_UP_SHARE = 0.1


@dataclass
class PartitionState:
    """What the service holds for one assigned input partition."""

    topic: str
    partition: int
    detector: Any
    next_offset: int | None
    checkpointed: int | None = None
    committed: int | None = None
    dirty: bool = False
    restored: bool = False
    # The partition's clock when it is idle (kafka.idle_after): its newest event time and the
    # monotonic time at which it was seen.
    newest_event_ms: int | None = None
    newest_seen_at: float = 0.0
    sparse_advised: bool = False  # the keys-too-sparse warning was logged (once per assignment)
    end_offset: int | None = None  # the partition's end at the last statistics

    @property
    def key(self) -> TP:
        return (self.topic, self.partition)


@dataclass
class ServiceTotals:
    """Running totals of this process (for the demo view and the final log line)."""

    events: int = 0
    alerts: int = 0
    rejected: int = 0
    windows: int = 0
    checkpoints: int = 0
    commits: int = 0
    rebalances: int = 0
    lag: dict[TP, int] = field(default_factory=dict)


class Service:
    """The streaming service: consume, detect, produce, checkpoint, commit.

    Parameters
    ----------
    config
        The validated application configuration.
    metrics, health
        Where to report; fresh ones when ``None`` (the caller serves them over HTTP).
    detector_factory, detector_from_state
        Build a new detector from a ``DetectorConfig`` / restore one from its ``to_state()``;
        :class:`streamdetect.detector.Detector` by default.
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        detector_factory: Callable[[DetectorConfig], Any] | None = None,
        detector_from_state: Callable[[dict[str, Any], DetectorConfig], Any] | None = None,
    ) -> None:
        self.config = config
        self.kcfg = config.kafka
        self.metrics = metrics if metrics is not None else Metrics(process_collectors=False)
        self.health = health if health is not None else Health(
            max_heartbeat_age=max(10.0, self.kcfg.max_poll_interval_ms / 1000.0))
        if detector_factory is None or detector_from_state is None:
            from streamdetect.detector import Detector

            detector_factory = detector_factory or Detector
            detector_from_state = detector_from_state or Detector.from_state
        self._new_detector = detector_factory
        self._restore_detector = detector_from_state
        self.exactly_once = self.kcfg.processing == "exactly_once"
        self.parts: dict[TP, PartitionState] = {}
        self.totals = ServiceTotals()
        # What the service is doing before it reads (for a view: a first run compiles its kernels
        # for half a minute, then the consumer group's join takes seconds more).
        self.phase = "starting"
        self._stash: list[Message] = []
        self._draining = False  # the last consume() filled its batch: more is likely fetched
        self._stop = threading.Event()
        self._stop_hard = threading.Event()
        self._paused = False
        self._closing = False
        self._last_checkpoint = time.monotonic()
        self._checkpoint_seconds = 0.0  # what the last checkpoint took
        self._caught_up = False  # a backlog was read to its end since the last checkpoint
        self._consumer: Consumer | None = None
        self._producer: OutputProducer | None = None
        self._store: StateStore | None = None
        self._in_txn = False
        self._last_error_log = 0.0

    # -- control ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the current batch, checkpoint, commit and exit; a second request stops waiting."""
        if self._stop.is_set():
            self._stop_hard.set()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop (the handler only sets a flag)."""
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "the service is not running"
        return self._consumer

    @property
    def producer(self) -> OutputProducer:
        assert self._producer is not None, "the service is not running"
        return self._producer

    @property
    def store(self) -> StateStore:
        assert self._store is not None, "the service is not running"
        return self._store

    # -- lifecycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; 0 on a clean shutdown, 1 on a fatal error (nothing uncommitted is lost)."""
        self.config.require_bootstrap()
        k = self.kcfg
        debug = self.config.log.librdkafka_debug
        try:
            if k.create_topics:
                ensure_topics(admin_config(k), service_topics(k), k.replication_factor)
            self.health.set_connected(True)
            pconf = producer_config(k, error_cb=self._on_error, log_debug=debug)
            self._producer = OutputProducer(pconf, delivery_retries=k.delivery_retries,
                                            on_delivered=self._on_delivered, on_failed=self._on_failed)
            self._store = StateStore(k.state_topic, self._producer, reader_config(k, log_debug=debug),
                                     max_message_bytes=k.max_message_bytes, restore_timeout=k.restore_timeout)
            cconf = consumer_config(k, stats_cb=self._on_stats, error_cb=self._on_error, log_debug=debug)
            cconf["on_commit"] = self._on_commit
            log.info("starting", extra={"consumer": redacted_client_config(cconf),
                                        "producer": redacted_client_config(pconf),
                                        "processing": k.processing})
            # A pattern's topics get their series when they are read.
            self.metrics.declare_topics(k.named_input_topics, (k.alerts_topic, k.dlq_topic, k.state_topic))
            if self.exactly_once:
                self.producer.init_transactions()
                self._begin()
            # Before joining the group: compiling the kernels afresh takes seconds.
            self.phase = "compiling the detector's kernels (cached after the first run)"
            log.info("kernels ready", extra={"seconds": round(compile_kernels(), 3)})
            self.phase = "joining the consumer group"
            self._consumer = Consumer(cconf)
            self.consumer.subscribe(list(k.input_topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_lost)
            while not self._stop.is_set():
                self._step()
            self._shutdown()
            log.info("stopped", extra={"events": self.totals.events, "alerts": self.totals.alerts,
                                       "rejected": self.totals.rejected})
            return 0
        except (DeliveryError, KafkaException, RuntimeError) as exc:
            log.error("fatal error, stopping without committing further", exc_info=True)
            self.health.set_fatal(str(exc))
            return 1
        finally:
            self._close_clients()

    def _close_clients(self) -> None:
        if self._consumer is not None:
            self._closing = True
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", extra={"error": str(exc)})
            self._consumer = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._producer is not None:
            self._producer.producer.flush(5.0)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.kcfg.shutdown_timeout
        ok = self._checkpoint(deadline=deadline, sync=True)
        if not ok:
            log.warning("final checkpoint incomplete: a restart resumes at the last checkpoint")
        self._closing = True  # close() revokes everything; it has just been checkpointed

    # -- the loop -----------------------------------------------------------------------------------

    def _step(self) -> None:
        if self._stash:
            msgs, self._stash = self._stash, []
        else:
            msgs = []
            if self._draining:
                # After a full batch, what is already fetched is taken without waiting for the
                # batch to fill: the end of a backlog is processed, and committed, at once rather
                # than after `poll_timeout`. A stream that is kept up with waits as before, so it
                # is still read in a few batches a second.
                msgs = self.consumer.consume(num_messages=self.kcfg.batch_size, timeout=0)
                if len(msgs) < self.kcfg.batch_size:
                    self._caught_up = True  # a backlog read to its end: see _until_checkpoint
            if not msgs:
                msgs = self.consumer.consume(num_messages=self.kcfg.batch_size, timeout=self._idle_wait())
            self._draining = len(msgs) >= self.kcfg.batch_size
        self.health.heartbeat()
        if msgs:
            self._process(msgs)
        if self.kcfg.idle_after > 0:
            self._advance_idle()
        self.producer.poll(0)
        now = time.monotonic()
        due = self._until_checkpoint(now) <= 0.0
        if (due and self._needs_checkpoint()) or len(self.producer) >= self.kcfg.max_pending:
            self._checkpoint()
        elif due:
            self._last_checkpoint = now
            self._caught_up = False

    def _idle_wait(self) -> float:
        """How long an empty consumer may wait for messages: ``poll_timeout``, but not past a
        checkpoint that is due (the commit of work already done is not held back by an idle topic)."""
        wait = self.kcfg.poll_timeout
        if self._needs_checkpoint():
            wait = min(wait, max(0.0, self._until_checkpoint(time.monotonic())))
        return wait

    def _until_checkpoint(self, now: float) -> float:
        """Seconds from ``now`` to the next checkpoint tick (not above 0: it is due).

        A backlog read to its end (full batches, then less) is committed at once rather than at the
        next tick: the group's lag reads 0 once the service has caught up, and a restart then reads
        nothing twice. A stream that keeps the service busy may look caught up often, so such early
        checkpoints wait until they take at most CATCH_UP_SHARE of the time since the last one.
        """
        until = self._last_checkpoint + self.kcfg.checkpoint_interval - now
        if self._caught_up:
            until = min(until, self._last_checkpoint + self._checkpoint_seconds / CATCH_UP_SHARE - now)
        return until

    def _needs_checkpoint(self) -> bool:
        return any(ps.dirty or (ps.checkpointed is not None and ps.checkpointed != ps.committed)
                   for ps in self.parts.values())

    def _process(self, msgs: list[Message]) -> None:
        started = time.perf_counter()
        groups: dict[TP, list[Message]] = {}
        # C-level passes over the batch: per-message Python work here is the service's own cost
        # on top of the consumer's, and a batch is usually clean and from one partition.
        if any(map(Message.error, msgs)):
            clean = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    self._on_message_error(err)
                else:
                    clean.append(m)
            msgs = clean
        if msgs:
            tps = list(zip(map(Message.topic, msgs), map(Message.partition, msgs), strict=True))
            if tps.count(tps[0]) == len(tps):
                groups[(tps[0][0] or "", int(tps[0][1] or 0))] = msgs
            else:
                for (topic, partition), m in zip(tps, msgs, strict=True):
                    groups.setdefault((topic or "", int(partition or 0)), []).append(m)
        if not groups:
            return
        self.health.set_connected(True)
        now_ms = int(time.time() * 1000)
        dlq_topic, produce = self.kcfg.dlq_topic, self.producer.produce
        for key, group in groups.items():
            ps = self.parts.get(key)
            if ps is None:
                continue  # revoked while the batch was in flight: its new owner reads it again
            if ps.next_offset is not None and int(group[0].offset() or 0) < ps.next_offset:
                # already inside the detector state (a seek back, a redelivery): never count it twice
                group = [m for m in group if int(m.offset() or 0) >= ps.next_offset]
                if not group:
                    continue
            out = ps.detector.process(list(map(Message.value, group)), now_ms=now_ms)
            self._publish(ps, out, now_ms)
            for rej in out.rejected:
                m = group[rej.index]
                ts_type, ts = m.timestamp()
                produce(dlq_topic, m.value(), m.key(),
                        dlq_headers(rej.reason, rej.detail, key[0], key[1], int(m.offset() or 0),
                                    ts if ts_type else None))
            ps.next_offset = int(group[-1].offset() or 0) + 1
            self._refresh_lag(ps)
            t = self.totals
            t.events += len(group)
            t.rejected += len(out.rejected)
            self.metrics.record_consumed(key[0], len(group))
        self.metrics.observe_batch_seconds(time.perf_counter() - started)

    def _publish(self, ps: PartitionState, out: Any, now_ms: int) -> None:
        """Produce a detector output's alerts and episode ends; count it."""
        alerts_topic, produce = self.kcfg.alerts_topic, self.producer.produce
        for message in out.messages:  # alerts and the ends of their episodes, in order
            produce(alerts_topic, message.to_json(), message.message_key())
        ps.dirty = True
        t = self.totals
        t.alerts += len(out.alerts)
        t.windows += len(out.scored)
        stats = ps.detector.stats()
        if stats.newest_event_ms is not None and stats.newest_event_ms != ps.newest_event_ms:
            ps.newest_event_ms, ps.newest_seen_at = stats.newest_event_ms, time.monotonic()
        self.metrics.observe_output(ps.partition, out, stats)
        if not ps.sparse_advised:
            advice = sparse_keys_advice(stats, self.config.detector.windows.size)
            if advice is not None:
                log.warning(advice, extra={"topic": ps.topic, "partition": ps.partition})
                ps.sparse_advised = True
        if out.alerts:
            scored = out.scored
            flagged = np.asarray(scored.event_time_ms)[np.asarray(scored.is_anomaly, dtype=bool)]
            if len(flagged):
                self.metrics.observe_alert_latency(((now_ms - flagged) / 1000.0).tolist())

    def _advance_idle(self) -> None:
        """Let the clock of partitions without new events run on at wall-clock pace.

        Event time only moves with events: on a partition whose keys have all stopped (one store
        alone on its partition, or every store behind it) no window would close and no outage
        would be seen. Once a partition has had no newer event for ``kafka.idle_after`` seconds,
        its clock runs from its newest event time at wall-clock pace (newest + quiet time -
        idle_after), so its windows close as they would had the stream gone on, and its silent
        keys get their zero windows until ``idle_timeout``. A producer that delivers in bursts at
        most ``idle_after`` apart never sees its events made late by it.
        """
        windows = self.config.detector.windows
        idle_ms = round(self.kcfg.idle_after * 1000)
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        for ps in list(self.parts.values()):
            if ps.newest_event_ms is None:
                continue
            quiet_ms = int((now - ps.newest_seen_at) * 1000)
            clock = ps.newest_event_ms + quiet_ms - idle_ms
            next_start = ps.detector.windows.next_start
            # only when a window is due to close: an idle partition is advanced once a hop, not once a poll
            if quiet_ms <= idle_ms or next_start is None:
                continue
            if clock - windows.lateness_ms < next_start + windows.size_ms:
                continue
            out = ps.detector.advance(clock, now_ms=now_ms)
            if len(out.scored) or out.messages:  # a clock that closed nothing is not worth a checkpoint
                self._publish(ps, out, now_ms)

    def _on_message_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        now = time.monotonic()
        if now - self._last_error_log > 5.0:  # a down broker reports every few hundred ms
            self._last_error_log = now
            log.warning("consumer error", extra={"error": str(err), "code": err.name()})

    # -- checkpoint ---------------------------------------------------------------------------------

    def _wait_delivered(self, deadline: float | None, keepalive: bool) -> bool:
        """Wait until the producer has nothing unacknowledged; ``False`` at the deadline or a hard stop.

        With ``keepalive`` the consumer is paused and polled while waiting so that the group does
        not evict this member during a long broker outage; anything it still returns is kept for
        after the checkpoint. Inside rebalance callbacks polling is not allowed (``keepalive=False``).
        """
        step = min(self.kcfg.poll_timeout, 0.5)
        paused_here = False
        try:
            while True:
                if self.producer.flush_step(step):
                    return True
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.kcfg.shutdown_timeout
                if self._stop_hard.is_set() or (deadline is not None and time.monotonic() > deadline):
                    return False
                if keepalive and self._consumer is not None:
                    if not self._paused:
                        self._set_paused(True)
                        paused_here = True
                    self._stash.extend(self.consumer.consume(num_messages=self.kcfg.batch_size, timeout=0))
                    self.health.heartbeat()
        finally:
            if paused_here:
                self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            try:
                (self.consumer.pause if paused else self.consumer.resume)(assignment)
            except KafkaException as exc:
                log.warning("pause/resume failed", extra={"error": str(exc)})
        self._paused = paused

    def _checkpoint(self, *, only: Iterable[TP] | None = None, deadline: float | None = None,
                    keepalive: bool = True, sync: bool = False) -> bool:
        """Outputs acknowledged → snapshots written and acknowledged → offsets committed."""
        self._last_checkpoint = time.monotonic()
        self._caught_up = False
        try:
            return self._checkpoint_now(only=only, deadline=deadline, keepalive=keepalive, sync=sync)
        finally:
            self._checkpoint_seconds = time.monotonic() - self._last_checkpoint

    def _checkpoint_now(self, *, only: Iterable[TP] | None, deadline: float | None, keepalive: bool,
                        sync: bool) -> bool:
        wanted = None if only is None else set(only)
        if not self._wait_delivered(deadline, keepalive):
            self.metrics.record_checkpoint(False)
            return False
        # recomputed after the wait: a rebalance served meanwhile may have changed the assignment
        if self.exactly_once:
            wanted = None  # one transaction carries every partition's outputs, so every offset goes with it
        targets = [ps for ps in self.parts.values() if wanted is None or ps.key in wanted]
        dirty = [ps for ps in targets if ps.dirty and ps.next_offset is not None]
        if dirty:
            started, sizes = time.perf_counter(), {}
            for ps in dirty:
                assert ps.next_offset is not None
                sizes[ps.partition] = self.store.write(ps.topic, ps.partition, ps.next_offset, ps.detector.to_state())
            self.metrics.record_snapshots(time.perf_counter() - started, sizes)
            offsets = {ps.key: int(ps.next_offset) for ps in dirty if ps.next_offset is not None}
            if self.exactly_once:
                return self._commit_transaction(targets, offsets)
            if not self._wait_delivered(deadline, keepalive):
                self.metrics.record_checkpoint(False)
                return False
            for ps in dirty:
                ps.checkpointed = offsets[ps.key]
                ps.dirty = False
            self.metrics.record_checkpoint(True)
            self.totals.checkpoints += 1
        elif self.exactly_once:
            return True
        self._commit(targets, sync=sync)
        return True

    def _commit(self, targets: list[PartitionState], *, sync: bool) -> None:
        tps = [TopicPartition(ps.topic, ps.partition, ps.checkpointed) for ps in targets
               if ps.checkpointed is not None and ps.checkpointed != ps.committed]
        if not tps or self._consumer is None:
            return
        if not sync:
            # the result arrives in _on_commit; a failed commit is simply repeated at the next checkpoint
            try:
                self.consumer.commit(offsets=tps, asynchronous=True)
            except KafkaException as exc:
                self._commit_failed(exc)
            return
        try:
            result = self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(exc)
            return
        self._committed(result or [])

    def _commit_failed(self, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
            return
        # REBALANCE_IN_PROGRESS / ILLEGAL_GENERATION during cooperative rebalances, timeouts while
        # the broker is away: the offsets stay pending and the next checkpoint commits them.
        self.metrics.record_commit(False)
        log.warning("offset commit failed; will retry at the next checkpoint", extra={"error": str(exc)})

    def _committed(self, partitions: list[TopicPartition]) -> None:
        ok = True
        for tp in partitions:
            if tp.error is not None:
                ok = False
                continue
            ps = self.parts.get((tp.topic, tp.partition))
            if ps is not None:
                ps.committed = tp.offset
        self.metrics.record_commit(ok)
        if ok:
            self.totals.commits += 1
        else:
            log.warning("offset commit partly failed; will retry at the next checkpoint",
                        extra={"errors": [str(tp.error) for tp in partitions if tp.error is not None]})

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            if err.code() == KafkaError._NO_OFFSET:
                return
            self.metrics.record_commit(False)
            log.warning("offset commit failed; will retry at the next checkpoint", extra={"error": str(err)})
            return
        self._committed(partitions)

    # -- exactly-once -------------------------------------------------------------------------------

    def _begin(self) -> None:
        self.producer.begin_transaction()
        self._in_txn = True

    def _commit_transaction(self, targets: list[PartitionState], offsets: dict[TP, int]) -> bool:
        """Offsets go into the transaction with the outputs and snapshots; commit it and start the next."""
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.producer.send_offsets_to_transaction(tps, self.consumer.consumer_group_metadata())
            self.producer.commit_transaction()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            self.metrics.record_checkpoint(False)
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                log.warning("transaction aborted; rewinding to the last snapshot", extra={"error": str(err)})
                self.producer.abort_transaction()
                self._begin()
                self._rewind()
                return False
            raise
        for ps in targets:
            if ps.key in offsets:
                ps.checkpointed = ps.committed = offsets[ps.key]
                ps.dirty = False
        self.metrics.record_checkpoint(True)
        self.metrics.record_commit(True)
        self.totals.checkpoints += 1
        self._begin()
        return True

    def _rewind(self) -> None:
        """Reload every owned partition from its snapshot and seek there (after an aborted transaction)."""
        self._stash.clear()
        keys = list(self.parts)
        for key, state in self._restore(keys).items():
            self.parts[key] = state
            if state.next_offset is not None:
                try:
                    self.consumer.seek(TopicPartition(key[0], key[1], state.next_offset))
                except KafkaException as exc:
                    log.warning("seek failed after abort", extra={"topic": key[0], "partition": key[1],
                                                                  "error": str(exc)})

    # -- rebalance ----------------------------------------------------------------------------------

    def _restore(self, keys: list[TP]) -> dict[TP, PartitionState]:
        """Partition states for ``keys``: detector from the newest snapshot, start offset decided here.

        Resume at the snapshot's ``next_offset`` when there is one: the detector state contains
        exactly the input before it, and everything it caused was delivered before it was written.
        (A committed offset ahead of it cannot happen with this service's ordering; behind it, it
        means the last commit failed.) Without a snapshot, start fresh at the committed offset.
        """
        snaps = self.store.load(keys)
        committed: dict[TP, int] = {}
        try:
            for tp in self.consumer.committed([TopicPartition(t, p) for t, p in keys],
                                              timeout=self.kcfg.restore_timeout):
                if tp.error is None and tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            log.warning("could not read committed offsets", extra={"error": str(exc)})
        out: dict[TP, PartitionState] = {}
        for key in keys:
            topic, partition = key
            snap = snaps.get(key)
            det = None
            if snap is not None:
                try:
                    det = self._restore_detector(snap.detector, self.config.detector)
                except Exception:
                    log.exception("cannot restore the detector from its snapshot (changed configuration?); "
                                  "starting this partition fresh", extra={"topic": topic, "partition": partition})
            if det is not None and snap is not None:
                start: int | None = snap.next_offset
                if key in committed and committed[key] != snap.next_offset:
                    log.warning("snapshot and committed offsets differ; resuming at the snapshot's offset",
                                extra={"topic": topic, "partition": partition, "snapshot_offset": snap.next_offset,
                                       "committed_offset": committed[key]})
                ps = PartitionState(topic, partition, det, start, checkpointed=start,
                                    committed=committed.get(key), restored=True)
            else:
                det = self._new_detector(self.config.detector)
                start = committed.get(key)
                ps = PartitionState(topic, partition, det, start, checkpointed=start, committed=start)
            stats = det.stats()
            # a restored partition's clock starts at its newest event, from now (how long it had
            # been quiet before is not known)
            ps.newest_event_ms, ps.newest_seen_at = stats.newest_event_ms, time.monotonic()
            log.info("partition assigned", extra={
                "topic": topic, "partition": partition, "offset": start, "restored": ps.restored,
                "snapshot_bytes": snap.size_bytes if snap is not None else 0,
                "warmed_up": bool(stats.warmed_up), "windows_scored": int(getattr(det, "windows_scored", 0)),
            })
            self.metrics.observe_stats(partition, stats, baseline=True)
            out[key] = ps
        return out

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.phase = "consuming"
        keys = [(tp.topic, tp.partition) for tp in partitions]
        states = self._restore(keys) if keys else {}
        self.parts.update(states)
        assign = []
        for t, p in keys:
            start = states[(t, p)].next_offset
            assign.append(TopicPartition(t, p) if start is None else TopicPartition(t, p, start))
        consumer.incremental_assign(assign)
        if assign:
            # librdkafka keeps a partition's pause flag across revocation and re-assignment: a
            # partition lost while paused (e.g. during a broker outage) would come back paused.
            (consumer.pause if self._paused else consumer.resume)(assign)
        self.totals.rebalances += 1
        self.metrics.record_rebalance("assign", len(self.parts))
        self.health.set_connected(True)
        self.health.set_assigned(True)
        self.health.set_state_restored(True)

    def _forget(self, keys: set[TP]) -> None:
        self._stash = [m for m in self._stash if (m.topic(), m.partition()) not in keys]
        for key in keys:
            if self.parts.pop(key, None) is not None:
                self.metrics.remove_partition(key[1], [key[0]])
            self.totals.lag.pop(key, None)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        if not self._closing and keys & set(self.parts):
            # stashed messages of these partitions are beyond what gets committed: the new owner reads them
            self._stash = [m for m in self._stash if (m.topic(), m.partition()) not in keys]
            deadline = time.monotonic() + self.kcfg.shutdown_timeout
            if not self._checkpoint(only=keys, deadline=deadline, keepalive=False, sync=True):
                log.warning("revoked partitions could not be checkpointed; their new owner resumes at the "
                            "last checkpoint", extra={"partitions": sorted(keys)})
        self._forget(keys)
        self.totals.rebalances += 1
        self.metrics.record_rebalance("revoke", len(self.parts))
        log.info("partitions revoked", extra={"partitions": [f"{t}:{p}" for t, p in sorted(keys)]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        # another member may own them already: committing now could move its offsets backwards
        self._forget(keys)
        self.totals.rebalances += 1
        self.metrics.record_rebalance("lost", len(self.parts))
        log.warning("partitions lost; their state is dropped", extra={
            "partitions": [f"{t}:{p}" for t, p in sorted(keys)]})

    # -- client callbacks ---------------------------------------------------------------------------

    def _on_delivered(self, topic: str) -> None:
        if topic == self.kcfg.alerts_topic:
            self.metrics.record_alerts_produced(1)

    def _on_failed(self, topic: str) -> None:
        self.metrics.record_delivery_failure(topic)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.set_connected(False)
        if err.fatal():
            self.health.set_fatal(str(err))
            log.error("fatal client error", extra={"error": str(err)})
            self.request_stop()
            return
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.warning("kafka client error (librdkafka retries by itself)", extra={"error": str(err),
                                                                                    "code": err.name()})

    def _refresh_lag(self, ps: PartitionState) -> None:
        """The partition's lag against its end at the last statistics: refreshed after every batch
        too, so that a gauge read between two statistics (every ``statistics_interval_ms``) does not
        report a backlog the batches since have worked off (the demo's last frame showed a lag of a
        thousand with everything consumed)."""
        if ps.end_offset is not None and ps.next_offset is not None:
            self._set_lag(ps.key, max(0, ps.end_offset - ps.next_offset))

    def _set_lag(self, key: TP, lag: int) -> None:
        self.totals.lag[key] = lag
        self.metrics.set_lag(key[0], key[1], lag)

    def _on_stats(self, raw: str) -> None:
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        # The assigned input partitions, whether their topics were named or matched by a pattern.
        assigned = {topic for topic, _ in list(self.parts)}
        for topic, tdata in (stats.get("topics") or {}).items():
            if topic not in assigned:
                continue
            for pid, pdata in (tdata.get("partitions") or {}).items():
                p = int(pid)
                ps = self.parts.get((topic, p))
                if p < 0 or ps is None:
                    continue
                # librdkafka's consumer_lag is measured from the *committed* offset, which only moves
                # at checkpoints; the end of the partition minus what has been processed is the real
                # backlog. ls_offset (read_committed) / hi_offset is the fetch high watermark, which
                # is right on Tansu too (its ListOffsets(latest) is not).
                end = int(pdata.get("ls_offset", -1))
                if end < 0:
                    end = int(pdata.get("hi_offset", -1))
                if end >= 0:
                    ps.end_offset = end
                if end >= 0 and ps.next_offset is not None:
                    self._refresh_lag(ps)
                    continue
                lag = int(pdata.get("consumer_lag", -1))
                if lag >= 0:
                    self._set_lag(ps.key, lag)
