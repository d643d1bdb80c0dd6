"""Building blocks of the Kafka service: topics, delivery-tracked producer, dead letters, state checkpoints."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streamdetect.kafka.admin import TopicSpec, ensure_topics, service_topics
from streamdetect.kafka.checkpoint import StateStore, decode_value, encode_value
from streamdetect.kafka.clients import admin_config, producer_config, reader_config
from streamdetect.kafka.dlq import dlq_headers
from streamdetect.kafka.producer import DeliveryError, OutputProducer
from streamdetect.settings import KafkaConfig


def kafka_cfg(bootstrap: str, unique: str, **kw: Any) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=bootstrap, input_topics=(f"in-{unique}",), alerts_topic=f"alerts-{unique}",
                       dlq_topic=f"dlq-{unique}", state_topic=f"state-{unique}", group_id=f"g-{unique}", **kw)


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list[Any]:
    """Every message of ``topic`` (all partitions), once ``expected`` arrived or at the timeout."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    md = c.list_topics(topic, timeout=10)
    from confluent_kafka import TopicPartition

    c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(m for m in c.consume(1000, 0.5) if m.error() is None)
        # a short grace period to catch any extra (duplicate or unexpected) record
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            out.extend(m for m in c.consume(1000, 0.2) if m.error() is None)
    finally:
        c.close()
    return out


# -- pure ------------------------------------------------------------------------------------------


def test_state_value_encoding() -> None:
    payload = {"version": 1, "next_offset": 7, "detector": {"a": [1.5, 2.5]}}
    raw = encode_value(payload)
    assert raw[:1] != b"{" and decode_value(raw) == payload
    assert decode_value(b'{"version": 1}') == {"version": 1}


def test_dlq_headers() -> None:
    h = dict(dlq_headers("bad_type", "x" * 2000, "sales", 3, 99, None))
    assert h["error.reason"] == b"bad_type" and len(h["error.detail"]) == 512
    assert h["source.timestamp"] == b"" and h["source.partition"] == b"3" and "app.version" in h


class _StubProducer:
    """Stands in for confluent_kafka.Producer: fails the first ``fail`` deliveries, queue of ``room``."""

    def __init__(self, fail: int = 0, room: int = 10**9) -> None:
        self.fail, self.room = fail, room
        self.queue: list[Any] = []
        self.sent: list[tuple[str, bytes | None]] = []
        self.buffer_errors = 0

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, on_delivery: Any = None,
                **kw: Any) -> None:
        if len(self.queue) >= self.room:
            self.buffer_errors += 1
            raise BufferError("queue full")
        self.queue.append((topic, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        n = len(self.queue)
        for topic, value, cb in self.queue:
            if self.fail > 0:
                self.fail -= 1
                cb(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.sent.append((topic, value))
                cb(None, None)
        self.queue = []
        return n

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.queue)


def test_failed_deliveries_are_produced_again_then_give_up() -> None:
    stub = _StubProducer(fail=2)
    p = OutputProducer(producer=stub, delivery_retries=3)  # type: ignore[arg-type]
    p.produce("t", b"a")
    p.produce("t", b"b")
    assert p.flush(1.0) and p.clean
    assert sorted(v for _, v in stub.sent) == [b"a", b"b"] and p.failures == 2

    stub = _StubProducer(fail=10)
    p = OutputProducer(producer=stub, delivery_retries=2)  # type: ignore[arg-type]
    p.produce("t", b"a")
    with pytest.raises(DeliveryError, match="after 3 attempts"):
        p.flush(1.0)
    assert not p.clean  # nothing may be committed after this


def test_full_queue_is_polled_not_dropped() -> None:
    stub = _StubProducer(room=2)
    p = OutputProducer(producer=stub)  # type: ignore[arg-type]
    for i in range(5):
        p.produce("t", str(i).encode())
    assert p.flush(1.0)
    assert [v for _, v in stub.sent] == [str(i).encode() for i in range(5)] and stub.buffer_errors > 0


# -- against the broker --------------------------------------------------------------------------


@pytest.mark.broker
def test_topics_created_once_with_compacted_state(bootstrap: str, unique: str) -> None:
    k = kafka_cfg(bootstrap, unique, topic_partitions=3)
    created = ensure_topics(admin_config(k), service_topics(k, include_inputs=True))
    assert sorted(created) == sorted([f"in-{unique}", f"alerts-{unique}", f"dlq-{unique}", f"state-{unique}"])
    assert ensure_topics(admin_config(k), service_topics(k, include_inputs=True)) == []
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10)
    assert len(md.topics[f"alerts-{unique}"].partitions) == 3
    res = ConfigResource(ResourceType.TOPIC, f"state-{unique}")
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["cleanup.policy"].value == "compact"


@pytest.mark.broker
def test_producer_delivers_with_headers(bootstrap: str, unique: str) -> None:
    k = kafka_cfg(bootstrap, unique)
    ensure_topics(admin_config(k), [TopicSpec(k.dlq_topic, 2)])
    delivered: list[str] = []
    p = OutputProducer(producer_config(k), on_delivered=delivered.append)
    for i in range(50):
        p.produce(k.dlq_topic, b"not json %d" % i, b"k", dlq_headers("decode", "bad", "sales", 1, i, 1700000000000))
    assert p.flush(20.0) and len(delivered) == 50
    msgs = read_all(bootstrap, k.dlq_topic, 50)
    assert len(msgs) == 50
    headers = dict(msgs[0].headers())
    assert headers["error.reason"] == b"decode" and headers["source.timestamp"] == b"1700000000000"


@pytest.mark.broker
def test_state_store_round_trip_chunks_and_catch_up(bootstrap: str, unique: str) -> None:
    k = kafka_cfg(bootstrap, unique, max_message_bytes=150_000, state_partitions=3)
    ensure_topics(admin_config(k), service_topics(k))
    p = OutputProducer(producer_config(k))
    store = StateStore(k.state_topic, p, reader_config(k), max_message_bytes=k.max_message_bytes, restore_timeout=20)
    other = StateStore(k.state_topic, p, reader_config(k), max_message_bytes=k.max_message_bytes, restore_timeout=20)
    try:
        assert store.load([("sales", 0)]) == {}
        rng = random.Random(1)
        big = {"values": [rng.random() for _ in range(40_000)]}  # ~300 KB compressed: chunked
        store.write("sales", 0, 10, {"n": 1})
        store.write("sales", 1, 20, big)
        store.write("sales", 0, 11, {"n": 2})
        assert p.flush(20.0)
        snaps = store.load([("sales", 0), ("sales", 1), ("sales", 2)])
        assert set(snaps) == {("sales", 0), ("sales", 1)}
        assert (snaps[("sales", 0)].next_offset, snaps[("sales", 0)].detector) == (11, {"n": 2})
        assert snaps[("sales", 1)].detector == big and snaps[("sales", 1)].next_offset == 20
        first_slot = snaps[("sales", 1)].slot
        # a newer chunked snapshot goes to the other slot; a reader that has seen the old one catches up
        big2 = {"values": big["values"][::-1]}
        store.write("sales", 1, 30, big2)
        assert p.flush(20.0)
        again = other.load([("sales", 1)])
        assert again[("sales", 1)].detector == big2 and again[("sales", 1)].slot != first_slot
        assert store.load([("sales", 1)])[("sales", 1)].next_offset == 30
    finally:
        store.close()
        other.close()
