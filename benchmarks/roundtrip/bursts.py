"""Bursts of submits with the garbage collector on and off, and what a kept ``Future`` costs.

Measured in a fresh process (:func:`burst_child`): the samples the profiling process holds
would make every full collection there slower.
"""

from __future__ import annotations

import collections
import gc
import time
from concurrent.futures import Future
from typing import Any

from benchmarks.roundtrip.children import run_child
from benchmarks.roundtrip.loops import WORKERS, latency_samples
from poolkit import Executor
from poolkit_bench_runner.tasks import noop

clock = time.perf_counter_ns


def burst_rate(executor: Executor, count: int, collecting: bool) -> float:
    """Tasks per second of ``count`` no-ops submitted at once, then waited for."""
    latency_samples(executor.submit, 20, 0)
    if not collecting:
        gc.disable()
    try:
        start = clock()
        futures = [executor.submit(noop) for _ in range(count)]
        for future in futures:
            future.result()
        elapsed = clock() - start
    finally:
        gc.enable()
    return count * 1e9 / elapsed


def live_futures_ns(count: int, collecting: bool) -> float:
    """ns per ``Future()`` while ``count`` of them are created and kept alive."""
    gc.collect()
    if not collecting:
        gc.disable()
    try:
        start = clock()
        futures: list[Future[Any]] = [Future() for _ in range(count)]
        elapsed = clock() - start
    finally:
        gc.enable()
    del futures
    return elapsed / count


def burst_child(methods: list[str], count: int) -> dict[str, list[float]]:
    """Twice each, collector on then off: live futures, then a burst per start method."""
    found: dict[str, list[float]] = collections.defaultdict(list)
    for collecting in (True, False, True, False):
        state = "on" if collecting else "off"
        found[f"futures gc {state}"].append(live_futures_ns(count, collecting))
    for method in methods:
        with Executor(WORKERS, start_method=method) as executor:
            for collecting in (True, False, True, False):
                state = "on" if collecting else "off"
                found[f"{method} gc {state}"].append(burst_rate(executor, count, collecting))
    return found


def fresh_process_bursts(methods: list[str], count: int) -> dict[str, list[float]]:
    """:func:`burst_child` in a fresh process."""
    found: dict[str, list[float]] = run_child(
        "--burst-child", "--methods", ",".join(methods), "--burst", str(count)
    )
    return found
