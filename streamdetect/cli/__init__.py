"""The ``streamdetect`` command line: one module per subcommand, each with ``register(subparsers)``.

Each subcommand module adds its parser and sets ``handler`` (a function of the parsed arguments
returning an exit code). Heavy imports happen inside handlers, so ``streamdetect --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from streamdetect import __version__
from streamdetect.config import ConfigError

SUBCOMMANDS = ("demo", "run", "produce", "generate", "replay", "evaluate", "plot", "config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamdetect",
        description="Streaming anomaly detection for real-time sales events.",
    )
    parser.add_argument("--version", action="version", version=f"streamdetect {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"streamdetect.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"streamdetect: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
