"""Metrics registry, health state and the HTTP server (real server on loopback)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamdetect.events import RejectReason
from streamdetect.metrics import METRIC_NAMES, REJECT_REASONS, Health, Metrics, serve

ROOT = Path(__file__).resolve().parents[1]


def contract_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metric table of docs/contracts.md: exposition name -> (type, labels)."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    section = text.split("## Metric names", 1)[1]
    out = {}
    for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|([^|]*)\|", section, re.M):
        name, kind, labels = m.group(1), m.group(2).strip().split()[0], m.group(3)
        label_names = tuple(lab.strip() for lab in re.sub(r"\(.*?\)", "", labels).split(",") if lab.strip())
        out[f"streamdetect_{name}"] = (kind, label_names)
    return out


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metrics reference of README.md: name -> (type, labels)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics reference", 1)[1].split("\n### ", 1)[0]
    out = {}
    for m in re.finditer(r"^\| `(streamdetect_\w+)` \| (\w+) \|([^|]*)\|", section, re.M):
        assert m.group(1) not in out, f"{m.group(1)} is documented twice"
        out[m.group(1)] = (m.group(2), tuple(re.findall(r"`(\w+)`", m.group(3))))
    return out


def families(metrics: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}


def test_contract_table_matches_metric_names() -> None:
    contract = contract_metrics()
    assert len(contract) >= 20
    assert contract == METRIC_NAMES


def test_every_metric_is_documented() -> None:
    """README.md has one row per metric, with its type and labels."""
    documented = documented_metrics()
    assert documented == METRIC_NAMES
    # and the registry itself (not only the METRIC_NAMES table) registers exactly these
    registered = {f"{f.name}_total" if f.type == "counter" else f.name
                  for f in Metrics(process_collectors=False).registry.collect()}
    assert registered == set(documented)


def test_exposition_contains_every_contract_metric() -> None:
    m = Metrics()
    m.declare_topics(["sales"], ["sales-anomalies", "sales-dlq", "streamdetect-state"])
    m.set_lag("sales", 0, 5)
    m.observe_stats(0, SimpleNamespace(threshold=20.0, drift_statistic=0.01, mean_log_likelihood=-3.0,
                                       component_weights=[0.5, 0.5], model_updates=3, watermark_ms=None,
                                       open_episodes=0))
    m.record_snapshots(0.01, {0: 1_000})
    text = m.exposition().decode()
    fams = families(m)
    for name, (kind, labels) in METRIC_NAMES.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in fams, name
        assert fams[base].type == kind, name  # type: ignore[attr-defined]
        assert re.search(rf"^{name}(_bucket|_sum|_count)?[{{ ]", text, re.M), name
        for sample in fams[base].samples:  # type: ignore[attr-defined]
            if sample.name.endswith("_bucket"):
                assert set(sample.labels) == {*labels, "le"}
            else:
                assert set(sample.labels) == set(labels), (name, sample)
    assert "_created" not in text
    assert "process_cpu_seconds_total" in text or "python_info" in text


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.record_consumed("sales", 5)
    assert a.value("streamdetect_events_consumed_total", topic="sales") == 5
    assert b.value("streamdetect_events_consumed_total", topic="sales") is None
    b.declare_topics(["sales"], ["sales-dlq"])
    assert b.value("streamdetect_delivery_failures_total", topic="sales-dlq") == 0


def _output(scores: list[float], severities: list[str], reasons: list[str], drift: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        alerts=[SimpleNamespace(severity=s, episode_alert=1 + i % 2, triggers=["silence"] if i == 1 else ["score"],
                                reference="hour_of_day" if i == 1 else "hour_of_week")
                for i, s in enumerate(severities)],
        rejected=[SimpleNamespace(reason=r) for r in reasons],
        scored=SimpleNamespace(score=np.array(scores), event_time_ms=np.arange(len(scores)) * 1000 + 1_700_000_000_000),
        n_valid=10,
        drift_detected=drift,
        resolved=[SimpleNamespace(reason="calm"), SimpleNamespace(reason="calm"), SimpleNamespace(reason="expired")],
    )


def _stats(updates: int, weights: list[float]) -> SimpleNamespace:
    return SimpleNamespace(threshold=25.0, drift_statistic=0.3, mean_log_likelihood=-4.5,
                           component_weights=weights, model_updates=updates, watermark_ms=1_700_000_100_000,
                           open_episodes=4)


def test_observe_output_counts_everything() -> None:
    m = Metrics()
    m.observe_output(2, _output([1.0, 30.0, float("nan")], ["critical", "major"], ["decode", "late", "late"],
                                drift=True), _stats(10, [0.7, 0.3]))
    assert m.value("streamdetect_windows_scored_total") == 3
    assert m.value("streamdetect_anomaly_score_count") == 2  # NaN is not observed
    assert m.value("streamdetect_anomaly_score_bucket", le="2.5") == 1
    assert m.value("streamdetect_anomalies_total", severity="critical", reference="hour_of_week") == 1
    assert m.value("streamdetect_anomalies_total", severity="major", reference="hour_of_day") == 1
    assert m.value("streamdetect_anomalies_total", severity="major", reference="hour_of_week") == 0
    assert m.value("streamdetect_anomalies_total", severity="warning", reference="recent") == 0  # pre-created
    assert m.value("streamdetect_anomaly_episodes_total") == 1  # the major alert continues the episode
    assert m.value("streamdetect_silence_alerts_total") == 1  # the major alert, by its silence alone
    assert m.value("streamdetect_anomaly_episodes_resolved_total", reason="calm") == 2
    assert m.value("streamdetect_anomaly_episodes_resolved_total", reason="expired") == 1
    assert m.value("streamdetect_open_anomaly_episodes", partition="2") == 4
    assert m.value("streamdetect_events_rejected_total", reason="late") == 2
    assert m.value("streamdetect_events_rejected_total", reason="decode") == 1
    assert m.value("streamdetect_events_late_total") == 2
    assert m.value("streamdetect_drift_events_total") == 1
    assert m.value("streamdetect_threshold", partition="2") == 25.0
    assert m.value("streamdetect_score_drift", partition="2") == pytest.approx(0.3)
    assert m.value("streamdetect_model_log_likelihood", partition="2") == -4.5
    assert m.value("streamdetect_model_component_weight", partition="2", component="1") == pytest.approx(0.3)
    assert m.value("streamdetect_model_updates_total") == 10
    assert m.value("streamdetect_last_event_timestamp_seconds") == pytest.approx(1_700_000_100.0)

    # cumulative model_updates become increments; a shrinking mixture drops its extra components
    m.observe_output(2, _output([], [], []), _stats(14, [1.0]))
    assert m.value("streamdetect_model_updates_total") == 14
    assert m.value("streamdetect_model_component_weight", partition="2", component="1") is None
    # a restored detector only sets the baseline
    m.remove_partition(2)
    assert m.value("streamdetect_open_anomaly_episodes", partition="2") is None
    m.observe_stats(2, _stats(500, [1.0]), baseline=True)
    m.observe_stats(2, _stats(501, [1.0]))
    assert m.value("streamdetect_model_updates_total") == 15
    # the event-time gauge never goes backwards
    m.observe_event_time(1.0)
    assert m.value("streamdetect_last_event_timestamp_seconds") == pytest.approx(1_700_000_100.0)


def test_observe_output_with_real_detector() -> None:
    from streamdetect.detector import Detector

    det = Detector()
    records = [{"store_id": "s1", "sku": "a", "quantity": 1, "unit_price": 2.0, "timestamp": 1_700_000_000_000 + i}
               for i in range(5)]
    returned = {"store_id": "s1", "ts": 1_700_000_000_000, "quantity": -1, "unit_price": 2.0}  # a cancelled line
    out = det.process_records([*records, {"bad": 1}, returned])
    m = Metrics()
    m.observe_output(0, out, det.stats())
    assert out.n_returns == 1 and m.value("streamdetect_returns_total") == 1
    assert sum(m.value("streamdetect_events_rejected_total", reason=r) or 0 for r in REJECT_REASONS) == len(
        out.rejected) >= 1
    assert set(REJECT_REASONS) == {str(r) for r in RejectReason}
    assert m.value("streamdetect_threshold", partition="0") is not None


def test_kafka_side_records_and_remove_partition() -> None:
    m = Metrics()
    m.record_consumed("sales", 0)
    assert m.value("streamdetect_events_consumed_total", topic="sales") is None
    m.record_consumed("sales", 7)
    m.record_delivery_failure("sales-anomalies")
    m.record_commit(True)
    m.record_commit(False)
    m.record_checkpoint(True, ts=123.0)
    m.record_checkpoint(False)
    m.record_rebalance("assign", 3)
    m.record_alerts_produced(4)
    m.record_rejected("too_large")
    m.set_lag("sales", 1, 42)
    m.set_lag("sales", 2, -1)  # unknown lag: skipped
    m.observe_batch_seconds(0.02)
    m.observe_alert_latency([61.0, 75.0])
    m.observe_alert_latency(-1.0)  # clock skew clamps to 0
    assert m.value("streamdetect_events_consumed_total", topic="sales") == 7
    assert m.value("streamdetect_delivery_failures_total", topic="sales-anomalies") == 1
    assert m.value("streamdetect_commits_total", result="ok") == 1
    assert m.value("streamdetect_commits_total", result="error") == 1
    assert m.value("streamdetect_checkpoints_total", result="error") == 1
    assert m.value("streamdetect_last_checkpoint_timestamp_seconds") == 123.0
    assert m.value("streamdetect_rebalances_total", event="assign") == 1
    assert m.value("streamdetect_assigned_partitions") == 3
    assert m.value("streamdetect_alerts_produced_total") == 4
    assert m.value("streamdetect_events_rejected_total", reason="too_large") == 1
    assert m.value("streamdetect_consumer_lag_messages", topic="sales", partition="1") == 42
    assert m.value("streamdetect_consumer_lag_messages", topic="sales", partition="2") is None
    assert m.value("streamdetect_batch_duration_seconds_count") == 1
    m.record_snapshots(0.3, {1: 52_000, 2: 7_000})
    assert m.value("streamdetect_checkpoint_duration_seconds_count") == 1
    assert m.value("streamdetect_checkpoint_duration_seconds_bucket", le="0.25") == 0
    assert m.value("streamdetect_checkpoint_bytes", partition="1") == 52_000
    assert m.value("streamdetect_alert_latency_seconds_count") == 3
    assert m.value("streamdetect_alert_latency_seconds_bucket", le="0.1") == 1

    m.observe_stats(1, _stats(1, [0.5, 0.5]))
    m.remove_partition(1)
    m.remove_partition(1)  # idempotent
    for name in ("streamdetect_threshold", "streamdetect_score_drift", "streamdetect_model_log_likelihood",
                 "streamdetect_checkpoint_bytes"):
        assert m.value(name, partition="1") is None
    assert m.value("streamdetect_model_component_weight", partition="1", component="0") is None
    assert m.value("streamdetect_consumer_lag_messages", topic="sales", partition="1") is None
    info = [s for s in families(m)["streamdetect_build_info"].samples]  # type: ignore[attr-defined]
    assert len(info) == 1 and info[0].value == 1 and info[0].labels["version"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_health_transitions() -> None:
    clock = FakeClock()
    h = Health(max_heartbeat_age=10.0, clock=clock)
    ok, body = h.live()
    assert not ok and "main loop has not started" in body["reasons"]
    h.heartbeat()
    assert h.live()[0]
    ok, body = h.ready()
    assert not ok and body["reasons"] == ["not connected", "not assigned", "not state restored"]
    h.set_connected()
    h.set_assigned()
    assert not h.ready()[0]
    h.set_state_restored()
    assert h.ready() == (True, {"status": "ok", "connected": True, "assigned": True, "state_restored": True})
    clock.t += 11
    ok, body = h.live()
    assert not ok and "heartbeat is 11.0s old" in body["reasons"][0]
    assert not h.ready()[0]
    h.heartbeat()
    assert h.live()[0] and h.ready()[0]
    h.set_assigned(False)  # revoked everything during a rebalance
    assert not h.ready()[0] and h.live()[0]
    h.set_assigned(True)
    h.set_fatal("broker authentication failed")
    ok, body = h.live()
    assert not ok and body["reasons"] == ["fatal error: broker authentication failed"]
    assert not h.ready()[0]


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def test_http_server_endpoints() -> None:
    m = Metrics()
    m.record_consumed("sales", 11)
    h = Health(max_heartbeat_age=60.0)
    server = serve(m, h, host="127.0.0.1", port=0)
    try:
        assert server.port > 0
        base = server.url
        status, ctype, body = _get(f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert b'streamdetect_events_consumed_total{topic="sales"} 11.0' in body

        status, ctype, body = _get(f"{base}/healthz")
        assert status == 503 and ctype == "application/json"
        assert json.loads(body)["status"] == "fail"
        h.heartbeat()
        status, _, body = _get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"

        status, _, body = _get(f"{base}/readyz")
        assert status == 503 and "not connected" in json.loads(body)["reasons"]
        h.set_connected()
        h.set_assigned()
        h.set_state_restored()
        status, _, body = _get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["state_restored"] is True

        status, _, _ = _get(f"{base}/nope")
        assert status == 404
        status, _, _ = _get(f"{base}/")
        assert status == 404
    finally:
        server.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/metrics", timeout=2)


def test_http_server_without_health() -> None:
    with serve(Metrics(), None, host="127.0.0.1", port=0) as server:
        assert _get(f"{server.url}/healthz")[0] == 200
        assert _get(f"{server.url}/readyz")[0] == 200


def test_consumer_lag_is_the_backlog_behind_what_was_processed() -> None:
    """The lag gauge comes from librdkafka's statistics: the partition's end (``ls_offset``, else
    ``hi_offset``) minus the next offset to process, not librdkafka's own ``consumer_lag`` (measured
    from the committed offset, which moves only at checkpoints); that is the fallback before the
    first message. Topics not consumed and partitions not assigned are left out."""
    import orjson

    from streamdetect.kafka.service import PartitionState, Service
    from streamdetect.settings import load_config

    service = Service(load_config(env={}, overrides={"kafka": {"bootstrap_servers": "127.0.0.1:1"}}))
    service.parts[("sales", 0)] = PartitionState("sales", 0, None, next_offset=100)
    service.parts[("sales", 1)] = PartitionState("sales", 1, None, next_offset=None)
    service.parts[("sales", 2)] = PartitionState("sales", 2, None, next_offset=500)
    stats = {"topics": {
        "sales": {"partitions": {
            "0": {"ls_offset": 150, "hi_offset": 160, "consumer_lag": 7},
            "1": {"ls_offset": -1, "hi_offset": 40, "consumer_lag": 40},
            "2": {"hi_offset": 480, "consumer_lag": 3},
            "3": {"hi_offset": 999, "consumer_lag": 999},  # not assigned here
            "-1": {"hi_offset": 5},  # librdkafka's internal unassigned partition
        }},
        "sales-anomalies": {"partitions": {"0": {"hi_offset": 77, "consumer_lag": 77}}},
    }}
    service._on_stats(orjson.dumps(stats).decode())
    m = service.metrics
    assert [m.value("streamdetect_consumer_lag_messages", topic="sales", partition=str(p)) for p in range(4)] == [
        50, 40, 0, None]
    assert m.value("streamdetect_consumer_lag_messages", topic="sales-anomalies", partition="0") is None
    assert service.totals.lag == {("sales", 0): 50, ("sales", 1): 40, ("sales", 2): 0}
    # Batches processed before the next statistics work the backlog off against the last end known.
    part = service.parts[("sales", 0)]
    part.next_offset = 140
    service._refresh_lag(part)
    assert m.value("streamdetect_consumer_lag_messages", topic="sales", partition="0") == 10
    part.next_offset = 170  # past that end: new messages since the statistics, none behind them
    service._refresh_lag(part)
    assert service.totals.lag[("sales", 0)] == 0
