"""Tasks for test_late_binding: each one appends ``label pid`` to a log file as it starts."""

from __future__ import annotations

import os
import random
import time


def log_start(path: str, label: str) -> int:
    """Append ``label pid`` to ``path`` (one write: lines never interleave); return the pid."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{label} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return os.getpid()


def log_then_wait(path: str, label: str, ready_fifo: str, release_fifo: str) -> int:
    """Log, tell the test it runs (pid into ``ready_fifo``), then wait for ``release_fifo``."""
    log_start(path, label)
    with open(ready_fifo, "w") as ready:
        ready.write(str(os.getpid()))
    with open(release_fifo) as release:
        release.read()
    return os.getpid()


def log_item(path: str, label: str) -> str:
    """For map: log ``label``, return it."""
    log_start(path, label)
    return label


def log_maybe_die(path: str, label: str, die: bool) -> int:
    """Log, then end the worker at once if ``die`` (a crash, not an exception)."""
    log_start(path, label)
    if die:
        os._exit(3)
    time.sleep(random.random() * 0.002)  # varied durations: some prefetch, some steals
    return os.getpid()


def noop(_: object = None) -> None:
    return None


def read_log(path: str) -> list[tuple[str, int]]:
    """The log's lines as (label, pid), in the order the tasks started."""
    try:
        with open(path) as log:
            return [(label, int(pid)) for label, pid in (line.split() for line in log)]
    except FileNotFoundError:
        return []
