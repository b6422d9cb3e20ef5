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
    collateral_error,
    crash_error,
    describe_exit,
    name_exception,
    not_run_error,
    safe_str,
    set_cause,
    unstarted_crash_error,
)
from poolkit._pool.assignment import assignments, in_flight_limit, steal_share
from poolkit._pool.claims import (
    note_next_started,
    notify_cancelled,
    post_claims,
    take_back,
    take_back_below,
)
from poolkit._pool.halting import TaskDeadlines, halt_task, kill_group, stopped_error, timeout_error
from poolkit._pool.pending import PendingQueue
from poolkit._pool.stopping import GraceClock
from poolkit._pool.tasks import CLAIMS_LOCK, TaskState, fail, rebuild_exception, resolve
from poolkit._pool.worker_handle import UNSTARTED_DEATH_LIMIT, StartupFailures, WorkerHandle, reap
from poolkit._start_methods.base import StartMethod
from poolkit._thread_signals import leave_signals_to_other_threads, signal_mask
from poolkit._wire.buffers import open_buffers
from poolkit._wire.fds import register_parent_fd, unregister_parent_fd
from poolkit._wire.messages import (
    Buffer,
    FrameError,
    MessageKind,
    WorkerMessage,
    batch_prefix,
    decode_message,
)

logger = logging.getLogger(__name__)

#: Seconds a worker may live on after its result pipe hung up before the pool kills it.
_HANG_UP_GRACE = 2.0

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
        self._workers: dict[int, WorkerHandle] = {}
        self._selector = selectors.DefaultSelector()
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
        self._stop_requested = False
        self._force_signal: Optional[signal.Signals] = None
        self._force_done = threading.Event()
        self._cancelled_waiting = False  # cancel_pending() left cancelled tasks in the queue
        # Dispatcher-thread state.
        self._stopping = False  # inboxes closed, or workers signalled: no more assignments
        self._forced_by: Optional[str] = None
        self.broken: Optional[BaseException] = None  # why the pool cannot go on
        self._grace = GraceClock()
        self._task_seconds: Optional[float] = None  # moving average of task run time
        self._startup_failures = StartupFailures()
        self._deadlines = TaskDeadlines()  # of the running tasks with a time limit
        #: pid -> when a worker whose result pipe hung up unasked counts as cut off from it.
        self._hung_up: dict[int, float] = {}
        #: Futures whose running task the caller asked to stop (any thread appends).
        self._stop_requests: collections.deque[Future[Any]] = collections.deque()

    # ------------------------------------------------------------------ caller side

    def start(self, executor: object) -> None:
        """Start every worker, then the dispatcher thread (so ``fork`` forks no thread)."""
        try:
            for _ in range(self._max_workers):
                self._start_worker()
            self._backend.prepare_respawns(self._config_blob)
        except BaseException:
            for worker in list(self._workers.values()):
                worker.process.kill()
                worker.process.join()
                self._release(worker)
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
            if self.pending or self._stop_requested or self._stopping:
                return False
            for worker in self._workers.values():
                if not worker.assigned and worker.budget is None and worker.accepting:
                    break
            else:
                return False
            if not task.future.set_running_or_notify_cancel():
                return True  # cancelled already: nothing to run
            task.started = True
            worker.progress_at = time.monotonic()
            try:
                self._send(worker, [task])
            except BaseException:
                # In the main thread a signal handler (Ctrl-C) can raise between any two
                # steps of the send, leaving the frame half queued or half written: the
                # worker's inbox cannot be trusted any more. Replace the worker; its death
                # settles whatever it held, this task included if it got that far.
                worker.closing = True
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
        self._stop_requested = True
        self.wake()

    def cancel_pending(self) -> None:
        """Cancel every queued task that has not started (any thread).

        The futures are cancelled where they stand; the dispatcher drops them from the queue
        (and tells their ``wait``/``as_completed`` waiters). Nothing is taken off the queue
        here, so a Ctrl-C landing in the middle cannot lose a task.
        """
        for task in list(self.pending):  # a snapshot: the dispatcher pops meanwhile
            if not task.started:
                task.future.cancel()
        # Prefetched but not started: cancel() takes them back from their workers.
        for worker in list(self._workers.values()):
            for task in list(worker.assigned):
                if task.board is not None and not task.started:
                    task.future.cancel()
        self._cancelled_waiting = True
        self.wake()

    def force_stop(self, signum: signal.Signals) -> None:
        """Signal every worker now; running tasks fail (any thread)."""
        self._stop_requested = True
        self._force_signal = signum
        self.wake()
        if not self.in_dispatcher_thread() and self._thread is not None and self._thread.is_alive():
            self._force_done.wait(5.0)

    def stop_task(self, future: Future[Any]) -> None:
        """Stop the task of ``future``: cancel it if queued, kill its worker if running."""
        self._stop_requests.append(future)
        self.wake()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the dispatcher thread to finish (not from inside it)."""
        if self._thread is not None and not self.in_dispatcher_thread():
            self._thread.join(timeout)

    def in_dispatcher_thread(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------- the event loop

    def _run(self) -> None:
        # Ctrl-C must wake the caller's thread, not this one.
        self._inherited_mask = leave_signals_to_other_threads()
        lock = self._lock
        lock.acquire()
        try:
            while self._workers or not self._stopping:
                self._handle_requests()
                self._assign()
                self._maybe_begin_stop()
                if self._stopping and not self._workers:
                    break
                timeout = self._select_timeout()
                lock.release()
                try:
                    events = self._selector.select(timeout)
                finally:
                    lock.acquire()
                for key, mask in events:
                    key.data(mask)
                self._on_task_deadlines()
                if self._hung_up:
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
            for worker in list(self._workers.values()):
                try:
                    worker.signal(signal.SIGKILL)
                    worker.process.join(5.0)
                    self._release(worker)
                except BaseException:
                    logger.exception("poolkit dispatcher cleanup of worker %d", worker.pid)

    def _on_wakeup(self, mask: int) -> None:
        try:
            while len(os.read(self._wake_r, 4096)) == 4096:
                pass  # a short read emptied the pipe
        except BlockingIOError:
            pass
        # Clear the flag only after draining: a byte written after this point wakes the next
        # select, and a caller that still saw the flag set queued its work before we look.
        self._wake_signalled = False

    def _handle_requests(self) -> None:
        signum = self._force_signal
        if signum is not None and self._forced_by is None:
            self._forced_by = (
                "Executor.kill_workers()"
                if signum == signal.SIGKILL
                else "Executor.terminate_workers()"
            )
            self._signal_all(signum)
            self._force_done.set()
        if self._revoked:
            self._take_back_revoked()
        while self._stop_requests:
            self._stop(self._stop_requests.popleft())
        if self._cancelled_waiting:
            self._cancelled_waiting = False
            self._drop_cancelled()

    def _select_timeout(self) -> Optional[float]:
        deadlines = [d for d in (self._grace.deadline, self._deadlines.next) if d is not None]
        deadlines.extend(self._hung_up.values())
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # -------------------------------------------------------------- assignment

    def _assign(self) -> None:
        """Give pending tasks to workers with room (see ``_assignment``); then let each idle
        worker take back tasks that wait, unstarted, in another worker."""
        if self._stopping:
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
                if task.future.cancelled() and not task.started:
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
        if worker.budget is not None:
            worker.budget -= len(batch)
            if worker.budget == 0 and not self._stop_requested:
                # Start the successor now, so the pool never waits for the exit.
                worker.replaced = True
                self._start_worker_or_break()
        writer = worker.channel.writer
        assert writer is not None
        writer.queue_frame(parts)
        self._flush(worker)

    def _post_claims(self, worker: WorkerHandle, batch: list[TaskState]) -> list[TaskState]:
        """Post the batch's claim words (``_claims.post_claims``); the tasks to send."""
        if len(batch) == 1 and batch[0].started and not worker.assigned:
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
        if done and worker.writing:
            self._selector.unregister(writer.fd)
            worker.writing = False
        elif not done and not worker.writing:
            self._selector.register(
                writer.fd, selectors.EVENT_WRITE, lambda _m: self._flush(worker)
            )
            worker.writing = True

    # -------------------------------------------------------------- collection

    def _on_readable(self, worker: WorkerHandle, mask: int) -> None:
        if not worker.reading:
            return
        reader = worker.channel.reader
        frames, at_eof = reader.read_frames()
        for frame in frames:
            try:
                message = decode_message(frame)
            except FrameError as exc:
                self._on_channel_fault(worker, f"held {exc} (it begins {bytes(frame[:16])!r})")
                return
            if message.sender != worker.pid:
                self._on_channel_fault(
                    worker, f"held a message written by process {message.sender}, not the worker"
                )
                return
            if message.buffers is not None:
                message = self._receive_buffers(worker, message)
            self._on_message(worker, message)
        if reader.fault is not None:
            self._on_channel_fault(worker, f"held {reader.fault}")
            return
        if at_eof:
            # The worker closed its end: it is exiting, and its death descriptor reports when
            # it is gone. Unless it is not: a task that closed or replaced the pipe leaves a
            # worker that runs on and can never answer. It gets a moment to die on its own
            # (the hang-up comes just before the exit) before it counts as a fault.
            self._selector.unregister(worker.channel.outbox_fd)
            worker.reading = False
            if worker.assigned or not (worker.closing or worker.budget == 0):
                self._hung_up[worker.pid] = time.monotonic() + _HANG_UP_GRACE

    def _on_hang_ups(self) -> None:
        now = time.monotonic()
        for pid, due in list(self._hung_up.items()):
            if due > now:
                continue
            del self._hung_up[pid]
            worker = self._workers.get(pid)
            if worker is not None and worker.fault is None:
                self._on_channel_fault(worker, "was closed, and the worker ran on without it")

    def _receive_buffers(self, worker: WorkerHandle, message: WorkerMessage) -> WorkerMessage:
        # Taken off the side socket for every message that has them, in order, even one
        # whose task is settled already: the next message's files come after them.
        assert message.buffers is not None
        try:
            buffers = open_buffers(message.buffers, worker.channel.side)
        except (ConnectionError, OSError) as exc:
            # Unpickling then fails, and says so in the task's error.
            logger.warning("the buffers of a message from worker %d: %s", worker.pid, exc)
            return message._replace(buffers=None)
        return message._replace(buffers=buffers)

    def _on_channel_fault(self, worker: WorkerHandle, reason: str) -> None:
        """Bytes on a worker's result pipe that the worker did not write as a message.

        A task wrote into the pipe, or a process it forked did: nothing more read from it
        can be trusted. The fault is the worker's alone. It is killed with its process
        group, and its death (``_on_worker_exit``) fails the task it had started, naming
        the fault, and sends the others to other workers.
        """
        if worker.reading:
            self._selector.unregister(worker.channel.outbox_fd)
            worker.reading = False
        if worker.fault is not None:
            return
        worker.fault = reason
        # Answers arrive in order: the bytes came before the answer of the oldest task
        # still unanswered, so that task's code (or what it started) wrote them.
        worker.fault_task = worker.assigned[0].task_id if worker.assigned else 0
        worker.closing = True
        logger.warning("poolkit worker %d: its result pipe %s; killing it", worker.pid, reason)
        kill_group(worker.pid)

    def _on_message(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        kind = message.kind
        if kind is MessageKind.RESULT or kind is MessageKind.ERROR:
            assigned = worker.assigned
            if assigned and assigned[0].task_id == message.task_id:
                # Resolved while still in the list, then taken off: if resolving fails
                # (it should not), the dispatcher's own failure path still settles it.
                self._on_answer(worker, assigned[0], message)
                assigned.popleft()
                note_next_started(worker)
                return
        if message.kind is MessageKind.READY:
            worker.ready = True
            self._startup_failures.worker_ready()
            return
        if message.kind is MessageKind.INIT_FAILED:
            self._on_initializer_failure(worker, message)
            return
        if message.kind is MessageKind.RETIRING:
            self._on_retiring(worker)
            return
        if message.kind is MessageKind.LOOP_FAILED:
            worker.loop_error = rebuild_exception(message, "the worker's exception")
            return
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
            worker.progress_at = time.monotonic()
            fail(task, task.halt_error or TaskStopped("the task was stopped before it started"))
        else:
            self._on_answer(worker, task, message)
        with contextlib.suppress(ValueError):
            worker.assigned.remove(task)
        note_next_started(worker)

    def _on_answer(self, worker: WorkerHandle, task: TaskState, message: WorkerMessage) -> None:
        """A task's RESULT or ERROR: resolve its future."""
        worker.progress_at = time.monotonic()
        previous = self._task_seconds
        self._task_seconds = (
            message.duration if previous is None else 0.8 * previous + 0.2 * message.duration
        )
        resolve(task, message, worker.pid)

    def _on_retiring(self, worker: WorkerHandle) -> None:
        # Over its memory limit: it exits after this message. Its successor starts now.
        worker.closing = True
        if not (worker.replaced or self._stop_requested):
            worker.replaced = True
            self._start_worker_or_break()

    # ------------------------------------------------------------ halting tasks

    def _stop(self, future: Future[Any]) -> None:
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
            self._on_readable(worker, 0)  # a result already on its way wins
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
            self._on_readable(worker, 0)  # an answer already written wins
            return task in worker.assigned and not worker.channel.reader.mid_frame

        halt_task(worker, task, error, still_assigned)

    def _on_initializer_failure(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        cause = rebuild_exception(message, "the initializer's exception")
        error = BrokenProcessPool(
            f"the initializer failed in worker {worker.pid} "
            f"({type(cause).__name__}: {safe_str(cause)}); the pool cannot start workers"
        )
        set_cause(error, cause)
        self._break(error)

    # ------------------------------------------------------------- worker deaths

    def _on_worker_exit(self, worker: WorkerHandle, mask: int) -> None:
        self._on_readable(worker, mask)  # results written before it died still count
        if self._revoked:
            self._take_back_revoked()
        with CLAIMS_LOCK:
            for task in worker.assigned:
                task.board = None  # its slot is closed below; nobody may swap its words
        exitcode = reap(worker.process)
        crashed_id = worker.running.value
        if not crashed_id:
            # Its slot says idle, but the last task it took is unanswered: that task's code
            # cut the worker off from its pipe (dup2 over it, closed it), so its answer went
            # nowhere and the worker then ended, maybe with code 0. The task is charged
            # with the death; sent to another worker, it would do the same forever.
            started = worker.running.started
            if started and any(t.task_id == started for t in worker.assigned):
                crashed_id = started
        if exitcode != 0 or crashed_id:
            kill_group(worker.pid)  # processes its task started must not outlive it
        self._release(worker)
        if not worker.ready and self.broken is None and not self._stopping:
            self._on_startup_death(worker, exitcode)
        requeue = []
        blamed = 0
        # Code 0 is a death of its own too when the worker was not asked to end: only an
        # inbox closed by the pool, a spent task budget or a memory limit end it cleanly.
        unasked = not (worker.closing or worker.budget == 0) or worker.fault is not None
        died_on_its_own = (
            (exitcode != 0 or unasked) and not worker.halted and self._forced_by is None
        )
        # A worker that died on its own while running no task may have been killed by one it
        # held before that task started (reading an argument too large for its memory). Such
        # a task is sent on a few times, then failed: resending it forever would hang.
        unexplained = died_on_its_own and not (crashed_id or worker.fault_task)
        guilty, collateral = self._after_the_fault(worker, crashed_id)
        for task in worker.assigned:
            if task.task_id == worker.fault_task or (
                task.task_id == crashed_id and worker.fault is None
            ):
                blamed += 1
                fail(
                    task,
                    crash_error(worker.pid, exitcode, task.fn_name, self._forced_by, worker.fault),
                )
            elif task.task_id in collateral:
                # Started after the task that wrote into the pipe: its answer sits behind the
                # stray bytes and cannot be read. It started, so it is not run again.
                blamed += 1
                fail(
                    task, collateral_error(worker.pid, exitcode, task.fn_name, worker.fault, guilty)
                )
            elif self.broken is not None or self._forced_by is not None:
                fail(task, self._not_run_error())
            elif task.future.done():
                if task.future.cancelled() and not task.started:
                    notify_cancelled(task)  # cancelled by a caller as the worker died
                continue  # settled while it waited here (stopped, past its deadline): done
            elif unexplained and task.unstarted_deaths + 1 >= UNSTARTED_DEATH_LIMIT:
                blamed += 1
                fail(
                    task,
                    unstarted_crash_error(
                        worker.pid, exitcode, task.fn_name, UNSTARTED_DEATH_LIMIT, worker.loop_error
                    ),
                )
            else:
                task.unstarted_deaths += unexplained
                requeue.append(task)  # taken but not started: another worker runs it
        self.pending.requeue(requeue)
        if blamed or (requeue and died_on_its_own):
            logger.warning(
                "poolkit worker %d %s%s; %d task(s) failed, %d requeued",
                worker.pid,
                describe_exit(exitcode),
                name_exception(worker.loop_error)
                if worker.fault is None
                else f" (its result pipe {worker.fault})",
                blamed,
                len(requeue),
            )
        if not (worker.replaced or self._stopping or self.broken is not None):
            self._start_worker_or_break()

    @staticmethod
    def _after_the_fault(worker: WorkerHandle, crashed_id: int) -> tuple[str, set[int]]:
        """The name of the task charged with a fault on the worker's pipe, and the ids of
        the tasks that started after it (a worker runs its tasks in the order sent)."""
        if worker.fault is None or not worker.fault_task:
            return "", set()
        ids = [t.task_id for t in worker.assigned]
        last_started = crashed_id or worker.running.started
        if worker.fault_task not in ids or last_started not in ids:
            return "another task", set()
        first = ids.index(worker.fault_task)
        guilty = worker.assigned[first].fn_name
        return guilty, set(ids[first + 1 : ids.index(last_started) + 1])

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
        mask = (
            signal_mask(self._inherited_mask)  # a new process inherits this thread's mask
            if self.in_dispatcher_thread()
            else contextlib.nullcontext()
        )
        # The parent-death signal fires when the thread that started the worker ends: only
        # the main thread and this dispatcher's thread live as long as the worker.
        long_lived = self.in_dispatcher_thread() or (
            threading.current_thread() is threading.main_thread()
        )
        with mask:
            worker = WorkerHandle.start(
                self._backend, self._config_blob, self._max_tasks_per_child, long_lived
            )
        worker.running.release_worker_copy()  # the worker has its own copy now
        self._workers[worker.pid] = worker
        self._selector.register(
            worker.channel.outbox_fd, selectors.EVENT_READ, lambda m: self._on_readable(worker, m)
        )
        self._selector.register(
            worker.death_fd, selectors.EVENT_READ, lambda m: self._on_worker_exit(worker, m)
        )
        return worker

    def _start_worker_or_break(self) -> None:
        try:
            self._start_worker()
        except Exception as exc:
            error = BrokenProcessPool(
                f"could not start a replacement worker: {safe_str(exc, repr)}"
            )
            set_cause(error, exc)
            self._break(error)

    def _release(self, worker: WorkerHandle) -> None:
        """Forget a dead worker and close everything the parent held for it."""
        self._workers.pop(worker.pid, None)
        self._hung_up.pop(worker.pid, None)
        if worker.reading:
            self._selector.unregister(worker.channel.outbox_fd)
            worker.reading = False
        try:
            self._selector.unregister(worker.death_fd)
        except (KeyError, ValueError):
            pass  # never registered (the worker failed during start()), or closed
        if worker.writing and worker.channel.writer is not None:
            self._selector.unregister(worker.channel.writer.fd)
            worker.writing = False
        worker.close()

    def _signal_all(self, signum: signal.Signals) -> None:
        self._stopping = True
        for worker in self._workers.values():
            worker.closing = True
            worker.signal(signum)
        self._grace.after_signal(signum)

    # ------------------------------------------------------------------ stopping

    def _maybe_begin_stop(self) -> None:
        """Once asked to stop and every task is done, close the inboxes."""
        if self._stopping or not self._stop_requested:
            return
        if self.pending or any(w.assigned for w in self._workers.values()):
            return
        self._stopping = True
        for worker in self._workers.values():
            worker.closing = True
            worker.channel.close_inbox()  # end-of-file: the worker exits by itself
        self._grace.after_inboxes_closed()

    def _break(self, error: BaseException) -> None:
        """The pool cannot go on: fail every task, stop every worker."""
        if self.broken is not None:
            return
        self.broken = error
        self._stop_requested = True
        for worker in list(self._workers.values()):
            while worker.assigned:
                fail(worker.assigned.popleft(), self._not_run_error())
        self._fail_pending()
        self._signal_all(signal.SIGTERM)

    def _drop_cancelled(self) -> None:
        """Take the tasks cancelled while queued off the queue, in order."""
        for task in self.pending.take_out(lambda t: not t.started and t.future.cancelled()):
            notify_cancelled(task)

    def _fail_pending(self) -> None:
        while True:
            try:
                task = self.pending.popleft()
            except IndexError:
                return
            fail(task, self._not_run_error())

    def _fail_leftovers(self) -> None:
        # Every future resolves: anything still queued when the loop ends gets an error.
        self._fail_pending()
        for worker in self._workers.values():
            while worker.assigned:
                fail(worker.assigned.popleft(), self._not_run_error())

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
