"""Every way poolkit stops something, in one place. The words mean one thing each:

* **halt**: stop one task that a worker may be running, without touching the worker's next
  task (:func:`halt_task`). Two things halt a task: its time limit (:class:`TaskDeadlines`,
  ``TaskTimeoutError``) and ``Executor.stop(future)``.
* **stop**: ``Executor.stop(future)``, a caller's request to halt the task of a future (a
  queued task is simply cancelled). ``TaskStopped`` is its error.
* **shutdown**: ``Executor.shutdown()``: the pool drains what is queued, then closes every
  inbox, and each worker exits when it reads end-of-file (``PoolState.DRAINING``,
  ``CLOSING``). A worker that outstays its **grace** (:class:`GraceClock`) is escalated,
  SIGTERM then SIGKILL, so a task that ignores end-of-file or catches SIGTERM cannot keep
  ``shutdown`` waiting forever.
* **force**: ``terminate_workers()`` / ``kill_workers()``: every worker is signalled at once,
  and the tasks they held fail (``PoolState.FORCED``); the same grace then escalates.

Halting closes a race. A worker runs its tasks back to back, so "kill the worker if it is
still running task 7" is racy: between the parent's look and its kill the worker may finish
task 7 and start task 8. poolkit closes the race in three steps:

1. put task 7 on the worker's skip list (shared memory): if the worker has not written 7 into
   its running slot yet, it will see the skip right after it does, and never run the task;
2. freeze the worker with SIGSTOP and wait until the kernel reports it stopped, so nothing
   in it can change the slot any more;
3. read the slot: 7 means task 7 is running (or about to see its skip): kill the worker's
   whole process group. Anything else means task 7 is not running and cannot start:
   let the worker go on with SIGCONT.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import os
import signal
import time
from collections.abc import Iterable, Iterator
from typing import Callable, NamedTuple, Optional

from poolkit._pool.tasks import TaskState
from poolkit._pool.worker_handle import WorkerHandle

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- halting one task

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


class FrozenLook(NamedTuple):
    """What :func:`kill_if_running` saw in the frozen worker, and what it did."""

    #: The id in the worker's running slot when it was frozen (0: between tasks).
    running: int
    #: The worker's process group was killed: it was running the task, unanswered.
    killed: bool


def kill_if_running(
    worker: WorkerHandle, task_id: int, still_running: Callable[[], bool]
) -> FrozenLook:
    """Kill ``worker`` if, and only if, it is running ``task_id``.

    ``still_running`` is asked while the worker is frozen with ``task_id`` in its slot: it
    may have finished the task and be writing its answer (the slot is cleared after the
    write); False spares the worker.

    Unless the worker was killed, the task is not running and, being on the skip list,
    never will (or it finished while we looked).
    """
    worker.running.add_skip(task_id)
    pid = worker.pid
    worker.signal(signal.SIGSTOP)
    try:
        _wait_still(pid)
        running = worker.running.value
        if running != task_id or not still_running():
            return FrozenLook(running, killed=False)  # not running it, or finished meanwhile
        kill_group(pid)
        return FrozenLook(running, killed=True)
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


class Halt(enum.Enum):
    """What :func:`halt_task` found, and so what the dispatcher does with the task."""

    #: It was running: its worker is being killed. Mark the worker HALTED (its death is
    #: then not charged to the task as a crash), take the task off it, fail it.
    KILLED = "killed"
    #: It finished first: its result stands.
    ANSWERED = "answered"
    #: Not running, and on the skip list: the worker answers SKIPPED when it gets to it (or
    #: a result it had already sent arrives first, and wins).
    SKIPPED_LATER = "skipped later"
    #: Not started, and the worker is busy with a task queued before it: it certainly has
    #: not started, so its future need not wait for the worker to get there. Fail it now.
    SKIPPED_NOW = "skipped now"


def halt_task(worker: WorkerHandle, task: TaskState, still_assigned: Callable[[], bool]) -> Halt:
    """Make sure ``task`` never completes on ``worker``; say how (see :class:`Halt`).

    ``still_assigned`` is asked while the worker is frozen with the task in its slot: it
    reads whatever the worker has written so far (an answer wins) and says whether the task
    is still unanswered and no answer is half-read. Neither the worker's handle nor the
    task is changed here: the dispatcher acts on the answer.
    """
    look = kill_if_running(worker, task.task_id, still_assigned)
    if look.killed:
        return Halt.KILLED
    if task not in worker.assigned:
        return Halt.ANSWERED
    earlier = itertools.takewhile(lambda t: t is not task, worker.assigned)
    if any(t.task_id == look.running for t in earlier):
        return Halt.SKIPPED_NOW
    return Halt.SKIPPED_LATER


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


# ------------------------------------------------------- a stopping pool's grace

#: After the inboxes close, how long a worker may take to exit before it is terminated.
EXIT_GRACE_SECONDS = 10.0
#: After SIGTERM, how long before SIGKILL.
TERMINATE_GRACE_SECONDS = 2.0


class GraceClock:
    """The stopping pool's next deadline, and which signal comes when it passes."""

    __slots__ = ("_next_signal", "deadline")

    def __init__(self) -> None:
        #: When the workers still alive get the next signal; None while not stopping.
        self.deadline: Optional[float] = None
        self._next_signal = signal.SIGTERM

    def after_inboxes_closed(self) -> None:
        """The workers were asked to exit: give them ``EXIT_GRACE_SECONDS``, then SIGTERM."""
        self._arm(EXIT_GRACE_SECONDS, signal.SIGTERM)

    def after_signal(self) -> None:
        """The workers were signalled (any signal): SIGKILL those that outlive it."""
        # After SIGKILL too: a worker stuck in the kernel gets it again until it is gone.
        self._arm(TERMINATE_GRACE_SECONDS, signal.SIGKILL)

    def escalate_if_due(self, workers: Iterable[WorkerHandle], now: float) -> None:
        """Signal every worker still alive once the deadline has passed."""
        if self.deadline is None or now < self.deadline:
            return
        signum = self._next_signal
        alive = list(workers)
        if not alive:
            self.deadline = None
            return
        for worker in alive:
            logger.warning(
                "poolkit worker %d did not exit in time; sending %s", worker.pid, signum.name
            )
            worker.signal(signum)
        self.after_signal()

    def _arm(self, seconds: float, then: signal.Signals) -> None:
        self.deadline = time.monotonic() + seconds
        self._next_signal = then
