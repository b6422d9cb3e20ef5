"""Third-party programs, stock and on poolkit: same output, and their wall and CPU times.

    python benchmarks/clients.py [--quick] [--repeat N] [--only NAME ...]

Each client runs in a fresh interpreter, stock and then on poolkit, interleaved ``--repeat``
times; the table shows the median wall time and the median CPU time of the whole process
tree (the program and every worker, from ``RUSAGE_CHILDREN``). Where a program builds its
own pool it runs under ``python -m poolkit run``; where it takes a pool, it is given a
``poolkit.Executor``. The outputs of the two runs must be identical, else the client FAILs
(exit code 1).

Clients (the programs come with ``pip install 'poolkit[clients]'``; a missing one is
skipped with that hint):

- ``black``: reformats a copy of a real source tree (files of the installed ``dask`` package) with
  two workers; the outputs are the digests of the reformatted trees.
- ``tqdm``: ``tqdm.contrib.concurrent.process_map`` with its multiprocessing lock; the
  output is the results' digest and the bar's last state, which must be at its total.
- ``dask``: a ``dask.bag`` and a ``dask.delayed`` graph, with the pool given as
  ``scheduler=`` and as ``dask.config.set(pool=...)``.
- ``asyncio``: ``loop.run_in_executor`` over many calls, and one cancelled while queued.
- ``logging``: the logging cookbook's pattern: workers log through a ``QueueHandler`` (set up
  by an initializer with a ``multiprocessing.Queue``, and by a task given a Manager queue)
  to a listener in the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
#: The start method of poolkit's side (``--start-method``); unset: poolkit's default.
METHOD_ENV = "POOLKIT_CLIENTS_START_METHOD"
INSTALL_HINT = "pip install 'poolkit[clients]'"
SUMMARY = re.compile(r"poolkit run: (\d+) task\(s\) run on poolkit .*start method ([\w, ]+)\)")


# ------------------------------------------------------------------ programs (child side)


def _work(x: int) -> int:
    """A small CPU-bound task (importable, so every pool can run it)."""
    total = 0
    for i in range(200):
        total = (total * 31 + x + i) % 1_000_003
    return total


def _pool(kind: str, workers: int) -> Any:
    if kind == "poolkit":
        import poolkit

        return poolkit.Executor(max_workers=workers, start_method=os.environ.get(METHOD_ENV))
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers)


def program_tqdm(size: int, _pool_kind: str) -> str:
    from tqdm.contrib.concurrent import process_map

    bar = io.StringIO()
    results = process_map(_work, range(size), max_workers=2, chunksize=1, file=bar, ascii=True)
    last = bar.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    progress = re.search(r"(\d+)/(\d+)", last)
    assert progress is not None, last
    return f"results {_digest(results)}; bar {progress[0]}"


def program_dask(size: int, pool_kind: str) -> str:
    import dask
    import dask.bag

    lines = []
    with _pool(pool_kind, 2) as pool:
        bag = dask.bag.from_sequence(range(size), npartitions=16).map(_work)
        lines.append(f"bag scheduler= {bag.sum().compute(scheduler=pool)}")
        parts = [dask.delayed(_work)(i) for i in range(min(size, 400))]
        total = dask.delayed(sum)(parts)
        lines.append(f"delayed scheduler= {total.compute(scheduler=pool)}")
        with dask.config.set(pool=pool):
            counts = bag.frequencies().compute(scheduler="processes")
        lines.append(f"bag config pool= {_digest(sorted(counts))}")
    return "\n".join(lines)


def program_asyncio(size: int, pool_kind: str) -> str:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        with _pool(pool_kind, 2) as pool:
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, _work, i) for i in range(size))
            )
            # Two calls hold both workers; the calls queued behind them are cancelled at
            # once: every await must raise CancelledError, and the pool must go on.
            blockers = [loop.run_in_executor(pool, time.sleep, 0.3) for _ in range(2)]
            queued = [loop.run_in_executor(pool, _work, -i) for i in range(10)]
            for call in queued:
                call.cancel()
            outcomes = await asyncio.gather(*queued, return_exceptions=True)
            cancelled = sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
            await asyncio.gather(*blockers)
            after = await loop.run_in_executor(pool, _work, 5)
        return f"results {_digest(results)}; cancelled {cancelled}/10; then {after}"

    return asyncio.run(main())


def _log_initializer(queue: Any) -> None:
    import logging
    import logging.handlers

    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.INFO)


def _log_task(x: int) -> int:
    import logging

    logging.getLogger("clients.worker").info("item %d -> %d", x, _work(x))
    return x


def _log_task_with_queue(queue: Any, x: int) -> int:
    _log_initializer(queue)  # the cookbook's ProcessPoolExecutor form: the queue per task
    return _log_task(x)


def program_logging(size: int, _pool_kind: str) -> str:
    import logging
    import logging.handlers
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    lines = []
    queue: Any = multiprocessing.Queue()
    listener = logging.handlers.QueueListener(queue, Collect())
    listener.start()
    with ProcessPoolExecutor(2, initializer=_log_initializer, initargs=(queue,)) as pool:
        list(pool.map(_log_task, range(size)))
    listener.stop()
    lines.append(f"initializer queue: {len(records)} records {_digest(sorted(records))}")
    records.clear()
    with multiprocessing.Manager() as manager:
        managed = manager.Queue()
        listener = logging.handlers.QueueListener(managed, Collect())
        listener.start()
        with ProcessPoolExecutor(2) as pool:
            for future in [pool.submit(_log_task_with_queue, managed, i) for i in range(size)]:
                future.result()
        listener.stop()
    lines.append(f"manager queue: {len(records)} records {_digest(sorted(records))}")
    return "\n".join(lines)


PROGRAMS: dict[str, Callable[[int, str], str]] = {
    "tqdm": program_tqdm,
    "dask": program_dask,
    "asyncio": program_asyncio,
    "logging": program_logging,
}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:16]


def tree_digest(root: Path) -> str:
    """A digest of every file's path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------ runs (parent side)


@dataclass
class Client:
    """One third-party program: what it needs, and how it runs stock and on poolkit."""

    name: str
    needs: tuple[str, ...]
    #: True: the program builds its pool (`poolkit run`); False: it is given one.
    builds_pool: bool
    quick_size: int
    full_size: int


CLIENTS = [
    Client("black", ("black", "dask"), True, 8, 60),
    Client("tqdm", ("tqdm",), True, 300, 2000),
    Client("dask", ("dask",), False, 2_000, 200_000),
    Client("asyncio", (), False, 200, 2000),
    Client("logging", (), True, 100, 2000),
]


@dataclass
class Run:
    output: str
    wall: float
    cpu: float
    poolkit_tasks: Optional[int] = None
    start_method: str = ""


def _timed(
    command: list[str], cwd: Optional[Path] = None, env: Optional[dict[str, str]] = None
) -> tuple[subprocess.CompletedProcess[str], float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    wall = time.perf_counter() - start
    _reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{proc.stderr}")
    return proc, wall, cpu


def _become_subreaper() -> None:
    # A fork server outlives the program by a moment and is never waited for by it, so its
    # CPU time and its workers' would be lost to init. As a subreaper, this process adopts
    # such orphans and, by reaping them, counts their time in RUSAGE_CHILDREN (Linux only).
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_orphans() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _with_summary(
    proc: subprocess.CompletedProcess[str], output: str, wall: float, cpu: float
) -> Run:
    run = Run(output, wall, cpu)
    found = SUMMARY.search(proc.stderr)
    if found:
        run.poolkit_tasks, run.start_method = int(found[1]), found[2]
    return run


def run_black(on_poolkit: bool, size: int, work: Path) -> Run:
    """black -W 2 over a fresh copy of the dask package (its first `size` files; 0: all)."""
    import dask

    source = Path(dask.__file__).parent
    tree = work / ("poolkit" if on_poolkit else "stock")
    shutil.rmtree(tree, ignore_errors=True)
    files = sorted(p for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files[:size] if size else files:
        target = tree / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    env = _environment()
    env["BLACK_CACHE_DIR"] = str(work / "cache" / str(time.monotonic_ns()))  # never skip a file
    runner = [sys.executable, *_poolkit_run()] if on_poolkit else [sys.executable]
    command = [*runner, "-m", "black", "-q", "-W", "2", "--line-length", "79", str(tree)]
    proc, wall, cpu = _timed(command, env=env)
    return _with_summary(proc, tree_digest(tree), wall, cpu)


def run_program(client: Client, on_poolkit: bool, size: int) -> Run:
    pool = "poolkit" if on_poolkit and not client.builds_pool else "stock"
    child = [str(HERE), "--child", client.name, str(size), pool]
    if on_poolkit and client.builds_pool:
        command = [sys.executable, *_poolkit_run(), *child]
    else:
        command = [sys.executable, *child]
    proc, wall, cpu = _timed(command, env=_environment())
    run = _with_summary(proc, proc.stdout.strip(), wall, cpu)
    if on_poolkit and not client.builds_pool:
        run.start_method = f"{os.environ.get(METHOD_ENV) or 'default'} (given)"
    return run


def _poolkit_run() -> list[str]:
    method = os.environ.get(METHOD_ENV)
    return ["-m", "poolkit", "run", *(["--start-method", method] if method else [])]


def missing(client: Client) -> list[str]:
    return [name for name in client.needs if importlib.util.find_spec(name) is None]


def measure(client: Client, quick: bool, repeat: int, work: Path) -> dict[str, Any]:
    size = client.quick_size if quick else client.full_size
    runs: dict[bool, list[Run]] = {False: [], True: []}
    for _ in range(repeat):
        for on_poolkit in (False, True):  # interleaved: load changes hit both alike
            if client.name == "black":
                runs[on_poolkit].append(run_black(on_poolkit, size, work))
            else:
                runs[on_poolkit].append(run_program(client, on_poolkit, size))
    outputs = {run.output for both in runs.values() for run in both}
    poolkit_run = runs[True][-1]
    ran_on_poolkit = not client.builds_pool or bool(poolkit_run.poolkit_tasks)
    ok = len(outputs) == 1 and ran_on_poolkit
    if client.name == "tqdm":
        bar = re.search(r"bar (\d+)/(\d+)", poolkit_run.output)
        ok = ok and bar is not None and bar[1] == bar[2]
    return {
        "client": client.name,
        "size": size,
        "same_output": len(outputs) == 1,
        "ok": ok,
        "stock_wall": statistics.median(r.wall for r in runs[False]),
        "stock_cpu": statistics.median(r.cpu for r in runs[False]),
        "poolkit_wall": statistics.median(r.wall for r in runs[True]),
        "poolkit_cpu": statistics.median(r.cpu for r in runs[True]),
        "poolkit_tasks": poolkit_run.poolkit_tasks,
        "start_method": poolkit_run.start_method,
        "outputs": {"stock": runs[False][-1].output, "poolkit": poolkit_run.output},
    }


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("poolkit", "black", "tqdm", "dask"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (CI)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per side (default 1 quick, 3 full)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=[c.name for c in CLIENTS], help="these clients"
    )
    parser.add_argument("--start-method", help="poolkit's start method (default: its default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    _become_subreaper()
    if args.start_method:
        os.environ[METHOD_ENV] = args.start_method
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {_versions()}; "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"median of {repeat}, interleaved; CPU = program + workers"
    )
    header = ("client", "stock wall", "poolkit", "ratio", "stock CPU", "poolkit", "same", "ran")
    print("{:<8} {:>10} {:>8} {:>6} {:>10} {:>8}  {:<4} poolkit {}".format(*header))
    results = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="poolkit-clients-") as work:
        for client in CLIENTS:
            if args.only and client.name not in args.only:
                continue
            absent = missing(client)
            if absent:
                print(
                    f"{client.name:<8} skipped: {', '.join(absent)} not installed ({INSTALL_HINT})"
                )
                continue
            result = measure(client, args.quick, repeat, Path(work))
            results.append(result)
            failed |= not result["ok"]
            ran = (
                f"{result['poolkit_tasks']} tasks, {result['start_method']}"
                if result["poolkit_tasks"]
                else result["start_method"]
            )
            row = (
                client.name,
                f"{result['stock_wall']:.2f}s",
                f"{result['poolkit_wall']:.2f}s",
                f"{result['poolkit_wall'] / result['stock_wall']:.2f}x",
                f"{result['stock_cpu']:.2f}s",
                f"{result['poolkit_cpu']:.2f}s",
                "yes" if result["same_output"] else "NO",
                ran + ("" if result["ok"] else "  FAIL"),
            )
            print("{:<8} {:>10} {:>8} {:>6} {:>10} {:>8}  {:<4} {}".format(*row))
            if not result["ok"]:
                print(json.dumps(result["outputs"], indent=2))
    print(f"load after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(PROGRAMS[sys.argv[2]](int(sys.argv[3]), sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
