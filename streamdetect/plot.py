"""The backtest picture: for the keys with most anomalies, a feature and the score over time.

For each chosen key the figure has a pair of panels sharing the time axis:

* top: the feature that matters for the key's alerts (the one with the largest ``|z|`` in the
  alerts' contributions, else a revenue-like feature), with anomalous windows marked;
* bottom: the anomaly score with the threshold (dashed) and the alerts marked by severity.

matplotlib (the optional extra ``plot``) is imported lazily, with the non-interactive Agg backend,
so importing this module costs nothing and works on servers without a display.

``windows`` is columnar, like :class:`streamdetect.detector.ScoredWindows`: an object with
attributes or a mapping with keys ``keys``, ``start_ms``, ``score``, ``threshold``, ``is_anomaly``
and optionally ``features`` (``(n, d)``) with ``feature_names``. :func:`read_scores_csv` reads the
scores CSV that ``streamdetect replay --scores`` writes into that shape.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamdetect.alerts import VALUE_SERIES_NAMES

__all__ = ["SCORE_COLUMNS", "choose_feature", "plot_backtest", "read_alerts_jsonl", "read_scores_csv"]

#: The fixed leading columns of ``streamdetect replay --scores``; any further columns are features.
SCORE_COLUMNS = ("window_start", "key", "score", "threshold", "probability", "is_anomaly")

SEVERITY_COLORS = {"warning": "#f2a900", "major": "#e8590c", "critical": "#c92a2a"}
_REVENUE_LIKE = ("revenue", "log_revenue", "revenue_ratio", "amount", "sales", "value")
_SALES_NAME_OF = {v: k for k, v in VALUE_SERIES_NAMES.items()}


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _key_label(key: Any) -> str:
    """A key as the text used in the scores CSV and Kafka message keys: values joined by ``|``."""
    if isinstance(key, Mapping):
        return "|".join(str(v) for v in key.values())
    if isinstance(key, list | tuple):
        return "|".join(str(v) for v in key)
    return str(key)


def _parse_time_ms(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _open_text(path: str | Path) -> io.TextIOBase:
    p = Path(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return p.open("r", encoding="utf-8", newline="")


def read_scores_csv(path: str | Path) -> dict[str, Any]:
    """Read ``streamdetect replay --scores`` output into the columnar shape :func:`plot_backtest` takes.

    Parameters
    ----------
    path
        CSV with the columns ``window_start,key,score,threshold,probability,is_anomaly`` and any
        further numeric feature columns (``replay --score-features``); ``.gz`` is read transparently.

    Returns
    -------
    dict
        ``keys`` (list of str), ``start_ms`` (int64), ``score``, ``threshold``, ``probability``
        (float64), ``is_anomaly`` (bool), ``features`` (``(n, d)`` float64) and ``feature_names``.
    """
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a header {','.join(SCORE_COLUMNS)}") from None
        missing = [c for c in SCORE_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(SCORE_COLUMNS)}")
        idx = {c: header.index(c) for c in SCORE_COLUMNS}
        feature_names = tuple(c for c in header if c not in SCORE_COLUMNS)
        fidx = [header.index(c) for c in feature_names]
        keys: list[str] = []
        start: list[int] = []
        cols: dict[str, list[float]] = {"score": [], "threshold": [], "probability": []}
        anomaly: list[bool] = []
        feats: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                keys.append(row[idx["key"]])
                start.append(_parse_time_ms(row[idx["window_start"]]))
                for c in cols:
                    cols[c].append(float(row[idx[c]]))
                anomaly.append(row[idx["is_anomaly"]].strip().lower() in ("1", "true"))
                feats.append([float(row[i]) for i in fidx])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{line_no}: cannot parse row {row!r}: {exc}") from None
    return {
        "keys": keys,
        "start_ms": np.asarray(start, dtype=np.int64),
        "score": np.asarray(cols["score"], dtype=np.float64),
        "threshold": np.asarray(cols["threshold"], dtype=np.float64),
        "probability": np.asarray(cols["probability"], dtype=np.float64),
        "is_anomaly": np.asarray(anomaly, dtype=bool),
        "features": np.asarray(feats, dtype=np.float64).reshape(len(keys), len(feature_names)),
        "feature_names": feature_names,
    }


def read_alerts_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read alerts written as JSONL (``replay --alerts`` or the alerts topic dumped to a file)."""
    import orjson

    out = []
    with _open_text(path) as fh:
        for line in fh:
            if line.strip():
                out.append(orjson.loads(line))
    return out


def _alert_dict(alert: Any) -> dict[str, Any]:
    if isinstance(alert, Mapping):
        return dict(alert)
    to_dict = getattr(alert, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return {k: getattr(alert, k) for k in ("key", "window_start", "score", "severity", "contributions")}


def _match_feature(name: str, feature_names: Sequence[str]) -> str | None:
    """The model feature that an alert contribution's (human-facing) feature name refers to."""
    name = _SALES_NAME_OF.get(name, name)  # a value series' alerts name its quantities after the value
    if name in feature_names:
        return name
    for candidate in feature_names:
        if candidate.startswith(name) or candidate == f"log_{name}":
            return candidate
    return None


def choose_feature(feature_names: Sequence[str], alerts: Iterable[Any] = ()) -> str | None:
    """The feature to plot: largest total ``|z|`` in the alerts' contributions, else revenue-like.

    Parameters
    ----------
    feature_names
        The model's feature names (columns of ``windows.features``).
    alerts
        Alerts (dicts or :class:`~streamdetect.alerts.Alert`) whose ``contributions`` carry
        ``feature`` and ``z``.

    Returns
    -------
    str or None
        ``None`` when there are no features.

    Examples
    --------
    >>> choose_feature(("count_z", "revenue_ratio"), [{"contributions": [{"feature": "count", "z": -5.0}]}])
    'count_z'
    >>> choose_feature(("count_z", "revenue_ratio"))
    'revenue_ratio'
    """
    if not feature_names:
        return None
    weight: dict[str, float] = defaultdict(float)
    for alert in alerts:
        for c in _field(alert, "contributions", None) or ():
            name = _match_feature(str(_field(c, "feature", "")), feature_names)
            z = _field(c, "z", 0.0)
            if name is not None and z is not None and math.isfinite(float(z)):
                weight[name] += abs(float(z))
    if weight:
        return max(weight, key=lambda name: (weight[name], -feature_names.index(name)))
    for preferred in _REVENUE_LIKE:
        if preferred in feature_names:
            return preferred
    for name in feature_names:
        if any(word in name for word in ("revenue", "amount", "sales")):
            return name
    return feature_names[0]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _panel_title(key: str, anomalous: int, alerts: int, feature: str | None) -> str:
    text = f"{key}: {_plural(anomalous, 'anomalous window')}, {_plural(alerts, 'alert')}"
    return text + (f" (upper panel: {feature})" if feature else "")


def _to_datetimes(ms: np.ndarray) -> np.ndarray:
    return (np.asarray(ms, dtype=np.int64)).astype("datetime64[ms]")


def _break_gaps(t_ms: np.ndarray, *series: np.ndarray, factor: float = 5.0) -> tuple[np.ndarray, ...]:
    """Insert a NaN point into every gap longer than ``factor`` times the usual window spacing.

    A key that is silent for hours (a shop closed overnight) then shows as a break in the line
    instead of a straight segment across the night.

    >>> t, y = _break_gaps(np.array([0, 60, 120, 10_000, 10_060]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    >>> t.tolist(), np.isnan(y).tolist()
    ([0, 60, 120, 5060, 10000, 10060], [False, False, False, True, False, False])
    """
    t = np.asarray(t_ms, dtype=np.int64)
    if len(t) < 3:
        return (t, *(np.asarray(s, dtype=np.float64) for s in series))
    step = np.diff(t)
    usual = float(np.median(step[step > 0])) if np.any(step > 0) else 0.0
    gaps = np.flatnonzero(step > factor * usual) if usual > 0 else np.array([], dtype=np.int64)
    if len(gaps) == 0:
        return (t, *(np.asarray(s, dtype=np.float64) for s in series))
    t_out = np.insert(t, gaps + 1, (t[gaps] + t[gaps + 1]) // 2)
    return (t_out, *(np.insert(np.asarray(s, dtype=np.float64), gaps + 1, np.nan) for s in series))


def plot_backtest(
    out_path: str | Path,
    windows: Any,
    alerts: Iterable[Any] | None = None,
    top_keys: int = 4,
    feature: str | None = None,
    *,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Draw the backtest picture to a PNG.

    Parameters
    ----------
    out_path
        Where to write the PNG (parent directories are created).
    windows
        Columnar scored windows (see the module docstring).
    alerts
        Alerts (dicts as in the alerts JSONL, or :class:`~streamdetect.alerts.Alert`); they choose the
        feature to show and are marked by severity. Without them, anomalous windows are marked.
    top_keys
        How many keys to draw: those with most anomalies (ties: highest score).
    feature
        Feature to draw in the upper panel of every key; by default chosen per key with
        :func:`choose_feature`.
    keys
        Draw these keys (as ``|``-joined values) instead of the top ones.
    title
        Figure title; a summary by default.
    dpi
        Resolution.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    ValueError
        When there is no scored window, a requested key or feature does not exist.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker
    from matplotlib.lines import Line2D

    labels = np.asarray([_key_label(k) for k in _field(windows, "keys")], dtype=object)
    n = len(labels)
    if n == 0:
        raise ValueError("no scored windows to plot")
    start_ms = np.asarray(_field(windows, "start_ms"), dtype=np.int64)
    score = np.asarray(_field(windows, "score"), dtype=np.float64)
    threshold = np.asarray(_field(windows, "threshold"), dtype=np.float64)
    is_anomaly = np.asarray(_field(windows, "is_anomaly"), dtype=bool)
    feature_names = tuple(_field(windows, "feature_names", ()) or ())
    features = _field(windows, "features", None)
    feats = (np.asarray(features, dtype=np.float64).reshape(n, -1) if features is not None and feature_names
             else np.zeros((n, 0)))
    if feature is not None and feature not in feature_names:
        raise ValueError(f"feature {feature!r} is not among the scored features {', '.join(feature_names) or '(none)'}")

    # the alerts stream also carries the ends of episodes (status "resolved"): not windows to mark
    alert_list = [d for d in (_alert_dict(a) for a in alerts or ()) if d.get("status") != "resolved"]
    alerts_by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in alert_list:
        alerts_by_key[_key_label(a.get("key", ""))].append(a)

    if keys is not None:
        unknown = [k for k in keys if k not in set(labels.tolist())]
        if unknown:
            raise ValueError(f"no scored windows for key(s) {', '.join(unknown)}")
        chosen = list(keys)
    else:
        counts: Counter[str] = Counter(labels[is_anomaly].tolist())
        for key, items in alerts_by_key.items():
            counts[key] = max(counts[key], len(items))
        order = np.argsort(-np.where(np.isfinite(score), score, -np.inf), kind="stable")
        best_score: dict[str, float] = {}
        for i in order.tolist():
            best_score.setdefault(labels[i], score[i])
        candidates = sorted(best_score, key=lambda k: (-counts[k], -best_score[k], k))
        chosen = candidates[: max(1, top_keys)]

    rows_per_key = 2 if feats.shape[1] else 1
    fig_height = 2.3 * rows_per_key * len(chosen) + 1.0
    fig, axes = plt.subplots(rows_per_key * len(chosen), 1, figsize=(13, fig_height), squeeze=False,
                             sharex=False, constrained_layout=True)
    axes = axes[:, 0]
    total_anomalies = int(is_anomaly.sum())
    fig.suptitle(title or (f"Backtest: {_plural(n, 'window')}, {_plural(len(set(labels.tolist())), 'key')}, "
                           f"{_plural(total_anomalies, 'anomalous window')}, {_plural(len(alert_list), 'alert')}"
                           f" — {'chosen' if keys is not None else 'top'} {_plural(len(chosen), 'key')}"),
                 fontsize=12)

    for k, key in enumerate(chosen):
        rows = np.flatnonzero(labels == key)
        rows = rows[np.argsort(start_ms[rows], kind="stable")]
        t = _to_datetimes(start_ms[rows])
        key_alerts = alerts_by_key.get(key, [])
        alert_times = [(_to_datetimes(np.asarray([_parse_time_ms(a["window_start"])]))[0], str(a.get("severity", "")))
                       for a in key_alerts if a.get("window_start") is not None]
        anomalous = is_anomaly[rows]
        ax_score = axes[rows_per_key * k + rows_per_key - 1]

        if rows_per_key == 2:
            ax_feat = axes[rows_per_key * k]
            name = feature or choose_feature(feature_names, key_alerts) or feature_names[0]
            col = feature_names.index(name)
            values = feats[rows, col]
            t_line, v_line = _break_gaps(start_ms[rows], values)
            ax_feat.plot(_to_datetimes(t_line), v_line, color="#1f77b4", lw=0.8)
            ax_feat.scatter(t[anomalous], values[anomalous], s=22, color="#c92a2a", zorder=3,
                            label="anomalous window")
            ax_feat.set_ylabel(name, fontsize=9)
            ax_feat.set_title(_panel_title(key, int(anomalous.sum()), len(key_alerts), name), fontsize=10, loc="left")
            ax_feat.margins(y=0.08)
            ax_feat.sharex(ax_score)
            ax_feat.tick_params(labelbottom=False)
            ax_feat.grid(alpha=0.3)
        else:
            ax_score.set_title(_panel_title(key, int(anomalous.sum()), len(key_alerts), None), fontsize=10, loc="left")

        s = score[rows]
        thr = threshold[rows]
        t_line, s_line, thr_line = _break_gaps(start_ms[rows], s, thr)
        ax_score.plot(_to_datetimes(t_line), s_line, color="#495057", lw=0.7, label="score")
        ax_score.plot(_to_datetimes(t_line), thr_line, color="#c92a2a", lw=1.2, ls="--", label="threshold")
        ax_score.scatter(t[anomalous], s[anomalous], s=22, color="#c92a2a", zorder=3)
        for when, severity in alert_times:
            for ax in axes[rows_per_key * k: rows_per_key * (k + 1)]:
                ax.axvline(when, color=SEVERITY_COLORS.get(severity, "#c92a2a"), alpha=0.45, lw=1.2)
        finite = s[np.isfinite(s)]
        if finite.size and finite.max() > 200 and finite.max() > 10 * np.percentile(np.abs(finite), 95):
            # a few gross outliers would flatten everything else: compress above 10
            ax_score.set_yscale("symlog", linthresh=10.0)
            ax_score.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_score.margins(y=0.08)
        ax_score.set_ylabel("score", fontsize=9)
        ax_score.grid(alpha=0.3)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
        ax_score.xaxis.set_major_locator(locator)
        ax_score.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))

    handles = [Line2D([], [], color="#495057", lw=1, label="score"),
               Line2D([], [], color="#c92a2a", lw=1.2, ls="--", label="threshold"),
               Line2D([], [], color="#c92a2a", marker="o", ls="", label="anomalous window")]
    severities = sorted({str(a.get("severity", "")) for a in alert_list} & set(SEVERITY_COLORS),
                        key=list(SEVERITY_COLORS).index)
    handles += [Line2D([], [], color=SEVERITY_COLORS[sev], lw=1.5, alpha=0.6, label=f"alert: {sev}")
                for sev in severities]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
