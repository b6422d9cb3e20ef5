"""The dispatcher's state, and the steps that change it, shared by the parts of the class.

:class:`~poolkit._pool.dispatcher.Dispatcher` is one object in one thread, written in four
modules so that each reads on its own: this one holds the state (every field is set up in
``__init__``, with what it means) and the pool's transitions (``_pool.state``: DRAINING ->
CLOSING, FORCED, BROKEN), worker starts and the wakeup pipe; ``_pool.sending`` hands tasks
to workers; ``_pool.worker_events`` acts on what workers report (messages, hang-ups,
deaths); ``_pool.dispatcher`` is the caller-side API and the loop. A part calls another
part's method through ``self``; the methods one part needs from another are declared at
the end of this class.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import threading
import weakref
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from typing import Any, Callable, Optional

from poolkit._error_messages import not_run_error, replacement_failed
from poolkit._errors import BrokenProcessPool
from poolkit._pool.claims import notify_cancelled
from poolkit._pool.deaths import StartupFailures
from poolkit._pool.pending import PendingQueue
from poolkit._pool.state import PoolState
from poolkit._pool.stopping import GraceClock, TaskDeadlines
from poolkit._pool.tasks import TaskState, fail
from poolkit._pool.worker_handle import WorkerHandle
from poolkit._pool.worker_set import WorkerSet
from poolkit._start_methods.base import StartMethod
from poolkit._wire.fds import register_parent_fd, unregister_parent_fd


class DispatcherCore:
    """The state of one executor's dispatcher; see the module docstring."""

    def __init__(
        self,
        start_method: StartMethod,
        max_workers: int,
        config_blob: bytes,
        max_tasks_per_child: Optional[int],
    ) -> None:
        self._start_method = start_method
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
        self._worker_set = WorkerSet(start_method, config_blob, max_tasks_per_child, self._selector)
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

    # ------------------------------------------------------------------ predicates

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

    # ------------------------------------------------------- the wakeup pipe

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

    def _revoked_by_caller(self, task: TaskState) -> None:
        """A caller's cancel() took ``task`` back from its worker (any thread)."""
        self._revoked.append(task)
        self.wake()

    def _on_wakeup(self) -> None:
        try:
            while len(os.read(self._wake_r, 4096)) == 4096:
                pass  # a short read emptied the pipe
        except BlockingIOError:
            pass
        # Clear the flag only after draining: a byte written after this point wakes the next
        # select, and a caller that still saw the flag set queued its work before we look.
        self._wake_signalled = False

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
            self._break(replacement_failed(exc))

    # ------------------------------------------- the pool's transitions (_pool.state)

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

    def _break(self, error: BaseException, spare: Optional[WorkerHandle] = None) -> None:
        """-> BROKEN: the pool cannot go on; fail every task, stop every worker.

        ``spare`` is a worker that is exiting by itself (its initializer failed): it is not
        signalled, so its own exit runs to the end (a ``multiprocessing.Queue`` it logged the
        failure to flushes then), unless it outlives the grace like any other.
        """
        if self._state is PoolState.BROKEN:
            return
        self.broken = error
        self._state = PoolState.BROKEN
        self._fail_assigned()
        self._fail_pending()
        self._signal_all(signal.SIGTERM, spare)

    def _signal_all(self, signum: signal.Signals, spare: Optional[WorkerHandle] = None) -> None:
        """Signal every worker to end; the grace clock escalates if they outlive it."""
        self._worker_set.signal_all(signum, spare)
        self._grace.after_signal()

    # ---------------------------------------------------------- tasks that will not run

    def _not_run_error(self) -> BrokenProcessPool:
        return not_run_error(self.broken, self._forced_by)

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

    # ----------------------------------------------- provided by the other parts

    def _collect(self, worker: WorkerHandle) -> None:
        """Read and act on what ``worker`` wrote (``_pool.worker_events``)."""
        raise NotImplementedError

    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        """Settle a dead worker's tasks and replace it (``_pool.worker_events``)."""
        raise NotImplementedError

    def _take_back_revoked(self) -> None:
        """Settle the tasks callers took back from workers (``_pool.sending``)."""
        raise NotImplementedError


def _weak_revoke(dispatcher: weakref.ref[DispatcherCore]) -> Callable[[TaskState], None]:
    """``DispatcherCore._revoked_by_caller`` without a strong reference to the dispatcher."""

    def on_revoke(task: TaskState) -> None:
        target = dispatcher()
        if target is not None:
            target._revoked_by_caller(task)

    return on_revoke
