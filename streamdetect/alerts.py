"""The alert record that streamdetect publishes, and its deterministic identity.

An alert is one scored window whose anomaly score crossed the threshold, or whose key has sold
nothing for longer than its count model finds plausible (``triggers`` says which; a silence that
the mixture's score has not yet caught carries a score below the threshold). Its ``alert_id`` is a
hash of the key and the window bounds only, so reprocessing the same input (a replay, or the
at-least-once redelivery after a crash) yields the same id and consumers can deduplicate.
Consecutive alerts of one key belong to one *episode* (an outage of three hours is one incident,
not 180): ``episode_id`` hashes the key and the episode's first window, and ``episode_alert``
counts the episode's alerts, so a pager can page on the first and a ticket collect the rest.
When the key has been calm for a while the episode ends, and an :class:`EpisodeResolved` record
follows its alerts on the same stream (``status`` tells them apart: ``firing`` or ``resolved``),
so that an incident opened by the first alert can be closed without a person.

>>> a = Alert.build(key={"store_id": "s1"}, window_start_ms=0, window_end_ms=60_000, score=31.2,
...     threshold=20.0, probability=0.99995, severity="major", features={"revenue": 0.0},
...     contributions=[Contribution("revenue", 0.0, 812.5, -4.1)], model_version="gmm-k3",
...     detected_at_ms=61_000)
>>> a.window_start, a.window_end
('1970-01-01T00:00:00Z', '1970-01-01T00:01:00Z')
>>> a.alert_id == alert_id({"store_id": "s1"}, 0, 60_000)
True
>>> a.episode_id == episode_id({"store_id": "s1"}, 0), a.episode_start, a.episode_alert
(True, '1970-01-01T00:00:00Z', 1)
>>> Alert.from_json(a.to_json()) == a
True
>>> a.contributions[0].describe()
'revenue 4.1 sd below windows of its kind (0 where 812.5 was expected)'
>>> a.triggers, Alert.from_json(orjson.dumps({k: v for k, v in a.to_dict().items() if k != "triggers"})).triggers
(['score'], ['score'])
>>> Alert.from_json(orjson.dumps({k: v for k, v in a.to_dict().items() if k != "reference"})).reference
''
>>> r = EpisodeResolved.build(key={"store_id": "s1"}, episode_start_ms=0, episode_end_ms=180_000, alerts=3,
...     peak_score=31.2, peak_severity="major", resolved_at_ms=780_000, calm_windows=10, reason="calm",
...     model_version="gmm-k3", detected_at_ms=781_000)
>>> r.status, r.episode_id == a.episode_id
('resolved', True)
>>> print(r.explanation)
3 alerts from 1970-01-01T00:00:00Z to 1970-01-01T00:03:00Z; no alert nor sustained deviation in the 10 windows since
>>> read_message(r.to_json()) == r, read_message(a.to_json()) == a
(True, True)
>>> later = {"added_by_a_later_release": 1}  # read as this release knows it
>>> read_message(orjson.dumps({**r.to_dict(), **later})) == r, read_message(orjson.dumps({**a.to_dict(), **later})) == a
(True, True)
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "REFERENCES", "RESOLUTION_REASONS", "SEVERITIES", "VALUE_SERIES_NAMES", "Alert", "Contribution", "EpisodeResolved",
    "Silence", "alert_id", "episode_id", "format_time", "message_key", "read_message", "resolution_id",
]

SEVERITIES = ("warning", "major", "critical")
# What a window's expectations were taken from, from the least to the most the key has shown:
# its recent windows (no seasonal bucket trusted yet), the same hour on other days (the weekly
# pattern at this hour not known yet: a key's first week), or the same hour of the week.
REFERENCES = ("recent", "hour_of_day", "hour_of_week")
# Why an episode ended: its key was calm for long enough, or the key fell silent for `key_ttl` and
# its state was dropped (nothing more will be said of it).
RESOLUTION_REASONS = ("calm", "expired")
# What a metric series' alert calls the quantities a sales alert names: its "revenue" is its value,
# its "mean ticket" the value against the series' usual level (over about a day).
VALUE_SERIES_NAMES = {
    "revenue": "value",
    "mean_ticket": "value_level",
    "revenue_recent_windows": "value_recent_windows",
    "revenue_recent_hour": "value_recent_hour",
}


def format_time(ms: int) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, millisecond precision only when needed."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_id(key: dict[str, str], window_start_ms: int, window_end_ms: int) -> str:
    """Deterministic id: the same key and window always give the same id."""
    material = orjson.dumps([sorted(key.items()), window_start_ms, window_end_ms])
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def episode_id(key: dict[str, str], episode_start_ms: int) -> str:
    """Deterministic id of a key's episode of consecutive alerts, from the key and its first window."""
    material = orjson.dumps(["episode", sorted(key.items()), episode_start_ms])
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def resolution_id(episode: str) -> str:
    """Deterministic id of an episode's resolution, from the episode's id."""
    return hashlib.blake2b(orjson.dumps(["resolved", episode]), digest_size=16).hexdigest()


def message_key(key: dict[str, str]) -> bytes:
    """Kafka message key for a window key: values joined with ``|`` in key-field order."""
    return "|".join(key.values()).encode()


@dataclass(frozen=True, slots=True)
class Contribution:
    """How far one feature of the window was from what the model expected, in standard deviations."""

    feature: str
    observed: float
    expected: float
    z: float

    def describe(self) -> str:
        """The quantity against what the key's baselines expected of it, and how far the feature
        is from the windows of its kind in the model (``z``, in their standard deviations)."""
        direction = "above" if self.z >= 0 else "below"
        return (
            f"{self.feature} {abs(self.z):.1f} sd {direction} windows of its kind"
            f" ({self.observed:.6g} where {self.expected:.6g} was expected)"
        )


@dataclass(frozen=True, slots=True)
class Silence:
    """A key's run of windows without a sale that its count model finds too unlikely to be chance:
    ``windows`` long, ``expected`` sales expected over it, ``chance`` its probability. The run
    judged is counted since the key's last alert (which restarts it, as it restarts the scan);
    ``total`` is the whole run, longer where an earlier alert fell within it.

    >>> Silence(windows=7, expected=41.3, chance=2.1e-6).describe()
    'no sale in the last 7 windows where 41.3 were expected (a chance of 2.1e-06)'
    >>> Silence(windows=16, expected=23.9, chance=1.2e-6, total=29).describe()
    'no sale in the last 29 windows; 23.9 were expected in the last 16 of them (a chance of 1.2e-06)'
    """

    windows: int
    expected: float
    chance: float
    total: int = 0

    def describe(self) -> str:
        if self.total > self.windows:
            return (f"no sale in the last {self.total} windows; {self.expected:.3g} were expected in the"
                    f" last {self.windows} of them (a chance of {self.chance:.2g})")
        return (f"no sale in the last {self.windows} window{'s' if self.windows != 1 else ''}"
                f" where {self.expected:.3g} were expected (a chance of {self.chance:.2g})")


class _Record:
    """What every record of the alerts stream does: plain dict, JSON, Kafka message key."""

    __slots__ = ()
    key: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson writes a dataclass as asdict() would, ten times faster

    def message_key(self) -> bytes:
        return message_key(self.key)


@dataclass(frozen=True, slots=True)
class Alert(_Record):
    alert_id: str
    key: dict[str, str]
    window_start: str
    window_end: str
    score: float
    threshold: float
    probability: float
    severity: str
    features: dict[str, float]
    contributions: list[Contribution] = field(default_factory=list)
    model_version: str = ""
    detected_at: str = ""
    explanation: str = ""
    episode_id: str = ""
    episode_start: str = ""
    episode_alert: int = 0
    status: str = "firing"
    # Which tests fired: "score" (the mixture's score crossed the threshold) and/or "silence" (the
    # key's run of windows without a sale is less likely than the risk under its count model).
    triggers: list[str] = field(default_factory=lambda: ["score"])
    # What the window's expectations were taken from (REFERENCES):
    # "hour_of_week" once the key's weekly pattern at this hour is known, "hour_of_day" before
    # (a key's first week: a day with other hours than those seen reads as an anomaly), "recent"
    # before any hour is; "" in records written before the field existed.
    reference: str = ""

    @classmethod
    def build(
        cls,
        *,
        key: dict[str, str],
        window_start_ms: int,
        window_end_ms: int,
        score: float,
        threshold: float,
        probability: float,
        severity: str,
        features: dict[str, float],
        contributions: list[Contribution],
        model_version: str,
        detected_at_ms: int,
        episode_start_ms: int | None = None,
        episode_alert: int = 1,
        crossed: bool = True,
        silence: Silence | None = None,
        reference: str = "",
    ) -> Alert:
        """``episode_start_ms`` is the episode's first window (this window when None); ``crossed``
        whether the score crossed the threshold; ``silence`` the improbable run of empty windows
        that flagged the window too (or alone); ``reference`` what the window's expectations were
        taken from."""
        first = window_start_ms if episode_start_ms is None else episode_start_ms
        triggers = (["score"] if crossed else []) + (["silence"] if silence is not None else [])
        said = ([silence.describe()] if silence is not None else []) + [c.describe() for c in contributions]
        return cls(
            alert_id=alert_id(key, window_start_ms, window_end_ms),
            key=key,
            window_start=format_time(window_start_ms),
            window_end=format_time(window_end_ms),
            score=float(score),
            threshold=float(threshold),
            probability=float(probability),
            severity=severity,
            features=features,
            contributions=contributions,
            model_version=model_version,
            detected_at=format_time(detected_at_ms),
            explanation="; ".join(said),
            episode_id=episode_id(key, first),
            episode_start=format_time(first),
            episode_alert=episode_alert,
            triggers=triggers,
            reference=reference,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Alert:
        data = orjson.loads(raw)
        return cls._from_dict(data)

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Alert:
        data = _known(cls, data)
        data["contributions"] = [Contribution(**_known(Contribution, c)) for c in data.get("contributions", [])]
        return cls(**data)


@dataclass(frozen=True, slots=True)
class EpisodeResolved(_Record):
    """The end of an episode: its key has had no alert for ``calm_windows`` scored windows
    (``reason`` ``calm``), or was silent for ``key_ttl`` and forgotten (``expired``).

    Published on the alerts stream after the episode's last alert, with the same message key.
    ``episode_end`` is the end of the episode's last alerting window; ``resolved_at`` the end of
    the window that completed the calm (or the watermark at which the key expired).
    """

    resolution_id: str
    key: dict[str, str]
    episode_id: str
    episode_start: str
    episode_end: str
    alerts: int
    peak_score: float
    peak_severity: str
    resolved_at: str
    calm_windows: int
    reason: str
    model_version: str = ""
    detected_at: str = ""
    explanation: str = ""
    status: str = "resolved"

    @classmethod
    def build(
        cls,
        *,
        key: dict[str, str],
        episode_start_ms: int,
        episode_end_ms: int,
        alerts: int,
        peak_score: float,
        peak_severity: str,
        resolved_at_ms: int,
        calm_windows: int,
        reason: str,
        model_version: str,
        detected_at_ms: int,
    ) -> EpisodeResolved:
        episode = episode_id(key, episode_start_ms)
        start, end = format_time(episode_start_ms), format_time(episode_end_ms)
        what = f"{alerts} alert{'s' if alerts != 1 else ''} from {start} to {end}"
        why = (f"no alert nor sustained deviation in the {calm_windows} windows since" if reason == "calm"
               else "the key has had no event since and is no longer tracked")
        return cls(
            resolution_id=resolution_id(episode),
            key=key,
            episode_id=episode,
            episode_start=start,
            episode_end=end,
            alerts=int(alerts),
            peak_score=float(peak_score),
            peak_severity=peak_severity,
            resolved_at=format_time(resolved_at_ms),
            calm_windows=int(calm_windows),
            reason=reason,
            model_version=model_version,
            detected_at=format_time(detected_at_ms),
            explanation=f"{what}; {why}",
        )


def read_message(raw: bytes | str) -> Alert | EpisodeResolved:
    """A record of the alerts stream: an :class:`Alert` or an :class:`EpisodeResolved`, by ``status``
    (records written before resolutions existed have none and are alerts)."""
    data = orjson.loads(raw)
    if data.get("status") == "resolved":
        return EpisodeResolved(**_known(EpisodeResolved, data))
    return Alert._from_dict(data)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``data`` that ``cls`` has: a record written by a later release, with fields
    this one does not know, still reads (as a consumer must while its producers are upgraded)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
