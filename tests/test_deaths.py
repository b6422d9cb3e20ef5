"""A dead worker's tasks: whom the death is charged to, what goes to other workers."""

from __future__ import annotations

import collections
import signal
import types
from concurrent.futures import Future
from typing import Any, Optional

from poolkit import BrokenProcessPool, WorkerCrashedError
from poolkit._pool.deaths import (
    DEATHS_IN_A_ROW_LIMIT,
    LastTask,
    StartupFailures,
    last_task,
    settle_held_tasks,
)
from poolkit._pool.tasks import TaskState


def _task(task_id: int, name: str = "fn") -> TaskState:
    return TaskState(task_id, Future(), (), name)


def _dead_worker(
    tasks: list[TaskState],
    *,
    exit_expected: bool = False,
    halted: bool = False,
    fault: Optional[str] = None,
    fault_task: int = 0,
) -> Any:
    """The fields of a WorkerHandle that death handling reads."""
    return types.SimpleNamespace(
        pid=4242,
        assigned=collections.deque(tasks),
        exit_expected=exit_expected,
        halted=halted,
        fault=fault,
        fault_task=fault_task,
        loop_error=None,
    )


def _not_run() -> BaseException:
    return BrokenProcessPool("the task did not run: the executor stopped first")


def _settle(worker: Any, exitcode: Optional[int], last: LastTask, **kwargs: Any) -> Any:
    kwargs.setdefault("abandoned", False)
    kwargs.setdefault("forced_by", None)
    return settle_held_tasks(worker, exitcode, last, not_run_error=_not_run, **kwargs)


def test_the_running_task_is_charged_and_the_waiting_ones_go_elsewhere() -> None:
    running, waiting = _task(1, "crashes"), _task(2)
    settled = _settle(_dead_worker([running, waiting]), -signal.SIGSEGV, LastTask(1, 1))
    error = running.future.exception(timeout=0)
    assert isinstance(error, WorkerCrashedError)
    assert "worker process 4242 " in str(error) and "crashes()" in str(error)
    assert settled.requeue == [waiting] and settled.blamed == 1 and settled.died_on_its_own
    assert not waiting.future.done() and waiting.unstarted_deaths == 0


def test_a_forced_or_broken_pool_fails_every_task_it_held() -> None:
    running, waiting = _task(1), _task(2)
    worker = _dead_worker([running, waiting])
    settled = _settle(worker, -signal.SIGKILL, LastTask(1, 1), abandoned=True, forced_by="kill")
    assert "by kill" in str(running.future.exception(timeout=0))
    assert "did not run" in str(waiting.future.exception(timeout=0))
    assert settled.requeue == [] and not settled.died_on_its_own


def test_a_task_held_through_unexplained_deaths_fails_at_the_limit() -> None:
    suspect, fresh = _task(1), _task(2)
    suspect.unstarted_deaths = DEATHS_IN_A_ROW_LIMIT - 1
    settled = _settle(_dead_worker([suspect, fresh]), 1, LastTask(0, 0))
    assert isinstance(suspect.future.exception(timeout=0), WorkerCrashedError)
    assert settled.requeue == [fresh] and fresh.unstarted_deaths == 1


def test_a_worker_the_pool_halted_or_closed_is_no_unexplained_death() -> None:
    waiting = _task(2)
    for worker in (
        _dead_worker([waiting], halted=True),
        _dead_worker([waiting], exit_expected=True),
    ):
        exitcode = -signal.SIGKILL if worker.halted else 0
        settled = _settle(worker, exitcode, LastTask(0, 0))
        assert settled.requeue == [waiting] and not settled.died_on_its_own
    assert waiting.unstarted_deaths == 0


def test_a_pipe_fault_fails_its_task_and_those_that_started_after_it() -> None:
    writer, after, waiting = _task(2, "writer"), _task(3), _task(4)
    # The oldest unanswered task is charged with the fault; the worker had gone on to 3.
    worker = _dead_worker([writer, after, waiting], fault="held garbage", fault_task=2)
    worker.exit_expected = True  # the pool killed it for the fault
    settled = _settle(worker, -signal.SIGKILL, LastTask(3, 3))
    assert "result pipe held garbage" in str(writer.future.exception(timeout=0))
    assert "writer()" in str(after.future.exception(timeout=0))  # its answer was lost
    assert settled.requeue == [waiting] and settled.blamed == 2


def test_a_worker_cut_off_from_its_pipe_is_charged_to_its_last_task() -> None:
    unanswered = _task(7)
    worker = _dead_worker([unanswered])
    worker.running = types.SimpleNamespace(value=0, started=7)
    assert last_task(worker) == LastTask(crashed_id=7, last_started=7)
    worker.assigned.clear()  # answered: the death is nobody's
    assert last_task(worker) == LastTask(crashed_id=0, last_started=7)


def test_startup_failures_and_unexplained_deaths_share_one_limit() -> None:
    assert StartupFailures.LIMIT == DEATHS_IN_A_ROW_LIMIT
