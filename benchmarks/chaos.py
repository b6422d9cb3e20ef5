"""Chaos soak: thousands of mixed tasks while another thread SIGKILLs random workers.

    python benchmarks/chaos.py --minutes 3 --workers 2 --start-method forkserver

Mixed into the stream, a few hostile tasks (``--no-hostile`` leaves them out) attack the
pool from inside their worker: garbage on the result pipe, an answer sent nowhere, a fork
that returns into the worker loop, a child process left running, with or without the
worker then killing itself.

Checks, and prints: every future resolved; every task had its expected outcome (a right
result, or for a hostile task the WorkerCrashedError it earns), a WorkerCrashedError being
excused only on a worker the chaos thread killed; no worker died unexplained (a respawn
storm); nothing hung; at the end no worker process, descriptor, /dev/shm entry or other
descendant of this process is left, nor a child a task started on a worker that ended
abnormally. Exit status 1 on a violation.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from concurrent import futures
from typing import Any, Optional

import poolkit
from poolkit import Executor, WorkerCrashedError

#: Tasks submitted at once; the next batch waits until every future of this one resolved.
BATCH = 2000
#: How long a batch may take before its unresolved futures count as hung.
HANG_SECONDS = 300.0
#: Share of the stream each hostile kind takes, in this order (the rest is mixed_task).
HOSTILE_RATES = {
    "stray-frame": 0.003,
    "stray-header": 0.003,
    "silenced": 0.003,
    "fork": 0.005,
    "child": 0.005,
    "child-then-kill": 0.003,
}
#: How long the child a task starts would live if nothing killed it.
CHILD_SECONDS = 30
#: A whole frame whose nine bytes are no message.
NINE_BYTES = b"\x00\x00\x00\x09garbage!!"
#: The long form of the length prefix, announcing a frame of 2**50 bytes.
HUGE_HEADER = b"\xff\xff\xff\xff" + struct.pack("!Q", 2**50)


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


def _result_pipes(pool_pid: int) -> list[int]:
    """In a worker: its descriptors of its result pipe, the write ends of pipes the pool reads.

    Every write-only pipe would be too many: a worker also holds the resource tracker's pipe
    and, under fork, the pipes the benchmark itself inherited (from the shell that started
    it); garbage there would hit them, not the pool. multiprocessing's sentinel pipe matches
    too, harmlessly: poolkit watches its workers through pidfds.
    """
    read_by_pool = set()
    for name in os.listdir(f"/proc/{pool_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pool_pid}/fd/{name}")
            with open(f"/proc/{pool_pid}/fdinfo/{name}") as info:
                flags = int(info.read().split("flags:", 1)[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            continue  # closed while we looked
        if target.startswith("pipe:") and flags & os.O_ACCMODE == os.O_RDONLY:
            read_by_pool.add(target)
    pipes = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target in read_by_pool and flags & os.O_ACCMODE == os.O_WRONLY:
            pipes.append(fd)
    if not pipes:
        raise RuntimeError(f"worker {os.getpid()}: no pipe read by process {pool_pid} found")
    return pipes


def stray_bytes_task(pool_pid: int, data: bytes) -> int:
    """Write ``data`` onto the worker's result pipe, then return normally."""
    pipes = _result_pipes(pool_pid)
    for fd in pipes:
        os.write(fd, data)
    return len(pipes)


def silenced_task(pool_pid: int) -> int:
    """Put /dev/null over the worker's result pipe, then return: the answer goes nowhere."""
    pipes = _result_pipes(pool_pid)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in pipes:
            os.dup2(null, fd)
    finally:
        os.close(null)
    return len(pipes)


def fork_task(i: int) -> int:
    """Fork; the child returns a wrong value into the worker loop, the parent the right one."""
    with warnings.catch_warnings():
        # Python 3.12+ warns of forking with threads (the worker's parent watcher): the
        # child only returns, taking no lock that thread could hold.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        return -1 - i
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"the forked child of worker {os.getpid()} ended with status {status}")
    return i * i


def child_task(i: int, scratch: str, then_die: bool) -> int:
    """Start a long ``sleep`` and leave it running; with ``then_die``, SIGKILL the worker."""
    child = subprocess.Popen(["sleep", str(CHILD_SECONDS)])
    # Recorded before anything else can happen to the worker: the end of the run checks
    # that the child died with it unless the worker ended normally.
    line = f"{os.getpid()} {child.pid} {_start_time(child.pid)}\n".encode()
    fd = os.open(os.path.join(scratch, "children"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    if os.getpgid(child.pid) != os.getpgrp():
        raise RuntimeError(f"the child {child.pid} is not in its worker's process group")
    if then_die:
        os.kill(os.getpid(), signal.SIGKILL)
    return i * i


def _start_time(pid: int) -> Optional[str]:
    """Clock ticks after boot at which ``pid`` started (tells a reused pid apart), or None
    if it is gone; a zombie counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _submit(ex: Executor, kind: str, i: int, scratch: str) -> futures.Future[Any]:
    me = os.getpid()
    if kind == "mixed":
        return ex.submit(mixed_task, i)
    if kind == "stray-frame":
        return ex.submit(stray_bytes_task, me, NINE_BYTES)
    if kind == "stray-header":
        return ex.submit(stray_bytes_task, me, HUGE_HEADER)
    if kind == "silenced":
        return ex.submit(silenced_task, me)
    if kind == "fork":
        return ex.submit(fork_task, i)
    return ex.submit(child_task, i, scratch, kind == "child-then-kill")


def _pick(rng: random.Random, hostile: bool) -> str:
    if hostile:
        r = rng.random()
        for kind, rate in HOSTILE_RATES.items():
            if r < rate:
                return kind
            r -= rate
    return "mixed"


def _classify(kind: str, i: int, f: futures.Future[Any], chaos_killed: set[int]) -> Optional[str]:
    """What was wrong with the outcome of task ``i``, or None if it was the one expected.

    A task whose worker the chaos thread killed may fail with WorkerCrashedError whatever
    it was; the caller counts those apart.
    """
    error = f.exception()
    if kind in ("stray-frame", "stray-header"):
        if isinstance(error, WorkerCrashedError) and "result pipe held" in str(error):
            return None
    elif kind in ("silenced", "child-then-kill"):
        if isinstance(error, WorkerCrashedError):
            return None
    elif error is None and f.result() == i * i:
        return None
    if isinstance(error, WorkerCrashedError) and "after an earlier task" in str(error):
        # Started on a worker after a hostile task wrote into its pipe: its answer was
        # behind the stray bytes. Counted apart (before the chaos kills: such a worker may
        # have been killed by both, and a chaos kill fails only the task it interrupted).
        return "collateral"
    if isinstance(error, WorkerCrashedError) and error.pid in chaos_killed:
        return "chaos"
    if error is None:
        return f"returned {f.result()!r}"
    return f"failed with {error!r}"


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


def _helpers() -> set[int]:
    """The fork server and the resource tracker: process-wide, they outlive pools.

    Named by pid, not by command line: a worker forked from the server has the server's.
    """
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    tracker = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    return {pid for pid in (server, tracker) if pid}


def _task_children(scratch: str, ended_abnormally: set[int]) -> tuple[list[str], int]:
    """Kill the children tasks left running; return those that should have died with their
    worker, described, and how many outlived a worker that exited normally (at shutdown:
    documented, nothing kills them)."""
    try:
        with open(os.path.join(scratch, "children")) as f:
            records = [line.split() for line in f]
    except FileNotFoundError:
        return [], 0
    late = []
    normal = 0
    deadline = time.monotonic() + 5.0  # the pool's SIGKILL to the group may still be landing
    for worker, child, start in records:
        pid = int(child)
        while _start_time(pid) == start and int(worker) in ended_abnormally:
            if time.monotonic() > deadline:
                late.append(f"{pid} ({_cmdline(pid).strip()}), started by worker {worker}")
                break
            time.sleep(0.01)
        if _start_time(pid) == start:
            normal += int(worker) not in ended_abnormally
            os.kill(pid, signal.SIGKILL)
    return late, normal


def run(minutes: float, workers: int, method: str, seed: int, hostile: bool) -> int:
    rng = random.Random(seed)
    stream = random.Random(seed + 1)
    # The fork server is process-wide and outlives pools: start it first so its
    # descriptors are not counted as leaks.
    if method == "forkserver":
        import multiprocessing.forkserver

        multiprocessing.forkserver.ensure_running()
    scratch = tempfile.mkdtemp(prefix="poolkit-chaos-")
    fds_before = set(os.listdir("/proc/self/fd"))
    shm_before = set(os.listdir("/dev/shm"))
    started = time.monotonic()
    deadline = started + minutes * 60
    submitted = kills = 0
    sent: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    excused: Counter[str] = Counter()
    collateral: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    chaos_killed: set[int] = set()
    crashed_pids: set[int] = set()  # workers a WorkerCrashedError names
    seen: set[int] = set()
    final: set[int] = set()
    problems: list[str] = []
    with Executor(max_workers=workers, start_method=method) as ex:
        stop = threading.Event()

        def chaos() -> None:
            nonlocal kills
            while not stop.is_set():
                pids = list(ex._dispatcher._workers)
                if pids:
                    pid = rng.choice(pids)
                    try:
                        os.kill(pid, signal.SIGKILL)
                        kills += 1
                        chaos_killed.add(pid)
                    except ProcessLookupError:
                        pass
                stop.wait(rng.uniform(0.05, 0.5))

        def watch() -> None:
            # Often enough to see a worker that lives a few milliseconds: a respawn storm
            # shows as workers that died with no kill and no task to blame.
            while not stop.is_set():
                seen.update(ex._dispatcher._workers)
                stop.wait(0.005)

        threads = [threading.Thread(target=chaos, name="chaos")]
        threads.append(threading.Thread(target=watch, name="watch"))
        for thread in threads:
            thread.start()
        try:
            batch = 0
            while time.monotonic() < deadline:
                kinds = {i: _pick(stream, hostile) for i in range(batch, batch + BATCH)}
                fs = {i: _submit(ex, kind, i, scratch) for i, kind in kinds.items()}
                batch += BATCH
                submitted += len(fs)
                sent.update(kinds.values())
                _, not_done = futures.wait(fs.values(), timeout=HANG_SECONDS)
                if not_done:
                    hung = [f"{i} ({kinds[i]})" for i, f in fs.items() if not f.done()]
                    problems.append(
                        f"{len(hung)} futures unresolved after {HANG_SECONDS:.0f} s: "
                        + ", ".join(hung[:20])
                    )
                    # Said now: the shutdown below may hang on the same fault.
                    print("\nPROBLEM:", problems[-1], file=sys.stderr, flush=True)
                    break
                for i, f in fs.items():
                    error = f.exception()
                    if isinstance(error, WorkerCrashedError) and error.pid is not None:
                        crashed_pids.add(error.pid)
                    wrong = _classify(kinds[i], i, f, chaos_killed)
                    if wrong is None:
                        expected[kinds[i]] += 1
                    elif wrong == "chaos":
                        excused[kinds[i]] += 1
                    elif wrong == "collateral":
                        collateral[kinds[i]] += 1
                    else:
                        unexpected[kinds[i]] += 1
                        problems.append(f"task {i} ({kinds[i]}) {wrong}")
                print(
                    f"\r{time.monotonic() - started:6.1f} s  tasks {submitted}"
                    f"  hostile {submitted - sent['mixed']}  crashed {sum(excused.values())}"
                    f"  kills {kills}  workers {len(seen)}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            final = set(ex._dispatcher._workers)
            seen |= final
    print(file=sys.stderr)
    if excused["mixed"] > kills:
        problems.append(
            f"{excused['mixed']} tasks reported crashed but only {kills} kills were sent"
        )
    # Every worker but the last ones ended; each end needs a cause: a kill, or a task that
    # was charged with it. Workers ending for nothing, over and over, are a respawn storm.
    unexplained = seen - final - chaos_killed - crashed_pids
    if unexplained:
        problems.append(
            f"{len(unexplained)} workers ended with no kill and no task charged: "
            f"{sorted(unexplained)[:20]}"
        )
    late, outlived = _task_children(scratch, chaos_killed | crashed_pids)
    shutil.rmtree(scratch, ignore_errors=True)
    if late:
        problems.append(f"children of tasks outlived their worker's abnormal end: {late[:10]}")
    leftover = _children() - _helpers()
    if leftover:
        problems.append(
            "processes left: " + ", ".join(f"{p} ({_cmdline(p).strip()})" for p in sorted(leftover))
        )
    new_fds = set(os.listdir("/proc/self/fd")) - fds_before
    if len(new_fds) > 1:  # the listing itself holds one
        problems.append(f"descriptors left: {sorted(new_fds)}")
    shm = {e for e in set(os.listdir("/dev/shm")) - shm_before if str(os.getpid()) in e}
    if shm:
        problems.append(f"/dev/shm entries left: {sorted(shm)}")
    elapsed = time.monotonic() - started
    print(
        f"poolkit {poolkit.__version__} {method}, {workers} workers, Python "
        f"{sys.version.split()[0]}: {submitted} tasks in {elapsed:.1f} s, "
        f"{kills} SIGKILLs sent, {len(seen)} worker pids seen"
    )
    print(
        f"  {'kind':<16}{'sent':>8}{'expected':>10}{'chaos-hit':>11}{'collateral':>12}"
        f"{'unexpected':>12}"
    )
    for kind in ["mixed", *HOSTILE_RATES]:
        if sent[kind]:
            print(
                f"  {kind:<16}{sent[kind]:>8}{expected[kind]:>10}{excused[kind]:>11}"
                f"{collateral[kind]:>12}{unexpected[kind]:>12}"
            )
    print(
        f"  chaos-hit: failed with WorkerCrashedError on a worker the chaos thread killed;"
        f" collateral: started on a worker after a stray-bytes task wrote into its pipe;"
        f" children left by workers that exited normally at shutdown (killed here): {outlived}"
    )
    for problem in problems[:50]:
        print("PROBLEM:", problem)
    if len(problems) > 50:
        print(f"PROBLEM: ... and {len(problems) - 50} more")
    print(f"violations: {len(problems)}")
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
    parser.add_argument(
        "--no-hostile",
        dest="hostile",
        action="store_false",
        help="only the mixed tasks, none that attack the pool from inside a worker",
    )
    args = parser.parse_args()
    return run(args.minutes, args.workers, args.start_method, args.seed, args.hostile)


if __name__ == "__main__":
    sys.exit(main())
