"""Part of the dispatcher: handing pending tasks to workers, and writing them.

Which worker gets which tasks, and how many, is decided in ``_pool.assignment``; the claim
words that let a prefetched task be taken back are posted by ``_pool.claims``. Here the
dispatcher applies both: it sends batches, lets an idle worker take back tasks that wait in
another, settles tasks callers took back, and writes frames without ever blocking (a frame
that does not fit in the pipe waits for the inbox to be writable).
"""

from __future__ import annotations

import time

from poolkit._pool.assignment import assignments, in_flight_limit, steal_share
from poolkit._pool.claims import notify_cancelled, post_claims, take_back
from poolkit._pool.dispatcher_core import DispatcherCore
from poolkit._pool.tasks import CLAIMS_LOCK, TaskState
from poolkit._pool.worker_handle import WorkerHandle
from poolkit._wire.messages import Buffer, batch_prefix


class Sending(DispatcherCore):
    """The dispatcher's sending side (a part of ``Dispatcher``; see ``_pool.dispatcher_core``)."""

    def _assign(self) -> None:
        """Give pending tasks to workers with room (see ``_pool.assignment``); then let each idle
        worker take back tasks that wait, unstarted, in another worker."""
        if not self._state.assigns:
            return
        if self.pending:
            candidates = [w for w in self._workers.values() if w.accepting]
            limit = in_flight_limit(self._task_seconds)
            for worker, batch in assignments(self.pending, candidates, limit, time.monotonic()):
                self._send(worker, batch)
        if not self.pending:
            self._steal_for_idle()

    def _steal_for_idle(self) -> None:
        """No task waits in one worker while another is idle: take it back, send it over."""
        workers = self._workers.values()
        # Only a task behind another can wait (a worker's first task is started, or is
        # claimed for it as soon as it is free): most loops end here.
        if not any(len(w.assigned) > 1 for w in workers):
            return
        for thief in [w for w in workers if w.accepting and not w.assigned]:
            victim, wanted = steal_share(thief, self._workers.values(), time.monotonic())
            if victim is None:
                return
            taken = take_back(wanted)
            for task in taken:
                victim.assigned.remove(task)
            if not taken:
                continue
            self.pending.requeue(taken)
            limit = in_flight_limit(self._task_seconds)
            for worker, batch in assignments(self.pending, [thief], limit, time.monotonic()):
                self._send(worker, batch)

    def _take_back_revoked(self) -> None:
        """Settle the tasks callers took back from workers (see ``_revoked``)."""
        requeue = []
        while self._revoked:
            task = self._revoked.popleft()
            for worker in self._workers.values():
                try:
                    worker.assigned.remove(task)
                except ValueError:
                    continue
                # Only where it is found: a task not in a worker's list any more was
                # requeued or settled (and its waiters told) by a worker's death.
                if task.future.cancelled() and not task.claimed:
                    notify_cancelled(task)
                else:
                    requeue.append(task)
                break
        self.pending.requeue(requeue)

    def _send(self, worker: WorkerHandle, batch: list[TaskState]) -> None:
        batch = self._post_claims(worker, batch)
        if not batch:
            return
        timed = batch[0]
        if timed.timeout is not None:  # alone in its batch (see take_batch): its clock starts now
            self._deadlines.add(timed, worker.pid)
        parts: list[Buffer] = [batch_prefix(len(batch))]
        for task in batch:
            parts.extend(task.parts)
            if task.held is not None:
                parts.extend(task.held.table_for(worker.channel.side))
        worker.assigned.extend(batch)
        if worker.spend_budget(len(batch)) and self._still_running():
            # Start the successor now, so the pool never waits for the exit.
            worker.note_successor_started()
            self._start_worker_or_break()
        writer = worker.channel.writer
        assert writer is not None
        writer.queue_frame(parts)
        self._flush(worker)

    def _post_claims(self, worker: WorkerHandle, batch: list[TaskState]) -> list[TaskState]:
        """Post the batch's claim words (``_pool.claims.post_claims``); the tasks to send."""
        if len(batch) == 1 and batch[0].claimed and not worker.assigned:
            # One task for an idle worker, marked running already: bound, nothing to take
            # back, no lock (a running future's cancel() is False whoever asks).
            slot, task = worker.running, batch[0]
            slot.post(slot.sent, task.task_id, True)
            task.board = None
            task.seq = slot.sent
            slot.sent += 1
            return batch
        with CLAIMS_LOCK:  # the top priority and the posting, in one step
            top = self.pending.top_priority() if self._prioritized else None
            posted, outranked = post_claims(worker, batch, top, self._on_revoke)
        if outranked:
            self.pending.requeue(outranked)
        return posted

    def _flush(self, worker: WorkerHandle) -> None:
        writer = worker.channel.writer
        if writer is None:
            return
        try:
            done = writer.flush()
        except BrokenPipeError:
            writer.discard()  # the worker died; its sentinel brings us to _on_worker_exit
            done = True
        if done:
            worker.stop_watching_writable(self._selector)
        else:
            worker.watch_writable(self._selector, lambda: self._flush(worker))
