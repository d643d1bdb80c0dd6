"""The backtest picture: PNG produced, non-trivial, from arrays, from the CLI and from a real replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib  # noqa: F401  # the `plot` extra, installed with `test`: a failure here, not a skip
import numpy as np
import pytest
from PIL import Image  # a dependency of matplotlib

from streamdetect.alerts import format_time
from streamdetect.cli import main
from streamdetect.plot import choose_feature, plot_backtest, read_alerts_jsonl, read_scores_csv

FEATURES = ("count_z", "revenue_ratio", "mean_ticket_z")
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def scored_windows(n_keys: int = 6, n_windows: int = 720, seed: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Columnar windows like the detector's ScoredWindows, with anomalies on keys 0..2, and their alerts."""
    rng = np.random.default_rng(seed)
    keys: list[dict[str, str]] = []
    start, score, feats, anomaly = [], [], [], []
    alerts = []
    for k in range(n_keys):
        t = T0 + np.arange(n_windows, dtype=np.int64) * 60_000
        f = rng.normal(0, 1, size=(n_windows, len(FEATURES)))
        s = 8 + np.abs(rng.normal(0, 3, size=n_windows))
        flags = np.zeros(n_windows, dtype=bool)
        for j in range(3 - k if k < 3 else 0):  # key 0: 3 anomalies, key 1: 2, key 2: 1
            i = 100 + 200 * j
            f[i, 1] = -6.0  # revenue collapses
            s[i] = 80.0 + 10 * j
            flags[i] = True
            alerts.append({"key": {"store_id": f"s{k}"}, "window_start": format_time(int(t[i])), "score": s[i],
                           "severity": ("warning", "major", "critical")[j],
                           "contributions": [{"feature": "revenue", "observed": 0.0, "expected": 500.0, "z": -6.0},
                                             {"feature": "count", "observed": 3.0, "expected": 9.0, "z": -2.0}]})
        keys += [{"store_id": f"s{k}"}] * n_windows
        start.append(t)
        score.append(s)
        feats.append(f)
        anomaly.append(flags)
    n = len(keys)
    windows = {
        "keys": keys,
        "start_ms": np.concatenate(start),
        "score": np.concatenate(score),
        "threshold": np.full(n, 30.0),
        "probability": np.full(n, 0.5),
        "is_anomaly": np.concatenate(anomaly),
        "features": np.concatenate(feats),
        "feature_names": FEATURES,
    }
    return windows, alerts


def check_png(path: Path, min_bytes: int = 30_000) -> tuple[int, int]:
    assert path.exists()
    assert path.stat().st_size > min_bytes
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        pixels = np.asarray(img.convert("L"))
    assert w >= 1000 and h >= 400
    assert pixels.std() > 10  # not a blank canvas
    return w, h


def test_choose_feature() -> None:
    _, alerts = scored_windows()
    assert choose_feature(FEATURES, alerts) == "revenue_ratio"
    assert choose_feature(FEATURES) == "revenue_ratio"
    assert choose_feature(("count_z", "log_revenue", "revenue")) == "revenue"
    assert choose_feature(("count_z", "hour_sin")) == "count_z"
    assert choose_feature(()) is None
    # A value series' alerts name its quantities after the value; they still point at the feature.
    level = [{"contributions": [{"feature": "value_level", "z": -5.0}, {"feature": "value", "z": 1.0}]}]
    assert choose_feature(("revenue_ratio", "mean_ticket_z", "revenue_context_ratio"), level) == "mean_ticket_z"


def test_plot_backtest_from_arrays(tmp_path: Path) -> None:
    windows, alerts = scored_windows()
    out = plot_backtest(tmp_path / "sub" / "backtest.png", windows, alerts=alerts, top_keys=3)
    w, h = check_png(out)
    assert h > w  # three panel pairs stacked
    small = plot_backtest(tmp_path / "one.png", windows, alerts=alerts, keys=["s4"], feature="count_z")
    assert check_png(small)[1] < h
    with pytest.raises(ValueError, match="no scored windows for key"):
        plot_backtest(tmp_path / "x.png", windows, keys=["nope"])
    with pytest.raises(ValueError, match="feature 'nope'"):
        plot_backtest(tmp_path / "x.png", windows, feature="nope")


def write_scores_csv(path: Path, windows: dict[str, Any], with_features: bool = True) -> None:
    header = ["window_start", "key", "score", "threshold", "probability", "is_anomaly"]
    if with_features:
        header += list(windows["feature_names"])
    lines = [",".join(header)]
    for i, key in enumerate(windows["keys"]):
        row = [format_time(int(windows["start_ms"][i])), "|".join(key.values()), f"{windows['score'][i]:.6g}",
               f"{windows['threshold'][i]:.6g}", f"{windows['probability'][i]:.6g}",
               "1" if windows["is_anomaly"][i] else "0"]
        if with_features:
            row += [f"{v:.6g}" for v in windows["features"][i]]
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")


def test_plot_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    windows, alerts = scored_windows(n_keys=5, n_windows=600)
    scores = tmp_path / "scores.csv"
    write_scores_csv(scores, windows)
    alerts_path = tmp_path / "alerts.jsonl"
    alerts_path.write_text("".join(json.dumps(a) + "\n" for a in alerts))

    back = read_scores_csv(scores)
    assert back["feature_names"] == FEATURES
    assert back["features"].shape == (3000, 3)
    np.testing.assert_array_equal(back["start_ms"], windows["start_ms"])
    assert back["is_anomaly"].sum() == 6
    assert len(read_alerts_jsonl(alerts_path)) == 6

    out = tmp_path / "cli.png"
    assert main(["plot", "--scores", str(scores), "--alerts", str(alerts_path), "--out", str(out), "--top", "2"]) == 0
    check_png(out)

    # without feature columns (replay without --score-features) and without alerts: score panels only
    bare = tmp_path / "bare.csv"
    write_scores_csv(bare, windows, with_features=False)
    out2 = tmp_path / "bare.png"
    assert main(["plot", "--scores", str(bare), "--out", str(out2)]) == 0
    check_png(out2, min_bytes=20_000)

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["plot", "--scores", str(bad), "--out", str(tmp_path / "bad.png")]) == 2
    assert "missing column" in capsys.readouterr().err


def test_plot_from_a_real_replay(tmp_path: Path) -> None:
    """generate -> replay --scores --score-features --alerts -> plot, all through the CLI."""
    events = tmp_path / "events.jsonl"
    assert main(["generate", "--stores", "4", "--days", "4", "--clean-days", "2", "--anomalies-per-week", "7",
                 "--out", str(events), "--quiet"]) == 0
    scores, alerts = tmp_path / "scores.csv", tmp_path / "alerts.jsonl"
    direct = tmp_path / "replay-direct.png"
    assert main(["replay", str(events), "--scores", str(scores), "--score-features", "--alerts", str(alerts),
                 "--warmup", "1000", "--quiet", "--plot", str(direct)]) == 0
    check_png(direct)  # replay --plot draws the same picture straight from the detector's output
    windows = read_scores_csv(scores)
    assert len(windows["keys"]) > 1000 and windows["feature_names"]
    out = tmp_path / "replay.png"
    assert main(["plot", "--scores", str(scores), "--alerts", str(alerts), "--out", str(out), "--top", "3"]) == 0
    check_png(out)
