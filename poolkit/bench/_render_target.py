"""Render a :class:`TargetResult`: a table of combinations, the fastest marked, or the failure."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ._machine import summary_line
from ._result import impl_title
from ._stats import format_duration_stat, format_value

if TYPE_CHECKING:
    from ._target import TargetResult

HEADER = ["impl", "method", "chunksize", "start-up", "warm map", "calls/s", "x serial (range)"]


def _header(result: TargetResult) -> list[str]:
    calls = f"{result.items} calls, " if result.items else ""
    lines = [
        f"poolkit bench --target {result.target}: {calls}{result.workers} "
        f"workers, {result.repeat} repetition(s), each in a fresh process; start-up = "
        f"construct -> one call per worker done, warm map = every call on the started pool",
        f"machine: {summary_line(result.machine)}",
    ]
    if result.first_call:
        lines.append(f"first call returned: {result.first_call}")
    if result.serial:
        lines.append(f"serial, in one process: {format_duration_stat(result.serial)}")
    lines.extend(f"skipped {impl}: {why}" for impl, why in result.skipped.items())
    return lines


def _grid(result: TargetResult) -> tuple[list[list[str]], int]:
    """The table's rows, and the index of the answer's row (marked) or -1."""
    rows, best_index = [], -1
    answer = result.answer()
    best = ("poolkit", answer.method, answer.chunksize)
    for index, row in enumerate(result.rows()):
        config = (row["impl"], row["method"], row["chunksize"])
        stat = result.timings.get(config)
        if row["error"]:
            cells = [
                impl_title(row["impl"]),
                row["method"],
                str(row["chunksize"]),
                row["error"],
                "",
                "",
                "",
            ]
        else:
            speedup = format_value(row["speedup_vs_serial"])
            if row["speedup_low"] is not None:
                speedup += f" ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
            cells = [
                impl_title(row["impl"]),
                row["method"],
                str(row["chunksize"]),
                format_duration_stat(result.startup.get(config)),
                format_duration_stat(stat),
                format_value(row["calls_per_s"]),
                speedup,
            ]
        if config == best:
            best_index = index
        rows.append(cells)
    return rows, best_index


def render_target_text(result: TargetResult) -> str:
    """The terminal report."""
    lines = _header(result)
    if result.failure:
        lines += ["", f"FAILED ({result.stage}): {result.failure}"]
        if result.details:
            lines += ["", result.details]
        return "\n".join(lines) + "\n"
    rows, best = _grid(result)
    columns = len(HEADER)
    grid = [HEADER] + [r + (["*"] if i == best else []) for i, r in enumerate(rows)]
    widths = [max(len(r[c]) for r in grid if c < len(r)) for c in range(columns)]
    lines.append("")
    for index, row in enumerate(grid):
        cells = [
            text.ljust(widths[c]) if c < 3 else text.rjust(widths[c])
            for c, text in enumerate(row[:columns])
        ]
        lines.append("  ".join(cells) + (" *" if len(row) > columns else ""))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", result.verdict()]
    return "\n".join(lines) + "\n"


def render_target_markdown(result: TargetResult) -> str:
    """The report as Markdown."""
    out = [f"- {line}" for line in _header(result)]
    if result.failure:
        out += ["", f"**Failed ({result.stage})**: {result.failure}"]
        if result.details:
            out += ["", "```", result.details, "```"]
        return "\n".join(out) + "\n"
    rows, best = _grid(result)
    out += ["", "| " + " | ".join(HEADER) + " |", "|---|---|---:|---:|---:|---:|---:|"]
    for index, row in enumerate(rows):
        cells = [f"**{c}**" if index == best and c else c for c in row]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", *(f"- {line.strip()}" for line in result.answer().lines())]
    return "\n".join(out) + "\n"


def render_target_html(result: TargetResult) -> str:
    """The report as HTML, for notebooks."""
    parts = [f"<p>{html.escape(line)}</p>" for line in _header(result)]
    if result.failure:
        parts.append(
            f"<p><b>Failed ({html.escape(result.stage)})</b>: {html.escape(result.failure)}</p>"
        )
        if result.details:
            parts.append(f"<pre>{html.escape(result.details)}</pre>")
        return "\n".join(parts)
    rows, best = _grid(result)
    parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in HEADER) + "</tr>")
    for index, row in enumerate(rows):
        bold = ("<b>", "</b>") if index == best else ("", "")
        cells = "".join(f"<td>{bold[0]}{html.escape(c)}{bold[1]}</td>" for c in row)
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    parts.extend(f"<p>{html.escape(line)}</p>" for line in result.answer().lines())
    return "\n".join(parts)
