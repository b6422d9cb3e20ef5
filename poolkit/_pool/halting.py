"""Stopping one running task without ever touching the worker's next one.

A worker runs its tasks back to back, so "kill the worker if it is still running task 7"
is a race: between the parent's look and its kill the worker may finish task 7 and start
task 8. poolkit closes the race in three steps:

1. put task 7 on the worker's skip list (shared memory): if the worker has not written 7 into
   its running slot yet, it will see the skip right after it does, and never run the task;
2. freeze the worker with SIGSTOP and wait until the kernel reports it stopped, so nothing
   in it can change the slot any more;
3. read the slot: 7 means task 7 is running (or about to see its skip): kill the worker's
   whole process group. Anything else means task 7 is not running and cannot start:
   let the worker go on with SIGCONT.
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import time
from collections.abc import Iterator
from typing import Callable, Optional

from poolkit._errors import TaskStopped, TaskTimeoutError
from poolkit._pool.tasks import TaskState, fail
from poolkit._pool.worker_handle import WorkerHandle

#: How long to wait for a frozen worker to be reported stopped before deciding anyway.
_FREEZE_WAIT_SECONDS = 1.0
# A process in these states runs no user code: its memory cannot change under us.
_STILL_STATES = frozenset("TtDZX")


def kill_group(pid: int) -> None:
    """SIGKILL a worker and every process its tasks started (its process group)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_if_running(worker: WorkerHandle, task_id: int, still_running: Callable[[], bool]) -> int:
    """Kill ``worker`` if, and only if, it is running ``task_id``.

    ``still_running`` is asked while the worker is frozen with ``task_id`` in its slot: it
    may have finished the task and be writing its answer (the slot is cleared after the
    write); False spares the worker.

    Returns the id the worker was running when it was frozen (0: between tasks); equal to
    ``task_id`` means it was killed. Otherwise the task is not running and, being on the
    skip list, never will.
    """
    worker.running.add_skip(task_id)
    pid = worker.pid
    worker.signal(signal.SIGSTOP)
    try:
        _wait_still(pid)
        running = worker.running.value
        if running == task_id:
            if not still_running():
                return -1  # finished while we looked: not killed
            kill_group(pid)
        return running
    finally:
        worker.signal(signal.SIGCONT)  # harmless on a killed process


def _wait_still(pid: int) -> None:
    deadline = time.monotonic() + _FREEZE_WAIT_SECONDS
    delay = 0.00005
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone
        if state in _STILL_STATES:
            return
        time.sleep(delay)  # the stop lands within microseconds; no event exists for it
        delay = min(delay * 2, 0.005)


def halt_task(
    worker: WorkerHandle,
    task: TaskState,
    error: Callable[[bool], BaseException],
    still_assigned: Callable[[], bool],
) -> None:
    """Make sure ``task`` never completes on ``worker``; its future gets ``error(killed)``.

    ``still_assigned`` is asked while the worker is frozen with the task in its slot: it
    reads whatever the worker has written so far (an answer wins) and says whether the task
    is still unanswered and no answer is half-read.
    """
    running = kill_if_running(worker, task.task_id, still_assigned)
    if running == task.task_id:
        worker.closing = True  # dying: give it nothing more
        worker.halted = True
        worker.assigned.remove(task)  # not charged as a crash when the worker's exit shows
        fail(task, error(True))
        return
    if task not in worker.assigned:
        return  # it finished first: its result stands
    # Not running, and on the skip list: the worker answers SKIPPED when it gets to it
    # (or a result it had already sent arrives first, and wins).
    task.halt_error = error(False)
    earlier = itertools.takewhile(lambda t: t is not task, worker.assigned)
    if any(t.task_id == running for t in earlier):
        # The worker is busy with a task queued before this one: this one has certainly
        # not started, so its future need not wait for the worker to get there.
        fail(task, task.halt_error)


def stopped_error(task: TaskState, pid: int, killed: bool) -> BaseException:
    """The error of a task stopped by ``Executor.stop()``."""
    how = f"its worker (pid {pid}) was killed" if killed else "it never ran"
    return TaskStopped(f"{task.fn_name}() was stopped by Executor.stop(); {how}")


def timeout_error(task: TaskState, pid: int, killed: bool) -> BaseException:
    """The error of a task that ran past its time limit."""
    how = f"its worker (pid {pid}) was killed" if killed else "it never started"
    return TaskTimeoutError(
        f"{task.fn_name}() exceeded its time limit of {task.timeout:g} s; {how}"
    )


class TaskDeadlines:
    """The deadlines of running tasks with a time limit, soonest first."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []  # (deadline, task id, worker pid)

    def add(self, task: TaskState, pid: int) -> None:
        """Start ``task``'s clock: it was just sent, alone, to worker ``pid``."""
        assert task.timeout is not None
        heapq.heappush(self._heap, (time.monotonic() + task.timeout, task.task_id, pid))

    @property
    def next(self) -> Optional[float]:
        """The soonest deadline, or None."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[int, int]]:
        """Take every (task id, worker pid) whose deadline is not after ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, task_id, pid = heapq.heappop(heap)
            yield task_id, pid
