"""A worker's death: which task is to blame, which go to other workers, and when deaths
before READY mean the pool cannot start workers at all.

The dispatcher sees a death through the worker's death descriptor (``_on_worker_exit``). By
then it has read every answer the worker wrote, so each task still in the worker's list is
one of:

* the task it died running (its running slot names it, or names it as the last it took
  while its answer never came: that task cut the worker off from its pipe). It fails with
  ``WorkerCrashedError``; sent to another worker it would do the same again;
* after a fault on the result pipe (bytes the worker did not write as a message), the task
  charged with the fault, and the tasks that started after it: their answers sit behind the
  stray bytes. They fail;
* a task that had not started: it goes back to the queue, for another worker. Unless the
  worker died for no visible reason a few times in a row holding it (it may be the one that
  kills them, say by an argument too large to read): then it fails;
* any task, when the pool was forced or broke: it fails, it did not run.

A worker that dies before READY (its initializer exited or crashed, a script without the
``__main__`` guard under spawn) is replaced, unless that keeps happening by itself:
:class:`StartupFailures` tells bad luck from a broken setup.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from typing import Callable, NamedTuple, Optional

from poolkit._error_messages import (
    collateral_error,
    crash_error,
    name_exception,
    startup_failed_reason,
    unstarted_crash_error,
)
from poolkit._errors import describe_exit
from poolkit._pool.claims import notify_cancelled
from poolkit._pool.tasks import TaskState, fail
from poolkit._pool.worker_handle import WorkerHandle

logger = logging.getLogger(__name__)

#: How many times in a row the pool lets a death go unexplained before it gives up: workers
#: that die by themselves before READY (then the pool is broken), or workers that die for no
#: task's fault holding the same task before it started (then that task fails, through
#: ``_errors.unstarted_crash_error``, instead of being sent on).
DEATHS_IN_A_ROW_LIMIT = 3


class LastTask(NamedTuple):
    """What a dead worker's running slot says, read before the slot is closed."""

    #: The task it died running (0: none).
    crashed_id: int
    #: The last task it took (0 before the first), answered or not.
    last_started: int


def last_task(worker: WorkerHandle) -> LastTask:
    """Read the dead worker's slot: which task it died running, and which it took last."""
    slot = worker.running
    crashed_id, last_started = slot.value, slot.started
    # Its slot says idle, but the last task it took is unanswered: that task's code cut the
    # worker off from its pipe (dup2 over it, closed it), so its answer went nowhere and the
    # worker then ended, maybe with code 0. The task is charged with the death; sent to
    # another worker, it would do the same forever.
    if not crashed_id and last_started and any(t.task_id == last_started for t in worker.assigned):
        crashed_id = last_started
    return LastTask(crashed_id, last_started)


class Settled(NamedTuple):
    """What :func:`settle_held_tasks` did with a dead worker's tasks."""

    #: Tasks that had not started, to be queued again (in the worker's order).
    requeue: list[TaskState]
    #: Tasks failed because of this death (the crash, the fault, the unexplained limit).
    blamed: int
    #: The worker died by itself, not asked to and not stopped by the pool.
    died_on_its_own: bool


def settle_held_tasks(
    worker: WorkerHandle,
    exitcode: Optional[int],
    last: LastTask,
    *,
    abandoned: bool,
    forced_by: Optional[str],
    not_run_error: Callable[[], BaseException],
) -> Settled:
    """Fail, or hand back for requeueing, every task the dead worker still held.

    ``abandoned``: the pool was forced or broke (``PoolState.abandons_tasks``): every task
    that is not to blame fails with ``not_run_error()``, which names why.
    """
    crashed_id = last.crashed_id
    # Code 0 is a death of its own too when the worker was not asked to end: only an inbox
    # closed by the pool, a spent task budget or a memory limit end it cleanly.
    unasked = not worker.exit_expected or worker.fault is not None
    died_on_its_own = (exitcode != 0 or unasked) and not worker.halted and not abandoned
    # A worker that died on its own while running no task may have been killed by one it
    # held before that task started (reading an argument too large for its memory). Such a
    # task is sent on a few times, then failed: resending it forever would hang.
    unexplained = died_on_its_own and not (crashed_id or worker.fault_task)
    guilty, collateral = _after_the_fault(worker, crashed_id or last.last_started)
    requeue = []
    blamed = 0
    for task in worker.assigned:
        if task.task_id == worker.fault_task or (
            task.task_id == crashed_id and worker.fault is None
        ):
            blamed += 1
            fail(task, crash_error(worker.pid, exitcode, task.fn_name, forced_by, worker.fault))
        elif task.task_id in collateral:
            # Started after the task that wrote into the pipe: its answer sits behind the
            # stray bytes and cannot be read. It started, so it is not run again.
            blamed += 1
            fail(task, collateral_error(worker.pid, exitcode, task.fn_name, worker.fault, guilty))
        elif abandoned:
            fail(task, not_run_error())
        elif task.future.done():
            if task.future.cancelled() and not task.claimed:
                notify_cancelled(task)  # cancelled by a caller as the worker died
            continue  # settled while it waited here (stopped, past its deadline): done
        elif unexplained and task.unstarted_deaths + 1 >= DEATHS_IN_A_ROW_LIMIT:
            blamed += 1
            error = unstarted_crash_error(
                worker.pid, exitcode, task.fn_name, DEATHS_IN_A_ROW_LIMIT, worker.loop_error
            )
            fail(task, error)
        else:
            task.unstarted_deaths += unexplained
            requeue.append(task)  # taken but not started: another worker runs it
    return Settled(requeue, blamed, died_on_its_own)


def _after_the_fault(worker: WorkerHandle, last_started: int) -> tuple[str, set[int]]:
    """The name of the task charged with a fault on the worker's pipe, and the ids of the
    tasks that started after it, up to ``last_started`` (a worker runs its tasks in the
    order sent)."""
    if worker.fault is None or not worker.fault_task:
        return "", set()
    ids = [t.task_id for t in worker.assigned]
    if worker.fault_task not in ids or last_started not in ids:
        return "another task", set()
    first = ids.index(worker.fault_task)
    guilty = worker.assigned[first].fn_name
    return guilty, set(ids[first + 1 : ids.index(last_started) + 1])


def log_death(worker: WorkerHandle, exitcode: Optional[int], settled: Settled) -> None:
    """Warn about a death that cost tasks, or that the worker brought on itself."""
    requeued: Sequence[TaskState] = settled.requeue
    if not (settled.blamed or (requeued and settled.died_on_its_own)):
        return
    logger.warning(
        "poolkit worker %d %s%s; %d task(s) failed, %d requeued",
        worker.pid,
        describe_exit(exitcode),
        name_exception(worker.loop_error)
        if worker.fault is None
        else f" (its result pipe {worker.fault})",
        settled.blamed,
        len(requeued),
    )


class StartupFailures:
    """Counts workers that die before they are ready, to tell bad luck from a broken setup.

    A worker killed from outside (SIGKILL, SIGTERM: an OOM killer, a user, a chaos test) is
    simply replaced. A worker that ends by itself before it is ready, several times in a
    row, means a broken setup (an initializer that exits or crashes, a script without the
    ``__main__`` guard), and retrying forever would hide it.
    """

    #: Workers in a row that may end by themselves before they are ready.
    LIMIT = DEATHS_IN_A_ROW_LIMIT

    __slots__ = ("in_a_row",)

    def __init__(self) -> None:
        self.in_a_row = 0

    def worker_ready(self) -> None:
        self.in_a_row = 0

    def worker_died(self, pid: int, exitcode: Optional[int], start_method: str) -> Optional[str]:
        """Record a death before READY; return why the pool must give up, or None to retry."""
        killed = exitcode is not None and -exitcode in (signal.SIGKILL, signal.SIGTERM)
        if not killed:
            self.in_a_row += 1
        if killed or self.in_a_row < self.LIMIT:
            return None
        return startup_failed_reason(pid, exitcode, self.in_a_row, start_method)
