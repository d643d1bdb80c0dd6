"""Reading event files for ``streamdetect replay`` and ``streamdetect produce``.

JSONL gives raw lines (bytes, for :func:`~streamdetect.events.decode_events`); CSV gives records
(dicts, for :func:`~streamdetect.events.decode_records`). Both come in chunks, in file order, and
both read ``.gz`` files; ``-`` is standard input.

CSV rules:

* the columns are named by the :class:`~streamdetect.config.EventSchema` (``time_field``,
  ``key_fields``, ``amount_field``, ...), header row required;
* numeric-looking cells become ``int`` or ``float`` (so epoch milliseconds and amounts are
  numbers), except in the key, SKU, event id, channel and currency columns, which stay strings
  (``"007"`` is a store id, not 7); empty cells are absent, cells beyond the header ignored;
* when *none* of the key fields is a column (e.g. a ``timestamp,value`` series), every row gets
  the constant key :data:`SERIES_KEY` in each key field; when only some are, that is an error;
* the delimiter is the comma, or a semicolon, tab or bar when the header holds more of those; with
  one of those, a number with a comma has it as its decimal mark (``12,5`` is 12.5 and
  ``1.234,5`` is 1234.5, as spreadsheets in many locales write them), while one without keeps
  the dot as its decimal point;
* a missing time column is an error (a :class:`~streamdetect.config.ConfigError`) rather than a
  file where every row is rejected.

>>> import tempfile, pathlib
>>> from streamdetect.config import EventSchema
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "s.csv").write_text("timestamp,value\\n2024-03-01T00:00:00Z,12.5\\n2024-03-01T00:01:00Z,3\\n")
>>> schema = EventSchema(time_field="timestamp", value_field="value")
>>> for row in next(iter_csv_chunks(d / "s.csv", schema)):
...     print(row)
{'timestamp': '2024-03-01T00:00:00Z', 'value': 12.5, 'store_id': 'series'}
{'timestamp': '2024-03-01T00:01:00Z', 'value': 3, 'store_id': 'series'}
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, Literal

from streamdetect.config import ConfigError, EventSchema
from streamdetect.events import parse_number, parse_timestamp, time_parser

__all__ = [
    "SERIES_KEY",
    "csv_encoding",
    "detect_format",
    "guess_time_format",
    "iter_csv_chunks",
    "iter_jsonl_chunks",
    "looks_like_counts",
    "median_spacing_s",
    "reads_as_times",
    "sample_records",
    "signed_offset",
    "time_resolution_s",
]

SERIES_KEY = "series"
"""Key value given to every row of a CSV without key columns (one aggregated series)."""
_MIN_SAMPLES_FOR_KIND = 20


def median_spacing_s(ts_ms: Any) -> float | None:
    """Median spacing in seconds (at least 1) of a series' distinct sample times; None with fewer than 3.

    >>> median_spacing_s([0, 300_000, 600_000, 600_000, 1_500_000])
    300.0
    """
    import numpy as np

    times = np.unique(np.asarray(ts_ms))
    if len(times) < 3:
        return None
    return max(float(np.median(np.diff(times))) / 1000.0, 1.0)


def time_resolution_s(ts_ms: Any) -> float | None:
    """The coarsest of a day and an hour that every time of a sample is a whole multiple of (at
    least 20 times): the resolution of an export that writes dates alone, or whole hours; None
    for finer times.

    >>> day = 86_400_000
    >>> time_resolution_s([day * i for i in range(30)]), time_resolution_s([3_600_000 * i for i in range(30)])
    (86400.0, 3600.0)
    >>> time_resolution_s([60_000 * i for i in range(30)]) is None
    True
    """
    import numpy as np

    t = np.asarray(ts_ms, dtype=np.int64)
    if len(t) < _MIN_SAMPLES_FOR_KIND:
        return None
    for seconds in (86_400, 3_600):
        if not np.any(t % (seconds * 1000)):
            return float(seconds)
    return None


def looks_like_counts(values: Any) -> bool:
    """Whether a series' values read best as counts: at least 20 of them, all whole numbers >= 0.

    Requests, tweets, orders and units sold per interval are counts in their natural unit, and
    their noise grows with their level as a count's does; a series with a fraction anywhere
    (CPU percent, prices, latencies) is a value.

    >>> looks_like_counts([3, 0, 12] * 10), looks_like_counts([3, 0.5, 12] * 10), looks_like_counts([3, 4])
    (True, False, False)
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if len(v) < _MIN_SAMPLES_FOR_KIND:
        return False
    return bool(np.all(np.isfinite(v) & (v >= 0) & (v == np.round(v))))



PathArg = str | os.PathLike[str]


# What exports write instead of RFC 3339, tried in this order when "auto" does not read a time:
# ISO dates before day-first and month-first ones; a sample that reads both ways (every day <= 12)
# takes the first that fits, and replay names it.
_TIME_FORMATS = (
    "epoch_s",
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y-%m-%d %H:%M",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y",
    "%Y-%m-%d %H:%M:%S %Z",  # 2024-03-01 12:00:00 UTC (database dumps)
    "%m/%d/%Y %I:%M %p",  # 3/1/2024 1:05 PM (spreadsheets in the US)
    "%m/%d/%Y %I:%M:%S %p",
    "%d-%b-%Y %H:%M",  # 01-Mar-2024 13:05
    "%d-%b-%Y %H:%M:%S",
    "%d-%b-%Y",
    "%d %b %Y %H:%M",  # 1 Mar 2024 13:05
    "%d %b %Y",
    "%b %d, %Y %H:%M",  # Mar 1, 2024 13:05
    "%b %d, %Y",
)


def guess_time_format(times: Sequence[Any], min_time_ms: int, max_time_ms: int) -> str | None:
    """The ``events.time_format`` that reads a sample's times, when ``"auto"`` does not.

    A format reads the sample when it reads all its times but one in a hundred (a few broken rows
    are the decoder's to reject, with their reason). None when ``"auto"`` reads it (RFC 3339,
    epoch milliseconds) or nothing else does; missing times (None) are left out. Epoch seconds
    and milliseconds cannot both be valid between 2000 and 2100, so numeric times are told apart
    by their size.

    >>> lo, hi = 946_684_800_000, 4_102_444_800_000
    >>> guess_time_format([1416726000, 1416729600.5], lo, hi)
    'epoch_s'
    >>> guess_time_format(["2013-01-01", "2013-01-02"], lo, hi)
    '%Y-%m-%d'
    >>> guess_time_format(["12/1/2010 8:26"] * 120 + ["oops"], lo, hi)
    '%m/%d/%Y %H:%M'
    >>> guess_time_format(["2013-01-01T00:00:00Z", 1416726000000], lo, hi) is None
    True
    """
    times = [t for t in times if t is not None]  # a missing time is rejected whatever the format
    if not times or _reads(times, parse_timestamp, min_time_ms, max_time_ms):
        return None
    return next((fmt for fmt in _TIME_FORMATS if _reads(times, time_parser(fmt), min_time_ms, max_time_ms)), None)


def _reads(times: Sequence[Any], parse: Any, min_time_ms: int, max_time_ms: int) -> bool:
    """Whether ``parse`` reads all the times but one in a hundred, inside the allowed range."""
    allowed = len(times) // 100
    failed = 0
    for t in times:
        try:
            ok = min_time_ms <= parse(t) < max_time_ms
        except (ValueError, TypeError, OverflowError):
            ok = False
        failed += not ok
        if failed > allowed:
            return False
    return True


def reads_as_times(times: Sequence[Any], min_time_ms: int, max_time_ms: int) -> bool:
    """Whether a sample of cells are times: RFC 3339 or epoch milliseconds, or all in one of the
    formats :func:`guess_time_format` knows (all but one in a hundred, between the two bounds).

    >>> lo, hi = 946_684_800_000, 4_102_444_800_000
    >>> reads_as_times(["12/1/2010 8:26", "12/1/2010 9:01"], lo, hi), reads_as_times([536374, 536375], lo, hi)
    (True, False)
    """
    times = [t for t in times if t is not None]
    if not times:
        return False
    return _reads(times, parse_timestamp, min_time_ms, max_time_ms) or guess_time_format(
        times, min_time_ms, max_time_ms
    ) is not None


def signed_offset(ts_ms: Any, values: Any, span_s: float = 86_400.0) -> float:
    """The shift that reads a signed series as positive levels: 0 when no value is negative.

    A series with negative values is on an interval scale (degrees Celsius, differences), where
    only differences mean something. It is shifted so that the lowest value of its first
    ``span_s`` (zero, if that is lower) sits one spread above zero: the spread of those samples
    from that lowest value to the highest. Only the first span is looked at, as a streaming
    detector could.

    >>> signed_offset([0, 1, 2, 3], [-20.0, 80.0, 10.0, -30.0], span_s=0.002)
    120.0
    >>> signed_offset([0, 1], [1.0, 2.0])
    0.0
    """
    import numpy as np

    t = np.asarray(ts_ms, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if not len(v) or v.min() >= 0:
        return 0.0
    first = v[t < t.min() + span_s * 1000]
    lo, hi = min(float(first.min()), 0.0), float(first.max())
    spread = hi - lo if hi > lo else max(-lo, 1.0)
    return -lo + spread


def detect_format(path: PathArg, override: str | None = None) -> Literal["jsonl", "csv"]:
    """``"csv"`` for ``.csv`` / ``.csv.gz`` names, else ``"jsonl"``; ``override`` wins when given.

    >>> detect_format("sales.csv.gz"), detect_format("sales.jsonl"), detect_format("-", "csv")
    ('csv', 'jsonl', 'csv')
    """
    if override is not None:
        if override not in ("jsonl", "csv"):
            raise ConfigError(f"input format {override!r}: use 'jsonl' or 'csv'")
        return override  # type: ignore[return-value]
    return "csv" if os.fspath(path).lower().endswith((".csv", ".csv.gz")) else "jsonl"


def _open_binary(path: PathArg) -> IO[bytes]:
    if os.fspath(path) == "-":
        return sys.stdin.buffer
    if os.fspath(path).lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_jsonl_chunks(path: PathArg, chunk_size: int = 50_000) -> Iterator[list[bytes]]:
    """Raw lines of a JSONL file as bytes, ``chunk_size`` at a time, in file order.

    Line endings (``\\n``, ``\\r\\n``) are stripped and blank lines skipped, and so is a UTF-8
    byte order mark before the first line (Windows tools write one); nothing else is touched (a
    malformed line is the decoder's to reject, with its position).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "e.jsonl"
    >>> _ = p.write_bytes(b'\\xef\\xbb\\xbf{"a": 1}\\r\\n\\n  \\n{"a": 2}\\n{"a": 3}')
    >>> list(iter_jsonl_chunks(p, chunk_size=2))
    [[b'{"a": 1}', b'{"a": 2}'], [b'{"a": 3}']]
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    f = _open_binary(path)
    try:
        chunk: list[bytes] = []
        append = chunk.append
        lines = iter(f)
        first = next(lines, None)
        if first is not None:
            lines = itertools.chain([first.removeprefix(codecs.BOM_UTF8)], lines)
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line or line.isspace():
                continue
            append(line)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
                append = chunk.append
        if chunk:
            yield chunk
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _number(cell: str) -> Any:
    number = parse_number(cell)
    return cell if number is None else number


# 12,5 and 1.234,5 (dots group thousands where the comma is the decimal mark).
_DECIMAL_COMMA = re.compile(r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+),\d+", re.ASCII)


def _number_decimal_comma(cell: str) -> Any:
    """A cell where the comma may be the decimal mark: a cell with a comma reads it so (dots then
    group thousands); one without is read as usual (a dot is a decimal point).

    >>> [_number_decimal_comma(c) for c in ("12,5", "-1.234,5", "7", "0.25", "n/a")]
    [12.5, -1234.5, 7, 0.25, 'n/a']
    """
    if "," in cell:
        return float(cell.replace(".", "").replace(",", ".")) if _DECIMAL_COMMA.fullmatch(cell) else cell
    return _number(cell)


_SNIFF_BYTES = 1 << 16


def csv_encoding(path: PathArg) -> str:
    """``"utf-8-sig"``, unless the file's first 64 KiB are not UTF-8: then ``"cp1252"``, what
    spreadsheets on Windows write (``café`` as one byte ``e9``). Standard input is taken as UTF-8.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.csv"
    >>> _ = p.write_bytes(b"date,caf\\xe9\\n")
    >>> csv_encoding(p)
    'cp1252'
    """
    if os.fspath(path) == "-":
        return "utf-8-sig"
    with _open_binary(path) as f:
        head = f.read(_SNIFF_BYTES)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a character cut at the end of the sample is not a reason to doubt the file
        if len(head) < _SNIFF_BYTES or exc.start < len(head) - 3:
            return "cp1252"
    return "utf-8-sig"


def _open_text(path: PathArg, raw: IO[bytes] | None = None) -> io.TextIOWrapper:
    """The file as text in :func:`csv_encoding`'s encoding; a byte that does not decode becomes
    U+FFFD in its cell, rather than ending the run (a bad byte in one text field of one row)."""
    encoding = csv_encoding(path)
    return io.TextIOWrapper(raw if raw is not None else _open_binary(path), encoding=encoding, errors="replace",
                            newline="")


def sample_records(path: PathArg, fmt: str, n: int = 2000) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and the first ``n`` rows of a file, as records with numbers as numbers (for
    :func:`streamdetect.columns.guess_columns`); nothing for standard input, which cannot be read twice.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.csv"
    >>> _ = p.write_text("date;sales\\n2024-03-01;12,5\\n")
    >>> sample_records(p, "csv")
    (['date', 'sales'], [{'date': '2024-03-01', 'sales': 12.5}])
    """
    import orjson

    if os.fspath(path) == "-":
        return [], []
    columns: list[str] = []
    rows: list[dict[str, Any]] = []
    if fmt == "csv":
        with _open_text(path) as text:
            first_line = text.readline()
            delimiter = _delimiter(first_line)
            columns = [h.strip() for h in next(csv.reader([first_line], delimiter=delimiter), [])]
            number = _number if delimiter == "," else _number_decimal_comma
            for row in itertools.islice(csv.reader(text, delimiter=delimiter), n):
                rows.append({c: number(cell) for c, cell in zip(columns, row, strict=False) if cell != ""})
        return columns, rows
    for chunk in iter_jsonl_chunks(path, n):
        for line in chunk:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
                columns += [k for k in obj if k not in columns]
        break
    return columns, rows


def _delimiter(header_line: str) -> str:
    """The header's delimiter: the comma, or a semicolon, tab or bar when the header has more of those.

    >>> _delimiter("date;value\\n"), _delimiter("time\\tcpu\\n"), _delimiter("a,b;c,d\\n")
    (';', '\\t', ',')
    """
    counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def iter_csv_chunks(
    path: PathArg,
    schema: EventSchema,
    chunk_size: int = 50_000,
    *,
    series_columns: Sequence[str] = (),
    series_field: str = "series",
    time_of_day: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Rows of a CSV file (header required) as event records, ``chunk_size`` at a time.

    See the module docstring for the conversion rules; a ``timestamp,value`` series needs
    ``EventSchema(time_field="timestamp", value_field="value")``.

    ``series_columns`` reads a *wide* file (a metrics export: one column per series): each row
    gives one record per non-empty cell of those columns, with the column's name in
    ``series_field`` (a key field the file lacks) and the cell in ``schema.value_field``.

    ``time_of_day`` names a column holding the time of day of a time column that holds dates
    alone (``Date,Time``): its cell is appended to the date, ``2016-10-30 09:58:11``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "wide.csv"
    >>> _ = p.write_text("time,cpu,mem\\n2024-03-01T00:00:00Z,12.5,\\n")
    >>> schema = EventSchema(time_field="time", value_field="value", key_fields=("series",))
    >>> next(iter_csv_chunks(p, schema, series_columns=["cpu", "mem"]))
    [{'time': '2024-03-01T00:00:00Z', 'series': 'cpu', 'value': 12.5}]

    Raises
    ------
    ConfigError
        When the header lacks the time column or a series column, or has some of the key columns
        but not all.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    raw = _open_binary(path)
    text = _open_text(path, raw)
    try:
        first_line = text.readline()
        if not first_line:
            return
        delimiter = _delimiter(first_line)
        header = [h.strip() for h in next(csv.reader([first_line], delimiter=delimiter), [])]
        reader = csv.reader(text, delimiter=delimiter)
        if not any(header):
            raise ConfigError(f"{os.fspath(path)}: the first line is empty; a CSV starts with its header row")
        if schema.time_field not in header:
            raise ConfigError(
                f"{os.fspath(path)}: no column {schema.time_field!r} (events.time_field) in the CSV"
                f" header {header}, and none of its first rows' columns reads as times; name the time"
                " column with --time-field"
            )
        if time_of_day is not None and time_of_day not in header:
            raise ConfigError(
                f"{os.fspath(path)}: no column {time_of_day!r} (the time of day) in the CSV header {header}"
            )
        absent = [c for c in series_columns if c not in header]
        if absent:
            raise ConfigError(f"{os.fspath(path)}: series columns {absent} are not in the CSV header {header}")
        key_fields = [k for k in schema.key_fields if not (series_columns and k == series_field)]
        present = [k for k in key_fields if k in header]
        if present and len(present) < len(key_fields):
            missing = [k for k in key_fields if k not in header]
            raise ConfigError(
                f"{os.fspath(path)}: key columns {missing} (events.key_fields) are not in the CSV header {header}"
            )
        constant = {} if present else dict.fromkeys(key_fields, SERIES_KEY)
        value_name = schema.value_field or "value"
        keep_text = {*schema.key_fields, schema.sku_field, schema.event_id_field}
        keep_text |= {schema.channel_field, schema.currency_field}
        convert = [h not in keep_text and h != time_of_day for h in header]
        tf = schema.time_field
        # With another delimiter than the comma, the comma is the decimal mark (European exports).
        number = _number if delimiter == "," else _number_decimal_comma
        chunk: list[dict[str, Any]] = []
        for row in reader:
            if not row:
                continue
            rec: dict[str, Any] = {}
            for name, cell, conv in zip(header, row, convert, strict=False):
                if cell == "":
                    continue
                rec[name] = number(cell) if conv else cell
            if time_of_day is not None and tf in rec and time_of_day in rec:
                rec[tf] = f"{rec[tf]} {rec.pop(time_of_day)}"
            if constant:
                rec.update(constant)
            if series_columns:
                cells = [(c, rec.pop(c)) for c in series_columns if c in rec]
                for column, cell in cells:
                    chunk.append({**rec, series_field: column, value_name: cell})
            else:
                chunk.append(rec)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    finally:
        if raw is sys.stdin.buffer:
            text.detach()
        else:
            text.close()
