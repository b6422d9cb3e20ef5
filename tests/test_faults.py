"""Time limits, stopping running tasks, recycling by memory, killed task trees, thread races."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent import futures
from pathlib import Path

import pytest
import tasks
from conftest import wait_gone
from fifo import Gate

from poolkit import Executor, TaskStopped, TaskTimeoutError, WorkerCrashedError


@pytest.mark.smoke
def test_task_over_its_time_limit_is_stopped(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        others = [ex.submit(tasks.square, i) for i in range(20)]
        limited = ex.with_options(timeout=0.2).submit(tasks.sleep_then, 60, "late")
        with pytest.raises(
            TaskTimeoutError, match=r"sleep_then\(\) exceeded its time limit of 0.2 s"
        ):
            limited.result(timeout=30)
        assert isinstance(limited.exception(), TimeoutError)
        assert isinstance(limited.exception(), futures.TimeoutError)
        assert [f.result(timeout=30) for f in others] == [i * i for i in range(20)]
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9  # a replacement runs it


def test_pool_default_time_limit_and_per_task_override(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method, task_timeout=0.3) as ex:
        slow = ex.submit(tasks.sleep_then, 60, None)
        allowed = ex.with_options(timeout=None).submit(tasks.sleep_then, 0.5, "done")
        quick = ex.submit(tasks.square, 5)
        with pytest.raises(TaskTimeoutError):
            slow.result(timeout=30)
        assert allowed.result(timeout=30) == "done"
        assert quick.result(timeout=30) == 25


def test_time_limit_options_are_checked() -> None:
    with pytest.raises(ValueError, match="task_timeout must be > 0"):
        Executor(1, task_timeout=0)
    with pytest.raises(TypeError, match="max_memory_per_child"):
        Executor(1, max_memory_per_child=1.5)  # type: ignore[arg-type]
    with Executor(1) as ex, pytest.raises(TypeError, match="timeout must be a number"):
        ex.with_options(timeout="1")  # type: ignore[arg-type]


def test_stop_a_running_task(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=2, start_method=start_method) as ex:
        running = ex.submit(tasks.signal_and_wait, *gate.args)
        others = [ex.submit(tasks.square, i) for i in range(10)]
        pid = gate.wait_started()
        ex.stop(running)
        with pytest.raises(TaskStopped, match=r"stopped by Executor\.stop"):
            running.result(timeout=30)
        assert isinstance(running.exception(), futures.CancelledError)
        assert not wait_gone({pid}, timeout=10)
        assert [f.result(timeout=30) for f in others] == [i * i for i in range(10)]
        done = ex.submit(tasks.square, 4)
        assert done.result(timeout=30) == 16
        ex.stop(done)  # already finished: keeps its result
        assert done.result() == 16


def test_stop_a_queued_task_cancels_it(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        running = ex.submit(tasks.signal_and_wait, *gate.args)
        queued = ex.submit(tasks.square, 2)
        gate.wait_started()
        ex.stop(queued)
        gate.open()
        assert running.result(timeout=30) > 0
        assert queued.cancelled() or isinstance(queued.exception(timeout=30), TaskStopped)


def test_stop_never_hits_the_next_task(start_method: str, tmp_path: Path) -> None:
    # Short tasks measured first, so the worker is handed the queued task while it runs the
    # first one. Stopping the queued one must not touch the running one, and vice versa.
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        list(ex.map(tasks.square, range(100)))
        first = ex.submit(tasks.signal_and_wait, *gate.args)
        second = ex.submit(tasks.getpid)
        third = ex.submit(tasks.getpid)
        pid = gate.wait_started()
        ex.stop(second)
        with pytest.raises(futures.CancelledError):
            second.result(timeout=30)
        gate.open()
        assert first.result(timeout=30) == pid  # untouched
        assert third.result(timeout=30) == pid  # same worker: nobody was killed


def test_killing_a_task_kills_the_processes_it_started(start_method: str, tmp_path: Path) -> None:
    fifo = tmp_path / "child.pid"
    os.mkfifo(fifo)
    with Executor(max_workers=1, start_method=start_method) as ex:
        future = ex.with_options(timeout=1).submit(tasks.spawn_child_then_wait, str(fifo), 60)
        with open(fifo) as f:
            grandchild = int(f.read())
        with pytest.raises(TaskTimeoutError):
            future.result(timeout=30)
    assert not wait_gone({grandchild}, timeout=10), "the task's own child outlived the kill"


def test_workers_over_the_memory_limit_are_replaced(start_method: str) -> None:
    # Each task grows its worker by 20 MiB: with a limit just above an idle worker, every
    # worker retires after its first task.
    limit = 100 << 20
    with Executor(max_workers=1, start_method=start_method, max_memory_per_child=limit) as ex:
        pids = [ex.submit(tasks.allocate, 120).result(timeout=60) for _ in range(3)]
        assert len(set(pids)) == 3
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9


def test_shutdown_racing_many_submitting_threads(start_method: str) -> None:
    ex = Executor(max_workers=2, start_method=start_method)
    submitted: list[futures.Future[int]] = []
    refused = []
    lock = threading.Lock()
    start = threading.Barrier(17)

    def client(n: int) -> None:
        start.wait()
        for i in range(200):
            try:
                f = ex.submit(tasks.add, n, i)
            except RuntimeError:
                with lock:
                    refused.append((n, i))
                return
            with lock:
                submitted.append(f)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    start.wait()
    ex.shutdown(wait=True)
    for t in threads:
        t.join()
    # Every accepted future is resolved (shutdown ran them), none hangs.
    assert all(f.done() for f in submitted)
    assert all(f.exception() is None for f in submitted)
    assert len(submitted) + len(refused) >= 16


def test_chaos_soak_short(start_method: str) -> None:
    rng = random.Random(1234)
    kills = 0
    with Executor(max_workers=2, start_method=start_method) as ex:
        fs = {i: ex.submit(tasks.sleep_or_square, i) for i in range(600)}
        stop = threading.Event()

        def chaos() -> None:
            nonlocal kills
            while not stop.is_set():
                workers = list(ex._dispatcher._workers)
                if workers:
                    try:
                        os.kill(rng.choice(workers), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
                stop.wait(rng.uniform(0.02, 0.1))

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            _, not_done = futures.wait(fs.values(), timeout=120)
        finally:
            stop.set()
            killer.join()
        assert not not_done, "futures left unresolved"
        crashed = 0
        for i, f in fs.items():
            error = f.exception()
            if error is None:
                assert f.result() == i * i
            else:
                assert isinstance(error, WorkerCrashedError), error
                crashed += 1
        assert crashed <= kills
        assert ex.submit(tasks.square, 12).result(timeout=60) == 144


def test_several_time_limits_at_once(start_method: str) -> None:
    # Deadlines of different lengths in flight together each stop their own task only.
    with Executor(max_workers=2, start_method=start_method) as ex:
        long_limit = ex.with_options(timeout=5).submit(tasks.sleep_then, 0.5, "kept")
        short_limit = ex.with_options(timeout=0.2).submit(tasks.sleep_then, 60, None)
        assert long_limit.result(timeout=30) == "kept"
        with pytest.raises(TaskTimeoutError, match=r"0\.2 s"):
            short_limit.result(timeout=30)


def test_stop_racing_the_end_of_the_task(start_method: str) -> None:
    # stop() lands right around the moment the task finishes: either outcome is fine, but the
    # pool must never break and nothing may hang.
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    with Executor(max_workers=1, start_method=start_method) as ex:
        ex.submit(tasks.square, 1).result()
        for _ in range(150):
            future = ex.submit(tasks.sleep_then, 0.002, "done")
            time.sleep(0.002 + rng.uniform(-0.0005, 0.0008))  # aim at the task's last instant
            ex.stop(future)
            try:
                outcome = future.result(timeout=30)
            except futures.CancelledError as exc:  # TaskStopped is one
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            assert ex.submit(tasks.square, 2).result(timeout=30) == 4
    assert set(outcomes) <= {"done", "TaskStopped", "CancelledError"}


def test_stop_while_other_threads_submit(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        running = ex.submit(tasks.signal_and_wait, *gate.args)
        gate.wait_started()
        done = threading.Event()

        def flood() -> None:
            while not done.is_set():
                ex.submit(tasks.square, 3)

        flooders = [threading.Thread(target=flood) for _ in range(2)]
        for t in flooders:
            t.start()
        try:
            ex.stop(running)
            with pytest.raises(TaskStopped):
                running.result(timeout=30)
        finally:
            done.set()
            for t in flooders:
                t.join()
        assert ex.submit(tasks.square, 5).result(timeout=60) == 25
        ex.shutdown(cancel_futures=True)


def test_a_stopped_queued_task_is_not_run_again_when_its_worker_dies(
    start_method: str, tmp_path: Path
) -> None:
    # The queued task is stopped while it waits behind a running one in the same worker;
    # then that worker dies. The stopped task is settled: it must not be handed to the
    # replacement (it has nothing left to send, and sending it broke every new worker).
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        list(ex.map(tasks.square, range(100)))  # measured short: the queued task is prefetched
        running = ex.submit(tasks.signal_and_wait, *gate.args)
        queued = ex.submit(tasks.square, 3)
        behind = ex.submit(tasks.square, 4)
        pid = gate.wait_started()
        ex.stop(queued)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            running.result(timeout=30)
        assert queued.cancelled() or isinstance(queued.exception(timeout=30), TaskStopped)
        assert behind.result(timeout=30) == 16
        assert ex.submit(tasks.square, 5).result(timeout=30) == 25
