"""The map workloads (poolkit only): ``chunksize="auto"`` against fixed chunksizes, ordered
against unordered results, and an endless input.

``mapauto`` runs the same map with ``chunksize="auto"`` and with each of a ladder of fixed
chunksizes, interleaved (the order rotates each round), on three kinds of task: tiny (return the
argument), medium (about ``task_ms`` of pure-Python work each) and uneven (mostly short tasks
with some 25 times longer, in random order). It reports, per kind, auto's rate, the best fixed
chunksize's rate and which chunksize that was, and their ratio (auto / best fixed: 1.0 means
auto matched the best fixed chunksize a user could have picked after measuring).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from typing import Any, Callable, Union

from poolkit_bench_runner import tasks
from poolkit_bench_runner.adapters import PoolAdapter, Unsupported
from poolkit_bench_runner.workloads import Measured, Values, calibrate_burn

KINDS = ("tiny", "medium", "uneven")
Chunksize = Union[int, str]


def _need_poolkit(pool: PoolAdapter) -> None:
    if pool.impl != "poolkit":
        raise Unsupported("a poolkit-only workload (map keywords chunksize='auto', ordered)")


def _workload(
    kind: str, params: dict[str, Any], workers: int
) -> tuple[Callable[..., Any], list[Any], list[int]]:
    """The function, the inputs and the fixed chunksizes tried for one kind of task."""
    count = int(params[kind])
    pool_formula = max(1, math.ceil(count / (4 * workers)))  # multiprocessing.Pool.map's
    if kind == "tiny":
        sizes = [16, 64, 256, 1024, 4096, pool_formula]
        return tasks.ident, list(range(count)), sorted(set(sizes))
    loops = calibrate_burn(float(params["task_ms"]))
    sizes = sorted({1, 2, 4, 8, 16, 32, 64, pool_formula})
    if kind == "medium":
        return tasks.burn, [loops] * count, sizes
    rng = random.Random(5)
    short, long = max(1, loops // 5), loops * 5  # 0.2x and 5x the medium task
    return tasks.burn, [long if rng.random() < 0.1 else short for _ in range(count)], sizes


def _seconds(pool: PoolAdapter, fn: Callable[..., Any], items: Any, **options: Any) -> float:
    started = time.perf_counter()
    done = sum(1 for _ in pool.imap(fn, items, **options))
    elapsed = time.perf_counter() - started
    if done != len(items):
        raise Measured(f"map returned {done} results for {len(items)} items")
    return elapsed


def measure_mapauto(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """``chunksize="auto"`` against the best of a ladder of fixed chunksizes."""
    _need_poolkit(pool)
    values: Values = {}
    rounds = int(params["rounds"])
    for kind in KINDS:
        fn, items, sizes = _workload(kind, params, pool.workers)
        configs: list[Chunksize] = ["auto", *sizes]
        _seconds(pool, fn, items[: max(1, len(items) // 10)], chunksize="auto")  # warm-up
        samples: dict[Chunksize, list[float]] = {config: [] for config in configs}
        for round_index in range(rounds):
            shift = round_index % len(configs)
            for config in configs[shift:] + configs[:shift]:
                samples[config].append(_seconds(pool, fn, items, chunksize=config))
        median = {config: statistics.median(times) for config, times in samples.items()}
        best = min(sizes, key=lambda size: median[size])
        values[f"{kind}_auto"] = len(items) / median["auto"]
        values[f"{kind}_best"] = len(items) / median[best]
        values[f"{kind}_best_chunksize"] = float(best)
        values[f"{kind}_ratio"] = median[best] / median["auto"]
    return values


def measure_mapmodes(pool: PoolAdapter, params: dict[str, Any]) -> Values:
    """Ordered and unordered results on uneven tasks; an endless input stopped after n."""
    _need_poolkit(pool)
    fn, items, _ = _workload("uneven", params, pool.workers)
    _seconds(pool, fn, items[: max(1, len(items) // 10)])  # warm-up
    ordered, unordered = [], []
    for _ in range(int(params["rounds"])):
        ordered.append(_seconds(pool, fn, items))
        unordered.append(_seconds(pool, fn, items, ordered=False))
    endless = int(params["endless"])
    started = time.perf_counter()
    results = pool.imap(tasks.ident, itertools.count())
    taken = sum(1 for _ in itertools.islice(results, endless))
    close = getattr(results, "close", None)
    if close is not None:
        close()
    elapsed = time.perf_counter() - started
    if taken != endless:
        raise Measured(f"the endless map gave {taken} results, expected {endless}")
    return {
        "ordered": len(items) / statistics.median(ordered),
        "unordered": len(items) / statistics.median(unordered),
        "endless": endless / elapsed,
    }


#: Workloads run on a warm pool (see ``workloads.WARM``).
WARM: dict[str, Callable[[PoolAdapter, dict[str, Any]], Values]] = {
    "mapauto": measure_mapauto,
    "mapmodes": measure_mapmodes,
}
