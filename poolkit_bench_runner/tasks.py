"""The tiny functions the benchmark runs in worker processes.

Module-level, standard library only: every implementation pickles them by reference and each
worker imports this module once, so no pool pays for another library's imports.
"""

from __future__ import annotations

import os
import time
from typing import Any


def noop(*args: Any) -> None:
    """Do nothing: the cost of a task is then the pool's own overhead."""
    return None


def ident(value: Any) -> Any:
    """Return the argument: a tiny map task."""
    return value


def getpid() -> int:
    """The worker's pid."""
    return os.getpid()


def sleep_pid(seconds: float) -> tuple[int, float]:
    """Sleep briefly (spreads a wave over every worker); return the pid and when it started.

    The start is read from ``time.perf_counter``, which on Linux is the system-wide
    monotonic clock, so the process that submitted the task can compare it with its own.
    """
    started = time.perf_counter()
    time.sleep(seconds)
    return os.getpid(), started


def burn(loops: int) -> int:
    """Pure-Python CPU work: holds the GIL for the whole call."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def payload_len(blob: bytes) -> int:
    """Receive a large argument; return only its length."""
    return len(blob)


def make_payload(size: int) -> bytes:
    """Return a large result of ``size`` bytes."""
    return b"\x01" * size


class Star:
    """Call a function with an argument tuple: ``Star(f)((1, 2))`` is ``f(1, 2)``."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, args: Any) -> Any:
        return self.fn(*args)


def nap(seconds: float) -> float:
    """Sleep: a task of a known duration that leaves the CPU to the pool's own work."""
    time.sleep(seconds)
    return seconds
