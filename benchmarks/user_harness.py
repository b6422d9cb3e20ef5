"""Measure poolkit and its peers as a user's own script does, one suspected difference at a time.

    python benchmarks/user_harness.py [--vary hogs=0,2] [--set warmup=none] [--reps 3]
    python benchmarks/user_harness.py --reps 5 --vary method=fork,forkserver --vary hogs=0,2
        (the table docs/benchmarks.md asks to publish: "What a user measures")

Nothing here uses ``poolkit.bench`` or its runner. Each measurement is a fresh
``python -c`` process that imports the pools as a user does (``import poolkit``,
``import concurrent.futures``, ``import multiprocessing``, ``import loky``), builds one pool
of ``--workers`` workers, times one workload and prints one JSON line. poolkit is copied from
the checkout into a scratch directory and compiled there, as ``pip install`` leaves it; the
peers are the pip-installed ones. Task functions live in a small module the harness writes,
as a user's own module would be (or in the measuring script itself: ``task=main``).
``--candidate DIR`` measures the poolkit of another checkout (a patched copy) beside this one,
as the implementation ``candidate``.

Implementations and conditions are interleaved (A, B, C, then C, B, A, ...), so that every
cell sees the same noise; each figure is the median of the repetitions with the
range beside it, and every ratio is taken within the run. The 1-minute load average is
recorded before every measurement and printed with the table: on a busy machine, compare
ratios, never absolute figures.

A condition is a set of ``KEY=VALUE`` settings (``--set`` for all, ``--vary`` for a
comparison; several ``--vary`` make every combination):

- ``warmup``: ``full`` (every worker has answered, then the workload's own warm-up: 200 round
  trips, 1,000 tasks, a 500-item map), ``workers`` (every worker has answered) or ``none``
  (timing starts as soon as the pool object exists).
- ``start``, where the clock starts: ``ready`` (after the warm-up; for ``cold``, after the
  import), ``construct`` (just before the pool is built: no warm-up), ``import`` (before the
  ``import`` statement) or ``lazy`` (after ``import poolkit``, before ``poolkit.Executor``
  is first touched; poolkit, like ``concurrent.futures``, loads its executor on first use).
- ``stop``: ``result`` (the last result) or ``shutdown`` (after the pool's shutdown, as in a
  timed ``with`` block).
- ``hogs``: that many processes spinning in pure Python beside the pool, started by this
  script before the measurement and killed by pid after it; ``nice``: their niceness (19:
  they only take CPU time nobody else wants, but keep idle CPUs awake).
- ``bytecode``: ``compiled`` (pip-style ``.pyc`` files) or ``none`` (poolkit from source
  with ``PYTHONDONTWRITEBYTECODE=1``, as an editable install here: every process compiles it).
- ``parent``: ``plain``, ``harness`` (the measuring process has imported what a harness's
  own code imports: ``concurrent.futures.process``, ``multiprocessing.pool``, ``subprocess``,
  ``argparse``), ``big`` (it has imported numpy and matplotlib, when installed, and holds a
  million small objects) or ``threads`` (it runs four threads that wake every millisecond,
  like a progress or sampling thread).
- ``spin``: ``on`` or ``off`` (poolkit's workers do not poll their inbox before blocking;
  set through a ``sitecustomize`` in every process; no effect on the peers).
- ``method``: ``fork``, ``spawn``, ``forkserver`` or ``default`` (each pool's own default).
- ``task``: ``module`` (the task functions come from a module of their own) or ``main``
  (the measuring script defines them itself, in ``__main__``: poolkit ships them by value
  with cloudpickle; the stdlib pools pickle them by name, which only a forked worker finds).
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

#: ``candidate`` is poolkit from ``--candidate DIR`` (a patched checkout), beside this one.
IMPLS = ("poolkit", "candidate", "stdlib", "mppool", "loky")
TITLES = {
    "poolkit": "poolkit",
    "candidate": "candidate",
    "stdlib": "stdlib PPE",
    "mppool": "mp.Pool",
    "loky": "loky",
}
WORKLOADS = ("latency", "burst", "map1", "cold")
DEFAULTS = {
    "warmup": "full",
    "start": "ready",
    "stop": "result",
    "hogs": "0",
    "nice": "0",
    "bytecode": "compiled",
    "parent": "plain",
    "spin": "on",
    "method": "fork",
    "task": "module",
}
CHOICES = {
    "warmup": ("full", "workers", "none"),
    "start": ("ready", "construct", "import", "lazy"),
    "stop": ("result", "shutdown"),
    "bytecode": ("compiled", "none"),
    "parent": ("plain", "harness", "big", "threads"),
    "spin": ("on", "off"),
    "method": ("fork", "spawn", "forkserver", "default"),
    "task": ("module", "main"),
}
SIZES = {"latency": 2000, "burst": 20000, "map1": 10000, "cold": 1}
QUICK_SIZES = {"latency": 200, "burst": 2000, "map1": 1000, "cold": 1}
#: (key in the child's values, label, unit)
HEADLINES = {
    "latency": [
        ("median_us", "latency submit(noop).result(), median", "us"),
        ("mean_us", "latency, the timed span / round trips (as a timeit loop reports it)", "us"),
    ],
    "burst": [("rate", "submit burst, {n:,} no-ops waited together", "tasks/s")],
    "map1": [("rate", "map {n:,} tiny tasks, chunksize 1", "tasks/s")],
    "cold": [
        ("first_ms", "cold start -> first result (clock as set)", "ms"),
        ("from_import_ms", "cold start from the import statement -> first result", "ms"),
    ],
}
TIMEOUT = 120.0

TASKS_MODULE = '''"""Task functions of the user harness: a user's own small module."""
import os
import time


def noop():
    return None


def ident(x):
    return x


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()
'''

# Runs in every process started with the harness's PYTHONPATH; only acts when asked to.
SITECUSTOMIZE = """import os
if os.environ.get("UH_NO_SPIN"):
    from poolkit._worker import spin_wait
    spin_wait.SpinWait.before_read = lambda self: None
"""

# The measuring process. Stamps every step; the parent picks the headline from the settings.
CHILD = r"""
import json, os, statistics, sys, time
spec = json.loads(sys.argv[1])
c, impl, kind, n, workers = spec["cond"], spec["impl"], spec["workload"], spec["n"], spec["workers"]
impl = "poolkit" if impl == "candidate" else impl
method = None if c["method"] == "default" else c["method"]
clock = time.perf_counter
keep = []
if c["parent"] == "big":
    for name in ("numpy", "matplotlib.pyplot"):
        try:
            __import__(name)
        except ImportError:
            pass
    keep.append([str(i) for i in range(1000000)])
elif c["parent"] == "harness":
    # What a harness script's own code imports: the stdlib pool among them, so that the
    # stdlib's import is paid before any clock, and poolkit's is not.
    import argparse, concurrent.futures.process, multiprocessing.pool, subprocess, threading
elif c["parent"] == "threads":
    import threading
    halt = threading.Event()
    for _ in range(4):
        threading.Thread(target=lambda: [None for _ in iter(lambda: halt.wait(0.001), True)],
                         daemon=True).start()
if c["task"] == "main":
    # The functions a script defines for itself: they live in __main__.
    import types
    def noop():
        return None
    def ident(x):
        return x
    def sleep_pid(seconds):
        time.sleep(seconds)
        return os.getpid()
    uh_tasks = types.SimpleNamespace(noop=noop, ident=ident, sleep_pid=sleep_pid)
else:
    import uh_tasks
stamps = {"import": clock()}
if impl == "poolkit":
    import poolkit
    resolve = lambda: poolkit.Executor
elif impl == "stdlib":
    import concurrent.futures
    resolve = lambda: concurrent.futures.ProcessPoolExecutor
elif impl == "mppool":
    import multiprocessing
    resolve = lambda: multiprocessing.get_context(method).Pool
else:
    import loky
    resolve = lambda: loky.ProcessPoolExecutor
stamps["lazy"] = clock()
cls = None if c["start"] == "lazy" else resolve()
stamps["imported"] = clock()
if impl == "loky" and method == "fork":
    print(json.dumps({"skipped": "loky does not support fork"}))
    sys.exit(0)

def make():
    factory = cls or resolve()
    if impl == "poolkit":
        return factory(workers) if method is None else factory(workers, start_method=method)
    if impl == "stdlib":
        import multiprocessing
        return factory(workers, mp_context=multiprocessing.get_context(method))
    if impl == "mppool":
        return factory(workers)
    if method is None:
        return factory(workers)
    from loky.backend.context import get_context
    return factory(workers, context=get_context(method))

if impl == "mppool":
    submit = lambda pool, fn, *a: pool.apply_async(fn, a)
    wait = lambda h: h.get()
    map1 = lambda pool, fn, items: pool.map(fn, items, chunksize=1)
    def stop(pool):
        pool.close()
        pool.join()
else:
    submit = lambda pool, fn, *a: pool.submit(fn, *a)
    wait = lambda h: h.result()
    map1 = lambda pool, fn, items: list(pool.map(fn, items, chunksize=1))
    stop = lambda pool: pool.shutdown(wait=True)

def run(pool, count):
    if kind == "cold":
        wait(submit(pool, int))
    elif kind == "latency":
        samples = []
        for _ in range(count):
            t = clock()
            wait(submit(pool, uh_tasks.noop))
            samples.append(clock() - t)
        return samples
    elif kind == "burst":
        for h in [submit(pool, uh_tasks.noop) for _ in range(count)]:
            wait(h)
    else:
        map1(pool, uh_tasks.ident, range(count))
    return []

def warm(pool):
    seen = set()
    deadline = clock() + 30
    while len(seen) < workers and clock() < deadline:
        seen.update(wait(h) for h in [submit(pool, uh_tasks.sleep_pid, 0.002)
                                      for _ in range(workers)])
    if c["warmup"] == "full":
        run(pool, {"latency": 200, "burst": 1000, "map1": 500, "cold": 0}[kind])

timed_warm = kind != "cold" and c["start"] == "ready"
stamps["construct"] = clock()
pool = make()
stamps["constructed"] = clock()
if timed_warm and c["warmup"] != "none":
    warm(pool)
stamps["ready"] = clock()
samples = run(pool, n)
stamps["result"] = clock()
stop(pool)
stamps["shutdown"] = clock()
start = stamps["ready" if timed_warm else c["start"] if c["start"] != "ready" else "construct"]
elapsed = stamps[c["stop"]] - start
values = {"elapsed_ms": elapsed * 1e3}
if kind == "cold":
    values["first_ms"] = elapsed * 1e3
    values["from_import_ms"] = (stamps["result"] - stamps["import"]) * 1e3
elif kind == "latency":
    samples.sort()
    values["median_us"] = statistics.median(samples) * 1e6
    values["p99_us"] = samples[int(len(samples) * 0.99)] * 1e6
    values["mean_us"] = elapsed * 1e6 / n
else:
    values["rate"] = n / elapsed
steps = ("import", "lazy", "imported", "construct", "constructed", "ready", "result", "shutdown")
parts = {f"{a}->{b}": (stamps[b] - stamps[a]) * 1e3 for a, b in zip(steps, steps[1:])}
module = {"stdlib": "concurrent.futures.process", "mppool": "multiprocessing.pool"}.get(impl, impl)
where = getattr(sys.modules.get(module), "__file__", "")
print(json.dumps({"values": values, "parts_ms": parts, "file": where}))
"""

HOG = (
    "import os, sys\nos.nice({nice})\nsys.stdout.write('spinning\\n')\nsys.stdout.flush()\n"
    "while True:\n    pass\n"
)


def parse_settings(items: list[str]) -> dict[str, str]:
    """``["hogs=2", ...]`` -> ``{"hogs": "2"}``, checked against the known keys and values."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"unknown setting {item!r}; keys: {', '.join(DEFAULTS)}")
        if key in ("hogs", "nice") and not value.isdigit():
            raise SystemExit(f"{key} must be a whole number, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise SystemExit(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        settings[key] = value
    return settings


def conditions(base: dict[str, str], vary: list[str]) -> list[dict[str, str]]:
    """Every combination of the ``--vary`` values, over the defaults and ``--set``."""
    axes = []
    for item in vary:
        key, _, values = item.partition("=")
        axes.append([f"{key}={value}" for value in values.split(",")])
    return [
        {**DEFAULTS, **base, **parse_settings(list(combo))} for combo in itertools.product(*axes)
    ]


def label(cond: dict[str, str], varied: list[str]) -> str:
    """The condition's name in the report: the settings that vary, or ``as set``."""
    names = [f"{key}={cond[key]}" for key in varied]
    return ", ".join(names) or "as set"


def prepare(scratch: Path, checkout: Path, candidate: Optional[Path] = None) -> dict[str, Path]:
    """The tasks module and two copies of poolkit: compiled (pip-style) and source only.

    With ``candidate``, two copies of that checkout's poolkit too (``candidate-compiled``...).
    """
    tasks = scratch / "tasks"
    tasks.mkdir()
    (tasks / "uh_tasks.py").write_text(TASKS_MODULE)
    (tasks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    compileall.compile_dir(str(tasks), quiet=2)
    sites = {}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    sources = {"": checkout, **({"candidate-": candidate} if candidate else {})}
    for prefix, source in sources.items():
        for name in ("compiled", "none"):
            site = scratch / f"site-{prefix}{name}"
            shutil.copytree(source / "poolkit", site / "poolkit", ignore=ignore)
            if name == "compiled":
                compileall.compile_dir(str(site), quiet=2)
            sites[prefix + name] = site
    return {"tasks": tasks, **sites}


def start_hogs(count: int, nice: int = 0) -> list[subprocess.Popen[bytes]]:
    """Processes spinning in pure Python; returns once each of them runs its loop."""
    hogs = []
    for _ in range(count):
        code = HOG.format(nice=nice)
        hog = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert hog.stdout is not None
        hog.stdout.readline()
        hogs.append(hog)
    return hogs


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        os.kill(hog.pid, signal.SIGKILL)
        hog.wait()
        if hog.stdout is not None:
            hog.stdout.close()


def measure(
    impl: str, workload: str, cond: dict[str, str], n: int, workers: int, paths: dict[str, Path]
) -> dict[str, Any]:
    """One measurement in a fresh ``python -c`` process, with the condition's hogs beside it."""
    env = dict(os.environ)
    site = paths[("candidate-" if impl == "candidate" else "") + cond["bytecode"]]
    env["PYTHONPATH"] = os.pathsep.join([str(paths["tasks"]), str(site)])
    env.pop("UH_NO_SPIN", None)
    if cond["spin"] == "off":
        env["UH_NO_SPIN"] = "1"
    if cond["bytecode"] == "none":
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    spec = {"impl": impl, "workload": workload, "cond": cond, "n": n, "workers": workers}
    load = os.getloadavg()[0]
    hogs = start_hogs(int(cond["hogs"]), int(cond["nice"]))
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            env=env,
            # Not the checkout: ``python -c`` puts the working directory first on sys.path.
            cwd=str(paths["tasks"]),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT:g} s", "load": load}
    finally:
        stop_hogs(hogs)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {done.returncode}: {tail}", "load": load}
    result: dict[str, Any] = json.loads(lines[-1])
    result["load"] = load
    return result


def machine_line(args: argparse.Namespace) -> str:
    versions = []
    for dist in ("cloudpickle", "loky"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return (
        f"{os.cpu_count()} CPUs ({platform.machine()}) | CPython {platform.python_version()} | "
        f"{platform.platform()} | poolkit from {args.checkout}"
        + (f", candidate from {args.candidate}" if args.candidate else "")
        + f" | {', '.join(versions)} | "
        f"{args.workers} workers, {args.reps} fresh-process repetitions, interleaved"
    )


def figure(value: float) -> str:
    """Three significant figures, digits grouped: ``61,300``, ``141``, ``7.75``."""
    if abs(value) >= 100:
        return f"{round(value, 2 - len(str(int(abs(value))))):,.0f}"
    return f"{value:.3g}"


def spread(values: list[float]) -> str:
    """``median (min-max)``."""
    median = statistics.median(values)
    return f"{figure(median)} ({figure(min(values))}-{figure(max(values))})"


def render(results: list[dict[str, Any]], args: argparse.Namespace, varied: list[str]) -> str:
    """One markdown table per workload: a row per condition, a column per implementation."""
    out = []
    impls = [impl for impl in IMPLS if impl in args.impls]
    for workload, (key, title, unit) in ((w, h) for w in args.workloads for h in HEADLINES[w]):
        size = (QUICK_SIZES if args.quick else SIZES)[workload]
        out.append(f"\n### {title.format(n=size)} ({unit}; ratio = poolkit / stdlib PPE)\n")
        head = ["condition", *(TITLES[i] for i in impls), "poolkit/stdlib", "load"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for cond_label in dict.fromkeys(r["label"] for r in results):
            rows = [r for r in results if r["label"] == cond_label and r["workload"] == workload]
            cells, medians = [], {}
            for impl in impls:
                mine = [r for r in rows if r["impl"] == impl]
                values = [r["values"][key] for r in mine if "values" in r]
                problems = {r.get("skipped") or r.get("error") for r in mine} - {None}
                if values:
                    medians[impl] = statistics.median(values)
                    cells.append(spread(values))
                else:
                    cells.append(f"n/a ({'; '.join(sorted(problems))[:60]})")
            ratio = ""
            if "poolkit" in medians and "stdlib" in medians:
                ratio = f"{medians['poolkit'] / medians['stdlib']:.2f}x"
            if "poolkit" in medians and "candidate" in medians:
                ratio += f" (candidate/poolkit {medians['candidate'] / medians['poolkit']:.2f}x)"
            loads = [r["load"] for r in rows]
            load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else ""
            out.append(f"| {cond_label} | " + " | ".join([*cells, ratio, load]) + " |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--impls", default="poolkit,stdlib,mppool,loky", help=f"comma-separated, of {IMPLS}"
    )
    parser.add_argument("--candidate", type=Path, help="a patched checkout: impl 'candidate'")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument(
        "--checkout", type=Path, default=Path(__file__).resolve().parent.parent, help="poolkit's"
    )
    args = parser.parse_args(argv)
    args.impls = [i for i in args.impls.split(",") if i]
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(args.impls) - set(IMPLS) | set(args.workloads) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown implementation or workload: {', '.join(sorted(unknown))}")
    if ("candidate" in args.impls) != (args.candidate is not None):
        raise SystemExit("--candidate DIR and the implementation 'candidate' go together")
    varied = [item.partition("=")[0] for item in args.vary]
    conds = conditions(parse_settings(args.set), args.vary)
    cells = [(i, w, c) for w in args.workloads for c in conds for i in args.impls]
    sizes = QUICK_SIZES if args.quick else SIZES
    print(machine_line(args))
    print(f"load at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="user-harness-") as scratch:
        paths = prepare(Path(scratch), args.checkout, args.candidate)
        for rep in range(args.reps):
            # A, B, ... then ..., B, A: a drift of the machine's state lands on every cell.
            for impl, workload, cond in cells if rep % 2 == 0 else cells[::-1]:
                result = measure(impl, workload, cond, sizes[workload], args.workers, paths)
                result.update(impl=impl, workload=workload, label=label(cond, varied), rep=rep)
                result["cond"] = cond
                results.append(result)
                if "error" in result:
                    print(f"  {impl} {workload} {result['label']}: {result['error']}", flush=True)
    print(f"load at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = {k: v for k, v in {**DEFAULTS, **parse_settings(args.set)}.items() if k not in varied}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in base.items()))
    print(render(results, args, varied))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(args), "results": results}))
    return 0 if all("values" in r or "skipped" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
