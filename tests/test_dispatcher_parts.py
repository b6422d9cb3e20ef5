"""The dispatcher's policies on their own: assignment, task deadlines, startup failures, grace."""

from __future__ import annotations

import collections
import signal
import types
from concurrent.futures import Future
from typing import Any, Optional

import pytest

from poolkit._error_messages import crash_error, not_run_error
from poolkit._errors import BrokenProcessPool
from poolkit._pool.assignment import (
    LONG_TASK_DEPTH,
    MAX_IN_FLIGHT,
    assignments,
    in_flight_limit,
    steal_share,
    take_batch,
)
from poolkit._pool.deaths import StartupFailures
from poolkit._pool.stopping import TERMINATE_GRACE_SECONDS, GraceClock, TaskDeadlines
from poolkit._pool.tasks import TaskState


def _task(task_id: int, timeout: Optional[float] = None) -> TaskState:
    return TaskState(task_id, Future(), (), "fn", timeout=timeout)


class _Worker:
    """Just the fields the policies read: a stand-in for a WorkerHandle's bookkeeping."""

    def __init__(self, pid: int, held: int = 0, budget: Optional[int] = None) -> None:
        self.pid = pid
        self.assigned: collections.deque[TaskState] = collections.deque(
            _task(1000 + i) for i in range(held)
        )
        self.budget = budget
        self.progress_at = 0.0
        self.signals: list[signal.Signals] = []
        self.running = types.SimpleNamespace(sent=held)  # the claim ring's send count

    def signal(self, signum: signal.Signals) -> None:
        self.signals.append(signum)

    def note_progress(self, now: float) -> None:
        self.progress_at = now


def test_in_flight_limit_follows_the_measured_task_duration() -> None:
    # Not measured yet, or long: the running task and the next (which can be taken back).
    assert in_flight_limit(None) == LONG_TASK_DEPTH == 2
    assert in_flight_limit(0.5) == LONG_TASK_DEPTH
    assert in_flight_limit(0.0) == MAX_IN_FLIGHT
    assert in_flight_limit(0.0001) == 20
    assert in_flight_limit(0.004) == 2


def test_assignments_spread_a_small_queue_and_respect_budgets() -> None:
    pending = collections.deque(_task(i) for i in range(1, 5))
    busy, idle, budgeted = _Worker(1, held=1), _Worker(2), _Worker(3, budget=1)
    sent: dict[int, list[int]] = {}
    workers: list[Any] = [busy, idle, budgeted]
    for worker, batch in assignments(pending, workers, limit=10, now=0.001):
        sent[worker.pid] = [t.task_id for t in batch]
        worker.assigned.extend(batch)  # what sending does
    assert sent == {2: [1, 2], 3: [3], 1: [4]}
    assert not pending
    # Only the first task an idle worker gets is bound to it; the others stay pending
    # (prefetched, claimable, revocable) until the worker claims them.
    started = {t.task_id for w in workers for t in w.assigned if t.task_id < 1000 and t.claimed}
    assert started == {1, 3}


def test_a_timed_task_goes_alone_to_an_idle_worker() -> None:
    pending = collections.deque([_task(1), _task(2, timeout=5.0), _task(3)])
    assert [t.task_id for t in take_batch(pending, 10, idle=True)] == [1]
    assert [t.task_id for t in take_batch(pending, 10, idle=False)] == []
    assert [t.task_id for t in take_batch(pending, 10, idle=True)] == [2]
    assert [t.task_id for t in take_batch(pending, 10, idle=True)] == [3]


def test_a_cancelled_task_is_dropped_when_taken() -> None:
    cancelled = _task(1)
    cancelled.future.cancel()
    pending = collections.deque([cancelled, _task(2)])
    assert [t.task_id for t in take_batch(pending, 10, idle=True)] == [2]


def test_task_deadlines_come_out_soonest_first() -> None:
    deadlines = TaskDeadlines()
    assert deadlines.next is None
    deadlines.add(_task(1, timeout=30.0), pid=11)
    deadlines.add(_task(2, timeout=0.0), pid=12)
    deadlines.add(_task(3, timeout=60.0), pid=13)
    soonest = deadlines.next
    assert soonest is not None
    assert list(deadlines.pop_due(soonest)) == [(2, 12)]
    assert list(deadlines.pop_due(soonest + 45.0)) == [(1, 11)]
    assert deadlines.next is not None


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_startup_deaths_by_outside_signals_never_break_the_pool(signum: int) -> None:
    failures = StartupFailures()
    for _ in range(StartupFailures.LIMIT * 3):
        assert failures.worker_died(7, -signum, "spawn") is None


def test_startup_deaths_of_their_own_break_the_pool_after_the_limit() -> None:
    failures = StartupFailures()
    for _ in range(StartupFailures.LIMIT - 1):
        assert failures.worker_died(7, 1, "spawn") is None
    failures.worker_ready()  # a worker that made it resets the count
    for _ in range(StartupFailures.LIMIT - 1):
        assert failures.worker_died(7, 1, "spawn") is None
    why = failures.worker_died(7, 1, "spawn")
    assert why is not None
    assert "exited with code 1 while starting up" in why
    assert "3 times in a row" in why
    assert "__main__" in why  # the usual cause under spawn
    assert "__main__" not in (_limit_reached("fork") or "")


def _limit_reached(start_method: str) -> Optional[str]:
    failures = StartupFailures()
    why = None
    for _ in range(StartupFailures.LIMIT):
        why = failures.worker_died(7, 1, start_method)
    return why


def test_grace_clock_escalates_to_sigterm_then_sigkill() -> None:
    clock = GraceClock()
    worker: Any = _Worker(5)
    clock.escalate_if_due([worker], now=1e12)
    assert worker.signals == []  # not stopping: nothing is due
    clock.after_inboxes_closed()
    assert clock.deadline is not None
    clock.escalate_if_due([worker], now=clock.deadline - 0.5)
    assert worker.signals == []
    clock.escalate_if_due([worker], now=clock.deadline)
    assert worker.signals == [signal.SIGTERM]
    clock.escalate_if_due([worker], now=clock.deadline + TERMINATE_GRACE_SECONDS)
    assert worker.signals == [signal.SIGTERM, signal.SIGKILL]
    clock.escalate_if_due([], now=clock.deadline + TERMINATE_GRACE_SECONDS)
    assert clock.deadline is None  # every worker is gone


def test_errors_name_the_worker_the_signal_and_the_caller() -> None:
    error = crash_error(42, -signal.SIGKILL, "work", "Executor.kill_workers()")
    assert str(error) == (
        "worker process 42 was killed by SIGKILL by Executor.kill_workers() while running work()"
    )
    assert (error.pid, error.exitcode, error.fn_name) == (42, -9, "work")
    cause = ValueError("boom")
    broken = BrokenProcessPool("the initializer failed")
    broken.__cause__ = cause
    not_run = not_run_error(broken, None)
    assert str(not_run) == "the task did not run: the initializer failed"
    assert not_run.__cause__ is cause
    assert "stopped by Executor.terminate_workers()" in str(
        not_run_error(None, "Executor.terminate_workers()")
    )
    assert "the executor stopped first" in str(not_run_error(None, None))


def test_an_idle_worker_steals_half_of_a_busy_queue_or_all_behind_a_long_task() -> None:
    busy, thief = _Worker(1, held=5), _Worker(2)
    for task in list(busy.assigned)[1:]:
        task.board = object()  # type: ignore[assignment]  # pending in the worker: claimable
    busy.progress_at = 1.0
    victim, wanted = steal_share(thief, [busy, thief], now=1.001)  # it just finished one
    assert victim is busy and [t.task_id for t in wanted] == [1001, 1002]
    victim, wanted = steal_share(thief, [busy, thief], now=2.0)  # one task for a second
    assert [t.task_id for t in wanted] == [1001, 1002, 1003, 1004]
    assert steal_share(thief, [thief], now=2.0) == (None, [])
