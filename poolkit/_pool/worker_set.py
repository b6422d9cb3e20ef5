"""The dispatcher's live workers: each one started, watched, signalled and released here."""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import threading
import time
from collections.abc import Set as AbstractSet
from typing import Callable, Optional

from poolkit._pool.worker_handle import WorkerHandle
from poolkit._start_methods.base import StartMethod
from poolkit._thread_signals import signal_mask

logger = logging.getLogger(__name__)

#: Seconds a worker may live on after its result pipe hung up before the pool kills it.
HANG_UP_GRACE_SECONDS = 2.0


class WorkerSet:
    """One pool's workers by pid, and the selector that watches their descriptors."""

    def __init__(
        self,
        start_method: StartMethod,
        config_blob: bytes,
        max_tasks_per_child: Optional[int],
        selector: selectors.BaseSelector,
    ) -> None:
        self._start_method = start_method
        self._config_blob = config_blob
        self._max_tasks_per_child = max_tasks_per_child
        self._selector = selector
        #: The live workers. The dispatcher reads this dict as its ``_workers``.
        self.by_pid: dict[int, WorkerHandle] = {}
        #: pid -> when a worker whose result pipe hung up unasked counts as cut off from it.
        self.hung_up: dict[int, float] = {}

    def start(
        self,
        on_readable: Callable[[WorkerHandle], None],
        on_exit: Callable[[WorkerHandle], None],
        *,
        in_dispatcher_thread: bool,
        inherited_mask: AbstractSet[int],
    ) -> WorkerHandle:
        """Start one worker and watch its result pipe and its death."""
        mask = (
            signal_mask(inherited_mask)  # a new process inherits this thread's mask
            if in_dispatcher_thread
            else contextlib.nullcontext()
        )
        # The parent-death signal fires when the thread that started the worker ends: only
        # the main thread and this dispatcher's thread live as long as the worker.
        long_lived = in_dispatcher_thread or threading.current_thread() is threading.main_thread()
        with mask:
            worker = WorkerHandle.start(
                self._start_method, self._config_blob, self._max_tasks_per_child, long_lived
            )
        worker.running.release_worker_copy()  # the worker has its own copy now
        self.by_pid[worker.pid] = worker
        worker.register(self._selector, lambda: on_readable(worker), lambda: on_exit(worker))
        return worker

    def release(self, worker: WorkerHandle) -> None:
        """Forget a dead worker and close everything the parent held for it."""
        self.by_pid.pop(worker.pid, None)
        self.hung_up.pop(worker.pid, None)
        worker.unregister(self._selector)
        worker.close()

    def signal_all(self, signum: signal.Signals, spare: Optional[WorkerHandle] = None) -> None:
        """Tell every worker to end, by ``signum``; ``spare`` is ending by itself already."""
        for worker in self.by_pid.values():
            worker.mark_closing()
            if worker is not spare:
                worker.signal(signum)

    def close_inboxes(self) -> None:
        """Tell every worker to end, by end-of-file on its inbox."""
        for worker in self.by_pid.values():
            worker.mark_closing()
            worker.channel.close_inbox()  # end-of-file: the worker exits by itself

    def kill_all(self) -> None:
        """SIGKILL, reap and release every worker, each on its own (a failure is logged)."""
        for worker in list(self.by_pid.values()):
            try:
                worker.signal(signal.SIGKILL)
                worker.process.join(5.0)
                self.release(worker)
            except BaseException:
                logger.exception("poolkit dispatcher cleanup of worker %d", worker.pid)

    def note_hang_up(self, worker: WorkerHandle) -> None:
        """The worker closed its result pipe while it held tasks or was not asked to end.

        It is exiting, and its death descriptor reports when it is gone. Unless it is not:
        a task that closed or replaced the pipe leaves a worker that runs on and can never
        answer. It gets a moment to die on its own (the hang-up comes just before the exit)
        before :meth:`cut_off` names it.
        """
        self.hung_up[worker.pid] = time.monotonic() + HANG_UP_GRACE_SECONDS

    def cut_off(self, now: float) -> list[WorkerHandle]:
        """The workers whose hang-up grace ran out while they live on, not yet at fault."""
        found = []
        for pid, due in list(self.hung_up.items()):
            if due > now:
                continue
            del self.hung_up[pid]
            worker = self.by_pid.get(pid)
            if worker is not None and worker.fault is None:
                found.append(worker)
        return found
