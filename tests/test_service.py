"""The Kafka service against a real Tansu broker on loopback.

Every test produces the same synthetic scenario (4 stores, 6 days, 1 % malformed records, injected
anomalies) into an input topic of its own with 2 partitions, runs the service (in a thread, or as a
``streamdetect run`` subprocess) and compares what comes out with the *reference*: one in-process
:class:`~streamdetect.detector.Detector` per input partition over that partition's valid events, in
the order the topic holds them. The reference is computed once per module (it depends only on the
per-partition contents, which are the same for every test).

What the comparisons establish:

* alerts: the set of ``alert_id`` values (and each alert's key and window) equals the reference's,
  so nothing is lost or invented; duplicates are allowed only where a test says so;
* windows: the final state snapshot of every partition has scored exactly the reference's number of
  windows (the detector's ``windows_scored`` is part of its checkpointed state), so every window was
  scored, once, in the state's lineage;
* dead letters: exactly the records the decoder rejects, each with its reason, source partition and
  offset, and its original bytes and key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamdetect.alerts import Alert, EpisodeResolved, format_time, read_message
from streamdetect.config import DetectorConfig, from_mapping
from streamdetect.detector import Detector
from streamdetect.events import RejectReason, decode_events
from streamdetect.generate import GeneratorConfig, encode_event, iter_events
from streamdetect.kafka.admin import TopicSpec, ensure_topics
from streamdetect.kafka.checkpoint import StateStore
from streamdetect.kafka.clients import producer_config, reader_config
from streamdetect.kafka.producer import OutputProducer
from streamdetect.kafka.service import Service
from streamdetect.settings import AppConfig, load_config

pytestmark = pytest.mark.broker

PARTITIONS = 2
DETECTOR = {"model": {"warmup": 1500, "n_init": 2}, "threshold": {"n_init": 1000, "window": 5000}}
SMALL = from_mapping(DetectorConfig, DETECTOR)
SCENARIO = GeneratorConfig(stores=4, days=6, seed=11, clean_days=2, malformed_fraction=0.01,
                           anomalies_per_store_week=14)
# The reference replays the input without a wall clock: the idle clock (tested on its own below)
# would close the windows after the input's last event once the test has run past the lateness.
FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 7000,
        "checkpoint_interval": 1.0, "idle_after": 0}
TIMEOUT = 120.0


# -- scenario and reference ------------------------------------------------------------------------


def scenario() -> list[tuple[bytes | None, bytes]]:
    """``(key, value)`` of every event, in arrival order (key = store id, none for unparseable records)."""
    out = []
    for event in iter_events(SCENARIO):
        key = event.get("store_id") if isinstance(event, dict) else None
        out.append((key.encode() if isinstance(key, str) else None, encode_event(event)))
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Produce with the default (key-hashing) partitioner; returns each partition's end offset."""
    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for key, value in records:
        p.produce(topic, value, key, on_delivery=delivered)
        p.poll(0)
    assert p.flush(30) == 0
    return ends


@dataclass(frozen=True)
class Expected:
    ends: dict[int, int]
    alerts: dict[str, tuple[Any, ...]]  # alert_id or resolution_id -> _identity of the record
    windows: dict[int, int]  # partition -> windows scored
    rejects: dict[tuple[int, int], str]  # (partition, offset) -> reason
    values: dict[tuple[int, int], tuple[bytes | None, bytes]]  # (partition, offset) -> (key, value)


_REFERENCE: dict[str, Expected] = {}


def read_input(bootstrap: str, topic: str, total: int) -> dict[int, list[Any]]:
    """Every message of the input topic, per partition in offset order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    parts: dict[int, list[Any]] = {p: [] for p in range(PARTITIONS)}
    n, deadline = 0, time.monotonic() + 60
    try:
        while n < total and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is None:
                    parts[int(m.partition() or 0)].append(m)
                    n += 1
    finally:
        c.close()
    assert n == total, f"read {n} of {total} input messages back"
    for msgs in parts.values():
        assert [m.offset() for m in msgs] == list(range(len(msgs)))
    return parts


def reference(bootstrap: str, topic: str, total: int) -> Expected:
    """What the service must produce for this input topic (computed once per distinct content)."""
    parts = read_input(bootstrap, topic, total)
    digest = hashlib.sha256()
    for p in sorted(parts):
        for m in parts[p]:
            digest.update(b"%d:" % p + m.value() + b"\n")
    cached = _REFERENCE.get(digest.hexdigest())
    if cached is not None:
        return cached
    alerts: dict[str, tuple[Any, ...]] = {}
    windows: dict[int, int] = {}
    rejects: dict[tuple[int, int], str] = {}
    values: dict[tuple[int, int], tuple[bytes | None, bytes]] = {}
    for p, msgs in parts.items():
        raw = [m.value() for m in msgs]
        _, rejected = decode_events(raw, SMALL.events)
        bad = {r.index for r in rejected}
        for r in rejected:
            rejects[(p, msgs[r.index].offset())] = str(r.reason)
        for m in msgs:
            values[(p, m.offset())] = (m.key(), m.value())
        # the malformed records are left out here: the service's alerts must not depend on them
        clean = [v for i, v in enumerate(raw) if i not in bad]
        det = Detector(SMALL)
        for i in range(0, len(clean), 5000):
            out = det.process(clean[i:i + 5000])
            assert not out.rejected
            for a in out.messages:
                alerts[_message_id(a)] = _identity(a)
        windows[p] = det.windows_scored
    expected = Expected({p: len(m) for p, m in parts.items()}, alerts, windows, rejects, values)
    # a scenario worth testing: alerts and the ends of their episodes, windows and rejects on every partition
    assert {i[0] for i in expected.alerts.values()} == {"firing", "resolved"}
    assert all(expected.windows.values()) and expected.rejects
    _REFERENCE[digest.hexdigest()] = expected
    return expected


# -- reading the outputs -----------------------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, idle: float = 2.0) -> list[Any]:
    """Every message of an output topic: read until nothing new arrives for ``idle`` seconds."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    out: list[Any] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            msgs = [m for m in c.consume(5000, 0.3) if m.error() is None]
            if msgs:
                out.extend(msgs)
                last = time.monotonic()
    finally:
        c.close()
    return out


def _message_id(m: Alert | EpisodeResolved) -> str:
    return m.alert_id if isinstance(m, Alert) else m.resolution_id


def _identity(m: Alert | EpisodeResolved) -> tuple[Any, ...]:
    """What a record of the alerts stream is about: an alert's key and window, an end's episode."""
    if isinstance(m, Alert):
        return (m.status, tuple(m.key.items()), m.window_start, m.window_end, m.episode_id)
    return (m.status, tuple(m.key.items()), m.episode_start, m.resolved_at, m.episode_id)


def read_alerts(bootstrap: str, topic: str) -> list[Alert | EpisodeResolved]:
    """The alerts stream in the order of each partition (an episode's records share a key, so a partition)."""
    alerts = []
    for m in read_topic(bootstrap, topic):
        orjson.loads(m.value())  # valid JSON
        alert = read_message(m.value())
        assert m.key() == alert.message_key()
        alerts.append(alert)
    return alerts


def check_alerts(alerts: list[Alert | EpisodeResolved], expected: Expected, *, duplicates: bool) -> int:
    """The alerts and episode ends are the reference's (every one, nothing else), each end after its
    episode's alerts; returns the number of duplicates."""
    seen = {_message_id(a): _identity(a) for a in alerts}
    missing = set(expected.alerts) - set(seen)
    extra = set(seen) - set(expected.alerts)
    assert not missing, (f"{len(missing)} of {len(expected.alerts)} alerts lost ({len(extra)} unexpected): "
                         f"{sorted(expected.alerts[i] for i in missing)}")
    assert not extra, f"{len(extra)} unexpected alerts"
    assert seen == expected.alerts  # same key and window for every id
    counts = Counter(_message_id(a) for a in alerts)
    dups = sum(n - 1 for n in counts.values())
    if not duplicates:
        assert dups == 0, f"{dups} duplicate alerts"
    for a in alerts:  # a duplicate is the same alert again
        assert _identity(a) == expected.alerts[_message_id(a)]
    first_seen: dict[str, int] = {}
    for i, a in enumerate(alerts):
        first_seen.setdefault(_message_id(a), i)
    last_alert: dict[str, int] = {}
    for a in alerts:
        if isinstance(a, Alert):
            last_alert[a.episode_id] = max(last_alert.get(a.episode_id, -1), first_seen[a.alert_id])
    ends = [a for a in alerts if isinstance(a, EpisodeResolved)]
    assert ends and all(first_seen[e.resolution_id] > last_alert[e.episode_id] for e in ends)
    return dups


def final_snapshots(cfg: AppConfig) -> dict[int, Any]:
    k = cfg.kafka
    producer = OutputProducer(producer_config(k))
    store = StateStore(k.state_topic, producer, reader_config(k), max_message_bytes=k.max_message_bytes,
                       restore_timeout=30)
    try:
        snaps = store.load([(k.input_topics[0], p) for p in range(PARTITIONS)])
    finally:
        store.close()
    return {p: s for (_, p), s in snaps.items()}


def check_windows(cfg: AppConfig, expected: Expected) -> None:
    """The last checkpoint of every partition is at its end and has scored every window exactly once."""
    snaps = final_snapshots(cfg)
    assert {p: s.next_offset for p, s in snaps.items()} == expected.ends
    assert {p: s.detector["windows_scored"] for p, s in snaps.items()} == expected.windows


def committed(bootstrap: str, group: str, topic: str, consumer: Consumer | None = None) -> dict[int, int]:
    """The group's committed offsets of ``topic``, asked through ``consumer`` (of that group) or a new one."""
    c = consumer or Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        if consumer is None:
            c.close()
    return {tp.partition: tp.offset for tp in tps}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT,
              alive: Callable[[], None] | None = None, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None:
            alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


# -- running the service -----------------------------------------------------------------------------


@dataclass
class Names:
    input: str
    alerts: str
    dlq: str
    state: str
    group: str


def names(unique: str) -> Names:
    return Names(f"in-{unique}", f"alerts-{unique}", f"dlq-{unique}", f"state-{unique}", f"g-{unique}")


def app_config(bootstrap: str, n: Names, **kafka: Any) -> AppConfig:
    return load_config(env={}, overrides={
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [n.input], "alerts_topic": n.alerts,
                  "dlq_topic": n.dlq, "state_topic": n.state, "group_id": n.group, **FAST, **kafka},
        "detector": DETECTOR,
        "metrics": {"enabled": False},
    })


class Running:
    """A :class:`Service` in a thread of this process."""

    def __init__(self, cfg: AppConfig) -> None:
        self.service = Service(cfg)
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.service.run()

    def alive(self) -> None:
        assert self.thread.is_alive(), f"the service stopped (rc {self.rc})"

    def partitions(self) -> set[int]:
        return {p for _, p in list(self.service.parts)}

    def committed(self) -> dict[int, int | None]:
        return {p: ps.committed for (_, p), ps in list(self.service.parts.items())}

    def stop(self) -> int:
        self.service.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the service did not stop"
        assert self.rc == 0
        return self.rc


@pytest.fixture
def input_topic(bootstrap: str, unique: str) -> Iterator[Names]:
    n = names(unique)
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(n.input, PARTITIONS)])
    yield n


# -- the tests -----------------------------------------------------------------------------------------


def test_end_to_end_alerts_dead_letters_and_state(bootstrap: str, input_topic: Names) -> None:
    """Generated events in (1 % malformed): the reference's alerts out, every malformed record in the DLQ."""
    n = input_topic
    records = scenario()
    ends = produce(bootstrap, n.input, records)
    expected = reference(bootstrap, n.input, len(records))
    assert ends == expected.ends
    cfg = app_config(bootstrap, n)
    svc = Running(cfg)
    try:
        wait_for(lambda: svc.committed() == expected.ends, "all offsets committed", alive=svc.alive)
    finally:
        svc.stop()
    t = svc.service.totals
    assert t.events == len(records) and t.rejected == len(expected.rejects)
    check_alerts(read_alerts(bootstrap, n.alerts), expected, duplicates=False)
    check_windows(cfg, expected)
    assert committed(bootstrap, n.group, n.input) == expected.ends

    dead = read_topic(bootstrap, n.dlq)
    got: dict[tuple[int, int], str] = {}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        assert h["source.topic"] == n.input and h["error.detail"]
        where = (int(h["source.partition"]), int(h["source.offset"]))
        assert where not in got, f"dead letter {where} twice"
        got[where] = h["error.reason"]
        assert (m.key(), m.value()) == expected.values[where]  # the original record, untouched
        assert int(h["source.timestamp"]) > 0
    assert got == expected.rejects
    assert set(got.values()) <= {r.value for r in RejectReason} and len(set(got.values())) >= 3


def test_exactly_once_mode_runs_its_transactions_through(bootstrap: str, input_topic: Names, unique: str) -> None:
    """The opt-in exactly-once mode on a broker that runs transactions (Tansu accepts them; it does
    not isolate aborted records, so what an abort undoes is not tested here): every checkpoint
    interval's alerts, dead letters, snapshots and offsets go through one committed transaction,
    and what comes out is the reference's, once."""
    n = input_topic
    records = scenario()
    ends = produce(bootstrap, n.input, records)
    expected = reference(bootstrap, n.input, len(records))
    cfg = app_config(bootstrap, n, processing="exactly_once", transactional_id=f"tx-{unique}")
    svc = Running(cfg)
    try:
        wait_for(lambda: svc.committed() == ends, "all offsets committed", alive=svc.alive)
    finally:
        svc.stop()
    assert svc.service.exactly_once and svc.service.totals.checkpoints >= 1
    assert committed(bootstrap, n.group, n.input) == ends  # sent with the transactions
    check_alerts(read_alerts(bootstrap, n.alerts), expected, duplicates=False)
    check_windows(cfg, expected)
    assert len(read_topic(bootstrap, n.dlq)) == len(expected.rejects)


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "streamdetect"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from streamdetect.cli import main; sys.exit(main())"]


def _write_config(path: Path, bootstrap: str, n: Names, checkpoint_interval: float = 1.0) -> None:
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
input_topics = ["{n.input}"]
alerts_topic = "{n.alerts}"
dlq_topic = "{n.dlq}"
state_topic = "{n.state}"
group_id = "{n.group}"
session_timeout_ms = 6000
heartbeat_interval_ms = 1000
max_poll_interval_ms = 7000
checkpoint_interval = {checkpoint_interval}
idle_after = 0

[detector.model]
warmup = 1500
n_init = 2

[detector.threshold]
n_init = 1000
window = 5000

[metrics]
enabled = false
""")


def test_kill9_then_restart_loses_nothing(bootstrap: str, input_topic: Names, tmp_path: Path) -> None:
    """``streamdetect run`` killed with SIGKILL at a random point, then restarted: every window scored,
    every alert delivered (duplicates only as the same alert again); SIGTERM then stops it cleanly."""
    n = input_topic
    records = scenario()
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(v + b"\n" for _, v in records))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMDETECT_")}
    env["STREAMDETECT_CONFIG"] = str(tmp_path / "streamdetect.toml")
    # Offsets are committed at each checkpoint: frequent ones give the kill below points to land
    # between (the service reads this input in about a second once its kernels are compiled).
    _write_config(tmp_path / "streamdetect.toml", bootstrap, n, checkpoint_interval=0.1)
    # the input goes in through `streamdetect produce`
    result = subprocess.run([*_cli(), "produce", str(events), "--topic", n.input], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    expected = reference(bootstrap, n.input, len(records))
    cfg = load_config(tmp_path / "streamdetect.toml", env={})

    def start(log: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("wb") as out:
            return subprocess.Popen([*_cli(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    first = start("first.log")
    try:
        # A random point of the work, not of the clock: how long the input takes depends on the machine.
        share = random.uniform(0.02, 0.5)
        # One consumer asks throughout: a new one per poll would take longer than the service's progress.
        watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": n.group, "enable.auto.commit": False})
        try:

            def done() -> int:
                return sum(max(o, 0) for o in committed(bootstrap, n.group, n.input, watcher).values())

            wait_for(lambda: done() >= share * sum(expected.ends.values()), f"{share:.0%} of the input committed",
                     alive=lambda: _alive(first, tmp_path / "first.log"), every=0.02)
            first.send_signal(signal.SIGKILL)
        finally:
            watcher.close()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = committed(bootstrap, n.group, n.input)
    assert at_kill != expected.ends, "the service finished before the kill: nothing was tested"

    second = start("second.log")
    try:
        wait_for(lambda: committed(bootstrap, n.group, n.input) == expected.ends, "all offsets committed",
                 alive=lambda: _alive(second, tmp_path / "second.log"))
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    dups = check_alerts(read_alerts(bootstrap, n.alerts), expected, duplicates=True)
    check_windows(cfg, expected)
    dead = read_topic(bootstrap, n.dlq)
    assert {(int(dict(m.headers())["source.partition"]), int(dict(m.headers())["source.offset"]))
            for m in dead} == set(expected.rejects)
    print(f"killed at committed offsets {at_kill} of {expected.ends}; {dups} duplicate alerts")
    logs = (tmp_path / "second.log").read_text().splitlines()
    assert all(line.startswith("{") for line in logs if line.strip())  # structured JSON logs
    assert any('"restored":true' in line.replace(" ", "") for line in logs)


def _alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.poll() is None, f"streamdetect run exited with {proc.returncode}:\n{log.read_text()[-3000:]}"


def test_two_instances_share_partitions_and_hand_over_state(bootstrap: str, input_topic: Names) -> None:
    """Two members split the partitions; stopping one moves its partition, with its state, to the other."""
    n = input_topic
    records = scenario()
    half = len(records) * 2 // 3
    first_ends = produce(bootstrap, n.input, records[:half])
    cfg = app_config(bootstrap, n)
    a, b = Running(cfg), Running(cfg)
    try:
        def split() -> bool:
            pa, pb = a.partitions(), b.partitions()
            return len(pa) == 1 and len(pb) == 1 and pa | pb == {0, 1}

        def both_alive() -> None:
            a.alive()
            b.alive()

        wait_for(split, "one partition each", alive=both_alive)
        wait_for(lambda: {**a.committed(), **b.committed()} == first_ends, "first part committed",
                 alive=both_alive)
        moving = b.partitions().pop()
        b_det = b.service.parts[(n.input, moving)].detector
        assert b_det.stats().warmed_up
        b_windows = b_det.windows_scored
        b.stop()
        wait_for(lambda: a.partitions() == {0, 1}, "the partition to move", alive=a.alive)
        moved = a.service.parts[(n.input, moving)]
        # restored from B's last checkpoint: warmed up and exactly where B stopped, no new warm-up
        assert moved.restored and moved.detector.stats().warmed_up
        assert moved.detector.windows_scored == b_windows
        assert moved.next_offset == first_ends[moving]
        rest_ends = produce(bootstrap, n.input, records[half:])
        wait_for(lambda: a.committed() == rest_ends, "everything committed", alive=a.alive)
    finally:
        for r in (a, b):
            if r.thread.is_alive():
                r.stop()
    expected = reference(bootstrap, n.input, len(records))
    check_alerts(read_alerts(bootstrap, n.alerts), expected, duplicates=False)
    check_windows(cfg, expected)
    assert a.service.totals.alerts > 0 and b.service.totals.alerts > 0


def test_frozen_broker_is_ridden_out(bootstrap: str, tansu: Any, input_topic: Names) -> None:
    """The broker stops answering for 10 s (SIGSTOP) mid-stream and comes back: nothing is lost."""
    n = input_topic
    records = scenario()
    produce(bootstrap, n.input, records)
    expected = reference(bootstrap, n.input, len(records))
    cfg = app_config(bootstrap, n)
    svc = Running(cfg)
    try:
        wait_for(lambda: any((o or 0) > 0 for o in svc.committed().values()), "a first commit", alive=svc.alive)
        before = svc.service.totals.events
        tansu.freeze()
        try:
            time.sleep(10)
            svc.alive()
        finally:
            tansu.resume()
        assert before < len(records), "the service finished before the freeze: nothing was tested"
        wait_for(lambda: committed(bootstrap, n.group, n.input) == expected.ends, "all offsets committed",
                 alive=svc.alive)
        svc.alive()
        assert svc.service.health.live()[0]
    finally:
        if svc.thread.is_alive():
            svc.stop()
    check_alerts(read_alerts(bootstrap, n.alerts), expected, duplicates=True)
    check_windows(cfg, expected)


def test_a_delivery_failure_never_commits(bootstrap: str, input_topic: Names) -> None:
    """Dead letters that cannot be delivered (their topic does not exist and the broker does not
    create it) stop the service with a fatal error, and not one offset is committed: the consumer,
    the alerts and the state topic all work, so a service that committed regardless of its
    deliveries would be caught here."""
    n = input_topic
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(n.alerts, 1), TopicSpec(n.state, 1)])
    produce(bootstrap, n.input, scenario())  # 1 % malformed: dead letters from the first batch on
    cfg = app_config(bootstrap, n, create_topics=False, delivery_retries=1,
                     producer={"message.timeout.ms": "2000", "allow.auto.create.topics": "false"})
    svc = Running(cfg)
    svc.thread.join(TIMEOUT)
    try:
        offsets = committed(bootstrap, n.group, n.input)
        assert all(offset < 0 for offset in offsets.values()), f"committed {offsets} with undelivered outputs"
        assert not svc.thread.is_alive(), "the service kept running although its dead letters were not delivered"
        assert svc.rc == 1
        assert svc.service.totals.events > 0 and svc.service.totals.rejected > 0  # it did process input
        assert svc.service.producer.failures >= 1
    finally:
        if svc.thread.is_alive():
            svc.service.request_stop()
            svc.thread.join(60)


def test_an_idle_partition_keeps_time_and_sees_its_only_store_stop(bootstrap: str, unique: str) -> None:
    """A store alone on its partition stops selling. No event comes to move event time on, yet
    once the partition has been quiet for `kafka.idle_after` (1 s here) its clock runs at
    wall-clock pace: the store's zero windows close and alert, while the event-time delay metric
    still shows the newest real event. With ``kafka.idle_after = 0``, nothing after the last
    event is ever scored."""
    n = names(unique)
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(n.input, 1)])
    rng = np.random.default_rng(1)
    t0 = 1_767_571_200_000  # 2026-01-05
    ts = np.sort(rng.uniform(0, 900_000, 9000)).astype(np.int64) + t0  # 15 minutes, 10 sales a second
    produce(bootstrap, n.input, [(b"s1", orjson.dumps({"ts": int(t), "store_id": "s1", "amount": 20.0}))
                                 for t in ts])
    last = int(ts[-1])
    detector = {"windows": {"size": 1, "allowed_lateness": 1}, "model": {"warmup": 300},
                "threshold": {"n_init": 200}}

    def run(idle_after: float, group: str) -> tuple[list[Alert], Service]:
        cfg = load_config(env={}, overrides={
            "kafka": {"bootstrap_servers": bootstrap, "input_topics": [n.input], "alerts_topic": n.alerts,
                      "dlq_topic": n.dlq, "state_topic": n.state, "group_id": group,
                      **{**FAST, "idle_after": idle_after}},
            "detector": detector, "metrics": {"enabled": False}})
        svc = Running(cfg)
        try:
            wait_for(lambda: svc.committed() == {0: len(ts)}, "all offsets committed", alive=svc.alive)
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:  # several times the lateness and the window, of quiet
                svc.alive()
                time.sleep(0.2)
            stats = next(iter(svc.service.parts.values())).detector.stats()
            assert stats.newest_event_ms == last
            newest = svc.service.metrics.value("streamdetect_last_event_timestamp_seconds")
            assert newest == pytest.approx(last / 1000.0)  # the newest event, not the running clock
        finally:
            svc.stop()
        after_last = format_time(last + 1000)
        alerts = [a for a in read_alerts(bootstrap, n.alerts) if isinstance(a, Alert) and a.window_start >= after_last]
        return alerts, svc.service

    quiet, _ = run(0, n.group + "-off")
    assert quiet == []
    stopped, _ = run(1.0, n.group + "-on")
    assert len(stopped) >= 3, "the store that stopped selling was not seen"
    assert all(a.features["count"] == 0.0 for a in stopped)


def test_a_pattern_subscription_reads_every_topic_it_matches(bootstrap: str, unique: str) -> None:
    """An input topic that starts with '^' is a regular expression (librdkafka's subscription to a
    pattern): every topic it matches is consumed and committed, events and lag are counted under
    the real topics' names, and the pattern itself labels no series."""
    n = names(unique)
    topics = [f"{n.input}-eu", f"{n.input}-us"]
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(t, 1) for t in topics])
    t0 = 1_767_571_200_000  # 2026-01-05
    for i, topic in enumerate(topics):
        produce(bootstrap, topic, [(f"s{i}".encode(), orjson.dumps({"ts": t0 + k * 150, "store_id": f"s{i}",
                                                                     "amount": 12.5})) for k in range(2000)])
    pattern = f"^{re.escape(n.input)}-(eu|us)$"
    cfg = load_config(env={}, overrides={
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [pattern], "alerts_topic": n.alerts,
                  "dlq_topic": n.dlq, "state_topic": n.state, "group_id": n.group, **FAST,
                  "statistics_interval_ms": 200},
        "detector": DETECTOR, "metrics": {"enabled": False}})
    svc = Running(cfg)
    try:
        wait_for(lambda: {t: ps.committed for (t, _), ps in list(svc.service.parts.items())}
                 == dict.fromkeys(topics, 2000), "both topics committed", alive=svc.alive)
        metrics = svc.service.metrics
        wait_for(lambda: all(metrics.value("streamdetect_consumer_lag_messages", topic=t, partition="0") == 0
                             for t in topics), "the lag of both topics", alive=svc.alive)
        for topic in topics:
            assert metrics.value("streamdetect_events_consumed_total", topic=topic) == 2000
        exposition = metrics.exposition().decode()
        assert pattern not in exposition and "(eu|us)" not in exposition
    finally:
        svc.stop()


def test_keys_too_sparse_for_their_windows_are_reported_once(
    bootstrap: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Keyed by store and SKU, most keys sell a few times an hour: nearly every minute window is
    empty and the mixture cannot judge them. The service says so once, with what to change."""
    n = names(unique)
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(n.input, 1)])
    rng = np.random.default_rng(2)
    t0 = 1_767_571_200_000  # 2026-01-05
    events = [
        (f"sku-{k}".encode(), orjson.dumps({"ts": int(t), "store_id": "s1", "sku": f"sku-{k}", "amount": 9.5}))
        for k in range(100) for t in np.sort(rng.uniform(0, 2 * 3_600_000, 4)) + t0
    ]
    events.sort(key=lambda kv: orjson.loads(kv[1])["ts"])
    produce(bootstrap, n.input, events)
    cfg = load_config(env={}, overrides={
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [n.input], "alerts_topic": n.alerts,
                  "dlq_topic": n.dlq, "state_topic": n.state, "group_id": n.group, **FAST},
        "detector": {"events": {"key_fields": ["store_id", "sku"]}}, "metrics": {"enabled": False}})
    with caplog.at_level(logging.WARNING, logger="streamdetect"):
        svc = Running(cfg)
        try:
            wait_for(lambda: svc.committed() == {0: len(events)}, "all offsets committed", alive=svc.alive)
            stats = next(iter(svc.service.parts.values())).detector.stats()
        finally:
            svc.stop()
    assert stats.windows_closed >= 5_000 and stats.windows_empty > 0.9 * stats.windows_closed
    advice = [r.getMessage() for r in caplog.records if "too rarely" in r.getMessage()]
    assert len(advice) == 1, advice
    assert "windows.size" in advice[0] and "events.key_fields" in advice[0]


def _commit_a_backlog(bootstrap: str, unique: str, count: int, timeout: float = TIMEOUT,
                      **kafka: Any) -> tuple[Running, float]:
    """``count`` sales of one store on a one-partition topic, then the service (``kafka`` settings
    over FAST): the stopped service and the seconds from its first batch to every offset committed."""
    n = names(unique)
    ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(n.input, 1)])
    t0 = 1_767_571_200_000  # 2026-01-05
    events = [(b"s1", orjson.dumps({"ts": t0 + 200 * i, "store_id": "s1", "amount": 20.0})) for i in range(count)]
    produce(bootstrap, n.input, events)
    svc = Running(app_config(bootstrap, n, **kafka))
    try:
        wait_for(lambda: svc.service.totals.events > 0, "the first batch", alive=svc.alive, every=0.01)
        first = time.monotonic()
        wait_for(lambda: svc.committed() == {0: count}, "all offsets committed", alive=svc.alive,
                 timeout=timeout, every=0.01)
        took = time.monotonic() - first
    finally:
        svc.stop()
    return svc, took


def test_the_end_of_a_backlog_is_processed_and_committed_without_waiting_out_poll_timeout(
    bootstrap: str, unique: str
) -> None:
    """3,000 events for batches of 2,000 and a `poll_timeout` of 8 s: the last 1,000 are already
    fetched when the first batch is done, so they are processed at once (not after waiting 8 s for
    a batch that cannot fill), and the commit follows at the next checkpoint (1 s), not at the end
    of an idle wait."""
    svc, took = _commit_a_backlog(bootstrap, unique, 3000, max_poll_interval_ms=20000, batch_size=2000,
                                  poll_timeout=8.0)
    assert svc.service.totals.events == 3000
    assert took < 4.0, f"the last 1000 events were committed {took:.1f} s after the first batch"


def test_a_backlog_read_to_its_end_is_committed_before_the_checkpoint_tick(bootstrap: str, unique: str) -> None:
    """A `checkpoint_interval` of 60 s and a backlog of 5,000 events in batches of 2,000: once the
    service has read it to its end (full batches, then a short one) it checkpoints and commits at
    once, so the group's lag reads 0, rather than a minute later at the tick."""
    _, took = _commit_a_backlog(bootstrap, unique, 5000, timeout=30.0, checkpoint_interval=60.0, batch_size=2000)
    assert took < 15.0, f"committed {took:.1f} s after the first batch (checkpoint_interval 60 s)"
