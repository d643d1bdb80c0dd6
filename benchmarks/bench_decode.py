"""Throughput of :func:`streamdetect.events.decode_events` against raw ``orjson.loads``.

Run: ``.venv/bin/python benchmarks/bench_decode.py [--n 200000] [--batch 20000] [--repeat 5]``.
Both figures are on one core (BLAS/OpenMP threads pinned to 1) and on the same bytes; the ratio
says how much of the decoder's time goes beyond plain JSON parsing (validation, columns).

Besides the plain sales, the same events in the shapes other producers write, each against
``orjson.loads`` of its own bytes: times to the second, a nested object and escaped text in fields
not read (the compiled scanner reads all of these), and 1 % malformed records (those go to msgspec
and the rules one by one).
"""

from __future__ import annotations

import os

# Pin threads before numpy is imported: the pipeline's budget is one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import orjson  # noqa: E402

from streamdetect.config import EventSchema  # noqa: E402
from streamdetect.events import decode_events  # noqa: E402

T0_MS = 1_709_294_400_000  # 2024-03-01T12:00:00Z


def make_events(n: int, seed: int = 0) -> list[bytes]:
    """``n`` realistic sales events (about 200 bytes each), ~300 per second of event time."""
    rng = random.Random(seed)
    channels = ("web", "app", "store", "marketplace")
    out = []
    for i in range(n):
        ms = T0_MS + i * 3 + rng.randrange(3)
        secs, frac = divmod(ms, 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"
        event = {
            "event_id": f"{rng.getrandbits(64):016x}-{i:08d}",
            "ts": ts,
            "store_id": f"store-{rng.randrange(200):04d}",
            "sku": f"SKU-{rng.randrange(5000):06d}",
            "channel": rng.choice(channels),
            "quantity": rng.randrange(1, 6),
            "unit_price": round(rng.uniform(1, 250), 2),
            "currency": "EUR",
        }
        out.append(orjson.dumps(event))
    return out


def shapes(values: list[bytes]) -> dict[str, list[bytes]]:
    """The events as other producers write them."""
    n = len(values)
    broken = set(random.Random(1).sample(range(n), n // 100))
    return {
        "as generated": values,
        "times to the second": [re.sub(rb'("ts":"[^".]*)\.\d{3}Z"', rb'\1Z"', v) for v in values],
        "a nested object": [v[:-1] + b',"customer":{"id":7,"tags":["a","b"]}}' for v in values],
        "escaped text": [v[:-1] + b',"note":"caf\\u00e9 \\"x\\""}' for v in values],
        "1 % malformed": [v[: len(v) // 2] if i in broken else v for i, v in enumerate(values)],
    }


def best_rate(fn: Callable[[list[bytes]], object], values: list[bytes], batch: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(0, len(values), batch):
            fn(values[i : i + batch])
        best = min(best, time.perf_counter() - started)
    return len(values) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000, help="events per decode_events call")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    values = make_events(args.n)
    schema = EventSchema()
    batch, rejected = decode_events(values, schema)
    assert len(batch) == args.n and not rejected, rejected[:3]
    size = sum(map(len, values)) / len(values)

    loads = orjson.loads

    def raw(chunk: list[bytes]) -> None:
        for v in chunk:
            with contextlib.suppress(orjson.JSONDecodeError):  # the malformed shape's broken records
                loads(v)

    print(f"events: {args.n:,} x {size:.0f} bytes, batches of {args.batch:,}, best of {args.repeat}")
    print(f"{'shape':<22}{'decode_events':>15}{'orjson.loads':>15}{'ratio':>8}  (events/s)")
    for name, shaped in shapes(values).items():
        dec = best_rate(lambda chunk: decode_events(chunk, schema), shaped, args.batch, args.repeat)
        ref = best_rate(raw, shaped, args.batch, args.repeat)
        print(f"{name:<22}{dec:>15,.0f}{ref:>15,.0f}{dec / ref:>8.2f}")


if __name__ == "__main__":
    main()
