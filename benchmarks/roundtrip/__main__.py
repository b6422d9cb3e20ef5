"""``python -m benchmarks.roundtrip``: the command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import benchmarks.roundtrip
from benchmarks.roundtrip.bursts import burst_child
from benchmarks.roundtrip.floors import floors_child, pinned_child
from benchmarks.roundtrip.loops import profile_loop
from benchmarks.roundtrip.profile import run_profile
from benchmarks.roundtrip.pyspy import render_summary, run_pyspy, summarize
from benchmarks.roundtrip.report import render

METHODS = ("fork", "spawn", "forkserver")


def build_parser() -> argparse.ArgumentParser:
    """The options of the profile and of its child processes (hidden)."""
    doc = benchmarks.roundtrip.__doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.roundtrip", description=doc.split("\n\n")[0]
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="default: all three")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--samples", type=int, default=1000, help="round trips per round and job")
    parser.add_argument("--warmup", type=int, default=100, help="round trips before each job")
    parser.add_argument("--burst", type=int, default=20000, help="tasks per burst (default 20000)")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--pyspy", metavar="PY_SPY", help="also profile both loops with py-spy")
    parser.add_argument("--pyspy-out", help="where py-spy's raw files go (default: a temp dir)")
    parser.add_argument("--pyspy-method", default="forkserver")
    parser.add_argument("--pyspy-seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=12, help="lines per thread in a profile")
    parser.add_argument("--loop", choices=("latency", "burst"), help="only run a plain loop")
    parser.add_argument("--method", default="forkserver", help="start method for --loop")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of --loop")
    parser.add_argument("--sidecar", help="--loop: write pids here; --summarize: read them")
    parser.add_argument("--summarize", metavar="RAW", help="summarize a py-spy raw profile")
    for child in ("--floors-child", "--pinned-child", "--burst-child"):
        parser.add_argument(child, action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the profile (or one of its parts); returns the exit status."""
    parser = build_parser()
    options = parser.parse_args(argv)
    methods = [m for m in options.methods.split(",") if m]
    if options.floors_child:
        json.dump(floors_child(options.samples), sys.stdout)
    elif options.pinned_child:
        json.dump(pinned_child(methods, options.warmup, options.samples), sys.stdout)
    elif options.burst_child:
        json.dump(burst_child(methods, options.burst), sys.stdout)
    elif options.loop:
        profile_loop(options.loop, options.method, options.seconds, options.sidecar)
    elif options.summarize:
        if not options.sidecar:
            parser.error("--summarize needs --sidecar")
        print(render_summary(summarize(options.summarize, options.sidecar, options.top)))
    else:
        result = run_profile(options)
        print(render(result))
        if options.pyspy:
            result["pyspy"] = run_pyspy(options)
        if options.json:
            with open(options.json, "w") as out:
                json.dump(result, out, indent=1)
                out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
