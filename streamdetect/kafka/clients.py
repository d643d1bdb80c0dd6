"""librdkafka configurations built from :class:`~streamdetect.settings.KafkaConfig`.

Order of precedence inside one client configuration: streamdetect's defaults, then the typed
security shortcuts (``security_protocol``, ``sasl_*``, ``ssl_ca_location``), then the pass-through
tables ``[kafka.common]`` and ``[kafka.consumer]`` / ``[kafka.producer]`` (so an operator can override
anything), then the callbacks, which cannot be set from a file.

>>> from streamdetect.settings import KafkaConfig
>>> cfg = KafkaConfig(bootstrap_servers="b:9092", sasl_mechanism="PLAIN", sasl_username="u",
...                   sasl_password="p", consumer={"fetch.min.bytes": "1"})
>>> c = consumer_config(cfg)
>>> c["enable.auto.commit"], c["partition.assignment.strategy"], c["fetch.min.bytes"], c["sasl.username"]
(False, 'cooperative-sticky', '1', 'u')
>>> redacted_client_config(c)["sasl.password"]
'***'
>>> producer_config(cfg)["enable.idempotence"]
True
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from streamdetect.logging import LIBRDKAFKA_LOGGER
from streamdetect.settings import REDACTED, KafkaConfig, is_secret

__all__ = [
    "admin_config",
    "common_config",
    "consumer_config",
    "producer_config",
    "reader_config",
    "redacted_client_config",
    "transactional_id",
]


FETCH_QUEUE_BACKOFF_MS = 50


def common_config(cfg: KafkaConfig, *, log_debug: str | None = None) -> dict[str, Any]:
    """Settings shared by every client: brokers, security, pass-through ``[kafka.common]``."""
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap_servers,
        "client.id": f"streamdetect-{socket.gethostname()}",
    }
    if cfg.security_protocol:
        conf["security.protocol"] = cfg.security_protocol
    if cfg.sasl_mechanism:
        conf["sasl.mechanism"] = cfg.sasl_mechanism
    if cfg.sasl_username is not None:
        conf["sasl.username"] = cfg.sasl_username
    if cfg.sasl_password is not None:
        conf["sasl.password"] = cfg.sasl_password
    if cfg.ssl_ca_location:
        conf["ssl.ca.location"] = cfg.ssl_ca_location
    if log_debug:
        conf["debug"] = log_debug
    conf.update(cfg.common)
    return conf


def _with_logger(conf: dict[str, Any]) -> dict[str, Any]:
    # librdkafka's logs then arrive through our JSON handler (served on poll/consume/flush).
    conf["logger"] = logging.getLogger(LIBRDKAFKA_LOGGER)
    return conf


def consumer_config(
    cfg: KafkaConfig,
    *,
    stats_cb: Callable[[str], None] | None = None,
    error_cb: Callable[[Any], None] | None = None,
    log_debug: str | None = None,
) -> dict[str, Any]:
    """The group consumer of the input topics: manual commits, cooperative-sticky assignment."""
    conf = common_config(cfg, log_debug=log_debug)
    conf.update({
        "group.id": cfg.group_id,
        "enable.auto.commit": False,
        # offsets are committed explicitly by the checkpoint, never stored implicitly
        "enable.auto.offset.store": False,
        "auto.offset.reset": cfg.auto_offset_reset,
        "session.timeout.ms": cfg.session_timeout_ms,
        "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
        "max.poll.interval.ms": cfg.max_poll_interval_ms,
        "statistics.interval.ms": cfg.statistics_interval_ms,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        # Once a partition's prefetched queue is over `queued.min.messages`, librdkafka waits this
        # long before it fetches that partition again (default 1 s, librdkafka#2879): a service that
        # drains a backlog faster than that sat idle for up to a second each time.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    })
    if cfg.group_protocol == "consumer":
        # KIP-848: the assignor is chosen by the broker; the classic session settings do not apply.
        conf["group.protocol"] = "consumer"
        for key in ("session.timeout.ms", "heartbeat.interval.ms"):
            conf.pop(key)
    else:
        conf["partition.assignment.strategy"] = "cooperative-sticky"
    if cfg.group_instance_id:
        conf["group.instance.id"] = cfg.group_instance_id
    conf.update(cfg.consumer)
    if stats_cb is not None and int(conf.get("statistics.interval.ms", 0) or 0) > 0:
        conf["stats_cb"] = stats_cb
    else:
        conf.pop("statistics.interval.ms", None)
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return _with_logger(conf)


def transactional_id(cfg: KafkaConfig) -> str:
    """A stable transactional id per instance: configured, or ``{group}-{hostname}``."""
    return cfg.transactional_id or f"{cfg.group_id}-{socket.gethostname()}"


def producer_config(
    cfg: KafkaConfig,
    *,
    error_cb: Callable[[Any], None] | None = None,
    log_debug: str | None = None,
) -> dict[str, Any]:
    """The output producer (alerts, dead letters, state): idempotent, zstd, bounded queue."""
    conf = common_config(cfg, log_debug=log_debug)
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",
        "linger.ms": cfg.linger_ms,
        "message.max.bytes": cfg.max_message_bytes,
        # A checkpoint is forced at kafka.max_pending outputs, so the local queue never fills in
        # normal operation; BufferError is still handled by polling and retrying.
        "queue.buffering.max.messages": max(100_000, 4 * cfg.max_pending),
    })
    if cfg.processing == "exactly_once":
        conf["transactional.id"] = transactional_id(cfg)
    conf.update(cfg.producer)
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return _with_logger(conf)


def reader_config(cfg: KafkaConfig, *, log_debug: str | None = None) -> dict[str, Any]:
    """A group-less consumer used with ``assign()`` to read the state topic to its end."""
    conf = common_config(cfg, log_debug=log_debug)
    conf.update({
        "group.id": f"{cfg.group_id}-state-reader",  # never joins: only assign() is used, nothing is committed
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.max.bytes": max(52_428_800, 2 * cfg.max_message_bytes),
        # the end of the partition is detected by an empty fetch: do not wait long for one
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": max(1_048_576, 2 * cfg.max_message_bytes),
    })
    conf.update(cfg.consumer)
    return _with_logger(conf)


def admin_config(cfg: KafkaConfig) -> dict[str, Any]:
    return _with_logger(common_config(cfg))


def redacted_client_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A client configuration fit for logs: secrets replaced, callbacks named."""
    out: dict[str, Any] = {}
    for key, value in conf.items():
        if is_secret(key):
            out[key] = REDACTED
        elif callable(value) or isinstance(value, logging.Logger):
            out[key] = f"<{type(value).__name__}>"
        else:
            out[key] = value
    return out
