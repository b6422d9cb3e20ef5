"""The parent's record of a submitted task, and how its future is resolved."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from poolkit._error_messages import rebuild_exception as rebuild_exception  # the dispatcher's too
from poolkit._error_messages import result_unpickling_failed
from poolkit._pickling import serialization as serialization
from poolkit._pool import completion as completion
from poolkit._wire.buffers import HeldBuffers
from poolkit._wire.messages import MessageKind, WorkerMessage

if TYPE_CHECKING:
    from poolkit._wire.slots import RunningSlot

logger = logging.getLogger(__name__)

#: Held (briefly) by whoever changes where a prefetched task stands: the dispatcher posting
#: it to a worker, learning it started, or taking it back; a caller cancelling it. One lock
#: for the process: the operations are a few assignments and a claim-word swap.
CLAIMS_LOCK = threading.RLock()


class TaskFuture(Protocol):
    """What the dispatcher uses of a task's future: a stdlib ``Future`` for ``submit``, a
    :class:`~poolkit._map.chunk_future.ChunkFuture` for a map chunk."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def cancel(self) -> bool: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: Optional[BaseException]) -> None: ...


class TaskState:
    """The parent's record of one submitted task, until its future is resolved."""

    __slots__ = (
        "board",
        "claimed",
        "fn_name",
        "future",
        "halt_error",
        "held",
        "items",
        "on_revoke",
        "parts",
        "priority",
        "seq",
        "task_id",
        "timeout",
        "unstarted_deaths",
    )

    def __init__(
        self,
        task_id: int,
        future: TaskFuture,
        parts: tuple[bytes, ...],
        fn_name: str,
        *,
        timeout: Optional[float] = None,
        items: int = 1,
        held: Optional[HeldBuffers] = None,
    ) -> None:
        self.task_id = task_id
        self.future = future
        self.parts = parts  # encoded record, kept until resolved in case it must be resent
        self.fn_name = fn_name
        #: Its future is marked running (``claim``): it runs, or is bound to a worker that
        #: will run it; no ``cancel()`` can stop it any more. Not "started in a worker".
        self.claimed = False
        #: Seconds the task may run (None: no limit). Set by the executor from its options.
        self.timeout = timeout
        self.items = items  # calls in the task (a map chunk holds several)
        #: Why the task was halted before it started (stop or deadline), once asked.
        self.halt_error: Optional[BaseException] = None
        #: Memory files of the arguments' large buffers, kept as ``parts`` are (``_wire.buffers``).
        self.held = held
        #: Workers that died for no task's fault while holding this one, before it started.
        self.unstarted_deaths = 0
        #: Higher runs first; equal priorities run in the order they were submitted.
        self.priority = 0
        #: The slot of the worker holding it *pending* (prefetched, may still be taken back),
        #: and its place there (``seq``); None once it is known started, or taken back.
        self.board: Optional[RunningSlot] = None
        self.seq = 0
        #: Told (by a caller that cancelled it) that the task was taken back from its worker.
        self.on_revoke: Optional[Callable[[TaskState], None]] = None
        if type(future) is Future:
            # Its cancel() must take the task back from a worker that holds it pending, in the
            # same step (see cancel). An instance attribute: the future stays a plain Future.
            future.cancel = self.cancel  # type: ignore[method-assign]

    def cancel(self) -> bool:
        """The future's ``cancel()``: True if the task will never run.

        A task prefetched by a worker but not started is taken back from it first (its
        claim word, see ``_wire.slots.RunningSlot``); if the worker claimed it already, it is
        running: the future is marked so and the answer is False, as for any running task.
        """
        future = self.future
        with CLAIMS_LOCK:
            board = self.board
            if board is not None:
                self.board = None
                if not board.revoke(self.seq, self.task_id):
                    claim_posted(self)
                    return False
                revoked = True
            else:
                revoked = False
        # Outside the lock: cancel() runs the future's done-callbacks (user code).
        cancelled = _plain_cancel(future)
        if revoked and self.on_revoke is not None:
            self.on_revoke(self)  # the dispatcher drops it, or requeues it if not cancelled
        return cancelled

    def settle(self) -> None:
        """Drop what was kept to resend the task: it will not be sent again."""
        self.parts = ()
        self.board = None
        held = self.held
        if held is not None:
            self.held = None
            held.close()


def resolve(task: TaskState, message: WorkerMessage, pid: int) -> None:
    """Resolve the task's future from the worker's RESULT or ERROR message.

    Never raises: whatever the task's result or exception does while it is rebuilt here
    (its ``__reduce__``, ``__setstate__`` or ``__setattr__`` raising, even ``SystemExit``)
    becomes this future's error, and the dispatcher goes on.
    """
    if message.kind is not MessageKind.RESULT:
        fail(task, rebuild_exception(message, f"the exception raised by {task.fn_name}()"))
        return
    try:
        value = serialization.loads(message.payload, message.buffers)
    except BaseException as exc:  # SystemExit too: it must not end the dispatcher
        fail(task, result_unpickling_failed(task.fn_name, pid, exc))
        return
    task.settle()
    future = task.future
    if task.claimed and not _abandoned and type(future) is Future:  # the common case
        try:
            completion.set_result(future, value)
        except BaseException:  # InvalidStateError: already resolved
            logger.debug("future of task %d was already resolved", task.task_id)
        _unhook(future)
        return
    _set(task, lambda f: f.set_result(value))


def _plain_cancel(future: TaskFuture) -> bool:
    if type(future) is Future:
        return Future.cancel(future)
    base = getattr(type(future), "plain_cancel", None)
    return bool(base(future)) if base is not None else future.cancel()


def claim(task: TaskState) -> bool:
    """Mark the task's future running, once: from now on it runs, whoever asks to cancel it.

    False if a caller cancelled it first: it must not run. Without a lock, so only for a
    task no worker holds pending (queued in the parent, or being sent to an idle worker by
    the thread that holds it); a posted task is claimed with :func:`claim_posted`.
    """
    if task.claimed:
        return True
    if not task.future.set_running_or_notify_cancel():
        return False
    task.claimed = True
    return True


def claim_posted(task: TaskState) -> bool:
    """:func:`claim` a task posted to a worker (its worker started it, or won the race to
    it); it is no longer pending there. False if it was cancelled.

    Under ``CLAIMS_LOCK``: the dispatcher and a cancelling caller may both get here.
    """
    with CLAIMS_LOCK:
        task.board = None
        return claim(task)


def fail(task: TaskState, error: BaseException) -> None:
    """Resolve the task's future with ``error`` (unless the caller cancelled it first)."""
    _set(task, lambda f: f.set_exception(error))


_abandoned = False


def abandon_futures() -> None:
    """Stop resolving futures, process-wide: the interpreter is exiting after Ctrl-C.

    A KeyboardInterrupt that lands while the main thread is inside ``as_completed`` or
    ``wait`` can leave a future's lock held by that thread for good (the stdlib acquires
    them one by one). Resolving such a future would block the dispatcher, and so the exit,
    forever; and after an unhandled Ctrl-C nobody reads a future any more.
    """
    global _abandoned
    _abandoned = True


def _set(task: TaskState, action: Callable[[TaskFuture], None]) -> None:
    task.settle()
    if _abandoned:
        return
    future = task.future
    try:
        if not task.claimed and not claim_posted(task):
            return  # cancelled while pending
        if type(future) is Future:
            # Its done-callbacks are user code: they run on a callback thread.
            completion.settle_with(future, action)
            _unhook(future)
        else:
            action(future)
            _unhook(future)
    except BaseException:  # InvalidStateError (already resolved), or a bug: never stop the loop
        logger.debug("future of task %d was already resolved", task.task_id, exc_info=True)


def _unhook(future: Any) -> None:
    # A done future's cancel() is the stdlib's (False): dropping the task's bound method
    # (a map chunk's task) breaks the future -> task -> future cycle, so both go by
    # reference counting.
    if type(future) is Future:
        try:
            del future.cancel
        except AttributeError:
            pass
    elif hasattr(future, "task"):
        future.task = None
