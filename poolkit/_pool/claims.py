"""The parent's side of the claims: where each task handed to a worker stands.

A task handed to a busy worker stays *pending* until the worker claims it; the parent may take
it back until then (``_slots.RunningSlot`` explains the claim and why it cannot race). This
module holds the parent's steps on those claims: posting them with a batch, learning that a
task started, and taking tasks back, for an idle worker (stealing), for a higher priority, or
for ``cancel()``. Each step that changes ``TaskState.board`` does it under ``CLAIMS_LOCK``,
the lock a caller's ``cancel()`` takes too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable, Optional

from poolkit._pool.tasks import CLAIMS_LOCK, TaskState, claim_posted
from poolkit._pool.worker_handle import WorkerHandle


def post_claims(
    worker: WorkerHandle,
    batch: list[TaskState],
    top_priority: Optional[int],
    on_revoke: Callable[[TaskState], None],
) -> tuple[list[TaskState], list[TaskState]]:
    """Write each task's claim word before its frame is written; return (to send, outranked).

    The first task for an idle worker is bound to it (marked running already); the others
    are pending. Under ``CLAIMS_LOCK``, so a caller's ``cancel()`` either comes first (the
    task is dropped here, its waiters told) or finds the task posted and takes it back; and
    a task is not posted pending while one of a higher priority (``top_priority``, read under
    the same lock) waits in the parent: it is returned as outranked, to be queued again.
    """
    slot = worker.running
    bound_first = not worker.assigned and batch[0].claimed
    posted: list[TaskState] = []
    outranked: list[TaskState] = []
    with CLAIMS_LOCK:
        for index, task in enumerate(batch):
            if index == 0 and bound_first:
                slot.post(slot.sent, task.task_id, True)
                task.board = None
            else:
                if not task.claimed and task.future.cancelled():
                    notify_cancelled(task)
                    continue
                if top_priority is not None and top_priority > task.priority:
                    outranked.append(task)
                    continue
                slot.post(slot.sent, task.task_id, False)
                task.board = slot
                task.on_revoke = on_revoke
            task.seq = slot.sent
            slot.sent += 1
            posted.append(task)
    return posted, outranked


def note_next_started(worker: WorkerHandle) -> None:
    """After an answer: the worker's next task has started, or starts now.

    The worker claims its next task before it writes an answer, so in a stream of prefetched
    tasks the claim word is read without a lock. If the worker has not claimed it (it reads
    it from the next frame), it is claimed for the worker, which is free: either way its
    future is running from now on.
    """
    assigned = worker.assigned
    if not assigned:
        return
    head = assigned[0]
    board = head.board
    if board is None:
        return
    if board.is_started(head.seq, head.task_id) or board.claim_for_worker(head.seq, head.task_id):
        claim_posted(head)


def take_back(tasks: Iterable[TaskState]) -> list[TaskState]:
    """Revoke each task's claim; return those taken back (the others are marked started).

    The caller removes the returned tasks from their worker's list.
    """
    taken = []
    for task in tasks:
        with CLAIMS_LOCK:
            board = task.board
            if board is None:
                continue  # known started, or a caller took it meanwhile
            task.board = None
            if board.revoke(task.seq, task.task_id):
                taken.append(task)
            else:
                claim_posted(task)  # the worker claimed it first: it runs there
    return taken


def take_back_below(workers: Iterable[WorkerHandle], priority: int) -> list[TaskState]:
    """Take back every pending task of a priority lower than ``priority`` (any thread; the
    caller holds ``CLAIMS_LOCK``, and the dispatcher drops the tasks from their workers)."""
    held = [
        task
        for worker in list(workers)
        for task in list(worker.assigned)
        if task.board is not None and task.priority < priority
    ]
    return take_back(held)


def notify_cancelled(task: TaskState) -> None:
    """Tell the ``wait()``/``as_completed()`` waiters of a cancelled task; drop the task."""
    task.settle()
    try:
        task.future.set_running_or_notify_cancel()
    except RuntimeError:
        pass  # told already (a cancelled task can be met twice as a worker dies)
