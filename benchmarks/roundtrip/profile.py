"""The profile's main run: every job of every round, interleaved, and the numbers they give."""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import multiprocessing
import statistics
import sys
import time
from typing import Any, Optional

from benchmarks.roundtrip import patch_points
from benchmarks.roundtrip.bursts import fresh_process_bursts
from benchmarks.roundtrip.counters import CpuMeter, identify
from benchmarks.roundtrip.floors import measure_floors, placements
from benchmarks.roundtrip.in_process import in_process_costs
from benchmarks.roundtrip.loops import WORKERS, latency_samples
from benchmarks.roundtrip.probes import instrumented_run
from benchmarks.roundtrip.stages import MODES, STAGES, stage_samples
from benchmarks.roundtrip.stamps import install
from poolkit import Executor
from poolkit.bench._machine import describe
from poolkit_bench_runner.workloads import percentile

clock = time.perf_counter_ns


def plain_run(
    executor: Executor, meter: CpuMeter, mode: str, warmup: int, count: int
) -> tuple[list[int], dict[str, float]]:
    """Round trips on a pool without probes (queued: the direct send refused); CPU used."""
    patches = patch_points.Patches()
    if mode == "queued":
        patches.replace(patch_points.DIRECT_SEND, lambda _: lambda dispatcher, task: False)
    try:
        latency_samples(executor.submit, warmup, 0)
        before, wall = meter.snapshot(), clock()
        samples = latency_samples(executor.submit, 0, count)
        wall, after = clock() - wall, meter.snapshot()
    finally:
        patches.restore()
    cpu = {key: after[key] - before[key] for key in after}
    cpu["wall"] = wall / 1e3
    return samples, cpu


def median_us(samples: list[int]) -> Optional[float]:
    """The median in µs, None without samples."""
    return statistics.median(samples) / 1e3 if samples else None


def p99_us(samples: list[int]) -> Optional[float]:
    """The 99th percentile (nearest rank, as the benchmark reports it) in µs."""
    return percentile(samples, 99) / 1e3 if samples else None


def run_profile(options: argparse.Namespace) -> dict[str, Any]:
    """Every round of every job; the result as plain data (see :mod:`.report`)."""
    patch_points.check()
    methods = [m for m in options.methods.split(",") if m]
    plain: dict[str, Executor] = {}
    probed: dict[str, Executor] = {}
    stdlib: dict[str, concurrent.futures.ProcessPoolExecutor] = {}
    meters: dict[str, CpuMeter] = {}
    for method in methods:
        plain[method] = Executor(WORKERS, start_method=method)
        probed[method] = Executor(WORKERS, start_method=method, initializer=install)
        stdlib[method] = concurrent.futures.ProcessPoolExecutor(
            WORKERS, mp_context=multiprocessing.get_context(method)
        )
    totals: dict[str, list[int]] = collections.defaultdict(list)
    cpu: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    counts: collections.Counter[str] = collections.Counter()
    rows: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    costs: dict[str, list[float]] = collections.defaultdict(list)
    bursts: dict[str, list[float]] = collections.defaultdict(list)
    jobs = [(kind, m, mode) for m in methods for kind in ("plain", "probed") for mode in MODES]
    jobs += [("stdlib", m, "") for m in methods] + [("floor", "", ""), ("burst", "", "")]
    try:
        for method in methods:
            meters[method] = CpuMeter(identify(plain[method], WORKERS))
        for rnd in range(options.rounds):
            shift = rnd % len(jobs)
            for kind, method, mode in jobs[shift:] + jobs[:shift]:
                column = f"{method} {mode}"
                if kind == "plain":
                    samples, used = plain_run(
                        plain[method], meters[method], mode, options.warmup, options.samples
                    )
                    totals[column] += samples
                    cpu[column].update(used)
                    counts[column] += len(samples)
                elif kind == "probed":
                    rows[method, mode] += instrumented_run(
                        probed[method], mode, options.warmup, options.samples
                    )
                elif kind == "stdlib":
                    totals[f"{method} stdlib"] += latency_samples(
                        stdlib[method].submit, options.warmup, options.samples
                    )
                elif kind == "floor":
                    for name, samples in measure_floors(
                        methods, options.warmup, options.samples
                    ).items():
                        totals[f"floor {name}"] += samples
                    for name, ns in in_process_costs().items():
                        costs[name].append(ns)
                else:
                    for name, values in fresh_process_bursts(methods, options.burst).items():
                        bursts[name] += values
            print(f"round {rnd + 1}/{options.rounds} done", file=sys.stderr)
    finally:
        for pool in [*plain.values(), *probed.values(), *stdlib.values()]:
            pool.shutdown(wait=True)
    result: dict[str, Any] = {
        "machine": dict(describe(), clock=time.get_clock_info("perf_counter").implementation),
        "options": vars(options),
        "patch_points": [point.name for point in patch_points.PATCH_POINTS],
        "columns": {},
    }
    for method in methods:
        for mode in MODES:
            column = f"{method} {mode}"
            taken = rows[method, mode]
            stages, complete = stage_samples(mode, taken)
            direct = sum(row.get("direct", 0) for row in taken)
            n = counts[column]
            entry: dict[str, Any] = {
                "stages_us": {label: median_us(v) for label, v in stages.items()},
                "stage_samples": {
                    label: len(stages.get(label, [])) for label, _, _ in STAGES[mode]
                },
                "samples": complete,
                "round_trips": len(taken),
                "direct_share": direct / max(1, len(taken)) if mode == "direct" else 0,
                "total_us": median_us(totals[column]),
                "p99_us": p99_us(totals[column]),
                "stdlib_us": median_us(totals[f"{method} stdlib"]),
                "cpu_per_round_trip": {k: v / n for k, v in cpu[column].items() if k != "wall"},
                "wall_per_round_trip_us": cpu[column]["wall"] / n,
            }
            entry["stages_sum_us"] = sum(
                entry["stages_us"].get(label) or 0 for label, _, _ in STAGES[mode]
            )
            result["columns"][column] = entry
    result["floors_us"] = floors_us(totals, methods)
    result["burst_tasks_per_s"] = {
        f"{method}, {options.burst:,} submits then wait, garbage collector {state}": (
            statistics.median(bursts[f"{method} gc {state}"])
        )
        for method in methods
        for state in ("on", "off")
    }
    result["live_futures_ns"] = {
        f"Future() x {options.burst:,} kept alive, garbage collector {state}": (
            statistics.median(bursts[f"futures gc {state}"])
        )
        for state in ("on", "off")
    }
    result["in_process_ns"] = {name: statistics.median(v) for name, v in costs.items()}
    return result


def floors_us(totals: dict[str, list[int]], methods: list[str]) -> dict[str, Optional[float]]:
    """The floors' medians, by what they measure."""
    found: dict[str, Optional[float]] = {}
    where_all = placements()
    for where in where_all:
        found[f"raw os.pipe round trip, two processes, {where}"] = median_us(
            totals[f"floor raw pipe, {where}"]
        )
    for where, (here, there) in where_all.items():
        if here != there:
            found[
                f"raw os.pipe round trip, two processes, {where}, a nice-19 busy loop running"
            ] = median_us(totals[f"floor raw pipe, {where}, busy"])
    for where in where_all:
        found[f"thread handoff (pipe -> thread in epoll -> Future -> waiting thread), {where}"] = (
            median_us(totals[f"floor thread handoff, {where}"])
        )
    for method in methods:
        found[f"poolkit {method} round trip, parent and workers on one CPU"] = median_us(
            totals[f"floor {method} pinned"]
        )
    return found
