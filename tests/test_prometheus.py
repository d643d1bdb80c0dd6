"""A real Prometheus scrapes the real ``streamdetect run`` service; every dashboard panel and rule is queried.

Setup (module scope, all real processes on loopback):

1. the session's Tansu broker (``tests/conftest.py``), with topics unique to this module;
2. ``streamdetect run`` as a subprocess (the console entry point), configured by a TOML file with a
   short warm-up, 1 s checkpoints and lag statistics, serving ``/metrics`` on a free port;
3. synthetic sales (``streamdetect.generate``, the last three days up to now, with anomalies and a few
   malformed records) produced into the input topic by ``streamdetect produce``;
4. Debian's ``prometheus`` binary with a generated config: 1 s scrape and rule-evaluation interval,
   the repository's rule files, TSDB in a temporary directory.

Then, once the service has caught up and Prometheus holds a few scrapes of it, every expression of
every dashboard panel (``$__rate_interval`` -> ``1m``, ``$instance`` -> ``.*``) is asked of
``/api/v1/query`` and must succeed with a non-empty result, the key panels with finite values; every
alerting and recording rule expression must evaluate, the rule groups must report no evaluation
error, and the service's ``/healthz`` and ``/readyz`` must answer 200.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.prometheus, pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamdetect.json"
RULES = ROOT / "deploy" / "prometheus" / "rules"

# Grafana's variables, as a query for the last few minutes would expand them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$instance": ".*"}

# Every panel query must be valid and return data now (the service pre-creates the zero-valued
# children of its bounded label sets, so even idle counters have series). In addition each query must
# have shown a finite, non-zero value at some point of the run, except these, which legitimately stay
# at 0 in a short healthy run; (panel title, refId) -> why.
ZERO_IN_A_SHORT_RUN: dict[tuple[str, str], str] = {
    ("Delivery failures", "A"): "no delivery fails against a healthy broker and no fault is injected here "
                                "(the failure paths are tested against the broker in tests/test_kafka_*)",
}
# Panels that may show zero or not, by the timing of the scrapes.
MAY_STAY_ZERO: dict[tuple[str, str], str] = {
    ("Open anomaly episodes", "A"): "three days replayed in seconds: most episodes open and end within a few "
                                    "milliseconds, between two scrapes, so whether a scrape sees one open is "
                                    "luck (the gauge is tested in tests/test_metrics.py, the episodes in "
                                    "tests/test_detector.py)",
    ("Total lag", "A"): "the lag is sampled at librdkafka's 1-s statistics ticks: a service that keeps up with the "
                        "producer (as it now does on this run's few tens of thousands of events) can read 0 at "
                        "every tick (the backlog arithmetic is tested in tests/test_metrics.py)",
    ("Consumer lag", "A"): "as Total lag",
}

# Panels whose current value must be finite (not NaN/Inf) at the end of the run. The others may be
# NaN for a legitimate reason: a quantile or ratio over the last minute with no observation in it.
MUST_BE_FINITE_NOW = ("Instances up", "Assigned partitions", "Events/s", "Total lag", "Event-time delay", "Version",
                      "Consumer lag", "Score drift (PSI)", "Mean log-likelihood", "Component weights",
                      "Time since last checkpoint", "Process CPU and memory", "Rebalances and assignment",
                      "Delivery failures", "Model updates", "Commits and checkpoints")

# Consumer-group timings as in tests/conftest.py's FAST_GROUP (Tansu joins in ~session timeout / 2).
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 7000}

SERVICE_TIMEOUT = 150.0  # seconds to catch up with the produced events (a few seconds on a fast machine)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, body.decode(errors="replace")


def streamdetect_cli() -> list[str]:
    """The ``streamdetect`` console script of this interpreter's environment (as installed by pip)."""
    script = Path(sys.executable).parent / "streamdetect"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from streamdetect.cli import main; sys.exit(main())"]


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class Stack:
    prom_url: str
    metrics_url: str
    service_log: Path
    prom_log: Path
    produced: int
    started: float  # Unix time at which Prometheus was started

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_json(url)
        assert isinstance(body, dict), f"{expr}: HTTP {status}: {body}"
        return body

    def scalar(self, expr: str) -> float | None:
        body = self.query(expr)
        result = body.get("data", {}).get("result", [])
        if body.get("status") != "success" or not result:
            return None
        return float(result[0]["value"][1])

    def context(self) -> str:
        return (f"--- streamdetect log ---\n{log_tail(self.service_log)}\n"
                f"--- prometheus log ---\n{log_tail(self.prom_log, 15)}")


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr}"
    return expr


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of the dashboard."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    data = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["refId"], t["expr"]) for p in walk(data["panels"]) for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str, bool]]:
    """(name, expr, is_alert) of every rule."""
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"], "alert" in rule))
    return out


def write_service_config(path: Path, bootstrap: str, suffix: str, metrics_port: int) -> dict[str, str]:
    topics = {"input": f"sales-{suffix}", "alerts": f"sales-anomalies-{suffix}", "dlq": f"sales-dlq-{suffix}",
              "state": f"streamdetect-state-{suffix}"}
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "streamdetect-prom-{suffix}"
input_topics = ["{topics['input']}"]
alerts_topic = "{topics['alerts']}"
dlq_topic = "{topics['dlq']}"
state_topic = "{topics['state']}"
create_topics = true
topic_partitions = 2
state_partitions = 2
checkpoint_interval = 1.0
statistics_interval_ms = 1000
session_timeout_ms = {FAST_GROUP['session_timeout_ms']}
heartbeat_interval_ms = {FAST_GROUP['heartbeat_interval_ms']}
max_poll_interval_ms = {FAST_GROUP['max_poll_interval_ms']}

[metrics]
host = "127.0.0.1"
port = {metrics_port}

[log]
level = "WARNING"
format = "text"

[detector.model]
warmup = 300

[detector.threshold]
n_init = 200
window = 2000

[detector.drift]
detector = "adwin"
reference_size = 300
recent_size = 200
""")
    return topics


def write_prometheus_config(path: Path, metrics_port: int) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "*.yml")],
        "scrape_configs": [{
            "job_name": "streamdetect",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
        }],
    }
    path.write_text(yaml.safe_dump(config))


def generate_events(path: Path) -> int:
    """Three days of sales for 4 stores, with anomalies, returns, malformed and late records.

    A fixed scenario (the generator's default start date and a fixed seed), so that what the
    detector finds, including its drift events, is the same in every run.
    """
    from streamdetect.generate import EventStream, GeneratorConfig, write_jsonl

    cfg = GeneratorConfig(stores=4, days=3, clean_days=1, anomalies_per_store_week=14, malformed_fraction=0.002,
                          late_fraction=0.002, return_fraction=0.01, seed=3)
    return int(write_jsonl(str(path), EventStream(cfg)))


@pytest.fixture(scope="module")
def stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from streamdetect.kafka.admin import ensure_topics, service_topics
    from streamdetect.kafka.clients import admin_config
    from streamdetect.settings import load_config

    prometheus = shutil.which("prometheus")
    assert prometheus is not None, (
        "Debian's prometheus server is not on PATH: `apt-get install prometheus` (scripts/test.sh does), "
        "or deselect with -m 'not prometheus'")
    tmp = tmp_path_factory.mktemp("prometheus-stack")
    unique = uuid.uuid4().hex[:10]
    metrics_port, prom_port = free_port(), free_port()
    topics = write_service_config(tmp / "streamdetect.toml", bootstrap, unique, metrics_port)
    # the service creates its output topics; the input topic is the producer side's (as in compose)
    cfg = load_config(tmp / "streamdetect.toml", env={})
    ensure_topics(admin_config(cfg.kafka), service_topics(cfg.kafka, include_inputs=True))
    events = tmp / "events.jsonl"
    produced = generate_events(events)

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMDETECT_")}
    env["STREAMDETECT_CONFIG"] = str(tmp / "streamdetect.toml")
    service_log = tmp / "streamdetect.log"
    cli = streamdetect_cli()
    write_prometheus_config(tmp / "prometheus.yml", metrics_port)
    prom_log = tmp / "prometheus.log"
    s = Stack(f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{metrics_port}", service_log, prom_log, produced,
              time.time())
    # Prometheus first, and the service only once Prometheus scrapes its (still closed) port: the
    # first scrape of the service then sees its counters at 0, before the partition assignment
    # (a few seconds after the start on Tansu), so rebalances show in increase(). Prometheus
    # starts scraping a few seconds after it is ready (its discovery updates are throttled to 5 s).
    with prom_log.open("wb") as out:
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp)
    service: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while not (_port_open(prom_port) and http_status(f"{s.prom_url}/-/ready") == 200):
            assert prom.poll() is None, f"prometheus exited with {prom.returncode}\n{s.context()}"
            assert time.monotonic() < deadline, f"prometheus never became ready\n{s.context()}"
            time.sleep(0.2)
        while s.scalar('up{job="streamdetect"}') is None:
            assert prom.poll() is None, f"prometheus exited with {prom.returncode}\n{s.context()}"
            assert time.monotonic() < deadline, f"prometheus never scraped the service's port\n{s.context()}"
            time.sleep(0.2)
        with service_log.open("wb") as out:
            service = subprocess.Popen([*cli, "run"], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, cwd=tmp)
        # the service creates its output topics and joins the group; then the events go in
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert service.poll() is None, f"streamdetect run exited with {service.returncode}\n{s.context()}"
            status, _ = http_json(f"{s.metrics_url}/readyz", timeout=2) if _port_open(metrics_port) else (0, None)
            if status == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"streamdetect never became ready\n{s.context()}")
        result = subprocess.run([*cli, "produce", str(events), "--topic", topics["input"]], env=env, cwd=tmp,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

        # wait until every event is consumed, windows are scored, checkpoints written, and Prometheus
        # has several scrapes of all that
        deadline = time.monotonic() + SERVICE_TIMEOUT
        waiting_for = "nothing yet"
        while time.monotonic() < deadline:
            assert service.poll() is None, f"streamdetect run exited with {service.returncode}\n{s.context()}"
            assert prom.poll() is None, f"prometheus exited with {prom.returncode}\n{s.context()}"
            checks = {
                "all events consumed": f'sum(streamdetect_events_consumed_total{{job="streamdetect"}}) >= {produced}',
                "windows scored": "sum(streamdetect_windows_scored_total) > 1000",
                "threshold calibrated": "count(streamdetect_threshold > -Inf < +Inf) > 0",
                "anomalies found": "sum(streamdetect_anomalies_total) > 0",
                "checkpoints written": 'sum(streamdetect_checkpoints_total{result="ok"}) > 0',
                "checkpoints timed": "sum(streamdetect_checkpoint_duration_seconds_count) > 0",
                "snapshot sizes": "min(streamdetect_checkpoint_bytes) > 0",
                "lag reported": "count(streamdetect_consumer_lag_messages) > 0",
                "several scrapes": 'count_over_time(up{job="streamdetect"}[1m]) >= 8',
            }
            missing = [name for name, expr in checks.items() if s.scalar(expr) is None]
            if not missing:
                break
            waiting_for = ", ".join(missing)
            time.sleep(1.0)
        else:
            pytest.fail(f"timed out waiting for: {waiting_for}\n{s.context()}")
        # let the rule evaluation and rate windows see the finished state a couple of times
        time.sleep(3.0)
        yield s
    finally:
        if service is not None:
            stop(service)
        stop(prom)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_target_is_up_and_healthy(stack: Stack) -> None:
    status, body = http_json(f"{stack.prom_url}/api/v1/targets")
    assert status == 200
    targets = [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "streamdetect"]
    assert len(targets) == 1 and targets[0]["health"] == "up", targets
    assert stack.scalar('up{job="streamdetect"}') == 1.0
    assert http_json(f"{stack.metrics_url}/healthz")[0] == 200
    status, body = http_json(f"{stack.metrics_url}/readyz")
    assert status == 200 and body["state_restored"] is True


def test_every_dashboard_panel_returns_data(stack: Stack) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 30
    known = {(title, ref) for title, ref, _ in targets}
    assert set(ZERO_IN_A_SHORT_RUN) <= known, "ZERO_IN_A_SHORT_RUN names a query the dashboard no longer has"
    assert set(MAY_STAY_ZERO) <= known, "MAY_STAY_ZERO names a query the dashboard no longer has"
    run_seconds = math.ceil(time.time() - stack.started) + 5
    failures = []
    for title, ref, raw in targets:
        expr = substitute(raw)
        where = f"{title} [{ref}]: {expr}"
        body = stack.query(expr)
        if body.get("status") != "success":
            failures.append(f"{where}: {body.get('errorType')}: {body.get('error')}")
            continue
        result = body["data"]["result"]
        if not result:
            failures.append(f"{where}: empty result (the panel would show 'No data')")
            continue
        values = [float(r["value"][1]) for r in result]
        if title in MUST_BE_FINITE_NOW and not all(math.isfinite(v) for v in values):
            failures.append(f"{where}: not finite now: {values}")
        # did any of its series show a finite, non-zero value at any time of the run (1 s steps)?
        shown = stack.query(f"count_over_time((({expr}) != 0 < +Inf > -Inf)[{run_seconds}s:1s])")
        assert shown.get("status") == "success", (where, shown)
        active = bool(shown["data"]["result"])
        if (title, ref) in MAY_STAY_ZERO:
            continue
        if (title, ref) in ZERO_IN_A_SHORT_RUN:
            if active:
                failures.append(f"{where}: listed in ZERO_IN_A_SHORT_RUN but showed a non-zero value; update the list")
        elif not active:
            peak = stack.query(f"max_over_time(({expr})[{run_seconds}s:1s])")["data"]["result"]
            failures.append(f"{where}: never showed a finite non-zero value during the run "
                            f"(peaks {[r['value'][1] for r in peak]})")
    assert not failures, "\n".join(failures) + "\n" + stack.context()


def test_key_panels_show_the_processing(stack: Stack) -> None:
    # every produced event was consumed; some were rejected (malformed); windows scored; alerts delivered
    consumed = stack.scalar('sum(streamdetect_events_consumed_total{job="streamdetect"})')
    assert consumed is not None and consumed >= stack.produced
    rejected = stack.scalar("sum(streamdetect_events_rejected_total)")
    assert rejected is not None and rejected > 0
    assert (stack.scalar("sum(streamdetect_alerts_produced_total)") or 0) > 0
    # the score quantiles sit below the threshold most of the time
    p50 = stack.scalar("histogram_quantile(0.5, sum by (le) (rate(streamdetect_anomaly_score_bucket[5m])))")
    threshold = stack.scalar("max(streamdetect_threshold)")
    assert p50 is not None and threshold is not None and math.isfinite(threshold) and p50 < threshold
    weights = stack.scalar("sum(streamdetect_model_component_weight) / count(count by (partition) "
                           "(streamdetect_model_component_weight))")
    assert weights == pytest.approx(1.0, abs=1e-6)  # mixture weights of each partition sum to 1
    assert stack.scalar("sum(streamdetect_assigned_partitions)") == 2.0
    assert stack.scalar('count(streamdetect_build_info{version=~".+", librdkafka=~".+"})') == 1.0


def test_every_rule_evaluates(stack: Stack) -> None:
    failures = []
    for name, expr, _is_alert in rule_exprs():
        body = stack.query(expr)
        if body.get("status") != "success":
            failures.append(f"{name}: {body.get('error')}")
    assert not failures, "\n".join(failures)

    status, body = http_json(f"{stack.prom_url}/api/v1/rules")
    assert status == 200
    groups = body["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {name for name, _, _ in rule_exprs()}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # the recording rules fed by the service have data
    for record in ("job:streamdetect_events_consumed:rate5m", "job:streamdetect_windows_scored:rate30m",
                   "job:streamdetect_anomaly_ratio:rate30m", "job:streamdetect_consumer_lag_messages:sum"):
        assert stack.query(record)["data"]["result"], record
    # a healthy service fires none of the service-health alerts
    firing = {a["labels"]["alertname"] for a in stack.query('ALERTS{alertstate="firing"}')["data"]["result"]}
    assert not firing & {"StreamdetectDown", "StreamdetectStalled", "StreamdetectDeliveryFailures"}


def test_exported_names_match_the_dashboard(stack: Stack) -> None:
    """Every streamdetect_* series name Prometheus stored is one the dashboard or the rules know."""
    status, body = http_json(f"{stack.prom_url}/api/v1/label/__name__/values")
    assert status == 200
    stored = {n for n in body["data"] if n.startswith("streamdetect_")}
    used = set(re.findall(r"(?<![\w:])streamdetect_\w+", DASHBOARD.read_text()))
    for _, expr, _ in rule_exprs():
        used |= set(re.findall(r"(?<![\w:])streamdetect_\w+", expr))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in stored}
    used_families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - used_families == set()
    assert not [n for n in stored if n.endswith("_created")]
