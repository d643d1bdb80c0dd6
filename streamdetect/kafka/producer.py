"""The output producer: alerts, dead letters and state snapshots, with delivery accounting.

At-least-once rests on one rule: an input offset is committed only after every message it caused
has been *acknowledged* by the broker. :class:`OutputProducer` therefore counts what is in flight and
remembers every failed delivery (with its payload). A failed message is produced again, up to
``delivery_retries`` times (librdkafka has already retried it internally for ``message.timeout.ms``);
after that :class:`DeliveryError` stops the service without committing, so a restart processes the
input again from the last commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["DeliveryError", "OutputProducer", "PendingRecord"]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | str | None]]


class DeliveryError(RuntimeError):
    """A message could not be delivered after every retry: do not commit, stop the service."""


@dataclass
class PendingRecord:
    """A message whose delivery failed, kept to be produced again."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers | None
    partition: int | None
    attempt: int
    error: str


class OutputProducer:
    """A confluent-kafka :class:`~confluent_kafka.Producer` with delivery tracking.

    Parameters
    ----------
    conf
        librdkafka configuration (see :func:`streamdetect.kafka.clients.producer_config`).
    delivery_retries
        How often a failed message is produced again before :class:`DeliveryError`.
    on_delivered
        Called with the topic of every acknowledged message (metrics).
    on_failed
        Called with the topic of every failed delivery (metrics).
    producer
        An existing producer to wrap (tests).
    """

    def __init__(
        self,
        conf: dict[str, Any] | None = None,
        *,
        delivery_retries: int = 3,
        on_delivered: Callable[[str], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        producer: Producer | None = None,
    ) -> None:
        if producer is None:
            if conf is None:
                raise ValueError("give a producer configuration or a producer")
            producer = Producer(conf)
        self.producer = producer
        self.delivery_retries = delivery_retries
        self.on_delivered = on_delivered
        self.on_failed = on_failed
        self.failed: list[PendingRecord] = []
        self.delivered = 0
        self.failures = 0

    # -- producing --------------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        *,
        _attempt: int = 0,
    ) -> None:
        """Queue one message; on a full local queue, serve delivery reports and try again."""
        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.delivered += 1
                if self.on_delivered is not None:
                    self.on_delivered(topic)
                return
            self.failures += 1
            self.failed.append(PendingRecord(topic, value, key, headers, partition, _attempt + 1, str(err)))
            if self.on_failed is not None:
                self.on_failed(topic)
            log.warning("delivery failed", extra={"topic": topic, "error": str(err), "attempt": _attempt + 1})

        kwargs: dict[str, Any] = {"value": value, "key": key, "on_delivery": callback}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        waited = 0.0
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:
                # The local queue is full (e.g. the broker is unreachable): serve delivery reports
                # until there is room. Bounded by kafka.max_pending far below the queue size.
                self.producer.poll(0.1)
                waited += 0.1
                if waited >= 10.0:
                    log.warning("producer queue full, still waiting", extra={"topic": topic,
                                                                             "queued": len(self.producer)})
                    waited = 0.0

    def poll(self, timeout: float = 0.0) -> int:
        return int(self.producer.poll(timeout))

    def __len__(self) -> int:
        """Messages not yet acknowledged (queued or in flight)."""
        return len(self.producer)

    # -- delivery ---------------------------------------------------------------------------------

    @property
    def clean(self) -> bool:
        """Nothing in flight and no failed delivery waiting to be retried."""
        return len(self.producer) == 0 and not self.failed

    def retry_failed(self) -> int:
        """Produce the failed messages again; raise :class:`DeliveryError` when one has no retries left."""
        failed, self.failed = self.failed, []
        for rec in failed:
            if rec.attempt > self.delivery_retries:
                self.failed = failed  # keep them visible: nothing may be committed now
                raise DeliveryError(
                    f"could not deliver a message to {rec.topic!r} after {rec.attempt} attempts: {rec.error}"
                )
            self.produce(rec.topic, rec.value, rec.key, rec.headers, rec.partition, _attempt=rec.attempt)
        return len(failed)

    def flush_step(self, timeout: float) -> bool:
        """Serve delivery reports for up to ``timeout`` seconds; ``True`` once everything is acknowledged.

        Failed messages are produced again (see :meth:`retry_failed`). Never blocks for longer than
        ``timeout``, so the caller can keep its consumer alive between steps.
        """
        if self.failed:
            self.retry_failed()
        if len(self.producer):
            self.producer.flush(timeout)
        if self.failed:
            self.retry_failed()
            return False
        return len(self.producer) == 0

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for everything to be acknowledged (retrying failures)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.flush_step(max(0.0, min(1.0, remaining))):
                return True
            if remaining <= 0:
                return False

    # -- transactions (exactly-once mode) ---------------------------------------------------------

    def init_transactions(self, timeout: float = 30.0) -> None:
        self.producer.init_transactions(timeout)

    def begin_transaction(self) -> None:
        self.producer.begin_transaction()

    def send_offsets_to_transaction(self, offsets: list[Any], group_metadata: Any, timeout: float = 30.0) -> None:
        self.producer.send_offsets_to_transaction(offsets, group_metadata, timeout)

    def commit_transaction(self, timeout: float = 30.0) -> None:
        self.producer.commit_transaction(timeout)

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self.failed.clear()
        self.producer.abort_transaction(timeout)
