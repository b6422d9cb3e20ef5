"""``python -m poolkit``: ``bench`` (which start method is fastest here), ``run`` and ``demo``."""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

USAGE = """\
usage: python -m poolkit COMMAND [options]

commands:
  bench   compare start methods (and peers) on this machine, or time your own function
          (python -m poolkit bench --help)
  run     run a program with poolkit as its ProcessPoolExecutor, unchanged
          (python -m poolkit run [--start-method M] script.py | -m module [args...])
  demo    run a tiny example pool
"""


def _square(x: int) -> int:
    return x * x


def _make_adder(offset: int) -> Callable[[int], int]:
    return lambda x: x + offset


def demo() -> int:
    """Run a tiny pool under every start method and print what happened."""
    import poolkit

    print(
        f"poolkit {poolkit.__version__}; start methods here: {', '.join(poolkit.start_methods())}"
    )
    for method in poolkit.start_methods():
        with poolkit.Executor(max_workers=2, start_method=method) as executor:
            squares = list(executor.map(_square, range(8)))
            pids = {executor.submit(os.getpid).result() for _ in range(4)}
            shifted = executor.submit(_make_adder(10), 5).result()  # a closure travels too
        print(
            f"  {method:<10} map(square, range(8)) = {squares}; lambda -> {shifted}; "
            f"{len(pids)} worker pid(s) seen"
        )
    print("next: python -m poolkit bench --quick")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m poolkit`` and of the ``poolkit`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    prog = "poolkit" if os.path.basename(sys.argv[0]) == "poolkit" else "python -m poolkit"
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "bench":
        from .bench._cli import main as bench_main

        try:
            return bench_main(rest, prog=f"{prog} bench")
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            return exc.code if isinstance(exc.code, int) else 2
    if command == "run":
        from poolkit._run.program import main as run_main

        return run_main(rest, prog=f"{prog} run")
    if command == "demo":
        return demo()
    print(f"{prog}: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
