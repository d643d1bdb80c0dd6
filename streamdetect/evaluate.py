"""Score alerts against labelled anomalies: precision, recall, F1 and detection delay.

Matching rule: an alert matches a label when its ``key`` agrees with every field of the label's
``key`` and its window ``[window_start, window_end)`` overlaps ``[start, end + tolerance)``, with
``tolerance = tolerance_windows * window_seconds`` (default 5 windows). An alert's key may hold
more fields than the label's: a store's anomaly is found by an alert on any of its channels or
SKUs when the detector runs keyed finer than the labels. The tolerance exists because a detector
can legitimately fire on the window *after* a change (the change may start late in a window, or
only become clear once the next window closes) and because context features (sums over the last
few windows, ``features.context_windows = 5``) keep an anomaly's effect visible for a few windows
after it ends.

* Alerts are first deduplicated by ``alert_id`` (at-least-once delivery may repeat them); an alert
  without an id gets :func:`streamdetect.alerts.alert_id` of its key and window.
* A label is *detected* when at least one alert matches it. ``recall = detected / labels``.
* An alert is a *true alert* when it matches some label. ``precision = true alerts / alerts``.
  F1 is their harmonic mean.
* Detection delay of a detected label = (first matching alert's ``window_start`` - label
  ``start``) / window length, in windows, floored at 0 (0 = the window in which it began).
* Per anomaly type: recall and delays over that type's labels. An alert that matches labels of
  several types counts for the type of the earliest-starting one. ``precision_type = TP_type /
  (TP_type + FP_all)``: the precision the detector would have if only that type of anomaly existed
  (its own true alerts against *all* false alerts).
* False alerts per key per day = false alerts / (keys x days); keys are the distinct keys of
  labels and alerts and days the span from the first to the last label or alert, unless given.
* Episodes: alerts of one ``episode_id`` (consecutive alerts of a key; an alert without one is
  an episode of its own) are what a pager that pages once per episode sends. An episode is false
  when none of its alerts is true; ``episode_precision = 1 - false episodes / episodes``.
* Undefined ratios (no alerts, no labels) are ``nan`` (``null`` in JSON).

>>> labels = [{"anomaly_id": "a1", "type": "spike", "key": {"store_id": "s1"},
...            "start": "2026-01-05T10:00:00Z", "end": "2026-01-05T10:10:00Z", "magnitude": 4.0}]
>>> def alert(minute, store="s1"):
...     return {"key": {"store_id": store}, "window_start": f"2026-01-05T10:{minute:02d}:00Z",
...             "window_end": f"2026-01-05T10:{minute + 1:02d}:00Z"}
>>> r = evaluate(labels, [alert(2), alert(3), alert(3), alert(30), alert(2, "s2")])
>>> r.n_alerts, r.n_duplicates, r.n_true_alerts, r.n_false_alerts
(4, 1, 2, 2)
>>> r.precision, r.recall, round(r.f1, 3), r.median_delay_windows
(0.5, 1.0, 0.667, 2.0)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamdetect.alerts import alert_id as make_alert_id
from streamdetect.generate import Label, parse_time_ms

__all__ = ["DEFAULT_TOLERANCE_WINDOWS", "EvaluationReport", "LabelResult", "TypeReport", "evaluate"]

DEFAULT_TOLERANCE_WINDOWS = 5.0
_NAN = float("nan")


@dataclass(frozen=True)
class LabelResult:
    """How one label fared: detected or not, the delay in windows, and how many alerts matched."""

    anomaly_id: str
    type: str
    key: dict[str, str]
    start: str
    end: str
    detected: bool
    delay_windows: float  # nan when not detected
    matching_alerts: int


@dataclass(frozen=True)
class TypeReport:
    """Results for one anomaly type (``precision`` is TP_type / (TP_type + FP_all))."""

    type: str
    labels: int
    detected: int
    true_alerts: int
    recall: float
    precision: float
    f1: float
    median_delay_windows: float
    mean_delay_windows: float


@dataclass(frozen=True)
class EvaluationReport:
    """Overall and per-type detection quality; see the module docstring for the definitions."""

    precision: float
    recall: float
    f1: float
    median_delay_windows: float
    mean_delay_windows: float
    p90_delay_windows: float
    n_alerts: int  # after deduplication
    n_duplicates: int
    n_true_alerts: int
    n_false_alerts: int
    n_labels: int
    n_detected: int
    n_keys: int
    span_days: float
    false_alerts_per_key_day: float
    window_seconds: float
    tolerance_windows: float
    per_type: dict[str, TypeReport] = field(default_factory=dict)
    label_results: list[LabelResult] = field(default_factory=list)
    n_episodes: int = 0
    n_false_episodes: int = 0
    episode_precision: float = _NAN
    false_episodes_per_key_day: float = _NAN

    def to_dict(self) -> dict[str, Any]:
        """Plain data (orjson writes ``nan`` as ``null``)."""
        return asdict(self)

    def format_table(self) -> str:
        """A readable summary: overall line, then one row per anomaly type.

        >>> print(evaluate([], []).format_table().splitlines()[0])
        alerts 0 (0 duplicates dropped) | true 0 | false 0 | labels 0 | detected 0
        """

        def f(x: float, digits: int = 3) -> str:
            return "n/a" if math.isnan(x) else f"{x:.{digits}f}"

        lines = [
            f"alerts {self.n_alerts} ({self.n_duplicates} duplicates dropped) | true {self.n_true_alerts}"
            f" | false {self.n_false_alerts} | labels {self.n_labels} | detected {self.n_detected}",
            f"precision {f(self.precision)} | recall {f(self.recall)} | F1 {f(self.f1)}"
            f" | delay (windows) median {f(self.median_delay_windows, 1)} mean {f(self.mean_delay_windows, 1)}"
            f" p90 {f(self.p90_delay_windows, 1)}",
            f"false alerts per key per day {f(self.false_alerts_per_key_day)}"
            f" ({self.n_keys} keys, {self.span_days:.2f} days; window {self.window_seconds:g} s,"
            f" tolerance {self.tolerance_windows:g} windows)",
            f"episodes {self.n_episodes} | false {self.n_false_episodes} | precision {f(self.episode_precision)}"
            f" | false episodes per key per day {f(self.false_episodes_per_key_day)}",
        ]
        if self.per_type:
            header = f"{'type':<14}{'labels':>7}{'detected':>9}{'recall':>8}{'prec.':>8}{'F1':>7}{'delay':>7}"
            lines += ["", header, "-" * len(header)]
            for t in self.per_type.values():
                lines.append(
                    f"{t.type:<14}{t.labels:>7}{t.detected:>9}{f(t.recall):>8}{f(t.precision):>8}"
                    f"{f(t.f1):>7}{f(t.median_delay_windows, 1):>7}"
                )
        return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b else _NAN


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return _NAN
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _stat(values: list[float], fn: Any) -> float:
    return float(fn(np.asarray(values))) if values else _NAN


def _key(key: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in key.items()))


def _as_label(x: Label | Mapping[str, Any]) -> Label:
    return x if isinstance(x, Label) else Label.from_dict(x)


def _as_alert(x: Any) -> Mapping[str, Any]:
    if isinstance(x, Mapping):
        return x
    if hasattr(x, "to_dict"):
        return x.to_dict()
    raise TypeError(f"an alert must be a mapping or an Alert, got {type(x).__name__}")


def evaluate(
    labels: Iterable[Label | Mapping[str, Any]],
    alerts: Iterable[Any],
    window_seconds: float = 60.0,
    tolerance_windows: float = DEFAULT_TOLERANCE_WINDOWS,
    n_keys: int | None = None,
    span_days: float | None = None,
) -> EvaluationReport:
    """Match ``alerts`` (dicts or :class:`~streamdetect.alerts.Alert`) to ``labels``.

    Records of the alerts stream that end an episode (``status`` ``resolved``) are skipped.

    ``window_seconds`` is the detector's window length (the unit of delay and tolerance).
    ``n_keys`` and ``span_days`` override what the false-alert rate is divided by.

    >>> lab = Label("a", "outage", {"store_id": "s"}, "2026-01-05T10:00:00Z", "2026-01-05T10:20:00Z", 0.0)
    >>> late = {"alert_id": "x", "key": {"store_id": "s"},
    ...         "window_start": "2026-01-05T10:23:00Z", "window_end": "2026-01-05T10:24:00Z"}
    >>> evaluate([lab], [late]).recall, evaluate([lab], [late], tolerance_windows=2).recall
    (1.0, 0.0)

    An alert keyed finer than the label (a store's channel) matches it; one of another store does not:

    >>> web = {"key": {"store_id": "s", "channel": "web"},
    ...        "window_start": "2026-01-05T10:05:00Z", "window_end": "2026-01-05T10:06:00Z"}
    >>> other = {**web, "key": {"store_id": "t", "channel": "web"}}
    >>> r = evaluate([lab], [web, other])
    >>> r.n_true_alerts, r.n_false_alerts, r.recall, r.n_keys
    (1, 1, 1.0, 2)
    """
    if window_seconds <= 0:
        raise ValueError("window_seconds must be > 0")
    if tolerance_windows < 0:
        raise ValueError("tolerance_windows must be >= 0")
    window_ms = window_seconds * 1000.0
    tol_ms = round(tolerance_windows * window_ms)
    labs = sorted((_as_label(x) for x in labels), key=lambda lab: (lab.start_ms, lab.anomaly_id))

    # deduplicate alerts by id, keeping the first
    seen: set[str] = set()
    akeys: list[tuple[tuple[str, str], ...]] = []
    aepisode: list[str] = []
    astart: list[int] = []
    aend: list[int] = []
    n_dup = 0
    for raw in alerts:
        a = _as_alert(raw)
        if a.get("status") == "resolved":  # the end of an episode on the alerts stream: not an alert
            continue
        ws, we = parse_time_ms(a["window_start"]), parse_time_ms(a["window_end"])
        key = {str(k): str(v) for k, v in a["key"].items()}
        aid = str(a.get("alert_id") or make_alert_id(key, ws, we))
        if aid in seen:
            n_dup += 1
            continue
        seen.add(aid)
        aepisode.append(str(a.get("episode_id") or aid))
        akeys.append(_key(key))
        astart.append(ws)
        aend.append(we)
    n_alerts = len(akeys)
    a_start = np.asarray(astart, dtype=np.int64)
    a_end = np.asarray(aend, dtype=np.int64)

    by_key_labels: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(list)
    for j, lab in enumerate(labs):
        by_key_labels[_key(lab.key)].append(j)
    # The alerts by their key's values on each set of fields that labels are keyed by.
    by_key_alerts: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(list)
    for fields in {tuple(f for f, _ in k) for k in by_key_labels}:
        for i, k in enumerate(akeys):
            values = dict(k)
            if all(f in values for f in fields):
                by_key_alerts[tuple((f, values[f]) for f in fields)].append(i)

    alert_type: list[str | None] = [None] * n_alerts  # type of the earliest matching label
    results: list[LabelResult] = []
    first_match = np.full(len(labs), -1, dtype=np.int64)
    match_count = np.zeros(len(labs), dtype=np.int64)
    for k, lab_ix in by_key_labels.items():
        ai = np.asarray(by_key_alerts.get(k, []), dtype=np.int64)
        if ai.size == 0:
            continue
        ls = np.array([labs[j].start_ms for j in lab_ix], dtype=np.int64)
        le = np.array([labs[j].end_ms for j in lab_ix], dtype=np.int64) + tol_ms
        a_ws, a_we = a_start[ai], a_end[ai]
        for c in range(0, ai.size, 4096):
            sl = slice(c, c + 4096)
            m = (a_ws[sl, None] < le[None, :]) & (a_we[sl, None] > ls[None, :])  # (alerts, labels)
            for jj, j in enumerate(lab_ix):
                hits = np.flatnonzero(m[:, jj])
                if hits.size:
                    match_count[j] += hits.size
                    best = ai[sl][hits[np.argmin(a_ws[sl][hits])]]
                    if first_match[j] < 0 or a_start[best] < a_start[first_match[j]]:
                        first_match[j] = best
            # labels are sorted by start, so the first matching column is the earliest label
            any_hit = m.any(axis=1)
            first_col = m.argmax(axis=1)
            for row in np.flatnonzero(any_hit).tolist():
                idx = int(ai[sl][row])
                if alert_type[idx] is None:
                    alert_type[idx] = labs[lab_ix[int(first_col[row])]].type

    delays: dict[str, list[float]] = defaultdict(list)
    all_delays: list[float] = []
    for j, lab in enumerate(labs):
        detected = first_match[j] >= 0
        delay = max(0.0, (int(a_start[first_match[j]]) - lab.start_ms) / window_ms) if detected else _NAN
        if detected:
            delays[lab.type].append(delay)
            all_delays.append(delay)
        results.append(
            LabelResult(
                lab.anomaly_id, lab.type, dict(lab.key), lab.start, lab.end, bool(detected), delay, int(match_count[j])
            )
        )

    n_true = sum(t is not None for t in alert_type)
    n_false = n_alerts - n_true
    episode_true: dict[str, bool] = {}
    for ep, t in zip(aepisode, alert_type, strict=True):
        episode_true[ep] = episode_true.get(ep, False) or t is not None
    n_false_episodes = sum(not t for t in episode_true.values())
    n_detected = int((first_match >= 0).sum())
    precision = _ratio(n_true, n_alerts)
    recall = _ratio(n_detected, len(labs))

    per_type: dict[str, TypeReport] = {}
    type_tp: dict[str, int] = defaultdict(int)
    for t in alert_type:
        if t is not None:
            type_tp[t] += 1
    for t in sorted({lab.type for lab in labs}):
        n_t = sum(lab.type == t for lab in labs)
        det_t = sum(r.detected for r in results if r.type == t)
        p_t = _ratio(type_tp[t], type_tp[t] + n_false)
        r_t = _ratio(det_t, n_t)
        per_type[t] = TypeReport(
            type=t,
            labels=n_t,
            detected=det_t,
            true_alerts=type_tp[t],
            recall=r_t,
            precision=p_t,
            f1=_f1(p_t, r_t),
            median_delay_windows=_stat(delays[t], np.median),
            mean_delay_windows=_stat(delays[t], np.mean),
        )

    keys = set(akeys) | {k for k in by_key_labels if k not in by_key_alerts}
    times = [lab.start_ms for lab in labs] + [lab.end_ms for lab in labs] + astart + aend
    if span_days is None:
        span_days = (max(times) - min(times)) / 86_400_000 if times else 0.0
    if n_keys is None:
        n_keys = len(keys)
    return EvaluationReport(
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        median_delay_windows=_stat(all_delays, np.median),
        mean_delay_windows=_stat(all_delays, np.mean),
        p90_delay_windows=_stat(all_delays, lambda x: np.quantile(x, 0.9)),
        n_alerts=n_alerts,
        n_duplicates=n_dup,
        n_true_alerts=n_true,
        n_false_alerts=n_false,
        n_labels=len(labs),
        n_detected=n_detected,
        n_keys=n_keys,
        span_days=float(span_days),
        false_alerts_per_key_day=_ratio(n_false, n_keys * span_days),
        window_seconds=float(window_seconds),
        tolerance_windows=float(tolerance_windows),
        per_type=per_type,
        n_episodes=len(episode_true),
        n_false_episodes=n_false_episodes,
        episode_precision=_ratio(len(episode_true) - n_false_episodes, len(episode_true)),
        false_episodes_per_key_day=_ratio(n_false_episodes, n_keys * span_days),
        label_results=results,
    )
