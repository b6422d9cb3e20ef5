"""The parent's record of one worker process: how it is started, signalled and released."""

from __future__ import annotations

import collections
import os
import signal
import time
from typing import Optional

from poolkit._errors import describe_exit
from poolkit._pool.tasks import TaskState
from poolkit._start_methods.base import StartMethod, WorkerProcess
from poolkit._wire.channel import WorkerChannel
from poolkit._wire.fds import open_parent_pidfd as _open_pidfd
from poolkit._wire.fds import unregister_parent_fd
from poolkit._wire.slots import RunningSlot
from poolkit._worker.args import WorkerArgs
from poolkit._worker.parent_watch import ParentLink


class WorkerHandle:
    """The parent's record of one worker process."""

    __slots__ = (
        "_pidfd",
        "assigned",
        "budget",
        "channel",
        "closing",
        "fault",
        "fault_task",
        "halted",
        "loop_error",
        "pid",
        "process",
        "progress_at",
        "reading",
        "ready",
        "replaced",
        "running",
        "writing",
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
        self.budget = budget  # tasks it may still be given (max_tasks_per_child), or None
        self.ready = False  # the initializer ran
        self.replaced = False  # a successor was already started
        self.closing = False  # its inbox is closed: it takes no more tasks
        self._pidfd = _open_pidfd(self.pid)
        self.halted = False  # killed by the dispatcher to stop a task (a time limit, stop())
        self.writing = False  # its inbox is registered for write readiness
        self.reading = True  # its outbox is registered (until end-of-file)
        self.progress_at = 0.0  # when it last finished a task, or was given work while idle
        #: What its loop raised outside any task, just before it exited (LOOP_FAILED).
        self.loop_error: Optional[BaseException] = None
        #: Why the pool stopped reading its result pipe and killed it (bytes that were not
        #: a message it wrote), if it did.
        self.fault: Optional[str] = None
        self.fault_task = 0  #: the task charged with that fault

    @property
    def death_fd(self) -> int:
        """A descriptor that becomes readable when the worker process has ended.

        A pidfd where the kernel has them: ``multiprocessing``'s sentinel is a pipe, and a
        process the worker's task started holds a copy of it, which would hide the
        worker's death for as long as that process lives.
        """
        return self._pidfd if self._pidfd is not None else self.process.sentinel

    @property
    def accepting(self) -> bool:
        return self.ready and not self.closing and self.budget != 0

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
        """Close everything the parent holds for this (dead) worker."""
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


#: How many workers in turn may die, each for no task's fault, holding the same task before
#: it started: the last of them fails the task (``_errors.unstarted_crash_error``) instead of
#: sending it on.
UNSTARTED_DEATH_LIMIT = 3


class StartupFailures:
    """Counts workers that die before they are ready, to tell bad luck from a broken setup.

    A worker killed from outside (SIGKILL, SIGTERM: an OOM killer, a user, a chaos test) is
    simply replaced. A worker that ends by itself before it is ready, several times in a
    row, means a broken setup (an initializer that exits or crashes, a script without the
    ``__main__`` guard), and retrying forever would hide it.
    """

    #: Workers in a row that may end by themselves before they are ready.
    LIMIT = 3

    __slots__ = ("in_a_row",)

    def __init__(self) -> None:
        self.in_a_row = 0

    def worker_ready(self) -> None:
        self.in_a_row = 0

    def worker_died(self, pid: int, exitcode: Optional[int], start_method: str) -> Optional[str]:
        """Record a death before READY; return why the pool must give up, or None to retry."""
        killed = exitcode is not None and -exitcode in (signal.SIGKILL, signal.SIGTERM)
        if not killed:
            self.in_a_row += 1
        if killed or self.in_a_row < self.LIMIT:
            return None
        hint = ""
        if start_method != "fork":
            hint = (
                f" Under {start_method}, a script must create the executor under "
                "`if __name__ == '__main__':`."
            )
        return (
            f"worker {pid} {describe_exit(exitcode)} while starting up (in the initializer, "
            f"or before it; its stderr says why), {self.in_a_row} times in a row; the pool "
            f"cannot start workers.{hint}"
        )
