"""The parent's record of one worker process: how it is started, signalled and released.

A worker goes through :class:`WorkerState` in one direction: STARTING until its initializer
reports READY; READY while it takes tasks; CLOSING once the pool asked it to end (its inbox
closed, a signal, its memory limit) or is killing it (a fault on its result pipe), so it is
given nothing more; HALTED if the pool killed it to stop the task it ran (a time limit,
``Executor.stop()``), so its death is not charged to that task as a crash; EXITED once its
process is gone and the parent's ends are closed. Only the handle's own methods change it.
"""

from __future__ import annotations

import collections
import enum
import os
import selectors
import signal
import time
from typing import Callable, Optional

from poolkit._pool.tasks import TaskState
from poolkit._start_methods.base import StartMethod, WorkerProcess
from poolkit._wire.channel import WorkerChannel
from poolkit._wire.fds import open_parent_pidfd as _open_pidfd
from poolkit._wire.fds import unregister_parent_fd
from poolkit._wire.slots import RunningSlot
from poolkit._worker.args import WorkerArgs
from poolkit._worker.parent_watch import ParentLink


class WorkerState(enum.Enum):
    """Where a worker stands in its life; see the module docstring."""

    STARTING = "starting"
    READY = "ready"
    CLOSING = "closing"
    HALTED = "halted"
    EXITED = "exited"


class WorkerHandle:
    """The parent's record of one worker process."""

    __slots__ = (
        "_budget",
        "_fault",
        "_fault_task",
        "_has_successor",
        "_loop_error",
        "_pidfd",
        "_reading",
        "_reported_ready",
        "_state",
        "_writing",
        "assigned",
        "channel",
        "pid",
        "process",
        "progress_at",
        "running",
    )

    def __init__(
        self,
        process: WorkerProcess,
        channel: WorkerChannel,
        running: RunningSlot,
        budget: Optional[int],
    ) -> None:
        self.process = process
        self.pid: int = process.pid  # type: ignore[assignment]
        self.channel = channel
        self.running = running  # shared slot: id of the task the worker runs, 0 when idle
        self.assigned: collections.deque[TaskState] = collections.deque()
        self._budget = budget  # tasks it may still be given (max_tasks_per_child), or None
        self._state = WorkerState.STARTING
        self._reported_ready = False  # its initializer ran (it may be CLOSING since)
        self._has_successor = False  # a worker to take its place was started already
        self._pidfd = _open_pidfd(self.pid)
        self._writing = False  # its inbox is registered for write readiness
        self._reading = False  # its outbox is registered (from register() to end-of-file)
        self.progress_at = 0.0  # when it last finished a task, or was given work while idle
        self._loop_error: Optional[BaseException] = None
        self._fault: Optional[str] = None
        self._fault_task = 0

    # ------------------------------------------------------------------ what it is

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def accepting(self) -> bool:
        """It may be given tasks: READY, with budget left."""
        return self._state is WorkerState.READY and self._budget != 0

    @property
    def reported_ready(self) -> bool:
        """Its initializer ran: a death before that is a startup failure."""
        return self._reported_ready

    @property
    def halted(self) -> bool:
        """Killed by the pool to stop the task it ran (that task is settled already)."""
        return self._state is WorkerState.HALTED

    @property
    def exit_expected(self) -> bool:
        """The pool asked it to end, or is killing it, or its task budget is spent: an
        end-of-file on its result pipe, or an exit with code 0, is no surprise."""
        closing = self._state is WorkerState.CLOSING or self._state is WorkerState.HALTED
        return closing or self._budget == 0

    @property
    def budget(self) -> Optional[int]:
        """Tasks it may still be given (``max_tasks_per_child``), or None for no limit."""
        return self._budget

    @property
    def has_successor(self) -> bool:
        """A worker to take its place was started before it ended: its exit starts none."""
        return self._has_successor

    @property
    def loop_error(self) -> Optional[BaseException]:
        """What its loop raised outside any task, just before it exited (LOOP_FAILED)."""
        return self._loop_error

    @property
    def fault(self) -> Optional[str]:
        """Why the pool stopped reading its result pipe and killed it (bytes that were not
        a message it wrote), if it did."""
        return self._fault

    @property
    def fault_task(self) -> int:
        """The id of the task charged with that fault (0: none)."""
        return self._fault_task

    @property
    def reading(self) -> bool:
        """Its result pipe is watched (from :meth:`register` to end-of-file or a fault)."""
        return self._reading

    # ------------------------------------------------------------ what happens to it

    def mark_ready(self) -> None:
        """STARTING -> READY: its initializer ran (a worker told to end stays CLOSING)."""
        self._reported_ready = True
        if self._state is WorkerState.STARTING:
            self._state = WorkerState.READY

    def mark_closing(self) -> None:
        """-> CLOSING: it is asked to end, or being killed; it is given nothing more."""
        if self._state is WorkerState.STARTING or self._state is WorkerState.READY:
            self._state = WorkerState.CLOSING

    def mark_halted(self) -> None:
        """-> HALTED: the pool killed it to stop the task it ran."""
        if self._state is not WorkerState.EXITED:
            self._state = WorkerState.HALTED

    def mark_fault(self, reason: str) -> None:
        """Its result pipe held bytes it did not write as a message: it is being killed.

        Answers arrive in order, so the bytes came before the answer of the oldest task
        still unanswered: that task's code (or what it started) wrote them, and is charged.
        """
        self._fault = reason
        self._fault_task = self.assigned[0].task_id if self.assigned else 0
        self.mark_closing()

    def note_loop_error(self, error: BaseException) -> None:
        """Its loop failed outside any task (LOOP_FAILED); it exits next."""
        self._loop_error = error

    def note_successor_started(self) -> None:
        self._has_successor = True

    def note_progress(self, now: float) -> None:
        """It finished a task, or was given work while idle, at ``now``."""
        self.progress_at = now

    def spend_budget(self, tasks: int) -> bool:
        """Count ``tasks`` just sent against its budget; True if that spent the budget."""
        if self._budget is None:
            return False
        self._budget -= tasks
        return self._budget == 0

    # ------------------------------------------------- its descriptors in the selector

    def register(
        self,
        selector: selectors.BaseSelector,
        on_readable: Callable[[], None],
        on_exit: Callable[[], None],
    ) -> None:
        """Watch its result pipe and its death descriptor."""
        selector.register(self.channel.outbox_fd, selectors.EVENT_READ, on_readable)
        self._reading = True
        selector.register(self.death_fd, selectors.EVENT_READ, on_exit)

    def stop_reading(self, selector: selectors.BaseSelector) -> None:
        """Stop watching its result pipe (end-of-file, a fault, or its release)."""
        if self._reading:
            selector.unregister(self.channel.outbox_fd)
            self._reading = False

    def watch_writable(
        self, selector: selectors.BaseSelector, on_writable: Callable[[], None]
    ) -> None:
        """Be told when its inbox takes more bytes (a frame is half written)."""
        writer = self.channel.writer
        if not self._writing and writer is not None:
            selector.register(writer.fd, selectors.EVENT_WRITE, on_writable)
            self._writing = True

    def stop_watching_writable(self, selector: selectors.BaseSelector) -> None:
        writer = self.channel.writer
        if self._writing and writer is not None:
            selector.unregister(writer.fd)
        self._writing = False

    def unregister(self, selector: selectors.BaseSelector) -> None:
        """Take every descriptor of this (dead) worker out of ``selector``."""
        self.stop_reading(selector)
        try:
            selector.unregister(self.death_fd)
        except (KeyError, ValueError):
            pass  # never registered (the worker failed during start()), or closed
        self.stop_watching_writable(selector)

    @property
    def death_fd(self) -> int:
        """A descriptor that becomes readable when the worker process has ended.

        A pidfd where the kernel has them: ``multiprocessing``'s sentinel is a pipe, and a
        process the worker's task started holds a copy of it, which would hide the
        worker's death for as long as that process lives.
        """
        return self._pidfd if self._pidfd is not None else self.process.sentinel

    @classmethod
    def start(
        cls,
        start_method: StartMethod,
        config_blob: bytes,
        budget: Optional[int],
        long_lived_thread: bool = False,
    ) -> WorkerHandle:
        """Create the worker's channel and slot, and start its process.

        ``long_lived_thread``: the calling thread outlives the worker (the main thread, the
        dispatcher thread), so the worker may arm the parent-death signal against it.
        """
        channel = WorkerChannel(start_method.pipe)
        running = RunningSlot()
        link = ParentLink(os.getpid(), start_method.death_signal_safe(long_lived_thread))
        assert channel.worker_inbox is not None and channel.worker_outbox is not None
        try:
            process = start_method.start_worker(
                WorkerArgs(
                    inbox=channel.worker_inbox,
                    outbox=channel.worker_outbox,
                    side=channel.worker_side,
                    running=running,
                    config_blob=config_blob,
                    parent=link,
                    carried=start_method.carried,
                )
            )
        except BaseException:
            channel.close()
            running.close()
            raise
        channel.release_worker_ends()  # the worker has its own copies now
        return cls(process, channel, running, budget)

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the worker if it still runs; never to a recycled pid.

        A forkserver or template worker is reaped by its own parent, at a moment the
        dispatcher does not see, so its pid could be reused: signals go through a pidfd,
        which names this process and no other. Without pidfds, through the process object.
        """
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except ProcessLookupError:
                pass  # already gone
        elif signum == signal.SIGKILL:
            self.process.kill()
        elif signum == signal.SIGTERM:
            self.process.terminate()
        else:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """-> EXITED: close everything the parent holds for this (dead) worker."""
        self._state = WorkerState.EXITED
        if self._pidfd is not None:
            unregister_parent_fd(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.channel.close()
        self.running.close()
        try:
            self.process.close()
        except ValueError:
            pass  # still running: only after a failed kill; its sentinel stays open


def reap(process: WorkerProcess) -> Optional[int]:
    """The exit code of a worker whose death was just seen; None if it cannot be had.

    Another thread may be reaping the same child at that moment (``multiprocessing``
    polls every child it knows whenever a process starts): its ``waitpid`` wins and ours
    sees no child, so the code is read again until that thread has stored it.
    """
    # Asked without waiting first: a process of the task holding the sentinel pipe would
    # make join() wait its whole timeout. A fork-template worker's code comes from the
    # template, which join() waits for.
    if process.exitcode is None:
        process.join(1.0)
    for _ in range(_REAP_RETRIES):
        exitcode = process.exitcode
        if exitcode is not None:
            return exitcode
        time.sleep(0.001)
    return process.exitcode


_REAP_RETRIES = 200


