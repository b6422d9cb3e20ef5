"""CPU time, CPU waits and context switches of a pool's processes and threads, from ``/proc``.

Which processes and threads make up a pool is found from the outside (:func:`identify`):
the workers are the pids tasks report, the dispatcher is the thread that settles futures.
"""

from __future__ import annotations

import os
import resource
import threading
from concurrent.futures import Future
from typing import Any, Callable, NamedTuple, Optional

from benchmarks.roundtrip.patch_points import SETTLE, Patches
from poolkit import Executor
from poolkit_bench_runner import procfs
from poolkit_bench_runner.tasks import noop, sleep_pid


class PoolIdentity(NamedTuple):
    """The processes and the dispatcher thread of one pool."""

    workers: list[int]
    dispatcher_tid: int  #: native thread id
    dispatcher_name: str


def identify(executor: Executor, workers: int) -> PoolIdentity:
    """Ask the pool: tasks that overlap land on different workers and report their pids;
    the thread that calls ``Future.set_result`` is the dispatcher."""
    pids: set[int] = set()
    for _ in range(20):
        pids.update(pid for pid, _ in (f.result() for f in _overlapping(executor, workers)))
        if len(pids) >= workers:
            break
    settler: list[tuple[int, str]] = []
    patches = Patches()

    def record(method: Callable[[Future[Any], Any], None]) -> Callable[[Future[Any], Any], None]:
        def settle(future: Future[Any], result: Any) -> None:
            settler.append((threading.get_native_id(), threading.current_thread().name))
            method(future, result)

        return settle

    patches.replace(SETTLE, record)
    try:
        executor.submit(noop).result()
    finally:
        patches.restore()
    if not settler:
        raise RuntimeError("no thread called Future.set_result: is the pool's future a Future?")
    return PoolIdentity(sorted(pids), *settler[0])


def _overlapping(executor: Executor, workers: int) -> list[Future[Any]]:
    return [executor.submit(sleep_pid, 0.05) for _ in range(workers)]


class CpuMeter:
    """CPU, context switches and CPU waits of the parent's two threads and the workers."""

    def __init__(self, pool: PoolIdentity) -> None:
        self.workers = pool.workers
        self.threads = {
            "caller": (os.getpid(), threading.get_native_id()),
            "dispatcher": (os.getpid(), pool.dispatcher_tid),
        }
        for pid in self.workers:
            self.threads[f"worker {pid}"] = (pid, pid)

    def snapshot(self) -> dict[str, float]:
        """Counters now, in µs (and counts); subtract two snapshots for an interval."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        snap = {"parent user": usage.ru_utime * 1e6, "parent sys": usage.ru_stime * 1e6}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        snap["workers user"] = snap["workers sys"] = 0.0
        for pid in self.workers:
            stat = _required(procfs.read_stat(pid), f"/proc/{pid}/stat")
            snap["workers user"] += stat.user_ticks * tick_us
            snap["workers sys"] += stat.system_ticks * tick_us
        for name, (pid, tid) in self.threads.items():
            counters = _required(procfs.thread_counters(pid, tid), f"/proc/{pid}/task/{tid}")
            group = "workers" if name.startswith("worker") else name
            for key, value in (
                ("cpu", counters.on_cpu_ns / 1e3),
                ("cpu wait", counters.run_wait_ns / 1e3),
                ("switches", float(counters.voluntary_switches)),
            ):
                snap[f"{group} {key}"] = snap.get(f"{group} {key}", 0.0) + value
        return snap


def _required(value: Optional[Any], what: str) -> Any:
    if value is None:
        raise RuntimeError(f"{what} could not be read: the pool lost a process or a thread")
    return value
