"""Plan and run a benchmark: every measurement in a fresh process, implementations interleaved.

The plan is ``repeat`` rounds; each round runs every workload under every start method for every
implementation, with the order of implementations and methods rotated from round to round, so
that a slow minute on a busy machine lands on everyone alike instead of on one column.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any, Optional, TypeVar, Union

import poolkit
from poolkit_bench_runner.catalog import PEER_MODULES, PEERS, WORKLOADS, WORKLOADS_BY_NAME

from ._launch import launch
from ._machine import LoadCheck, describe, package_version, usable_cpus
from ._progress import Eta, Progress, progress_printer
from ._result import BenchResult, Cell, impl_title
from ._stats import summarize

logger = logging.getLogger(__name__)
Item = TypeVar("Item")

#: Fresh-process repetitions of a default run: 5 lets the rank test reach p = 0.004.
DEFAULT_REPEAT = 5
#: A --quick run's: the fewest with which the noise rule can name a winner.
QUICK_REPEAT = 3
#: The suite of ``benchmarks/run.py`` and ``--target`` keep 3 (they measure more things).
TARGET_REPEAT = 3
DEFAULT_TIMEOUT = 60.0
#: A default run (no --repeat, no --quick) stops adding rounds, never below QUICK_REPEAT, when
#: the next one would end past this many seconds: on a slow or busy machine it keeps to about
#: two minutes with fewer repetitions, and says so.
DEFAULT_BUDGET_S = 110.0
#: The workloads of a default run: one or more per verdict group, each under a second per
#: measurement here. The long ones (mapauto, mapmodes, cpu, mapchunk) are for
#: ``--workloads`` (or ``all``): measuring fewer things more often makes a verdict possible.
DEFAULT_WORKLOADS = (
    "cold", "respawn", "latency", "burst", "map1", "mapdefault", "payload", "array", "memory"
)  # fmt: skip
#: The workloads of a --quick run: one or two per verdict group, at small sizes.
QUICK_WORKLOADS = ("cold", "latency", "mapdefault", "payload", "memory")


def parse_list(value: Union[str, list[str], tuple[str, ...], None]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` as a clean list."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def resolve_methods(methods: Union[str, list[str], tuple[str, ...], None]) -> list[str]:
    """The start methods to measure (default: all available here).

    Raises:
        ValueError: a method is unknown or unavailable (the message lists the available ones).
    """
    available = poolkit.start_methods()
    chosen = parse_list(methods) or available
    for method in chosen:
        if method not in available:
            raise ValueError(
                f"unknown or unavailable start method {method!r}; available here: "
                f"{', '.join(available)}"
            )
    return list(dict.fromkeys(chosen))


def resolve_peers(
    against: Union[str, list[str], tuple[str, ...], None],
) -> tuple[list[str], dict[str, str]]:
    """The peers to measure and, for each requested one that is missing, why it is skipped.

    ``"all"`` means every known peer that is installed.

    Raises:
        ValueError: a peer name is unknown (the message lists the known ones).
    """
    names = parse_list(against)
    if "all" in names:
        names = [p for p in PEERS if p != "poolkit"]
    chosen, skipped = [], {}
    for name in dict.fromkeys(names):
        if name == "poolkit":
            continue
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}")
        module, dist = PEER_MODULES[name]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            skipped[name] = f"{module} is not installed (pip install {dist or module})"
            continue
        chosen.append(name)
    return chosen, skipped


def resolve_workloads(
    workloads: Union[str, list[str], tuple[str, ...], None], quick: bool = False
) -> list[str]:
    """The workloads to run, in report order: the default (or --quick) set, or ``"all"``.

    Raises:
        ValueError: a workload is unknown (the message lists them).
    """
    names = parse_list(workloads)
    if "all" in names:
        names = [w.name for w in WORKLOADS]
    elif not names:
        names = list(QUICK_WORKLOADS if quick else DEFAULT_WORKLOADS)
    for name in names:
        if name not in WORKLOADS_BY_NAME:
            raise ValueError(
                f"unknown workload {name!r}; workloads: {', '.join(w.name for w in WORKLOADS)}"
            )
    return [w.name for w in WORKLOADS if w.name in names]


def check_positive(name: str, value: Optional[int]) -> None:
    """Raise ValueError/TypeError unless ``value`` is None or a positive int."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def rotate(items: list[Item], by: int) -> list[Item]:
    """``items`` rotated left by ``by``."""
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def run(
    *,
    methods: Union[str, list[str], None] = None,
    workers: Optional[int] = None,
    repeat: Optional[int] = None,
    quick: bool = False,
    against: Union[str, list[str], None] = None,
    floors: bool = False,
    workloads: Union[str, list[str], None] = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress = False,
) -> BenchResult:
    """Benchmark poolkit under each start method (and, optionally, peers and floors).

    Args:
        methods: start methods to compare (default: all available here).
        workers: pool size (default: the CPUs this process may use).
        repeat: fresh-process repetitions of each number (default 5; 3 with ``quick``).
        quick: small sizes, for a run of seconds rather than minutes.
        against: peers to add, e.g. ``"stdlib,mppool,loky"`` or ``"all"``; missing ones are
            skipped and named in ``result.skipped``.
        floors: also measure bare processes, Connections and raw pipes (the limits).
        workloads: the workloads to run, or ``"all"``: cold, respawn, latency, burst, map1,
            mapchunk, mapdefault, mapauto, mapmodes, cpu, payload, array, memory (default:
            ``DEFAULT_WORKLOADS``, or ``QUICK_WORKLOADS`` with ``quick``).
        timeout: seconds one measurement process may take before it is killed (a few
            workloads that are long by design get a multiple of it: ``timeout_scale``).
        progress: ``True`` for a progress line on stderr, or a callable taking a line.

    Returns:
        A :class:`BenchResult`.

    Raises:
        ValueError, TypeError: an argument is invalid (the message says which and why).
    """
    check_positive("workers", workers)
    check_positive("repeat", repeat)
    chosen_methods = resolve_methods(methods)
    peers, skipped = resolve_peers(against)
    names = resolve_workloads(workloads, quick)
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    pool_size = workers or usable_cpus()
    rounds = repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    impls = ["poolkit", *peers] + (["floor"] if floors else [])
    result = BenchResult(
        machine=describe(),
        methods=chosen_methods,
        impls=impls,
        workloads=names,
        workers=pool_size,
        repeat=rounds,
        quick=quick,
        skipped=skipped,
    )
    for name in [*peers, "poolkit"]:
        version = package_version(name)
        if version:
            result.machine["packages"].setdefault(name, version)
    jobs = [
        (name, method, impl)
        for round_index in range(rounds)
        for w_index, name in enumerate(names)
        for method in rotate(chosen_methods, round_index)
        for impl in rotate(impls, round_index + w_index)
    ]
    show = progress_printer(progress)
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    notes: dict[tuple[str, str, str], str] = {}
    show("looking at the machine's load (0.5 s)")
    result.load = LoadCheck()
    result.load.begin()
    started = time.monotonic()
    eta = Eta([((name, method, impl), name) for name, method, impl in jobs])
    per_round = len(jobs) // rounds
    budget = None if repeat or quick else DEFAULT_BUDGET_S
    for index, (name, method, impl) in enumerate(jobs):
        if budget is not None and _out_of_time(eta, index, per_round, budget):
            done = index // per_round
            result.repeat = done
            result.note = (
                f"stopped after {done} of {rounds} rounds: another would have ended past "
                f"{budget:.0f} s (a slow or busy machine); --repeat N runs exactly N"
            )
            break
        show(eta.line(index, f"{WORKLOADS_BY_NAME[name].title} | {method} | {impl_title(impl)}"))
        eta.start()
        spec = {
            "kind": "workload",
            "workload": name,
            "impl": impl,
            "method": method,
            "workers": pool_size,
            "params": WORKLOADS_BY_NAME[name].parameters(quick),
        }
        outcome = launch(spec, timeout * WORKLOADS_BY_NAME[name].timeout_scale)
        eta.done(index)
        key = (name, method, impl)
        if outcome.leftovers:
            result.problems.append(
                f"{impl_title(impl)} {method} {name}: processes left after the measurement "
                f"ended (killed): {', '.join(outcome.leftovers)}"
            )
        if outcome.data.get("skipped"):
            notes[key] = str(outcome.data["skipped"])
            continue
        if not outcome.ok:
            message = outcome.error
            notes[key] = message
            result.problems.append(f"{impl_title(impl)} {method} {name}: {message}")
            logger.debug("%s failed: %s\n%s", key, message, outcome.data.get("traceback", ""))
            continue
        if outcome.data.get("note"):
            notes[key] = str(outcome.data["note"])
        samples.setdefault(key, []).append(outcome.data.get("values", {}))
    show("looking at the machine's load again (0.5 s)")
    result.seconds = time.monotonic() - started
    result.load.end()
    show("")
    _fill_cells(result, samples, notes)
    return result


def _out_of_time(eta: Eta, index: int, per_round: int, budget: float) -> bool:
    """At the start of a round past the minimum: would that round end past the budget?"""
    if not per_round or index % per_round or index // per_round < QUICK_REPEAT:
        return False
    return eta.elapsed() + eta.left(index, index + per_round) > budget


def _fill_cells(
    result: BenchResult,
    samples: dict[tuple[str, str, str], list[dict[str, Any]]],
    notes: dict[tuple[str, str, str], str],
) -> None:
    for name in result.workloads:
        for metric in WORKLOADS_BY_NAME[name].metrics:
            for method in result.methods:
                for impl in result.impls:
                    if metric.floor_only and impl != "floor":
                        continue
                    key = (name, method, impl)
                    values = [
                        float(v[metric.key])
                        for v in samples.get(key, [])
                        if v.get(metric.key) is not None
                    ]
                    result.cells[(name, metric.key, method, impl)] = Cell(
                        summarize(values), "" if values else notes.get(key, "no result")
                    )
