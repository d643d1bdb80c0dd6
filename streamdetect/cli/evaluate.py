"""``streamdetect evaluate``: precision, recall, F1 and detection delay of alerts against labels."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score an alerts file against a labels file (precision, recall, F1, delay)",
        description=(
            "An alert matches a label when the keys are equal and the alert's window overlaps "
            "[start, end + tolerance). Alerts are deduplicated by alert_id first. Prints an overall "
            "summary and one row per anomaly type; per-type precision is TP_type / (TP_type + all false alerts)."
        ),
    )
    p.add_argument("--labels", required=True, type=Path, help="labels JSONL (from streamdetect generate)")
    p.add_argument("--alerts", required=True, type=Path, help="alerts JSONL (from streamdetect replay or run)")
    p.add_argument("--window", type=float, default=60.0, help="window length in seconds (default 60)")
    p.add_argument("--tolerance", type=float, help="windows after a label's end that still count (default 5)")
    p.add_argument("--keys", type=int, help="number of keys for the false-alert rate (default: seen keys)")
    p.add_argument("--days", type=float, help="days for the false-alert rate (default: span of labels and alerts)")
    p.add_argument("--since", help="score only labels that start and alerts whose window starts at this time"
                   " or later (RFC 3339), e.g. a week after the detector started, once each hour of the week"
                   " has been seen")
    p.add_argument("--json", type=Path, help="also write the full report (with per-label results) as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import orjson

    from streamdetect.config import ConfigError
    from streamdetect.evaluate import DEFAULT_TOLERANCE_WINDOWS, evaluate
    from streamdetect.generate import parse_time_ms, read_jsonl

    try:
        labels = read_jsonl(args.labels)
        alerts = read_jsonl(args.alerts)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read input: {exc}") from None
    if args.since:
        try:
            since = parse_time_ms(args.since)
        except ValueError:
            raise ConfigError(
                f"--since: {args.since!r} is not a time; give RFC 3339, e.g. 2026-01-12T00:00:00Z"
            ) from None
        try:
            labels = [lab for lab in labels if parse_time_ms(lab["start"]) >= since]
            alerts = [a for a in alerts if parse_time_ms(a["window_start"]) >= since]
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"bad labels or alerts: {exc!r}") from None
    try:
        report = evaluate(
            labels,
            alerts,
            window_seconds=args.window,
            tolerance_windows=DEFAULT_TOLERANCE_WINDOWS if args.tolerance is None else args.tolerance,
            n_keys=args.keys,
            span_days=args.days,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"bad labels or alerts: {exc!r}") from None
    print(report.format_table())
    if args.json:
        args.json.write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    return 0
