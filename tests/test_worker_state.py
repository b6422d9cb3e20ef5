"""A worker handle's lifecycle (``WorkerState``) and how halting one task is decided."""

from __future__ import annotations

import collections
import os
import selectors
import types
from concurrent.futures import Future
from typing import Any, Optional

import pytest

from poolkit._pool import stopping
from poolkit._pool.stopping import FrozenLook, Halt, halt_task
from poolkit._pool.tasks import TaskState
from poolkit._pool.worker_handle import WorkerHandle, WorkerState


class _Channel:
    """The descriptors a handle registers: a real pipe, so a real selector takes them."""

    def __init__(self) -> None:
        self.outbox_fd, self._write_end = os.pipe()
        self.writer: Optional[types.SimpleNamespace] = types.SimpleNamespace(fd=self._write_end)

    def close(self) -> None:
        if self.writer is not None:
            os.close(self.outbox_fd)
            os.close(self._write_end)
            self.writer = None


def _handle(budget: Optional[int] = None) -> WorkerHandle:
    # No process is started: the handle's bookkeeping alone. This process stands in for
    # the worker (its pidfd is opened, watched and closed, never signalled).
    process: Any = types.SimpleNamespace(pid=os.getpid(), sentinel=-1, close=lambda: None)
    slot: Any = types.SimpleNamespace(close=lambda: None)
    channel: Any = _Channel()
    return WorkerHandle(process, channel, slot, budget)


def _task(task_id: int) -> TaskState:
    return TaskState(task_id, Future(), (), "fn")


def test_a_worker_takes_tasks_only_between_ready_and_closing() -> None:
    worker = _handle()
    try:
        assert worker.state is WorkerState.STARTING and not worker.accepting
        worker.mark_ready()
        assert worker.state is WorkerState.READY and worker.accepting
        assert not worker.exit_expected
        worker.mark_closing()
        assert worker.state is WorkerState.CLOSING and not worker.accepting
        assert worker.exit_expected and worker.reported_ready
        worker.mark_ready()  # a READY that was on its way: a closing worker stays closing
        assert worker.state is WorkerState.CLOSING
    finally:
        worker.close()
    assert worker.state is WorkerState.EXITED


def test_a_worker_closed_before_it_was_ready_is_remembered_as_never_ready() -> None:
    worker = _handle()
    try:
        worker.mark_fault("held garbage")
        assert worker.state is WorkerState.CLOSING
        assert not worker.reported_ready  # its death counts as a startup failure
        assert (worker.fault, worker.fault_task) == ("held garbage", 0)
    finally:
        worker.close()


def test_a_fault_is_charged_to_the_oldest_unanswered_task() -> None:
    worker = _handle()
    try:
        worker.mark_ready()
        worker.assigned.extend([_task(7), _task(8)])
        worker.mark_fault("held garbage")
        assert worker.fault_task == 7
    finally:
        worker.close()


def test_a_halted_worker_stays_halted_and_its_exit_is_expected() -> None:
    worker = _handle()
    try:
        worker.mark_ready()
        worker.mark_halted()
        worker.mark_closing()
        assert worker.state is WorkerState.HALTED and worker.halted
        assert worker.exit_expected and not worker.accepting
    finally:
        worker.close()


def test_a_spent_budget_stops_assignments_and_makes_the_exit_expected() -> None:
    worker, unlimited = _handle(budget=3), _handle()
    try:
        worker.mark_ready()
        assert not worker.spend_budget(2)
        assert worker.accepting and worker.budget == 1
        assert worker.spend_budget(1)
        assert not worker.accepting and worker.exit_expected
        assert worker.state is WorkerState.READY  # it still runs what it holds
        assert not unlimited.spend_budget(5) and unlimited.budget is None
    finally:
        worker.close()
        unlimited.close()


def test_the_handle_registers_and_unregisters_its_descriptors_once() -> None:
    worker = _handle()
    selector = selectors.DefaultSelector()
    try:
        worker.register(selector, lambda: None, lambda: None)
        assert worker.reading and len(selector.get_map()) == 2
        worker.watch_writable(selector, lambda: None)
        worker.watch_writable(selector, lambda: None)  # registered once
        assert len(selector.get_map()) == 3
        worker.stop_reading(selector)
        worker.stop_reading(selector)
        assert not worker.reading and len(selector.get_map()) == 2
        worker.unregister(selector)
        assert len(selector.get_map()) == 0
    finally:
        selector.close()
        worker.close()


@pytest.mark.parametrize(
    ("look", "answered", "expected"),
    [
        (FrozenLook(running=2, killed=True), False, Halt.KILLED),
        (FrozenLook(running=2, killed=False), True, Halt.ANSWERED),  # finished while we looked
        (FrozenLook(running=0, killed=False), False, Halt.SKIPPED_LATER),  # between tasks
        (FrozenLook(running=1, killed=False), False, Halt.SKIPPED_NOW),  # an earlier one runs
    ],
)
def test_halting_a_task_is_decided_from_what_the_frozen_worker_shows(
    monkeypatch: pytest.MonkeyPatch, look: FrozenLook, answered: bool, expected: Halt
) -> None:
    tasks = [_task(1), _task(2), _task(3)]
    target = tasks[1]
    worker: Any = types.SimpleNamespace(
        assigned=collections.deque(t for t in tasks if not (answered and t is target))
    )
    monkeypatch.setattr(stopping, "kill_if_running", lambda _worker, _task_id, _still: look)
    assert halt_task(worker, target, lambda: True) is expected
    assert list(worker.assigned) == [t for t in tasks if not (answered and t is target)]
    assert target.halt_error is None and not target.future.done()  # the dispatcher acts
