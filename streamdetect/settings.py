"""Application configuration: a TOML file, ``STREAMDETECT_*`` environment variables and flags.

Precedence, highest first: command-line flags > environment > config file > defaults. The file is
named by ``--config`` or ``STREAMDETECT_CONFIG``. Environment variables are nested with ``__``::

    STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS=broker:9092
    STREAMDETECT_DETECTOR__WINDOWS__SIZE=300
    STREAMDETECT_KAFKA__COMMON__SASL_PASSWORD=...      # -> [kafka.common] "sasl.password"

Inside the librdkafka pass-through tables (``[kafka.common]``, ``[kafka.consumer]``,
``[kafka.producer]``) an environment variable's ``_`` becomes ``.`` because librdkafka property
names use dots and environment names cannot.

Everything is validated once, at start-up: an unknown setting, a wrong type or an out-of-range value
raises :class:`~streamdetect.config.ConfigError` naming the setting, where it came from and what to
do.

>>> cfg = load_config(env={"STREAMDETECT_KAFKA__GROUP_ID": "g1"}, overrides={"metrics": {"port": 0}})
>>> cfg.kafka.group_id, cfg.kafka.input_topics, cfg.metrics.port
('g1', ('sales',), 0)
>>> load_config(env={"STREAMDETECT_KAFKA__BATCH": "5"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamdetect.config.ConfigError: environment variable STREAMDETECT_KAFKA__BATCH: unknown setting 'kafka.batch' ...
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamdetect.config import ConfigError, DetectorConfig, from_mapping

__all__ = [
    "ENV_CONFIG",
    "ENV_KERNEL_CACHE_SEED",
    "ENV_PREFIX",
    "PASSTHROUGH_TABLES",
    "REDACTED",
    "SECRET_PATTERNS",
    "AppConfig",
    "KafkaConfig",
    "LogConfig",
    "MetricsConfig",
    "config_to_dict",
    "is_secret",
    "is_topic_pattern",
    "load_config",
    "redact",
    "to_toml",
]

ENV_PREFIX = "STREAMDETECT_"
ENV_CONFIG = "STREAMDETECT_CONFIG"
# Variables of the process, not settings: the config file, and the compiled kernels an image
# carries (read by streamdetect._jit, which numba's kernels import before anything else).
ENV_KERNEL_CACHE_SEED = "STREAMDETECT_KERNEL_CACHE_SEED"
_NOT_SETTINGS = frozenset({ENV_CONFIG, ENV_KERNEL_CACHE_SEED})
REDACTED = "***"
#: librdkafka property names (and our own setting names) whose values are never printed or logged.
SECRET_PATTERNS: tuple[str, ...] = ("*password*", "*secret*", "sasl.oauthbearer.*", "ssl.key.*", "*sasl_password*")
PASSTHROUGH_TABLES = ("common", "consumer", "producer")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # what Kafka accepts as a topic name


def _topic_rule(topic: str) -> str:
    return (
        f"{topic!r} is not a Kafka topic name (letters, digits, '.', '_' and '-', at most 249); a list in an"
        " environment variable is comma-separated (a,b), and a regular expression starts with '^'"
    )


def is_topic_pattern(topic: str) -> bool:
    """Whether an input topic is a regular expression: librdkafka subscribes to every topic that
    matches one starting with '^', now and later, and no topic of that name exists.

    >>> is_topic_pattern("^sales-(eu|us)$"), is_topic_pattern("sales")
    (True, False)
    """
    return topic.startswith("^")


def is_secret(name: str) -> bool:
    """Whether a setting or librdkafka property of this name holds a secret."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in SECRET_PATTERNS)


def _flatten_props(value: Any, where: str, prefix: str = "") -> dict[str, str]:
    """librdkafka properties as ``{"dotted.name": "string"}``.

    An unquoted dotted key in TOML (``sasl.mechanism = "PLAIN"``) parses as nested tables, so nested
    tables are joined back with dots.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of librdkafka properties, got {value!r}")
    out: dict[str, str] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            out.update(_flatten_props(item, where, f"{name}."))
        elif isinstance(item, bool):
            out[name] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            out[name] = str(item)
        else:
            raise ConfigError(f"{where}.{name}: expected a string, number or boolean, got {item!r}")
    return out


@dataclass(frozen=True)
class KafkaConfig:
    """Kafka connection, topics, consumer-group behaviour and delivery policy (``[kafka]``).

    See ``docs/service.md`` for every setting; the librdkafka pass-through tables ``common``,
    ``consumer`` and ``producer`` are merged last into the client configurations (``common`` into
    both), so they can override anything streamdetect sets.
    """

    bootstrap_servers: str = ""
    group_id: str = "streamdetect"
    input_topics: tuple[str, ...] = ("sales",)
    alerts_topic: str = "sales-anomalies"
    dlq_topic: str = "sales-dlq"
    state_topic: str = "streamdetect-state"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    batch_size: int = 2000
    poll_timeout: float = 0.5
    checkpoint_interval: float = 5.0
    max_pending: int = 20_000
    idle_after: float = 300.0
    shutdown_timeout: float = 30.0
    restore_timeout: float = 60.0
    delivery_retries: int = 3
    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    statistics_interval_ms: int = 5_000
    linger_ms: int = 10
    max_message_bytes: int = 1_000_000
    group_protocol: Literal["classic", "consumer"] = "classic"
    group_instance_id: str | None = None
    processing: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transactional_id: str | None = None
    create_topics: bool = True
    topic_partitions: int = 4
    state_partitions: int = 4
    replication_factor: int = 1
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    common: dict[str, str] = field(default_factory=dict)
    consumer: dict[str, str] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_topics", tuple(self.input_topics))
        for name in PASSTHROUGH_TABLES:
            object.__setattr__(self, name, _flatten_props(getattr(self, name), f"kafka.{name}"))
        _require(len(self.input_topics) > 0, "kafka.input_topics: give at least one input topic, e.g. ['sales']")
        topics = {"kafka.alerts_topic": self.alerts_topic, "kafka.dlq_topic": self.dlq_topic,
                  "kafka.state_topic": self.state_topic}
        patterns = {}
        for t in self.input_topics:
            if is_topic_pattern(t):
                try:
                    patterns[t] = re.compile(t)
                except re.error as exc:
                    raise ConfigError(f"kafka.input_topics: {t!r} is not a valid regular expression ({exc})") from None
            else:
                _require(_TOPIC_NAME.fullmatch(t) is not None, f"kafka.input_topics: {_topic_rule(t)}")
        for name, topic in topics.items():
            _require(bool(topic), f"{name} must not be empty")
            _require(_TOPIC_NAME.fullmatch(topic) is not None, f"{name}: {_topic_rule(topic)}")
            _require(topic not in self.input_topics,
                     f"{name} ({topic!r}) is also an input topic: the service would consume its own output")
            for t, pattern in patterns.items():
                _require(pattern.search(topic) is None,
                         f"kafka.input_topics pattern {t!r} matches {name} ({topic!r}): the service would consume"
                         " its own output; narrow the pattern or rename the output topic")
        _require(len(set(topics.values())) == 3,
                 "kafka.alerts_topic, kafka.dlq_topic and kafka.state_topic must be three different topics")
        _require(bool(self.group_id), "kafka.group_id must not be empty")
        _require(1 <= self.batch_size <= 100_000, "kafka.batch_size must be in [1, 100000] messages (default 2000)")
        _require(0 < self.poll_timeout <= 10, "kafka.poll_timeout must be in (0, 10] seconds (default 0.5)")
        _require(self.checkpoint_interval > 0, "kafka.checkpoint_interval must be > 0 seconds (default 5)")
        _require(self.idle_after >= 0, "kafka.idle_after must be >= 0 seconds (0: event time only moves with events)")
        _require(self.max_pending >= self.batch_size,
                 "kafka.max_pending must be >= kafka.batch_size (outputs in flight before a forced checkpoint)")
        _require(self.shutdown_timeout > 0, "kafka.shutdown_timeout must be > 0 seconds")
        _require(self.restore_timeout > 0, "kafka.restore_timeout must be > 0 seconds")
        _require(self.delivery_retries >= 0, "kafka.delivery_retries must be >= 0")
        _require(self.heartbeat_interval_ms < self.session_timeout_ms,
                 "kafka.heartbeat_interval_ms must be below kafka.session_timeout_ms (typically a third of it)")
        _require(self.max_poll_interval_ms >= self.session_timeout_ms,
                 "kafka.max_poll_interval_ms must be >= kafka.session_timeout_ms")
        _require(self.statistics_interval_ms >= 0, "kafka.statistics_interval_ms must be >= 0 (0 disables lag stats)")
        _require(self.linger_ms >= 0, "kafka.linger_ms must be >= 0")
        _require(self.max_message_bytes >= 100_000, "kafka.max_message_bytes must be >= 100000")
        _require(self.topic_partitions >= 1, "kafka.topic_partitions must be >= 1")
        _require(self.state_partitions >= 1, "kafka.state_partitions must be >= 1")
        _require(self.replication_factor >= 1 or self.replication_factor == -1,
                 "kafka.replication_factor must be >= 1, or -1 for the broker's default")
        if self.sasl_mechanism is not None:
            _require(self.sasl_username is not None or self.sasl_mechanism.upper() in ("GSSAPI", "OAUTHBEARER"),
                     f"kafka.sasl_mechanism is {self.sasl_mechanism!r}: also set kafka.sasl_username and "
                     "kafka.sasl_password")

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def named_input_topics(self) -> list[str]:
        """The input topics given by name, without the patterns (whose topics are not known
        until the consumer's subscription matches them)."""
        return [t for t in self.input_topics if not is_topic_pattern(t)]


@dataclass(frozen=True)
class MetricsConfig:
    """The HTTP endpoint with ``/metrics``, ``/healthz`` and ``/readyz`` (``[metrics]``)."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 9108

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "metrics.port must be in [0, 65535] (0 picks a free port)")
        _require(bool(self.host), "metrics.host must not be empty (0.0.0.0 listens everywhere)")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class LogConfig:
    """Logging (``[log]``): JSON lines (default) or text on stderr; ``librdkafka_debug`` is librdkafka's ``debug``."""

    level: str = "INFO"
    format: Literal["json", "text"] = "json"
    librdkafka_debug: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", str(self.level).upper())
        _require(self.level in LOG_LEVELS, f"log.level is {self.level!r}; choose one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True)
class AppConfig:
    """The whole configuration of ``streamdetect run`` / ``demo``."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def require_bootstrap(self) -> None:
        """Fail with a message saying how to set the brokers when none are configured."""
        _require(
            bool(self.kafka.bootstrap_list),
            "kafka.bootstrap_servers is not set: pass --bootstrap-servers HOST:PORT, set "
            "STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS, or add bootstrap_servers to the [kafka] table of the config file",
        )


_SECTIONS: dict[str, type] = {"kafka": KafkaConfig, "metrics": MetricsConfig, "log": LogConfig}


# -- loading -------------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc}); check --config / "
                          f"{ENV_CONFIG}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None


def _known(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_keys(mapping: Mapping[str, Any], cls: type, where: str, source: str) -> None:
    """Reject unknown keys early so that the message can name the source (file, env, flag)."""
    known = _known(cls)
    for key, value in mapping.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown setting '{where}.{key}' (known in [{where}]: "
                              f"{', '.join(sorted(known))})")
        sub = known[key]
        if dataclasses.is_dataclass(sub) and isinstance(value, Mapping):
            _check_keys(value, sub, f"{where}.{key}", source)  # type: ignore[arg-type]


def _check_top(mapping: Mapping[str, Any], source: str) -> None:
    for section, table in mapping.items():
        if section == "detector":
            cls: type = DetectorConfig
        elif section in _SECTIONS:
            cls = _SECTIONS[section]
        else:
            raise ConfigError(f"{source}: unknown section [{section}] (known: detector, kafka, log, metrics)")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table of settings, got {table!r}")
        _check_keys(table, cls, section, source)


def _env_mapping(env: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMDETECT_A__B__C=v`` -> ``{"a": {"b": {"c": "v"}}}``, one source check per variable."""
    out: dict[str, Any] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if len(path) < 2 or not all(path):
            raise ConfigError(f"environment variable {name}: expected STREAMDETECT_<SECTION>__<SETTING>, "
                              "e.g. STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS")
        if path[0] == "kafka" and len(path) >= 3 and path[1] in PASSTHROUGH_TABLES:
            # librdkafka property names use dots, environment names cannot
            path = [*path[:2], ".".join(path[2:]).replace("_", ".")]
        single: dict[str, Any] = {}
        node = single
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = env[name]
        _check_top(single, f"environment variable {name}")
        _merge(out, single)
    return out


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into ``base`` (tables merge, everything else replaces)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, Mapping):
            base[key] = _merge({}, value)
        else:
            base[key] = value
    return base


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AppConfig:
    """Build and validate the effective :class:`AppConfig`.

    Parameters
    ----------
    path
        TOML file; when ``None`` the ``STREAMDETECT_CONFIG`` environment variable, if set.
    env
        Environment (``os.environ`` when ``None``); only ``STREAMDETECT_*`` variables are read.
    overrides
        Settings from command-line flags, nested like the file (``{"kafka": {"group_id": "x"}}``);
        ``None`` values are ignored.

    Raises
    ------
    ConfigError
        With a message naming the setting, its source and what to fix.
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG):
        path = env[ENV_CONFIG]
    merged: dict[str, Any] = {}
    if path is not None:
        file_data = _read_file(Path(path))
        _check_top(file_data, f"config file {path}")
        _merge(merged, file_data)
    _merge(merged, _env_mapping(env))
    if overrides:
        flags = _drop_none(overrides)
        _check_top(flags, "command-line flags")
        _merge(merged, flags)
    return _build(merged)


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            inner = _drop_none(value)
            if inner:
                out[key] = inner
        elif value is not None:
            out[key] = value
    return out


def _build(merged: Mapping[str, Any]) -> AppConfig:
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        sections[name] = from_mapping(cls, merged.get(name, {}), name)
    sections["detector"] = from_mapping(DetectorConfig, merged.get("detector", {}), "detector")
    return AppConfig(**sections)


# -- showing -------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain nested dicts (tuples as lists, ``None`` kept)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif isinstance(value, dict):
            out[f.name] = dict(value)
        else:
            out[f.name] = value
    return out


def redact(data: Any, name: str = "") -> Any:
    """A copy of nested dicts/lists with every secret value replaced by ``***``."""
    if isinstance(data, Mapping):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v, name) for v in data]
    if name and is_secret(name) and data not in (None, ""):
        return REDACTED
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Nested dicts as TOML (``None`` values are written as comments: TOML has no null)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif value is None:
            lines.append(f"# {_toml_key(key)} = (not set)")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    out = []
    if lines:
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(lines)
        out.append("")
    for key, value in tables:
        out.append(to_toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)))
    return "\n".join(out)
