"""Keep process-directed signals away from poolkit's own threads.

The kernel hands a signal sent to the process (Ctrl-C's SIGINT, a ``kill``) to any thread
that does not block it. Python runs the handler in the main thread whichever thread took
it, but only a thread that *received* the signal has its blocking call interrupted. If the
dispatcher thread, sitting in ``select``, took a Ctrl-C, the main thread would stay asleep in
``future.result()`` until something else woke it. Blocking those signals in poolkit's threads
leaves them to the user's threads, as in a program without poolkit.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

# Faults are raised in the thread that caused them and cannot be redirected; SIGKILL and
# SIGSTOP cannot be blocked at all.
_NOT_BLOCKED = {
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGKILL", "SIGSTOP")
    if hasattr(signal, name)
}
_SUPPORTED = hasattr(signal, "pthread_sigmask") and hasattr(signal, "valid_signals")


def leave_signals_to_other_threads() -> AbstractSet[int]:
    """Block every asynchronous signal in the calling thread; return the mask it had.

    Call it first thing in a poolkit thread.
    """
    if not _SUPPORTED:
        return set()
    return signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _NOT_BLOCKED)


@contextlib.contextmanager
def signal_mask(mask: AbstractSet[int]) -> Iterator[None]:
    """Give the calling thread ``mask`` for the block.

    A process started in a thread inherits the thread's mask: a worker started from a
    poolkit thread must get the mask of the thread that created the pool, not one that
    blocks SIGTERM.
    """
    if not _SUPPORTED:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block every asynchronous signal in the calling thread for the block.

    A thread started inside it inherits the mask, so it never takes a signal, not even
    before it runs its first line.
    """
    previous = leave_signals_to_other_threads()
    try:
        yield
    finally:
        if _SUPPORTED:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
