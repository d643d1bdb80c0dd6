"""``streamdetect demo``: broker, generator, service, metrics and a live terminal view in one process.

Pieces, each in its own thread, all stopped by :meth:`Demo.stop` (Ctrl-C or ``--duration``):

* the embedded Tansu broker (unless bootstrap servers are configured) with the topics created;
* the generator (:mod:`streamdetect.generate`) replaying a time-compressed scenario: ``speed``
  simulated seconds per wall-clock second, capped at ``rate`` events per second, keyed by store so
  that a store's events stay in one partition;
* the service (:class:`~streamdetect.kafka.service.Service`) with its metrics endpoint;
* an alerts reader on the alerts topic, feeding the view.

The view redraws once a second with plain ANSI escapes (no extra dependency).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from streamdetect.alerts import Alert, EpisodeResolved, read_message
from streamdetect.settings import AppConfig

__all__ = ["Demo", "DemoOptions", "render"]

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    """What ``streamdetect demo`` was asked for (see its ``--help``)."""

    speed: float = 1200.0
    rate: float = 5000.0
    stores: int = 12
    days: int = 14
    seed: int = 0
    malformed: float = 0.002
    duration: float = 0.0
    view: bool = True


@dataclass
class _Counters:
    produced: int = 0
    sim_ms: int | None = None
    done: bool = False
    alerts: deque[Alert | EpisodeResolved] = field(default_factory=lambda: deque(maxlen=12))
    alerts_seen: int = 0
    rates: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=6))


class Demo:
    """Runs the demo until :meth:`stop`; see the module docstring."""

    def __init__(self, config: AppConfig, options: DemoOptions, *, metrics_url: str | None, metrics: Any,
                 health: Any, out: IO[str] | None = None) -> None:
        self.config = config
        self.options = options
        self.metrics_url = metrics_url
        self.metrics = metrics
        self.health = health
        self.out = out if out is not None else sys.stdout
        self.counters = _Counters()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.service: Any = None
        self._last_parts: dict[int, dict[str, Any]] = {}  # the partitions the view last saw
        self.started = time.monotonic()

    # -- threads ----------------------------------------------------------------------------------

    def _generate(self) -> None:
        from streamdetect.generate import GeneratorConfig, encode_event, iter_events
        from streamdetect.kafka.clients import producer_config
        from streamdetect.kafka.producer import OutputProducer

        o = self.options
        gen = GeneratorConfig(stores=o.stores, days=o.days, seed=o.seed, malformed_fraction=o.malformed,
                              clean_days=0, anomalies_per_store_week=7.0)
        producer = OutputProducer(producer_config(self.config.kafka))
        # The first topic given by name (the service may subscribe to patterns beside it).
        topic = self.config.kafka.named_input_topics[0]
        first_arrival: int | None = None
        started = time.monotonic()
        n = 0
        finished = False
        try:
            for arrival_ms, event in iter_events(gen).iter_with_arrival():
                if self._stop.is_set():
                    break
                if first_arrival is None:
                    first_arrival = arrival_ms
                # simulated time runs `speed` times faster than the wall clock, and never above `rate`
                due = max((arrival_ms - first_arrival) / 1000.0 / o.speed, n / o.rate if o.rate > 0 else 0.0)
                wait = due - (time.monotonic() - started)
                if wait > 0:
                    producer.poll(0)
                    if self._stop.wait(min(wait, 0.5)):
                        break
                key = event["store_id"].encode() if isinstance(event, dict) and isinstance(
                    event.get("store_id"), str) else None
                producer.produce(topic, encode_event(event), key)
                n += 1
                self.counters.produced = n
                self.counters.sim_ms = arrival_ms
                if n % 1000 == 0:
                    producer.poll(0)
            else:
                finished = True
        finally:
            producer.flush(10.0)
            self.counters.done = finished

    def _read_alerts(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from streamdetect.kafka.clients import reader_config

        conf = reader_config(self.config.kafka)
        conf["enable.partition.eof"] = False
        conf["group.id"] = f"{self.config.kafka.group_id}-demo-view"
        consumer = Consumer(conf)
        topic = self.config.kafka.alerts_topic
        try:
            md = consumer.list_topics(topic, timeout=10)
            parts = md.topics[topic].partitions if topic in md.topics else {0: None}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.5):
                    value = msg.value() if msg.error() is None else None
                    if value:
                        try:
                            message = read_message(value)
                            self.counters.alerts.append(message)
                            self.counters.alerts_seen += isinstance(message, Alert)
                        except (orjson.JSONDecodeError, TypeError, KeyError):
                            continue
        finally:
            consumer.close()

    def _run_service(self) -> None:
        try:
            self.service.run()
        finally:
            self._stop.set()

    def start(self) -> None:
        from streamdetect.kafka.service import Service

        self.service = Service(self.config, metrics=self.metrics, health=self.health)
        for target, name in ((self._run_service, "service"), (self._generate, "generator"),
                             (self._read_alerts, "alerts-view")):
            t = threading.Thread(target=target, name=f"demo-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self.service is not None:
            self.service.request_stop()
        for t in self._threads:
            t.join(timeout=max(10.0, self.config.kafka.shutdown_timeout + 5))

    def run(self) -> None:
        """Start, refresh the view every second, stop at ``duration`` or on Ctrl-C."""
        self.start()
        try:
            while not self._stop.is_set():
                if self.options.duration and time.monotonic() - self.started >= self.options.duration:
                    break
                self._draw()
                self._stop.wait(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            self._draw(final=True)

    # -- view -------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the view shows, as plain values (also used by tests)."""
        svc = self.service
        totals = svc.totals if svc is not None else None
        now = time.monotonic()
        consumed = totals.events if totals is not None else 0
        c = self.counters
        c.rates.append((now, c.produced, consumed))
        t0, p0, e0 = c.rates[0]
        span = max(now - t0, 1e-9)
        parts: dict[int, dict[str, Any]] = {}
        if svc is not None:
            for (_, p), ps in sorted(svc.parts.items()):
                try:
                    st = ps.detector.stats()
                    parts[p] = {"warmed_up": bool(st.warmed_up), "threshold": float(st.threshold),
                                "windows": int(getattr(ps.detector, "windows_scored", 0)),
                                "lag": totals.lag.get((ps.topic, p), 0) if totals is not None else 0}
                except Exception:  # the service thread may be swapping the detector right now
                    continue
        # After shutdown (and for a moment in a rebalance) the service holds no partition: the
        # view keeps showing the last ones it saw, so the final frame still has them.
        if parts:
            self._last_parts = parts
        else:
            parts = self._last_parts
        return {
            "elapsed": now - self.started,
            "sim_time": c.sim_ms,
            "produced": c.produced,
            "consumed": consumed,
            "produce_rate": (c.produced - p0) / span if len(c.rates) > 1 else 0.0,
            "consume_rate": (consumed - e0) / span if len(c.rates) > 1 else 0.0,
            "windows": totals.windows if totals is not None else 0,
            "rejected": totals.rejected if totals is not None else 0,
            "alerts": c.alerts_seen,
            "recent_alerts": list(c.alerts),
            "partitions": parts,
            "lag": sum(v["lag"] for v in parts.values()),
            "generator_done": c.done,
            "metrics_url": self.metrics_url,
            "phase": svc.phase if svc is not None else "starting",
        }

    def _draw(self, final: bool = False) -> None:
        text = render(self.snapshot(), width=shutil.get_terminal_size((100, 30)).columns)
        if self.options.view and not final:
            self.out.write("\x1b[H\x1b[2J" + text)
        else:
            self.out.write(text + "\n")
        self.out.flush()


def render(s: dict[str, Any], width: int = 100) -> str:
    """The view as text (ANSI bold/colours only; no cursor tricks here)."""
    from streamdetect.alerts import format_time

    bold, dim, red, yellow, green, reset = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[0m"
    sim = format_time(int(s["sim_time"])) if s["sim_time"] is not None else "-"
    lines = [
        f"{bold}streamdetect demo{reset}  {dim}{s['elapsed']:6.0f} s elapsed, simulated time {sim}"
        f"{' (generator finished)' if s['generator_done'] else ''}{reset}",
        f"metrics: {s['metrics_url'] or 'disabled'}/metrics   (Ctrl-C to stop)" if s["metrics_url"]
        else "metrics: disabled   (Ctrl-C to stop)",
        "",
        f"events produced {s['produced']:>10,}  ({s['produce_rate']:8,.0f}/s)     "
        f"consumed {s['consumed']:>10,}  ({s['consume_rate']:8,.0f}/s)     lag {s['lag']:>7,}",
        f"windows scored  {s['windows']:>10,}     rejected (DLQ) {s['rejected']:>8,}     alerts {s['alerts']:>6,}",
        "",
        f"{bold}partition    warmed up  threshold   windows  lag{reset}",
    ]
    if not s["partitions"]:  # nothing assigned yet: say what the service is doing meanwhile
        lines.append(f"{dim}(the service is {s.get('phase', 'starting')}){reset}")
    for p, info in s["partitions"].items():
        # An infinite threshold is one still calibrating on its first scores: nothing can cross it.
        calibrated = math.isfinite(info["threshold"])
        warm = ("yes" if calibrated else "calibrating") if info["warmed_up"] else "warming"
        warm = f"{warm:>11}" if warm == "yes" else f"{yellow}{warm:>11}{reset}"
        threshold = f"{info['threshold']:>9.3g}" if calibrated else f"{'-':>9}"
        lines.append(f"{p:>9}  {warm}  {threshold}  {info['windows']:>8,}  {info['lag']:>5,}")
    lines += ["", f"{bold}latest alerts{reset}"]
    if not s["recent_alerts"]:
        lines.append(f"{dim}(none yet: the detector warms up first){reset}")
    for a in reversed(s["recent_alerts"]):
        key = "|".join(a.key.values())
        if isinstance(a, EpisodeResolved):  # the end of an episode: when and what it was
            colour, when, label = green, a.resolved_at, "resolved"
        else:
            colour, when, label = red if a.severity == "critical" else yellow, a.window_start, a.severity
        text = f"{when}  {key:<10} {colour}{label:<8}{reset} {a.explanation}"
        lines.append(text[: width + len(colour) + len(reset)])
    return "\n".join(lines) + "\n"
