"""What a wakeup costs on this machine, without poolkit: the floors of a round trip.

Each floor runs in a fresh process of its own (:func:`floors_child`, :func:`pinned_child`):
the raw pipe forks, which must not happen in a process with threads, and the profiling
process keeps several pools alive. The raw pipe is the benchmark runner's own floor
(:func:`poolkit_bench_runner.floors.raw_pipe_round_trips`), here also pinned.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, Optional

from benchmarks.roundtrip.children import run_child
from benchmarks.roundtrip.loops import WORKERS, latency_samples
from poolkit import Executor
from poolkit_bench_runner.floors import raw_pipe_round_trips

clock = time.perf_counter_ns
_WARMUP = 200


class Pinned:
    """Pin the calling thread to ``cpu`` for a while (None: leave it alone)."""

    def __init__(self, cpu: Optional[int]) -> None:
        self.cpu = cpu
        self.saved = os.sched_getaffinity(0)

    def __enter__(self) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self.saved)


def placements() -> dict[str, tuple[Optional[int], Optional[int]]]:
    """Where the two ends of a floor run: one CPU, two CPUs, or wherever the kernel likes."""
    cpus = sorted(os.sched_getaffinity(0))
    found: dict[str, tuple[Optional[int], Optional[int]]] = {"not pinned": (None, None)}
    found["same CPU"] = (cpus[0], cpus[0])
    if len(cpus) > 1:
        found["two CPUs"] = (cpus[0], cpus[1])
    return found


def thread_handoff_samples(count: int, here: Optional[int], there: Optional[int]) -> list[int]:
    """A byte down a pipe to a thread waiting in epoll, which resolves a Future we wait on."""
    read_end, write_end = os.pipe()
    box: list[Optional[Future[Any]]] = [None]

    def helper() -> None:
        if there is not None:
            os.sched_setaffinity(0, {there})
        selector = selectors.DefaultSelector()
        selector.register(read_end, selectors.EVENT_READ)
        while True:
            selector.select()
            if not os.read(read_end, 1):
                break
            future = box[0]
            assert future is not None
            future.set_result(None)
        selector.close()

    thread = threading.Thread(target=helper)
    thread.start()
    samples = []
    try:
        with Pinned(here):
            for i in range(count + _WARMUP):
                start = clock()
                future: Future[Any] = Future()
                box[0] = future
                os.write(write_end, b"x")
                future.result()
                if i >= _WARMUP:
                    samples.append(clock() - start)
    finally:
        os.close(write_end)
        thread.join()
        os.close(read_end)
    return samples


class BusyLoop:
    """A ``nice 19`` process spinning for a while: a CPU that is never idle."""

    def __enter__(self) -> None:
        self.process = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while 1: pass"])
        time.sleep(0.1)  # let it start spinning

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def floors_child(count: int) -> dict[str, list[int]]:
    """In a fresh process without threads: raw pipes and thread handoffs, per placement."""
    found: dict[str, list[int]] = {}
    for where, (here, there) in placements().items():
        found[f"raw pipe, {where}"] = raw_pipe_round_trips(_WARMUP, count, here, there)
        found[f"thread handoff, {where}"] = thread_handoff_samples(count, here, there)
    with BusyLoop():
        for where, (here, there) in placements().items():
            if here != there:
                found[f"raw pipe, {where}, busy"] = raw_pipe_round_trips(
                    _WARMUP, count, here, there
                )
    return found


def pinned_child(methods: list[str], warmup: int, count: int) -> dict[str, list[int]]:
    """In a fresh process pinned to one CPU (with its workers): poolkit's round trips."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any thread or process
    found = {}
    for method in methods:
        with Executor(WORKERS, start_method=method) as executor:
            found[method] = latency_samples(executor.submit, warmup, count)
    return found


def measure_floors(methods: list[str], warmup: int, count: int) -> dict[str, list[int]]:
    """Every floor, each child run once: samples (ns) by name."""
    found: dict[str, list[int]] = run_child("--floors-child", "--samples", str(count))
    pinned = run_child(
        "--pinned-child",
        *("--methods", ",".join(methods), "--warmup", str(warmup), "--samples", str(count)),
    )
    for method, samples in pinned.items():
        found[f"{method} pinned"] = samples
    return found
