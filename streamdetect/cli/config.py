"""``streamdetect config show``: the effective configuration, secrets redacted."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from streamdetect.cli.run import add_common_options

    p = subparsers.add_parser(
        "config",
        help="show the effective configuration (file + environment + flags), secrets redacted",
        description="Configuration tools. `config show` prints what `streamdetect run` would use.",
    )
    sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print the effective configuration (validated; secrets as ***)")
    add_common_options(show)
    show.add_argument("--format", dest="output_format", choices=("toml", "json"), default="toml",
                      help="output format (default toml)")
    show.set_defaults(handler=show_config)


def show_config(args: argparse.Namespace) -> int:
    import orjson

    from streamdetect.cli.run import overrides_from_args
    from streamdetect.settings import config_to_dict, load_config, redact, to_toml

    cfg = load_config(args.config, overrides=overrides_from_args(args))
    data = redact(config_to_dict(cfg))
    if args.output_format == "json":
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(to_toml(data))
    return 0
