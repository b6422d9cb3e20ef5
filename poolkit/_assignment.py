"""Which pending tasks go to which worker, and how many at a time.

A worker holds at most one task while tasks are long or not yet measured: a task queued
behind a running one waits even if another worker goes idle. Once tasks are measured short,
a worker is handed enough of them to stay busy for a couple of milliseconds, several in one
frame, so a burst of tiny tasks costs one pipe write per batch rather than per task.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Optional

from ._tasks import TaskState
from ._workers import WorkerHandle

#: Prefetch (hand a worker tasks beyond the one it runs) only when tasks are shorter than
#: this: a prefetched task waits behind the running one even if another worker goes idle, so
#: for long or not yet measured tasks the round trip saved is not worth that risk.
PREFETCH_BELOW_SECONDS = 0.005
#: With prefetch, give a worker enough tasks to keep it busy for about this long.
PREFETCH_SECONDS = 0.002
MAX_IN_FLIGHT = 1024


def in_flight_limit(task_seconds: Optional[float]) -> int:
    """How many tasks a worker may hold, from the measured task duration."""
    if task_seconds is None or task_seconds >= PREFETCH_BELOW_SECONDS:
        return 1
    if task_seconds <= 0:
        return MAX_IN_FLIGHT
    return max(2, min(MAX_IN_FLIGHT, int(PREFETCH_SECONDS / task_seconds)))


def assignments(
    pending: collections.deque[TaskState],
    candidates: Sequence[WorkerHandle],
    limit: int,
    now: float,
) -> Iterator[tuple[WorkerHandle, list[TaskState]]]:
    """Pop batches off ``pending`` for the ``candidates`` with room, least loaded first.

    Each batch must be sent (added to its worker's ``assigned``) before the next is asked
    for; a worker that was idle has its ``progress_at`` set to ``now``.
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
        if not held:
            worker.progress_at = now
        share = -(-len(pending) // (len(ordered) - index))  # spread small queues out
        room = min(limit - held, share)
        if worker.budget is not None:
            room = min(room, worker.budget)
        batch = take_batch(pending, room, idle=not held)
        if batch:
            yield worker, batch


def take_batch(pending: collections.deque[TaskState], count: int, idle: bool) -> list[TaskState]:
    """Pop up to ``count`` tasks for one worker, marking each running (or dropping it, cancelled).

    A task with a time limit goes alone to an idle worker: its clock then starts when it is
    sent, and killing its worker at the deadline disturbs no other task.
    """
    batch: list[TaskState] = []
    while len(batch) < count and pending:
        head = pending[0]
        if head.timeout is not None and (batch or not idle):
            break
        task = pending.popleft()
        if not task.started:
            if not task.future.set_running_or_notify_cancel():
                continue  # cancelled by the caller while it waited
            task.started = True
        batch.append(task)
        if task.timeout is not None:
            break
    return batch
