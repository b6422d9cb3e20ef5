"""Stopping one running task without ever touching the worker's next one.

A worker runs its tasks back to back, so "kill the worker if it is still running task 7"
is a race: between the parent's look and its kill the worker may finish task 7 and start
task 8. poolkit closes the race in three steps:

1. put task 7 on the worker's skip list (shared memory): if the worker has not written 7 into
   its running slot yet, it will see the skip right after it does, and never run the task;
2. freeze the worker with SIGSTOP and wait until the kernel reports it stopped, so nothing
   in it can change the slot any more;
3. read the slot: 7 means task 7 is running (or about to see its skip): kill the worker's
   whole process group. Anything else means task 7 is not running and cannot start:
   let the worker go on with SIGCONT.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

from ._workers import WorkerHandle

#: How long to wait for a frozen worker to be reported stopped before deciding anyway.
_FREEZE_WAIT_SECONDS = 1.0
# A process in these states runs no user code: its memory cannot change under us.
_STILL_STATES = frozenset("TtDZX")


def kill_group(pid: int) -> None:
    """SIGKILL a worker and every process its tasks started (its process group)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_if_running(worker: WorkerHandle, task_id: int, still_running: Callable[[], bool]) -> int:
    """Kill ``worker`` if, and only if, it is running ``task_id``.

    ``still_running`` is asked while the worker is frozen with ``task_id`` in its slot: it
    may have finished the task and be writing its answer (the slot is cleared after the
    write); False spares the worker.

    Returns the id the worker was running when it was frozen (0: between tasks); equal to
    ``task_id`` means it was killed. Otherwise the task is not running and, being on the
    skip list, never will.
    """
    worker.running.add_skip(task_id)
    pid = worker.pid
    worker.signal(signal.SIGSTOP)
    try:
        _wait_still(pid)
        running = worker.running.value
        if running == task_id:
            if not still_running():
                return -1  # finished while we looked: not killed
            kill_group(pid)
        return running
    finally:
        worker.signal(signal.SIGCONT)  # harmless on a killed process


def _wait_still(pid: int) -> None:
    deadline = time.monotonic() + _FREEZE_WAIT_SECONDS
    delay = 0.00005
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone
        if state in _STILL_STATES:
            return
        time.sleep(delay)  # the stop lands within microseconds; no event exists for it
        delay = min(delay * 2, 0.005)
