"""Detection on an invoice-line export, a shape of sales data the generator does not make.

Shops' order systems export one row per invoice *line* (the layout of the UCI "Online Retail"
data set): ``InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID,
Country``, dates written ``12/1/2010 8:26``, cancellations as negative quantities. A window's
events are then not independent sales: an invoice's lines share a customer, who buys packs of 6,
12 or 24 of many items at one price level. This script writes such an export (countries of very
different size, opening hours, no trading on Saturdays, 2 % cancelled invoices), injects a few
labelled anomalies, replays it exactly as ``streamdetect replay`` does with the columns mapped
(``--time-field InvoiceDate --key Country --quantity-field Quantity --price-field UnitPrice
--sku-field StockCode``), and reports precision, recall and false alerts per country-day.

The peer, in the same run on the same file: the detector with the basket and assortment features
of the releases before 2026-11-30, the log ratios ``units_per_event_ratio`` and
``distinct_skus_ratio``, in place of ``units_per_event_z`` and ``distinct_skus_z`` (everything
else, the mean ticket's allowance for lines that come together included, is the same).

    python benchmarks/bench_invoices.py [--days 60] [--seed 3]

The data are synthetic (written here, with their labels); only the comparison carries.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime as dt  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from streamdetect.cli import main as cli_main  # noqa: E402
from streamdetect.config import DEFAULT_FEATURES  # noqa: E402
from streamdetect.evaluate import evaluate  # noqa: E402

COUNTRIES = {"United Kingdom": 40.0, "Germany": 4.0, "France": 3.0, "EIRE": 2.0, "Spain": 1.0}  # invoices/hour
OPEN_HOURS = range(8, 20)
START = dt.datetime(2010, 12, 1)
PEER_FEATURES = tuple(
    {"units_per_event_z": "units_per_event_ratio", "distinct_skus_z": "distinct_skus_ratio"}.get(f, f)
    for f in DEFAULT_FEATURES
)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_export(path: Path, days: int, seed: int) -> list[dict[str, Any]]:
    """Write the export; return the labelled anomalies (after the first two weeks)."""
    rng = np.random.default_rng(seed)
    skus = np.array([str(c) for c in rng.choice(np.arange(20000, 24000), 3000, replace=False)])
    popularity = 1.0 / np.arange(1, len(skus) + 1)  # Zipf's law over the catalogue's ranks
    popularity /= popularity.sum()
    prices = np.round(np.exp(rng.normal(1.0, 0.8, len(skus))), 2) + 0.05

    labels: list[dict[str, Any]] = []
    planned: dict[tuple[str, int], str] = {}  # (country, day) -> anomaly type
    kinds = ["outage", "repeated_sku", "price_glitch", "bulk_order"]
    trading = [d for d in range(14, days) if (START + dt.timedelta(days=d)).weekday() != 5]
    for i, day in enumerate(rng.choice(trading, size=min(len(trading), 2 * len(kinds)), replace=False)):
        country = ["United Kingdom", "Germany", "France"][i % 3]
        planned[(country, int(day))] = kinds[i % len(kinds)]

    rows: list[tuple[dt.datetime, str, str, int, float, int, str]] = []
    invoice = 536365
    for d in range(days):
        day = START + dt.timedelta(days=d)
        if day.weekday() == 5:
            continue
        for country, rate in COUNTRIES.items():
            kind = planned.get((country, d))
            at = day + dt.timedelta(hours=int(rng.integers(10, 16)), minutes=int(rng.integers(0, 60)))
            span = {"outage": 180, "price_glitch": 30}.get(kind or "", 1)
            if kind is not None:
                labels.append({
                    "anomaly_id": f"{kind}-{country}-{d}", "type": kind, "key": {"Country": country},
                    "start": _iso(at), "end": _iso(at + dt.timedelta(minutes=span)), "magnitude": 0.0,
                })
            for hour in OPEN_HOURS:
                busy = 1.5 if 10 <= hour <= 15 else 0.6
                for _ in range(rng.poisson(rate * busy)):
                    t = day + dt.timedelta(hours=hour, minutes=int(rng.integers(0, 60)))
                    if kind == "outage" and at <= t < at + dt.timedelta(minutes=span):
                        continue
                    invoice += 1
                    cancelled = rng.random() < 0.02
                    level = np.exp(rng.normal(0.0, 0.3))  # the customer's price level
                    pack = int(rng.choice([1, 2, 6, 12, 24], p=[0.3, 0.2, 0.25, 0.15, 0.1]))
                    glitch = kind == "price_glitch" and at <= t < at + dt.timedelta(minutes=span)
                    customer = int(rng.integers(12000, 18000))
                    for j in rng.choice(len(skus), size=int(rng.integers(1, 25)), p=popularity):
                        q = pack * int(rng.integers(1, 4))
                        price = round(float(prices[j] * level * (0.01 if glitch else 1.0)), 2) or 0.01
                        rows.append((t, f"{'C' if cancelled else ''}{invoice}", str(skus[j]),
                                     -q if cancelled else q, price, customer, country))
            if kind == "repeated_sku":  # a script buying one item again and again for a minute
                sku = str(skus[int(rng.integers(len(skus)))])
                rows += [(at, str(invoice + 1 + n), sku, 1, float(prices[0]), 99999, country) for n in range(40)]
                invoice += 41
            elif kind == "bulk_order":  # one line of thousands of units at the usual price
                rows.append((at, str(invoice + 1), str(skus[0]), 5000, float(prices[0]), 12345, country))
                invoice += 1
    rows.sort(key=lambda r: r[0])
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID",
                    "Country"])
        for t, inv, sku, q, price, customer, country in rows:
            w.writerow([inv, sku, "ITEM", q, f"{t.month}/{t.day}/{t.year} {t.hour}:{t.minute:02d}", price,
                        customer, country])
    return labels


def replay(path: Path, alerts: Path, features: tuple[str, ...]) -> float:
    t = time.perf_counter()
    rc = cli_main([
        "replay", str(path), "--time-field", "InvoiceDate", "--key", "Country", "--quantity-field", "Quantity",
        "--price-field", "UnitPrice", "--sku-field", "StockCode", "--features", ",".join(features),
        "--alerts", str(alerts), "--quiet",
    ])
    assert rc == 0, rc
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "invoices.csv"
        labels = write_export(export, args.days, args.seed)
        n_rows = sum(1 for _ in export.open()) - 1
        print(f"{n_rows:,} invoice lines, {len(COUNTRIES)} countries, {args.days} days,"
              f" {len(labels)} labelled anomalies")
        trading_days = sum((START + dt.timedelta(days=d)).weekday() != 5 for d in range(args.days))
        for name, features in (("streamdetect", DEFAULT_FEATURES), ("peer: the ratio features", PEER_FEATURES)):
            out = Path(tmp) / "alerts.jsonl"
            elapsed = replay(export, out, features)
            alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
            report = evaluate(labels, alerts, window_seconds=60.0, n_keys=len(COUNTRIES), span_days=trading_days)
            found = sorted(r.type for r in report.label_results if r.detected)
            print(f"\n== {name} ({elapsed:.0f} s)")
            print(f"alerts {report.n_alerts} | false {report.n_false_alerts}"
                  f" ({report.false_alerts_per_key_day:.2f} per country-day) | detected {report.n_detected}"
                  f"/{report.n_labels}: {', '.join(found) or '-'}")


if __name__ == "__main__":
    main()
