"""Structured logs: one JSON object per line (stdlib :mod:`logging` + orjson, no extra dependency).

Every record carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg``; any
``extra={...}`` fields (``topic``, ``partition``, ``offset``, ``alert_id``...) are added as
top-level keys, and an exception as ``exc``. librdkafka's own logs reach the same handler through
the ``logger=`` client setting (logger ``streamdetect.librdkafka``).

>>> import io, logging as std
>>> rec = std.LogRecord("streamdetect.kafka", std.INFO, __file__, 1, "assigned %d", (3,), None)
>>> rec.partition = 2
>>> out = JsonFormatter().format(rec)
>>> import orjson; d = orjson.loads(out); (d["level"], d["msg"], d["partition"])
('info', 'assigned 3', 2)
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

__all__ = ["LIBRDKAFKA_LOGGER", "JsonFormatter", "setup_logging"]

LIBRDKAFKA_LOGGER = "streamdetect.librdkafka"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


def _iso(created: float) -> str:
    secs = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((created - secs) * 1000):03d}Z"


def _default(value: Any) -> Any:
    # Never let an odd ``extra`` value break logging.
    return repr(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        try:
            return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            return orjson.dumps({k: str(v) for k, v in data.items()}).decode()


class _TextFormatter(logging.Formatter):
    """Human-readable lines with the ``extra`` fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")]
        return base + (" " + " ".join(extra) if extra else "")


def setup_logging(level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """Route the ``streamdetect`` loggers (and the root logger) to one handler on ``stream`` (stderr).

    Parameters
    ----------
    level
        Minimum level, e.g. ``"INFO"``.
    fmt
        ``"json"`` (one object per line) or ``"text"``.
    stream
        Where to write; ``sys.stderr`` by default, keeping stdout free for command output.

    Returns
    -------
    logging.Handler
        The installed handler (replacing one installed by an earlier call).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    handler._streamdetect = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_streamdetect", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
