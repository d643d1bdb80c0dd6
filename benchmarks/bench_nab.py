"""Detection quality on real metric series: the Numenta Anomaly Benchmark (NAB), on defaults.

NAB (github.com/numenta/NAB) holds real series (AWS CloudWatch metrics, machine temperatures,
traffic, tweet volumes, ad clicks, ...) with labelled anomaly windows. Its data is AGPL-licensed and
not shipped here: clone it and point ``--nab`` at the checkout. Every series is replayed the way
``streamdetect replay series.csv --time-field timestamp --value-field value`` does it, with no
tuning (windows of the series' median sample spacing, default warm-up, calibration and risk).

Scoring: a NAB window counts as detected when an alert overlaps it (:mod:`streamdetect.evaluate`
with no tolerance beyond the window, which NAB already makes wide); an alert inside any window is a
true alert, any other a false one. The peer, in the same run: river's ``HalfSpaceTrees`` on the
value (behind a ``MinMaxScaler``), its scores through the same SPOT threshold configuration.

    python benchmarks/bench_nab.py --nab ~/src/NAB [--only cpu,temperature] [--no-hst] [--series-kind values]

As replay does by default, whole-number series (request and tweet counts, but also whole-number
speeds and travel times) are read as counts (marked ``#``); ``--series-kind values`` reads every
series as values. A series with negative values is shifted as replay shifts it (``--value-offset
auto``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from streamdetect.alerts import alert_id, format_time  # noqa: E402
from streamdetect.config import DetectorConfig, from_mapping  # noqa: E402
from streamdetect.detector import Detector  # noqa: E402
from streamdetect.evaluate import evaluate  # noqa: E402
from streamdetect.generate import parse_time_ms  # noqa: E402
from streamdetect.sources import SERIES_KEY, looks_like_counts, median_spacing_s, signed_offset  # noqa: E402
from streamdetect.threshold import make_threshold  # noqa: E402


def _iso(nab_time: str) -> str:
    return nab_time.replace(" ", "T")[:19] + "Z"  # NAB's times are UTC without an offset


def run_detector(
    ts_ms: np.ndarray,
    values: np.ndarray,
    window_s: float,
    features: list[str] | None = None,
    counts: bool = False,
    offset: float = 0.0,
) -> tuple[list[dict[str, Any]], Detector]:
    field = "count_field" if counts else "value_field"
    table: dict[str, Any] = {
        "events": {"time_field": "timestamp", field: "value", "allow_negative": True, "value_offset": offset},
        "windows": {"size": window_s},
    }
    if features:
        table["features"] = {"features": features}
    config = from_mapping(DetectorConfig, table)
    det = Detector(config)
    records = [
        {"timestamp": int(t), "value": float(v), "store_id": SERIES_KEY} for t, v in zip(ts_ms, values, strict=True)
    ]
    alerts: list[dict[str, Any]] = []
    for i in range(0, len(records), 5000):
        alerts += [a.to_dict() for a in det.process_records(records[i : i + 5000]).alerts]
    alerts += [a.to_dict() for a in det.flush().alerts]
    return alerts, det


def episodes(alerts: list[dict[str, Any]], spans: list[tuple[int, int]]) -> tuple[int, int]:
    """Episodes of alerts (``episode_id``; each alert its own where there is none) and how many of
    them have no alert inside a labelled window: what a pager that pages once per episode sees."""
    true: dict[str, bool] = {}
    for a in alerts:
        start, end = parse_time_ms(a["window_start"]), parse_time_ms(a["window_end"])
        hit = any(start < b and end > s for s, b in spans)
        eid = a.get("episode_id") or a["alert_id"]
        true[eid] = true.get(eid, False) or hit
    return len(true), sum(not t for t in true.values())


def run_half_space_trees(ts_ms: np.ndarray, values: np.ndarray, window_s: float, det: Detector) -> list[dict[str, Any]]:
    from river import anomaly, compose, preprocessing

    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42))
    threshold = make_threshold(det.config.threshold)
    batch = det.config.model.learn_batch
    alerts: list[dict[str, Any]] = []
    pending: list[float] = []
    for t, v in zip(ts_ms.tolist(), values.tolist(), strict=True):
        x = {"value": v}
        s = model.score_one(x)
        model.learn_one(x)
        if threshold.classify(np.array([s]))[0]:
            start = t - t % int(window_s * 1000)
            end = start + int(window_s * 1000)
            key = {"store_id": SERIES_KEY}
            alerts.append({"alert_id": alert_id(key, start, end), "key": key, "window_start": format_time(start),
                           "window_end": format_time(end)})
        pending.append(s)
        if len(pending) >= batch:
            threshold.learn(np.array(pending))
            pending = []
    return alerts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nab", type=Path, required=True, help="a checkout of github.com/numenta/NAB")
    p.add_argument("--only", help="comma-separated substrings of the series names to run")
    p.add_argument("--no-hst", action="store_true", help="skip the HalfSpaceTrees peer")
    p.add_argument("--features", help="comma-separated model features (default: the detector's)")
    p.add_argument(
        "--series-kind",
        choices=("auto", "values", "counts"),
        default="auto",
        help="as replay's: auto reads whole-number series as counts (requests, tweets) and the others as values",
    )
    args = p.parse_args()

    windows = json.loads((args.nab / "labels" / "combined_windows.json").read_text())
    totals = {name: {"labels": 0, "detected": 0, "alerts": 0, "true": 0, "episodes": 0, "false_episodes": 0}
              for name in ("streamdetect", "hst")}
    days_total = 0.0
    print(f"{'series':44s} {'days':>5s} {'windows':>7s}  streamdetect det/alerts/false episodes/false"
          "  |  HST det/alerts/false")
    for rel, spans in sorted(windows.items()):
        path = args.nab / "data" / rel
        if not path.exists() or (args.only and not any(o in rel for o in args.only.split(","))):
            continue
        with path.open() as f:
            rows = list(csv.DictReader(f))
        try:
            ts_ms = np.array([parse_time_ms(_iso(r["timestamp"])) for r in rows], dtype=np.int64)
            values = np.array([float(r["value"]) for r in rows])
        except (TypeError, ValueError) as exc:
            print(f"{rel}: skipped, not a timestamp,value series ({exc})")
            continue
        window_s = median_spacing_s(ts_ms)
        if window_s is None:
            print(f"{rel}: skipped, fewer than 3 samples")
            continue
        labels = [{"anomaly_id": f"{rel}#{i}", "type": "nab", "key": {"store_id": SERIES_KEY},
                   "start": _iso(a), "end": _iso(b), "magnitude": 1.0} for i, (a, b) in enumerate(spans)]
        days = (ts_ms[-1] - ts_ms[0]) / 86_400_000
        days_total += days
        counts = args.series_kind == "counts" or (args.series_kind == "auto" and looks_like_counts(values))
        features = args.features.split(",") if args.features else None
        offset = 0.0 if counts else signed_offset(ts_ms, values, DetectorConfig().model.warmup_span)
        alerts, det = run_detector(ts_ms, values, window_s, features, counts, offset)
        runs = {"streamdetect": alerts}
        if not args.no_hst:
            runs["hst"] = run_half_space_trees(ts_ms, values, window_s, det)
        line = f"{rel[:44]:44s}{'#' if counts else ' '}{days:5.1f} {len(labels):7d}"
        for name, found in runs.items():
            r = evaluate(labels, found, window_seconds=window_s, tolerance_windows=0.0)
            detected = sum(lr.detected for lr in r.label_results)
            t = totals[name]
            t["labels"] += len(labels)
            t["detected"] += detected
            t["alerts"] += r.n_alerts
            t["true"] += r.n_true_alerts
            line += f"  {detected:>5d} {r.n_alerts:>6d} {r.n_alerts - r.n_true_alerts:>5d}"
            if name == "streamdetect":
                n_ep, false_ep = episodes(found, [(parse_time_ms(lab["start"]), parse_time_ms(lab["end"]))
                                                  for lab in labels])
                t["episodes"] += n_ep
                t["false_episodes"] += false_ep
                line += f" {n_ep:>8d} {false_ep:>5d}"
        print(line, flush=True)
    for name, t in totals.items():
        if not t["labels"]:
            continue
        precision = t["true"] / t["alerts"] if t["alerts"] else float("nan")
        recall = t["detected"] / t["labels"]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
        false_per_day = (t["alerts"] - t["true"]) / max(days_total, 1e-9)
        print(f"{name:13s} windows detected {t['detected']}/{t['labels']} (recall {recall:.2f}), alerts {t['alerts']}"
              f" (precision {precision:.2f}), F1 {f1:.3f}, false alerts per series-day {false_per_day:.2f}")
        if t["episodes"]:
            print(f"{'':13s} episodes {t['episodes']}, {t['false_episodes']} with no alert in a window"
                  f" (precision per episode {1 - t['false_episodes'] / t['episodes']:.2f}),"
                  f" false episodes per series-day {t['false_episodes'] / max(days_total, 1e-9):.2f}")


if __name__ == "__main__":
    main()
