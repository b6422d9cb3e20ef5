"""How close to its deadline a per-task time limit fires.

    python benchmarks/timeouts.py [--limit 0.2] [--repeat 20]

For each start method: submit a task that would sleep 60 s with ``timeout=limit`` on a warm
pool, and time submit -> TaskTimeoutError. Prints the overshoot past the limit (median,
max) and the time until the replacement worker has run a task.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import poolkit
from poolkit import Executor, TaskTimeoutError


def nap(seconds: float) -> None:
    time.sleep(seconds)


def measure(method: str, limit: float, repeat: int) -> tuple[list[float], list[float]]:
    overshoots, recoveries = [], []
    with Executor(max_workers=1, start_method=method) as ex:
        ex.submit(abs, 1).result()
        for _ in range(repeat):
            start = time.perf_counter()
            future = ex.with_options(timeout=limit).submit(nap, 60)
            try:
                future.result(timeout=60)
            except TaskTimeoutError:
                pass
            fired = time.perf_counter()
            ex.submit(abs, 1).result()
            overshoots.append(fired - start - limit)
            recoveries.append(time.perf_counter() - fired)
    return overshoots, recoveries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"poolkit {poolkit.__version__}, Python {sys.version.split()[0]}, limit {args.limit} s")
    print(f"{'method':<11} {'overshoot median':>17} {'overshoot max':>14} {'back to work':>13}")
    for method in poolkit.start_methods():
        over, back = measure(method, args.limit, args.repeat)
        print(
            f"{method:<11} {statistics.median(over) * 1e3:14.1f} ms {max(over) * 1e3:11.1f} ms"
            f" {statistics.median(back) * 1e3:10.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
