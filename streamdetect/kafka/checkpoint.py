"""Detector state checkpoints in a Kafka topic, one key per input partition.

Record layout (state topic, compacted on Kafka):

* key ``"{topic}:{partition}"`` (UTF-8), value ``zlib(orjson({"version": 1, "next_offset": N,
  "detector": Detector.to_state()}))``. ``next_offset`` is the first input offset *not* contained in
  the state. The value is compressed by us rather than only by the producer because librdkafka
  checks ``message.max.bytes`` against the uncompressed size.
* A compressed snapshot larger than ``max_message_bytes - 64 KiB`` is split into chunks keyed
  ``"{topic}:{partition}#{slot}/{i}"``, followed by a manifest under the plain key (``{"version": 1,
  "next_offset": N, "chunks": {"slot": s, "count": n, "sha256": ...}}``). The slot alternates between
  0 and 1, so a crash half-way through writing chunks never damages the snapshot the current
  manifest points to.

Every key of one input partition goes to the same state partition (``crc32(key) % partitions``,
set explicitly, independent of the producer's partitioner), so a restore reads one partition.

Tansu does not compact, so a restore reads the partition from the beginning to its end and keeps the
newest record per key; the reader remembers its position and the newest records, so later restores
(after a rebalance) only read what was written since. That cache holds at most one snapshot per
input partition of the configured input topics.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streamdetect.kafka.producer import OutputProducer

__all__ = [
    "SNAPSHOT_VERSION",
    "RestoreError",
    "Snapshot",
    "StateStore",
    "decode_value",
    "encode_value",
    "state_key",
]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
_CHUNK_MARGIN = 65_536


class RestoreError(RuntimeError):
    """The state topic could not be read to its end in time."""


def state_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def encode_value(payload: Mapping[str, Any]) -> bytes:
    """orjson then zlib (level 1: fast, and detector state compresses well)."""
    return zlib.compress(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), 1)


def decode_value(raw: bytes) -> Any:
    """Inverse of :func:`encode_value`; plain (uncompressed) JSON is accepted too."""
    if raw[:1] in (b"{", b"["):
        return orjson.loads(raw)
    return orjson.loads(zlib.decompress(raw))


@dataclass
class Snapshot:
    """A restored checkpoint of one input partition."""

    topic: str
    partition: int
    next_offset: int
    detector: dict[str, Any]
    size_bytes: int
    slot: int = 0


class StateStore:
    """Writes and restores per-partition detector state in the state topic.

    Parameters
    ----------
    topic
        The state topic.
    producer
        Shared with the alerts and dead letters, so a checkpoint is acknowledged by the same flush.
    reader_conf
        Configuration of the group-less reader (:func:`streamdetect.kafka.clients.reader_config`).
    max_message_bytes
        Snapshots above this minus 64 KiB are chunked.
    restore_timeout
        Seconds a restore may take before :class:`RestoreError`.
    """

    def __init__(
        self,
        topic: str,
        producer: OutputProducer,
        reader_conf: dict[str, Any],
        *,
        max_message_bytes: int = 1_000_000,
        restore_timeout: float = 60.0,
    ) -> None:
        self.topic = topic
        self.producer = producer
        self.reader_conf = reader_conf
        self.chunk_bytes = max(10_000, max_message_bytes - _CHUNK_MARGIN)
        self.restore_timeout = restore_timeout
        self._reader: Consumer | None = None
        self._n_partitions: int | None = None
        self._positions: dict[int, int] = {}
        self._latest: dict[str, bytes] = {}
        self._slots: dict[str, int] = {}
        self.bytes_written = 0

    # -- layout -----------------------------------------------------------------------------------

    def _reader_consumer(self) -> Consumer:
        if self._reader is None:
            self._reader = Consumer(self.reader_conf)
        return self._reader

    def n_partitions(self) -> int:
        """Partition count of the state topic (looked up once)."""
        if self._n_partitions is None:
            deadline = time.monotonic() + self.restore_timeout
            while True:
                md = self._reader_consumer().list_topics(self.topic, timeout=10)
                meta = md.topics.get(self.topic)
                if meta is not None and meta.error is None and meta.partitions:
                    self._n_partitions = len(meta.partitions)
                    break
                if time.monotonic() > deadline:
                    raise RestoreError(f"state topic {self.topic!r} does not exist or has no partitions "
                                       f"({meta.error if meta is not None else 'missing'}); create it or set "
                                       "kafka.create_topics = true")
                time.sleep(0.5)
        return self._n_partitions

    def state_partition(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.n_partitions()

    # -- writing ----------------------------------------------------------------------------------

    def write(self, topic: str, partition: int, next_offset: int, detector_state: Mapping[str, Any]) -> int:
        """Queue the snapshot of one input partition; returns its size in bytes.

        The caller must wait for delivery (``producer.flush_step``) before committing offsets.
        """
        key = state_key(topic, partition)
        sp = self.state_partition(key)
        value = encode_value({"version": SNAPSHOT_VERSION, "next_offset": int(next_offset),
                              "detector": detector_state})
        if len(value) <= self.chunk_bytes:
            self.producer.produce(self.topic, value, key.encode(), partition=sp)
            self.bytes_written += len(value)
            return len(value)
        slot = 1 - self._slots.get(key, 1)
        self._slots[key] = slot
        count = 0
        for i, start in enumerate(range(0, len(value), self.chunk_bytes)):
            self.producer.produce(self.topic, value[start:start + self.chunk_bytes], f"{key}#{slot}/{i}".encode(),
                                  partition=sp)
            count += 1
        manifest = orjson.dumps({
            "version": SNAPSHOT_VERSION, "next_offset": int(next_offset),
            "chunks": {"slot": slot, "count": count, "size": len(value),
                       "sha256": hashlib.sha256(value).hexdigest()},
        })
        self.producer.produce(self.topic, manifest, key.encode(), partition=sp)
        self.bytes_written += len(value) + len(manifest)
        return len(value)

    # -- restoring --------------------------------------------------------------------------------

    def _catch_up(self, state_partitions: Iterable[int], wanted_prefixes: tuple[str, ...]) -> None:
        """Read the given state partitions from the remembered position to their current end."""
        parts = sorted(set(state_partitions))
        if not parts:
            return
        reader = self._reader_consumer()
        reader.assign([TopicPartition(self.topic, p, self._positions.get(p, OFFSET_BEGINNING)) for p in parts])
        waiting = set(parts)
        deadline = time.monotonic() + self.restore_timeout
        try:
            while waiting:
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"reading state topic {self.topic!r} partitions {sorted(waiting)} did not reach the end "
                        f"within {self.restore_timeout:g} s (kafka.restore_timeout)"
                    )
                for msg in reader.consume(num_messages=1000, timeout=0.5):
                    err = msg.error()
                    p = int(msg.partition() or 0)
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            waiting.discard(p)
                            self._positions[p] = int(msg.offset() or 0)
                            continue
                        if err.fatal():
                            raise RestoreError(f"state topic {self.topic!r}: {err}")
                        log.warning("state topic read error", extra={"topic": self.topic, "error": str(err)})
                        continue
                    self._positions[p] = int(msg.offset() or 0) + 1
                    raw_key = msg.key()
                    if raw_key is None:
                        continue
                    k = raw_key.decode("utf-8", "replace")
                    if not k.startswith(wanted_prefixes):
                        continue  # another deployment's input topic: not ours to keep in memory
                    value = msg.value()
                    if value is None:  # tombstone: the state was deleted on purpose
                        self._latest.pop(k, None)
                    else:
                        self._latest[k] = value
                    waiting.add(p)  # more may follow; EOF tells the end
        finally:
            reader.unassign()

    def load(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Snapshot]:
        """The newest snapshot of each given input partition that has one."""
        wanted = list(partitions)
        if not wanted:
            return {}
        prefixes = tuple(sorted({f"{t}:" for t, _ in wanted}))
        self._catch_up((self.state_partition(state_key(t, p)) for t, p in wanted), prefixes)
        out: dict[tuple[str, int], Snapshot] = {}
        for topic, partition in wanted:
            snap = self._assemble(topic, partition)
            if snap is not None:
                out[(topic, partition)] = snap
        return out

    def _assemble(self, topic: str, partition: int) -> Snapshot | None:
        key = state_key(topic, partition)
        raw = self._latest.get(key)
        if raw is None:
            return None
        try:
            payload = decode_value(raw)
            slot = 0
            chunks = payload.get("chunks")
            size = len(raw)
            if chunks is not None:
                slot = int(chunks["slot"])
                parts = [self._latest.get(f"{key}#{slot}/{i}") for i in range(int(chunks["count"]))]
                if any(p is None for p in parts):
                    raise ValueError("a chunk is missing")
                blob = b"".join(p for p in parts if p is not None)
                if hashlib.sha256(blob).hexdigest() != chunks["sha256"]:
                    raise ValueError("the chunks do not match the manifest's checksum")
                payload = decode_value(blob)
                size = len(blob)
                self._slots[key] = slot
            if payload.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unsupported snapshot version {payload.get('version')!r}")
            return Snapshot(topic, partition, int(payload["next_offset"]), payload["detector"], size, slot)
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            log.error("unusable state snapshot, starting this partition without state",
                      extra={"topic": topic, "partition": partition, "error": str(exc)})
            return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
