"""Shutdown, cancellation, forced stops, recycling, garbage collection, signals."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
from concurrent import futures
from pathlib import Path

import pytest
import tasks
from conftest import wait_gone
from fifo import Gate

from poolkit import BrokenProcessPool, Executor, WorkerCrashedError


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.smoke
def test_shutdown_waits_for_queued_work_and_reaps_workers(start_method: str) -> None:
    ex = Executor(max_workers=2, start_method=start_method)
    pids = {f.result() for f in [ex.submit(tasks.getpid) for _ in range(10)]}
    fs = [ex.submit(tasks.sleep_then, 0.001, i) for i in range(100)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(100))
    # Reaped by the time shutdown returns: no waiting here.
    assert not [pid for pid in pids if _alive(pid)]
    ex.shutdown()  # a second call is harmless


def test_shutdown_without_wait_still_finishes_the_work(start_method: str) -> None:
    ex = Executor(max_workers=2, start_method=start_method)
    fs = [ex.submit(tasks.square, i) for i in range(50)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in fs] == [i * i for i in range(50)]


def test_cancel_futures_cancels_what_has_not_started(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        running = ex.submit(tasks.signal_and_wait, *gate.args)
        queued = [ex.submit(tasks.square, i) for i in range(20)]
        gate.wait_started()
        with futures.ThreadPoolExecutor(2) as waiters:
            # Waiters in other threads learn of the cancellations: the dispatcher tells
            # them when it drops the tasks.
            seen = waiters.submit(lambda: list(futures.as_completed(queued, timeout=30)))
            waited = waiters.submit(futures.wait, queued, 30)
            ex.shutdown(wait=False, cancel_futures=True)
            assert all(f.cancelled() for f in queued)  # decided before shutdown returned
            assert len(seen.result(timeout=30)) == 20  # not a TimeoutError
            done, not_done = waited.result(timeout=30)
            assert len(done) == 20 and not not_done
        gate.open()
        assert running.result(timeout=30) > 0
    assert all(f.cancelled() for f in queued)


def test_context_manager_and_callback_shutdown(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        future = ex.submit(tasks.square, 3)
        seen = []
        # Callbacks run in the dispatcher thread: shutdown there must not deadlock.
        future.add_done_callback(lambda f: (seen.append(f.result()), ex.shutdown(wait=True)))
        assert future.result(timeout=30) == 9
    assert seen == [9]


@pytest.mark.parametrize(
    ("method", "signal_name"), [("terminate_workers", "SIGTERM"), ("kill_workers", "SIGKILL")]
)
def test_terminate_and_kill_workers(
    start_method: str, tmp_path: Path, method: str, signal_name: str
) -> None:
    gate = Gate(tmp_path)
    ex = Executor(max_workers=1, start_method=start_method)
    running = ex.submit(tasks.signal_and_wait, *gate.args)
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    pid = gate.wait_started()
    getattr(ex, method)()
    with pytest.raises(WorkerCrashedError, match=f"{signal_name} by Executor.{method}"):
        running.result(timeout=30)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    assert not wait_gone({pid}, timeout=10)
    ex.shutdown()


@pytest.mark.smoke
def test_max_tasks_per_child_recycles_workers(start_method: str) -> None:
    # Under every start method, fork included (the stdlib refuses fork here).
    with Executor(max_workers=1, max_tasks_per_child=3, start_method=start_method) as ex:
        pids = [ex.submit(tasks.getpid).result(timeout=30) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5]
    assert len({pids[0], pids[3], pids[6]}) == 3


def test_max_tasks_per_child_with_many_tasks(start_method: str) -> None:
    with Executor(max_workers=2, max_tasks_per_child=10, start_method=start_method) as ex:
        results = list(ex.map(tasks.getpid, range(200)))
    assert len(set(results)) >= 20


def test_workers_ignore_sigint(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        future = ex.submit(tasks.signal_and_wait, *gate.args)
        pid = gate.wait_started()
        os.kill(pid, signal.SIGINT)  # arrives while the task blocks in a read
        gate.open()
        assert future.result(timeout=30) == pid  # no KeyboardInterrupt, no crash
        assert ex.submit(tasks.getpid).result(timeout=30) == pid


def test_garbage_collected_executor_stops_its_workers(start_method: str) -> None:
    ex = Executor(max_workers=2, start_method=start_method)
    pids = {f.result() for f in [ex.submit(tasks.getpid) for _ in range(10)]}
    del ex
    gc.collect()
    assert not wait_gone(pids, timeout=15)


def test_killed_child_during_shutdown_does_not_hang(start_method: str) -> None:
    ex = Executor(max_workers=1, start_method=start_method)
    future = ex.submit(tasks.hard_exit, 1)
    ex.shutdown(wait=True)
    with pytest.raises(BrokenProcessPool):
        future.result()


def test_futures_wait_across_a_crash(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        fs = [ex.submit(tasks.square, i) for i in range(20)] + [ex.submit(tasks.segfault)]
        done, not_done = futures.wait(fs, timeout=60)
        assert not not_done
        assert sum(1 for f in done if f.exception() is not None) == 1


def _hold_until_told(release: multiprocessing.synchronize.Event) -> None:
    release.wait(60)


def test_shutdown_is_not_held_up_by_processes_forked_later(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A process forked from the parent after the pool started (here a plain fork-context
    # Process) inherits the parent's ends of the workers' inboxes. Shutdown must not wait
    # for that process: the workers are told to stop, not left waiting for end-of-file.
    ex = Executor(max_workers=2, start_method=start_method)
    pids = {f.result() for f in [ex.submit(tasks.getpid) for _ in range(10)]}
    context = multiprocessing.get_context("fork")
    release = context.Event()
    bystander = context.Process(target=_hold_until_told, args=(release,))
    bystander.start()
    try:
        with caplog.at_level(logging.WARNING, logger="poolkit"):
            ex.shutdown(wait=True)
        assert not [pid for pid in pids if _alive(pid)]
        assert "did not exit in time" not in caplog.text
    finally:
        release.set()
        bystander.join()


def test_a_worker_that_ignores_sigterm_is_killed_after_its_grace(
    start_method: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ex = Executor(max_workers=1, start_method=start_method, initializer=tasks.ignore_sigterm)
    running = ex.submit(tasks.signal_and_wait, *gate.args)
    pid = gate.wait_started()
    ex.terminate_workers()
    # SIGTERM is ignored: only the escalation to SIGKILL ends the worker.
    with pytest.raises(WorkerCrashedError, match=r"SIGKILL by Executor\.terminate_workers"):
        running.result(timeout=30)
    assert not wait_gone({pid}, timeout=10)
    ex.shutdown()
