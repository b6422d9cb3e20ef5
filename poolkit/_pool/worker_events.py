"""Part of the dispatcher: acting on what a worker reports.

A worker reports through its result pipe (answers, READY, its initializer's or its loop's
failure, retiring over its memory limit; ``_pool.reading`` turns the bytes into messages),
by hanging up that pipe, and by dying (its death descriptor). A death is settled by the
rules of ``_pool.deaths``; a worker that must be replaced is replaced here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Optional

from poolkit._error_messages import initializer_failed
from poolkit._errors import BrokenProcessPool, TaskStopped, describe_exit
from poolkit._pool.claims import note_next_started
from poolkit._pool.deaths import last_task, log_death, settle_held_tasks
from poolkit._pool.dispatcher_core import DispatcherCore
from poolkit._pool.reading import read_messages
from poolkit._pool.stopping import kill_group
from poolkit._pool.tasks import CLAIMS_LOCK, TaskState, fail, rebuild_exception, resolve
from poolkit._pool.worker_handle import WorkerHandle, reap
from poolkit._wire.messages import MessageKind, WorkerMessage

logger = logging.getLogger(__name__)

#: How much the newest task's run time moves the average that sizes prefetch batches
#: (``_pool.assignment.in_flight_limit``): a few answers are enough to follow a change.
NEWEST_DURATION_WEIGHT = 0.2


class WorkerEvents(DispatcherCore):
    """The dispatcher's handlers of worker events (a part of ``Dispatcher``; see
    ``_pool.dispatcher_core``)."""

    def _collect(self, worker: WorkerHandle) -> None:
        """Read and act on every message the worker has written so far."""
        if not worker.reading:
            return
        reading = read_messages(worker)
        for message in reading.messages:
            self._on_message(worker, message)
        if reading.fault is not None:
            self._on_channel_fault(worker, reading.fault)
        elif reading.at_eof:
            worker.stop_reading(self._selector)
            if worker.assigned or not worker.exit_expected:
                self._worker_set.note_hang_up(worker)  # it may run on, cut off from the pipe

    def _on_hang_ups(self) -> None:
        """Fault the workers that hung up their result pipe and still run on without it."""
        if not self._worker_set.hung_up:
            return
        for worker in self._worker_set.cut_off(time.monotonic()):
            self._on_channel_fault(worker, "was closed, and the worker ran on without it")

    def _on_channel_fault(self, worker: WorkerHandle, reason: str) -> None:
        """Bytes on a worker's result pipe that the worker did not write as a message.

        A task wrote into the pipe, or a process it forked did: nothing more read from it
        can be trusted. The fault is the worker's alone. It is killed with its process
        group, and its death (``_on_worker_exit``) fails the task it had started, naming
        the fault, and sends the others to other workers.
        """
        worker.stop_reading(self._selector)
        if worker.fault is not None:
            return
        worker.mark_fault(reason)  # charged to the oldest task still unanswered
        logger.warning("poolkit worker %d: its result pipe %s; killing it", worker.pid, reason)
        kill_group(worker.pid)

    def _on_message(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        kind = message.kind
        if kind is MessageKind.RESULT or kind is MessageKind.ERROR:
            assigned = worker.assigned
            if assigned and assigned[0].task_id == message.task_id:  # the common case
                # Resolved while still in the list, then taken off: if resolving fails
                # (it should not), the dispatcher's own failure path still settles it.
                self._on_answer(worker, assigned[0], message)
                assigned.popleft()
                note_next_started(worker)
            else:
                self._on_answer_by_id(worker, message)
        elif kind is MessageKind.SKIPPED:
            self._on_answer_by_id(worker, message)
        elif kind is MessageKind.READY:
            worker.mark_ready()
            self._startup_failures.worker_ready()
        elif kind is MessageKind.INIT_FAILED:
            self._on_initializer_failure(worker, message)
        elif kind is MessageKind.RETIRING:
            self._on_retiring(worker)
        elif kind is MessageKind.LOOP_FAILED:
            worker.note_loop_error(rebuild_exception(message, "the worker's exception"))

    def _on_answer_by_id(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        """A SKIPPED, or a RESULT or ERROR not for the oldest task the worker holds."""
        # Answers are matched by id, not by order: the oldest task may have lost its answer
        # (its code closed or replaced the worker's pipe), and the others must not lose
        # theirs with it. That task is settled when the worker ends.
        task = next((t for t in worker.assigned if t.task_id == message.task_id), None)
        if task is None:
            # Only a task the dispatcher already settled (halted while its answer was on the
            # way) can be missing; the answer is moot.
            logger.debug("worker %d answered settled task %d", worker.pid, message.task_id)
            return
        if message.kind is MessageKind.SKIPPED:
            worker.note_progress(time.monotonic())
            fail(task, task.halt_error or TaskStopped("the task was stopped before it started"))
        else:
            self._on_answer(worker, task, message)
        with contextlib.suppress(ValueError):
            worker.assigned.remove(task)
        note_next_started(worker)

    def _on_answer(self, worker: WorkerHandle, task: TaskState, message: WorkerMessage) -> None:
        """A task's RESULT or ERROR: resolve its future."""
        worker.note_progress(time.monotonic())
        previous = self._task_seconds
        self._task_seconds = (
            message.duration
            if previous is None
            else (1 - NEWEST_DURATION_WEIGHT) * previous + NEWEST_DURATION_WEIGHT * message.duration
        )
        resolve(task, message, worker.pid)

    def _on_retiring(self, worker: WorkerHandle) -> None:
        # Over its memory limit: it exits after this message. Its successor starts now.
        worker.mark_closing()
        if not worker.has_successor and self._still_running():
            worker.note_successor_started()
            self._start_worker_or_break()

    def _on_initializer_failure(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        cause = rebuild_exception(message, "the initializer's exception")
        self._break(
            initializer_failed(worker.pid, cause), spare=worker
        )  # it reported, and is exiting by itself

    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        """The worker's death descriptor fired: settle what it held, replace it."""
        self._collect(worker)  # results written before it died still count
        if self._revoked:
            self._take_back_revoked()
        with CLAIMS_LOCK:
            for task in worker.assigned:
                task.board = None  # its slot is closed below; nobody may swap its words
        exitcode = reap(worker.process)
        last = last_task(worker)  # read before the release closes its slot
        if exitcode != 0 or last.crashed_id:
            kill_group(worker.pid)  # processes its task started must not outlive it
        self._worker_set.release(worker)
        if not worker.reported_ready and self._state.assigns:
            self._on_startup_death(worker, exitcode)  # may break the pool
        settled = settle_held_tasks(
            worker,
            exitcode,
            last,
            abandoned=self._state.abandons_tasks,
            forced_by=self._forced_by,
            not_run_error=self._not_run_error,
        )
        self.pending.requeue(settled.requeue)
        log_death(worker, exitcode, settled)
        if not worker.has_successor and self._state.assigns:
            self._start_worker_or_break()

    def _on_startup_death(self, worker: WorkerHandle, exitcode: Optional[int]) -> None:
        """A worker died before it was ready: retry a little, then declare the pool broken."""
        why = self._startup_failures.worker_died(worker.pid, exitcode, self._start_method.name)
        if why is not None:
            self._break(BrokenProcessPool(why))
            return
        logger.warning(
            "poolkit worker %d %s while starting up; starting another",
            worker.pid,
            describe_exit(exitcode),
        )
