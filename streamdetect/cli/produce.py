"""``streamdetect produce``: send a JSONL file of events to a Kafka topic."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence

__all__ = ["event_key", "produce_lines", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "produce",
        help="send a JSONL file of events to Kafka (keyed by the event's key fields)",
        description=(
            "Sends one message per line. The message key is the event's key field values joined with "
            "'|' (default key field store_id), so a key's events stay in one partition; lines that are "
            "not valid JSON are sent anyway, with no key (the service routes them to the dead-letter topic)."
        ),
    )
    p.add_argument("input", help="JSONL file (.jsonl or .jsonl.gz; '-' for stdin)")
    p.add_argument("--topic", default=None, help="target topic (default: the first input topic, sales)")
    p.add_argument("--bootstrap-servers", help="Kafka brokers (default: from config/env)")
    p.add_argument("--config", help="TOML config file (for [kafka] connection settings)")
    p.add_argument("--key", help="comma-separated key fields (default: [detector.events] key_fields)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default: as fast as possible)")
    p.set_defaults(handler=run)


def event_key(line: bytes, key_fields: Sequence[str]) -> bytes | None:
    """``b"v1|v2"`` from the event's key fields; ``None`` for lines that are not a JSON object.

    >>> event_key(b'{"store_id": "s1", "x": 1}', ["store_id"]), event_key(b'oops', ["store_id"])
    (b's1', None)
    >>> event_key(b'{"payload": {"store_id": 7}}', ["payload.store_id"])
    b'7'
    """
    import orjson

    from streamdetect.events import field_value

    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    values = [field_value(event, f) for f in key_fields]
    return "|".join("" if v is None else str(v) for v in values).encode()


def produce_lines(producer: object, topic: str, lines: Iterable[bytes], key_fields: Sequence[str],
                  rate: float = 0.0) -> int:
    """Produce every line (paced at ``rate`` per second when > 0); returns the count."""
    from streamdetect.kafka.producer import OutputProducer

    assert isinstance(producer, OutputProducer)
    started = time.monotonic()
    n = 0
    for line in lines:
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        producer.produce(topic, line, event_key(line, key_fields))
        n += 1
        if rate > 0 and n % max(1, int(rate / 50)) == 0:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if n % 10_000 == 0:
            producer.poll(0)
    return n


def _lines(path: str) -> Iterable[bytes]:
    from streamdetect.sources import iter_jsonl_chunks

    for chunk in iter_jsonl_chunks(path, 10_000):
        yield from chunk


def run(args: argparse.Namespace) -> int:
    from streamdetect.kafka.clients import producer_config
    from streamdetect.kafka.producer import OutputProducer
    from streamdetect.settings import is_topic_pattern, load_config

    cfg = load_config(args.config, overrides={"kafka": {"bootstrap_servers": args.bootstrap_servers}})
    cfg.require_bootstrap()
    topic = args.topic or cfg.kafka.input_topics[0]
    if is_topic_pattern(topic):
        print(f"streamdetect produce: kafka.input_topics[0] is a pattern ({topic}); name the topic with --topic",
              file=sys.stderr)
        return 2
    key_fields = args.key.split(",") if args.key else list(cfg.detector.events.key_fields)
    producer = OutputProducer(producer_config(cfg.kafka), delivery_retries=cfg.kafka.delivery_retries)
    started = time.monotonic()
    n = produce_lines(producer, topic, _lines(args.input), key_fields, args.rate)
    if not producer.flush(60.0):
        print(f"streamdetect produce: {len(producer)} messages not delivered", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"produced {n:,} events to {topic} in {elapsed:.1f} s ({n / max(elapsed, 1e-9):,.0f}/s)",
          file=sys.stderr)
    return 0
