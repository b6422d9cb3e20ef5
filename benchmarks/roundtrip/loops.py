"""Plain round trips: the latency samples, and the loops a sampling profiler watches."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

from benchmarks.roundtrip.counters import identify
from poolkit import Executor
from poolkit_bench_runner.tasks import noop

clock = time.perf_counter_ns
#: Workers per pool.
WORKERS = 2


def latency_samples(submit: Callable[..., Any], warmup: int, count: int) -> list[int]:
    """``count`` round trips of a no-op, one at a time, after ``warmup`` more (ns each)."""
    for _ in range(warmup):
        submit(noop).result()
    samples = []
    for _ in range(count):
        start = clock()
        submit(noop).result()
        samples.append(clock() - start)
    return samples


def profile_loop(kind: str, method: str, seconds: float, sidecar: Optional[str]) -> None:
    """A plain loop for a sampling profiler: latency round trips or bursts of 20,000.

    ``sidecar``: where to write the pids and the dispatcher thread's name, which the summary
    needs to tell the threads apart.
    """
    with Executor(WORKERS, start_method=method) as executor:
        latency_samples(executor.submit, 200, 0)
        pool = identify(executor, WORKERS)
        if sidecar:
            with open(sidecar, "w") as out:
                json.dump(
                    {
                        "kind": kind,
                        "method": method,
                        "parent": os.getpid(),
                        "workers": pool.workers,
                        "dispatcher_tid": pool.dispatcher_tid,
                        "dispatcher_name": pool.dispatcher_name,
                    },
                    out,
                )
        start = time.perf_counter()
        loop = latency_loop if kind == "latency" else burst_loop
        done = loop(executor, start + seconds)
        elapsed = time.perf_counter() - start
    print(
        f"{kind} {method}: {done} tasks in {elapsed:.2f} s, {done / elapsed:,.0f} tasks/s",
        flush=True,
    )


def latency_loop(executor: Executor, until: float) -> int:
    """Round trips one at a time until ``until``; how many."""
    submit, done = executor.submit, 0
    while time.perf_counter() < until:
        for _ in range(100):
            submit(noop).result()
        done += 100
    return done


def burst_loop(executor: Executor, until: float) -> int:
    """Bursts of 20,000 submits, then their results, until ``until``; how many tasks."""
    submit, done = executor.submit, 0
    while time.perf_counter() < until:
        futures = [submit(noop) for _ in range(20000)]
        for future in futures:
            future.result()
        done += len(futures)
    return done
