"""``streamdetect replay``: run the detector core over a JSONL or CSV file as fast as it can."""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

SCORE_COLUMNS = ("window_start", "key", "score", "threshold", "probability", "is_anomaly")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="score a JSONL/CSV file of events (backtest), writing alerts and window scores",
        description=(
            "Runs the detector core over a file of events in file order, without Kafka. JSONL holds one "
            "event per line; a CSV holds one event per row, or an already aggregated series "
            "(timestamp,value) with --value-field. Columns the flags and --config leave to the defaults, "
            "and that the file names otherwise, are guessed from its first rows (said on stderr, with the "
            "flags that decide otherwise). Output is deterministic: the same input gives the same files "
            "byte for byte."
        ),
    )
    p.add_argument("input", help="events file: .jsonl, .jsonl.gz, .csv or .csv.gz ('-' for JSONL on stdin)")
    p.add_argument("--alerts", type=Path, help="write alerts as JSONL here")
    p.add_argument(
        "--episode-ends",
        action="store_true",
        help="also write the end of each episode of alerts (status 'resolved') to --alerts, in order, as the"
        " alerts topic carries them",
    )
    p.add_argument("--scores", type=Path, help=f"write one CSV row per scored window ({','.join(SCORE_COLUMNS)})")
    p.add_argument("--score-features", action="store_true", help="append the model's feature values to --scores")
    p.add_argument("--rejects", type=Path, help="write rejected events as JSONL (index, reason, detail)")
    p.add_argument("--plot", type=Path, help="draw the keys with most alerts to this PNG (needs matplotlib)")
    p.add_argument("--format", choices=("jsonl", "csv"), help="input format (default: from the file name)")
    p.add_argument("--config", type=Path, help="TOML file; its [detector] table configures the core")
    g = p.add_argument_group("field mapping")
    g.add_argument("--time-field", help="event time field (RFC 3339 or epoch ms; default ts)")
    g.add_argument(
        "--time-of-day-field",
        help="CSV: a column with the time of day (09:58:11) of a time field that holds dates alone;"
        " the two are joined",
    )
    g.add_argument(
        "--time-format",
        help="how the time field is written: auto (default), epoch_s, epoch_ms, or a strptime pattern"
        " such as '%%d/%%m/%%Y %%H:%%M' (UTC unless the pattern has %%z)",
    )
    g.add_argument(
        "--value-field",
        help="aggregated series: each row is one event whose amount is this field; several, comma-separated,"
        " read a wide CSV (one column per series: each is a key, named in the alerts' 'series' field)",
    )
    g.add_argument(
        "--series-kind",
        choices=("auto", "values", "counts"),
        default="auto",
        help="with --value-field alone: read the values as counts (whole numbers >= 0: requests, orders) or "
        "as values; auto decides from the first rows (default)",
    )
    g.add_argument(
        "--value-offset",
        default="auto",
        help="with --value-field alone: add this to every value (a signed series, e.g. degrees Celsius, read as "
        "positive levels); auto shifts a series with negative values by its first day's spread (default)",
    )
    g.add_argument(
        "--count-field",
        help="aggregated series of sales counts: each row is this many sales (with --value-field: their revenue)",
    )
    g.add_argument(
        "--numeric-strings",
        action="store_true",
        default=None,
        help='read numbers written as JSON strings ("199.00") instead of rejecting them as bad_type',
    )
    g.add_argument(
        "--deduplicate",
        action="store_true",
        default=None,
        help="refuse an event whose event id (events.event_id_field) repeats one accepted while its windows may"
        " be open, as duplicate (a producer's retries); for an id field that is unique per event",
    )
    g.add_argument(
        "--unpriced",
        action="store_true",
        default=None,
        help="sales events without amounts (a till's log of items sold): each row is one sale of --quantity-field"
        " (1 when absent); the revenue and ticket features are left out",
    )
    g.add_argument("--key", help="comma-separated key fields (default store_id)")
    g.add_argument("--amount-field", help="amount field (default amount)")
    g.add_argument("--quantity-field", help="quantity field (default quantity)")
    g.add_argument("--price-field", help="unit price field (default unit_price)")
    g.add_argument("--sku-field", help="SKU field (default sku)")
    w = p.add_argument_group("windows and detection")
    w.add_argument(
        "--window",
        type=float,
        help="window size in seconds (default 60; for an aggregated series, its median sample spacing)",
    )
    w.add_argument("--hop", type=float, help="hop in seconds for hopping windows (default: tumbling)")
    w.add_argument(
        "--timezone",
        help="IANA time zone of the shops' clocks (e.g. Europe/Paris) for the seasonal hours of day and week"
        " (default UTC)",
    )
    w.add_argument(
        "--timezones",
        help="keys that keep another clock, by their first key field: 'store-7=America/New_York,store-9=Asia/Tokyo'",
    )
    w.add_argument("--lateness", type=float, help="allowed lateness in seconds (default 120)")
    w.add_argument("--idle-timeout", type=float, help="seconds a silent key keeps producing windows (default 3600)")
    w.add_argument("--warmup", type=int, help="windows before the model is first fitted (default 5000)")
    w.add_argument(
        "--calibration", type=int, help="scores after warm-up that calibrate the threshold (default 2000)"
    )
    w.add_argument("--threshold-method", choices=("spot", "dspot", "quantile"), help="threshold method")
    w.add_argument("--risk", type=float, help="target false-alarm probability per window (default 4e-5)")
    w.add_argument("--features", help="comma-separated feature names for the model")
    p.add_argument("--chunk-size", type=int, default=20_000, help="events per processing batch")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(handler=run)


def build_config(
    args: argparse.Namespace,
    series_spacing: float | None = None,
    as_counts: bool = False,
    value_offset: float | None = None,
) -> Any:
    """DetectorConfig from the optional TOML file, overridden by flags.

    ``series_spacing`` (seconds) sizes the windows of an aggregated series unless the flags or the
    file do: one sample per window. ``as_counts`` reads the value field as a count field.
    ``value_offset`` (a signed value series) shifts the values and lets negative ones in.
    """
    from streamdetect.config import ConfigError, DetectorConfig, from_mapping

    table: dict[str, Any] = {}
    if args.config is not None:
        try:
            table = tomllib.loads(args.config.read_text()).get("detector", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {args.config}: {exc}") from None

    def put(section: str, name: str, value: Any) -> None:
        if value is not None:
            table.setdefault(section, {})[name] = value

    put("events", "time_field", args.time_field)
    put("events", "time_format", args.time_format)
    wide = _series_columns(args)
    put("events", "value_field", _WIDE_VALUE if wide else args.value_field)
    put("events", "count_field", args.count_field)
    keys = args.key.split(",") if args.key else None
    put("events", "key_fields", [*(keys or []), _WIDE_SERIES] if wide else keys)
    put("events", "amount_field", args.amount_field)
    put("events", "quantity_field", args.quantity_field)
    put("events", "unit_price_field", args.price_field)
    put("events", "sku_field", args.sku_field)
    put("events", "numeric_strings", args.numeric_strings)
    put("events", "unpriced", args.unpriced)
    put("events", "deduplicate", args.deduplicate)
    put("windows", "size", args.window)
    put("features", "timezone", args.timezone)
    put("features", "timezones", args.timezones)
    if series_spacing is not None:
        table.setdefault("windows", {}).setdefault("size", series_spacing)
    if as_counts:
        events = table.setdefault("events", {})
        events["count_field"] = events.pop("value_field")
    if value_offset is not None:
        table.setdefault("events", {}).update(value_offset=value_offset, allow_negative=True)
    put("windows", "hop", args.hop)
    put("windows", "allowed_lateness", args.lateness)
    put("windows", "idle_timeout", args.idle_timeout)
    put("model", "warmup", args.warmup)
    put("threshold", "n_init", args.calibration)
    put("threshold", "method", args.threshold_method)
    put("threshold", "risk", args.risk)
    put("features", "features", args.features.split(",") if args.features else None)
    return from_mapping(DetectorConfig, table)


_WIDE_VALUE, _WIDE_SERIES = "value", "series"  # what a wide file's columns become: one series each


def _series_columns(args: argparse.Namespace) -> list[str]:
    """The columns of a wide file (``--value-field cpu,mem``): none for a single value field."""
    from streamdetect.config import ConfigError

    if not args.value_field or "," not in args.value_field:
        return []
    columns = [c.strip() for c in args.value_field.split(",") if c.strip()]
    if len(set(columns)) != len(columns):
        raise ConfigError(f"--value-field {args.value_field!r} names a column twice")
    if args.count_field:
        raise ConfigError("--value-field with several columns reads one series per column; drop --count-field")
    return columns


def _loads_or_none(value: bytes) -> Any:
    import orjson

    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _value_offset(flag: str, values_only: bool) -> float | None:
    """``--value-offset`` as a number, or None for ``auto``."""
    from streamdetect.config import ConfigError

    if flag == "auto":
        return None
    if not values_only:
        raise ConfigError("--value-offset shifts a value series: give --value-field without --count-field")
    try:
        offset = float(flag)
    except ValueError:
        raise ConfigError(f"--value-offset is {flag!r}: give a number, or auto") from None
    if not math.isfinite(offset):
        raise ConfigError(f"--value-offset is {flag!r}: give a finite number, or auto")
    return offset


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _explicit_fields(args: argparse.Namespace) -> set[str]:
    """The event fields the flags or the ``--config`` file set (``columns.EXPLICIT_FIELDS``)."""
    flags = {"time_field": args.time_field, "key_fields": args.key, "value_field": args.value_field,
             "count_field": args.count_field, "amount_field": args.amount_field,
             "quantity_field": args.quantity_field, "unit_price_field": args.price_field, "sku_field": args.sku_field,
             "numeric_strings": args.numeric_strings, "unpriced": args.unpriced}
    given = {name for name, value in flags.items() if value is not None}
    if args.config is not None:
        given |= set(tomllib.loads(args.config.read_text()).get("detector", {}).get("events", {}))
    return given


def _guess_columns(args: argparse.Namespace, config: Any, fmt: str) -> tuple[bool, bool]:
    """Fill in the columns a file names otherwise than the configuration (``streamdetect.columns``),
    saying what was chosen. Returns whether something was, and whether a JSONL file has none of
    the key fields (one stream: a CSV reader gives such rows a constant key itself)."""
    from streamdetect.columns import guess_columns
    from streamdetect.sources import sample_records

    columns, rows = sample_records(args.input, fmt)
    if not rows:
        return False, False
    guess = guess_columns(columns, rows, config.events, _explicit_fields(args))
    if fmt != "csv" or args.time_of_day_field is not None:
        guess = replace(guess, time_of_day=None)  # a JSONL file's times are its own
    if fmt == "jsonl" and len(guess.value_fields) > 1:  # one series per field is a wide CSV's reading
        if not args.quiet:
            print(f"fields {', '.join(guess.value_fields)} are all numeric: give --value-field to choose the series",
                  file=sys.stderr)
        guess = replace(guess, value_fields=())
    keys = guess.key_fields or (args.key.split(",") if args.key else config.events.key_fields)
    keyless = fmt == "jsonl" and not any(k in columns for k in keys)
    flags = guess.flags()
    if not flags:
        return False, keyless
    for attr, value in (("time_field", guess.time_field), ("time_of_day_field", guess.time_of_day),
                        ("quantity_field", guess.quantity_field),
                        ("price_field", guess.unit_price_field), ("amount_field", guess.amount_field),
                        ("sku_field", guess.sku_field), ("key", ",".join(guess.key_fields)),
                        ("value_field", ",".join(guess.value_fields))):
        if value:
            setattr(args, attr, value)
    if guess.numeric_strings:
        args.numeric_strings = True
    if guess.unpriced:
        args.unpriced = True
    if not args.quiet:
        print(f"columns read as {' '.join(flags)} (the file does not name them as configured; give these"
              " flags to decide)", file=sys.stderr)
    return True, keyless


def _with_key(lines: list[bytes], fields: Sequence[str]) -> list[bytes]:
    """JSONL lines of a file without key fields, each object given the constant key of one stream
    (as a CSV reader gives its rows); a line that is not an object is left for the decoder to reject.

    >>> _with_key([b'{"t": 1}', b'oops', b' { }'], ["store_id"])
    [b'{"store_id":"series","t": 1}', b'oops', b'{"store_id":"series"}']
    """
    from streamdetect.sources import SERIES_KEY

    head = b"{" + b",".join(b'"%s":"%s"' % (f.encode(), SERIES_KEY.encode()) for f in fields)
    out = []
    for line in lines:
        body = line.lstrip()
        if body[:1] != b"{":
            out.append(line)
            continue
        rest = body[1:].lstrip()
        out.append(head + (rest if rest[:1] == b"}" else b"," + body[1:]))
    return out


def _fit_resolution(args: argparse.Namespace, config: Any, first: list[Any], fmt: str, say: Any) -> Any:
    """Sales events whose times are dates alone (or whole hours) get windows of that resolution:
    minute windows would put a day's sales in its first minute and 1,439 empty ones after it. A
    key keeps its zero windows for a week of them (a shop that sells nothing for a day is news)."""
    from streamdetect.config import WindowConfig
    from streamdetect.events import decode_events, decode_records
    from streamdetect.sources import time_resolution_s

    if args.window is not None or config.windows.size != WindowConfig().size:
        return config  # the windows are the user's
    batch, _ = decode_records(first, config.events) if fmt == "csv" else decode_events(first, config.events)
    resolution = time_resolution_s(batch.ts_ms)
    if resolution is None:
        return config
    args.window = resolution
    if args.idle_timeout is None:
        args.idle_timeout = max(config.windows.idle_timeout, 7 * resolution)
    what = "dates alone" if resolution == 86_400 else "whole hours"
    say(f"the times are {what}: windows of {resolution:g} s, a silent key's zero windows for"
        f" {args.idle_timeout:g} s (--window, --idle-timeout override)")
    return build_config(args)


def _fit_to_input(args: argparse.Namespace, config: Any, first: list[Any], fmt: str) -> Any:
    """The configuration, adapted to what the file's first chunk shows (each decision said on stderr):
    its time format when the default does not read it, and for an aggregated series its spacing
    (the window size), whether its values are counts, and the shift of a signed series."""
    from streamdetect.events import decode_events, decode_records
    from streamdetect.sources import guess_time_format, looks_like_counts, median_spacing_s, signed_offset

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    if args.time_format is None and config.events.time_format == "auto":
        tf = config.events.time_field
        sample = first[:1000] if fmt == "csv" else [_loads_or_none(v) for v in first[:1000]]
        times = [row.get(tf) for row in sample if isinstance(row, dict)]
        guessed = guess_time_format(times, config.events.min_time_ms, config.events.max_time_ms)
        if guessed is not None:
            args.time_format = guessed
            config = build_config(args)
            say(f"the times read as --time-format {guessed!r} (give --time-format to decide)")
    values_only = config.events.value_series
    explicit_offset = _value_offset(args.value_offset, values_only)
    if not config.events.aggregated:
        return _fit_resolution(args, config, first, fmt, say)
    # One sample per window, so the windows take the series' spacing. The first rows are read with
    # negative values let in, to see whether the series is signed.
    schema = replace(config.events, allow_negative=True)
    batch, _ = decode_records(first, schema) if fmt == "csv" else decode_events(first, schema)
    spacing = median_spacing_s(batch.ts_ms)
    as_counts = values_only and (
        args.series_kind == "counts"
        or (args.series_kind == "auto" and explicit_offset is None and looks_like_counts(batch.amount))
    )
    offset = explicit_offset
    if offset is None and values_only and not as_counts and not config.events.value_offset:
        offset = signed_offset(batch.ts_ms, batch.amount, config.model.warmup_span) or None
    if spacing is not None or as_counts or offset is not None:
        config = build_config(args, spacing, as_counts, offset)
    if spacing is not None and config.windows.size == spacing:
        say(f"series sampled every {spacing:g} s: windows of {spacing:g} s (--window overrides)")
    if as_counts and args.series_kind == "auto":
        say("the values are whole numbers: read as counts (--series-kind values keeps them values)")
    if offset is not None and explicit_offset is None:
        say(f"the series has negative values: read shifted by {offset:+g}, one first-day spread above its"
            " lowest (--value-offset overrides)")
    return config


def run(args: argparse.Namespace) -> int:
    import orjson

    from streamdetect.alerts import format_time
    from streamdetect.config import ConfigError
    from streamdetect.detector import (
        Detector,
        DetectorOutput,
        ScoredWindows,
        calibration_needs,
        sparse_keys_advice,
        warmup_needs,
    )
    from streamdetect.sources import iter_csv_chunks, iter_jsonl_chunks

    config = build_config(args)
    fmt = args.format or ("csv" if args.input.endswith((".csv", ".csv.gz")) else "jsonl")
    guessed, keyless = _guess_columns(args, config, fmt)
    if guessed:
        config = build_config(args)
    wide = _series_columns(args)
    if wide and fmt != "csv":
        raise ConfigError("--value-field with several columns reads a wide CSV (one column per series)")
    if args.time_of_day_field is not None and fmt != "csv":
        raise ConfigError("--time-of-day-field joins two columns of a CSV; a JSONL event carries its own time")
    chunks: Iterator[Any] = (
        iter_csv_chunks(args.input, config.events, args.chunk_size, series_columns=wide, series_field=_WIDE_SERIES,
                        time_of_day=args.time_of_day_field)
        if fmt == "csv"
        else iter_jsonl_chunks(args.input, args.chunk_size)
    )
    if keyless:
        fields = config.events.key_fields
        chunks = (_with_key(chunk, fields) for chunk in chunks)
    first = next(chunks, None)
    if first is not None:
        config = _fit_to_input(args, config, first, fmt)
    detector = Detector(config)
    alerts_out = args.alerts.open("wb") if args.alerts else None
    rejects_out = args.rejects.open("wb") if args.rejects else None
    scores_out = args.scores.open("w", newline="") if args.scores else None
    if scores_out is not None:
        header = list(SCORE_COLUMNS) + (list(detector.feature_names) if args.score_features else [])
        scores_out.write(",".join(header) + "\n")

    reasons: Counter[str] = Counter()
    first_detail: dict[str, str] = {}  # what was wrong with the first event rejected for each reason
    totals = {"events": 0, "valid": 0, "returns": 0, "windows": 0, "alerts": 0, "resolved": 0, "drift": 0,
              "without_week": 0}
    kept: list[ScoredWindows] = []
    kept_alerts: list[Any] = []
    offset = 0
    started = time.perf_counter()

    def emit(out: DetectorOutput) -> None:
        totals["valid"] += out.n_valid
        totals["returns"] += out.n_returns
        totals["windows"] += len(out.scored)
        totals["alerts"] += len(out.alerts)
        totals["without_week"] += sum(a.reference != "hour_of_week" for a in out.alerts)
        totals["resolved"] += len(out.resolved)
        totals["drift"] += int(out.drift_detected)
        for r in out.rejected:
            reasons[str(r.reason)] += 1
            first_detail.setdefault(str(r.reason), r.detail)
            if rejects_out is not None:
                rejects_out.write(
                    orjson.dumps({"index": offset + r.index, "reason": str(r.reason), "detail": r.detail}) + b"\n"
                )
        if alerts_out is not None:
            for m in out.messages if args.episode_ends else out.alerts:
                alerts_out.write(m.to_json() + b"\n")
        s = out.scored
        if scores_out is not None and len(s):
            lines = []
            feats = s.features
            for i in range(len(s)):
                row = [
                    format_time(int(s.start_ms[i])),
                    "|".join(s.keys[i].values()),
                    _fmt(s.score[i]),
                    _fmt(s.threshold[i]),
                    _fmt(s.probability[i]),
                    "1" if s.is_anomaly[i] else "0",
                ]
                if args.score_features:
                    row.extend(_fmt(v) for v in feats[i].tolist())
                lines.append(",".join(row))
            scores_out.write("\n".join(lines) + "\n")
        if args.plot is not None:
            kept.append(s)
            kept_alerts.extend(out.alerts)

    def outputs() -> Iterator[tuple[int, DetectorOutput]]:
        if first is None:
            return
        for chunk in itertools.chain([first], chunks):
            yield len(chunk), detector.process_records(chunk) if fmt == "csv" else detector.process(chunk)

    try:
        for n, out in outputs():
            emit(out)
            offset += n
            totals["events"] += n
        out = detector.flush()
        emit(out)
    finally:
        for f in (alerts_out, rejects_out, scores_out):
            if f is not None:
                f.close()
    elapsed = time.perf_counter() - started

    if args.plot is not None:
        from streamdetect.plot import plot_backtest

        merged = ScoredWindows.concat(kept, detector.feature_names)
        plot_backtest(args.plot, merged, alerts=[a.to_dict() for a in kept_alerts])

    if not args.quiet and totals["events"] and not totals["valid"]:
        reason, _ = reasons.most_common(1)[0]
        print(f"no event was valid; the first {reason}: {first_detail[reason]}"
              " (--time-field, --time-format, --value-field and --key map the columns)", file=sys.stderr)
    if not args.quiet and totals["valid"] and not detector.stats().warmed_up:
        print(f"the model never finished its warm-up: it needs {warmup_needs(config)}; --warmup lowers the count",
              file=sys.stderr)
    elif not args.quiet and totals["valid"] and math.isinf(detector.stats().threshold):
        print(f"the threshold never finished its calibration, so nothing could alert: it needs"
              f" {calibration_needs(config)}; --calibration lowers the count", file=sys.stderr)
    if not args.quiet:
        stats = detector.stats()
        advice = sparse_keys_advice(stats, config.windows.size)
        if advice:
            print(advice, file=sys.stderr)
        print(
            f"events {totals['events']:,} (valid {totals['valid']:,}"
            + (f" of which returns {totals['returns']:,}" if totals["returns"] else "")
            + f", rejected {sum(reasons.values()):,}"
            + (f": {', '.join(f'{k} {v:,}' for k, v in sorted(reasons.items()))}" if reasons else "")
            + f") | windows scored {totals['windows']:,} | alerts {totals['alerts']:,}"
            + (f" in {totals['resolved'] + stats.open_episodes:,} episodes ({stats.open_episodes:,} still open;"
               f" {totals['without_week']:,} alerts judged before the key's weekly pattern was known)"
               if totals["alerts"] else "")
            + f" | drift events {totals['drift']} | threshold {stats.threshold:.4g}"
            f" | {elapsed:.1f} s, {totals['events'] / max(elapsed, 1e-9):,.0f} events/s",
            file=sys.stderr,
        )
    return 0
