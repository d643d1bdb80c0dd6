"""Application configuration: precedence, validation messages, redaction (no broker needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from streamdetect.cli import main
from streamdetect.config import ConfigError
from streamdetect.kafka.clients import consumer_config, producer_config, redacted_client_config
from streamdetect.logging import JsonFormatter
from streamdetect.settings import REDACTED, KafkaConfig, config_to_dict, is_secret, load_config, redact, to_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamdetect.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = load_config(env={})
    k = cfg.kafka
    assert (k.input_topics, k.alerts_topic, k.dlq_topic, k.state_topic, k.group_id) == (
        ("sales",), "sales-anomalies", "sales-dlq", "streamdetect-state", "streamdetect")
    assert cfg.metrics.port == 9108
    assert cfg.log.format == "json"


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[kafka]
bootstrap_servers = "file:9092"
group_id = "from-file"
alerts_topic = "file-alerts"

[detector.windows]
size = 120
""")
    env = {"STREAMDETECT_KAFKA__GROUP_ID": "from-env", "STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS": "env:9092",
           "STREAMDETECT_DETECTOR__WINDOWS__SIZE": "300"}
    cfg = load_config(path, env=env, overrides={"kafka": {"bootstrap_servers": "flag:9092", "group_id": None}})
    assert cfg.kafka.bootstrap_servers == "flag:9092"  # flag beats env and file
    assert cfg.kafka.group_id == "from-env"  # env beats file; a None flag is "not given"
    assert cfg.kafka.alerts_topic == "file-alerts"  # file beats default
    assert cfg.detector.windows.size == 300.0


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\ngroup_id = "via-env-path"\n')
    assert load_config(env={"STREAMDETECT_CONFIG": str(path)}).kafka.group_id == "via-env-path"


def test_env_types_are_coerced() -> None:
    env = {"STREAMDETECT_KAFKA__BATCH_SIZE": "250", "STREAMDETECT_KAFKA__CREATE_TOPICS": "false",
           "STREAMDETECT_KAFKA__INPUT_TOPICS": "a,b", "STREAMDETECT_METRICS__PORT": "0",
           "STREAMDETECT_DETECTOR__MODEL__WARMUP": "100",
           "STREAMDETECT_DETECTOR__FEATURES__TIMEZONES": "store-7=America/New_York, store-9 = Asia/Tokyo"}
    cfg = load_config(env=env)
    assert cfg.kafka.batch_size == 250 and cfg.kafka.create_topics is False
    assert cfg.kafka.input_topics == ("a", "b")
    assert cfg.metrics.port == 0 and cfg.detector.model.warmup == 100
    assert cfg.detector.features.timezones == {"store-7": "America/New_York", "store-9": "Asia/Tokyo"}


def test_passthrough_tables(tmp_path: Path) -> None:
    path = write(tmp_path, """
[kafka]
bootstrap_servers = "b:9093"
security_protocol = "SASL_SSL"

[kafka.common]
sasl.mechanism = "SCRAM-SHA-512"
"ssl.endpoint.identification.algorithm" = "https"

[kafka.consumer]
"fetch.min.bytes" = 1024

[kafka.producer]
"linger.ms" = 50
""")
    env = {"STREAMDETECT_KAFKA__COMMON__SASL_PASSWORD": "hunter2", "STREAMDETECT_KAFKA__COMMON__SASL_USERNAME": "u"}
    cfg = load_config(path, env=env)
    assert cfg.kafka.common == {"sasl.mechanism": "SCRAM-SHA-512", "ssl.endpoint.identification.algorithm": "https",
                                "sasl.password": "hunter2", "sasl.username": "u"}
    c = consumer_config(cfg.kafka)
    assert c["security.protocol"] == "SASL_SSL" and c["sasl.password"] == "hunter2" and c["fetch.min.bytes"] == "1024"
    p = producer_config(cfg.kafka)
    assert p["linger.ms"] == "50" and "fetch.min.bytes" not in p and p["enable.idempotence"] is True
    assert redacted_client_config(c)["sasl.password"] == REDACTED


@pytest.mark.parametrize("name", ["sasl.password", "ssl.key.password", "ssl.key.pem", "sasl.oauthbearer.client.secret",
                                  "sasl.oauthbearer.config", "sasl_password", "my.client.secret"])
def test_secret_names(name: str) -> None:
    assert is_secret(name)


def test_not_secret_names() -> None:
    assert not any(is_secret(n) for n in ("sasl.username", "bootstrap.servers", "ssl.ca.location"))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"STREAMDETECT_KAFKA__BATCH_SIZ": "5"}, "environment variable STREAMDETECT_KAFKA__BATCH_SIZ: unknown "
                                                 "setting 'kafka.batch_siz'"),
        ({"STREAMDETECT_KAFKA__BATCH_SIZE": "many"}, "kafka.batch_size: expected an integer, got 'many'"),
        ({"STREAMDETECT_KAFKA__BATCH_SIZE": "0"}, "kafka.batch_size must be in [1, 100000]"),
        ({"STREAMDETECT_KAFKA__AUTO_OFFSET_RESET": "newest"}, "kafka.auto_offset_reset is 'newest'; choose one of"),
        ({"STREAMDETECT_KAFKA__ALERTS_TOPIC": "sales"}, "is also an input topic"),
        ({"STREAMDETECT_KAFKA__INPUT_TOPICS": "^sales.*"},
         "kafka.input_topics pattern '^sales.*' matches kafka.alerts_topic ('sales-anomalies')"),
        ({"STREAMDETECT_KAFKA__INPUT_TOPICS": "^sales("}, "'^sales(' is not a valid regular expression"),
        ({"STREAMDETECT_KAFKA__INPUT_TOPICS": '["sales"]'}, "'[\"sales\"]' is not a Kafka topic name"),
        ({"STREAMDETECT_KAFKA__DLQ_TOPIC": "sales dlq"}, "kafka.dlq_topic: 'sales dlq' is not a Kafka topic name"),
        ({"STREAMDETECT_KAFKA__DLQ_TOPIC": "sales-anomalies"}, "must be three different topics"),
        ({"STREAMDETECT_METRICS__PORT": "70000"}, "metrics.port must be in [0, 65535]"),
        ({"STREAMDETECT_LOG__LEVEL": "LOUD"}, "log.level is 'LOUD'"),
        ({"STREAMDETECT_DETECTOR__WINDOWS__SIZE": "0.5"}, "windows.size is in seconds and must be >= 1"),
        ({"STREAMDETECT_DETECTOR__WINDOW__SIZE": "60"}, "unknown setting 'detector.window'"),
        ({"STREAMDETECT_NOPE__X": "1"}, "unknown section [nope]"),
        ({"STREAMDETECT_KAFKA": "x"}, "expected STREAMDETECT_<SECTION>__<SETTING>"),
        ({"STREAMDETECT_KAFKA__SESSION_TIMEOUT_MS": "1000", "STREAMDETECT_KAFKA__HEARTBEAT_INTERVAL_MS": "3000"},
         "kafka.heartbeat_interval_ms must be below kafka.session_timeout_ms"),
    ],
)
def test_wrong_configuration_fails_with_a_clear_message(source: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=source)
    assert expected in str(info.value)


def test_a_topic_pattern_that_spares_the_outputs_is_taken() -> None:
    cfg = load_config(env={"STREAMDETECT_KAFKA__INPUT_TOPICS": "^sales\\.(eu|us)$,returns"})
    assert cfg.kafka.input_topics == ("^sales\\.(eu|us)$", "returns")


def test_produce_asks_for_a_topic_when_the_input_is_a_pattern(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMDETECT_KAFKA__INPUT_TOPICS", "^sales\\.(eu|us)$")
    events = tmp_path / "events.jsonl"
    events.write_text('{"ts": 0, "store_id": "s1", "amount": 1.0}\n')
    assert main(["produce", str(events), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "is a pattern" in err and "--topic" in err


def test_wrong_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[kafka\n"), env={})
    with pytest.raises(ConfigError, match=r"config file .*: unknown setting 'kafka.bootstrap'"):
        load_config(write(tmp_path, '[kafka]\nbootstrap = "x"\n'), env={})
    with pytest.raises(ConfigError, match=r"kafka.common.sasl: expected a string"):
        load_config(write(tmp_path, '[kafka.common]\nsasl = [1, 2]\n'), env={})


def test_run_without_bootstrap_servers_says_how_to_set_them(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(env={})
    with pytest.raises(ConfigError, match="STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS"):
        cfg.require_bootstrap()


def test_cli_run_rejects_bad_config_before_connecting(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMDETECT_KAFKA__BATCH_SIZE", "lots")
    assert main(["run", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "configuration error: kafka.batch_size: expected an integer, got 'lots'" in capsys.readouterr().err
    monkeypatch.delenv("STREAMDETECT_KAFKA__BATCH_SIZE")
    assert main(["run"]) == 2
    assert "kafka.bootstrap_servers is not set" in capsys.readouterr().err


def test_config_show_redacts_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nsasl_mechanism = "PLAIN"\nsasl_username = "alice"\nsasl_password = "s3cret"\n'
                           '[kafka.common]\n"ssl.key.password" = "pw2"\n')
    monkeypatch.setenv("STREAMDETECT_KAFKA__COMMON__SASL_OAUTHBEARER_CLIENT_SECRET", "pw3")
    assert main(["config", "show", "--config", str(path), "--bootstrap-servers", "b:1", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "pw2" not in out and "pw3" not in out
    data = orjson.loads(out)
    assert data["kafka"]["sasl_password"] == REDACTED and data["kafka"]["sasl_username"] == "alice"
    assert data["kafka"]["common"]["ssl.key.password"] == REDACTED
    assert data["kafka"]["common"]["sasl.oauthbearer.client.secret"] == REDACTED
    assert data["kafka"]["bootstrap_servers"] == "b:1"
    assert main(["config", "show", "--config", str(path)]) == 0
    toml_out = capsys.readouterr().out
    assert "s3cret" not in toml_out and "[kafka.common]" in toml_out and "[detector.windows]" in toml_out


def test_config_show_output_loads_back(tmp_path: Path) -> None:
    cfg = load_config(env={"STREAMDETECT_KAFKA__COMMON__CLIENT_RACK": "r1",
                           "STREAMDETECT_DETECTOR__WINDOWS__SIZE": "90"})
    path = tmp_path / "shown.toml"
    path.write_text(to_toml(redact(config_to_dict(cfg))))
    again = load_config(path, env={})
    assert again == cfg
    assert again.kafka.common == {"client.rack": "r1"} and again.kafka != KafkaConfig()


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("streamdetect.kafka.service", logging.WARNING, __file__, 1, "commit failed", (), None)
    record.topic, record.partition = "sales", 3
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["topic"] == "sales" and line["partition"] == 3
    assert line["ts"].endswith("Z") and line["logger"] == "streamdetect.kafka.service"
