"""A worker's brief busy wait for its next frame, before it blocks on the pipe.

On a virtual machine most of a round trip's time is the kernel waking an idle CPU: a worker
that blocks on its inbox the moment it has sent a result lets its CPU go idle, and the
parent's next task has to wake it again (see docs/performance.md). A worker whose tasks come
one after another therefore polls its inbox for a short while first, yielding the CPU to
any other runnable thread between polls, and blocks only if nothing came.

The spin does not adapt to its own waits on purpose. A rule such as "spin only while the
last wait was short" turns itself off for good on a slow VM: once a worker blocks, its
waits include its own wakeup and grow past the budget. Spinning costs at most one budget of
CPU each time a worker runs out of work (200 µs after a task that came alone).

It does skip the spin while the machine has no CPU to spare: more threads runnable than CPUs,
besides the parent's thread that the worker's last result has just woken (``/proc/loadavg``,
looked at every 50 ms at most). A yield gives the CPU only to threads queued on the same CPU,
so on a busy machine a spinning worker takes time from the pool's own parent (the thread that
would send it work) and from other programs, and a CPU that never idles wakes a blocked reader
cheaply anyway: with two CPU-bound processes beside a 2-worker pool on 2 CPUs,
``map(chunksize=1)`` ran about 1.4x as fast without the spin (benchmarks/user_harness.py,
docs/benchmarks.md, "What a user measures").
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

#: How long a look at the machine's load holds.
BUSY_CHECK_NS = 50_000_000


def machine_busy(cpus: int) -> bool:
    """Would a spin now keep a runnable thread from a CPU? False where Linux cannot say.

    The count read includes the caller, and, right after a result was sent, the parent's
    thread that it woke and that goes back to sleep within microseconds: up to ``cpus + 1``
    runnable, every other thread has a CPU, and the spin takes time from nobody.
    """
    try:
        fd = os.open("/proc/loadavg", os.O_RDONLY)
    except OSError:
        return False
    try:
        # "0.52 0.58 0.59 3/1024 4242": the fourth field is runnable/total scheduling
        # entities, this worker included.
        fields = os.read(fd, 128).split()
    finally:
        os.close(fd)
    try:
        return int(fields[3].split(b"/")[0]) > cpus + 1
    except (IndexError, ValueError):
        return False


class SpinWait:
    """Polls one descriptor for input for up to ``seconds`` before a read that may block."""

    def __init__(
        self,
        fd: int,
        seconds: float = SPIN_SECONDS,
        busy: Optional[Callable[[], bool]] = None,
    ) -> None:
        self._fd = fd
        self._budget_ns = int(seconds * 1e9)
        self._poll: Optional[select.poll] = None
        # The machine's CPUs, not this process's share: the count read is machine-wide.
        self._cpus = os.cpu_count() or 1
        self._busy: Callable[[], bool] = busy if busy is not None else self._machine_busy
        self._busy_until_ns = 0  # the last look at the load holds until then
        self._was_busy = False

    def _machine_busy(self) -> bool:
        return machine_busy(self._cpus)

    def before_read(self) -> None:
        """Returns once the descriptor is ready or the budget is spent; never blocks."""
        if self._budget_ns <= 0:
            return
        clock = time.perf_counter_ns
        now = clock()
        if now >= self._busy_until_ns:
            self._was_busy = self._busy()
            self._busy_until_ns = now + BUSY_CHECK_NS
        if self._was_busy:
            return
        poller = self._poll
        if poller is None:
            # A poll object holds no descriptor of its own: nothing to close.
            poller = self._poll = select.poll()
            poller.register(self._fd, select.POLLIN)
        poll = poller.poll
        deadline = now + self._budget_ns
        # POLLHUP and POLLERR count as ready: the read that follows reports them.
        while not poll(0) and clock() < deadline:
            _sched_yield()
