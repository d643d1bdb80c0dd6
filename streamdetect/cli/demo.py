"""``streamdetect demo``: the whole pipeline on the embedded broker with a live terminal view."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from streamdetect.cli.run import add_common_options

    p = subparsers.add_parser(
        "demo",
        help="live demo: embedded broker, synthetic sales with anomalies, detector, metrics, terminal view",
        description=(
            "Starts the embedded Kafka-compatible broker (Tansu) unless bootstrap servers are configured, "
            "creates the topics, replays synthetic sales with injected anomalies time-compressed by --speed, "
            "runs the service with its metrics endpoint and shows events/s, lag, windows scored, thresholds "
            "and alerts as they arrive. Ctrl-C (or --duration) ends it cleanly."
        ),
    )
    add_common_options(p)
    d = p.add_argument_group("demo")
    d.add_argument("--speed", type=float, default=1200.0,
                   help="simulated seconds per second (default 1200: a simulated day in 72 s)")
    d.add_argument("--rate", type=float, default=5000.0, help="cap on events per second (default 5000)")
    d.add_argument("--stores", type=int, default=12, help="stores in the scenario (default 12)")
    d.add_argument("--days", type=int, default=14, help="simulated days to generate (default 14)")
    d.add_argument("--seed", type=int, default=0, help="scenario seed")
    d.add_argument("--malformed", type=float, default=0.002, help="share of malformed events (default 0.002)")
    d.add_argument("--warmup", type=int, default=200,
                   help="windows per partition before the model is fitted (default 200; the service default is 5000)")
    d.add_argument("--partitions", type=int, default=4, help="partitions of the demo topics (default 4)")
    d.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: Ctrl-C)")
    d.add_argument("--no-view", action="store_true", help="print a summary every second instead of redrawing")
    d.add_argument("--log-file", type=Path, help="service logs (default: a file in the temp directory)")
    p.set_defaults(handler=run)


def _demo_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from streamdetect.cli.run import overrides_from_args

    o = overrides_from_args(args)
    o["kafka"].update({"topic_partitions": args.partitions, "state_partitions": args.partitions,
                       "create_topics": True, "checkpoint_interval": o["kafka"].get("checkpoint_interval") or 2.0,
                       "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})
    # Alerts within a minute or two: a short warm-up and threshold calibration.
    o["detector"] = {"model": {"warmup": args.warmup},
                     "threshold": {"n_init": max(100, args.warmup), "window": max(2000, args.warmup)}}
    return o


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import logging
    import signal

    from streamdetect.demo import Demo, DemoOptions
    from streamdetect.kafka.admin import ensure_topics, service_topics
    from streamdetect.kafka.broker import EmbeddedBroker
    from streamdetect.kafka.clients import admin_config
    from streamdetect.logging import setup_logging
    from streamdetect.metrics import Health, Metrics, serve
    from streamdetect.settings import load_config

    cfg = load_config(args.config, overrides=_demo_overrides(args))
    if not cfg.kafka.named_input_topics:
        patterns = ", ".join(cfg.kafka.input_topics)
        print(f"streamdetect demo: kafka.input_topics holds only patterns ({patterns}); the demo produces its"
              " sales to a topic by name: give one that a pattern matches beside them (--input-topic NAME)",
              file=sys.stderr)
        return 2
    log_file = args.log_file or Path(tempfile.gettempdir()) / "streamdetect-demo.log"
    log_stream = log_file.open("a", encoding="utf-8")
    setup_logging(cfg.log.level, cfg.log.format, stream=log_stream)
    broker = None
    if not cfg.kafka.bootstrap_list:
        broker = EmbeddedBroker(log_path=log_file.with_suffix(".broker.log")).start()
        cfg = load_config(args.config, overrides=_demo_overrides(args) | {
            "kafka": {**_demo_overrides(args)["kafka"], "bootstrap_servers": broker.bootstrap_servers}})
    server = None
    try:
        ensure_topics(admin_config(cfg.kafka), service_topics(cfg.kafka, include_inputs=True),
                      cfg.kafka.replication_factor)
        metrics, health = Metrics(), Health(max_heartbeat_age=30.0)
        if cfg.metrics.enabled:
            try:
                server = serve(metrics, health, cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:  # the default port is taken: any free one will do for a demo
                print(f"metrics port {cfg.metrics.port} unavailable ({exc.strerror}); using a free one",
                      file=sys.stderr)
                server = serve(metrics, health, cfg.metrics.host, 0)
        url = None
        if server is not None:
            host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
            url = f"http://{host}:{server.port}"
        where = f"embedded broker {broker.bootstrap_servers}" if broker else cfg.kafka.bootstrap_servers
        print(f"streamdetect demo: {where}; metrics {url or 'disabled'}/metrics; logs {log_file}", file=sys.stderr)
        demo = Demo(cfg, DemoOptions(speed=args.speed, rate=args.rate, stores=args.stores, days=args.days,
                                     seed=args.seed, malformed=args.malformed, duration=args.duration,
                                     view=not args.no_view and sys.stdout.isatty()),
                    metrics_url=url, metrics=metrics, health=health)
        # Ctrl-C / SIGTERM: the view loop ends, then everything stops in order (the service checkpoints).
        signal.signal(signal.SIGTERM, _interrupt)
        demo.run()
        logging.getLogger("streamdetect.demo").info("demo finished", extra={"events": demo.counters.produced})
        return 0
    finally:
        if server is not None:
            server.shutdown()
        if broker is not None:
            broker.stop()
        log_stream.close()
