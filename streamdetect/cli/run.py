"""``streamdetect run``: the Kafka service (consume, detect, produce alerts, checkpoint, commit)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_common_options", "overrides_from_args", "register", "run"]


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``run``, ``demo`` and ``config show``; each overrides env and file."""
    p.add_argument("--config", type=Path, help="TOML config file (default: $STREAMDETECT_CONFIG)")
    g = p.add_argument_group("kafka (override the config file and STREAMDETECT_* variables)")
    g.add_argument("--bootstrap-servers", help="Kafka brokers, host:port[,host:port]")
    g.add_argument("--group", dest="group_id", help="consumer group id (default streamdetect)")
    g.add_argument("--input-topic", dest="input_topics", action="append",
                   help="input topic (repeatable; default sales)")
    g.add_argument("--alerts-topic", help="alerts topic (default sales-anomalies)")
    g.add_argument("--dlq-topic", help="dead-letter topic (default sales-dlq)")
    g.add_argument("--state-topic", help="detector state topic (default streamdetect-state)")
    g.add_argument("--checkpoint-interval", type=float, help="seconds between checkpoints (default 5)")
    g.add_argument("--exactly-once", action="store_const", const="exactly_once", dest="processing",
                   help="transactional outputs and offsets (needs Apache Kafka)")
    m = p.add_argument_group("metrics and logs")
    m.add_argument("--metrics-port", type=int, help="port of /metrics, /healthz, /readyz (default 9108, 0: any)")
    m.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    m.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    m.add_argument("--log-format", choices=("json", "text"), help="log format (default json)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as a nested settings mapping (``None`` = not given)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    return {
        "kafka": {
            "bootstrap_servers": get("bootstrap_servers"),
            "group_id": get("group_id"),
            "input_topics": get("input_topics"),
            "alerts_topic": get("alerts_topic"),
            "dlq_topic": get("dlq_topic"),
            "state_topic": get("state_topic"),
            "checkpoint_interval": get("checkpoint_interval"),
            "processing": get("processing"),
        },
        "metrics": {"port": get("metrics_port"), "enabled": False if get("no_metrics") else None},
        "log": {"level": get("log_level"), "format": get("log_format")},
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the detector service on Kafka (consumer group, alerts, dead letters, checkpoints)",
        description=(
            "Consumes sales events from the input topic(s) in a consumer group, runs one detector per "
            "partition, produces alerts and dead letters, checkpoints detector state to the state topic "
            "and commits offsets (at-least-once). Stops gracefully on SIGTERM/SIGINT. Configuration: "
            "flags > STREAMDETECT_* environment > --config TOML > defaults (see `streamdetect config show`)."
        ),
    )
    add_common_options(p)
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop gracefully after this many seconds (default: run until SIGTERM/SIGINT)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from streamdetect.logging import setup_logging
    from streamdetect.settings import load_config

    cfg = load_config(args.config, overrides=overrides_from_args(args))
    cfg.require_bootstrap()
    setup_logging(cfg.log.level, cfg.log.format)
    from streamdetect.kafka.service import Service
    from streamdetect.metrics import Health, Metrics, serve

    metrics = Metrics()
    health = Health(max_heartbeat_age=max(10.0, cfg.kafka.max_poll_interval_ms / 1000.0))
    server = serve(metrics, health, cfg.metrics.host, cfg.metrics.port) if cfg.metrics.enabled else None
    if server is not None:
        logging.getLogger("streamdetect.cli").info("metrics endpoint", extra={"url": f"{server.url}/metrics"})
    service = Service(cfg, metrics=metrics, health=health)
    service.install_signal_handlers()
    timer = None
    if getattr(args, "duration", 0.0) and args.duration > 0:
        import threading

        timer = threading.Timer(args.duration, service.request_stop)
        timer.daemon = True
        timer.start()
    try:
        return service.run()
    finally:
        if timer is not None:
            timer.cancel()
        if server is not None:
            server.shutdown()
