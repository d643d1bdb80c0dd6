"""Dead-letter records: the original bytes and key plus headers saying why and where from.

Headers (all UTF-8 strings): ``error.reason`` (a :class:`~streamdetect.events.RejectReason` value),
``error.detail`` (short text, truncated), ``source.topic``, ``source.partition``, ``source.offset``,
``source.timestamp`` (the input message's timestamp in epoch ms, empty when it has none) and
``app.version``.

>>> h = dict(dlq_headers("decode", "not JSON", "sales", 2, 41, 1700000000000))
>>> h["error.reason"], h["source.offset"], h["source.partition"]
(b'decode', b'41', b'2')
"""

from __future__ import annotations

from streamdetect import __version__

__all__ = ["MAX_DETAIL", "dlq_headers"]

MAX_DETAIL = 512


def dlq_headers(
    reason: object, detail: str, topic: str, partition: int, offset: int, timestamp_ms: int | None
) -> list[tuple[str, bytes]]:
    """The headers of one dead-letter record."""
    reason = getattr(reason, "value", reason)
    return [
        ("error.reason", str(reason).encode()),
        ("error.detail", detail[:MAX_DETAIL].encode("utf-8", "replace")),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
        ("source.timestamp", b"" if timestamp_ms is None or timestamp_ms < 0 else str(timestamp_ms).encode()),
        ("app.version", __version__.encode()),
    ]
