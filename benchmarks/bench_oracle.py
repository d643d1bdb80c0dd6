"""What a detector that knew each store's true sales rate could at best do on the generator.

The generator plans every store-day from an expected rate per minute (seasonality, trend, day and
hour noise all drawn) and then injects its anomalies into that rate. This oracle is given both: the
normal rate of every minute and the exact start and kind of every anomaly. For each labelled
anomaly it finds the first window at which the *typical* (median) outcome is already significant
at a per-window false-alarm probability ``alpha``:

* rate anomalies (spike, drop, outage, level shift): the sales counted from the anomaly's start,
  against the Poisson distribution of that count under the normal rate. With a known start and a
  known direction this is the most powerful test there is (the count is the likelihood ratio's
  sufficient statistic), and the true rate leaves no overdispersion to allow for;
* price glitches and tiny tickets: the first wrong-priced or tiny sale, taken as conclusive on
  its own (a price a hundred times off is some five standard deviations of a store's prices).

No real detector knows the normal rate or the start, nor can it test only the windows where an
anomaly begins, so these figures bound what any detector can reach: a real one is slower and finds
fewer. The evaluation's rules apply (delay in windows from the label's start to the first alerting
window; an alert counts until ``tolerance`` windows after the label's end). Run::

    python benchmarks/bench_oracle.py --seeds 0-9 --alpha 1e-3
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import numpy as np
from bench_accuracy import parse_seeds  # the sibling script (benchmarks/ is on the path when run)
from scipy import stats

from streamdetect.generate import ANOMALY_TYPES, GeneratorConfig, iter_events

_PER_SALE = ("price_glitch", "tiny_tickets")  # types a single sale gives away
_TOLERANCE = 5  # windows after a label's end that still count, as in bench_accuracy


def _count_delay(normal: np.ndarray, anomalous: np.ndarray, upward: bool, alpha: float) -> float:
    """First window at which the median count since the start is significant against the normal rate."""
    null_mean = np.cumsum(normal)
    typical = stats.poisson.median(np.cumsum(anomalous))
    # P(C >= m) for an excess, P(C <= m) for a deficit, under the normal rate.
    tail = stats.poisson.sf(typical - 1, null_mean) if upward else stats.poisson.cdf(typical, null_mean)
    hits = np.flatnonzero(tail <= alpha)
    return float(hits[0]) if hits.size else float("nan")


def _first_sale_delay(extra_rate: np.ndarray) -> float:
    """First window by which the median waiting time for one telltale sale has passed."""
    hits = np.flatnonzero(np.cumsum(extra_rate) >= np.log(2.0))
    return float(hits[0]) if hits.size else float("nan")


def oracle_delays(config: GeneratorConfig, alpha: float) -> list[tuple[str, float]]:
    """``(type, delay in windows or nan when never significant)`` for every labelled anomaly."""
    stream = iter_events(config)
    out: list[tuple[str, float]] = []
    for store in stream.stores:
        for day in range(config.days):
            rate, anomalies = stream._plan(store, day)  # the planned (normal) rate per minute
            for a in anomalies:
                end = min(a.end_min + _TOLERANCE, len(rate))
                normal = rate[a.start_min : end]
                inside = np.arange(end - a.start_min) < a.end_min - a.start_min
                if a.type in _PER_SALE:
                    share = a.share if a.type == "price_glitch" else a.magnitude - 1.0
                    out.append((a.type, _first_sale_delay(np.where(inside, normal * share, 0.0))))
                else:
                    anomalous = np.where(inside, normal * a.magnitude, normal)
                    out.append((a.type, _count_delay(normal, anomalous, a.magnitude > 1.0, alpha)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stores", type=int, default=20)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--seeds", default="0", help="a range (0-9) or list (0,3,5) of seeds")
    p.add_argument("--alpha", type=float, default=1e-3, help="per-window false-alarm probability")
    args = p.parse_args()

    by_type: dict[str, list[float]] = defaultdict(list)
    for seed in parse_seeds(args.seeds):
        cfg = GeneratorConfig(stores=args.stores, days=args.days, seed=seed)
        for kind, delay in oracle_delays(cfg, args.alpha):
            by_type[kind].append(delay)

    print(f"oracle (true normal rate, known start), alpha {args.alpha:g} per window, seeds {args.seeds}")
    print(f"{'type':<14}{'labels':>7}{'found':>7}{'recall':>8}{'delay median':>14}{'<= 2':>7}")
    found_all: list[float] = []
    total = 0
    for kind in ANOMALY_TYPES:
        delays = by_type.get(kind, [])
        found = [d for d in delays if not np.isnan(d)]
        total += len(delays)
        found_all += found
        median = statistics.median(found) if found else float("nan")
        fast = sum(d <= 2 for d in found)
        print(
            f"{kind:<14}{len(delays):>7}{len(found):>7}{len(found) / max(len(delays), 1):>8.3f}{median:>14.1f}{fast:>7}"
        )
    median_all = statistics.median(found_all) if found_all else float("nan")
    print(
        f"{'all':<14}{total:>7}{len(found_all):>7}{len(found_all) / max(total, 1):>8.3f}"
        f"{median_all:>14.1f}{sum(d <= 2 for d in found_all):>7}"
    )


if __name__ == "__main__":
    main()
