"""Chaos soak: thousands of mixed tasks while another thread SIGKILLs random workers.

    python benchmarks/chaos.py --minutes 3 --workers 2 --start-method forkserver

Checks, and prints: every future resolved; every task whose worker was not killed returned
the right result (each failure is a WorkerCrashedError); nothing hung; at the end no worker
process, descriptor or /dev/shm entry of this process is left. Exit status 1 on a violation.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from concurrent import futures

import poolkit
from poolkit import Executor, WorkerCrashedError


def mixed_task(i: int) -> int:
    """Mostly instant, sometimes a few milliseconds, rarely 50 ms of pure-Python work."""
    r = i % 100
    if r == 0:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
    elif r < 10:
        time.sleep(0.003)
    return i * i


def _children() -> set[int]:
    me = os.getpid()
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    table[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, stack = set(), [me]
    while stack:
        parent = stack.pop()
        for pid, ppid in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                stack.append(pid)
    return found


def run(minutes: float, workers: int, method: str, seed: int) -> int:
    rng = random.Random(seed)
    # The fork server is process-wide and outlives pools: start it first so its
    # descriptors are not counted as leaks.
    if method == "forkserver":
        import multiprocessing.forkserver

        multiprocessing.forkserver.ensure_running()
    fds_before = set(os.listdir("/proc/self/fd"))
    shm_before = set(os.listdir("/dev/shm"))
    started = time.monotonic()
    deadline = started + minutes * 60
    submitted = succeeded = crashed = kills = 0
    problems: list[str] = []
    with Executor(max_workers=workers, start_method=method) as ex:
        stop = threading.Event()

        def chaos() -> None:
            nonlocal kills
            while not stop.is_set():
                pids = list(ex._dispatcher._workers)
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
                stop.wait(rng.uniform(0.05, 0.5))

        killer = threading.Thread(target=chaos, name="chaos")
        killer.start()
        try:
            batch = 0
            while time.monotonic() < deadline:
                fs = {i: ex.submit(mixed_task, i) for i in range(batch, batch + 2000)}
                batch += 2000
                submitted += len(fs)
                _, not_done = futures.wait(fs.values(), timeout=300)
                if not_done:
                    problems.append(f"{len(not_done)} futures unresolved after 300 s")
                    break
                for i, f in fs.items():
                    error = f.exception()
                    if error is None:
                        if f.result() != i * i:
                            problems.append(f"task {i} returned {f.result()!r}")
                        succeeded += 1
                    elif isinstance(error, WorkerCrashedError):
                        crashed += 1
                    else:
                        problems.append(f"task {i} failed with {error!r}")
                print(
                    f"\r{time.monotonic() - started:6.1f} s  tasks {submitted}  ok {succeeded}"
                    f"  crashed {crashed}  kills {kills}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            stop.set()
            killer.join()
    print(file=sys.stderr)
    if crashed > kills:
        problems.append(f"{crashed} tasks reported crashed but only {kills} kills were sent")
    leftover = _children()
    leftover -= {
        p for p in leftover if "forkserver" in _cmdline(p) or "resource_tracker" in _cmdline(p)
    }
    if leftover:
        problems.append(f"processes left: {sorted(leftover)}")
    new_fds = set(os.listdir("/proc/self/fd")) - fds_before
    if len(new_fds) > 1:  # the listing itself holds one
        problems.append(f"descriptors left: {sorted(new_fds)}")
    shm = {e for e in set(os.listdir("/dev/shm")) - shm_before if str(os.getpid()) in e}
    if shm:
        problems.append(f"/dev/shm entries left: {sorted(shm)}")
    elapsed = time.monotonic() - started
    print(
        f"poolkit {poolkit.__version__} {method}, {workers} workers, Python "
        f"{sys.version.split()[0]}: {submitted} tasks in {elapsed:.1f} s, {succeeded} ok, "
        f"{crashed} failed with WorkerCrashedError, {kills} SIGKILLs sent"
    )
    for problem in problems:
        print("PROBLEM:", problem)
    print("result:", "FAIL" if problems else "PASS")
    return 1 if problems else 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--start-method", default=poolkit.default_start_method(), choices=poolkit.start_methods()
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return run(args.minutes, args.workers, args.start_method, args.seed)


if __name__ == "__main__":
    sys.exit(main())
