"""The parent's event loop: one thread per executor that owns the workers and the tasks.

::

    caller threads            dispatcher thread (this module)              worker processes
    submit() / map()   ──►  pending ──► assign ──► inbox k (pipe) ──────► worker loop:
      pickle the task          ▲          (batches)                        run, reply
      (cloudpickle)            │                                              │
                               └── collect ◄── outbox k (pipe) ◄─────────────┘
         wakes on: new task (wakeup pipe), a message, a pipe ready to write,
                   a worker's death (process sentinel), a grace deadline

**submit** runs in the caller's thread. It pickles the function and arguments there, so a
task that cannot be pickled fails its own future and never reaches this thread, then appends
the task to ``pending`` and wakes the dispatcher through a pipe.

**The dispatcher** waits on every worker's outbox, every worker's process sentinel and the
wakeup pipe with one ``selectors`` call. It assigns pending tasks to workers with room
(several tasks travel in one frame when tasks are short), writes with non-blocking I/O so it
never blocks on a full pipe, resolves futures from worker messages, and on a worker's death
fails the one task that worker was running, requeues the tasks it held but had not started,
and starts a replacement. Only the first task an idle worker gets is bound to it; the others
stay *pending* there until the worker claims them, so the dispatcher can take them back for a
worker that goes idle, for a higher priority or for ``cancel()``. Shutdown waits until every
task is done, then closes the inboxes.

**A worker** (``_worker``) reads a batch from its inbox, claims each task just before it runs
it (a task taken back is dropped unread), marks it as running in a shared slot, runs it and
writes the outcome to its outbox. The slot is what lets the dispatcher tell "died while
running task 7" from "died with task 7 still waiting".

The policies the loop applies live beside it: which worker gets which tasks
(``_assignment``), the claims that let it take a prefetched task back (``_claims``; why a
claim cannot race is in ``_slots``), the queue by priority (``_pending``), stopping one task
and time limits (``_halting``), the grace a stopping pool gives its workers (``_stopping``),
a worker's handle and the startup failures that break a pool (``_workers``), and the errors
futures get (``_errors``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import selectors
import signal
import threading
import time
import weakref
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from typing import Any, Callable, Optional

from poolkit._errors import (
    BrokenProcessPool,
    TaskStopped,
    describe_exit,
    not_run_error,
    safe_str,
    set_cause,
)
from poolkit._pool.assignment import assignments, in_flight_limit, steal_share
from poolkit._pool.claims import (
    note_next_started,
    notify_cancelled,
    post_claims,
    take_back,
    take_back_below,
)
from poolkit._pool.deaths import StartupFailures, last_task, log_death, settle_held_tasks
from poolkit._pool.pending import PendingQueue
from poolkit._pool.reading import read_messages
from poolkit._pool.state import PoolState
from poolkit._pool.stopping import (
    GraceClock,
    Halt,
    TaskDeadlines,
    halt_task,
    kill_group,
    stopped_error,
    timeout_error,
)
from poolkit._pool.tasks import CLAIMS_LOCK, TaskState, claim, fail, rebuild_exception, resolve
from poolkit._pool.worker_handle import WorkerHandle, reap
from poolkit._pool.worker_set import WorkerSet
from poolkit._start_methods.base import StartMethod
from poolkit._thread_signals import leave_signals_to_other_threads
from poolkit._wire.fds import register_parent_fd, unregister_parent_fd
from poolkit._wire.messages import (
    Buffer,
    MessageKind,
    WorkerMessage,
    batch_prefix,
)

logger = logging.getLogger(__name__)

#: A thread submitting a burst lets the dispatcher run once per this many queued tasks.
YIELD_EVERY = 64


class Dispatcher:
    """Owns one executor's workers and in-flight tasks; see the module docstring."""

    def __init__(
        self,
        backend: StartMethod,
        max_workers: int,
        config_blob: bytes,
        max_tasks_per_child: Optional[int],
    ) -> None:
        self._backend = backend
        self._max_workers = max_workers
        self._config_blob = config_blob
        self._max_tasks_per_child = max_tasks_per_child
        #: Tasks not yet assigned. Callers append; the dispatcher pops and may requeue left.
        self.pending = PendingQueue()
        #: Tasks a caller took back from a worker (cancel(), a higher priority): the
        #: dispatcher drops them from that worker's list, and requeues those not cancelled.
        self._revoked: collections.deque[TaskState] = collections.deque()
        # Handed to every posted task. Through a weak reference: a bound method kept on the
        # dispatcher itself would make a cycle, and the pool (its initargs: a user's queues
        # and locks, their descriptors) would then wait for the garbage collector.
        self._on_revoke = _weak_revoke(weakref.ref(self))
        #: A task with a priority was submitted: submits then keep the priority rule.
        self._prioritized = False
        self._selector = selectors.DefaultSelector()
        self._worker_set = WorkerSet(backend, config_blob, max_tasks_per_child, self._selector)
        self._workers = self._worker_set.by_pid  # pid -> handle, of every live worker
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            register_parent_fd(fd)
        register_parent_fd(self._selector.fileno())
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)
        self._wake_signalled = False
        #: Held while writing to ``_wake_w`` and while closing it. Without it, a caller could
        #: write its byte after the dispatcher closed the pipe and the number went to another
        #: pipe (another pool's worker inbox, say), which would read the byte as its own.
        #: Reentrant: a signal handler in the thread that holds it may wake the pool too.
        self._wake_lock = threading.RLock()
        #: Held by the dispatcher thread except while it waits in ``select``: a caller that
        #: takes it (never blocking) may hand a task straight to an idle worker.
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._inherited_mask: AbstractSet[int] = frozenset()  # the signal mask _run started with
        # Requests from other threads; read by the dispatcher thread after a wakeup.
        self._shutdown_requested = False  # shutdown() or a force: finish, then stop
        self._force_signal: Optional[signal.Signals] = None
        self._force_done = threading.Event()
        self._cancelled_waiting = False  # cancel_pending() left cancelled tasks in the queue
        #: Futures whose running task ``Executor.stop()`` asked to halt (any thread appends).
        self._halt_requests: collections.deque[Future[Any]] = collections.deque()
        # Dispatcher-thread state, changed under ``_lock`` (see ``_pool.state``).
        self._state = PoolState.RUNNING
        self._forced_by: Optional[str] = None  # the call that forced the pool (FORCED)
        self.broken: Optional[BaseException] = None  # why the pool cannot go on (BROKEN)
        self._grace = GraceClock()
        self._task_seconds: Optional[float] = None  # moving average of task run time
        self._startup_failures = StartupFailures()
        self._deadlines = TaskDeadlines()  # of the running tasks with a time limit

    # ------------------------------------------------------------------ caller side

    def start(self, executor: object) -> None:
        """Start every worker, then the dispatcher thread (so ``fork`` forks no thread)."""
        try:
            for _ in range(self._max_workers):
                self._start_worker()
            self._backend.prepare_respawns(self._config_blob)
        except BaseException:
            self._worker_set.kill_all()
            self._backend.close()
            self._close_fds()
            raise
        self._executor_ref = weakref.ref(executor, lambda _: self.request_stop())
        self._thread = threading.Thread(target=self._run, name="poolkit-dispatcher")
        # Joined by the interpreter-exit hook before threads are joined; see _executor.
        self._thread.daemon = not hasattr(threading, "_register_atexit")
        self._thread.start()

    def submit(self, task: TaskState) -> None:
        """Queue a task (any thread)."""
        if task.priority or self._prioritized:
            self._submit_prioritized(task)
            return
        pending = self.pending
        if pending or not self._send_direct(task):
            pending.append(task)
            if self._wake_signalled and len(pending) % YIELD_EVERY == 0:
                # A backlog the dispatcher has not picked up: it is waiting for the GIL,
                # which a thread that only submits gives up every 5 ms (the switch
                # interval). Hand it over now, so the workers are fed while we submit.
                time.sleep(0)
            self.wake()

    def _submit_prioritized(self, task: TaskState) -> None:
        """Queue a task, taking back every prefetched task of a lower priority (any thread).

        Under ``CLAIMS_LOCK``, as the dispatcher posts prefetched tasks: either a lower one
        is posted first and taken back here, or the dispatcher sees this task queued and
        does not post it. Once this returns, no lower task that has not started can start
        before this one.
        """
        self._prioritized = True
        with CLAIMS_LOCK:
            self.pending.append(task)
            revoked = take_back_below(self._workers.values(), task.priority)
        self._revoked.extend(revoked)
        self.wake()

    def _revoked_by_caller(self, task: TaskState) -> None:
        """A caller's cancel() took ``task`` back from its worker (any thread)."""
        self._revoked.append(task)
        self.wake()

    def _send_direct(self, task: TaskState) -> bool:
        """From the caller's thread: write ``task`` to an idle worker now, if there is one.

        Saves the dispatcher's wakeup (a pipe write, a thread switch, a GIL handover) on
        the way out, which is most of a short task's latency. Only the plain case is
        handled here; anything else (a queue to respect, a time limit to start, a
        worker budget to count down) goes through the dispatcher. The lock is only tried:
        a caller never waits for the dispatcher.
        """
        if task.timeout is not None or not self._lock.acquire(blocking=False):
            return False
        try:
            if self.pending or not self._still_running():
                return False
            for worker in self._workers.values():
                if not worker.assigned and worker.budget is None and worker.accepting:
                    break
            else:
                return False
            if not claim(task):
                return True  # cancelled already: nothing to run
            worker.note_progress(time.monotonic())
            try:
                self._send(worker, [task])
            except BaseException:
                # In the main thread a signal handler (Ctrl-C) can raise between any two
                # steps of the send, leaving the frame half queued or half written: the
                # worker's inbox cannot be trusted any more. Replace the worker; its death
                # settles whatever it held, this task included if it got that far.
                worker.mark_closing()
                worker.signal(signal.SIGKILL)
                if task not in worker.assigned:
                    self.pending.appendleft(task)
                self.wake()
                raise
            return True
        finally:
            self._lock.release()

    def wake(self) -> None:
        """Make the dispatcher look at its requests and queue (any thread)."""
        # One byte in the pipe is enough however many callers wake it; the flag is cleared
        # by the dispatcher before it drains the queue, so no wakeup is ever missed.
        if not self._wake_signalled:
            self._wake_signalled = True
            with self._wake_lock:
                if self._wake_w < 0:
                    return  # closed: the dispatcher is gone
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:
                    pass  # full (BlockingIOError): it is awake already

    def request_stop(self) -> None:
        """Finish every pending task, then stop the workers (any thread)."""
        self._shutdown_requested = True
        self.wake()

    def cancel_pending(self) -> None:
        """Cancel every queued task that has not started (any thread).

        The futures are cancelled where they stand; the dispatcher drops them from the queue
        (and tells their ``wait``/``as_completed`` waiters). Nothing is taken off the queue
        here, so a Ctrl-C landing in the middle cannot lose a task.
        """
        for task in list(self.pending):  # a snapshot: the dispatcher pops meanwhile
            if not task.claimed:
                task.future.cancel()
        # Prefetched but not started: cancel() takes them back from their workers.
        for worker in list(self._workers.values()):
            for task in list(worker.assigned):
                if task.board is not None and not task.claimed:
                    task.future.cancel()
        self._cancelled_waiting = True
        self.wake()

    def force_stop(self, signum: signal.Signals) -> None:
        """Signal every worker now; running tasks fail (any thread)."""
        self._shutdown_requested = True
        self._force_signal = signum
        self.wake()
        if not self.in_dispatcher_thread() and self._thread is not None and self._thread.is_alive():
            self._force_done.wait(5.0)

    def stop_task(self, future: Future[Any]) -> None:
        """Stop the task of ``future``: cancel it if queued, kill its worker if running."""
        self._halt_requests.append(future)
        self.wake()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the dispatcher thread to finish (not from inside it)."""
        if self._thread is not None and not self.in_dispatcher_thread():
            self._thread.join(timeout)

    def in_dispatcher_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _still_running(self) -> bool:
        """RUNNING, with no shutdown or force asked for that the dispatcher has yet to see
        (any thread): a caller may hand a task straight to a worker, and a retiring worker
        gets its successor before it exits."""
        return self._state is PoolState.RUNNING and not self._shutdown_requested

    def _finished(self) -> bool:
        """Every worker is gone, and none will be started: the loop ends."""
        return not self._workers and not self._state.assigns

    # ------------------------------------------------------------- the event loop

    def _run(self) -> None:
        # Ctrl-C must wake the caller's thread, not this one.
        self._inherited_mask = leave_signals_to_other_threads()
        lock = self._lock
        lock.acquire()
        try:
            while not self._finished():
                self._handle_requests()  # RUNNING -> DRAINING, -> FORCED; stop(), cancel()
                self._assign()  # while RUNNING or DRAINING
                self._close_inboxes_once_drained()  # DRAINING -> CLOSING
                if self._finished():
                    break
                timeout = self._select_timeout()
                lock.release()
                try:
                    events = self._selector.select(timeout)
                finally:
                    lock.acquire()
                for key, _mask in events:
                    key.data()  # answers, worker deaths (-> BROKEN), writable inboxes
                self._on_task_deadlines()
                if self._worker_set.hung_up:
                    self._on_hang_ups()
                self._grace.escalate_if_due(self._workers.values(), time.monotonic())
        except BaseException as exc:  # a bug here must not leave futures unresolved
            self._on_own_failure(exc)
        finally:
            # Each step on its own: one that fails must not skip the next (a future left
            # unresolved, a descriptor left open).
            for step in (self._fail_leftovers, self._force_done.set, self._backend.close):
                try:
                    step()
                except BaseException:
                    logger.exception("poolkit dispatcher cleanup: %s", step)
            self._close_fds()
            lock.release()

    def _on_own_failure(self, exc: BaseException) -> None:
        """The loop itself raised: break the pool, so every unfinished future resolves."""
        try:
            logger.exception("poolkit dispatcher failed")
        except BaseException:
            pass  # a logging handler that raises must not stop the cleanup
        error = BrokenProcessPool(f"the poolkit dispatcher failed: {safe_str(exc, repr)}")
        set_cause(error, exc)
        try:
            self._break(error)
        finally:
            self._worker_set.kill_all()

    def _on_wakeup(self) -> None:
        try:
            while len(os.read(self._wake_r, 4096)) == 4096:
                pass  # a short read emptied the pipe
        except BlockingIOError:
            pass
        # Clear the flag only after draining: a byte written after this point wakes the next
        # select, and a caller that still saw the flag set queued its work before we look.
        self._wake_signalled = False

    def _handle_requests(self) -> None:
        """Act on what other threads asked for since the last look."""
        signum = self._force_signal
        if signum is not None and self._forced_by is None:
            self._force(signum)
        if self._shutdown_requested and self._state is PoolState.RUNNING:
            self._state = PoolState.DRAINING
        if self._revoked:
            self._take_back_revoked()
        while self._halt_requests:
            self._halt_on_request(self._halt_requests.popleft())
        if self._cancelled_waiting:
            self._cancelled_waiting = False
            self._drop_cancelled()

    def _select_timeout(self) -> Optional[float]:
        deadlines = [d for d in (self._grace.deadline, self._deadlines.next) if d is not None]
        deadlines.extend(self._worker_set.hung_up.values())
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # -------------------------------------------------------------- assignment

    def _assign(self) -> None:
        """Give pending tasks to workers with room (see ``_assignment``); then let each idle
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
        """Post the batch's claim words (``_claims.post_claims``); the tasks to send."""
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

    # -------------------------------------------------------------- collection

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
            message.duration if previous is None else 0.8 * previous + 0.2 * message.duration
        )
        resolve(task, message, worker.pid)

    def _on_retiring(self, worker: WorkerHandle) -> None:
        # Over its memory limit: it exits after this message. Its successor starts now.
        worker.mark_closing()
        if not worker.has_successor and self._still_running():
            worker.note_successor_started()
            self._start_worker_or_break()

    # ------------------------------------------------------------ halting tasks

    def _halt_on_request(self, future: Future[Any]) -> None:
        """Handle Executor.stop(future)."""
        if future.done() or future.cancel():
            return  # finished, or cancelled while it waited: nothing runs
        # A snapshot: callers append to (and cancel_pending pops from) the queue meanwhile.
        for task in list(self.pending):
            if task.future is future:  # requeued after a crash: not running now
                try:
                    self.pending.remove(task)
                except ValueError:
                    pass
                fail(task, TaskStopped(f"{task.fn_name}() was stopped before it ran again"))
                return
        for worker in list(self._workers.values()):
            for task in worker.assigned:
                if task.future is future:
                    self._halt(
                        worker,
                        task,
                        functools.partial(stopped_error, task, worker.pid),
                    )
                    return

    def _on_task_deadlines(self) -> None:
        for task_id, pid in self._deadlines.pop_due(time.monotonic()):
            worker = self._workers.get(pid)
            if worker is None:
                continue
            self._collect(worker)  # a result already on its way wins
            task = next((t for t in worker.assigned if t.task_id == task_id), None)
            if task is None or task.timeout is None:
                continue
            self._halt(
                worker,
                task,
                functools.partial(timeout_error, task, worker.pid),
            )

    def _halt(
        self, worker: WorkerHandle, task: TaskState, error: Callable[[bool], BaseException]
    ) -> None:
        def still_assigned() -> bool:
            self._collect(worker)  # an answer already written wins
            return task in worker.assigned and not worker.channel.reader.mid_frame

        outcome = halt_task(worker, task, still_assigned)
        if outcome is Halt.KILLED:
            worker.mark_halted()  # dying: given nothing more, and its death is no crash
            worker.assigned.remove(task)
            fail(task, error(True))
        elif outcome is not Halt.ANSWERED:
            task.halt_error = error(False)  # what its SKIPPED answer will fail it with
            if outcome is Halt.SKIPPED_NOW:
                fail(task, task.halt_error)

    def _on_initializer_failure(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        cause = rebuild_exception(message, "the initializer's exception")
        error = BrokenProcessPool(
            f"the initializer failed in worker {worker.pid} "
            f"({type(cause).__name__}: {safe_str(cause)}); the pool cannot start workers"
        )
        set_cause(error, cause)
        self._break(error)

    # ------------------------------------------------------------- worker deaths

    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        self._collect(worker)  # results written before it died still count
        if self._revoked:
            self._take_back_revoked()
        with CLAIMS_LOCK:
            for task in worker.assigned:
                task.board = None  # its slot is closed below; nobody may swap its words
        exitcode = reap(worker.process)
        last = last_task(worker)  # before _release closes its slot
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
        why = self._startup_failures.worker_died(worker.pid, exitcode, self._backend.name)
        if why is not None:
            self._break(BrokenProcessPool(why))
            return
        logger.warning(
            "poolkit worker %d %s while starting up; starting another",
            worker.pid,
            describe_exit(exitcode),
        )

    def _not_run_error(self) -> BrokenProcessPool:
        return not_run_error(self.broken, self._forced_by)

    # ------------------------------------------------------------------ workers

    def _start_worker(self) -> WorkerHandle:
        return self._worker_set.start(
            self._collect,
            self._on_worker_exit,
            in_dispatcher_thread=self.in_dispatcher_thread(),
            inherited_mask=self._inherited_mask,
        )

    def _start_worker_or_break(self) -> None:
        try:
            self._start_worker()
        except Exception as exc:
            error = BrokenProcessPool(
                f"could not start a replacement worker: {safe_str(exc, repr)}"
            )
            set_cause(error, exc)
            self._break(error)

    # ------------------------------------------------------------------ stopping

    def _close_inboxes_once_drained(self) -> None:
        """DRAINING -> CLOSING: once every task is done, close the inboxes."""
        if self._state is not PoolState.DRAINING:
            return
        if self.pending or any(w.assigned for w in self._workers.values()):
            return
        self._state = PoolState.CLOSING
        self._worker_set.close_inboxes()
        self._grace.after_inboxes_closed()

    def _force(self, signum: signal.Signals) -> None:
        """-> FORCED (a broken pool stays BROKEN): ``terminate_workers()`` or
        ``kill_workers()`` signals every worker now."""
        killing = signum == signal.SIGKILL
        self._forced_by = "Executor.kill_workers()" if killing else "Executor.terminate_workers()"
        if self._state is not PoolState.BROKEN:
            self._state = PoolState.FORCED
        self._signal_all(signum)
        self._force_done.set()

    def _break(self, error: BaseException) -> None:
        """-> BROKEN: the pool cannot go on; fail every task, stop every worker."""
        if self._state is PoolState.BROKEN:
            return
        self.broken = error
        self._state = PoolState.BROKEN
        self._fail_assigned()
        self._fail_pending()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: signal.Signals) -> None:
        """Signal every worker to end; the grace clock escalates if they outlive it."""
        self._worker_set.signal_all(signum)
        self._grace.after_signal()

    def _drop_cancelled(self) -> None:
        """Take the tasks cancelled while queued off the queue, in order."""
        for task in self.pending.take_out(lambda t: not t.claimed and t.future.cancelled()):
            notify_cancelled(task)

    def _fail_pending(self) -> None:
        while True:
            try:
                task = self.pending.popleft()
            except IndexError:
                return
            fail(task, self._not_run_error())

    def _fail_assigned(self) -> None:
        for worker in list(self._workers.values()):
            while worker.assigned:
                fail(worker.assigned.popleft(), self._not_run_error())

    def _fail_leftovers(self) -> None:
        # Every future resolves: anything still queued when the loop ends gets an error.
        self._fail_pending()
        self._fail_assigned()

    def _close_fds(self) -> None:
        for fd in (self._wake_r, self._wake_w, self._selector.fileno()):
            unregister_parent_fd(fd)
        self._selector.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1


def _weak_revoke(dispatcher: weakref.ref[Dispatcher]) -> Callable[[TaskState], None]:
    """``Dispatcher._revoked_by_caller`` without a strong reference to the dispatcher."""

    def on_revoke(task: TaskState) -> None:
        target = dispatcher()
        if target is not None:
            target._revoked_by_caller(task)

    return on_revoke
