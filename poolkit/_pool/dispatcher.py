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
the task to ``pending`` and wakes the dispatcher through a pipe (or, when a worker is idle
and nothing waits, writes the task to that worker itself: ``_send_direct``).

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

The pool's life (``_pool.state``), one step of :meth:`Dispatcher._run` per arrow::

    RUNNING ──shutdown()──► DRAINING ──no task left──► CLOSING ──┐
       │                       │                      (inboxes   │
       │                       │                       closed)   ├─► every worker gone:
       └───────────────────────┴─ terminate_workers() ─► FORCED ─┤   the loop ends
                                  kill_workers()                 │
       any state ── cannot go on (initializer failed, ──► BROKEN ┘
                    no worker starts, the loop raised)

    each turn:  requests from other threads (-> DRAINING, -> FORCED; stop(), cancel())
                assign pending tasks                    (RUNNING, DRAINING)
                close the inboxes once drained          (DRAINING -> CLOSING)
                wait; then act on what happened         (answers, deaths -> maybe BROKEN)
                halt tasks past their deadline; grace   (escalate SIGTERM, SIGKILL)

The class is written in four modules: ``_pool.dispatcher_core`` (its state and the pool's
transitions), ``_pool.sending`` (tasks to workers), ``_pool.worker_events`` (messages,
hang-ups, deaths) and this one (the caller-side API, the loop, halting). The policies it
applies live beside it, each on its own and unit-tested: which worker gets which tasks
(``_pool.assignment``), the claims that let it take a prefetched task back
(``_pool.claims``; why a claim cannot race is in ``_wire.slots``), the queue by priority
(``_pool.pending``), halting one task, time limits and a stopping pool's grace
(``_pool.stopping``), whom a worker's death is charged to (``_pool.deaths``), a worker's
lifecycle (``_pool.worker_handle``), reading its pipe (``_pool.reading``), and the errors
futures get (``_errors``).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Optional

from poolkit._error_messages import dispatcher_failed, stopped_error, timeout_error
from poolkit._errors import TaskStopped
from poolkit._pool.claims import take_back_below
from poolkit._pool.sending import Sending
from poolkit._pool.state import PoolState
from poolkit._pool.stopping import Halt, halt_task
from poolkit._pool.tasks import CLAIMS_LOCK, TaskState, claim, fail
from poolkit._pool.worker_events import WorkerEvents
from poolkit._pool.worker_handle import WorkerHandle
from poolkit._thread_signals import leave_signals_to_other_threads

logger = logging.getLogger(__name__)

#: A thread submitting a burst lets the dispatcher run once per this many queued tasks.
YIELD_EVERY = 64


class Dispatcher(Sending, WorkerEvents):
    """Owns one executor's workers and in-flight tasks; see the module docstring.

    Its state and transitions are in ``DispatcherCore`` (``_pool.dispatcher_core``), its
    sending side in ``Sending``, its handlers of worker events in ``WorkerEvents``.
    """

    # ------------------------------------------------------------------ caller side

    def start(self, executor: object) -> None:
        """Start every worker, then the dispatcher thread (so ``fork`` forks no thread)."""
        try:
            for _ in range(self._max_workers):
                self._start_worker()
            self._start_method.prepare_respawns(self._config_blob)
        except BaseException:
            self._worker_set.kill_all()
            self._start_method.close()
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

    # ------------------------------------------------------------- the event loop

    def _run(self) -> None:
        """The dispatcher thread: one turn of this loop per wakeup (see the module docstring)."""
        # Ctrl-C must wake the caller's thread, not this one.
        self._inherited_mask = leave_signals_to_other_threads()
        lock = self._lock
        lock.acquire()
        try:
            while not self._finished():
                self._handle_requests()  # -> DRAINING, -> FORCED; stop(), cancel()
                self._assign()  # while RUNNING or DRAINING
                self._close_inboxes_once_drained()  # DRAINING -> CLOSING
                if self._finished():
                    break
                self._wait_and_act()  # answers, deaths (-> maybe BROKEN), writable inboxes
                self._on_task_deadlines()
                self._on_hang_ups()
                self._grace.escalate_if_due(self._workers.values(), time.monotonic())
        except BaseException as exc:  # a bug here must not leave futures unresolved
            self._on_own_failure(exc)
        finally:
            # Each step on its own: one that fails must not skip the next (a future left
            # unresolved, a descriptor left open).
            for step in (self._fail_leftovers, self._force_done.set, self._start_method.close):
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
        error = dispatcher_failed(exc)
        try:
            self._break(error)
        finally:
            self._worker_set.kill_all()

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

    def _wait_and_act(self) -> None:
        """Wait, without the lock, for the next event or deadline; run each event's handler."""
        timeout = self._select_timeout()
        self._lock.release()
        try:
            events = self._selector.select(timeout)
        finally:
            self._lock.acquire()
        for key, _mask in events:
            key.data()

    def _select_timeout(self) -> Optional[float]:
        deadlines = [d for d in (self._grace.deadline, self._deadlines.next) if d is not None]
        deadlines.extend(self._worker_set.hung_up.values())
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

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
