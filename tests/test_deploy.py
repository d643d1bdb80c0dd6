"""The deployment files agree with the code: ports, topics, settings, metric names, probes.

Parses ``docker-compose.yml``, ``Dockerfile``, ``deploy/kubernetes/*.yaml``, the Prometheus config
and rules and the Grafana provisioning, and runs ``promtool`` (skipped only where it is not
installed; CI installs it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamdetect._jit import SEED_ENV
from streamdetect.metrics import DEFAULT_METRICS_PATH, DEFAULT_METRICS_PORT, METRIC_NAMES, Metrics
from streamdetect.settings import ENV_CONFIG, AppConfig, KafkaConfig, MetricsConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "kubernetes"

# Metric names as they appear in a query, e.g. streamdetect_anomaly_score_bucket; not the recording
# rules (job:streamdetect_...:rate5m) whose names contain them after a colon.
METRIC_RE = re.compile(r"(?<![\w:])(streamdetect_[a-zA-Z0-9_]+)(?![\w:])")
SELECTOR_RE = re.compile(r"(?<![\w:])(streamdetect_[a-zA-Z0-9_]+)\{([^}]*)\}")


# -- helpers -------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data = load_yaml(ROOT / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes, by kind."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                assert doc["kind"] not in out, f"two {doc['kind']} objects"
                out[doc["kind"]] = doc
    return out


def dashboard() -> dict[str, Any]:
    data = json.loads((GRAFANA / "dashboards" / "streamdetect.json").read_text())
    assert isinstance(data, dict)
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard."""
    return [(p["title"], t["expr"]) for p in iter_panels(dashboard()["panels"]) for t in p.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    out = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            out.extend(group["rules"])
    return out


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def exposed_names() -> set[str]:
    """Every sample name the Metrics registry can expose (``_total``, ``_bucket``/``_sum``/``_count``)."""
    names: set[str] = set()
    for family in Metrics(process_collectors=False).registry.collect():
        if not family.name.startswith("streamdetect_"):
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            # as exposed: no _sum where buckets are negative (anomaly scores), per OpenMetrics
            names.update(sample.name for sample in family.samples)
        else:
            names.add(family.name)
    return names


def family_of(sample_name: str) -> str:
    """The METRIC_NAMES key of a sample name: strips ``_bucket``/``_sum``/``_count`` of histograms only."""
    if sample_name in METRIC_NAMES:
        return sample_name
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample_name.removesuffix(suffix)
        if base != sample_name and METRIC_NAMES.get(base, ("",))[0] == "histogram":
            return base
    raise AssertionError(f"{sample_name} is not a metric that streamdetect registers")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def kafka_init_topics() -> dict[str, dict[str, str]]:
    """Topics that the compose ``kafka-init`` service creates: name -> {partitions, config}."""
    command = compose()["services"]["kafka-init"]["command"]
    text = command if isinstance(command, str) else "\n".join(command)
    topics: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if "--create" not in line:
            continue
        args = shlex.split(line)
        opts: dict[str, str] = {}
        for flag in ("--topic", "--partitions", "--config"):
            if flag in args:
                opts[flag.lstrip("-")] = args[args.index(flag) + 1]
        topics[opts.pop("topic")] = opts
    return topics


# -- metric names in the dashboard and the rules ---------------------------------------------------------


def test_metric_suffix_rules() -> None:
    assert family_of("streamdetect_anomaly_score_bucket") == "streamdetect_anomaly_score"
    assert family_of("streamdetect_events_consumed_total") == "streamdetect_events_consumed_total"
    assert family_of("streamdetect_threshold") == "streamdetect_threshold"
    with pytest.raises(AssertionError):
        family_of("streamdetect_events_consumed")  # a counter is only exposed with _total
    with pytest.raises(AssertionError):
        family_of("streamdetect_threshold_count")  # only histograms have _count
    assert METRIC_RE.findall("job:streamdetect_events:rate5m / streamdetect_x_total") == ["streamdetect_x_total"]


def test_every_referenced_metric_is_registered() -> None:
    exposed = exposed_names()
    recorded = recorded_names()
    sources = [(f"panel {title!r}", expr) for title, expr in dashboard_exprs()]
    sources += [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    referenced: set[str] = set()
    for where, expr in sources:
        names = METRIC_RE.findall(expr)
        for name in names:
            assert name in exposed, f"{where} uses {name}, which Metrics does not expose"
            referenced.add(family_of(name))
        for name, matchers in SELECTOR_RE.findall(expr):
            labels = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
            allowed = {*METRIC_NAMES[family_of(name)][1], "job", "instance", "le"}
            assert labels <= allowed, f"{where}: {name} has no label(s) {labels - allowed}"
        # recording rules used in an expr must be defined
        for rec in re.findall(r"[a-z_]+:streamdetect_[a-z_]+:[a-z0-9_]+|streamdetect:[a-z_]+", expr):
            assert rec in recorded, f"{where} uses recording rule {rec}, which no rule defines"
    # and the other way round: every metric is shown or alerted on somewhere
    assert set(METRIC_NAMES) - referenced == set()


# -- Prometheus ---------------------------------------------------------------------------------------------


def test_prometheus_scrape_config_matches_the_service() -> None:
    cfg = load_yaml(PROM / "prometheus.yml")
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    job = jobs["streamdetect"]
    assert job.get("metrics_path", "/metrics") == DEFAULT_METRICS_PATH == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"streamdetect:{DEFAULT_METRICS_PORT}"]
    assert DEFAULT_METRICS_PORT == MetricsConfig().port == 9108
    services = compose()["services"]
    assert "streamdetect" in services  # the target's host name is the compose service name
    # rule_files are relative to the config file: the same layout in the repo and in the container
    rule_globs = cfg["rule_files"]
    assert rule_globs == ["rules/*.yml"]
    assert sorted((PROM / "rules").glob("*.yml"))
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_alert_rules_are_documented() -> None:
    alerts = [r for r in rules() if "alert" in r]
    names = {r["alert"] for r in alerts}
    assert {"StreamdetectDown", "StreamdetectStalled", "StreamdetectConsumerLagHigh", "StreamdetectRejectRateHigh",
            "StreamdetectAnomalyRateHigh", "StreamdetectAnomalyRateLow", "StreamdetectScoreDrift",
            "StreamdetectThresholdJump", "StreamdetectCheckpointTooOld", "StreamdetectDeliveryFailures"} <= names
    for rule in alerts:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    # every alert has a firing case in the promtool unit tests
    tested = set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert names == tested
    doc = (ROOT / "README.md").read_text()
    for name in names:
        assert name in doc, f"{name} is not described in README.md"


def test_expected_anomaly_ratio_is_the_threshold_risk() -> None:
    """The rules' expected anomaly ratio is the detector's false-alarm risk, as configured in the ConfigMap."""
    from streamdetect.config import ThresholdConfig

    (rule,) = [r for r in rules() if r.get("record") == "streamdetect:anomaly_ratio_expected"]
    match = re.fullmatch(r"vector\(([0-9.e+-]+)\)", rule["expr"].strip())
    assert match, rule["expr"]
    cm = k8s_docs()["ConfigMap"]
    (toml_text,) = cm["data"].values()
    k8s_risk = tomllib.loads(toml_text)["detector"]["threshold"]["risk"]
    assert float(match.group(1)) == ThresholdConfig().risk == k8s_risk


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool is not None, (
        "promtool is not on PATH: `apt-get install prometheus` (scripts/test.sh does), or deselect with "
        "-m 'not prometheus'")
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_scripts_test_sh_runs_promtool_on_these_files() -> None:
    """CI (scripts/test.sh) runs promtool on the same files as the tests below."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "promtool check config deploy/prometheus/prometheus.yml" in script
    assert "promtool check rules deploy/prometheus/rules/*.yml" in script
    assert "promtool test rules deploy/prometheus/tests/*.yml" in script
    assert sorted((PROM / "rules").glob("*.yml")) and sorted((PROM / "tests").glob("*.yml"))


@pytest.mark.prometheus
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # rule_files resolves relative to the config file


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@pytest.mark.prometheus
def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", *map(str, sorted((PROM / "tests").glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    """The rule unit tests are not vacuous: expecting a healthy scenario to fire makes promtool fail."""
    tests = load_yaml(PROM / "tests" / "streamdetect.rules.test.yml")
    tests["rule_files"] = [str(PROM / "rules" / "streamdetect.rules.yml")]
    healthy = tests["tests"][0]
    check = next(c for c in healthy["alert_rule_test"] if c["alertname"] == "StreamdetectStalled")
    check["exp_alerts"] = [{"exp_labels": {"severity": "critical", "job": "streamdetect", "instance": "sd:9108"}}]
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", str(path))
    assert result.returncode != 0 and "StreamdetectStalled" in result.stdout + result.stderr


# -- Grafana ------------------------------------------------------------------------------------------------


def test_grafana_provisioning() -> None:
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = ds["datasources"]
    assert (source["uid"], source["type"]) == ("prometheus", "prometheus")
    assert source["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "streamdetect.yml")["providers"]
    path = providers[0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_dashboard_conventions() -> None:
    d = dashboard()
    assert d["uid"] == "streamdetect-overview" and d["id"] is None
    assert "__inputs" not in d
    panels = list(iter_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    datasource = {"type": "prometheus", "uid": "prometheus"}
    titles = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == datasource
            expr = t["expr"]
            # no hard-coded range vectors: rate()/increase() use $__rate_interval
            assert not re.search(r"\[\d+[smhdw]\]", expr), (panel["title"], expr)
            for fn in re.findall(r"\b(rate|increase|irate)\(", expr):
                assert "[$__rate_interval]" in expr, (panel["title"], fn)
            assert 'instance=~"$instance"' in expr, (panel["title"], expr)
    variables = {v["name"] for v in d["templating"]["list"]}
    assert variables == {"instance"}
    # the dashboard shows what the issue asks for
    joined = " ".join(expr for _, expr in dashboard_exprs())
    for needle in ("histogram_quantile(", "streamdetect_anomaly_score_bucket", "streamdetect_threshold",
                   "streamdetect_score_drift", "streamdetect_anomalies_total", "streamdetect_events_rejected_total",
                   "streamdetect_model_log_likelihood", "streamdetect_model_component_weight",
                   "streamdetect_model_updates_total", "streamdetect_checkpoints_total",
                   "streamdetect_rebalances_total", "streamdetect_consumer_lag_messages"):
        assert needle in joined, needle
    assert any(p["type"] == "heatmap" for p in panels)


def test_dashboard_layout() -> None:
    """Panels sit inside the 24-column grid without overlapping; rows span the full width."""
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels(dashboard()["panels"]):
        g = panel["gridPos"]
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert (g["x"], g["w"], g["h"]) == (0, 24, 1), panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


# -- docker-compose -----------------------------------------------------------------------------------------


def _check_env_maps_to_settings(env: dict[str, str]) -> AppConfig:
    """Every STREAMDETECT_* variable is a real setting, and its value arrives there."""
    for name, value in env.items():
        if not name.startswith("STREAMDETECT_") or name == ENV_CONFIG:
            continue
        cfg = load_config(env={name: value})  # raises ConfigError on an unknown setting
        section, setting = name.removeprefix("STREAMDETECT_").lower().split("__", 1)
        actual = getattr(getattr(cfg, section), setting)
        expected = tuple(value.split(",")) if isinstance(actual, tuple) else value
        assert str(actual) == str(expected), name
    return load_config(env={k: v for k, v in env.items() if k != ENV_CONFIG})


def test_compose_topics_and_settings() -> None:
    services = compose()["services"]
    defaults = KafkaConfig()
    topics = kafka_init_topics()
    assert topics == {
        "sales": {"partitions": "6"},
        "sales-anomalies": {"partitions": "6"},
        "sales-dlq": {"partitions": "1"},
        "streamdetect-state": {"partitions": "6", "config": "cleanup.policy=compact"},
    }
    assert set(topics) == {*defaults.input_topics, defaults.alerts_topic, defaults.dlq_topic, defaults.state_topic}

    sd = services["streamdetect"]
    assert sd["build"] == "." and sd["command"] == ["run"]
    env = env_of(sd)
    assert env["STREAMDETECT_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert env["STREAMDETECT_METRICS__PORT"] == str(DEFAULT_METRICS_PORT)
    cfg = _check_env_maps_to_settings(env)
    assert set(cfg.kafka.input_topics) | {cfg.kafka.alerts_topic, cfg.kafka.dlq_topic, cfg.kafka.state_topic} == set(
        topics)
    assert f"{DEFAULT_METRICS_PORT}:{cfg.metrics.port}" in sd["ports"]
    # kafka:19092 is the in-network listener of the broker
    kafka_env = env_of(services["kafka"])
    assert "PLAINTEXT://kafka:19092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert services["kafka"]["image"] == services["kafka-init"]["image"] == "apache/kafka:4.1.0"

    gen = services["generator"]
    _check_env_maps_to_settings(env_of(gen))
    script = "\n".join(gen["command"]) if isinstance(gen["command"], list) else gen["command"]
    assert "streamdetect generate" in script and "streamdetect produce" in script
    assert f"--topic {cfg.kafka.input_topics[0]}" in script
    for name in ("prometheus", "grafana", "kafka"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image


def test_compose_generator_commands_parse() -> None:
    """The generator's command lines are valid for the real CLI parser."""
    from streamdetect.cli import build_parser

    gen = compose()["services"]["generator"]
    script = "\n".join(gen["command"]) if isinstance(gen["command"], list) else gen["command"]
    parser = build_parser()
    n = 0
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("streamdetect "):
            args = parser.parse_args(shlex.split(line)[1:])
            assert callable(args.handler)
            n += 1
    assert n == 2


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(rf"^EXPOSE {DEFAULT_METRICS_PORT}$", text, re.M)
    assert 'ENTRYPOINT ["streamdetect"]' in text
    assert 'CMD ["run"]' in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert "pip install ." in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_compiled_kernels_cache_where_the_pod_can_write() -> None:
    # The Deployment's root filesystem is read-only: numba's cache must lie on a writable mount,
    # or every start compiles the feature kernels afresh (and a pod without any writable cache
    # directory would only do that, see streamdetect._jit.compiled).
    cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", (ROOT / "Dockerfile").read_text())
    assert cache, "the image sets NUMBA_CACHE_DIR"
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty and not m.get("readOnly")]
    assert any(cache.group(1).startswith(path.rstrip("/") + "/") for path in writable), (cache.group(1), writable)


def test_image_compiles_the_kernels_ahead_into_its_seed() -> None:
    # The build step writes numba's cache where the seed variable points, with the same
    # compile_kernels() the service runs; the running container's cache directory is another.
    text = (ROOT / "Dockerfile").read_text()
    seed = re.search(r"STREAMDETECT_KERNEL_CACHE_SEED=(\S+)", text)
    assert seed, "the image names its compiled kernels"
    build = re.search(r"^RUN NUMBA_CACHE_DIR=(\S+) \\\n\s+python -c .*compile_kernels\(\)", text, re.M)
    assert build and build.group(1) == seed.group(1)
    cache = re.search(r"NUMBA_CACHE_DIR=(/tmp\S+)", text)
    assert cache and cache.group(1) != seed.group(1)


def test_seed_cache_copies_only_what_the_cache_lacks(tmp_path: Path) -> None:
    from streamdetect._jit import seed_cache

    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "streamdetect_ab12").mkdir(parents=True)
    (seed / "streamdetect_ab12" / "k.nbi").write_bytes(b"index")
    (seed / "streamdetect_ab12" / "k.1.nbc").write_bytes(b"code")
    (cache / "streamdetect_ab12").mkdir(parents=True)
    (cache / "streamdetect_ab12" / "k.nbi").write_bytes(b"newer index")  # the process's own: kept
    assert seed_cache(seed, cache) == 1
    assert (cache / "streamdetect_ab12" / "k.1.nbc").read_bytes() == b"code"
    assert (cache / "streamdetect_ab12" / "k.nbi").read_bytes() == b"newer index"
    assert seed_cache(seed, cache) == 0  # nothing left to copy
    assert seed_cache(seed, seed) == 0 and seed_cache(tmp_path / "absent", cache) == 0
    assert seed_cache(None, cache) == 0 and seed_cache(seed, None) == 0


def _kernel_cache_use(cache_dir: Path, seed: Path | None) -> dict[str, int]:
    """In a new process with numba's cache in ``cache_dir`` (and a seed, if given), decode one
    timestamp with the compiled parser: how often numba found it in its cache, how often not."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", SEED_ENV)}
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    if seed is not None:
        env[SEED_ENV] = str(seed)
    code = (
        "import json; from streamdetect.events import _parse_canonical; "
        "from streamdetect._time_kernels import parse_canonical as k; "
        "_parse_canonical(['2024-03-01T12:00:00.000Z']); "
        "print(json.dumps({'hits': sum(k.stats.cache_hits.values()), 'misses': sum(k.stats.cache_misses.values())}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_seed_variable_is_not_taken_for_a_setting() -> None:
    # STREAMDETECT_* variables are settings, and a misspelt one fails the start: not this one.
    assert load_config(env={SEED_ENV: "/opt/streamdetect/kernels"}) == load_config(env={})


def test_a_seed_of_compiled_kernels_fills_an_empty_cache(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    assert _kernel_cache_use(seed, None)["misses"] == 1  # what the image's build step does: compile
    assert _kernel_cache_use(tmp_path / "pod", seed) == {"hits": 1, "misses": 0}
    assert _kernel_cache_use(tmp_path / "unseeded", None)["misses"] == 1


# -- Kubernetes ---------------------------------------------------------------------------------------------


def test_kubernetes_manifests() -> None:
    docs = k8s_docs()
    assert {"Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= set(docs)
    deploy, cm, svc, pdb = docs["Deployment"], docs["ConfigMap"], docs["Service"], docs["PodDisruptionBudget"]
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]

    # the ConfigMap's TOML is a valid config for the settings loader
    (toml_name,) = cm["data"]
    toml_path = next(e["value"] for e in container["env"] if e["name"] == ENV_CONFIG)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert toml_path == f"{mount['mountPath']}/{toml_name}"
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / toml_name
        path.write_text(cm["data"][toml_name])
        env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("STREAMDETECT_")}
        file_cfg = load_config(path, env={})
        cfg = load_config(path, env=env)
        _check_env_maps_to_settings(env)
    assert cfg.metrics.port == file_cfg.metrics.port == DEFAULT_METRICS_PORT

    # replicas <= partitions of the input topic
    partitions = int(kafka_init_topics()[cfg.kafka.input_topics[0]]["partitions"])
    assert 1 <= spec["replicas"] <= partitions
    # ports, probes, lifecycle, resources
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": cfg.metrics.port, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > cfg.kafka.shutdown_timeout
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["args"] == ["run"]
    assert pod["securityContext"]["runAsNonRoot"] is True

    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["name"] == "metrics" and svc_port["port"] == cfg.metrics.port
    assert svc_port["targetPort"] == "metrics"
    assert svc["metadata"]["annotations"]["prometheus.io/path"] == DEFAULT_METRICS_PATH
    if "ServiceMonitor" in docs:
        (endpoint,) = docs["ServiceMonitor"]["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == DEFAULT_METRICS_PATH
