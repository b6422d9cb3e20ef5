"""Workloads of mixed durations, where a pool that binds a task to a busy worker loses.

- ``mixed``: mostly short tasks and a few long ones, in a fixed random order, submitted at
  once; the makespan (first submit to last result), against its lower bound
  ``max(sum of durations / workers, longest task)`` (the floor's number).
- ``longburst``: one long task, then a burst of short ones: the time until the short ones are
  done (the long one may still run). A pool that queues short tasks behind the long one
  takes as long as the long task.
- ``service``: short requests arriving one at a time (submit, wait, next) while a long task
  runs all the time on one worker (resubmitted as soon as it ends): each request's latency,
  as a service sees it; median and p99.

Tasks sleep (``tasks.nap``), so the numbers are about scheduling, not about CPU speed, and
the pool's own threads have the CPUs. Every pool runs a warm-up of short tasks first: a pool
that measures durations (poolkit) then believes tasks are short, the case where it prefetches.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable

from poolkit_bench_runner import tasks
from poolkit_bench_runner.adapters import PoolAdapter
from poolkit_bench_runner.workloads import Values, percentile

#: Short tasks submitted (and waited for) before each measurement.
WARMUP_TASKS = 100


def _warm(pool: PoolAdapter) -> None:
    for handle in [pool.submit(tasks.noop) for _ in range(WARMUP_TASKS)]:
        pool.wait(handle)


def mixed_durations(params: dict[str, Any]) -> list[float]:
    """The ``mixed`` workload's task durations, in submission order (the same for every pool)."""
    short, long = float(params["short_ms"]) / 1e3, float(params["long_ms"]) / 1e3
    count, longs = int(params["tasks"]), int(params["long_tasks"])
    durations = [long] * longs + [short] * (count - longs)
    random.Random(16).shuffle(durations)
    return durations


def makespan_bound(durations: list[float], workers: int) -> float:
    """No schedule finishes sooner: the work spread evenly, or the longest task alone."""
    return max(sum(durations) / workers, max(durations))


def measure_mixed(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Makespan of a mix of short and long tasks submitted at once."""
    durations = mixed_durations(params)
    _warm(pool)
    start = time.perf_counter()
    handles = [pool.submit(tasks.nap, seconds) for seconds in durations]
    for handle in handles:
        pool.wait(handle)
    elapsed = time.perf_counter() - start
    bound = makespan_bound(durations, pool.workers)
    return {"makespan_ms": elapsed * 1e3, "makespan_ratio": elapsed / bound}


def floor_mixed(method: str, workers: int, params: dict[str, Any]) -> Values:
    """The lower bound of the ``mixed`` makespan (computed: no schedule beats it)."""
    bound = makespan_bound(mixed_durations(params), workers)
    return {"makespan_ms": bound * 1e3, "makespan_ratio": 1.0}


def measure_longburst(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """One long task, then a burst of short ones: when are the short ones done?"""
    long, short = float(params["long_ms"]) / 1e3, float(params["short_ms"]) / 1e3
    _warm(pool)
    start = time.perf_counter()
    first = pool.submit(tasks.nap, long)
    handles = [pool.submit(tasks.nap, short) for _ in range(int(params["shorts"]))]
    for handle in handles:
        pool.wait(handle)
    elapsed = time.perf_counter() - start
    pool.wait(first)
    return {"shorts_ms": elapsed * 1e3}


def floor_longburst(method: str, workers: int, params: dict[str, Any]) -> Values:
    """The short tasks spread over the workers the long one leaves free (computed)."""
    short, count = float(params["short_ms"]), int(params["shorts"])
    free = max(1, workers - 1)
    return {"shorts_ms": short * -(-count // free)}


def _is_done(handle: Any) -> Callable[[], bool]:
    done = getattr(handle, "done", None)
    return done if callable(done) else handle.ready  # type: ignore[no-any-return]


def measure_service(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Short requests one at a time while a long task always runs on one worker."""
    long = float(params["long_ms"]) / 1e3
    _warm(pool)
    clock = time.perf_counter_ns
    current = pool.submit(tasks.nap, long)
    current_done = _is_done(current)
    samples = []
    for _ in range(int(params["requests"])):
        if current_done():
            pool.wait(current)
            current = pool.submit(tasks.nap, long)
            current_done = _is_done(current)
        start = clock()
        pool.wait(pool.submit(tasks.noop))
        samples.append(clock() - start)
    pool.wait(current)
    return {
        "median_us": statistics.median(samples) / 1e3,
        "p99_us": percentile(samples, 99) / 1e3,
    }


#: Workloads run on a pool that the runner built and warmed up.
WARM: dict[str, Callable[[PoolAdapter, dict[str, Any]], Values]] = {
    "mixed": measure_mixed,
    "longburst": measure_longburst,
    "service": measure_service,
}
#: What the floor reports for them: bounds no pool can beat, computed.
FLOORS: dict[str, Callable[[str, int, dict[str, Any]], Values]] = {
    "mixed": floor_mixed,
    "longburst": floor_longburst,
}
