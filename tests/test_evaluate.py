"""Scoring alerts against labels: exact precision, recall, F1, delays, duplicates and per-type figures."""

from __future__ import annotations

import argparse
import math

import orjson
import pytest

from streamdetect.alerts import Alert, EpisodeResolved, alert_id, format_time
from streamdetect.evaluate import evaluate
from streamdetect.generate import Label, parse_time_ms, write_jsonl

T0 = parse_time_ms("2026-01-05T10:00:00Z")
MIN = 60_000


def label(aid: str, kind: str, store: str, start_min: int, end_min: int) -> Label:
    return Label(
        aid, kind, {"store_id": store}, format_time(T0 + start_min * MIN), format_time(T0 + end_min * MIN), 1.0
    )


def alert(store: str, minute: int, width: int = 1, with_id: bool = True) -> dict:
    key = {"store_id": store}
    s, e = T0 + minute * MIN, T0 + (minute + width) * MIN
    a = {"key": key, "window_start": format_time(s), "window_end": format_time(e), "score": 1.0}
    if with_id:
        a["alert_id"] = alert_id(key, s, e)
    return a


LABELS = [
    label("a1", "spike", "s1", 0, 10),  # detected at minute 2 (delay 2)
    label("a2", "outage", "s2", 30, 40),  # detected at minute 41 inside the tolerance (delay 11)
    label("a3", "spike", "s1", 100, 110),  # missed
    label("a4", "drop", "s3", 0, 5),  # missed: the only s3 alert is 6 windows after the end
]
ALERTS = [
    alert("s1", 2),
    alert("s1", 3),
    alert("s1", 3),  # duplicate (at-least-once delivery)
    alert("s1", 14),  # s1 a1: end 10 + 5 windows tolerance = 15 -> true
    alert("s1", 15),  # first window outside the tolerance -> false
    alert("s2", 41),
    alert("s2", 2),  # a1's time but another key -> false
    alert("s3", 11),  # a4 ends at 5, tolerance to 10 -> false
]


def test_exact_overall_numbers():
    r = evaluate(LABELS, ALERTS, window_seconds=60, n_keys=3, span_days=0.5)
    assert (r.n_alerts, r.n_duplicates, r.n_true_alerts, r.n_false_alerts) == (7, 1, 4, 3)
    assert (r.n_labels, r.n_detected) == (4, 2)
    assert r.precision == pytest.approx(4 / 7)
    assert r.recall == 0.5
    assert r.f1 == pytest.approx(2 * (4 / 7) * 0.5 / (4 / 7 + 0.5))
    assert r.median_delay_windows == 6.5 and r.mean_delay_windows == 6.5
    assert r.false_alerts_per_key_day == pytest.approx(3 / (3 * 0.5))
    by_id = {x.anomaly_id: x for x in r.label_results}
    assert (by_id["a1"].detected, by_id["a1"].delay_windows, by_id["a1"].matching_alerts) == (True, 2.0, 3)
    assert (by_id["a2"].delay_windows, by_id["a2"].matching_alerts) == (11.0, 1)
    assert not by_id["a3"].detected and math.isnan(by_id["a3"].delay_windows)


def test_per_type_numbers_and_precision_convention():
    r = evaluate(LABELS, ALERTS)
    spike, outage, drop = r.per_type["spike"], r.per_type["outage"], r.per_type["drop"]
    assert (spike.labels, spike.detected, spike.recall, spike.true_alerts) == (2, 1, 0.5, 3)
    assert spike.precision == pytest.approx(3 / (3 + 3))  # TP_spike / (TP_spike + FP_all)
    assert spike.median_delay_windows == 2.0
    assert (outage.recall, outage.true_alerts, outage.precision) == (1.0, 1, 0.25)
    assert (drop.recall, drop.true_alerts, drop.precision, drop.f1) == (0.0, 0, 0.0, 0.0)
    assert math.isnan(drop.median_delay_windows)
    assert list(r.per_type) == ["drop", "outage", "spike"]


def test_window_size_and_tolerance_change_the_match():
    labs = [label("a", "spike", "s1", 0, 10)]
    # a 5-minute window starting at minute 20: with 300 s windows the tolerance reaches minute 35
    five = [alert("s1", 20, width=5)]
    assert evaluate(labs, five, window_seconds=300).recall == 1.0
    assert evaluate(labs, five, window_seconds=300).median_delay_windows == 4.0
    assert evaluate(labs, five, window_seconds=60).recall == 0.0
    assert evaluate(labs, [alert("s1", 10)], tolerance_windows=0).recall == 0.0
    assert evaluate(labs, [alert("s1", 9)], tolerance_windows=0).recall == 1.0


def test_delay_is_floored_at_zero_for_a_window_that_began_before_the_label():
    lab = Label("a", "drop", {"store_id": "s1"}, format_time(T0 + 30_000), format_time(T0 + 10 * MIN), 0.2)
    r = evaluate([lab], [alert("s1", 0)])
    assert r.recall == 1.0 and r.median_delay_windows == 0.0


def test_duplicates_without_ids_and_alert_objects():
    a = Alert.build(key={"store_id": "s1"}, window_start_ms=T0 + 2 * MIN, window_end_ms=T0 + 3 * MIN, score=9.0,
                    threshold=1.0, probability=0.999, severity="major", features={}, contributions=[],
                    model_version="t", detected_at_ms=T0 + 3 * MIN)  # fmt: skip
    labs = [label("a", "spike", "s1", 0, 10)]
    r = evaluate(labs, [a, a.to_dict(), alert("s1", 2, with_id=False), alert("s1", 2, with_id=False)])
    assert (r.n_alerts, r.n_duplicates, r.precision, r.recall) == (1, 3, 1.0, 1.0)
    # labels as dicts give the same report
    assert evaluate([x.to_dict() for x in labs], [a]).to_dict() == evaluate(labs, [a]).to_dict()


def test_the_end_of_an_episode_on_the_alerts_stream_is_not_an_alert():
    """A dump of the alerts topic (or replay --alerts) holds resolutions too: they are skipped,
    as objects or as dicts, and count neither as alerts nor as false ones."""
    a = Alert.build(key={"store_id": "s1"}, window_start_ms=T0 + 2 * MIN, window_end_ms=T0 + 3 * MIN, score=9.0,
                    threshold=1.0, probability=0.999, severity="major", features={}, contributions=[],
                    model_version="t", detected_at_ms=T0 + 3 * MIN)  # fmt: skip
    end = EpisodeResolved.build(key={"store_id": "s1"}, episode_start_ms=T0 + 2 * MIN, episode_end_ms=T0 + 3 * MIN,
                                alerts=1, peak_score=9.0, peak_severity="major", resolved_at_ms=T0 + 14 * MIN,
                                calm_windows=11, reason="calm", model_version="t", detected_at_ms=T0 + 14 * MIN)
    labs = [label("a", "spike", "s1", 0, 10)]
    r = evaluate(labs, [a, end, end.to_dict()])
    assert (r.n_alerts, r.n_false_alerts, r.precision) == (1, 0, 1.0)


def test_alert_matching_two_labels_counts_for_the_earliest():
    labs = [label("a", "spike", "s1", 0, 10), label("b", "drop", "s1", 12, 20)]
    r = evaluate(labs, [alert("s1", 12)])
    assert r.n_true_alerts == 1 and r.n_detected == 2
    assert (r.per_type["spike"].true_alerts, r.per_type["drop"].true_alerts) == (1, 0)


def test_empty_inputs_are_nan_not_errors():
    r = evaluate([], [])
    assert math.isnan(r.precision) and math.isnan(r.recall) and math.isnan(r.f1)
    r = evaluate([label("a", "spike", "s1", 0, 10)], [])
    assert r.recall == 0.0 and math.isnan(r.precision) and r.n_labels == 1
    r = evaluate([], [alert("s1", 0)])
    assert r.precision == 0.0 and r.n_false_alerts == 1
    orjson.dumps(r.to_dict())  # nan becomes null


def test_many_alerts_are_fast_and_consistent():
    labs = [label(f"a{i}", "spike", f"s{i % 7}", 20 * i, 20 * i + 10) for i in range(200)]
    alerts = [alert(f"s{k}", m) for k in range(7) for m in range(0, 4000, 3)]
    r = evaluate(labs, alerts)
    assert r.n_alerts == len(alerts) and r.recall == 1.0
    brute = sum(
        any(a["key"] == lab.key and parse_time_ms(a["window_start"]) < lab.end_ms + 5 * MIN
            and parse_time_ms(a["window_end"]) > lab.start_ms for lab in labs)
        for a in alerts
    )  # fmt: skip
    assert r.n_true_alerts == brute


def test_format_table_and_cli(tmp_path, capsys):
    from streamdetect.cli import evaluate as cli

    write_jsonl(tmp_path / "labels.jsonl", LABELS)
    write_jsonl(tmp_path / "alerts.jsonl", ALERTS)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["evaluate", "--labels", str(tmp_path / "labels.jsonl"), "--alerts", str(tmp_path / "alerts.jsonl"),
         "--json", str(tmp_path / "report.json")]
    )  # fmt: skip
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "precision 0.571 | recall 0.500" in out and "spike" in out and "outage" in out
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["n_detected"] == 2 and report["per_type"]["spike"]["labels"] == 2
    assert len(report["label_results"]) == 4


def test_cli_since_scores_only_what_starts_from_then(tmp_path, capsys):
    from streamdetect.cli import evaluate as cli
    from streamdetect.config import ConfigError

    write_jsonl(tmp_path / "labels.jsonl", LABELS)
    write_jsonl(tmp_path / "alerts.jsonl", ALERTS)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    files = ["--labels", str(tmp_path / "labels.jsonl"), "--alerts", str(tmp_path / "alerts.jsonl")]
    args = parser.parse_args(["evaluate", *files, "--since", format_time(T0 + 20 * MIN)])
    assert args.handler(args) == 0
    # Left: a2 (found by the s2 alert at minute 41) and a3 (missed); every earlier alert is gone.
    assert "alerts 1 (0 duplicates dropped) | true 1 | false 0 | labels 2 | detected 1" in capsys.readouterr().out
    args = parser.parse_args(["evaluate", *files, "--since", "last monday"])
    with pytest.raises(ConfigError, match="--since: 'last monday' is not a time"):
        args.handler(args)


def test_episodes_are_counted_as_a_pager_sees_them():
    """Three alerts of one outage are one true episode; two false alerts of one episode elsewhere
    one false episode; an alert without an episode id is an episode of its own."""
    labs = [label("a", "outage", "s1", 0, 10)]
    outage = [{**alert("s1", m), "episode_id": "e1"} for m in (2, 3, 4)]
    noise = [{**alert("s2", m), "episode_id": "e2"} for m in (50, 51)]
    r = evaluate(labs, [*outage, *noise, alert("s3", 70)])
    assert (r.n_alerts, r.n_false_alerts) == (6, 3)
    assert (r.n_episodes, r.n_false_episodes, r.episode_precision) == (3, 2, pytest.approx(1 / 3))
    assert r.false_episodes_per_key_day == pytest.approx(2 / (r.n_keys * r.span_days))
    assert "episodes 3 | false 2" in r.format_table()
