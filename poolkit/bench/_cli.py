"""``python -m poolkit bench``: the command line of the start-method benchmark."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any, Callable, Optional, TypeVar, Union

from poolkit_bench_runner.catalog import PEERS, WORKLOADS

EPILOG = """\
durations measured on 2 CPUs shared with other work (load average 2 to 7): a default run
102-130 s, --quick 15-24 s, a --target of a fast function with the default chunksizes 14 s.
A default run stops adding rounds (never below 3) when the next would end past 110 s.

examples:
  python -m poolkit bench                      every start method: 9 workloads x 5 repetitions,
                                               then the verdict (under 2 min)
  python -m poolkit bench --quick              5 small workloads x 3 repetitions (15-24 s)
  python -m poolkit bench --workloads all      every workload (several minutes: mapauto alone
                                               takes about 15 s per measurement)
  python -m poolkit bench --against stdlib,mppool,loky --json out.json
  python -m poolkit bench --target mymod:work --args '[[1, 2], [3, 4]]'
  python -m poolkit bench --target mymod:work --args 30 --count 64
  python -m poolkit bench --target mymod:work --inputs mymod:ITEMS

workloads: {workloads}
peers: {peers} ("all" for every installed one)
"""


def build_parser(prog: str = "python -m poolkit bench") -> argparse.ArgumentParser:
    """The argument parser of ``bench``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        # The raw formatter keeps the epilog's columns, so the description is wrapped here.
        description=textwrap.fill(
            "Compare poolkit's start methods (fork, spawn, forkserver) on standard workloads, "
            "or on your own function with --target; optionally against other process pools. "
            "Ends with a verdict: which start method to use here and why, grouped by start-up "
            "and respawn, per-task overhead, map throughput, large payloads and memory. A row "
            "names a winner only if a one-sided Mann-Whitney U test over >= 3 repetitions "
            "gives p <= 0.05 and the medians are >= 5% apart; otherwise it says tied.",
            width=92,
        ),
        epilog=EPILOG.format(
            workloads=", ".join(w.name for w in WORKLOADS), peers=", ".join(PEERS)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("what to run")
    run.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, 5 workloads, 3 repetitions (15-24 s)",
    )
    run.add_argument("--methods", help="comma-separated start methods (default: all available)")
    run.add_argument("--workers", type=_positive, help="pool size (default: usable CPUs)")
    run.add_argument(
        "--repeat",
        type=_positive,
        help="fresh-process repetitions, exactly (default: 5, or fewer but at least 3 to stay "
        "near 2 minutes; 3 with --quick or --target; the verdict needs >= 3)",
    )
    run.add_argument(
        "--against",
        help="comma-separated peers to add, or 'all' (each peer adds about the time of "
        "poolkit's own run: --quick --against stdlib,mppool took 98 s)",
    )
    run.add_argument("--floors", action="store_true", help="also measure bare processes and pipes")
    run.add_argument(
        "--workloads",
        help="comma-separated workloads, or 'all' (default: cold, respawn, latency, burst, "
        "map1, mapdefault, payload, array, memory)",
    )
    run.add_argument(
        "--timeout", type=_positive_float, help="seconds one measurement may take (default 60)"
    )
    target = parser.add_argument_group("your own function")
    target.add_argument("--target", metavar="MODULE:FUNCTION", help="benchmark this function")
    target.add_argument(
        "--args",
        metavar="JSON",
        help="its inputs: a JSON list of argument lists ([[1,2],[3,4]]), a list of single "
        "arguments ([1,2,3]), or one value repeated --count times",
    )
    target.add_argument("--count", type=_positive, help="calls for a single repeated --args value")
    target.add_argument(
        "--inputs", metavar="MODULE:NAME", help="a module-level iterable (or function) of inputs"
    )
    target.add_argument(
        "--star", action="store_true", help="each --inputs item is a tuple of arguments"
    )
    target.add_argument("--chunksizes", help="comma-separated chunksizes to try")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    out.add_argument("--markdown", metavar="FILE", help="write the report as Markdown")
    out.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the verdict's chart: start methods side by side per group, with their "
        "ranges (needs matplotlib: pip install 'poolkit[plot]')",
    )
    out.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (by default: one line updated in place, with the time "
        "left, on a terminal; plain lines elsewhere)",
    )
    return parser


def _positive(text: str) -> int:
    return _parse_positive(text, int, "a positive integer")


def _positive_float(text: str) -> float:
    return _parse_positive(text, float, "a positive number of seconds")


Number = TypeVar("Number", int, float)


def _parse_positive(text: str, convert: Callable[[str], Number], what: str) -> Number:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _check(parser: argparse.ArgumentParser, options: argparse.Namespace) -> Any:
    """Cross-option checks; returns the parsed --args (or None)."""
    target_only = ("args", "inputs", "count", "chunksizes")
    if not options.target:
        given = [f"--{name}" for name in target_only if getattr(options, name) is not None]
        if options.star:
            given.append("--star")
        if given:
            parser.error(f"{', '.join(given)} only make(s) sense with --target MODULE:FUNCTION")
    else:
        if ":" not in options.target:
            parser.error(f"--target must look like module:function, got {options.target!r}")
        if options.floors or options.workloads:
            parser.error("--floors and --workloads apply to the standard workloads, not --target")
        if options.args is not None and options.inputs is not None:
            parser.error("give the inputs with --args or with --inputs, not both")
    if options.plot:
        from ._plot import PlotUnavailable, load_pyplot

        try:
            load_pyplot()  # fail now, not after minutes of measuring
        except PlotUnavailable as exc:
            parser.error(str(exc))
    if options.args is None:
        return None
    try:
        return json.loads(options.args)
    except ValueError as exc:
        parser.error(f"--args is not valid JSON ({exc}): {options.args!r}")


def main(argv: Optional[list[str]] = None, prog: str = "python -m poolkit bench") -> int:
    """Run ``bench`` with these arguments; returns the exit status (2 for bad arguments)."""
    parser = build_parser(prog)
    options = parser.parse_args(argv)
    parsed_args = _check(parser, options)
    progress = not options.no_progress
    result: Union[Any]
    try:
        if options.target:
            from ._target import DEFAULT_TARGET_TIMEOUT, run_target

            result = run_target(
                options.target,
                args=parsed_args,
                inputs=options.inputs,
                star=options.star,
                count=options.count,
                methods=options.methods,
                workers=options.workers,
                chunksizes=options.chunksizes,
                repeat=options.repeat,
                against=options.against,
                timeout=options.timeout or DEFAULT_TARGET_TIMEOUT,
                progress=progress,
            )
        else:
            from ._orchestrate import DEFAULT_TIMEOUT, run

            result = run(
                methods=options.methods,
                workers=options.workers,
                repeat=options.repeat,
                quick=options.quick,
                against=options.against,
                floors=options.floors,
                workloads=options.workloads,
                timeout=options.timeout or DEFAULT_TIMEOUT,
                progress=progress,
            )
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(result.to_text(), end="")
    _write_outputs(options, result)
    if options.target and not result.ok:
        return 1
    return 0


def _write_outputs(options: argparse.Namespace, result: Any) -> None:
    if options.json:
        with open(options.json, "w") as out:
            json.dump(result.to_dict(), out, indent=1)
            out.write("\n")
        print(f"wrote {options.json}")
    if options.markdown:
        with open(options.markdown, "w") as out:
            out.write(result.to_markdown())
        print(f"wrote {options.markdown}")
    if options.plot:
        from ._plot import plot

        plot(result, options.plot)
        print(f"wrote {options.plot}")
