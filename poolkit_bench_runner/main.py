"""The runner: one measurement in a fresh process; a JSON spec on stdin, a JSON result on stdout.

Started by the parent (``poolkit.bench._launch``) as ``python -c "from
poolkit_bench_runner.main import main; ..."``: with ``-c`` there is no main module for a spawned
worker to import again, as in the user's own ``python -c``. Anything
the measured code prints goes to stderr: the original stdout is kept for the one JSON line.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import traceback
from typing import Any

from poolkit_bench_runner import mapping, mixed, target, workloads
from poolkit_bench_runner.adapters import ADAPTERS, Unsupported, make_pool
from poolkit_bench_runner.floors import FLOORS


def run_workload(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one workload on one implementation and start method."""
    name, impl, method = spec["workload"], spec["impl"], spec["method"]
    workers, params = int(spec["workers"]), dict(spec.get("params", {}))
    if impl == "floor":
        floors = {**FLOORS, **mixed.FLOORS}
        if name not in floors:
            return {"skipped": "no floor for this workload"}
        return {"values": floors[name](method, workers, params)}
    try:
        ADAPTERS[impl].preload()
        if name in workloads.COLD:
            values = workloads.COLD[name](lambda: make_pool(impl, method, workers), params)
            return {"values": values}
        pool = make_pool(impl, method, workers)
    except Unsupported as exc:
        return {"skipped": str(exc)}
    stuck = False
    try:
        workloads.until_pids(pool, workers)  # warm-up: every worker is up and has run a task
        return {"values": {**workloads.WARM, **mapping.WARM, **mixed.WARM}[name](pool, params)}
    except Unsupported as exc:
        return {"skipped": str(exc)}
    except workloads.Measured as exc:
        stuck = True
        # The pool may be wedged: skip its exit-time finalizers, which could wait forever.
        return {"values": {}, "note": str(exc), "hard_exit": True}
    finally:
        try:
            pool.abort() if stuck else pool.shutdown()
        except Exception as exc:  # a broken pool may complain; the measurement is done
            print(f"shutdown after the measurement failed: {exc!r}", file=sys.stderr)


def dispatch(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the measurement a spec describes; exceptions become an error result."""
    for path in spec.get("sys_path", []):
        if path not in sys.path:
            sys.path.insert(1, path)
    kind = spec.get("kind", "workload")
    try:
        result = run_workload(spec) if kind == "workload" else target.KINDS[kind](spec)
    except Unsupported as exc:
        return {"ok": False, "skipped": str(exc), "error": str(exc)}
    except target.TargetError as exc:
        return {
            "ok": False,
            "stage": exc.stage,
            "error": str(exc),
            "traceback": _cause_traceback(exc),
        }
    except BaseException as exc:
        return {
            "ok": False,
            "stage": "runner",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    result["ok"] = True
    return result


def _cause_traceback(exc: target.TargetError) -> str:
    """The user's part of the traceback of what went wrong (the runner's frames dropped)."""
    cause = exc.__cause__
    if cause is None or (isinstance(cause, ModuleNotFoundError) and exc.stage == "import"):
        return ""  # the message says it all
    frames = [
        frame
        for frame in traceback.extract_tb(cause.__traceback__)
        if "poolkit_bench_runner" not in frame.filename and "importlib" not in frame.filename
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(cause), cause)
    return "".join(lines)


def main() -> int:
    """Entry point of the runner process."""
    out = os.dup(1)
    os.dup2(2, 1)  # whatever the measured code prints lands on stderr
    # On a timeout the parent sends SIGUSR1 first: every thread's stack goes to stderr, so
    # the report can say where the measured code hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        spec = json.loads(sys.stdin.read())
    except ValueError as exc:
        result: dict[str, Any] = {"ok": False, "stage": "runner", "error": f"bad spec: {exc}"}
    else:
        result = dispatch(spec)
    data = (json.dumps(result) + "\n").encode()
    while data:
        data = data[os.write(out, data) :]
    os.close(out)
    if result.get("hard_exit"):
        os._exit(0)
    return 0
