"""Memory shared by the parent and one worker: which task runs, which tasks to skip."""

from __future__ import annotations

import mmap
import os
from multiprocessing import reduction
from typing import Any, Optional

from ._transport import register_parent_fd, unregister_parent_fd

# Word layout: [running task id, last started task id, skip generation, skip ids...]
_RUNNING = 0
_STARTED = 1
_SKIP_GENERATION = 2
_SKIP_FIRST = 3
_SKIP_SLOTS = 6
_WORDS = _SKIP_FIRST + _SKIP_SLOTS


class RunningSlot:
    """A few words of memory shared by the parent and one worker.

    - ``value``: the id of the task the worker runs. The worker writes it before it runs a
      task and 0 after it replied; the parent reads it when the worker dies (which task to
      fail) and while the worker is frozen (is the task to stop really the one running?).
    - ``started``: the id of the last task the worker took, kept after its reply. A worker
      that ends with ``value`` at 0 while the task in ``started`` is still unanswered lost
      that task's answer (its task closed or replaced the worker's pipes): the task is
      charged with the death instead of being sent to another worker.
    - the skip list: ids of tasks the worker already holds but must not run (stopped before
      they started). The worker checks it right after writing ``value`` and before running,
      so a task that is not running when the parent looks can never start afterwards.

    A private memfd per worker, not the ``multiprocessing`` heap, so nothing outlives the
    worker. Picklable only while a worker is being started (the descriptor travels like a
    Connection's).
    """

    def __init__(self, fd: Optional[int] = None) -> None:
        owner = fd is None
        if fd is None:
            fd = _anonymous_file(8 * _WORDS)
        self._map = mmap.mmap(fd, 8 * _WORDS)
        self._view = memoryview(self._map).cast("Q")
        self._seen_generation = 0
        self._seen_skips: frozenset[int] = frozenset()
        if owner:
            self.fd: Optional[int] = fd
            register_parent_fd(fd)  # a forked worker keeps the mapping, not the descriptor
        else:
            os.close(fd)  # the mapping stays valid without it
            self.fd = None

    @property
    def value(self) -> int:
        """Id of the running task, 0 when idle."""
        return int(self._view[_RUNNING])

    @value.setter
    def value(self, task_id: int) -> None:
        self._view[_RUNNING] = task_id

    @property
    def started(self) -> int:
        """Id of the last task the worker took (0 before the first)."""
        return int(self._view[_STARTED])

    @started.setter
    def started(self, task_id: int) -> None:
        self._view[_STARTED] = task_id

    def add_skip(self, task_id: int) -> None:
        """(Parent) Ask the worker not to run ``task_id`` if it has not started it."""
        generation = int(self._view[_SKIP_GENERATION])
        self._view[_SKIP_FIRST + generation % _SKIP_SLOTS] = task_id
        self._view[_SKIP_GENERATION] = generation + 1

    def should_skip(self, task_id: int) -> bool:
        """(Worker) True if the parent asked not to run ``task_id``."""
        generation = self._view[_SKIP_GENERATION]
        if generation != self._seen_generation:  # one read per task in the common case
            self._seen_generation = generation
            self._seen_skips = frozenset(self._view[_SKIP_FIRST:_WORDS].tolist())
        return task_id in self._seen_skips

    def __reduce__(self) -> Any:
        if self.fd is None:
            raise TypeError("a RunningSlot travels only from the parent to a starting worker")
        return _rebuild_slot, (reduction.DupFd(self.fd),)

    def close(self) -> None:
        """Release the mapping and the descriptor."""
        self._view.release()
        self._map.close()
        if self.fd is not None:
            unregister_parent_fd(self.fd)
            os.close(self.fd)
            self.fd = None


def _rebuild_slot(dup: Any) -> RunningSlot:
    return RunningSlot(dup.detach())


def _anonymous_file(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("poolkit-slot", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux
        import tempfile

        with tempfile.TemporaryFile() as tmp:
            fd = os.dup(tmp.fileno())
    os.ftruncate(fd, size)
    return fd
