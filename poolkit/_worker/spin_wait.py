"""A worker's brief busy wait for its next frame, before it blocks on the pipe.

On a virtual machine most of a round trip's time is the kernel waking an idle CPU: a worker
that blocks on its inbox the moment it has sent a result lets its CPU go idle, and the
parent's next task has to wake it again (see docs/performance.md). A worker whose tasks come
one after another therefore polls its inbox for a short while first, yielding the CPU to
any other runnable thread between polls, and blocks only if nothing came.

The spin is not adaptive on purpose. A rule such as "spin only while the last wait was
short" turns itself off for good on a slow VM: once a worker blocks, its waits include its
own wakeup and grow past the budget. Spinning every time costs at most one budget of CPU
each time a worker runs out of work (200 µs after a task that came alone), and the yields
hand that CPU to any other runnable thread (with 8 workers on 2 CPUs a burst measured the
same with and without the spin).
"""

from __future__ import annotations

import os
import select
import time
from typing import Callable, Optional

# The budget covers the parent's side of a round trip (reading a result, settling its
# future, the caller's next submit: about 100 µs on the project's 2-core VM); 200 µs
# halved the warm round trip there (docs/performance.md, "A brief spin in the worker").
SPIN_SECONDS = 200e-6

_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)


class SpinWait:
    """Polls one descriptor for input for up to ``seconds`` before a read that may block."""

    def __init__(self, fd: int, seconds: float = SPIN_SECONDS) -> None:
        self._fd = fd
        self._budget_ns = int(seconds * 1e9)
        self._poll: Optional[select.poll] = None

    def before_read(self) -> None:
        """Returns once the descriptor is ready or the budget is spent; never blocks."""
        if self._budget_ns <= 0:
            return
        poller = self._poll
        if poller is None:
            # A poll object holds no descriptor of its own: nothing to close.
            poller = self._poll = select.poll()
            poller.register(self._fd, select.POLLIN)
        poll = poller.poll
        clock = time.perf_counter_ns
        deadline = clock() + self._budget_ns
        # POLLHUP and POLLERR count as ready: the read that follows reports them.
        while not poll(0) and clock() < deadline:
            _sched_yield()
