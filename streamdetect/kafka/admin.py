"""Topic creation at start-up (AdminClient), tolerant of topics that already exist."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamdetect.settings import KafkaConfig

__all__ = ["TopicSpec", "ensure_topics", "service_topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


def service_topics(cfg: KafkaConfig, *, include_inputs: bool = False) -> list[TopicSpec]:
    """The topics the service writes (and, optionally, reads).

    The state topic is compacted (on Kafka only the newest snapshot per key is kept; Tansu ignores
    it) and allows messages as large as ``kafka.max_message_bytes``.
    """
    specs = [
        TopicSpec(cfg.alerts_topic, cfg.topic_partitions),
        TopicSpec(cfg.dlq_topic, cfg.topic_partitions),
        TopicSpec(cfg.state_topic, cfg.state_partitions,
                  {"cleanup.policy": "compact", "max.message.bytes": str(cfg.max_message_bytes + 65_536)}),
    ]
    if include_inputs:
        # A pattern names no topic to create: the topics it matches are the producers'.
        specs = [TopicSpec(t, cfg.topic_partitions) for t in cfg.named_input_topics] + specs
    return specs


def ensure_topics(admin_conf: dict[str, Any], specs: Sequence[TopicSpec], replication_factor: int = 1,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An already existing topic is left as it is (its partition count is not changed).
    """
    admin = AdminClient(admin_conf)
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor, config=dict(s.config))
        for s in specs
        if s.name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
            log.info("created topic", extra={"topic": name})
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another instance won the race
            raise
    return created
