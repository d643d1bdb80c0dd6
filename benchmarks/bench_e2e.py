"""End-to-end throughput: input topic → detector → alerts produced → offsets committed.

Measures, on the same topic in the same run:

1. the *ceiling*: a bare confluent-kafka consumer reading the topic in batches and decoding every
   value with ``orjson.loads`` (what any Python consumer must at least do);
2. the *service*: :class:`streamdetect.kafka.service.Service` from its first message to the moment
   every partition's offset is committed (alerts and dead letters delivered, state checkpointed);

and prints both rates and their ratio (target: the service at >= 50 % of the ceiling). By default
the process is pinned to one CPU (``--cpus``) so the comparison is per core; the broker runs in its
own process.

Usage::

    .venv/bin/python benchmarks/bench_e2e.py                # embedded broker, 20 stores x 7 days
    .venv/bin/python benchmarks/bench_e2e.py --stores 50 --days 7 --bootstrap-servers host:9092
    .venv/bin/python benchmarks/bench_e2e.py --days 28      # 1.8 M events: less of it is start-up

The default run takes a few seconds, of which about a second is start-up and shut-down (each
partition's warm-up fit, the wait for the last checkpoint's tick): a longer stream shows the
steady rate (on 2026-12-01, 16 % of the ceiling over 7 days, 26 % over 28).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition


def produce(bootstrap: str, topic: str, stores: int, days: int, malformed: float) -> dict[int, int]:
    """Produce the scenario; returns the end offset of every partition."""
    from streamdetect.generate import GeneratorConfig, encode_event, iter_events

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "compression.type": "zstd",
                  "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True})
    ends: dict[int, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    scenario = GeneratorConfig(stores=stores, days=days, seed=7, malformed_fraction=malformed)
    for n, event in enumerate(iter_events(scenario), 1):
        key = event["store_id"].encode() if isinstance(event, dict) and isinstance(event.get("store_id"), str) else None
        while True:
            try:
                p.produce(topic, encode_event(event), key, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.1)
        if n % 10_000 == 0:
            p.poll(0)
    p.flush(60)
    return ends


def ceiling(bootstrap: str, topic: str, ends: dict[int, int], batch: int,
            keep: dict[int, list[bytes]] | None = None) -> tuple[int, float]:
    """Consume everything and ``orjson.loads`` each value; returns (events, seconds).

    Each ``consume`` asks for no more than what is left: ``consume(n, timeout)`` waits until it has
    ``n`` messages or the timeout, so a last batch the topic cannot fill would add the whole
    timeout (1 s, most of this measurement on the default input) to the ceiling's time.

    With ``keep``, the values are also collected per partition (after the clock stops mattering:
    appending costs about as much as nothing next to the decode).
    """
    from streamdetect.kafka.clients import FETCH_QUEUE_BACKOFF_MS

    # The service's fetch setting too, so that the ceiling is the best a plain consumer gets.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS})
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    total, n, bad = sum(ends.values()), 0, 0
    started: float | None = None
    loads = orjson.loads
    while n < total:
        msgs = c.consume(min(batch, total - n), 1.0)
        if started is None and msgs:
            started = time.perf_counter()
        for m in msgs:
            if m.error() is not None:
                continue
            n += 1
            value = m.value() or b""
            if keep is not None:
                keep.setdefault(int(m.partition() or 0), []).append(value)
            try:
                loads(value)
            except orjson.JSONDecodeError:
                bad += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return n, elapsed


def core_only(values: dict[int, list[bytes]], batch: int, env: dict[str, str]) -> tuple[int, float, int]:
    """The detector core alone on the same per-partition input, in batches of ``batch``: (events, s, alerts)."""
    from streamdetect.detector import Detector, compile_kernels
    from streamdetect.settings import load_config

    config = load_config(env=env).detector
    compile_kernels()  # as the service does before it joins its group (not timed there either)
    n = alerts = 0
    started = time.perf_counter()
    for vals in values.values():
        det = Detector(config)
        for i in range(0, len(vals), batch):
            alerts += len(det.process(vals[i:i + batch]).alerts)
        n += len(vals)
    return n, time.perf_counter() - started, alerts


def service_run(bootstrap: str, topic: str, ends: dict[int, int], batch: int,
                extra_env: dict[str, str]) -> dict[str, Any]:
    """Run the service until every partition is committed at its end offset."""
    from streamdetect.kafka.service import Service
    from streamdetect.settings import load_config

    suffix = uuid.uuid4().hex[:6]
    env = {"STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "STREAMDETECT_KAFKA__INPUT_TOPICS": topic,
           "STREAMDETECT_KAFKA__GROUP_ID": f"bench-{suffix}", "STREAMDETECT_KAFKA__ALERTS_TOPIC": f"alerts-{suffix}",
           "STREAMDETECT_KAFKA__DLQ_TOPIC": f"dlq-{suffix}", "STREAMDETECT_KAFKA__STATE_TOPIC": f"state-{suffix}",
           "STREAMDETECT_KAFKA__BATCH_SIZE": str(batch), "STREAMDETECT_KAFKA__SESSION_TIMEOUT_MS": "6000",
           "STREAMDETECT_KAFKA__HEARTBEAT_INTERVAL_MS": "1000", "STREAMDETECT_KAFKA__MAX_POLL_INTERVAL_MS": "60000",
           **extra_env}
    svc = Service(load_config(env=env))
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    started: float | None = None
    processed_at: float | None = None
    total = sum(ends.values())
    while True:
        if started is None and svc.totals.events:
            started = time.perf_counter()
        if processed_at is None and svc.totals.events >= total:
            processed_at = time.perf_counter()
        parts = dict(svc.parts)
        if len(parts) == len(ends) and all(ps.committed == ends[p] for (_, p), ps in parts.items()):
            break
        if not thread.is_alive():
            raise SystemExit("the service stopped unexpectedly")
        time.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    svc.request_stop()
    thread.join(60)
    t = svc.totals
    processed = (processed_at or time.perf_counter()) - (started or time.perf_counter())
    return {"events": t.events, "seconds": elapsed, "processed_seconds": processed, "alerts": t.alerts,
            "rejected": t.rejected,
            "windows": t.windows, "checkpoints": t.checkpoints}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", help="use this Kafka instead of the embedded broker")
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--malformed", type=float, default=0.01)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000, help="consume batch size for both measurements")
    ap.add_argument("--cpus", default="0", help="CPU list to pin this process to ('' to not pin)")
    ap.add_argument("--checkpoint-interval", default="1", help="seconds (the service default is 5)")
    args = ap.parse_args(argv)

    from streamdetect.kafka.admin import TopicSpec, ensure_topics
    from streamdetect.kafka.broker import EmbeddedBroker

    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        broker = EmbeddedBroker().start()  # before pinning: the broker must not share our core
        bootstrap = broker.bootstrap_servers
    if args.cpus and hasattr(os, "sched_setaffinity"):
        ours = {int(c) for c in args.cpus.split(",")}
        os.sched_setaffinity(0, ours)
        others = os.sched_getaffinity(0 if broker is None else broker.proc.pid) - ours  # type: ignore[union-attr]
        if broker is not None and others:
            # Left to the scheduler, the broker sometimes shared our core: the same code then
            # measured 130,000 or 172,000 events/s for the ceiling from one run to the next.
            os.sched_setaffinity(broker.proc.pid, others)  # type: ignore[union-attr]
    try:
        topic = f"bench-sales-{uuid.uuid4().hex[:6]}"
        ensure_topics({"bootstrap.servers": bootstrap}, [TopicSpec(topic, args.partitions)])
        t0 = time.perf_counter()
        ends = produce(bootstrap, topic, args.stores, args.days, args.malformed)
        total = sum(ends.values())
        print(f"produced {total:,} events to {args.partitions} partitions in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        values: dict[int, list[bytes]] = {}
        n_raw, s_raw = ceiling(bootstrap, topic, ends, args.batch, values)
        n_core, s_core, core_alerts = core_only(values, args.batch, {})
        values.clear()
        svc = service_run(bootstrap, topic, ends, args.batch,
                          {"STREAMDETECT_KAFKA__CHECKPOINT_INTERVAL": args.checkpoint_interval,
                           "STREAMDETECT_LOG__LEVEL": "WARNING"})
        raw_rate = n_raw / s_raw
        svc_rate = svc["events"] / svc["seconds"]
        print(f"ceiling (consume + orjson.loads): {n_raw:,} events in {s_raw:.2f} s = {raw_rate:,.0f} events/s")
        print(f"service (detect, produce, checkpoint, commit): {svc['events']:,} events in {svc['seconds']:.2f} s = "
              f"{svc_rate:,.0f} events/s; {svc['windows']:,} windows scored, {svc['alerts']:,} alerts, "
              f"{svc['rejected']:,} dead letters, {svc['checkpoints']} checkpoints")
        print(f"   (all events processed after {svc['processed_seconds']:.2f} s = "
              f"{svc['events'] / svc['processed_seconds']:,.0f} events/s; the rest is the last checkpoint)")
        core_rate = n_core / s_core
        print(f"detector core alone (no Kafka), same input and batches: {n_core:,} events in {s_core:.2f} s = "
              f"{core_rate:,.0f} events/s; {core_alerts:,} alerts")
        print(f"ratio: {svc_rate / raw_rate:.0%} of the ceiling (target >= 50%); "
              f"the service runs at {svc_rate / core_rate:.0%} of the detector core alone")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
