"""How long a stopping pool waits for its workers, and what it does when they outstay it.

A pool stops in one of two ways. Gracefully: the dispatcher closes every inbox, and a worker
that reads end-of-file exits by itself. Forcefully: the workers are signalled. Either way a
worker that is still alive when its grace runs out is escalated, SIGTERM then SIGKILL, so a
task that ignores end-of-file or catches SIGTERM cannot keep ``shutdown`` waiting forever.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable
from typing import Optional

from poolkit._pool.worker_handle import WorkerHandle

logger = logging.getLogger(__name__)

#: After the inboxes close, how long a worker may take to exit before it is terminated.
EXIT_GRACE_SECONDS = 10.0
#: After SIGTERM, how long before SIGKILL.
TERMINATE_GRACE_SECONDS = 2.0


class GraceClock:
    """The stopping pool's next deadline, and which signal comes when it passes."""

    __slots__ = ("_next_signal", "deadline")

    def __init__(self) -> None:
        #: When the workers still alive get the next signal; None while not stopping.
        self.deadline: Optional[float] = None
        self._next_signal = signal.SIGTERM

    def after_inboxes_closed(self) -> None:
        """The workers were asked to exit: give them ``EXIT_GRACE_SECONDS``, then SIGTERM."""
        self._arm(EXIT_GRACE_SECONDS, signal.SIGTERM)

    def after_signal(self, signum: signal.Signals) -> None:
        """The workers were sent ``signum``: escalate if they outlive it."""
        # After SIGKILL too: a worker stuck in the kernel gets it again until it is gone.
        self._arm(TERMINATE_GRACE_SECONDS, signal.SIGKILL)

    def escalate_if_due(self, workers: Iterable[WorkerHandle], now: float) -> None:
        """Signal every worker still alive once the deadline has passed."""
        if self.deadline is None or now < self.deadline:
            return
        signum = self._next_signal
        alive = list(workers)
        if not alive:
            self.deadline = None
            return
        for worker in alive:
            logger.warning(
                "poolkit worker %d did not exit in time; sending %s", worker.pid, signum.name
            )
            worker.signal(signum)
        self.after_signal(signum)

    def _arm(self, seconds: float, then: signal.Signals) -> None:
        self.deadline = time.monotonic() + seconds
        self._next_signal = then
