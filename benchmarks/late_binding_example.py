"""The issue's example: 2 workers, a warm-up of short tasks, one 1 s task, then 20 of 10 ms.

Prints, per pool, the seconds from the first submit until the 20 short tasks are done.
Run: ``python benchmarks/late_binding_example.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKERS = 2


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _futures_run(make: Callable[[], Any]) -> float:
    with make() as pool:
        for f in [pool.submit(nap, 0.001) for _ in range(50)]:
            f.result()
        start = time.perf_counter()
        pool.submit(nap, 1.0)
        shorts = [pool.submit(nap, 0.01) for _ in range(20)]
        cf.wait(shorts)
        return time.perf_counter() - start


def _pebble_run() -> float:
    import pebble

    pool = pebble.ProcessPool(max_workers=WORKERS, context=mp.get_context("forkserver"))
    try:
        for f in [pool.schedule(nap, (0.001,)) for _ in range(50)]:
            f.result()
        start = time.perf_counter()
        pool.schedule(nap, (1.0,))
        shorts = [pool.schedule(nap, (0.01,)) for _ in range(20)]
        cf.wait(shorts)
        return time.perf_counter() - start
    finally:
        pool.close()
        pool.join()


def _mp_pool_run() -> float:
    with mp.get_context("forkserver").Pool(WORKERS) as pool:
        for r in [pool.apply_async(nap, (0.001,)) for _ in range(50)]:
            r.get()
        start = time.perf_counter()
        long = pool.apply_async(nap, (1.0,))
        shorts = [pool.apply_async(nap, (0.01,)) for _ in range(20)]
        for r in shorts:
            r.get()
        elapsed = time.perf_counter() - start
        long.get()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    import loky

    import poolkit

    pools: dict[str, Callable[[], float]] = {
        "poolkit": lambda: _futures_run(lambda: poolkit.Executor(WORKERS)),
        "stdlib": lambda: _futures_run(
            lambda: cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("forkserver"))
        ),
        "loky": lambda: _futures_run(lambda: loky.ProcessPoolExecutor(WORKERS)),
        "pebble": _pebble_run,
        "mp.Pool": _mp_pool_run,
    }
    times: dict[str, list[float]] = {name: [] for name in pools}
    for _ in range(repeat):  # interleaved
        for name, run in pools.items():
            times[name].append(run())
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cpus")
    for name, values in times.items():
        print(
            f"{name:8s} short tasks done after median {statistics.median(values):.3f} s "
            f"(runs: {', '.join(f'{v:.3f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
