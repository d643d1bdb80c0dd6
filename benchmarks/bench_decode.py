"""Throughput of :func:`streamdetect.events.decode_events` against raw ``orjson.loads``.

Run: ``.venv/bin/python benchmarks/bench_decode.py [--n 200000] [--batch 20000] [--repeat 5]``.
Both figures are on one core (BLAS/OpenMP threads pinned to 1) and on the same bytes; the ratio
says how much of the decoder's time goes beyond plain JSON parsing (validation, columns).
"""

from __future__ import annotations

import os

# Pin threads before numpy is imported: the pipeline's budget is one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import random  # noqa: E402
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
            loads(v)

    dec = best_rate(lambda chunk: decode_events(chunk, schema), values, args.batch, args.repeat)
    ref = best_rate(raw, values, args.batch, args.repeat)
    print(f"events: {args.n:,} x {size:.0f} bytes, batches of {args.batch:,}, best of {args.repeat}")
    print(f"decode_events:            {dec:>12,.0f} events/s")
    print(f"orjson.loads per message: {ref:>12,.0f} events/s")
    print(f"ratio decode/raw:         {dec / ref:>12.2f}")


if __name__ == "__main__":
    main()
