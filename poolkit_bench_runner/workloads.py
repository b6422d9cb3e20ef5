"""The measurements, run inside a fresh runner process on one implementation and start method.

Each ``measure_*`` function returns ``{metric key: value}``; a value of ``None`` means "could
not be measured" and comes with a note. Warm-up work is always done before the clock starts,
except for the cold start, whose whole point is the first call.
"""

from __future__ import annotations

import collections
import gc
import importlib
import math
import os
import select
import signal
import statistics
import time
from concurrent import futures
from typing import Any, Callable, Optional

from poolkit_bench_runner import procfs, tasks
from poolkit_bench_runner.adapters import PoolAdapter, Unsupported

Values = dict[str, Optional[float]]
Factory = Callable[[], PoolAdapter]

#: How long a wave task sleeps: long enough that one worker cannot take a whole wave.
WAVE_SLEEP = 0.001
#: Give up on a pool that does not reach full strength within this many seconds.
READY_TIMEOUT = 30.0
#: A replacement slower than this counts as no replacement.
RESPAWN_TIMEOUT = 5.0


class Measured(Exception):
    """A measurement that cannot be taken on this pool; the message says why."""


def until_pids(
    pool: PoolAdapter,
    count: int,
    known: frozenset[int] = frozenset(),
    timeout: float = READY_TIMEOUT,
) -> set[int]:
    """Run waves of short tasks until ``count`` distinct worker pids not in ``known`` answered."""
    seen: set[int] = set()
    deadline = time.perf_counter() + timeout
    while len(seen) < count:
        if time.perf_counter() > deadline:
            raise Measured(f"only {len(seen)} of {count} new workers answered within {timeout:g} s")
        handles = [pool.submit(tasks.sleep_pid, WAVE_SLEEP) for _ in range(pool.workers)]
        for handle in handles:
            try:
                pid, _started = pool.wait(handle, max(0.0, deadline - time.perf_counter()))
            except (TimeoutError, futures.TimeoutError):
                # A pool can hang for good after a worker's death (multiprocessing.Pool
                # does when the killed worker held its task queue's lock).
                raise Measured(f"the pool hung: no result within {timeout:g} s") from None
            if pid not in known:
                seen.add(pid)
    return seen


def measure_cold(factory: Factory, params: dict[str, Any]) -> Values:
    """Construct -> first result, and construct -> every worker has run a task."""
    started = time.perf_counter()
    pool = factory()
    try:
        first_pid = pool.wait(pool.submit(tasks.getpid))
        first = time.perf_counter() - started
        if pool.workers > 1:
            until_pids(pool, pool.workers - 1, frozenset([first_pid]))
        ready = time.perf_counter() - started
    finally:
        pool.shutdown()
    return {"first_ms": first * 1e3, "ready_ms": ready * 1e3}


def measure_respawn(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """SIGKILL an idle worker; time from its death until a task starts on its replacement.

    The clock starts when the killed process has exited (its pidfd is readable), not at the
    kill: the kernel's teardown of the victim comes before any pool can see the death. It
    stops at the start of the first task on the new worker, stamped in that worker, so the
    task's own sleep and the result's way back are not counted either.
    """
    known = frozenset(until_pids(pool, pool.workers))
    samples = []
    for _ in range(int(params.get("kills", 3))):
        victim = min(known)
        died = _kill_and_see_exit(victim)
        try:
            pid, started = _first_task_on_a_new_worker(pool, known)
        except Measured as exc:
            raise Measured(f"after a worker's death: {exc}") from None
        except Exception as exc:
            raise Measured(
                f"the pool cannot go on after a worker's death ({type(exc).__name__})"
            ) from None
        samples.append(started - died)
        known = frozenset((known - {victim}) | {pid})
    return {"respawn_ms": statistics.median(samples) * 1e3}


def _first_task_on_a_new_worker(pool: PoolAdapter, known: frozenset[int]) -> tuple[int, float]:
    """Keep one short task more than the pool has workers in flight until one runs elsewhere.

    A stream rather than waves: a replacement that comes up while a wave is held by the
    surviving workers would otherwise wait for the next wave. Returns the new worker's pid
    and the earliest start of a task on it; every task submitted has ended on return.
    """
    deadline = time.perf_counter() + RESPAWN_TIMEOUT
    in_flight = collections.deque(
        pool.submit(tasks.sleep_pid, WAVE_SLEEP) for _ in range(pool.workers + 1)
    )
    found: dict[int, float] = {}
    while in_flight:
        try:
            pid, started = pool.wait(in_flight.popleft(), max(0.0, deadline - time.perf_counter()))
        except (TimeoutError, futures.TimeoutError):
            raise Measured(f"the pool hung: no result within {RESPAWN_TIMEOUT:g} s") from None
        if pid not in known:
            found[pid] = min(started, found.get(pid, started))
        elif not found:
            if time.perf_counter() > deadline:
                raise Measured(f"no new worker answered within {RESPAWN_TIMEOUT:g} s")
            in_flight.append(pool.submit(tasks.sleep_pid, WAVE_SLEEP))
    pid = min(found, key=found.__getitem__)
    return pid, found[pid]


def _kill_and_see_exit(pid: int) -> float:
    """SIGKILL ``pid``; return the moment its exit was seen (the kill's, without pidfds)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        os.kill(pid, signal.SIGKILL)
        return time.perf_counter()
    try:
        os.kill(pid, signal.SIGKILL)
        select.select([pidfd], [], [], RESPAWN_TIMEOUT)
        return time.perf_counter()
    finally:
        os.close(pidfd)


def measure_latency(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Sequential ``submit(noop)`` then wait: the round trip of one task on a warm pool."""
    submit, wait, noop = pool.submit, pool.wait, tasks.noop
    for _ in range(int(params["warmup"])):
        wait(submit(noop))
    clock = time.perf_counter_ns
    samples = []
    for _ in range(int(params["samples"])):
        start = clock()
        wait(submit(noop))
        samples.append(clock() - start)
    return {"median_us": statistics.median(samples) / 1e3, "p99_us": percentile(samples, 99) / 1e3}


def measure_burst(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Submit many no-ops, then wait for them all: tasks per second."""
    submit, wait, noop = pool.submit, pool.wait, tasks.noop
    for handle in [submit(noop) for _ in range(int(params["warmup"]))]:
        wait(handle)
    count = int(params["tasks"])
    start = time.perf_counter()
    handles = [submit(noop) for _ in range(count)]
    for handle in handles:
        wait(handle)
    return {"rate": count / (time.perf_counter() - start)}


def measure_map1(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """``map`` of tiny tasks, one item per chunk."""
    return {"rate": _map_rate(pool, int(params["items"]), 1)}


def measure_mapchunk(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """``map`` of tiny tasks in large chunks (``multiprocessing.Pool``'s own formula)."""
    items = int(params["items"])
    return {"rate": _map_rate(pool, items, auto_chunksize(items, pool.workers))}


def measure_mapdefault(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """``map`` of tiny tasks called as most users write it: no chunksize, the pool's default."""
    return {"rate": _map_rate(pool, int(params["items"]), None)}


def auto_chunksize(items: int, workers: int) -> int:
    """``multiprocessing.Pool.map``'s default: about four chunks per worker."""
    return max(1, math.ceil(items / (4 * workers)))


def _map_rate(pool: PoolAdapter, items: int, chunksize: Optional[int]) -> float:
    pool.map(tasks.ident, range(min(items, 500)), chunksize)  # warm-up
    start = time.perf_counter()
    result = pool.map(tasks.ident, range(items), chunksize)
    elapsed = time.perf_counter() - start
    if len(result) != items:
        raise Measured(f"map returned {len(result)} results for {items} items")
    return items / elapsed


def calibrate_burn(task_ms: float) -> int:
    """Loops of :func:`tasks.burn` that take about ``task_ms`` here."""
    loops = 20000
    while True:
        start = time.perf_counter()
        tasks.burn(loops)
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            return max(1, int(loops * task_ms / 1e3 / elapsed))
        loops *= 2


def measure_cpu(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Speed-up over running the same pure-Python tasks serially in this process."""
    count = int(params["tasks"])
    loops = calibrate_burn(float(params["task_ms"]))
    for handle in [pool.submit(tasks.burn, loops) for _ in range(pool.workers)]:
        pool.wait(handle)  # warm-up
    start = time.perf_counter()
    for _ in range(count):
        tasks.burn(loops)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    for handle in [pool.submit(tasks.burn, loops) for _ in range(count)]:
        pool.wait(handle)
    return {"speedup": serial / (time.perf_counter() - start)}


def measure_payload(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """MiB/s for a large argument (to the worker) and a large result (back)."""
    size = int(float(params["mib"]) * (1 << 20))
    reps = int(params["reps"])
    blob = b"\x01" * size
    submit, wait = pool.submit, pool.wait
    wait(submit(tasks.payload_len, blob))
    wait(submit(tasks.make_payload, size))
    arg_times, result_times = [], []
    for _ in range(reps):
        start = time.perf_counter()
        if wait(submit(tasks.payload_len, blob)) != size:
            raise Measured("the worker received a truncated argument")
        arg_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        if len(wait(submit(tasks.make_payload, size))) != size:
            raise Measured("the parent received a truncated result")
        result_times.append(time.perf_counter() - start)
    mib = size / (1 << 20)
    return {
        "arg_mibs": mib / statistics.median(arg_times),
        "result_mibs": mib / statistics.median(result_times),
    }


def measure_array(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """``submit(ident, array).result()`` of a numpy float64 array: MiB/s, one way counted.

    Each round trip carries the array to a worker and back; the rate counts its size once.
    """
    try:
        numpy: Any = importlib.import_module("numpy")
    except ImportError:
        raise Unsupported("numpy is not installed (pip install numpy); no array workload") from None
    size = int(float(params["mib"]) * (1 << 20))
    array = numpy.arange(size // 8, dtype=numpy.float64)  # real pages, not lazily zeroed ones
    submit, wait = pool.submit, pool.wait
    back = wait(submit(tasks.ident, array))  # warm-up: the worker has imported numpy
    times = []
    for _ in range(int(params["reps"])):
        start = time.perf_counter()
        back = wait(submit(tasks.ident, array))
        times.append(time.perf_counter() - start)
    if not numpy.array_equal(back, array):
        raise Measured("the array came back changed")
    return {"mibs": size / (1 << 20) / statistics.median(times)}


def measure_memory(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Resident memory of this (parent) process, of each idle worker and of the helpers."""
    workers = until_pids(pool, pool.workers)
    gc.collect()
    time.sleep(0.05)
    return memory_values(workers)


def memory_values(workers: set[int]) -> Values:
    """Memory of this process and of every process below it, alive now.

    ``workers`` are the pids that ran tasks; every other process below this one is a helper
    the pool (or ``multiprocessing`` for it) keeps alive: a fork template, a fork server, a
    resource tracker. The totals count them all: the machine pays for each.
    """
    parent = os.getpid()
    below = sorted(set(procfs.descendants(parent)) | workers)
    rss = {pid: procfs.memory_mib(pid) for pid in [parent, *below]}
    # A process that ended between the listing and the reading uses no memory any more.
    tree = [parent, *(p for p in below if rss[p] is not None or procfs.read_stat(p) is not None)]
    pss = {pid: procfs.memory_mib(pid, "Pss") for pid in tree}
    worker_rss = [size for pid in workers if (size := rss.get(pid)) is not None]
    return {
        "parent_mib": rss[parent],
        "worker_mib": statistics.mean(worker_rss) if worker_rss else None,
        "helper_mib": _total(rss, [pid for pid in tree[1:] if pid not in workers]),
        "total_mib": _total(rss, tree),
        "total_pss_mib": _total(pss, tree),
        "processes": float(len(tree) - 1),
    }


def _total(sizes: dict[int, Optional[float]], pids: list[int]) -> Optional[float]:
    """The sum over ``pids``; None if the size of one of them is unknown."""
    known = [sizes[pid] for pid in pids]
    return None if None in known else sum(size for size in known if size is not None)


def percentile(samples: list[int], pct: float) -> float:
    """The ``pct``-th percentile (nearest rank)."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return float(ordered[rank])


#: Workloads that construct the pool themselves.
COLD: dict[str, Callable[[Factory, dict[str, Any]], Values]] = {"cold": measure_cold}
#: Workloads run on a pool that the runner built and warmed up.
WARM: dict[str, Callable[[PoolAdapter, dict[str, Any]], Values]] = {
    "respawn": measure_respawn,
    "latency": measure_latency,
    "burst": measure_burst,
    "map1": measure_map1,
    "mapchunk": measure_mapchunk,
    "mapdefault": measure_mapdefault,
    "cpu": measure_cpu,
    "payload": measure_payload,
    "array": measure_array,
    "memory": measure_memory,
}
