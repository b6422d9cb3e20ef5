"""poolkit's performance targets, checked against the numbers of one benchmark run.

The project's release bar, used by ``benchmarks/run.py`` (which writes them into
``docs/benchmarks.md``) and its tests; not shipped in the wheel. ``python -m poolkit bench``
prints no targets: its verdict ranks start methods (and peers) by the noise rule alone, which
holds on any machine, where these bounds were set on this project's own.

Each target is a ratio between two medians of the same run, under the same start method:
poolkit's number divided by a reference's (a peer, the best peer, or the floor). For a metric
where lower is better (ms, us, MiB) the target is met when the ratio is at most the bound;
where higher is better (tasks/s, MiB/s, speed-up), when it is at least the bound. Nothing is
carried over from another run: the table always tells what this run measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from poolkit.bench._result import BenchResult, impl_title, metric_of
from poolkit_bench_runner.catalog import WORKLOADS_BY_NAME

#: ``Goal.against``: the best of the peers measured in the run (the peer with the best median).
BEST_PEER = "best peer"
#: Implementations that are not peers: poolkit itself, on its own or on dask, and the floor.
NOT_PEERS = ("poolkit", "dask", "floor")


class Goal(NamedTuple):
    """One target: poolkit's ``metric`` of ``workload`` over ``against``'s, bounded."""

    workload: str
    metric: str
    against: str  #: an implementation ("stdlib", "mppool", "floor") or BEST_PEER
    bound: float


GOALS: tuple[Goal, ...] = (
    Goal("latency", "median_us", "stdlib", 0.3),
    Goal("latency", "median_us", BEST_PEER, 0.5),
    Goal("burst", "rate", "stdlib", 8.0),
    Goal("burst", "rate", BEST_PEER, 2.0),
    Goal("map1", "rate", "stdlib", 6.0),
    Goal("mapdefault", "rate", "mppool", 0.8),
    Goal("cold", "first_ms", "floor", 1.3),
    Goal("cold", "ready_ms", "stdlib", 1.3),
    Goal("respawn", "respawn_ms", "floor", 1.5),
    Goal("cpu", "speedup", "stdlib", 0.97),
    Goal("array", "mibs", "stdlib", 4.0),
    Goal("memory", "total_mib", "stdlib", 1.1),
    Goal("mixed", "makespan_ms", "floor", 1.05),
    Goal("longburst", "shorts_ms", BEST_PEER, 1.1),
    Goal("service", "p99_us", BEST_PEER, 1.0),
)


@dataclass(frozen=True)
class Check:
    """One target under one start method, as this run measured it."""

    goal: Goal
    method: str
    ratio: Optional[float]  #: poolkit / reference; None when either number is missing
    reference: str = ""  #: the implementation the ratio is against
    note: str = ""  #: why there is no ratio

    @property
    def higher_is_better(self) -> bool:
        """Whether the target is a lower bound (rates) or an upper bound (times, sizes)."""
        return metric_of(self.goal.workload, self.goal.metric).higher_is_better

    @property
    def verdict(self) -> str:
        """``PASS``, ``MISS``, or ``n/a`` when the ratio could not be computed."""
        if self.ratio is None:
            return "n/a"
        return "PASS" if _meets(self.ratio, self.goal.bound, self.higher_is_better) else "MISS"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "workload": self.goal.workload,
            "metric": self.goal.metric,
            "against": self.goal.against,
            "bound": self.goal.bound,
            "direction": ">=" if self.higher_is_better else "<=",
            "method": self.method,
            "ratio": self.ratio,
            "reference": self.reference,
            "verdict": self.verdict,
            "note": self.note,
        }


def _meets(ratio: float, bound: float, higher_is_better: bool) -> bool:
    return ratio >= bound if higher_is_better else ratio <= bound


def peers_of(result: BenchResult) -> list[str]:
    """The run's peers: every implementation but poolkit (also on dask) and the floor."""
    return [impl for impl in result.impls if impl not in NOT_PEERS]


def check(result: BenchResult, goal: Goal, method: str) -> Check:
    """One target under one start method, from the run's medians."""
    if result.value(goal.workload, goal.metric, method) is None:
        note = result.cell(goal.workload, goal.metric, method).note or "no result"
        return Check(goal, method, None, note=f"poolkit: {note}")
    if goal.against == BEST_PEER:
        scored = [
            (value, peer)
            for peer in peers_of(result)
            if (value := result.value(goal.workload, goal.metric, method, peer)) is not None
        ]
        if not scored:
            return Check(goal, method, None, note="no peer measured")
        higher = metric_of(goal.workload, goal.metric).higher_is_better
        reference = (max if higher else min)(scored)[1]
    else:
        reference = goal.against
    if reference not in result.impls:
        return Check(goal, method, None, reference, f"{impl_title(reference)} not measured")
    ratio = result.ratio(goal.workload, goal.metric, method, reference)
    if ratio is None:
        note = result.cell(goal.workload, goal.metric, method, reference).note or "no result"
        return Check(goal, method, None, reference, f"{impl_title(reference)}: {note}")
    return Check(goal, method, ratio, reference)


def evaluate(result: BenchResult) -> list[Check]:
    """Every target whose workload the run measured, under each of its start methods."""
    return [
        check(result, goal, method)
        for goal in GOALS
        if goal.workload in result.workloads
        for method in result.methods
    ]


def goal_text(goal: Goal) -> str:
    """``<= 0.3x stdlib PPE``: the bound and what it is relative to."""
    direction = ">=" if metric_of(goal.workload, goal.metric).higher_is_better else "<="
    return f"{direction} {goal.bound:g}x {impl_title(goal.against)}"


def ratio_text(found: Check) -> str:
    """The ratio with as many digits as it takes for the verdict to show in them."""
    if found.ratio is None:
        return "n/a"
    for digits in range(2, 6):
        shown = round(found.ratio, digits)
        if _meets(shown, found.goal.bound, found.higher_is_better) == (found.verdict == "PASS"):
            break
    return f"{shown:.{digits}f}x"


def cell_text(found: Check) -> str:
    """A table cell: ``0.62x MISS``, the best peer named; ``n/a (why)`` without a ratio."""
    if found.ratio is None:
        return f"n/a ({found.note})"
    text = f"{ratio_text(found)} {found.verdict}"
    if found.goal.against == BEST_PEER:
        text += f" (vs {impl_title(found.reference)})"
    return text


def table_rows(result: BenchResult, checks: list[Check]) -> list[list[str]]:
    """One row per target: the run's label, the target, one cell per start method."""
    rows = []
    for goal in dict.fromkeys(found.goal for found in checks):
        workload = WORKLOADS_BY_NAME[goal.workload]
        label = result.label(workload, metric_of(goal.workload, goal.metric))
        by_method = {found.method: found for found in checks if found.goal == goal}
        rows.append([label, goal_text(goal), *(cell_text(by_method[m]) for m in result.methods)])
    return rows


def summary(result: BenchResult, checks: list[Check]) -> str:
    """How many targets were met, overall and per start method."""
    parts = []
    for method in result.methods:
        mine = [found for found in checks if found.method == method]
        met = sum(found.verdict == "PASS" for found in mine)
        parts.append(f"{method} {met}/{len(mine)}")
    met = sum(found.verdict == "PASS" for found in checks)
    missing = sum(found.verdict == "n/a" for found in checks)
    text = f"targets met: {met} of {len(checks)} ({', '.join(parts)})"
    return text + (f"; {missing} could not be computed" if missing else "")


def render_markdown(result: BenchResult, checks: list[Check]) -> str:
    """The targets as a Markdown table, with a summary line."""
    header = ["workload (this run's sizes)", "target", *result.methods]
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(result.methods)) + "|",
    ]
    for row in table_rows(result, checks):
        cells = [f"**{cell}**" if " PASS" in cell else cell for cell in row]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", summary(result, checks)]
    return "\n".join(out) + "\n"


def render_text(result: BenchResult, checks: list[Check]) -> str:
    """The targets as aligned text columns, with a summary line."""
    grid = [["target row", "target", *result.methods], *table_rows(result, checks)]
    widths = [max(len(row[c]) for row in grid) for c in range(len(grid[0]))]
    lines = []
    for index, row in enumerate(grid):
        lines.append("  ".join(text.ljust(widths[c]) for c, text in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines += ["", summary(result, checks)]
    return "\n".join(lines) + "\n"
