"""The side-by-side suite: poolkit against every installed peer and the floors, into the docs.

    python benchmarks/run.py                 # writes docs/benchmarks.md, .json and .png
    python benchmarks/run.py --quick --out /tmp/bench.md
    python benchmarks/run.py --compare docs/benchmarks.json   # flag >20% regressions
    python benchmarks/run.py --quick --workloads mapdefault,array,memory --out /tmp/b.md

Every number comes from ``poolkit.bench`` (a fresh process per measurement, implementations
interleaved, medians over repetitions); the document names the machine and the command, and
checks poolkit's targets against the run's own numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__" and not __package__:
    # Run as ``python benchmarks/run.py``: Python put benchmarks/ itself first on the path,
    # where goals.py would import as a top-level ``goals``. The checkout's root goes there
    # instead, so the project's tools import as ``benchmarks.*``, the one name tests use.
    sys.path[0] = ROOT

import poolkit.bench  # noqa: E402 (after the path is set)
from benchmarks import goals  # noqa: E402
from benchmarks.goals import Check  # noqa: E402
from poolkit.bench import BenchResult  # noqa: E402
from poolkit.bench._machine import summary_line  # noqa: E402

DOCS = os.path.join(ROOT, "docs")
#: A poolkit number worse than the saved one by more than this fraction is a regression.
REGRESSION = 0.20

INTRO = """\
# Benchmarks

poolkit against the other process pools of the Python ecosystem, and against the *floors*:
what the same work costs with no pool at all. Every number below was produced by one command
on the machine named under it:

```
{command}
```

How the numbers are taken (`poolkit.bench`):

- each measurement runs in a **fresh Python process** (a small runner with JSON on stdout), so
  no pool inherits another's imports, threads or fork server;
- implementations and start methods are **interleaved** and their order rotated each round;
  every number is the **median** of the rounds, with `±` half the range between rounds;
- warm-up is excluded (except for the cold start, which is nothing but warm-up): the pool
  is built and every worker has run a task before the clock starts;
- task functions live in a tiny standard-library module, so no pool pays for another's imports;
- every package loads from compiled bytecode, as pip installs it: a source checkout of poolkit
  is compiled first (only the files without current bytecode), or with
  `PYTHONDONTWRITEBYTECODE` set each measured process and each spawned worker would compile it
  from source again.

A user's own script measures differently (where its clock starts, what its process has
imported, how busy the machine is): [What a user measures](#what-a-user-measures), at the end
of this page, says how each difference moves the figures, and gives the figures such a script
gets, on an idle machine and beside two CPU hogs.

Floors: *cold start* and *respawn* use bare `multiprocessing.Process` objects of the same start
method; *latency* uses a `multiprocessing` Connection echoing a pickled tuple (and, in its own
rows, 8 bytes over two raw `os.pipe`s); *submit burst* and *map chunksize 1* stream pickled tuples
through a Connection; *map in large chunks* and *map with default arguments* are a serial
in-process `map`; *CPU scaling* is the ideal (one per worker); *payload* is a raw pipe; the
*numpy array round trip* sends the array's bytes to a forked child and back over raw pipes;
*memory* is as many bare idle processes as the pool has workers.
*Respawn* runs from the moment the killed worker has exited (its pidfd turns readable; the
kernel's teardown of the victim comes first and no pool can see the death sooner) to the
moment a task starts on the replacement, stamped by that worker with the system-wide
monotonic clock; its floor is one bare `Process` started and answering.
*Map with default arguments* calls each pool's `map` without a chunksize: the header of the
results names each pool's default. *Memory* counts every process below the measuring one once
the pool is idle: the parent, the workers, and the helpers kept alive for the pool (poolkit's
fork template, `multiprocessing`'s fork server and resource tracker); RSS counts the pages
forked processes share in each of them, PSS splits them between the sharers.
Peers that cannot survive a worker's death report `n/a` for respawn; loky does not support
`fork`.

`python -m poolkit bench` is the short start-method comparison of poolkit alone, with the same
verdict: 9 workloads (cold start, respawn, latency, submit burst, map with chunksize 1 and with
default arguments, payload, numpy array, memory) under each start method, 5 fresh-process
repetitions each, in about two minutes on this 2-core machine (102-130 s measured while other
work kept the load average at 2 to 7; on a slower or busier machine it stops adding rounds,
never below 3, once the next would end past 110 s); `--quick` runs 5 small workloads 3 times
in 15-24 s. Its
`--target mymod:work` answers for one function: start-up, warm throughput, chunksize, and the
speed-up over a plain loop with its range.
"""


TARGETS = """\
## Targets

Each target is a ratio of two medians of this run under the same start method: poolkit's
number over the reference's (stdlib PPE, mp.Pool, the best peer of the run, or the floor).
For times and sizes the ratio must be at most the bound, for rates and speed-ups at least.
PASS and MISS are computed from the results below (`benchmarks/goals.py`); nothing is
carried over from another run.
"""
VERDICT = """\
## Verdict

Which start method to use on this machine, by what a user cares about, and how poolkit placed
among the peers, from the numbers of this run (`poolkit/bench/_verdict.py`). A row names a
winner only where the repetitions show one beyond their own noise; the rule is stated first.
`python -m poolkit bench` prints the same verdict for the start methods alone.
"""
QUICK_NOTE = "\nThis was a `--quick` run: small sizes; the ratios are indicative only.\n"
FORK_NOTE = """
The fork backend forks its workers' replacements from a template process, never from the
threaded parent (a child forked while another thread holds a lock, such as the one of
`sys.stdout`, can deadlock). Where the fork column misses cold start, respawn or memory,
[docs/performance.md](performance.md#fork-where-cold-start-respawn-and-memory-go) measures,
step by step, where the time and the memory go.
"""
#: The fork targets FORK_NOTE explains.
FORK_NOTE_WORKLOADS = {"cold", "respawn", "memory"}


def write_doc(
    result: BenchResult, checks: list[Check], command: str, path: str, chart: Optional[str]
) -> None:
    """Write the Markdown page: how it was measured, the targets, the results."""
    parts = [INTRO.format(command=command)]
    if checks:
        parts += [TARGETS, goals.render_markdown(result, checks)]
        if any(
            c.method == "fork" and c.verdict == "MISS" and c.goal.workload in FORK_NOTE_WORKLOADS
            for c in checks
        ):
            parts.append(FORK_NOTE)
        if result.quick:
            parts.append(QUICK_NOTE)
    machine = f"Measured on: {summary_line(result.machine)}, {result.repeat} repetitions.\n"
    parts += [VERDICT, machine, "\n".join(result.verdict().markdown()) + "\n"]
    parts.extend(_default_run_section(path))
    if chart:
        parts.append(f"![poolkit and peers by start method]({os.path.basename(chart)})\n")
    parts.append("## Results\n")
    parts.append(result.to_markdown(verdict=False))  # the verdict is above
    kept = _hand_written(path)
    with open(path, "w") as out:
        out.write("\n".join(parts))
        if kept:
            out.write("\n" + kept)


#: The page's sections from this line on are written by hand; a new run keeps them as they are.
HAND_WRITTEN = "<!-- written by hand below this line: benchmarks/run.py keeps it -->"


def _hand_written(path: str) -> str:
    """The hand-written end of the page at ``path`` (from HAND_WRITTEN on), or ''."""
    try:
        with open(path, encoding="utf-8") as page:
            text = page.read()
    except OSError:
        return ""
    at = text.find(HAND_WRITTEN)
    return text[at:] if at >= 0 else ""


#: A saved ``python -m poolkit bench --json`` run, next to the page: its verdict is shown too.
DEFAULT_RUN = "bench-default.json"
DEFAULT_RUN_INTRO = """\
### `python -m poolkit bench` on this machine

The verdict of a real default run of the command (poolkit alone, every start method), saved
with `python -m poolkit bench --json docs/{name}` and shown here as it printed it:
"""


def _default_run_section(page: str) -> list[str]:
    """The verdict of the saved default run next to ``page``, if there is one."""
    saved = os.path.join(os.path.dirname(os.path.abspath(page)), DEFAULT_RUN)
    if not os.path.exists(saved):
        return []
    with open(saved) as source:
        run = BenchResult.from_dict(json.load(source))
    header = (
        f"Measured on: {summary_line(run.machine)}; {run.repeat} repetitions, "
        f"{run.seconds:.0f} s.\n"
    )
    body = "\n".join(run.verdict().lines())
    return [DEFAULT_RUN_INTRO.format(name=DEFAULT_RUN), header, f"```\n{body}\n```\n"]


def write_json(result: BenchResult, checks: list[Check], command: str, path: str) -> None:
    """The result as ``BenchResult.to_dict`` gives it, with the targets' checks and the
    command that measured it added."""
    data = result.to_dict()
    data["targets"] = [found.to_dict() for found in checks]
    data["command"] = command
    with open(path, "w") as out:
        json.dump(data, out, indent=1)
        out.write("\n")


def load_saved(path: str, quick: bool, workers: Optional[int]) -> BenchResult:
    """The result to compare against; exits with a message if it cannot be compared."""
    try:
        with open(path) as saved_file:
            saved = BenchResult.from_dict(json.load(saved_file))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"--compare: cannot read {path}: {exc}")
    if saved.quick != quick:
        sys.exit(
            f"--compare: {path} is {'a' if saved.quick else 'not a'} --quick run and this one "
            f"is {'' if quick else 'not '}: their sizes differ"
        )
    if workers is not None and saved.workers != workers:
        sys.exit(f"--compare: {path} ran {saved.workers} workers, this run {workers}")
    return saved


#: What poolkit's change is measured against, to tell a slower poolkit from a slower machine:
#: the first of these measured in both runs, same workload and start method.
REFERENCES = ("floor", "stdlib")


def compare(result: BenchResult, saved: BenchResult) -> tuple[list[str], list[str], list[str]]:
    """Compare poolkit's numbers with ``saved``.

    Returns the regressions (more than 20% worse), the numbers that could not be compared,
    and the slowdowns put down to the machine. This VM's speed drifts by 20-30% between runs,
    so a number more than 20% worse is a regression only if it is also more than 20% worse
    relative to a reference measured in both runs (the floor of the same workload, else the
    stdlib pool): when the floor slowed down as much, the machine did, not poolkit.
    """
    regressions, unmatched, drifted = [], [], []
    for workload, metric in result.metrics():
        if not metric.compared:
            continue
        for method in result.methods:
            now = result.value(workload.name, metric.key, method)
            before = saved.value(workload.name, metric.key, method)
            if now is None:
                continue
            label = f"{result.label(workload, metric)} [{method}]"
            if not before:
                unmatched.append(label)
                continue
            worse = _worse(now, before, metric.higher_is_better)
            if worse <= REGRESSION:
                continue
            line = f"{label}: {before:.4g} -> {now:.4g} {metric.unit} ({worse:+.0%} worse)"
            for reference in REFERENCES:
                ref_now = result.value(workload.name, metric.key, method, reference)
                ref_before = saved.value(workload.name, metric.key, method, reference)
                if ref_now and ref_before:
                    relative = _worse(now / ref_now, before / ref_before, metric.higher_is_better)
                    line += f"; against {reference}: {relative:+.0%}"
                    if relative <= REGRESSION:
                        drifted.append(line)
                        line = ""
                    break
            if line:
                regressions.append(line)
    return regressions, unmatched, drifted


def _worse(now: float, before: float, higher_is_better: bool) -> float:
    """How much worse ``now`` is than ``before``, as a fraction (negative: better)."""
    change = now / before - 1
    return -change if higher_is_better else change


def write_chart(result: BenchResult, path: str) -> Optional[str]:
    """Draw the chart at ``path`` and return it; None (and why, on stderr) without one."""
    try:
        from poolkit.bench._plot import PlotUnavailable, plot

        plot(result, path)
    except PlotUnavailable as exc:
        print(f"no chart: {exc}", file=sys.stderr)
        return None
    return path


def render(saved_path: str, out: str, png: Optional[str]) -> int:
    """Write the page of a saved run again, with this version's prose; targets recomputed."""
    with open(saved_path) as source:
        data = json.load(source)
    result = BenchResult.from_dict(data)
    command = data.get("command", "python benchmarks/run.py")
    png_path = png or os.path.splitext(out)[0] + ".png"
    # Without matplotlib, the page keeps pointing at the chart drawn when the run was made.
    chart = write_chart(result, png_path) or (png_path if os.path.exists(png_path) else None)
    write_doc(result, goals.evaluate(result), command, out, chart)
    print(f"wrote {out}" + (f", {chart}" if chart else ""))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the suite and write the docs; returns 1 if --compare found a regression."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--workers", type=int, help="pool size (default: usable CPUs)")
    parser.add_argument("--methods", help="start methods (default: all)")
    parser.add_argument("--against", default="all", help="peers (default: all installed)")
    parser.add_argument(
        "--workloads", default="all", help="a subset of the workloads (default: all)"
    )
    parser.add_argument("--out", default=os.path.join(DOCS, "benchmarks.md"))
    parser.add_argument("--json", default=None, help="default: next to --out, .json")
    parser.add_argument("--png", default=None, help="default: next to --out, .png")
    parser.add_argument("--compare", metavar="SAVED.json", help="flag >20%% regressions")
    parser.add_argument(
        "--render",
        metavar="SAVED.json",
        help="measure nothing: write the Markdown page (and chart) again from a saved run",
    )
    options = parser.parse_args(argv)
    if options.render:
        return render(options.render, options.out, options.png)
    command = "python benchmarks/run.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    saved = load_saved(options.compare, options.quick, options.workers) if options.compare else None
    result = poolkit.bench.run(
        methods=options.methods,
        workers=options.workers,
        repeat=options.repeat,
        quick=options.quick,
        against=options.against,
        floors=True,
        workloads=options.workloads,
        progress=True,
    )
    checks = goals.evaluate(result)
    print(result)
    if checks:
        print("\n" + goals.render_text(result, checks), end="")
    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    stem = os.path.splitext(options.out)[0]
    json_path = options.json or stem + ".json"
    regressions, unmatched, drifted = compare(result, saved) if saved else ([], [], [])
    write_json(result, checks, command, json_path)
    chart = write_chart(result, options.png or stem + ".png")
    write_doc(result, checks, command, options.out, chart)
    print(f"wrote {options.out}, {json_path}" + (f", {chart}" if chart else ""))
    if unmatched:
        print(f"not in {options.compare}, not compared: {'; '.join(unmatched)}")
    for line in drifted:
        print(f"slower, as the machine was (not flagged): {line}")
    for line in regressions:
        print(f"REGRESSION: {line}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
