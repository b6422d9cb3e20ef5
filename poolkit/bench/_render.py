"""Render a :class:`BenchResult` as a terminal report, Markdown or HTML.

Every format is built from the same :class:`Table` objects: the start-method table (poolkit
under each method, the best marked) and, when peers or floors were measured, one table per
start method with every implementation side by side and poolkit's ratio to each.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from poolkit_bench_runner.catalog import MAP_DEFAULTS

from ._machine import summary_line
from ._noise import Ranking, rank
from ._result import BenchResult, Cell, impl_title
from ._stats import format_stat
from ._verdict import samples

BEST = "*"
RATIO_NOTE = (
    "(r x) after a peer's number = poolkit / that peer, same unit and start method: below 1 is "
    "better for ms, us and MiB; above 1 is better for tasks/s, MiB/s and speed-up."
)


@dataclass
class Table:
    """A titled grid of strings; ``best`` holds the (row, column) cells to mark."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    best: set[tuple[int, int]] = field(default_factory=set)


class _Notes:
    """Footnotes for cells without a number."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def mark(self, cell: Cell) -> str:
        note = cell.note or "no result"
        if note not in self.notes:
            self.notes.append(note)
        return f"n/a [{self.notes.index(note) + 1}]"


def build_tables(result: BenchResult) -> tuple[list[Table], list[str]]:
    """The report's tables and its footnotes."""
    notes = _Notes()
    tables = [_method_table(result, notes)]
    if len(result.impls) > 1:
        tables.extend(_peer_table(result, method, notes) for method in result.methods)
    return tables, notes.notes


def _method_table(result: BenchResult, notes: _Notes) -> Table:
    table = Table(
        f"poolkit by start method ({result.workers} workers; a winner by the noise rule "
        f"marked {BEST}, else tied)",
        ["workload", "unit", *result.methods, "winner"],
    )
    for workload, metric in result.metrics():
        if metric.floor_only:
            continue
        ranking = rank(
            {m: samples(result, workload.name, metric.key, m, "poolkit") for m in result.methods},
            metric.higher_is_better,
        )
        row = [result.label(workload, metric), metric.unit]
        for column, method in enumerate(result.methods, start=2):
            cell = result.cell(workload.name, metric.key, method)
            row.append(format_stat(cell.stat) if cell.stat else notes.mark(cell))
            if method == ranking.winner:
                table.best.add((len(table.rows), column))
        row.append(ranking.text())
        table.rows.append(row)
    return table


def _peer_table(result: BenchResult, method: str, notes: _Notes) -> Table:
    table = Table(
        f"{method}: poolkit and peers side by side (a winner by the noise rule marked {BEST})",
        ["workload", "unit", *(impl_title(i) for i in result.impls), "winner"],
    )
    pools = [impl for impl in result.impls if impl != "floor"]
    for workload, metric in result.metrics():
        ranking = rank(
            {impl: samples(result, workload.name, metric.key, method, impl) for impl in pools},
            metric.higher_is_better,
        )
        row = [result.label(workload, metric), metric.unit]
        for column, impl in enumerate(result.impls, start=2):
            cell = result.cell(workload.name, metric.key, method, impl)
            if metric.floor_only and impl != "floor":
                row.append("")
                continue
            if cell.stat is None:
                row.append(notes.mark(cell))
                continue
            text = format_stat(cell.stat)
            ratio = result.ratio(workload.name, metric.key, method, impl)
            if impl != "poolkit" and ratio is not None:
                text += f" ({ratio:.2f}x)"
            row.append(text)
            if impl == ranking.winner:
                table.best.add((len(table.rows), column))
        row.append("" if metric.floor_only else _pool_names(ranking))
        table.rows.append(row)
    return table


def _pool_names(ranking: Ranking) -> str:
    """The winner among pools, or who is tied, by the pools' report names."""
    if not ranking.measured:
        return "-"
    if len(ranking.measured) == 1:
        return f"only {impl_title(ranking.measured[0])}"
    if ranking.winner is not None:
        return impl_title(ranking.winner)
    if len(ranking.leaders) == len(ranking.measured):
        return "tied"
    return "tied: " + ", ".join(impl_title(impl) for impl in ranking.leaders)


def header_lines(result: BenchResult) -> list[str]:
    """What was run and on which machine."""
    lines = [
        f"poolkit bench: {result.workers} workers, {result.repeat} repetition(s) per number "
        f"(median ±half-range), each measurement in a fresh process, implementations "
        f"interleaved, warm-up excluded{' (--quick sizes)' if result.quick else ''}",
        f"machine: {summary_line(result.machine)}",
    ]
    if "mapdefault" in result.workloads:
        defaults = [
            f"{impl_title(impl)} {MAP_DEFAULTS[impl]}"
            for impl in result.impls
            if impl in MAP_DEFAULTS
        ]
        lines.append("map with default arguments: " + "; ".join(defaults))
    for impl, why in result.skipped.items():
        lines.append(f"skipped {impl}: {why}")
    if result.note:
        lines.append(result.note)
    if result.seconds:
        lines.append(f"measured in {result.seconds:.0f} s")
    return lines


def verdict_lines(result: BenchResult) -> list[str]:
    """The verdict: per group of rows, which start method, by the noise rule; then advice."""
    return result.verdict().lines()


def render_text(result: BenchResult) -> str:
    """The terminal report: aligned columns, the best cells marked."""
    tables, notes = build_tables(result)
    lines = header_lines(result)
    for table in tables:
        lines.append("")
        lines.append(table.title)
        grid = [table.header] + [
            [text + (f" {BEST}" if (r, c) in table.best else "") for c, text in enumerate(row)]
            for r, row in enumerate(table.rows)
        ]
        widths = [max(len(row[c]) for row in grid) for c in range(len(table.header))]
        for index, row in enumerate(grid):
            cells = [
                text.ljust(widths[c]) if c < 2 else text.rjust(widths[c])
                for c, text in enumerate(row)
            ]
            lines.append("  ".join(cells).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
    lines.extend(["", *verdict_lines(result)])
    if len(result.impls) > 1:
        lines.append(RATIO_NOTE)
    lines.extend(f"[{i}] {note}" for i, note in enumerate(notes, start=1))
    lines.extend(f"problem: {p}" for p in result.problems)
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(result: BenchResult, level: int = 3, verdict: bool = True) -> str:
    """The report as Markdown: the header as a list, one table each, then the verdict."""
    tables, notes = build_tables(result)
    out = [f"- {line}" for line in header_lines(result)]
    for table in tables:
        out += ["", f"{'#' * level} {table.title}", ""]
        out.append("| " + " | ".join(table.header) + " |")
        out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(table.header) - 2)) + "|")
        for r, row in enumerate(table.rows):
            cells = [
                f"**{text}**" if (r, c) in table.best and text else text
                for c, text in enumerate(row)
            ]
            out.append("| " + " | ".join(cells) + " |")
    if verdict:
        out += ["", f"{'#' * level} Verdict", "", *result.verdict().markdown()]
    if len(result.impls) > 1:
        out += ["", RATIO_NOTE]
    if notes:
        out.append("")
        out.extend(f"[{i}] {note}  " for i, note in enumerate(notes, start=1))
    out.extend(f"\nproblem: {p}" for p in result.problems)
    return "\n".join(out).rstrip() + "\n"


def render_html(result: BenchResult) -> str:
    """The report as HTML tables, for notebooks."""
    tables, notes = build_tables(result)
    parts = [f"<p>{html.escape(line)}</p>" for line in header_lines(result)]
    for table in tables:
        parts.append(f"<h4>{html.escape(table.title)}</h4><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
        for r, row in enumerate(table.rows):
            cells = []
            for c, text in enumerate(row):
                body = html.escape(text)
                if (r, c) in table.best:
                    body = f"<b>{body}</b>"
                align = "left" if c < 2 else "right"
                cells.append(f'<td style="text-align:{align}">{body}</td>')
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.extend(f"<p>[{i}] {html.escape(n)}</p>" for i, n in enumerate(notes, start=1))
    parts.append("<h4>verdict</h4><pre>")
    parts.extend(html.escape(line) for line in result.verdict().lines())
    parts.append("</pre>")
    return "\n".join(parts)
