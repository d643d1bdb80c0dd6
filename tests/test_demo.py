"""``streamdetect demo`` as the README runs it: embedded broker, generator, service, metrics, view."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from streamdetect.kafka.broker import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "streamdetect"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from streamdetect.cli import main; sys.exit(main())"]


def _env_without_settings() -> dict[str, str]:
    """The environment without STREAMDETECT_* settings: no bootstrap servers, the embedded broker."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMDETECT_")}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_default_demo_shows_alerts_within_a_minute(tmp_path: Path) -> None:
    """The default scenario and speed, no bootstrap servers: alerts within 60 s, then a clean exit."""
    port = free_port()
    env = _env_without_settings()
    log = tmp_path / "demo.log"
    proc = subprocess.Popen([*_cli(), "demo", "--duration", "60", "--no-view", "--metrics-port", str(port),
                             "--log-file", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    scraped: dict[str, float] = {}
    health: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            status, body = _get(f"http://127.0.0.1:{port}/metrics")
            if status == 200:
                text = body.decode()
                for name in ("streamdetect_events_consumed_total", "streamdetect_windows_scored_total",
                             "streamdetect_alerts_produced_total"):
                    scraped[name] = max(scraped.get(name, 0.0), _metric(text, name))
                health.add(_get(f"http://127.0.0.1:{port}/healthz")[0])
            time.sleep(1.0)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stderr[-3000:]
    # the final view: events flowed, windows were scored and alerts arrived
    final = stdout[stdout.rfind("streamdetect demo"):]
    alerts = [int(x.replace(",", "")) for x in re.findall(r"alerts\s+([\d,]+)", final)]
    windows = [int(x.replace(",", "")) for x in re.findall(r"windows scored\s+([\d,]+)", final)]
    assert alerts and alerts[-1] > 0, final
    assert windows and windows[-1] > 1000, final
    assert "latest alerts" in final and re.search(r" sd (above|below) ", final)  # an alert with its explanation
    # the final frame still lists the partitions the service held (not an empty table)
    assert re.search(r"^\s+\d+\s+\S*(yes|calibrating|warming)", final, re.M), final
    # the metrics endpoint served the same story, and liveness was reported
    assert scraped["streamdetect_events_consumed_total"] > 10_000
    assert scraped["streamdetect_windows_scored_total"] > 0 and scraped["streamdetect_alerts_produced_total"] > 0
    assert 200 in health
    # the embedded broker is gone with the demo
    match = re.search(r"embedded broker 127\.0\.0\.1:(\d+)", stderr)
    assert match, stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(match.group(1)))) != 0
    # logs went to the log file, as JSON lines
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(orjson.loads(line)["level"] for line in lines)


def test_a_demo_given_only_topic_patterns_says_what_to_add() -> None:
    """The demo produces its sales by topic name: with patterns alone it would produce into nothing
    (a topic named after the regular expression) and wait forever; it refuses at once instead."""
    env = _env_without_settings()
    proc = subprocess.run([*_cli(), "demo", "--input-topic", "^shop-sales-.*", "--duration", "30", "--no-view"],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "only patterns (^shop-sales-.*)" in proc.stderr and "--input-topic NAME" in proc.stderr
    assert "embedded broker" not in proc.stderr  # refused before anything started


def test_a_demo_with_a_topic_pattern_beside_a_name_runs(tmp_path: Path) -> None:
    """A pattern and a topic by name that it matches, the pattern first: the sales go to the named
    topic and the service, subscribed to both, scores them."""
    env = _env_without_settings()
    proc = subprocess.run([*_cli(), "demo", "--input-topic", "^shop-sales-.*", "--input-topic", "shop-sales-eu",
                           "--duration", "25", "--no-view", "--metrics-port", str(free_port()),
                           "--log-file", str(tmp_path / "demo.log")],
                          capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = proc.stdout[proc.stdout.rfind("streamdetect demo"):]
    consumed = [int(x.replace(",", "")) for x in re.findall(r"consumed\s+([\d,]+)", final)]
    windows = [int(x.replace(",", "")) for x in re.findall(r"windows scored\s+([\d,]+)", final)]
    assert consumed and consumed[-1] > 1000, final
    assert windows and windows[-1] > 0, final


def _rendered(**state: object) -> str:
    """The view of a snapshot (``state`` overrides a quiet one's entries), without its colours."""
    from streamdetect.demo import render

    snapshot = {"elapsed": 5.0, "sim_time": 780_000, "generator_done": False, "metrics_url": None, "produced": 10,
                "produce_rate": 1.0, "consumed": 10, "consume_rate": 1.0, "lag": 0, "windows": 3, "rejected": 0,
                "alerts": 0, "partitions": {}, "recent_alerts": [], **state}
    return re.sub(r"\x1b\[[0-9;]*m", "", render(snapshot, width=200))


def test_the_view_shows_the_end_of_an_episode_apart_from_its_alerts() -> None:
    """The alerts pane lists what the alerts topic carries: an alert by its window and severity, the
    end of its episode as `resolved` with its explanation."""
    from streamdetect.alerts import Alert, EpisodeResolved

    key = {"store_id": "store-003"}
    alert = Alert.build(key=key, window_start_ms=60_000, window_end_ms=120_000, score=40.0, threshold=20.0,
                        probability=0.9999999, severity="critical", features={}, contributions=[],
                        model_version="m", detected_at_ms=120_000)
    end = EpisodeResolved.build(key=key, episode_start_ms=60_000, episode_end_ms=120_000, alerts=1, peak_score=40.0,
                                peak_severity="critical", resolved_at_ms=780_000, calm_windows=11, reason="calm",
                                model_version="m", detected_at_ms=780_000)
    text = _rendered(alerts=1, recent_alerts=[alert, end])
    lines = text.splitlines()
    resolved = next(i for i, line in enumerate(lines) if "resolved" in line)
    critical = next(i for i, line in enumerate(lines) if "critical" in line)
    assert resolved < critical  # newest first
    assert lines[resolved].startswith("1970-01-01T00:13:00Z  store-003") and end.explanation in lines[resolved]
    assert lines[critical].startswith("1970-01-01T00:01:00Z  store-003")


def test_the_view_says_which_partitions_still_calibrate_their_threshold() -> None:
    """A partition past its warm-up whose threshold has not seen enough scores yet (an infinite
    threshold: nothing crosses it) reads `calibrating` with no threshold, not `yes` and `inf`."""
    partitions = {
        0: {"warmed_up": False, "threshold": float("inf"), "windows": 10, "lag": 5},
        1: {"warmed_up": True, "threshold": float("inf"), "windows": 200, "lag": 0},
        2: {"warmed_up": True, "threshold": 39.8, "windows": 3_000, "lag": 0},
    }
    text = _rendered(partitions=partitions)
    rows = {int(m.group(1)): m.group(2).split() for m in re.finditer(r"^\s+(\d)\s+(.*)$", text, re.M)}
    assert rows == {0: ["warming", "-", "10", "5"], 1: ["calibrating", "-", "200", "0"],
                    2: ["yes", "39.8", "3,000", "0"]}
    assert "inf" not in text


def test_the_view_says_what_the_service_does_before_it_holds_a_partition() -> None:
    """A first run compiles the detector's kernels for half a minute before it joins the group:
    the view says so instead of showing nothing consumed and no partition without a word."""
    compiling = _rendered(consumed=0, phase="compiling the detector's kernels (cached after the first run)")
    assert "(the service is compiling the detector's kernels" in compiling
    running = _rendered(partitions={0: {"warmed_up": False, "threshold": math.inf, "windows": 0, "lag": 0}},
                        phase="consuming")
    assert "the service is" not in running and "warming" in running
