"""Two source trees' detector core on the same stream, interleaved batch by batch: their speed ratio.

On a shared machine ``bench_pipeline.py`` swings by a third within minutes, more than most changes
move it, and runs of two versions a minute apart compare the machine's hours rather than the code.
Here each tree runs in its own process (its own imports, caches and memory) and the two take turns
on every batch of the timed part, the first to go alternating from batch to batch, so that both
see the same minutes of the machine. Only the ratio is meant to carry.

    python benchmarks/compare_pipeline.py --base ../other-checkout          # this tree against it
    python benchmarks/compare_pipeline.py --base /tmp/a --new /tmp/b --repeat 5 --malformed 0.01

A tree is a directory holding the ``streamdetect`` package (a checkout, or a ``git worktree``);
both run with this interpreter and its installed dependencies. The stream is
``bench_pipeline.py``'s: the generator's stores, the first day untimed (warm-up), the rest timed
in batches of ``--chunk`` events.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO  # noqa: E402


def _child(values_path: str, chunk: int, days: int, cpu: int) -> None:
    """Run the detector of the ``streamdetect`` first on the path: a fresh one per ``start`` line
    (warm-up untimed), then one timed batch per ``batch`` line, answering its seconds."""
    os.sched_setaffinity(0, {cpu})
    import streamdetect
    from streamdetect.detector import Detector, compile_kernels

    compile_kernels()
    with open(values_path, "rb") as f:
        values = pickle.load(f)
    warm = len(values) // days
    print(f"ready {Path(streamdetect.__file__).parent.parent}", flush=True)
    det = Detector()
    batches = iter(())
    for line in sys.stdin:
        if line == "start\n":
            det = Detector()
            for i in range(0, warm, chunk):
                det.process(values[i : min(i + chunk, warm)])
            batches = iter(range(warm, len(values), chunk))
            print("started", flush=True)
        elif line == "batch\n":
            i = next(batches)
            t = time.perf_counter()
            det.process(values[i : i + chunk])
            print(time.perf_counter() - t, flush=True)


def _spawn(tree: str, values_path: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    cmd = [sys.executable, __file__, "--child", values_path, "--chunk", str(args.chunk), "--days", str(args.days),
           "--cpu", str(args.cpu)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    first = _read(proc.stdout)
    if not first.startswith("ready "):
        raise SystemExit(f"{tree}: the child did not start ({first!r})")
    if Path(first.split(" ", 1)[1]).resolve() != Path(tree).resolve():
        raise SystemExit(f"{tree}: the child imported streamdetect from {first.split(' ', 1)[1]}, not from the tree")
    return proc


def _read(stream: IO[str] | None) -> str:
    assert stream is not None
    return stream.readline().strip()


def _ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return _read(proc.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="the tree to compare against")
    p.add_argument("--new", default=str(Path(__file__).resolve().parent.parent), help="default: this tree")
    p.add_argument("--stores", type=int, default=20)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--chunk", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--malformed", type=float, default=0.0, help="fraction of broken records mixed in")
    # Both on one CPU: on a shared VM one core can be slower than another for minutes, and two
    # processes left to the scheduler each keep to their own (the same tree read 5 % apart).
    p.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="the CPU both trees run on")
    p.add_argument("--child", metavar="VALUES", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.chunk, args.days, args.cpu)
        return
    if not args.base:
        p.error("--base is required")
    for tree in (args.base, args.new):
        if not (Path(tree) / "streamdetect" / "__init__.py").is_file():
            p.error(f"{tree} holds no streamdetect package")

    from streamdetect.generate import GeneratorConfig, encode_event, generate

    events, _ = generate(GeneratorConfig(stores=args.stores, days=args.days, seed=1, malformed_fraction=args.malformed))
    values = [encode_event(e) for e in events]
    timed = len(values) - len(values) // args.days
    n_batches = -(-timed // args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        values_path = os.path.join(tmp, "values.pickle")
        with open(values_path, "wb") as f:
            pickle.dump(values, f)
        procs = {"base": _spawn(args.base, values_path, args), "new": _spawn(args.new, values_path, args)}
        print(f"{len(values):,} events ({args.stores} stores x {args.days} days), timing the last {timed:,} "
              f"in {n_batches} batches, {args.repeat} times")  # fmt: skip
        totals = {"base": 0.0, "new": 0.0}
        for rep in range(args.repeat):
            seconds = {"base": 0.0, "new": 0.0}
            for name in ("base", "new"):
                _ask(procs[name], "start")
            for b in range(n_batches):
                for name in ("base", "new") if (b + rep) % 2 == 0 else ("new", "base"):
                    seconds[name] += float(_ask(procs[name], "batch"))
            rates = {name: timed / seconds[name] for name in seconds}
            print(f"run {rep + 1}: base {rates['base']:>10,.0f} events/s   new {rates['new']:>10,.0f} events/s"
                  f"   new/base {seconds['base'] / seconds['new']:.3f}")  # fmt: skip
            for name in totals:
                totals[name] += seconds[name]
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()
    rates = {name: args.repeat * timed / totals[name] for name in totals}
    print(f"all runs: base {rates['base']:,.0f} events/s, new {rates['new']:,.0f} events/s:"
          f" new/base {totals['base'] / totals['new']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
