"""``streamdetect replay`` on files: deterministic outputs, CSV series, rejects, config errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamdetect.cli import main
from streamdetect.events import parse_timestamp
from streamdetect.generate import GeneratorConfig, generate

FAST = ["--warmup", "1500"]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    events, _ = generate(GeneratorConfig(stores=3, days=3, seed=5))
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    lines = [orjson.dumps(e) for e in events]
    lines.insert(100, b"{broken json")
    lines.insert(200, b'{"ts": "yesterday", "store_id": "store-001", "quantity": 1, "unit_price": 2}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def replay(tmp: Path, src: Path, *extra: str) -> tuple[bytes, bytes, bytes]:
    alerts, scores, rejects = tmp / "alerts.jsonl", tmp / "scores.csv", tmp / "rejects.jsonl"
    code = main(["replay", str(src), "--alerts", str(alerts), "--scores", str(scores),
                 "--rejects", str(rejects), "--quiet", *FAST, *extra])
    assert code == 0
    return alerts.read_bytes(), scores.read_bytes(), rejects.read_bytes()


def test_replay_is_deterministic_byte_for_byte(tmp_path, events_file):
    runs = []
    for name, extra in (("a", ()), ("b", ()), ("c", ("--chunk-size", "777"))):
        (tmp_path / name).mkdir()
        runs.append(replay(tmp_path / name, events_file, *extra))
    assert runs[0] == runs[1] == runs[2]  # another chunking too: window sums are exact
    assert runs[0][1].count(b"\n") > 1000


def test_scores_csv_columns_and_rejects(tmp_path, events_file):
    _, scores, rejects = replay(tmp_path, events_file)
    rows = list(csv.DictReader(scores.decode().splitlines()))
    assert list(rows[0]) == ["window_start", "key", "score", "threshold", "probability", "is_anomaly"]
    assert all(math.isfinite(float(r["score"])) for r in rows)
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert {r["is_anomaly"] for r in rows} <= {"0", "1"}
    reasons = [orjson.loads(line) for line in rejects.splitlines()]
    assert [(r["index"], r["reason"]) for r in reasons][:2] == [(100, "decode"), (200, "bad_timestamp")]


def test_aggregated_series_csv(tmp_path):
    rng = np.random.default_rng(0)
    t0 = 1_767_225_600  # 2026-01-01
    minutes = 3 * 1440
    daily = 100 + 50 * np.sin(2 * np.pi * np.arange(minutes) / 1440)
    values = rng.normal(daily, 5)
    values[3000:3030] = 0.0  # the series collapses for half an hour
    src = tmp_path / "series.csv"
    with src.open("w") as f:
        f.write("timestamp,value\n")
        for i, v in enumerate(values):
            f.write(f"{(t0 + 60 * i) * 1000},{v:.3f}\n")
    alerts, scores, _ = replay(tmp_path, src, "--time-field", "timestamp", "--value-field", "value",
                               "--idle-timeout", "600", "--warmup", "1000", "--calibration", "500")
    rows = list(csv.DictReader(scores.decode().splitlines()))
    assert rows and len({r["key"] for r in rows}) == 1
    flagged = [orjson.loads(a)["window_start"] for a in alerts.splitlines()]
    collapse_start = "2026-01-03T02:00:00Z"  # minute 3000
    assert any(collapse_start <= w <= "2026-01-03T02:35:00Z" for w in flagged), flagged[:10]


def test_a_metric_series_with_missing_samples_works_on_defaults(tmp_path, capsys):
    """A 5-minute metric series, replayed with no tuning: the windows take its spacing, missing
    samples are missing (not zeros), the warm-up and calibration end after a day each, and a
    two-hour collapse on day 7 alerts while nothing else does."""
    rng = np.random.default_rng(3)
    t0 = 1_767_225_600  # 2026-01-01
    n = 8 * 288
    daily = 60 + 30 * np.sin(2 * np.pi * np.arange(n) / 288)
    values = rng.normal(daily, 4)
    values[6 * 288 + 100 : 6 * 288 + 124] *= 0.2  # 2026-01-07 08:20 to 10:20
    kept = np.flatnonzero(rng.random(n) > 0.03)  # 3 % of the samples never arrive
    src = tmp_path / "metric.csv"
    with src.open("w") as f:
        f.write("timestamp,value\n")
        for i in kept.tolist():
            f.write(f"{(t0 + 300 * i) * 1000},{values[i]:.3f}\n")
    alerts_path, scores_path = tmp_path / "alerts.jsonl", tmp_path / "scores.csv"
    assert main(["replay", str(src), "--time-field", "timestamp", "--value-field", "value",
                 "--alerts", str(alerts_path), "--scores", str(scores_path)]) == 0
    assert "windows of 300 s" in capsys.readouterr().err
    alerts = alerts_path.read_bytes()
    rows = list(csv.DictReader(scores_path.read_text().splitlines()))
    starts = [r["window_start"] for r in rows]
    assert len(starts) == len(set(starts)) and len(rows) < len(kept)  # one window per sample, no zeros
    assert starts[0] < "2026-01-04"  # warmed up on defaults within three days
    flagged = sorted({orjson.loads(a)["window_start"] for a in alerts.splitlines()})
    assert flagged and all("2026-01-07T08:20:00Z" <= w <= "2026-01-07T10:45:00Z" for w in flagged), flagged


def test_a_series_of_order_counts_works_on_defaults(tmp_path):
    """Orders and revenue per 5 minutes (an aggregated sales export), two stores, no tuning: the
    counts are modelled as counts (Poisson with overdispersion), and a two-hour drop to a third of
    one store's orders on day 7 alerts while nothing else does but one window: at the default
    risk of 4e-5 the 4,608 windows allow about 0.2 false alerts, and this stream holds 21 orders
    in five windows of a first-week evening where 10 are the rate (p = 0.002), which a detector
    sure of the day's level by then reads as 7.9 expected."""
    rng = np.random.default_rng(4)
    t0 = 1_767_225_600  # 2026-01-01
    n = 8 * 288
    rate = 6 + 4 * np.sin(2 * np.pi * np.arange(n) / 288)
    src = tmp_path / "orders.csv"
    with src.open("w") as f:
        f.write("timestamp,store_id,orders,revenue\n")
        for i in range(n):
            for store, scale in (("north", 1.0), ("south", 3.0)):
                lam = rate[i] * scale * (0.3 if store == "north" and 6 * 288 + 100 <= i < 6 * 288 + 124 else 1.0)
                k = rng.poisson(lam)
                f.write(f"{(t0 + 300 * i) * 1000},{store},{k},{rng.gamma(4.0, 5.0, k).sum():.2f}\n")
    alerts_path = tmp_path / "alerts.jsonl"
    assert main(["replay", str(src), "--time-field", "timestamp", "--count-field", "orders", "--value-field",
                 "revenue", "--alerts", str(alerts_path), "--quiet"]) == 0
    alerts = [orjson.loads(a) for a in alerts_path.read_bytes().splitlines()]
    flagged = sorted({(a["key"]["store_id"], a["window_start"]) for a in alerts})
    assert any(k == "north" and "2026-01-07T08:20:00Z" <= w <= "2026-01-07T10:20:00Z" for k, w in flagged), flagged
    drop = ("2026-01-07T08:20:00Z", "2026-01-07T10:45:00Z")
    outside = [(k, w) for k, w in flagged if not (k == "north" and drop[0] <= w <= drop[1])]
    assert len(outside) <= 1, flagged
    assert any("count" in c["feature"] for a in alerts for c in a["contributions"])


@pytest.mark.parametrize(("kind", "features"), [("auto", "count_z"), ("values", "revenue_ratio")])
def test_a_whole_number_series_reads_as_counts_unless_told(tmp_path, capsys, kind, features):
    rng = np.random.default_rng(6)
    t0 = 1_767_225_600
    src = tmp_path / "requests.csv"
    src.write_text("timestamp,value\n" + "".join(f"{(t0 + 300 * i) * 1000},{rng.poisson(40)}\n" for i in range(600)))
    scores = tmp_path / "scores.csv"
    assert main(["replay", str(src), "--time-field", "timestamp", "--value-field", "value", "--series-kind", kind,
                 "--scores", str(scores), "--score-features", "--warmup", "50", "--calibration", "100"]) == 0
    err = capsys.readouterr().err
    assert ("read as counts" in err) == (kind == "auto")
    header = scores.read_text().splitlines()[0].split(",")
    assert features in header and len(header) == 6 + 3


def test_a_signed_series_is_shifted_on_defaults(tmp_path, capsys):
    """Whole degrees Celsius around zero, every 5 minutes: the negative samples are measurements,
    not bad input, and the series is neither read as counts nor cut at zero. Replay shifts it by
    its first day's spread and says so; a half-hour +25 degree excursion on day 8 alerts, reported
    in degrees, and the rest of the series hardly does."""
    rng = np.random.default_rng(11)
    t0 = 1_767_225_600  # 2026-01-01
    n = 9 * 288
    celsius = np.round(8 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 0.8, n))
    celsius[7 * 288 + 100 : 7 * 288 + 106] += 25  # 2026-01-08 08:20 to 08:50
    src = tmp_path / "temperature.csv"
    src.write_text("timestamp,value\n" + "".join(f"{(t0 + 300 * i) * 1000},{v:g}\n" for i, v in enumerate(celsius)))
    alerts_path, rejects = tmp_path / "alerts.jsonl", tmp_path / "rejects.jsonl"
    assert main(["replay", str(src), "--time-field", "timestamp", "--value-field", "value",
                 "--alerts", str(alerts_path), "--rejects", str(rejects)]) == 0
    err = capsys.readouterr().err
    assert "read shifted by +" in err and "read as counts" not in err and "rejected 0" in err
    alerts = [orjson.loads(a) for a in alerts_path.read_bytes().splitlines()]
    excursion = [a for a in alerts if "2026-01-08T08:20:00Z" <= a["window_start"] <= "2026-01-08T08:50:00Z"]
    assert excursion and all(15 < a["features"]["value"] < 40 for a in excursion)
    assert len(alerts) - len(excursion) <= 3, [a["window_start"] for a in alerts]

    # With --episode-ends the file is the alerts topic's stream: each episode's end after its alerts,
    # and the summary counts the episodes; evaluate skips the ends.
    assert "alerts " in err and " episodes (" in err
    # ... and how many alerts were judged before the series' weekly pattern was known (reference).
    early = sum(a["reference"] != "hour_of_week" for a in alerts)
    assert f"; {early:,} alerts judged before the key's weekly pattern was known)" in err, err
    both = tmp_path / "both.jsonl"
    assert main(["replay", str(src), "--time-field", "timestamp", "--value-field", "value",
                 "--alerts", str(both), "--episode-ends", "--quiet"]) == 0
    stream = [orjson.loads(a) for a in both.read_bytes().splitlines()]
    assert [a for a in stream if a["status"] == "firing"] == alerts
    ends = [i for i, a in enumerate(stream) if a["status"] == "resolved"]
    assert ends and len(ends) == len({a["episode_id"] for a in alerts})
    for i in ends:
        assert stream[i - 1]["episode_id"] == stream[i]["episode_id"]  # a series: nothing else in between
    first_end, last_alert = stream[ends[0]], stream[ends[0] - 1]
    assert last_alert["status"] == "firing" and first_end["alerts"] == last_alert["episode_alert"]
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(orjson.dumps({"anomaly_id": "heat", "type": "spike", "key": {"store_id": "series"},
                                     "start": "2026-01-08T08:20:00Z", "end": "2026-01-08T08:50:00Z",
                                     "magnitude": 25.0}) + b"\n")
    report = tmp_path / "report.json"
    for path in (alerts_path, both):
        assert main(["evaluate", "--labels", str(labels), "--alerts", str(path), "--window", "300",
                     "--json", str(report)]) == 0
        assert orjson.loads(report.read_bytes())["n_alerts"] == len(alerts)

    bad_offset = ["--value-offset", "hot"]
    assert main(["replay", str(src), "--time-field", "timestamp", "--value-field", "value", *bad_offset]) == 2
    assert "--value-offset is 'hot'" in capsys.readouterr().err


def test_epoch_seconds_are_read_as_such(tmp_path, capsys):
    """Exports often write times in epoch seconds, which read as milliseconds would all be in
    January 1970 and rejected; replay tells the unit by the times' size, and says so."""
    events, _ = generate(GeneratorConfig(stores=3, days=2, seed=5, malformed_fraction=0.0))
    seconds, millis = tmp_path / "seconds.jsonl", tmp_path / "millis.jsonl"
    for path, scale in ((seconds, 1000), (millis, 1)):
        rows = []
        for e in events[:5000]:
            ms = parse_timestamp(e["ts"])
            rows.append(orjson.dumps({**e, "ts": ms // scale if scale > 1 else ms}))
        path.write_bytes(b"\n".join(rows) + b"\n")
    outputs = []
    for path in (seconds, millis):
        scores = tmp_path / f"{path.stem}.csv"
        assert main(["replay", str(path), "--scores", str(scores), "--warmup", "300"]) == 0
        err = capsys.readouterr().err
        assert ("read as --time-format 'epoch_s'" in err) == (path is seconds)
        assert "bad_timestamp" not in err
        outputs.append(scores.read_text())
    # The same events to the second: the same windows, scored alike.
    assert outputs[0].splitlines()[0] == outputs[1].splitlines()[0]
    assert len(outputs[0].splitlines()) == len(outputs[1].splitlines()) > 100

    # Too short a file to warm up on: replay says what the warm-up needs.
    short = tmp_path / "short.csv"
    rows = "".join(f"{(1_767_225_600 + 300 * i) * 1000},{i % 7}.5\n" for i in range(99))
    short.write_text("timestamp,value\n" + rows)
    assert main(["replay", str(short), "--time-field", "timestamp", "--value-field", "value"]) == 0
    assert "the model never finished its warm-up: it needs 5,000 scorable windows, or 24 h" in capsys.readouterr().err

    # Long enough to warm up, too short to calibrate the threshold: replay says so.
    rows = "".join(f"{(1_767_225_600 + 300 * i) * 1000},{50 + i % 7}.5\n" for i in range(3 * 288))
    short.write_text("timestamp,value\n" + rows)
    assert main(["replay", str(short), "--time-field", "timestamp", "--value-field", "value"]) == 0
    assert "the threshold never finished its calibration, so nothing could alert" in capsys.readouterr().err

    # Row numbers are no time in any unit: nothing is guessed, and replay says what was wrong.
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("timestamp,value\n" + "".join(f"{i},{i % 7}.5\n" for i in range(1, 200)))
    assert main(["replay", str(numbered), "--time-field", "timestamp", "--value-field", "value"]) == 0
    assert "no event was valid; the first bad_timestamp: timestamp: 1 is outside" in capsys.readouterr().err


@pytest.mark.parametrize("locale", ["en", "de"])
def test_a_daily_series_of_dates_works_on_defaults(tmp_path, capsys, locale):
    """Daily sales totals dated ``2015-01-01`` (no time of day, which RFC 3339 requires): replay
    finds the format, sizes the windows to a day, and the day sales fell to 30 % alerts. The same
    from a spreadsheet in a German locale: semicolons, decimal commas, dots grouping thousands."""
    rng = np.random.default_rng(1)
    days = np.arange(700)
    weekend = (days + 3) % 7 >= 5  # 2015-01-01 was a Thursday
    sales = 1000 * np.where(weekend, 1.3, 1.0) * rng.lognormal(0, 0.05, len(days))
    sales[600] *= 0.3  # 2016-08-23
    start = np.datetime64("2015-01-01")
    src = tmp_path / "daily.csv"
    if locale == "en":
        rows = [f"{start + int(d)},{v:.2f}\n" for d, v in zip(days, sales, strict=True)]
        src.write_text("date,sales\n" + "".join(rows))
    else:
        rows = [f"{start + int(d)};{v:,.2f}\n".replace(",", " ").replace(".", ",").replace(" ", ".")
                for d, v in zip(days, sales, strict=True)]
        assert rows[0].count(";") == 1 and "," in rows[0]
        src.write_text("date;sales\n" + "".join(rows))
    alerts_path = tmp_path / "alerts.jsonl"
    fields = ["--time-field", "date", "--value-field", "sales"]
    assert main(["replay", str(src), *fields, "--alerts", str(alerts_path)]) == 0
    err = capsys.readouterr().err
    assert "--time-format '%Y-%m-%d'" in err and "windows of 86400 s" in err and "rejected 0" in err
    flagged = [orjson.loads(a)["window_start"] for a in alerts_path.read_bytes().splitlines()]
    assert "2016-08-23T00:00:00Z" in flagged and len(flagged) <= 3, flagged


def test_a_wide_metrics_export_is_one_series_per_column(tmp_path, capsys):
    """A Grafana-style export (a time column, then one column per metric, cells missing here and
    there): each column is its own series, and the alerts name the column that broke."""
    rng = np.random.default_rng(12)
    t0 = 1_767_225_600  # 2026-01-01
    n = 8 * 288
    phase = 2 * np.pi * np.arange(n) / 288
    cpu = 40 + 20 * np.sin(phase) + rng.normal(0, 2, n)
    mem = 6000 + 500 * np.cos(phase) + rng.normal(0, 50, n)
    mem[6 * 288 + 100 : 6 * 288 + 112] *= 1.6  # 2026-01-07 08:20, an hour of memory pressure
    blank = rng.random((n, 2)) < 0.02
    cells = [(f"{c:.2f}", f"{m:.0f}") for c, m in zip(cpu, mem, strict=True)]
    rows = [f"{(t0 + 300 * i) * 1000},{'' if blank[i, 0] else c},{'' if blank[i, 1] else m}\n"
            for i, (c, m) in enumerate(cells)]
    src = tmp_path / "export.csv"
    src.write_text("time,cpu,mem\n" + "".join(rows))
    alerts_path, scores = tmp_path / "alerts.jsonl", tmp_path / "scores.csv"
    assert main(["replay", str(src), "--time-field", "time", "--value-field", "cpu,mem",
                 "--alerts", str(alerts_path), "--scores", str(scores)]) == 0
    assert "windows of 300 s" in capsys.readouterr().err
    keys = {r["key"] for r in csv.DictReader(scores.read_text().splitlines())}
    assert keys == {"cpu", "mem"}
    alerts = [orjson.loads(a) for a in alerts_path.read_bytes().splitlines()]
    memory = [a for a in alerts if a["key"] == {"series": "mem"}
              and "2026-01-07T08:20:00Z" <= a["window_start"] <= "2026-01-07T09:25:00Z"]
    assert memory and all(8000 < a["features"]["value"] < 12_000 for a in memory)
    assert len(alerts) - len(memory) <= 4, [(a["key"], a["window_start"]) for a in alerts]

    assert main(["replay", str(src), "--time-field", "time", "--value-field", "cpu,disk"]) == 2
    assert "series columns ['disk'] are not in the CSV header" in capsys.readouterr().err


def test_money_written_as_strings_is_read_when_asked(tmp_path, capsys):
    events, _ = generate(GeneratorConfig(stores=2, days=1, seed=3, malformed_fraction=0.0))
    src = tmp_path / "shop.jsonl"
    as_text = [{**e, **{k: f"{e[k]:.2f}" for k in ("amount", "unit_price") if k in e}} for e in events[:500]]
    src.write_bytes(b"\n".join(orjson.dumps(e) for e in as_text))
    assert main(["replay", str(src)]) == 0
    err = capsys.readouterr().err
    assert "no event was valid" in err and "events.numeric_strings" in err
    assert main(["replay", str(src), "--numeric-strings"]) == 0
    assert "rejected 0" in capsys.readouterr().err


def test_bad_configuration_fails_with_a_message(tmp_path, events_file, capsys):
    assert main(["replay", str(events_file), "--window", "0.5"]) == 2
    assert "windows.size" in capsys.readouterr().err
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[detector.threshold]\nmethod = 'magic'\n")
    assert main(["replay", str(events_file), "--config", str(cfg)]) == 2
    assert "threshold.method" in capsys.readouterr().err
    assert main(["replay", str(events_file), "--timezone", "Mars/Olympus"]) == 2
    assert "features.timezone: unknown time zone 'Mars/Olympus'" in capsys.readouterr().err
    assert main(["replay", str(events_file), "--timezones", "store-001=Mars/Olympus"]) == 2
    assert "features.timezones['store-001']: unknown time zone 'Mars/Olympus'" in capsys.readouterr().err
    assert main(["replay", str(events_file), "--timezones", "store-001"]) == 2
    assert "expected a table or 'key=value, key=value'" in capsys.readouterr().err


def test_keys_too_sparse_for_their_windows_are_reported(tmp_path, capsys, events_file):
    """Keyed by store and SKU, each key sells a few times in two hours: replay says the windows
    are too short for such keys and what to change; keyed by store, the same sales are fine."""
    rng = np.random.default_rng(3)
    t0 = 1_767_571_200_000
    events = sorted(
        ({"ts": int(t), "store_id": f"s{k % 5}", "sku": f"sku-{k}", "quantity": 1, "unit_price": 9.5}
         for k in range(150) for t in rng.uniform(0, 2 * 3_600_000, 4) + t0),
        key=lambda e: e["ts"],
    )
    src = tmp_path / "sparse.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    assert main(["replay", str(src), "--key", "store_id,sku"]) == 0
    err = capsys.readouterr().err
    assert "the keys sell too rarely for windows of 60 s" in err and "--window" in err, err
    assert main(["replay", str(src), "--key", "store_id"]) == 0
    assert "too rarely" not in capsys.readouterr().err
    assert main(["replay", str(events_file), *FAST]) == 0
    assert "too rarely" not in capsys.readouterr().err


def test_deduplicate_refuses_repeated_event_ids(tmp_path, capsys):
    sale = '{{"ts": "2026-01-05T10:00:{:02d}Z", "store_id": "s1", "amount": 5, "event_id": "{}"}}\n'
    src = tmp_path / "dup.jsonl"
    src.write_text(sale.format(1, "a") + sale.format(2, "b") + sale.format(1, "a") + sale.format(3, "c"))
    rejects = tmp_path / "rejects.jsonl"
    assert main(["replay", str(src), "--deduplicate", "--rejects", str(rejects)]) == 0
    assert [(r["index"], r["reason"]) for r in map(orjson.loads, rejects.read_bytes().splitlines())] == [
        (2, "duplicate")]
    assert "rejected 1: duplicate 1" in capsys.readouterr().err
    assert main(["replay", str(src), "--rejects", str(rejects)]) == 0  # off by default
    assert rejects.read_bytes() == b""
