"""Where the microseconds of one ``submit(noop).result()`` round trip go, stage by stage.

    python benchmarks/roundtrip_profile.py                     # every start method, a table
    python benchmarks/roundtrip_profile.py --methods fork --rounds 3 --json /tmp/rt.json
    python benchmarks/roundtrip_profile.py --pyspy /path/to/py-spy   # + sampling profiles
    python benchmarks/roundtrip_profile.py --loop burst --method fork --seconds 10  # for a profiler
    python benchmarks/roundtrip_profile.py --summarize out.raw --sidecar out.json

For each start method, on warm ``poolkit.Executor(2, start_method=M)`` pools and a module-level
no-op, in interleaved rounds (medians over every sample):

- **stages**: poolkit's functions are wrapped with timers at run time (nothing in poolkit is
  edited): in the caller's thread (``_call_task``, ``_send_direct`` or ``wake``, ``_send``,
  the inbox write, ``Future.set_running_or_notify_cancel``), in the worker (an initializer
  wraps the worker loop: the frame read, ``decode_batch``, ``_run``, the reply write) and in
  the dispatcher thread (``select``, ``read_frames``, ``decode_message``, ``resolve``,
  ``Future.set_result``). Timestamps
  come from ``perf_counter_ns`` (CLOCK_MONOTONIC: one clock for every process), so the gaps
  between processes are the pipes and wakeups. Each round trip runs twice: with the direct
  send (the caller writes to an idle worker) and *queued* (``_send_direct`` disabled: the
  dispatcher thread assigns the task, as it does whenever a queue exists);
- **totals** of the same round trip without any wrapper, and of the stdlib
  ``ProcessPoolExecutor`` with the same start method;
- **CPU** per round trip of the parent and of the workers (``getrusage``, ``/proc``): user
  time is mostly Python code, system time is the kernel (system calls, wakeups); plus the
  voluntary context switches (each one a thread that blocked and had to be woken) and the
  time threads waited for a CPU (``schedstat``);
- **floors**: a raw ``os.pipe`` round trip between two processes and a thread-to-thread
  handoff (pipe + epoll + ``Future``), each on one CPU, on two CPUs and not pinned; the pipe
  again while a ``nice 19`` busy loop keeps a CPU from going idle; poolkit's own round trip
  in a process pinned, with its workers, to one CPU; and the in-process cost of each step on
  the same bytes (warm caches).

``--pyspy`` also runs the latency loop and bursts of 20,000 submits under
``py-spy record --nonblocking -r 2000 -f raw -s -t`` and prints each thread's top self-time
lines. py-spy samples threads waiting in ``select``, ``Condition.wait`` or a blocking read
as active: those samples are counted apart and left out of the shares.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import gc
import json
import linecache
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Optional

from poolkit import Executor
from poolkit import _executor_base as _frontend
from poolkit._pickling import serialization as _serialization
from poolkit._pool import dispatcher as _dispatcher
from poolkit._pool.tasks import TaskState, resolve
from poolkit._wire import frames as _transport
from poolkit._wire.messages import (
    MessageKind,
    batch_prefix,
    decode_batch,
    decode_message,
    encode_message,
)
from poolkit._worker import main as _worker
from poolkit.bench._pkbench.tasks import noop

clock = time.perf_counter_ns
METHODS = ("fork", "spawn", "forkserver")
MODES = ("direct", "queued")
WORKERS = 2


# --------------------------------------------------------------------------- worker side


def instrument_worker(out_dir: str) -> None:
    """Initializer: wrap the worker loop's steps with timers; dump them when the loop ends.

    Self-contained (it travels by value): it patches ``poolkit._worker.main`` in this worker only.
    One row per task: task id, read started, read returned, decoded, ``_run`` started,
    ``_run`` returned, reply write started, reply write returned.
    """
    import json
    import os
    import time

    from poolkit._worker import main as worker

    now = time.perf_counter_ns
    rows: list[list[int]] = []
    waiting: dict[int, list[int]] = {}
    read_at = [0, 0]
    replied: list[Optional[list[int]]] = [None]
    source, decode, run, serve = (
        worker.BlockingFrameSource,
        worker.decode_batch,
        worker._run,
        worker._serve,
    )

    class TimedSource(source):  # type: ignore[valid-type,misc]
        def next_frame(self) -> Any:
            start = now()
            frame = source.next_frame(self)
            read_at[0], read_at[1] = start, now()
            return frame

    def timed_decode(frame: Any) -> Any:
        records = decode(frame)
        end = now()
        for record in records:
            waiting[record.task_id] = [record.task_id, read_at[0], read_at[1], end, 0, 0, 0, 0]
        return records

    def timed_run(record: Any, *args: Any) -> bytes:
        row = waiting.pop(record.task_id)
        row[4] = now()
        reply: bytes = run(record, *args)
        row[5] = now()
        replied[0] = row
        return reply

    def timed_serve(inbox: Any, send: Callable[[bytes], None], *args: Any) -> None:
        def timed_send(data: bytes) -> None:
            row, start = replied[0], now()
            send(data)
            if row is not None:
                row[6], row[7] = start, now()
                rows.append(row)
                replied[0] = None

        try:
            serve(inbox, timed_send, *args)
        finally:
            with open(os.path.join(out_dir, f"worker-{os.getpid()}.json"), "w") as out:
                json.dump(rows, out)

    worker.BlockingFrameSource = TimedSource
    worker.decode_batch = timed_decode
    worker._run = timed_run
    worker._serve = timed_serve


W_TASK, W_READ0, W_READ1, W_DECODED, W_RUN0, W_RUN1, W_SEND0, W_SEND1 = range(8)


# --------------------------------------------------------------------------- parent side


class Patches:
    """Attributes replaced for a while, then put back."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any, bool]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        had = name in vars(owner)
        self._saved.append((owner, name, vars(owner).get(name), had))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self._saved:
            owner, name, old, had = self._saved.pop()
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


def no_direct_send(self: Any, task: Any) -> bool:
    """Stands in for ``Dispatcher._send_direct``: every task goes through the queue."""
    return False


class ParentProbe:
    """Timers around poolkit's functions in the parent; one dict of timestamps per task."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, int]] = {}
        self.current: dict[str, int] = {}
        self.caller = threading.get_ident()
        self.sending: Optional[list[dict[str, int]]] = None
        self.select_at = self.read_end = self.decoded_at = 0

    def install(self, executor: Executor, mode: str) -> Patches:
        probe, patches = self, Patches()
        rows = self.rows
        frontend, dispatcher = _frontend.TaskFrontend, _dispatcher.Dispatcher
        call_task, send, wake = frontend._call_task, dispatcher._send, dispatcher.wake
        send_direct = no_direct_send if mode == "queued" else dispatcher._send_direct
        flush, read_frames = _transport.FrameWriter.flush, _transport.FrameReader.read_frames
        decode, resolve_ = _dispatcher.decode_message, _dispatcher.resolve
        selector = executor._dispatcher._selector
        select = selector.select

        class TimedFuture(Future):  # type: ignore[type-arg]
            row: dict[str, int]

            def set_running_or_notify_cancel(self) -> bool:
                row = self.row
                row["srn0"] = clock()
                result = super().set_running_or_notify_cancel()
                row["srn1"] = clock()
                return result

            def set_result(self, result: Any) -> None:
                row = self.row
                row["sr0"] = clock()
                super().set_result(result)
                row["sr1"] = clock()

        def timed_call_task(self: Any, fn: Any, args: Any, kwargs: Any) -> Any:
            start = clock()
            future, task = call_task(self, fn, args, kwargs)
            row = {"call0": start, "call1": clock()}
            future.row = row
            rows[task.task_id] = probe.current = row
            return future, task

        def timed_send_direct(self: Any, task: Any) -> bool:
            row = probe.current
            row["direct0"] = clock()
            sent: bool = send_direct(self, task)
            row["direct1"] = clock()
            row["direct"] = int(sent)
            return sent

        def timed_wake(self: Any) -> None:
            if threading.get_ident() != probe.caller:
                return wake(self)
            row = probe.current
            row["wake0"] = clock()
            wake(self)
            row["wake1"] = clock()
            return None

        def timed_send(self: Any, worker: Any, batch: Any) -> None:
            start = clock()
            sending = [rows[task.task_id] for task in batch if task.task_id in rows]
            for row in sending:
                row["send0"], row["dsel"] = start, probe.select_at
            probe.sending = sending
            try:
                send(self, worker, batch)
            finally:
                probe.sending = None

        def timed_flush(self: Any) -> bool:
            start = clock()
            done: bool = flush(self)
            end = clock()
            for row in probe.sending or ():
                row["write0"], row["write1"] = start, end
            return done

        def timed_select(timeout: Optional[float] = None) -> Any:
            events = select(timeout)
            probe.select_at = clock()
            return events

        def timed_read_frames(self: Any) -> Any:
            frames = read_frames(self)
            probe.read_end = clock()
            return frames

        def timed_decode(frame: Any) -> Any:
            message = decode(frame)
            probe.decoded_at = clock()
            return message

        def timed_resolve(task: Any, message: Any, pid: int) -> None:
            row = rows.get(task.task_id)
            if row is not None:
                row["sel"], row["read1"] = probe.select_at, probe.read_end
                row["decoded"], row["res0"] = probe.decoded_at, clock()
            resolve_(task, message, pid)

        patches.set(_frontend, "Future", TimedFuture)
        patches.set(frontend, "_call_task", timed_call_task)
        patches.set(dispatcher, "_send_direct", timed_send_direct)
        patches.set(dispatcher, "wake", timed_wake)
        patches.set(dispatcher, "_send", timed_send)
        patches.set(_transport.FrameWriter, "flush", timed_flush)
        patches.set(_transport.FrameReader, "read_frames", timed_read_frames)
        patches.set(_dispatcher, "decode_message", timed_decode)
        patches.set(_dispatcher, "resolve", timed_resolve)
        patches.set(selector, "select", timed_select)
        return patches


# One stage: a label, then the timestamps it runs between (a "w:" prefix: the worker's row).
STAGES: dict[str, list[tuple[str, str, str]]] = {
    "direct": [
        ("caller: submit() checks, up to _call_task", "t0", "call0"),
        ("caller: _call_task: Future(), pickle fn and args, encode", "call0", "call1"),
        ("caller: _enqueue -> _send_direct: locks, find an idle worker", "call1", "srn0"),
        ("caller: Future.set_running_or_notify_cancel", "srn0", "srn1"),
        ("caller: _send: frame the batch", "srn1", "write0"),
        ("pipe: inbox write -> the worker's read returns", "write0", "w:read1"),
        ("worker: decode_batch, running slot", "w:read1", "w:run0"),
        ("worker: _run: unpickle, call, pickle the result, encode", "w:run0", "w:run1"),
        ("pipe: reply write -> the dispatcher's select returns", "w:run1", "sel"),
        ("dispatcher: retake its lock, read the frame (read_frames)", "sel", "read1"),
        ("dispatcher: decode_message", "read1", "decoded"),
        ("dispatcher: _on_answer -> resolve: unpickle the result", "decoded", "sr0"),
        ("dispatcher: Future.set_result (notifies the caller)", "sr0", "sr1"),
        ("caller: wakes, result() returns", "sr1", "t2"),
    ],
}
STAGES["queued"] = [
    STAGES["direct"][0],
    STAGES["direct"][1],
    ("caller: _enqueue -> pending.append, wake (pipe write)", "call1", "wake1"),
    ("dispatcher: wakes (wake pipe -> select returns)", "wake1", "dsel"),
    ("dispatcher: _on_wakeup, _assign, take_batch", "dsel", "srn0"),
    *STAGES["direct"][3:],
]
# Every stage of both modes, in the order of the table.
STAGE_ORDER = list(
    dict.fromkeys(
        label
        for label, _, _ in [*STAGES["direct"][:2], *STAGES["queued"][2:5], *STAGES["direct"][2:]]
    )
)


def stage_samples(mode: str, rows: list[dict[str, int]], workers: dict[int, list[int]]) -> Any:
    """Per stage, the sample list (ns); plus totals and side numbers."""
    index = {"read1": W_READ1, "run0": W_RUN0, "run1": W_RUN1, "send0": W_SEND0}
    out: dict[str, list[int]] = collections.defaultdict(list)
    direct = 0
    early = 0  # the dispatcher woke before the caller released the dispatcher's lock
    for row in rows:
        wrow = workers.get(row["task"])
        if wrow is None or "sr1" not in row or "write0" not in row:
            continue
        if mode == "direct" and not row.get("direct"):
            continue  # the dispatcher held its lock: this one went through the queue
        direct += row.get("direct", 0)
        early += mode == "direct" and row["sel"] < row["direct1"]

        def at(name: str, row: dict[str, int] = row, wrow: list[int] = wrow) -> int:
            return wrow[index[name[2:]]] if name.startswith("w:") else row[name]

        for label, start, end in STAGES[mode]:
            out[label].append(at(end) - at(start))
        out["total (instrumented)"].append(row["t2"] - row["t0"])
        out["caller: submit() returns"].append(row["t1"] - row["t0"])
        out["caller: time in result()"].append(row["t2"] - row["t1"])
        out["worker: busy per task (read returned -> reply written)"].append(
            wrow[W_SEND1] - wrow[W_READ1]
        )
        out["worker: reply write system call"].append(wrow[W_SEND1] - wrow[W_SEND0])
        out["caller: inbox write system call"].append(row["write1"] - row["write0"])
    return out, direct, early


# --------------------------------------------------------------------------- /proc counters


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def thread_counters(pid: int, tid: int) -> tuple[int, int, int]:
    """(on-CPU ns, ns waiting for a CPU, voluntary context switches) of one thread."""
    base = f"/proc/{pid}/task/{tid}"
    on_cpu, run_wait, _ = (int(x) for x in _read(f"{base}/schedstat").split())
    voluntary = 0
    for line in _read(f"{base}/status").splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            voluntary = int(line.split()[1])
    return on_cpu, run_wait, voluntary


def process_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of a whole process, every thread."""
    fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


class CpuMeter:
    """CPU, context switches and CPU waits of the parent's two threads and the workers."""

    def __init__(self, executor: Executor) -> None:
        self.workers = list(executor._dispatcher._workers)
        thread = executor._dispatcher._thread
        assert thread is not None and thread.native_id is not None
        self.threads = {
            "caller": (os.getpid(), threading.get_native_id()),
            "dispatcher": (os.getpid(), thread.native_id),
        }
        for pid in self.workers:
            self.threads[f"worker {pid}"] = (pid, pid)

    def snapshot(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        snap = {"parent user": usage.ru_utime * 1e6, "parent sys": usage.ru_stime * 1e6}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        snap["workers user"] = snap["workers sys"] = 0.0
        for pid in self.workers:
            user, system = process_ticks(pid)
            snap["workers user"] += user * tick_us
            snap["workers sys"] += system * tick_us
        for name, (pid, tid) in self.threads.items():
            on_cpu, run_wait, voluntary = thread_counters(pid, tid)
            group = "workers" if name.startswith("worker") else name
            for key, value in (("cpu", on_cpu / 1e3), ("cpu wait", run_wait / 1e3)):
                snap[f"{group} {key}"] = snap.get(f"{group} {key}", 0.0) + value
            snap[f"{group} switches"] = snap.get(f"{group} switches", 0.0) + voluntary
        return snap


# --------------------------------------------------------------------------- measurements


def latency_samples(submit: Callable[..., Any], warmup: int, count: int) -> list[int]:
    for _ in range(warmup):
        submit(noop).result()
    samples = []
    for _ in range(count):
        start = clock()
        submit(noop).result()
        samples.append(clock() - start)
    return samples


def instrumented_run(
    executor: Executor, probe: ParentProbe, mode: str, warmup: int, count: int
) -> list[dict[str, int]]:
    patches = probe.install(executor, mode)
    submit, taken = executor.submit, []
    try:
        for i in range(warmup + count):
            start = clock()
            future = submit(noop)
            submitted = clock()
            future.result()
            end = clock()
            row = probe.current
            row["t0"], row["t1"], row["t2"] = start, submitted, end
            if i >= warmup:
                taken.append(row)
    finally:
        patches.restore()
    for task_id, row in probe.rows.items():
        row["task"] = task_id
    probe.rows.clear()
    return taken


def plain_run(executor: Executor, mode: str, warmup: int, count: int) -> tuple[list[int], dict]:
    patches = Patches()
    if mode == "queued":
        patches.set(_dispatcher.Dispatcher, "_send_direct", no_direct_send)
    try:
        latency_samples(executor.submit, warmup, 0)
        meter = CpuMeter(executor)
        before, wall = meter.snapshot(), clock()
        samples = latency_samples(executor.submit, 0, count)
        wall, after = clock() - wall, meter.snapshot()
    finally:
        patches.restore()
    cpu = {key: after[key] - before[key] for key in after}
    cpu["wall"] = wall / 1e3
    return samples, cpu


class Pinned:
    """Pin the calling thread to ``cpu`` for a while (None: leave it alone)."""

    def __init__(self, cpu: Optional[int]) -> None:
        self.cpu = cpu
        self.saved = os.sched_getaffinity(0)

    def __enter__(self) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self.saved)


def placements() -> dict[str, tuple[Optional[int], Optional[int]]]:
    """Where the two ends of a floor run: one CPU, two CPUs, or wherever the kernel likes."""
    cpus = sorted(os.sched_getaffinity(0))
    found: dict[str, tuple[Optional[int], Optional[int]]] = {"not pinned": (None, None)}
    found["same CPU"] = (cpus[0], cpus[0])
    if len(cpus) > 1:
        found["two CPUs"] = (cpus[0], cpus[1])
    return found


ECHO = """\
import os, sys
r, w, cpu = (int(x) for x in sys.argv[1:])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
while True:
    data = os.read(r, 8)
    if not data:
        break
    os.write(w, data)
"""


def burst_rate(executor: Executor, count: int, collecting: bool) -> float:
    """Tasks per second of ``count`` no-ops submitted at once, then waited for."""
    latency_samples(executor.submit, 20, 0)
    if not collecting:
        gc.disable()
    try:
        start = clock()
        futures = [executor.submit(noop) for _ in range(count)]
        for future in futures:
            future.result()
        elapsed = clock() - start
    finally:
        gc.enable()
    return count * 1e9 / elapsed


def live_futures_ns(count: int, collecting: bool) -> float:
    """ns per ``Future()`` while ``count`` of them are created and kept alive."""
    gc.collect()
    if not collecting:
        gc.disable()
    try:
        start = clock()
        futures = [Future() for _ in range(count)]
        elapsed = clock() - start
    finally:
        gc.enable()
    del futures
    return elapsed / count


def fresh_process_bursts(methods: list[str], count: int) -> dict[str, list[float]]:
    """Bursts with the garbage collector on and off, in a fresh process.

    Not in this one: the samples it holds would make every full collection slower.
    """
    command = [sys.executable, os.path.abspath(__file__), "--burst-child"]
    command += ["--methods", ",".join(methods), "--burst", str(count)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    found: dict[str, list[float]] = json.loads(done.stdout)
    return found


def burst_child(methods: list[str], count: int) -> None:
    found: dict[str, list[float]] = collections.defaultdict(list)
    for collecting in (True, False, True, False):
        state = "on" if collecting else "off"
        found[f"futures gc {state}"].append(live_futures_ns(count, collecting))
    for method in methods:
        with Executor(WORKERS, start_method=method) as executor:
            for collecting in (True, False, True, False):
                state = "on" if collecting else "off"
                found[f"{method} gc {state}"].append(burst_rate(executor, count, collecting))
    json.dump(found, sys.stdout)


def raw_pipe_samples(count: int, here: Optional[int], there: Optional[int]) -> list[int]:
    """Round trips of 8 bytes over two os.pipe()s to an echoing child process."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    cpu = -1 if there is None else there
    child = subprocess.Popen(
        [sys.executable, "-c", ECHO, str(to_child_r), str(from_child_w), str(cpu)],
        pass_fds=(to_child_r, from_child_w),
    )
    os.close(to_child_r)
    os.close(from_child_w)
    samples = []
    try:
        with Pinned(here):
            for i in range(count + 200):
                start = clock()
                os.write(to_child_w, b"12345678")
                os.read(from_child_r, 8)
                if i >= 200:
                    samples.append(clock() - start)
    finally:
        os.close(to_child_w)
        os.close(from_child_r)
        child.wait()
    return samples


def thread_handoff_samples(count: int, here: Optional[int], there: Optional[int]) -> list[int]:
    """A byte down a pipe to a thread waiting in epoll, which resolves a Future we wait on."""
    read_end, write_end = os.pipe()
    box: list[Optional[Future[Any]]] = [None]

    def helper() -> None:
        if there is not None:
            os.sched_setaffinity(0, {there})
        selector = selectors.DefaultSelector()
        selector.register(read_end, selectors.EVENT_READ)
        while True:
            selector.select()
            if not os.read(read_end, 1):
                break
            future = box[0]
            assert future is not None
            future.set_result(None)
        selector.close()

    thread = threading.Thread(target=helper)
    thread.start()
    samples = []
    try:
        with Pinned(here):
            for i in range(count + 200):
                start = clock()
                future: Future[Any] = Future()
                box[0] = future
                os.write(write_end, b"x")
                future.result()
                if i >= 200:
                    samples.append(clock() - start)
    finally:
        os.close(write_end)
        thread.join()
        os.close(read_end)
    return samples


class BusyLoop:
    """A ``nice 19`` process spinning for a while: a CPU that is never idle."""

    def __enter__(self) -> None:
        self.process = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while 1: pass"])
        time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def pinned_latency(methods: list[str], warmup: int, count: int) -> dict[str, list[int]]:
    """In a fresh process pinned to one CPU (with its workers): poolkit's round trips."""
    command = [sys.executable, os.path.abspath(__file__), "--pinned-latency"]
    command += ["--methods", ",".join(methods), "--warmup", str(warmup)]
    command += ["--samples", str(count)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    samples: dict[str, list[int]] = json.loads(done.stdout)
    return samples


def pinned_latency_child(methods: list[str], warmup: int, count: int) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any thread or process
    found = {}
    for method in methods:
        with Executor(WORKERS, start_method=method) as executor:
            found[method] = latency_samples(executor.submit, warmup, count)
    json.dump(found, sys.stdout)


def per_call_ns(
    body: Callable[[Any], Any], setup: Optional[Callable[[int], list[Any]]] = None
) -> float:
    """``body(item)``'s time per call, in ns: median of 25 runs of 2,000 calls each.

    The garbage collector is off while the clock runs, as in ``timeit``: this process holds
    every sample taken so far, and a full collection would land in a random loop.
    """
    times = []
    for _ in range(25):
        items = setup(2000) if setup else [None] * 2000
        gc.disable()
        try:
            start = clock()
            for item in items:
                body(item)
            times.append((clock() - start) / 2000)
        finally:
            gc.enable()
    return statistics.median(times)


def in_process_costs(executor: Executor) -> dict[str, float]:
    """Each step of the round trip run in this process on the same bytes (warm caches), ns."""
    _, task = executor._call_task(noop, (), {})
    assert task is not None
    frame = b"".join((batch_prefix(1), *task.parts))
    record = decode_batch(frame)[0]
    functions: dict[bytes, Any] = {}
    reply = _worker._run(record, None, functions, None)
    message = decode_message(reply)

    def fresh(n: int) -> list[Future[Any]]:
        return [Future() for _ in range(n)]

    def running(n: int) -> list[Future[Any]]:
        futures = fresh(n)
        for future in futures:
            future.set_running_or_notify_cancel()
        return futures

    def done(n: int) -> list[Future[Any]]:
        futures = running(n)
        for future in futures:
            future.set_result(None)
        return futures

    def started_tasks(n: int) -> list[TaskState]:
        tasks = [TaskState(1, future, (), "noop") for future in running(n)]
        for state in tasks:
            state.started = True
        return tasks

    steps: list[tuple[str, Callable[[Any], Any], Optional[Callable[[int], list[Any]]]]] = [
        ("caller: _call_task(noop, (), {})", lambda _: executor._call_task(noop, (), {}), None),
        ("caller:   Future()", lambda _: Future(), None),
        ("caller:   pickle ((), {})", lambda _: _serialization.dumps(((), {})), None),
        (
            "future: set_running_or_notify_cancel()",
            lambda f: f.set_running_or_notify_cancel(),
            fresh,
        ),
        ("worker: decode_batch(frame)", lambda _: decode_batch(frame), None),
        ("worker: _run(record)", lambda _: _worker._run(record, None, functions, None), None),
        ("worker:   unpickle ((), {})", lambda _: _serialization.loads(record.args_blob), None),
        ("worker:   pickle None", lambda _: _serialization.dumps(None), None),
        (
            "worker:   encode_message(RESULT)",
            lambda _: encode_message(MessageKind.RESULT, 1, b"N.", duration=1e-6),
            None,
        ),
        ("dispatcher: decode_message(reply)", lambda _: decode_message(reply), None),
        ("dispatcher: unpickle the result", lambda _: _serialization.loads(message.payload), None),
        ("dispatcher: resolve(), no waiter", lambda t: resolve(t, message, 0), started_tasks),
        ("future: set_result(), no waiter", lambda f: f.set_result(None), running),
        ("future: result() of a done future", lambda f: f.result(), done),
    ]
    baseline = per_call_ns(lambda _: None)
    costs = {name: per_call_ns(body, setup) - baseline for name, body, setup in steps}
    costs["(loop and call overhead, subtracted)"] = baseline
    return costs


# --------------------------------------------------------------------------- the main run


def median_us(samples: list[int]) -> Optional[float]:
    return statistics.median(samples) / 1e3 if samples else None


def run_profile(options: argparse.Namespace) -> dict[str, Any]:
    methods = [m for m in options.methods.split(",") if m]
    out_dir = tempfile.mkdtemp(prefix="poolkit-roundtrip-")
    plain: dict[str, Executor] = {}
    probed: dict[str, Executor] = {}
    stdlib: dict[str, concurrent.futures.ProcessPoolExecutor] = {}
    for method in methods:
        plain[method] = Executor(WORKERS, start_method=method)
        probed[method] = Executor(
            WORKERS, start_method=method, initializer=instrument_worker, initargs=(out_dir,)
        )
        stdlib[method] = concurrent.futures.ProcessPoolExecutor(
            WORKERS, mp_context=multiprocessing.get_context(method)
        )
    probe = ParentProbe()
    totals: dict[str, list[int]] = collections.defaultdict(list)
    cpu: dict[str, dict[str, float]] = {}
    rows: dict[tuple[str, str], list[dict[str, int]]] = collections.defaultdict(list)
    counts: dict[str, int] = collections.Counter()
    costs: dict[str, list[float]] = collections.defaultdict(list)
    bursts: dict[str, list[float]] = collections.defaultdict(list)
    jobs = [
        (kind, method, mode) for method in methods for kind in ("plain", "probed") for mode in MODES
    ]
    jobs += [("stdlib", method, "") for method in methods] + [("floor", "", "")]
    jobs += [("burst", "", "")]
    try:
        for rnd in range(options.rounds):
            shift = rnd % len(jobs)
            for kind, method, mode in jobs[shift:] + jobs[:shift]:
                if kind == "plain":
                    samples, used = plain_run(plain[method], mode, options.warmup, options.samples)
                    totals[f"{method} {mode}"] += samples
                    into = cpu.setdefault(f"{method} {mode}", collections.Counter())
                    into.update(used)
                    counts[f"{method} {mode}"] += len(samples)
                elif kind == "probed":
                    rows[method, mode] += instrumented_run(
                        probed[method], probe, mode, options.warmup, options.samples
                    )
                elif kind == "burst":
                    for name, values in fresh_process_bursts(methods, options.burst).items():
                        bursts[name] += values
                elif kind == "stdlib":
                    totals[f"{method} stdlib"] += latency_samples(
                        stdlib[method].submit, options.warmup, options.samples
                    )
                else:
                    for where, (here, there) in placements().items():
                        totals[f"floor raw pipe, {where}"] += raw_pipe_samples(
                            options.samples, here, there
                        )
                        totals[f"floor thread handoff, {where}"] += thread_handoff_samples(
                            options.samples, here, there
                        )
                    for name, ns in in_process_costs(plain[methods[0]]).items():
                        costs[name].append(ns)
                    with BusyLoop():
                        for where, (here, there) in placements().items():
                            if here != there:
                                totals[f"floor raw pipe, {where}, busy"] += raw_pipe_samples(
                                    options.samples, here, there
                                )
                    pinned = pinned_latency(methods, options.warmup, options.samples)
                    for method, samples in pinned.items():
                        totals[f"{method} pinned"] += samples
            print(f"round {rnd + 1}/{options.rounds} done", file=sys.stderr)
    finally:
        worker_pids = {m: list(probed[m]._dispatcher._workers) for m in methods}
        for pool in [*plain.values(), *probed.values(), *stdlib.values()]:
            pool.shutdown(wait=True)
    workers: dict[str, dict[int, list[int]]] = {}
    for method in methods:
        workers[method] = {}
        for pid in worker_pids[method]:
            path = os.path.join(out_dir, f"worker-{pid}.json")
            if os.path.exists(path):
                with open(path) as f:
                    workers[method].update((row[W_TASK], row) for row in json.load(f))
    shutil.rmtree(out_dir, ignore_errors=True)

    result: dict[str, Any] = {"machine": machine(), "options": vars(options), "columns": {}}
    for method in methods:
        for mode in MODES:
            column = f"{method} {mode}"
            stages, direct, early = stage_samples(mode, rows[method, mode], workers[method])
            used = cpu[column]
            n = counts[column]
            entry: dict[str, Any] = {
                "stages_us": {label: median_us(v) for label, v in stages.items()},
                "samples": len(stages.get("total (instrumented)", [])),
                "direct_share": direct / max(1, len(rows[method, mode])) if mode == "direct" else 0,
                "lock_wait_share": early / max(1, direct) if mode == "direct" else 0,
                "total_us": median_us(totals[column]),
                "p99_us": percentile_us(totals[column], 99),
                "stdlib_us": median_us(totals[f"{method} stdlib"]),
                "cpu_per_round_trip": {k: v / n for k, v in used.items() if k != "wall"},
                "wall_per_round_trip_us": used["wall"] / n,
            }
            entry["stages_sum_us"] = sum(
                entry["stages_us"][label] or 0 for label, _, _ in STAGES[mode]
            )
            result["columns"][column] = entry
    result["floors_us"] = {}
    for where in placements():
        result["floors_us"][f"raw os.pipe round trip, two processes, {where}"] = median_us(
            totals[f"floor raw pipe, {where}"]
        )
    for where, (here, there) in placements().items():
        if here != there:
            result["floors_us"][
                f"raw os.pipe round trip, two processes, {where}, a nice-19 busy loop running"
            ] = median_us(totals[f"floor raw pipe, {where}, busy"])
    for where in placements():
        result["floors_us"][
            f"thread handoff (pipe -> thread in epoll -> Future -> waiting thread), {where}"
        ] = median_us(totals[f"floor thread handoff, {where}"])
    for method in methods:
        result["floors_us"][f"poolkit {method} round trip, parent and workers on one CPU"] = (
            median_us(totals[f"{method} pinned"])
        )
    result["burst_tasks_per_s"] = {
        f"{method}, {options.burst:,} submits then wait, garbage collector {state}": (
            statistics.median(bursts[f"{method} gc {state}"])
        )
        for method in methods
        for state in ("on", "off")
    }
    result["live_futures_ns"] = {
        f"Future() x {options.burst:,} kept alive, garbage collector {state}": (
            statistics.median(bursts[f"futures gc {state}"])
        )
        for state in ("on", "off")
    }
    result["in_process_ns"] = {name: statistics.median(v) for name, v in costs.items()}
    return result


def percentile_us(samples: list[int], q: float) -> Optional[float]:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] / 1e3


def machine() -> dict[str, Any]:
    import platform

    load = os.getloadavg()
    model = ""
    try:
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "processor": platform.processor() or model,
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_at_end": [round(x, 2) for x in load],
        "clock": time.get_clock_info("perf_counter").implementation,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(result: dict[str, Any]) -> str:
    columns = result["columns"]
    names = [c for mode in MODES for c in columns if c.endswith(mode)]
    lines = [
        "| stage (median, us) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def add(label: str, values: list[Optional[float]], digits: int = 1) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(v, digits) for v in values) + " |")

    for label in STAGE_ORDER:
        add(label, [columns[c]["stages_us"].get(label) for c in names])
    add("**sum of the stage medians**", [columns[c]["stages_sum_us"] for c in names])
    add(
        "round trip, instrumented", [columns[c]["stages_us"]["total (instrumented)"] for c in names]
    )
    add("**round trip, not instrumented**", [columns[c]["total_us"] for c in names])
    add("round trip, not instrumented, p99", [columns[c]["p99_us"] for c in names])
    add("stdlib ProcessPoolExecutor, same start method", [columns[c]["stdlib_us"] for c in names])
    for label in (
        "caller: submit() returns",
        "caller: time in result()",
        "worker: busy per task (read returned -> reply written)",
        "caller: inbox write system call",
        "worker: reply write system call",
    ):
        add(f"({label})", [columns[c]["stages_us"].get(label) for c in names])
    add("(direct sends, % of round trips)", [100 * columns[c]["direct_share"] for c in names], 0)
    add(
        "(reply arrived before the caller released the dispatcher's lock, %)",
        [100 * columns[c]["lock_wait_share"] for c in names],
        1,
    )
    lines += ["", "| CPU per round trip, not instrumented (us) | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    cpu = {c: columns[c]["cpu_per_round_trip"] for c in names}
    add("wall time", [columns[c]["wall_per_round_trip_us"] for c in names])
    add("parent: user", [cpu[c]["parent user"] for c in names])
    add("parent: system", [cpu[c]["parent sys"] for c in names])
    add("workers: user", [cpu[c]["workers user"] for c in names])
    add("workers: system", [cpu[c]["workers sys"] for c in names])
    add(
        "all processes: CPU",
        [cpu[c]["parent user"] + cpu[c]["parent sys"] + cpu[c]["workers cpu"] for c in names],
    )
    for group in ("caller", "dispatcher", "workers"):
        add(f"{group} thread(s): on CPU", [cpu[c][f"{group} cpu"] for c in names])
    for group in ("caller", "dispatcher", "workers"):
        add(f"{group}: waiting for a CPU (runnable)", [cpu[c][f"{group} cpu wait"] for c in names])
    for group in ("caller", "dispatcher", "workers"):
        add(f"{group}: voluntary context switches", [cpu[c][f"{group} switches"] for c in names], 2)
    lines += ["", "| floor | median us |", "|---|---:|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in result["floors_us"].items()]
    lines += ["", "| burst, in a fresh process (median) | tasks/s |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in result["burst_tasks_per_s"].items()]
    lines += [f"| {k} (ns each) | {v:,.0f} |" for k, v in result["live_futures_ns"].items()]
    lines += ["", "| in-process, warm caches | ns per call |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["in_process_ns"].items()]
    m = result["machine"]
    lines += [
        "",
        f"machine: {m['processor']} ({m['cpu_model']}), {m['usable_cpus']} usable CPUs, "
        f"CPython {m['python']}, {m['platform']}, load {m['load_at_end']} at the end, "
        f"{m['date']}; clock {m['clock']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- profiler loops


def profile_loop(kind: str, method: str, seconds: float, sidecar: Optional[str]) -> None:
    """A plain loop for a sampling profiler: latency round trips or bursts of 20,000."""
    with Executor(WORKERS, start_method=method) as executor:
        latency_samples(executor.submit, 200, 0)
        thread = executor._dispatcher._thread
        assert thread is not None
        if sidecar:
            with open(sidecar, "w") as out:
                json.dump(
                    {
                        "kind": kind,
                        "method": method,
                        "parent": os.getpid(),
                        "workers": list(executor._dispatcher._workers),
                        "dispatcher_tid": thread.native_id,
                    },
                    out,
                )
        done, start = 0, time.perf_counter()
        if kind == "latency":
            done = latency_loop(executor, start + seconds)
        else:
            done = burst_loop(executor, start + seconds)
        elapsed = time.perf_counter() - start
    print(
        f"{kind} {method}: {done} tasks in {elapsed:.2f} s, {done / elapsed:,.0f} tasks/s",
        flush=True,
    )


def latency_loop(executor: Executor, until: float) -> int:
    submit, done = executor.submit, 0
    while time.perf_counter() < until:
        for _ in range(100):
            submit(noop).result()
        done += 100
    return done


def burst_loop(executor: Executor, until: float) -> int:
    submit, done = executor.submit, 0
    while time.perf_counter() < until:
        futures = [submit(noop) for _ in range(20000)]
        for future in futures:
            future.result()
        done += len(futures)
    return done


FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")
#: Leaf frames where a thread waits; py-spy samples them as active.
WAITS = (
    ("selectors.py", "select"),
    ("threading.py", "wait"),
    ("poolkit/_wire/frames.py", "next_frame"),
    ("poolkit/_worker/main.py", "watch"),
)
#: The frame each thread's measured work runs under: "function (file" as py-spy names it.
MARKERS = {
    "caller": ("_loop (", "roundtrip_profile.py:"),
    "dispatcher": ("Dispatcher._run (", "poolkit/_pool/dispatcher.py:"),
    "worker": ("_serve (", "poolkit/_worker/main.py:"),
}


def is_marker(role: str, frame: str) -> bool:
    function, path = MARKERS[role]
    return function in frame and path in frame


def source_line(path: str, line: int) -> str:
    for base in [os.path.dirname(os.path.dirname(os.path.abspath(_worker.__file__))), *sys.path]:
        full = os.path.join(base or ".", path)
        if os.path.exists(full):
            return linecache.getline(full, line).strip()
    return ""


def summarize(raw: str, sidecar: str, top: int) -> dict[str, Any]:
    """Per thread of a py-spy raw profile: self-time lines and inclusive functions.

    Samples whose innermost frame is a wait (``WAITS``) are counted apart. Inclusive counts
    take the frames below the loop's own (``MARKERS``), each function once per sample.
    """
    with open(sidecar) as f:
        info = json.load(f)
    parent, workers = info["parent"], set(info["workers"])
    lines: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    waits: collections.Counter[str] = collections.Counter()
    dropped = 0
    with open(raw) as f:
        for text in f:
            stack, _, count_text = text.rstrip("\n").rpartition(" ")
            count = int(count_text)
            frames = stack.split(";")
            procs = [int(p.split()[1].split(":")[0]) for p in frames if p.startswith("process ")]
            thread = next((p for p in frames if p.startswith("thread (")), "")
            pid = procs[-1] if procs else parent
            code = [p for p in frames if not p.startswith(("process ", "thread ("))]
            role = None
            if pid == parent and thread.endswith("MainThread"):
                role = "caller"
            elif pid == parent and thread.endswith("poolkit-dispatcher"):
                role = "dispatcher"
            elif pid in workers and thread.endswith("MainThread"):
                role = "worker"
            marker = None
            if role is not None:
                marker = next((i for i, p in enumerate(code) if is_marker(role, p)), None)
            if role is None or marker is None:
                dropped += count
                continue
            match = FRAME.match(code[-1])
            leaf = code[-1]
            if match:
                func, path, number = match.group(1), match.group(2), int(match.group(3))
                leaf = f"{func} ({path}:{number}) `{source_line(path, number)}`"
                if any(path.endswith(p) and func.endswith(fn) for p, fn in WAITS):
                    waits[role] += count
                    lines[role + " (waiting)"][leaf] += count
                    continue
            totals[role] += count
            lines[role][leaf] += count
            below = {FRAME.sub(r"\1 (\2)", p) for p in code[marker + 1 :]}
            for function in below:
                inclusive[role][function] += count
    summary: dict[str, Any] = {"kind": info["kind"], "method": info["method"], "roles": {}}
    for role in ("caller", "dispatcher", "worker"):
        busy = totals[role]

        def share(n: int, busy: int = busy) -> float:
            return n / busy if busy else 0.0

        summary["roles"][role] = {
            "samples": busy,
            "waiting_samples": waits[role],
            "waiting": lines[role + " (waiting)"].most_common(3),
            "top": [(leaf, n, share(n)) for leaf, n in lines[role].most_common(top)],
            "inclusive": [(fn, n, share(n)) for fn, n in inclusive[role].most_common(top)],
        }
    summary["dropped_samples"] = dropped
    return summary


def render_summary(summary: dict[str, Any]) -> str:
    gil = " (--gil: only samples holding the GIL)" if summary.get("gil") else ""
    out = [f"## py-spy: {summary['kind']} loop, {summary['method']}{gil}"]
    for role, data in summary["roles"].items():
        out.append(
            f"\n{role}: {data['samples']} samples outside waits "
            f"(+{data['waiting_samples']} sampled in waits, excluded); self time by line:"
        )
        for leaf, n, share in data["top"]:
            out.append(f"  {share:6.1%} {n:6d}  {leaf}")
        for leaf, n in data["waiting"]:
            out.append(f"  (wait) {n:6d}  {leaf}")
        out.append(f"{role}: inclusive, by function (below the loop):")
        for function, n, share in data["inclusive"]:
            out.append(f"  {share:6.1%} {n:6d}  {function}")
    out.append(f"\n(samples outside the measured loops, dropped: {summary['dropped_samples']})")
    return "\n".join(out)


def run_pyspy(options: argparse.Namespace) -> list[dict[str, Any]]:
    """Each loop alone, then under ``py-spy record`` (all samples, then ``--gil``)."""
    out_dir = options.pyspy_out or tempfile.mkdtemp(prefix="poolkit-pyspy-")
    os.makedirs(out_dir, exist_ok=True)
    summaries = []
    for kind in ("latency", "burst"):
        loop = [sys.executable, os.path.abspath(__file__), "--loop", kind]
        loop += ["--method", options.pyspy_method, "--seconds", str(options.pyspy_seconds)]
        alone = subprocess.run(loop, check=True, stdout=subprocess.PIPE, text=True).stdout
        print(f"{alone.strip()} (no profiler)")
        for gil in (False, True):
            name = f"{kind}-gil" if gil else kind
            raw = os.path.join(out_dir, f"{name}.raw")
            sidecar = os.path.join(out_dir, f"{name}.json")
            # --nonblocking: at 2000 samples/s, pausing the processes for every sample slowed
            # the latency loop several times over.
            command = [options.pyspy, "record", "--nonblocking", "-r", "2000", "-f", "raw"]
            command += ["-s", "-t", *(["--gil"] if gil else []), "-o", raw, "--"]
            command += [*loop, "--sidecar", sidecar]
            profiled = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            summary = summarize(raw, sidecar, options.top)
            summary.update(gil=gil, without_profiler=alone.strip(), profiled=profiled.strip())
            print(f"{profiled.strip()} (under py-spy{' --gil' if gil else ''})")
            print(render_summary(summary) + "\n")
            summaries.append(summary)
    print(f"raw profiles in {out_dir}")
    return summaries


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--pinned-latency", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--burst-child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.burst_child:
        burst_child(options.methods.split(","), options.burst)
        return 0
    if options.pinned_latency:
        pinned_latency_child(options.methods.split(","), options.warmup, options.samples)
        return 0
    if options.loop:
        profile_loop(options.loop, options.method, options.seconds, options.sidecar)
        return 0
    if options.summarize:
        if not options.sidecar:
            parser.error("--summarize needs --sidecar")
        print(render_summary(summarize(options.summarize, options.sidecar, options.top)))
        return 0
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
