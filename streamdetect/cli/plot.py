"""``streamdetect plot``: draw a backtest picture from ``replay``'s scores CSV (and alerts JSONL)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw the keys with most anomalies from a replay's scores CSV to a PNG (needs matplotlib)",
        description=(
            "Reads the scores CSV written by `streamdetect replay --scores` (add --score-features there to "
            "plot a feature above each score panel) and optionally its alerts JSONL, and draws, for the "
            "keys with most anomalies, the feature that matters and the score with the threshold."
        ),
    )
    p.add_argument("--scores", type=Path, required=True, help="scores CSV from `streamdetect replay --scores`")
    p.add_argument("--alerts", type=Path, help="alerts JSONL from `streamdetect replay --alerts`")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--top", type=int, default=4, help="number of keys to draw (default 4)")
    p.add_argument("--keys", help="comma-separated keys to draw instead of the top ones (values joined by '|')")
    p.add_argument("--feature", help="feature column to draw (default: the one that matters most in the alerts)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("streamdetect plot: matplotlib is not installed; pip install 'streamdetect[plot]'", file=sys.stderr)
        return 2
    from streamdetect.plot import plot_backtest, read_alerts_jsonl, read_scores_csv

    if args.top < 1:
        print("streamdetect plot: --top must be >= 1", file=sys.stderr)
        return 2
    try:
        windows = read_scores_csv(args.scores)
        alerts = read_alerts_jsonl(args.alerts) if args.alerts else None
        keys = [k for k in args.keys.split(",") if k] if args.keys else None
        out = plot_backtest(args.out, windows, alerts=alerts, top_keys=args.top, feature=args.feature, keys=keys,
                            title=args.title)
    except (OSError, ValueError) as exc:
        print(f"streamdetect plot: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(windows['keys']):,} windows)", file=sys.stderr)
    return 0
