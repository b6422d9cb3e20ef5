"""What the benchmark measures: workloads, their metrics and their parameters (plain data).

Shared by the parent (labels, units, which direction is better) and the runner (parameters).
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: Implementations the runner knows; "poolkit" is always measured, the others are peers.
PEERS = ("stdlib", "mppool", "loky", "mpire", "pebble", "dask")
PEER_TITLES = {
    "poolkit": "poolkit",
    "stdlib": "stdlib PPE",
    "mppool": "mp.Pool",
    "loky": "loky",
    "mpire": "mpire",
    "pebble": "pebble",
    "dask": "poolkit on dask",
    "floor": "floor",
}
#: The module whose presence makes a peer available, and the distribution for its version.
PEER_MODULES = {
    "poolkit": ("poolkit", "poolkit"),
    "stdlib": ("concurrent.futures", ""),
    "mppool": ("multiprocessing.pool", ""),
    "loky": ("loky", "loky"),
    "mpire": ("mpire", "mpire"),
    "pebble": ("pebble", "pebble"),
    "dask": ("distributed", "distributed"),
}
#: What each implementation's ``map`` does when called without a chunksize (the
#: ``mapdefault`` workload calls it so).
MAP_DEFAULTS = {
    "poolkit": "chunksize='auto' (sized from the measured time per item)",
    "stdlib": "chunksize=1",
    "mppool": "chunksize=ceil(n/(4*workers))",
    "loky": "chunksize=1",
    "mpire": "chunk_size=None: 4*workers chunks of about n/(4*workers)",
    "pebble": "chunksize=1",
    "dask": "chunksize='auto' (poolkit's map)",
}


class Metric(NamedTuple):
    """One number a workload reports."""

    key: str
    label: str  #: may use ``{param}`` fields of the workload's parameters
    unit: str
    higher_is_better: bool
    floor_only: bool = False  #: only the floor reports it (e.g. the raw pipe round trip)
    #: A change in it is a change in speed or size (``benchmarks/run.py --compare`` flags a
    #: regression); False for what only describes a run, such as a chosen chunksize.
    compared: bool = True


class Workload(NamedTuple):
    """A measurement the runner performs on one implementation and start method."""

    name: str
    title: str
    metrics: tuple[Metric, ...]
    params: dict[str, Any]
    quick_params: dict[str, Any]
    #: Its measurement may take this many times the run's timeout (a slow pool's full-size run
    #: of a workload that is long by design).
    timeout_scale: float = 1.0

    def parameters(self, quick: bool) -> dict[str, Any]:
        """The parameters of a default or a ``--quick`` run."""
        return dict(self.quick_params if quick else self.params)


#: The memory workload's label for every process below the parent that is not a worker.
HELPERS = "memory: helper processes (fork template, fork server, resource tracker), RSS"

WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "cold",
        "cold start",
        (
            Metric("first_ms", "cold start -> first result", "ms", False),
            Metric("ready_ms", "cold start -> all workers ready", "ms", False),
        ),
        {},
        {},
    ),
    Workload(
        "respawn",
        "respawn",
        (
            Metric(
                "respawn_ms",
                "respawn: worker's death -> task starts on the replacement",
                "ms",
                False,
            ),
        ),
        {"kills": 3},
        {"kills": 1},
    ),
    Workload(
        "latency",
        "latency",
        (
            Metric("median_us", "latency submit(noop).result(), median", "us", False),
            Metric("p99_us", "latency submit(noop).result(), p99", "us", False),
            Metric("raw_median_us", "raw os.pipe round trip, median", "us", False, True),
            Metric("raw_p99_us", "raw os.pipe round trip, p99", "us", False, True),
        ),
        {"warmup": 200, "samples": 2000},
        {"warmup": 50, "samples": 300},
    ),
    Workload(
        "burst",
        "submit burst",
        (Metric("rate", "submit burst, {tasks:,} no-ops waited together", "tasks/s", True),),
        {"tasks": 20000, "warmup": 1000},
        {"tasks": 2000, "warmup": 200},
    ),
    Workload(
        "map1",
        "map, chunksize 1",
        (Metric("rate", "map {items:,} tiny tasks, chunksize 1", "tasks/s", True),),
        {"items": 10000},
        {"items": 1000},
    ),
    Workload(
        "mapchunk",
        "map, large chunks",
        (Metric("rate", "map {items:,} tiny tasks, chunksize n/(4*workers)", "tasks/s", True),),
        {"items": 200000},
        {"items": 20000},
    ),
    Workload(
        "mapdefault",
        "map, default arguments",
        (
            Metric(
                "rate", "map {items:,} tiny tasks, each pool's default arguments", "tasks/s", True
            ),
        ),
        {"items": 200000},
        {"items": 20000},
        timeout_scale=3.0,  # pools whose default chunksize is 1 send 200,000 tasks
    ),
    Workload(
        "mapauto",
        "map, chunksize auto vs fixed",
        tuple(
            metric
            for kind, what in (
                ("tiny", "{tiny:,} tiny tasks"),
                ("medium", "{medium:,} x {task_ms} ms tasks"),
                ("uneven", "{uneven:,} uneven tasks (0.2x/5x {task_ms} ms)"),
            )
            for metric in (
                Metric(f"{kind}_auto", f"map {what}, chunksize='auto'", "tasks/s", True),
                Metric(f"{kind}_best", f"map {what}, best fixed chunksize", "tasks/s", True),
                Metric(
                    f"{kind}_best_chunksize",
                    f"map {what}, that chunksize",
                    "items",
                    True,
                    compared=False,
                ),
                Metric(f"{kind}_ratio", f"map {what}, auto / best fixed", "x", True),
            )
        ),
        {"tiny": 200000, "medium": 600, "uneven": 600, "task_ms": 1.0, "rounds": 2},
        {"tiny": 20000, "medium": 100, "uneven": 100, "task_ms": 1.0, "rounds": 1},
    ),
    Workload(
        "mapmodes",
        "map, ordered / unordered / endless",
        (
            Metric("ordered", "map {uneven:,} uneven tasks, ordered", "tasks/s", True),
            Metric("unordered", "map {uneven:,} uneven tasks, ordered=False", "tasks/s", True),
            Metric("endless", "map over itertools.count(), first {endless:,}", "tasks/s", True),
        ),
        {"uneven": 600, "task_ms": 1.0, "rounds": 2, "endless": 200000},
        {"uneven": 100, "task_ms": 1.0, "rounds": 1, "endless": 20000},
    ),
    Workload(
        "cpu",
        "CPU scaling",
        (
            Metric(
                "speedup", "CPU scaling, {tasks} x {task_ms} ms pure-Python tasks", "x serial", True
            ),
        ),
        {"tasks": 64, "task_ms": 20},
        {"tasks": 8, "task_ms": 5},
    ),
    Workload(
        "payload",
        "payload",
        (
            Metric("arg_mibs", "payload: {mib} MiB argument", "MiB/s", True),
            Metric("result_mibs", "payload: {mib} MiB result", "MiB/s", True),
        ),
        {"mib": 8, "reps": 5},
        {"mib": 2, "reps": 2},
    ),
    Workload(
        "array",
        "numpy array round trip",
        (
            Metric(
                "mibs",
                "{mib} MiB numpy float64 array round trip, submit(ident, a).result()",
                "MiB/s",
                True,
            ),
        ),
        {"mib": 32, "reps": 7},
        {"mib": 32, "reps": 2},
    ),
    Workload(
        "memory",
        "memory",
        (
            Metric("parent_mib", "memory: parent RSS", "MiB", False),
            Metric("worker_mib", "memory: each idle worker RSS", "MiB", False),
            Metric("helper_mib", HELPERS, "MiB", False),
            Metric("total_mib", "memory: parent + workers + helpers, total RSS", "MiB", False),
            Metric("total_pss_mib", "memory: parent + workers + helpers, total PSS", "MiB", False),
            Metric("processes", "memory: processes besides the parent", "procs", False),
        ),
        {},
        {},
    ),
    # Mixed durations (poolkit_bench_runner.mixed): a task must not wait behind another while a
    # worker idles.
    Workload(
        "mixed",
        "mixed durations, at once",
        (
            Metric(
                "makespan_ms",
                "{tasks} tasks ({long_tasks} x {long_ms} ms, the rest {short_ms} ms), makespan",
                "ms",
                False,
            ),
            Metric("makespan_ratio", "the same, makespan / its lower bound", "x", False),
        ),
        {"tasks": 200, "long_tasks": 10, "short_ms": 5, "long_ms": 100},
        {"tasks": 60, "long_tasks": 3, "short_ms": 5, "long_ms": 100},
    ),
    Workload(
        "longburst",
        "long task, then a burst",
        (
            Metric(
                "shorts_ms",
                "one {long_ms} ms task, then {shorts} x {short_ms} ms: short ones done",
                "ms",
                False,
            ),
        ),
        {"long_ms": 1000, "shorts": 20, "short_ms": 10},
        {"long_ms": 300, "shorts": 20, "short_ms": 10},
    ),
    Workload(
        "service",
        "requests beside a long task",
        (
            Metric(
                "median_us",
                "requests one at a time beside a running long task, median",
                "us",
                False,
            ),
            Metric("p99_us", "requests one at a time beside a running long task, p99", "us", False),
        ),
        {"long_ms": 200, "requests": 1000},
        {"long_ms": 200, "requests": 200},
    ),
)

WORKLOADS_BY_NAME = {w.name: w for w in WORKLOADS}


def metric_label(workload: Workload, metric: Metric, quick: bool) -> str:
    """The metric's label with the workload's parameters filled in."""
    try:
        return metric.label.format(**workload.parameters(quick))
    except (KeyError, IndexError, ValueError):
        return metric.label
