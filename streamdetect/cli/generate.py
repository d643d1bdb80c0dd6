"""``streamdetect generate``: write synthetic sales events (JSONL) and their anomaly labels."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="write synthetic sales events with labelled injected anomalies (JSONL)",
        description=(
            "Generates realistic sales events for several stores (opening hours, daily and weekly "
            "profiles, noise) with labelled anomalies (spike, drop, outage, price_glitch, tiny_tickets, "
            "level_shift) after the clean training days. Events are written in arrival order, one JSON "
            "object per line (gzip when the name ends in .gz). The same seed gives the same bytes."
        ),
    )
    p.add_argument("--out", default="events.jsonl", help="events file (.jsonl or .jsonl.gz; '-' for stdout)")
    p.add_argument("--labels", help="write the labelled anomalies here as JSONL")
    p.add_argument("--stores", type=int, default=20, help="number of stores (default 20)")
    p.add_argument("--days", type=int, default=14, help="number of days (default 14)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--start", default="2026-01-05T00:00:00Z", help="first day, RFC 3339 (default a Monday)")
    p.add_argument("--clean-days", type=int, default=2, help="first days without anomalies (default 2)")
    p.add_argument("--anomalies-per-week", type=float, default=2.5, help="mean anomalies per store and week")
    p.add_argument("--out-of-order", type=float, default=20.0, help="arrival jitter in seconds (default 20)")
    p.add_argument("--late-fraction", type=float, default=0.0, help="share of events arriving after the lateness")
    p.add_argument("--allowed-lateness", type=float, default=120.0, help="detector lateness the late events exceed")
    p.add_argument("--malformed-fraction", type=float, default=0.0, help="share of broken records to add")
    p.add_argument("--return-fraction", type=float, default=0.0,
                   help="share of sales returned later (return events with a negative quantity)")
    p.add_argument("--skus", type=int, default=300, help="SKUs per store catalogue (default 300)")
    p.add_argument("--currency", default="EUR", help="currency code (default EUR)")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> object:
    from streamdetect.config import ConfigError
    from streamdetect.generate import GeneratorConfig

    try:
        return GeneratorConfig(
            stores=args.stores,
            days=args.days,
            seed=args.seed,
            start=args.start,
            clean_days=args.clean_days,
            anomalies_per_store_week=args.anomalies_per_week,
            out_of_order_seconds=args.out_of_order,
            late_fraction=args.late_fraction,
            allowed_lateness=args.allowed_lateness,
            malformed_fraction=args.malformed_fraction,
            return_fraction=args.return_fraction,
            skus_per_store=args.skus,
            currency=args.currency,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from streamdetect.generate import EventStream, GeneratorConfig, write_jsonl

    cfg = config_from_args(args)
    assert isinstance(cfg, GeneratorConfig)
    started = time.perf_counter()
    stream = EventStream(cfg)
    n = write_jsonl(args.out, stream)
    if args.labels:
        write_jsonl(args.labels, stream.labels)
    if not args.quiet:
        c = stream.counts
        extra = ""
        if c["malformed"] or c["late"] or c["returns"]:
            extra = f" ({c['malformed']:,} malformed, {c['late']:,} late, {c['returns']:,} returns)"
        print(
            f"{n:,} events{extra}, {len(stream.labels)} labelled anomalies, {cfg.stores} stores x {cfg.days} days"
            f" -> {args.out}{' + ' + args.labels if args.labels else ''} in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    return 0
