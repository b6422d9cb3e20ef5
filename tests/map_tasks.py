"""Task functions for tests/test_map.py: importable by workers under every start method."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from tasks import signal_and_wait


def record(path: str, value: int) -> int:
    """Append ``value`` to the file at ``path`` (one line per call), then take a moment."""
    with open(path, "a") as log:
        log.write(f"{value}\n")
    time.sleep(0.02)
    return value


def wait_at_zero(value: int, ready: str, release: str) -> int:
    """Item 0 blocks until the test opens the gate; every other item takes 10 ms.

    Not less: the dispatcher hands a worker more tasks behind the one it runs when tasks
    are measured shorter than 5 ms, and item 0 must not get company.
    """
    if value == 0:
        signal_and_wait(ready, release, "released")
    else:
        time.sleep(0.01)
    return value


def fail_at(value: int, bad: int) -> int:
    if value == bad:
        raise KeyError(f"item {value} is bad")
    return value


def unpicklable_result_at(value: int, bad: int) -> Any:
    if value == bad:
        return threading.Lock()
    return value


def crash_at(value: int, bad: int) -> int:
    if value == bad:
        os._exit(3)
    return value


def slow_square(value: int) -> int:
    time.sleep(0.02)
    return value * value
