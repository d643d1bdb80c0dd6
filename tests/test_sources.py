"""Reading JSONL and CSV event files (plain, gzip, stdin) for replay."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import orjson
import pytest

from streamdetect.config import ConfigError, EventSchema
from streamdetect.events import RejectReason, decode_events, decode_records
from streamdetect.sources import SERIES_KEY, detect_format, iter_csv_chunks, iter_jsonl_chunks

T0 = 1_709_294_400_000


def test_jsonl_lines_in_order_blank_lines_skipped_and_chunked(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_bytes(b'{"i": 0}\n\n{"i": 1}\r\n   \n{"i": 2}\n{"i": 3}\n{"i": 4}')
    chunks = list(iter_jsonl_chunks(p, chunk_size=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [orjson.loads(v)["i"] for c in chunks for v in c] == [0, 1, 2, 3, 4]


def test_jsonl_keeps_bad_lines_for_the_decoder(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    line = orjson.dumps({"ts": T0, "store_id": "s", "amount": 1.0})
    p.write_bytes(line + b"\nnot json\n" + line + b"\n")
    (values,) = iter_jsonl_chunks(p)
    batch, rejected = decode_events(values, EventSchema())
    assert batch.index.tolist() == [0, 2] and [(r.index, r.reason) for r in rejected] == [(1, RejectReason.DECODE)]


def test_jsonl_gzip(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"".join(b'{"i": %d}\n' % i for i in range(10)))
    assert [orjson.loads(v)["i"] for c in iter_jsonl_chunks(p, 3) for v in c] == list(range(10))


def test_jsonl_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"i": 1}\n{"i": 2}\n')))
    assert list(iter_jsonl_chunks("-")) == [[b'{"i": 1}', b'{"i": 2}']]


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "e.csv").write_bytes(b"")
    assert list(iter_jsonl_chunks(tmp_path / "e.jsonl")) == []
    assert list(iter_csv_chunks(tmp_path / "e.csv", EventSchema())) == []


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"{}\n")
    with pytest.raises(ValueError):
        list(iter_jsonl_chunks(tmp_path / "e.jsonl", 0))


def test_detect_format() -> None:
    assert detect_format("a.csv") == "csv" and detect_format("A.CSV.GZ") == "csv"
    assert (
        detect_format("a.jsonl") == "jsonl" and detect_format("a.jsonl.gz") == "jsonl" and detect_format("-") == "jsonl"
    )
    assert detect_format("a.txt", "csv") == "csv" and detect_format("a.csv", "jsonl") == "jsonl"
    with pytest.raises(ConfigError):
        detect_format("a.csv", "parquet")


def test_csv_events_with_key_columns(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text(
        "\ufeffts,store_id,sku,quantity,unit_price,channel\n"
        f"{T0},007,00123,2,5.5,web\n"
        "2024-03-01T12:00:01Z,8,A,abc,1,app\n"
        "2024-03-01T12:00:02Z,9,,1,-2,\n"
    )
    (rows,) = iter_csv_chunks(p, EventSchema())
    assert rows[0] == {"ts": T0, "store_id": "007", "sku": "00123", "quantity": 2, "unit_price": 5.5, "channel": "web"}
    assert "sku" not in rows[2] and "channel" not in rows[2]
    batch, rejected = decode_records(rows, EventSchema())
    assert batch.keys == [("007",)] and batch.amount.tolist() == [11.0]
    assert [(r.index, r.reason) for r in rejected] == [(1, RejectReason.BAD_TYPE), (2, RejectReason.OUT_OF_RANGE)]


def test_csv_aggregated_series_gets_a_constant_key(tmp_path: Path) -> None:
    p = tmp_path / "series.csv.gz"
    with gzip.open(p, "wt", newline="") as f:
        f.write("timestamp,value\n")
        for i in range(5):
            f.write(f"2024-03-01T12:0{i}:00Z,{i * 1.5}\n")
        f.write("2024-03-01T12:05:00Z,\n")
    schema = EventSchema(time_field="timestamp", value_field="value")
    chunks = list(iter_csv_chunks(p, schema, chunk_size=4))
    assert [len(c) for c in chunks] == [4, 2]
    batch, rejected = decode_records([r for c in chunks for r in c], schema)
    assert batch.keys == [(SERIES_KEY,)] * 5
    assert batch.amount.tolist() == [0.0, 1.5, 3.0, 4.5, 6.0] and batch.quantity.tolist() == [1.0] * 5
    assert batch.ts_ms.tolist() == [T0 + i * 60_000 for i in range(5)]
    assert [(r.index, r.reason) for r in rejected] == [(5, RejectReason.MISSING_FIELD)]


def test_csv_numeric_conversion() -> None:
    from streamdetect.sources import _number

    assert _number("12") == 12 and _number("-3") == -3 and _number("1.5e3") == 1500.0 and _number(".5") == 0.5
    for text in ("nan", "inf", "1_000", " 12", "0x10", "١٢", "12abc"):
        assert _number(text) == text


def test_csv_header_errors(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("timestamp,value\n2024-03-01T12:00:00Z,1\n")
    with pytest.raises(ConfigError, match="time_field"):
        list(iter_csv_chunks(p, EventSchema(value_field="value")))
    p.write_text("ts,store_id,amount\n2024-03-01T12:00:00Z,s,1\n")
    with pytest.raises(ConfigError, match="region"):
        list(iter_csv_chunks(p, EventSchema(key_fields=("store_id", "region"))))
    p.write_text("\nts,store_id,amount\n2024-03-01T12:00:00Z,s,1\n")
    with pytest.raises(ConfigError, match="the first line is empty"):
        list(iter_csv_chunks(p, EventSchema()))


def test_csv_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ts,store_id,amount\n1709294400000,s,2.5\n")))
    assert list(iter_csv_chunks("-", EventSchema())) == [[{"ts": T0, "store_id": "s", "amount": 2.5}]]


def test_a_windows_spreadsheet_export_and_a_stray_byte_do_not_stop_a_replay(tmp_path: Path) -> None:
    """A CSV saved by a spreadsheet on Windows (cp1252: ``München`` with one byte for ``ü``) reads
    with its names intact; a UTF-8 file with one undecodable byte far into it reads too, the byte
    becoming U+FFFD in its cell, instead of ending the run with a UnicodeDecodeError."""
    from streamdetect.sources import csv_encoding

    rows = ["time;store;revenue", *(f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z;München;{i},5" for i in range(600))]
    windows = tmp_path / "windows.csv"
    windows.write_bytes(("\n".join(rows) + "\n").encode("cp1252"))
    schema = EventSchema(time_field="time", key_fields=("store",), value_field="revenue")
    assert csv_encoding(windows) == "cp1252"
    records = [r for chunk in iter_csv_chunks(windows, schema) for r in chunk]
    assert len(records) == 600 and records[0]["store"] == "München" and records[1]["revenue"] == 1.5

    stray = tmp_path / "stray.csv"
    lines = [b"time,store,revenue", *(b"2024-01-01T00:00:%02dZ,s1,%d" % (i % 60, i) for i in range(5000))]
    lines[4000] = b"2024-01-01T00:00:00Z,s\xff1,7"
    stray.write_bytes(b"\n".join(lines) + b"\n")
    assert csv_encoding(stray) == "utf-8-sig"  # the bad byte is past the first 64 KiB
    schema = EventSchema(time_field="time", key_fields=("store",), value_field="revenue")
    records = [r for chunk in iter_csv_chunks(stray, schema) for r in chunk]
    assert len(records) == 5000 and records[3999]["store"] == "s\ufffd1"


@pytest.mark.parametrize(
    ("written", "iso"),
    [
        ("12/1/2010 8:26", "2010-12-01T08:26:00Z"),  # UCI Online Retail
        ("2024-03-01 13:05:00 UTC", "2024-03-01T13:05:00Z"),
        ("3/1/2024 1:05 PM", "2024-03-01T13:05:00Z"),
        ("3/1/2024 1:05:30 AM", "2024-03-01T01:05:30Z"),
        ("01-Mar-2024 13:05", "2024-03-01T13:05:00Z"),
        ("1 Mar 2024", "2024-03-01T00:00:00Z"),
        ("Mar 1, 2024 13:05", "2024-03-01T13:05:00Z"),
        ("01.03.2024 13:05", "2024-03-01T13:05:00Z"),
    ],
)
def test_what_exports_write_for_a_time_is_recognised(written: str, iso: str) -> None:
    """The format guessed from a sample reads each of its times as the moment meant (the sample's
    other times put the day after the twelfth, so month-first and day-first are not ambiguous)."""
    from streamdetect.events import parse_timestamp, time_parser
    from streamdetect.sources import guess_time_format

    sample = [written] * 50
    later = {"12/1/2010 8:26": "12/13/2010 8:26", "3/1/2024 1:05 PM": "3/13/2024 1:05 PM",
             "3/1/2024 1:05:30 AM": "3/13/2024 1:05:30 AM", "01.03.2024 13:05": "13.03.2024 13:05"}
    sample += [later.get(written, written)] * 50
    fmt = guess_time_format(sample, EventSchema().min_time_ms, EventSchema().max_time_ms)
    assert fmt is not None
    parse = time_parser(fmt)
    assert parse is not None and parse(written) == parse_timestamp(iso)


def test_a_date_column_and_a_time_of_day_column_are_joined(tmp_path: Path) -> None:
    p = tmp_path / "bakery.csv"
    p.write_text("Date,Time,Transaction,Item\n2016-10-30,09:58:11,1,Bread\n2016-10-30,10:05:00,2,\n")
    schema = EventSchema(time_field="Date", key_fields=("store_id",), unpriced=True)
    rows = next(iter_csv_chunks(p, schema, time_of_day="Time"))
    assert [r["Date"] for r in rows] == ["2016-10-30 09:58:11", "2016-10-30 10:05:00"]
    assert "Time" not in rows[0] and rows[0]["Transaction"] == 1
    batch, rejected = decode_records(rows, schema)
    assert not rejected and batch.ts_ms.tolist()[0] % 86_400_000 == (9 * 3600 + 58 * 60 + 11) * 1000
    with pytest.raises(ConfigError, match="time of day"):
        next(iter_csv_chunks(p, schema, time_of_day="Clock"))
