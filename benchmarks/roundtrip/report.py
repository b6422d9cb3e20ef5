"""The profile's result as Markdown tables."""

from __future__ import annotations

from typing import Any, Optional

from benchmarks.roundtrip.stages import MODES, STAGE_ORDER
from poolkit.bench._machine import summary_line


def fmt(value: Optional[float], digits: int = 1) -> str:
    """A number for a table cell; ``-`` for none."""
    return "-" if value is None else f"{value:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    """Every table: stages, CPU, floors, bursts, in-process costs, then the machine."""
    columns = result["columns"]
    names = [c for mode in MODES for c in columns if c.endswith(mode)]
    lines = [
        "| stage (median, us) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def add(label: str, values: list[Optional[float]], digits: int = 1) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(v, digits) for v in values) + " |")

    for label in STAGE_ORDER:
        add(label, [columns[c]["stages_us"].get(label) for c in names])
    add("**sum of the stage medians**", [columns[c]["stages_sum_us"] for c in names])
    add(
        "round trip, instrumented",
        [columns[c]["stages_us"].get("total (instrumented)") for c in names],
    )
    add("**round trip, not instrumented**", [columns[c]["total_us"] for c in names])
    add("round trip, not instrumented, p99", [columns[c]["p99_us"] for c in names])
    add("stdlib ProcessPoolExecutor, same start method", [columns[c]["stdlib_us"] for c in names])
    for label in (
        "caller: submit() returns",
        "caller: time in result()",
        "worker: busy per task (read returned -> reply written)",
        "the inbox write system call alone",
        "the worker's reply write system call alone",
    ):
        add(f"({label})", [columns[c]["stages_us"].get(label) for c in names])
    add("(direct sends, % of round trips)", [100 * columns[c]["direct_share"] for c in names], 0)
    add("(round trips with every stage stamped)", [columns[c]["samples"] for c in names], 0)
    lines += ["", "| CPU per round trip, not instrumented (us) | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    cpu = {c: columns[c]["cpu_per_round_trip"] for c in names}
    add("wall time", [columns[c]["wall_per_round_trip_us"] for c in names])
    add("parent: user", [cpu[c]["parent user"] for c in names])
    add("parent: system", [cpu[c]["parent sys"] for c in names])
    add("workers: user", [cpu[c]["workers user"] for c in names])
    add("workers: system", [cpu[c]["workers sys"] for c in names])
    add(
        "all processes: CPU",
        [cpu[c]["parent user"] + cpu[c]["parent sys"] + cpu[c]["workers cpu"] for c in names],
    )
    for group in ("caller", "dispatcher", "workers"):
        add(f"{group} thread(s): on CPU", [cpu[c][f"{group} cpu"] for c in names])
    for group in ("caller", "dispatcher", "workers"):
        add(f"{group}: waiting for a CPU (runnable)", [cpu[c][f"{group} cpu wait"] for c in names])
    for group in ("caller", "dispatcher", "workers"):
        add(f"{group}: voluntary context switches", [cpu[c][f"{group} switches"] for c in names], 2)
    lines += ["", "| floor | median us |", "|---|---:|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in result["floors_us"].items()]
    lines += ["", "| burst, in a fresh process (median) | tasks/s |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in result["burst_tasks_per_s"].items()]
    lines += [f"| {k} (ns each) | {v:,.0f} |" for k, v in result["live_futures_ns"].items()]
    lines += ["", "| in-process, warm caches | ns per call |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["in_process_ns"].items()]
    machine = result["machine"]
    lines += ["", f"machine: {summary_line(machine)}; clock {machine['clock']}"]
    return "\n".join(lines)
