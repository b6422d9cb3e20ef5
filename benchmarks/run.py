"""The side-by-side suite: poolkit against every installed peer and the floors, into the docs.

    python benchmarks/run.py                 # writes docs/benchmarks.md, .json and .png
    python benchmarks/run.py --quick --out /tmp/bench.md
    python benchmarks/run.py --compare docs/benchmarks.json   # flag >20% regressions

Every number comes from ``poolkit.bench`` (a fresh process per measurement, implementations
interleaved, medians over repetitions); the document names the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import poolkit.bench
from poolkit.bench import BenchResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
- task functions live in a tiny standard-library module, so no pool pays for another's imports.

Floors: *cold start* and *respawn* use bare `multiprocessing.Process` objects of the same start
method; *latency* uses a `multiprocessing` Connection echoing a pickled tuple (and, in its own
rows, 8 bytes over two raw `os.pipe`s); *submit burst* and *map chunksize 1* stream pickled tuples
through a Connection; *map in large chunks* is a serial in-process `map`; *CPU scaling* is the
ideal (one per worker); *payload* is a raw pipe; *memory* is a bare idle process.
Peers that cannot survive a worker's death report `n/a` for respawn; loky does not support
`fork`. Reproduce with `python -m poolkit bench` for the short start-method comparison.
"""


def write_doc(result: BenchResult, command: str, path: str, chart: Optional[str]) -> None:
    """Write the Markdown page."""
    parts = [INTRO.format(command=command)]
    if chart:
        parts.append(f"![poolkit and peers by start method]({os.path.basename(chart)})\n")
    parts.append("## Results\n")
    parts.append(result.to_markdown())
    with open(path, "w") as out:
        out.write("\n".join(parts))


def compare(result: BenchResult, saved_path: str) -> list[str]:
    """poolkit's numbers that are more than 20% worse than in a saved result."""
    with open(saved_path) as saved_file:
        saved = BenchResult.from_dict(json.load(saved_file))
    regressions = []
    for workload, metric in result.metrics():
        for method in result.methods:
            now = result.value(workload.name, metric.key, method)
            before = saved.value(workload.name, metric.key, method)
            if now is None or not before:
                continue
            change = now / before - 1
            worse = -change if metric.higher_is_better else change
            if worse > REGRESSION:
                regressions.append(
                    f"{result.label(workload, metric)} [{method}]: {before:.4g} -> {now:.4g} "
                    f"{metric.unit} ({worse:+.0%} worse)"
                )
    return regressions


def main(argv: Optional[list[str]] = None) -> int:
    """Run the suite and write the docs; returns 1 if --compare found a regression."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3)")
    parser.add_argument("--workers", type=int, help="pool size (default: usable CPUs)")
    parser.add_argument("--methods", help="start methods (default: all)")
    parser.add_argument("--against", default="all", help="peers (default: all installed)")
    parser.add_argument("--out", default=os.path.join(DOCS, "benchmarks.md"))
    parser.add_argument("--json", default=None, help="default: next to --out, .json")
    parser.add_argument("--png", default=None, help="default: next to --out, .png")
    parser.add_argument("--compare", metavar="SAVED.json", help="flag >20%% regressions")
    options = parser.parse_args(argv)
    command = "python benchmarks/run.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    result = poolkit.bench.run(
        methods=options.methods,
        workers=options.workers,
        repeat=options.repeat,
        quick=options.quick,
        against=options.against,
        floors=True,
        progress=True,
    )
    print(result)
    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    stem = os.path.splitext(options.out)[0]
    json_path = options.json or stem + ".json"
    png_path: Optional[str] = options.png or stem + ".png"
    regressions = compare(result, options.compare) if options.compare else []
    result.to_json(json_path)
    try:
        from poolkit.bench._plot import PlotUnavailable, plot

        assert png_path is not None
        plot(result, png_path)
    except PlotUnavailable as exc:
        print(f"no chart: {exc}", file=sys.stderr)
        png_path = None
    write_doc(result, command, options.out, png_path)
    print(f"wrote {options.out}, {json_path}" + (f", {png_path}" if png_path else ""))
    for line in regressions:
        print(f"REGRESSION: {line}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
