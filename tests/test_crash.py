"""Crash isolation: a worker that dies fails only the task it was running."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import tasks
from fifo import Gate

from poolkit import BrokenProcessPool, Executor, WorkerCrashedError


@pytest.mark.smoke
def test_sigkill_fails_only_the_running_task(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=2, start_method=start_method) as ex:
        victim = ex.submit(tasks.signal_and_wait, *gate.args)
        others = [ex.submit(tasks.square, i) for i in range(40)]
        pid = gate.wait_started()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            victim.result(timeout=30)
        error = info.value
        assert isinstance(error, BrokenProcessPool)
        assert str(pid) in str(error) and "SIGKILL" in str(error)
        assert "signal_and_wait" in str(error)
        assert (error.pid, error.exitcode, error.signal_name) == (pid, -signal.SIGKILL, "SIGKILL")
        assert [f.result(timeout=30) for f in others] == [i * i for i in range(40)]
        # The executor stays usable.
        assert ex.submit(tasks.square, 9).result(timeout=30) == 81


@pytest.mark.parametrize(
    ("crash", "args", "expected"),
    [
        (tasks.segfault, (), "SIGSEGV"),
        (tasks.hard_exit, (3,), "exited with code 3"),
        (tasks.kill_self, (signal.SIGKILL,), "SIGKILL"),
    ],
    ids=["segfault", "os._exit", "self-sigkill"],
)
def test_crash_kinds_are_named(
    start_method: str, crash: object, args: tuple, expected: str
) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        others = [ex.submit(tasks.square, i) for i in range(10)]
        doomed = ex.submit(crash, *args)  # type: ignore[arg-type]
        later = [ex.submit(tasks.square, i) for i in range(10, 20)]
        with pytest.raises(WorkerCrashedError, match=expected) as info:
            doomed.result(timeout=30)
        assert crash.__name__ in str(info.value)  # type: ignore[attr-defined]
        assert [f.result(timeout=30) for f in others + later] == [i * i for i in range(20)]


def test_prefetched_tasks_run_elsewhere(
    start_method: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One worker, and short tasks measured first, so the worker is handed the queued tasks
    # beyond the one it runs (prefetch): they must be taken back and rerun.
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        list(ex.map(tasks.square, range(50), chunksize=1))  # 50 tasks: 50 measurements
        victim = ex.submit(tasks.signal_and_wait, *gate.args)
        queued = [ex.submit(tasks.getpid) for _ in range(5)]
        pid = gate.wait_started()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            victim.result(timeout=30)
        pids = {f.result(timeout=30) for f in queued}
        assert pid not in pids and len(pids) == 1  # all ran on the replacement
    # How many of the five were already in the worker's pipe when it died depends on the
    # dispatcher's timing (a task not yet sent is simply still pending): what must hold is
    # that the one running task failed and none of the others was lost or failed.
    assert re.search(r"1 task\(s\) failed, [0-5] requeued", caplog.text), caplog.text


def test_a_task_that_kills_every_worker_before_it_starts_is_failed(start_method: str) -> None:
    # Each worker may map only 16 MiB more than it has: reading a 64 MiB argument fails
    # with MemoryError and ends the worker before the task starts. Sending the task on to
    # every replacement would never end.
    with Executor(
        max_workers=2,
        start_method=start_method,
        initializer=tasks.limit_address_space,
        initargs=(16,),
    ) as ex:
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9
        doomed = ex.submit(tasks.length, b"x" * (64 << 20))
        with pytest.raises(WorkerCrashedError, match="before it started") as info:
            doomed.result(timeout=60)
        assert "length" in str(info.value) and "exited with code 1 (MemoryError)" in str(info.value)
        assert info.value.exitcode == 1
        # The worker said why it died: its exception, with its traceback, is the cause.
        assert isinstance(info.value.__cause__, MemoryError)
        assert "next_frame" in str(info.value.__cause__.__cause__)
        # Smaller tasks still run in workers under the same limit.
        assert [f.result(timeout=30) for f in [ex.submit(tasks.square, i) for i in range(8)]] == [
            i * i for i in range(8)
        ]


def test_replacement_restores_full_pool(start_method: str, tmp_path: Path) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        first = Gate(tmp_path, "first")
        victim = ex.submit(tasks.signal_and_wait, *first.args)
        os.kill(first.wait_started(), signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            victim.result(timeout=30)
        # Two tasks that each wait for the other to have started: only a full pool of two
        # workers can run both at once.
        gates = [Gate(tmp_path, "a"), Gate(tmp_path, "b")]
        blocked = [ex.submit(tasks.signal_and_wait, *g.args) for g in gates]
        pids = [g.wait_started() for g in gates]
        assert len(set(pids)) == 2
        for g in gates:
            g.open()
        assert [f.result(timeout=30) for f in blocked] == pids


def test_worker_killed_while_idle_is_replaced(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        pid = ex.submit(tasks.getpid).result()
        os.kill(pid, signal.SIGKILL)
        # Whatever the timing, the next task runs, on a new worker.
        assert ex.submit(tasks.getpid).result(timeout=30) != pid


def test_every_worker_dying_at_once(start_method: str, tmp_path: Path) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        gates = [Gate(tmp_path, "a"), Gate(tmp_path, "b")]
        victims = [ex.submit(tasks.signal_and_wait, *g.args) for g in gates]
        queued = [ex.submit(tasks.square, i) for i in range(10)]
        for g in gates:
            os.kill(g.wait_started(), signal.SIGKILL)
        for v in victims:
            with pytest.raises(WorkerCrashedError):
                v.result(timeout=30)
        assert [f.result(timeout=30) for f in queued] == [i * i for i in range(10)]


def test_worker_killed_while_starting_is_replaced(start_method: str) -> None:
    ex = Executor(max_workers=1, start_method=start_method)
    # Kill the worker right away: most likely before it reported ready.
    (worker_pid,) = list(ex._dispatcher._workers)
    os.kill(worker_pid, signal.SIGKILL)
    assert ex.submit(tasks.square, 6).result(timeout=60) == 36
    ex.shutdown()
