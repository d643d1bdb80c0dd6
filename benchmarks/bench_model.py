"""Throughput of StepwiseGMM (score + update) against river's HalfSpaceTrees, single core.

Run: ``.venv/bin/python benchmarks/bench_model.py`` (BLAS threads are set to 1 and the process
is pinned to one CPU). Prints vectors/s, at K=8, d=8, batches of 1000, of

* ``anomaly_score`` then ``partial_fit`` on each batch (test-then-train, the headline figure;
  ``partial_fit`` reuses the E-step of the scored batch),
* the same with that reuse disabled (the E-step computed twice),
* ``partial_fit`` alone (it returns the pre-update NLL, so it is score + update in one call),
* river's ``HalfSpaceTrees`` ``score_one`` + ``learn_one`` on the same vectors scaled to [0, 1],

and the ratio. Targets: >= 1,000,000 vectors/s and >= 30x HalfSpaceTrees.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from streamdetect.model import StepwiseGMM  # noqa: E402

K, D, BATCH = 8, 8, 1000


def make_data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (K, D))
    labels = rng.integers(K, size=n)
    A = rng.normal(size=(K, D, D)) / np.sqrt(D)
    return centres[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, D)), A[labels])


def bench_gmm(X: np.ndarray, score_first: bool, repeats: int, reuse: bool = True) -> float:
    best = 0.0
    for _ in range(repeats):
        model = StepwiseGMM(n_components=K, warmup=20_000, n_init=1, seed=0, step_floor=1e-3)
        model.fit(X[:20_000])
        stream = X[20_000:]
        n = (len(stream) // BATCH) * BATCH
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            b = stream[i : i + BATCH]
            if score_first:
                model.anomaly_score(b)
                if not reuse:
                    model._scored = None  # forget the scored E-step: partial_fit recomputes it
            model.partial_fit(b)
        best = max(best, n / (time.perf_counter() - t))
    return best


def bench_hst(X: np.ndarray, n: int) -> float:
    from river import anomaly

    lo, hi = X.min(axis=0), X.max(axis=0)
    S = (X[:n] - lo) / (hi - lo)
    rows = [dict(enumerate(r.tolist())) for r in S]
    hst = anomaly.HalfSpaceTrees(seed=42)
    t = time.perf_counter()
    for x in rows:
        hst.score_one(x)
        hst.learn_one(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=220_000, help="vectors (the first 20 000 are the warm-up)")
    p.add_argument("--hst-n", type=int, default=10_000, help="vectors for HalfSpaceTrees (slow)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = p.parse_args()
    cpu = "unpinned"
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        first = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {first})
        cpu = f"pinned to CPU {first}"
    X = make_data(args.n)
    two = bench_gmm(X, score_first=True, repeats=args.repeats)
    twice = bench_gmm(X, score_first=True, repeats=args.repeats, reuse=False)
    one = bench_gmm(X, score_first=False, repeats=args.repeats)
    hst = bench_hst(X, args.hst_n)
    print(f"StepwiseGMM K={K} d={D} batch={BATCH}, one BLAS thread, {cpu}")
    print(f"  anomaly_score + partial_fit:               {two:12,.0f} vectors/s   (target >= 1,000,000)")
    print(f"  the same, E-step not reused:               {twice:12,.0f} vectors/s")
    print(f"  partial_fit alone (returns pre-update NLL): {one:11,.0f} vectors/s")
    print(f"river HalfSpaceTrees score_one + learn_one:  {hst:12,.0f} vectors/s")
    print(f"ratio anomaly_score + partial_fit / HST: {two / hst:6.1f}x   (target >= 30x)")
    print(f"ratio without E-step reuse / HST:        {twice / hst:6.1f}x")


if __name__ == "__main__":
    main()
