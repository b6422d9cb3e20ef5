"""The steps of a round trip run in this process, on warm caches: what each costs, in ns.

The standard library's steps a round trip takes (the future's transitions, the pickling of an
empty call and of its ``None`` result, a pipe's write and read) and the probes' own
instruments (a timestamp, a wrapped ``os.read``), so a stage can be read against what its
steps cost when nothing has to be woken.
"""

from __future__ import annotations

import gc
import os
import pickle
import statistics
import time
from concurrent.futures import Future
from typing import Any, Callable, Optional

clock = time.perf_counter_ns
_CALLS = 2000


def per_call_ns(
    body: Callable[[Any], Any], setup: Optional[Callable[[int], list[Any]]] = None
) -> float:
    """``body(item)``'s time per call, in ns: median of 25 runs of 2,000 calls each.

    The garbage collector is off while the clock runs, as in ``timeit``: this process holds
    every sample taken so far, and a full collection would land in a random loop.
    """
    times = []
    for _ in range(25):
        items = setup(_CALLS) if setup else [None] * _CALLS
        gc.disable()
        try:
            start = clock()
            for item in items:
                body(item)
            times.append((clock() - start) / _CALLS)
        finally:
            gc.enable()
    return statistics.median(times)


def fresh(n: int) -> list[Future[Any]]:
    return [Future() for _ in range(n)]


def running(n: int) -> list[Future[Any]]:
    futures = fresh(n)
    for future in futures:
        future.set_running_or_notify_cancel()
    return futures


def done(n: int) -> list[Future[Any]]:
    futures = running(n)
    for future in futures:
        future.set_result(None)
    return futures


def in_process_costs() -> dict[str, float]:
    """Each step's cost per call (ns), the loop's own cost subtracted (and shown)."""
    no_arguments = pickle.dumps(((), {}), protocol=pickle.HIGHEST_PROTOCOL)
    read_end, write_end = os.pipe()
    real_read = os.read

    def wrapped_read(fd: int, size: int) -> bytes:  # as the probes wrap os.read
        data = real_read(fd, size)
        if data:
            clock()
        return data

    def pipe_trip(_: Any) -> None:
        os.write(write_end, b"12345678")
        os.read(read_end, 8)

    def wrapped_pipe_trip(_: Any) -> None:
        os.write(write_end, b"12345678")
        wrapped_read(read_end, 8)

    steps: list[tuple[str, Callable[[Any], Any], Optional[Callable[[int], list[Any]]]]] = [
        ("Future()", lambda _: Future(), None),
        ("pickle ((), {})", lambda _: pickle.dumps(((), {}), protocol=5), None),
        ("unpickle ((), {})", lambda _: pickle.loads(no_arguments), None),
        ("pickle None", lambda _: pickle.dumps(None, protocol=5), None),
        (
            "future: set_running_or_notify_cancel()",
            lambda f: f.set_running_or_notify_cancel(),
            fresh,
        ),
        ("future: set_result(), no waiter", lambda f: f.set_result(None), running),
        ("future: result() of a done future", lambda f: f.result(), done),
        ("pipe: os.write + os.read of 8 bytes, one thread", pipe_trip, None),
        ("probe: perf_counter_ns()", lambda _: clock(), None),
        ("probe: the same pipe trip, os.read wrapped", wrapped_pipe_trip, None),
    ]
    try:
        baseline = per_call_ns(lambda _: None)
        costs = {name: per_call_ns(body, setup) - baseline for name, body, setup in steps}
    finally:
        os.close(read_end)
        os.close(write_end)
    costs["(loop and call overhead, subtracted)"] = baseline
    return costs
