"""The verdict of a benchmark run: which start method to use on this machine, and why.

The rows of a run are grouped by what a user cares about (start-up and respawn, per-task
overhead, map throughput, large payloads, memory). In each row the start methods are ranked by
the noise rule (:mod:`._noise`): a method wins a row only if its repetitions beat every other
method's. A group's answer follows from its rows: the method that leads every row and wins at
least one, a tie, or "mixed" when different methods win different rows. With peers measured, the
same rule ranks poolkit against them, row by row and start method by start method.

The recommendation puts safety first: fork is named only for the groups where it actually wins,
with the condition under which it is safe; the choice between the methods that are safe in any
program (forkserver, spawn) follows their group results, poolkit's default (forkserver) breaking
ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from poolkit_bench_runner.catalog import WORKLOADS_BY_NAME

from ._noise import MIN_REPEATS, RULE, Ranking, compare, rank
from ._result import impl_title, metric_of
from ._stats import format_value

if TYPE_CHECKING:
    from ._result import BenchResult

#: Methods that are safe in a program with threads; the first available breaks ties.
SAFE_METHODS = ("forkserver", "spawn")


class Group(NamedTuple):
    """A question a user asks, and the (workload, metric) rows that answer it."""

    name: str
    rows: tuple[tuple[str, str], ...]


GROUPS: tuple[Group, ...] = (
    Group(
        "start-up and respawn",
        (("cold", "first_ms"), ("cold", "ready_ms"), ("respawn", "respawn_ms")),
    ),
    Group(
        "per-task overhead", (("latency", "median_us"), ("latency", "p99_us"), ("burst", "rate"))
    ),
    Group(
        "map throughput",
        (
            ("mapdefault", "rate"),
            ("map1", "rate"),
            ("mapchunk", "rate"),
            ("mapauto", "tiny_auto"),
            ("mapauto", "medium_auto"),
            ("mapauto", "uneven_auto"),
            ("mapmodes", "ordered"),
            ("mapmodes", "unordered"),
            ("cpu", "speedup"),
        ),
    ),
    Group(
        "large payloads", (("payload", "arg_mibs"), ("payload", "result_mibs"), ("array", "mibs"))
    ),
    Group("memory", (("memory", "total_pss_mib"), ("memory", "total_mib"))),
)

SAFETY = (
    "fork in a threaded parent: the child gets a copy of every lock but only the thread that "
    "forked; a lock another thread held at that moment (logging, a C library's allocator, a "
    "BLAS or gRPC thread pool) stays held forever and the worker can hang. Python 3.12+ warns "
    "when a process with threads forks, and 3.14 made forkserver Linux's default.",
    "poolkit's fork backend forks its first workers before starting any thread of its own and "
    "forks replacements from a single-threaded template process, so its own threads never make "
    "a fork unsafe; threads your program or its libraries started before the pool do.",
    "spawn and forkserver workers import your main module again: keep a script's work under "
    "`if __name__ == '__main__':`.",
)


@dataclass
class RowVerdict:
    """One row: the start methods ranked, and (with peers) the pools ranked per method."""

    workload: str
    metric: str
    label: str
    unit: str
    higher_is_better: bool
    methods: Ranking
    pools: dict[str, Ranking] = field(default_factory=dict)  #: start method -> pools ranked
    samples: dict[str, list[float]] = field(default_factory=dict)  #: method -> repetitions

    def text(self) -> str:
        """``label: fork 7.75 | spawn 67.8 -> fork (p=0.004, medians 773% apart)``."""
        medians = " | ".join(
            f"{m} {format_value(self.methods.medians[m])}" for m in self.methods.measured
        )
        answer = self.methods.text()
        winner = self.methods.winner
        if winner is not None:
            closest = self.methods.measured[1]
            answer += f" ({self.methods.against[closest].why} vs {closest})"
        elif len(self.methods.measured) > 1:
            beaten = [m for m in self.methods.measured if m not in self.methods.leaders]
            if beaten:
                answer += f" (vs {beaten[0]}: {self.methods.against[beaten[0]].why})"
            else:
                runner_up = self.methods.measured[1]
                answer += f" ({self.methods.against[runner_up].why})"
        better = "higher" if self.higher_is_better else "lower"
        return f"{self.label} ({self.unit}, {better} is better): {medians} -> {answer}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "workload": self.workload,
            "metric": self.metric,
            "label": self.label,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "methods": self.methods.to_dict(),
            "answer": self.methods.text(),
            "pools": {method: ranking.to_dict() for method, ranking in self.pools.items()},
        }


@dataclass
class GroupVerdict:
    """One group's answer, from its rows."""

    name: str
    rows: list[RowVerdict]
    choice: Optional[str]  #: the one method that leads every row and wins one, if any
    leaders: list[str]  #: methods that lead (win or tie for best) every row
    summary: str
    peers: str = ""  #: poolkit against the peers, when measured

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "name": self.name,
            "choice": self.choice,
            "leaders": self.leaders,
            "summary": self.summary,
            "peers": self.peers,
            "rows": [row.to_dict() for row in self.rows],
        }


@dataclass
class Verdict:
    """What the run says, in a few lines a user can act on."""

    groups: list[GroupVerdict]
    method: Optional[str]  #: the recommended start method
    advice: list[str]
    load: str
    too_busy: bool
    repeat: int
    rule: str = RULE
    safety: tuple[str, ...] = SAFETY

    def lines(self, details: bool = True) -> list[str]:
        """The verdict as text lines (``details``: every row's medians and test under it)."""
        width = max((len(g.name) for g in self.groups), default=0)
        out = [f"verdict ({self.rule}):"]
        for group in self.groups:
            out.append(f"  {group.name.ljust(width)}  {group.summary}")
            if group.peers:
                out.append(f"  {''.ljust(width)}  vs peers: {group.peers}")
            if details:
                out.extend(f"  {''.ljust(width)}    {row.text()}" for row in group.rows)
        out.extend(f"  {line}" for line in self.advice)
        out.extend(f"  safety: {fact}" for fact in self.safety)
        out.append(f"  {self.load}")
        return out

    def markdown(self, details: bool = True) -> list[str]:
        """The verdict as Markdown lines: a list, one item per group, rows nested."""
        out = [f"Rule: {self.rule}.", ""]
        for group in self.groups:
            out.append(f"- **{group.name}**: {group.summary}")
            if group.peers:
                out.append(f"  - vs peers: {group.peers}")
            if details:
                out.extend(f"  - {row.text()}" for row in group.rows)
        out.extend(f"- {line}" for line in self.advice)
        out.extend(f"- safety: {fact}" for fact in self.safety)
        out.append(f"- {self.load}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "rule": self.rule,
            "repeat": self.repeat,
            "method": self.method,
            "advice": self.advice,
            "groups": [group.to_dict() for group in self.groups],
            "safety": list(self.safety),
            "load": self.load,
            "too_busy": self.too_busy,
        }


def samples(result: BenchResult, workload: str, metric: str, method: str, impl: str) -> list[float]:
    """The repetitions of one number (empty if it was not measured)."""
    stat = result.cell(workload, metric, method, impl).stat
    return [] if stat is None else list(stat.samples)


def row_verdict(result: BenchResult, workload: str, metric: str) -> Optional[RowVerdict]:
    """The row ranked, or None if the run did not measure it."""
    if workload not in result.workloads:
        return None
    found = metric_of(workload, metric)
    higher = found.higher_is_better
    by_method = {m: samples(result, workload, metric, m, "poolkit") for m in result.methods}
    if not any(by_method.values()):
        return None
    pools = [impl for impl in result.impls if impl != "floor"]
    peer_rankings = {}
    if len(pools) > 1:
        for method in result.methods:
            peer_rankings[method] = rank(
                {impl: samples(result, workload, metric, method, impl) for impl in pools}, higher
            )
    return RowVerdict(
        workload,
        metric,
        result.label(WORKLOADS_BY_NAME[workload], found),
        found.unit,
        higher,
        rank(by_method, higher),
        peer_rankings,
        by_method,
    )


def group_verdict(group: Group, rows: list[RowVerdict], methods: list[str]) -> GroupVerdict:
    """A group's answer: one method, a tie, or a mix."""
    measured = [m for m in methods if any(m in row.methods.measured for row in rows)]
    leaders = [m for m in measured if all(m in row.methods.leaders for row in rows)]
    wins = {m: [row for row in rows if row.methods.winner == m] for m in measured}
    choice = leaders[0] if len(leaders) == 1 and wins[leaders[0]] else None
    if len(measured) < 2:
        summary = f"only {measured[0]} measured" if measured else "not measured"
    elif choice is not None:
        won = len(wins[choice])
        rest = "" if won == len(rows) else f", ties the other {len(rows) - won}"
        summary = f"{choice}: wins {won} of {len(rows)} rows{rest}"
    elif len(leaders) == len(measured):
        summary = "tied: no start method is faster beyond the noise"
    elif leaders:
        behind = [m for m in measured if m not in leaders]
        summary = f"tied: {', '.join(leaders)} (ahead of {', '.join(behind)})"
    else:
        parts = [f"{row.methods.winner} wins {row.label}" for row in rows if row.methods.winner]
        summary = "mixed: " + ("; ".join(parts) if parts else "each row has other leaders")
    return GroupVerdict(group.name, rows, choice, leaders, summary, _peers_text(rows))


def _peers_text(rows: list[RowVerdict]) -> str:
    """How poolkit placed among the pools, over the group's rows and start methods."""
    best = tied = 0
    beaten: list[str] = []
    for row in rows:
        for method, ranking in row.pools.items():
            if "poolkit" not in ranking.measured or len(ranking.measured) < 2:
                continue
            if ranking.winner == "poolkit":
                best += 1
            elif "poolkit" in ranking.leaders:
                tied += 1
            else:
                leader = ranking.best or ""
                factor = _factor(ranking.medians[leader], ranking.medians["poolkit"])
                beaten.append(f"{row.label} [{method}] by {impl_title(leader)} ({factor})")
    total = best + tied + len(beaten)
    if not total:
        return ""
    text = f"poolkit best in {best} of {total} (row, start method), tied for best in {tied}"
    if beaten:
        text += f", beaten in {len(beaten)}: " + "; ".join(beaten)
    return text


def _factor(better: float, worse: float) -> str:
    if not better or not worse:
        return "-"
    ratio = max(better / worse, worse / better)
    return f"{ratio:.2f}x"


def head_to_head(groups: list[GroupVerdict], a: str, b: str) -> tuple[list[str], list[str]]:
    """The groups of the rows where ``a`` beats ``b`` by the rule, and where ``b`` beats ``a``
    (one entry per row)."""
    a_wins, b_wins = [], []
    for group in groups:
        for row in group.rows:
            mine, theirs = row.samples.get(a, []), row.samples.get(b, [])
            if compare(mine, theirs, row.higher_is_better).beats:
                a_wins.append(group.name)
            elif compare(theirs, mine, row.higher_is_better).beats:
                b_wins.append(group.name)
    return a_wins, b_wins


def _where(groups: list[str]) -> str:
    """``3 rows (start-up and respawn 2, memory 1)``."""
    if not groups:
        return "no row"
    counts = {name: groups.count(name) for name in dict.fromkeys(groups)}
    rows = "1 row" if len(groups) == 1 else f"{len(groups)} rows"
    return f"{rows} ({', '.join(f'{name} {n}' for name, n in counts.items())})"


def recommend(groups: list[GroupVerdict], methods: list[str]) -> tuple[Optional[str], list[str]]:
    """The start method to use, and why, in a few lines."""
    if not groups:
        return None, ["nothing was measured: no verdict"]
    if len(methods) < 2:
        return (methods[0] if methods else None), [
            f"only {methods[0] if methods else 'no method'} was measured: nothing to compare"
        ]
    safe = [m for m in SAFE_METHODS if m in methods]
    advice = []
    choice: Optional[str] = None
    if safe:
        choice = safe[0]
        why = "safe in any program"
        if len(safe) == 2:
            wins, losses = head_to_head(groups, safe[0], safe[1])
            if len(losses) > len(wins):
                choice, wins, losses = safe[1], losses, wins
            other = safe[1] if choice == safe[0] else safe[0]
            why += f"; beats {other} in {_where(wins)}, {other} beats it in {_where(losses)}"
            if len(wins) == len(losses):
                why += " (even: poolkit's default decides)"
        default = " (poolkit's default)" if choice == "forkserver" else ""
        advice.append(f"use: start_method={choice!r}{default}: {why}")
    if "fork" in methods:
        if choice is None:
            choice = "fork"
            advice.append("use: start_method='fork' (the only one here)")
        else:
            wins, losses = head_to_head(groups, "fork", choice)
            if wins:
                advice.append(
                    f"fork beats {choice} in {_where(wins)} and loses {_where(losses)}: take "
                    f"start_method='fork' only if no other thread runs in your program when "
                    f"the pool starts (see safety)"
                )
            else:
                advice.append(
                    f"fork beats {choice} in no row beyond the noise (and loses "
                    f"{_where(losses)}): no reason to take its risk"
                )
    if choice is None:
        choice = methods[0]
    return choice, advice


def build(result: BenchResult) -> Verdict:
    """The verdict of ``result``."""
    groups = []
    for group in GROUPS:
        rows = [
            row for workload, metric in group.rows if (row := row_verdict(result, workload, metric))
        ]
        if rows:
            groups.append(group_verdict(group, rows, result.methods))
    method, advice = recommend(groups, result.methods)
    if result.repeat < MIN_REPEATS:
        advice.insert(
            0,
            f"{result.repeat} repetition(s): too few for the rule to name any winner; "
            f"use --repeat {MIN_REPEATS} or more",
        )
    load = result.load
    if load is not None:
        load_text = load.text()
    elif result.machine.get("load_average"):
        load_text = (
            f"machine load: not checked before and after (a run older than the check); "
            f"load average {result.machine['load_average'][0]:.2f} at the start"
        )
    else:
        load_text = "machine load: not measured"
    too_busy = bool(load is not None and load.too_busy)
    return Verdict(groups, method, advice, load_text, too_busy, result.repeat)
