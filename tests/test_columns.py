"""Guessing the columns of files nobody configured for (``streamdetect.columns``), and replay using it."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamdetect.cli import main
from streamdetect.columns import ColumnGuess, guess_columns
from streamdetect.config import EventSchema
from streamdetect.generate import GeneratorConfig, generate
from streamdetect.sources import sample_records

SCHEMA = EventSchema()


def _guess(rows: list[dict], explicit: tuple[str, ...] = (), schema: EventSchema = SCHEMA) -> ColumnGuess:
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    return guess_columns(columns, rows, schema, explicit)


def _invoice_lines(n: int = 300) -> list[dict]:
    return [{"InvoiceNo": 536365 + i // 4, "StockCode": f"85{i % 37:03d}", "Description": f"ITEM NUMBER {i}",
             "Quantity": 1 + i % 6, "InvoiceDate": f"12/{1 + i // 100}/2010 8:{i % 60:02d}", "UnitPrice": 2.55,
             "CustomerID": 17850 + i % 13, "Country": ("United Kingdom", "France", "Spain")[i % 3]}
            for i in range(n)]


def test_an_invoice_export_reads_as_sales_per_country() -> None:
    """The UCI Online Retail layout: its names differ from the defaults only in case and
    underscores (Quantity, UnitPrice), the SKU is a stock code, and the key is the one text column
    with few values (not the descriptions, not the invoice or customer numbers)."""
    g = _guess(_invoice_lines())
    assert g == ColumnGuess(time_field="InvoiceDate", quantity_field="Quantity", unit_price_field="UnitPrice",
                            sku_field="StockCode", key_fields=("Country",))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # a metric series (NAB's layout)
        ([{"timestamp": f"2014-02-14 14:{i:02d}:00", "value": 0.1 * i} for i in range(50)],
         ColumnGuess(time_field="timestamp", value_fields=("value",))),
        # a long file of daily unit sales per store and item (a Kaggle layout): two keys, one series each
        ([{"date": f"2013-01-{1 + i // 10:02d}", "store": i % 2, "item": i % 5, "sales": 30 + i % 7}
          for i in range(100)],
         ColumnGuess(time_field="date", key_fields=("store", "item"), value_fields=("sales",))),
        # a wide metrics export in epoch seconds: one series per column, the row number left out
        ([{"row_id": i, "time": 1_700_000_000 + 60 * i, "cpu": 0.5, "mem": 71.2 + i} for i in range(50)],
         ColumnGuess(time_field="time", value_fields=("cpu", "mem"))),
        # a series per host
        ([{"ts": f"2024-03-01T00:{i // 3:02d}:00Z", "host": f"web-{i % 3}", "latency_ms": 12.5} for i in range(90)],
         ColumnGuess(key_fields=("host",), value_fields=("latency_ms",))),
        # sales events with an amount and a shop
        ([{"created_at": 1_709_294_400_000 + i, "shop": "s1", "order_total": 19.9, "product_id": "A"}
          for i in range(50)],
         ColumnGuess(time_field="created_at", amount_field="order_total", sku_field="product_id",
                     key_fields=("shop",))),
        # a till's log of items sold (no amount at all): each line one sale, counted
        ([{"DateTime": f"2016-10-30 09:{i % 60:02d}:11", "Transaction": 1 + i // 3, "Item": ("Bread", "Coffee")[i % 2]}
          for i in range(60)],
         ColumnGuess(time_field="DateTime", sku_field="Item", unpriced=True)),
        # the same with the date and the time of day in two columns (a bakery's export)
        ([{"Date": f"2016-10-{30 + i // 40}", "Time": f"09:{i % 60:02d}:11", "Transaction": 1 + i // 3,
           "Item": "Bread"} for i in range(60)],
         ColumnGuess(time_field="Date", time_of_day="Time", sku_field="Item", unpriced=True)),
        # a web shop's order payloads: money as strings, the key an integer id
        ([{"id": 4000 + i, "created_at": f"2024-03-01T10:{i % 60:02d}:00-05:00", "location_id": 11 + i % 3,
           "total_price": f"{19.5 + i:.2f}", "currency": "USD"} for i in range(60)],
         ColumnGuess(time_field="created_at", amount_field="total_price", key_fields=("location_id",),
                     numeric_strings=True)),
    ],
)
def test_layouts(rows: list[dict], expected: ColumnGuess) -> None:
    assert _guess(rows) == expected


def test_what_the_defaults_find_or_the_user_gave_is_not_guessed() -> None:
    events, _ = generate(GeneratorConfig(stores=2, days=1, seed=1))
    assert _guess(events[:200]) == ColumnGuess()  # the generator's events: the defaults
    rows = _invoice_lines()
    given = _guess(rows, explicit=("time_field", "amount_field", "key_fields"))
    assert given == ColumnGuess(sku_field="StockCode")  # a measure given: the measures are the user's
    # nothing reads as a time (invoice numbers are not epoch seconds): no time column is made up
    assert _guess([{k: v for k, v in r.items() if k != "InvoiceDate"} for r in rows]).time_field is None


def test_replay_of_an_unconfigured_series_equals_the_configured_replay(tmp_path: Path, capsys) -> None:
    """A `time,temperature` file replayed with no flag reads as the flags would have it, says so,
    and gives the same alerts byte for byte."""
    rng = np.random.default_rng(3)
    n = 9 * 288
    temp = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 0.8, n)
    temp[7 * 288 + 100 : 7 * 288 + 106] += 25
    src = tmp_path / "sensor.csv"
    src.write_text("time,temperature\n" + "".join(
        f"{(1_767_225_600 + 300 * i) * 1000},{v:.3f}\n" for i, v in enumerate(temp)))
    guessed, configured = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["replay", str(src), "--alerts", str(guessed)]) == 0
    assert "columns read as --time-field time --value-field temperature" in capsys.readouterr().err
    assert main(["replay", str(src), "--alerts", str(configured), "--time-field", "time",
                 "--value-field", "temperature"]) == 0
    assert "columns read as" not in capsys.readouterr().err
    alerts = guessed.read_bytes()
    assert alerts == configured.read_bytes()
    starts = [orjson.loads(a)["window_start"] for a in alerts.splitlines()]
    assert "2026-01-08T08:20:00Z" in starts


def test_sample_records_of_a_jsonl_file(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_bytes(b'{"t": 1, "a": 2}\nnot json\n[1]\n{"b": 3}\n')
    assert sample_records(p, "jsonl") == (["t", "a", "b"], [{"t": 1, "a": 2}, {"b": 3}])
    assert sample_records("-", "jsonl") == ([], [])


def test_a_jsonl_series_without_keys_is_one_stream(tmp_path: Path, capsys) -> None:
    """JSONL objects with a time and a value only: the value is the series, every object the one
    stream (as a CSV's rows are), and a line that is not an object is still rejected as such."""
    src = tmp_path / "s.jsonl"
    lines = [orjson.dumps({"timestamp": 1_767_225_600_000 + 60_000 * i, "value": 10.5 + i % 7}) for i in range(500)]
    src.write_bytes(b"\n".join([*lines[:100], b"oops", b"{}", *lines[100:]]) + b"\n")
    rejects = tmp_path / "r.jsonl"
    assert main(["replay", str(src), "--rejects", str(rejects), "--warmup", "200"]) == 0
    err = capsys.readouterr().err
    assert "columns read as --time-field timestamp --value-field value" in err
    assert "valid 500, rejected 2" in err, err
    assert [orjson.loads(r)["reason"] for r in rejects.read_bytes().splitlines()] == ["decode", "missing_field"]


def test_an_order_export_with_dates_alone_reads_as_daily_sales(tmp_path: Path, capsys) -> None:
    """A Superstore-like export: order lines with an Order ID, an Order Date without a time, Sales
    (the line's amount, since there is an order id) and Quantity, per Region. Replay with no flag
    reads the lines as sales per region in windows of a day (minute windows put a day's sales in
    its first minute: thousands of alerts), and finds the five days a region sold nothing and the
    day another had ten times its orders, with few false alarms."""
    import datetime

    rng = np.random.default_rng(4)
    rows = ["Row ID,Order ID,Order Date,Region,Product ID,Sales,Quantity,Profit"]
    day0 = datetime.date(2014, 1, 3)
    for day in range(3 * 365):
        d = day0 + datetime.timedelta(days=day)
        for region in ("West", "East", "Central", "South"):
            orders = int(rng.integers(1, 6))
            if region == "West" and datetime.date(2016, 3, 10) <= d <= datetime.date(2016, 3, 14):
                orders = 0
            if region == "East" and d == datetime.date(2015, 9, 22):
                orders = 40
            for _ in range(orders):
                oid = f"CA-{d.year}-{rng.integers(100000, 999999)}"
                for _ in range(int(rng.integers(1, 5))):
                    q = int(rng.integers(1, 10))
                    rows.append(f"{len(rows)},{oid},{d.month}/{d.day}/{d.year},{region},OFF-{rng.integers(1000, 9999)},"
                                f"{q * rng.lognormal(3, 1):.2f},{q},{rng.uniform(-10, 50):.2f}")
    src = tmp_path / "orders.csv"
    src.write_text("\n".join(rows) + "\n")
    alerts_path = tmp_path / "alerts.jsonl"
    assert main(["replay", str(src), "--alerts", str(alerts_path)]) == 0
    err = capsys.readouterr().err
    assert "--time-field Order Date --quantity-field Quantity --amount-field Sales --sku-field Product ID" in err
    assert "--key Region" in err and "windows of 86400 s" in err
    alerts = [orjson.loads(a) for a in alerts_path.read_bytes().splitlines()]
    found = {(a["key"]["Region"], a["window_start"][:10]) for a in alerts}
    assert ("East", "2015-09-22") in found
    assert any(region == "West" and "2016-03-10" <= day <= "2016-03-15" for region, day in found), found
    # elsewhere (the anomalies and the few days after them aside) about what the risk allows:
    # 4,380 region-days at 1e-4, which SPOT realises at a few times that
    around = {("East", f"2015-09-{d}") for d in range(22, 27)} | {("West", f"2016-03-{d}") for d in range(10, 20)}
    assert len(found - around) <= 3, found


def test_a_till_log_without_amounts_is_counted(tmp_path: Path, capsys) -> None:
    """Lines of receipts with an item and no price (a bakery's till log): replay with no flag reads
    each line as one sale without an amount (``--unpriced``), models counts, baskets and items
    only, and finds the afternoon the shop sold nothing."""
    rng = np.random.default_rng(8)
    t0 = 1_767_571_200  # 2026-01-05, seconds
    lines = ["DateTime,Transaction,Item"]
    receipt = 0
    for day in range(14):
        for minute in range(8 * 60, 18 * 60):
            if day == 11 and 13 * 60 <= minute < 16 * 60:
                continue  # the till is down
            for _ in range(rng.poisson(1.5)):
                receipt += 1
                for _ in range(int(rng.integers(1, 4))):
                    t = t0 + day * 86_400 + minute * 60 + int(rng.integers(0, 60))
                    when = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
                    lines.append(f"{when},{receipt},{rng.choice(['Bread', 'Coffee', 'Tea', 'Cake', 'Scone'])}")
    src = tmp_path / "till.csv"
    src.write_text("\n".join(lines) + "\n")
    alerts_path = tmp_path / "alerts.jsonl"
    assert main(["replay", str(src), "--alerts", str(alerts_path)]) == 0
    err = capsys.readouterr().err
    assert "--time-field DateTime --sku-field Item --unpriced" in err, err
    alerts = [orjson.loads(a) for a in alerts_path.read_bytes().splitlines()]
    down = [a for a in alerts if "2026-01-16T13:00:00Z" <= a["window_start"] < "2026-01-16T16:00:00Z"]
    assert down, [a["window_start"] for a in alerts]
    assert all("revenue" not in a["features"] and "count" in a["features"] for a in alerts)
