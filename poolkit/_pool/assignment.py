"""Which pending tasks go to which worker, and how many at a time.

A worker holds the task it runs and the next one while tasks are long or not yet measured.
Once tasks are measured short, a worker is handed enough of them to stay busy for a couple of
milliseconds, several in one frame, so a burst of tiny tasks costs one pipe write per batch
rather than per task. Only the first task given to an idle worker is bound to it; the others
stay *pending* in the worker (``_slots.RunningSlot``: claims) and the dispatcher takes them
back for a worker that goes idle while they still wait (:func:`steal_share`), for a higher
priority, or for ``cancel()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Optional

from poolkit._pool.pending import PendingQueue
from poolkit._pool.tasks import TaskState, claim
from poolkit._pool.worker_handle import WorkerHandle
from poolkit._wire.slots import CLAIM_RING

#: Prefetch several tasks only when tasks are shorter than this; longer or not yet measured
#: tasks are prefetched one deep (:data:`LONG_TASK_DEPTH`). A prefetched task can be taken
#: back by an idle worker, so depth costs no waiting, only a resend when it is taken back.
PREFETCH_BELOW_SECONDS = 0.005
#: Tasks a worker may hold when tasks are long: the one it runs and the next, so it starts
#: the next without waiting for the parent's round trip (0.1-1 ms per task, more on a busy
#: machine: the issue's 20 x 10 ms tasks behind a 1 s one took 224 ms at depth 1, against
#: the stdlib's 206 ms, whose call queue holds the next task).
LONG_TASK_DEPTH = 2
#: With prefetch, give a worker enough tasks to keep it busy for about this long.
PREFETCH_SECONDS = 0.002
MAX_IN_FLIGHT = 1024


def in_flight_limit(task_seconds: Optional[float]) -> int:
    """How many tasks a worker may hold, from the measured task duration."""
    if task_seconds is None or task_seconds >= PREFETCH_BELOW_SECONDS:
        return LONG_TASK_DEPTH
    if task_seconds <= 0:
        return MAX_IN_FLIGHT
    return max(LONG_TASK_DEPTH, min(MAX_IN_FLIGHT, int(PREFETCH_SECONDS / task_seconds)))


def assignments(
    pending: PendingQueue,
    candidates: Sequence[WorkerHandle],
    limit: int,
    now: float,
) -> Iterator[tuple[WorkerHandle, list[TaskState]]]:
    """Pop batches off ``pending`` for the ``candidates`` with room, least loaded first.

    Each batch must be sent (added to its worker's ``assigned``) before the next is asked
    for; a worker that was idle is noted as progressing at ``now``.
    """
    ordered = sorted(candidates, key=lambda w: len(w.assigned))
    for index, worker in enumerate(ordered):
        if not pending:
            return
        held = len(worker.assigned)
        # Top up a worker only once it has drained to half its limit: fewer, fuller frames.
        if held >= limit or (held and held > limit // 2):
            continue
        if held and now - worker.progress_at > PREFETCH_BELOW_SECONDS:
            continue  # it is running something long: queue nothing behind it
        if held and worker.assigned[0].timeout is not None:
            continue  # a task with a deadline runs alone (see take_batch)
        if held and worker.budget is not None:
            # No prefetch for a worker with a task budget: it counts the tasks it runs, and
            # one taken back from it would leave it waiting for a task it is never sent.
            continue
        if not held:
            worker.note_progress(now)
        share = -(-len(pending) // (len(ordered) - index))  # spread small queues out
        room = min(limit - held, share)
        if held:
            # The oldest task it holds must keep its claim word (see RunningSlot.post).
            room = min(room, CLAIM_RING - (worker.running.sent - worker.assigned[0].seq) - 1)
        if worker.budget is not None:
            room = min(room, worker.budget)
        batch = take_batch(pending, room, idle=not held)
        if batch:
            yield worker, batch


def take_batch(pending: PendingQueue, count: int, idle: bool) -> list[TaskState]:
    """Pop up to ``count`` tasks for one worker; the first, if the worker is ``idle``, is
    marked running (or dropped, cancelled). The others stay pending until the worker claims
    them (the dispatcher drops those cancelled meanwhile when it posts them).

    A task with a time limit goes alone to an idle worker: its clock then starts when it is
    sent, and killing its worker at the deadline disturbs no other task.
    """
    batch: list[TaskState] = []
    while len(batch) < count and pending:
        try:
            head = pending[0]
        except IndexError:
            break
        if head.timeout is not None and (batch or not idle):
            break
        task = pending.popleft()
        if idle and not batch and not claim(task):
            continue  # cancelled by the caller while it waited
        batch.append(task)
        if task.timeout is not None:
            break
    return batch


def steal_share(
    thief: WorkerHandle, workers: Iterable[WorkerHandle], now: float
) -> tuple[Optional[WorkerHandle], list[TaskState]]:
    """For an idle worker: the worker holding the most tasks not known to have started, and
    those to take back from it: all of them if it has been running one task for longer than
    a prefetch is meant to last (they would wait for it), else the older half (at least one:
    both workers then work through the rest)."""
    victim: Optional[WorkerHandle] = None
    waiting: list[TaskState] = []
    for worker in workers:
        if worker is thief:
            continue
        held = [task for task in worker.assigned if task.board is not None]
        if len(held) > len(waiting):
            victim, waiting = worker, held
    if victim is not None and now - victim.progress_at > PREFETCH_BELOW_SECONDS:
        return victim, waiting
    return victim, waiting[: -(-len(waiting) // 2)]
