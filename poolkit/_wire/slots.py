"""Memory shared by the parent and one worker: which task runs, which tasks to skip, and
which of the tasks it holds it may still start (the claim ring)."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
import time
from multiprocessing import reduction
from typing import Any, Optional

from poolkit._wire.fds import create_memory_file, register_parent_fd, unregister_parent_fd

# Word layout: [running task id, last started task id, skip generation, skip ids...]
_RUNNING = 0
_LAST_STARTED = 1
_SKIP_GENERATION = 2
_SKIP_FIRST = 3
_SKIP_SLOTS = 6
_CLAIM_FIRST = 16
#: Claim words, one per task handed to the worker, reused in turn (see ``RunningSlot``).
#: The dispatcher never lets a worker hold tasks more than this many sends apart.
CLAIM_RING = 2048
_WORDS = _CLAIM_FIRST + CLAIM_RING

# A claim word is ``task_id << 2 | state``: the id makes a word left from an earlier task
# in the same place (revoked, its frame still unread) never match the one read now.
_PENDING = 1  # handed over, not started: the parent may still take it back
_STARTED = 2  # claimed: it runs (or ran) in the worker; never taken back
_REVOKED = 3  # taken back by the parent: the worker drops it unread
#: How long the parent waits for the worker's claim lock before it gives up (the worker
#: holds it for a few bytecodes; only a worker frozen with SIGSTOP holds it longer).
_LOCK_PATIENCE = 1.0


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

    - the claim ring: one word per task handed to the worker, which decides whether the
      worker may still start it (see below).

    **Claims: why a task can be taken back but never runs twice.** A task the dispatcher
    sends to a worker that is busy (prefetch) stays *pending*: the worker starts it only
    after it changed the task's word from pending to started, and the parent takes it
    back (to run it elsewhere, to cancel it, to let a higher priority go first) only after
    it changed the same word from pending to revoked. Exactly one of the two changes can
    happen, because each is a read-compare-write made while holding a lock that the
    other side must hold too: a POSIX record lock (``fcntl``) on the slot's file, taken by
    the worker in its process and by the parent in its own. A plain protocol ("the worker
    writes *started*, then checks a *revoked* flag; the parent writes the flag, then checks
    *started*") is not enough: x86 lets a store wait in the store buffer while a later load
    goes ahead, so each side can read the other's old value and both go on (the worker
    runs the task and the parent sends it elsewhere). The lock is taken by a system call,
    which orders every access inside it after the other side's release; the kernel drops
    the lock of a process that dies holding it, so a worker killed at any point cannot
    block the parent. Record locks belong to a process, not a thread: the parent's threads
    (the dispatcher stealing a task, a caller cancelling one) serialize on a
    ``threading.Lock`` first.

    A task sent to an idle worker is marked started by the parent before it is sent (the
    worker has nothing else to run first), so the worker starts it with a plain read; a
    word is written pending or started only before its task's frame is written to the
    pipe, so the worker, which reads the frame first, always sees it.

    A private memfd per worker, not the ``multiprocessing`` heap, so nothing outlives the
    worker. Picklable only while a worker is being started (the descriptor travels like a
    Connection's).
    """

    def __init__(self, fd: Optional[int] = None) -> None:
        owner = fd is None
        if fd is None:
            fd = create_memory_file("poolkit-slot", 8 * _WORDS)
        self._map = mmap.mmap(fd, 8 * _WORDS)
        self._view = memoryview(self._map).cast("Q")
        self._seen_generation = 0
        self._seen_skips: frozenset[int] = frozenset()
        #: The parent's threads take turns at the claim words (record locks are per process).
        self._parent_lock = threading.Lock()
        #: (Parent) how many tasks were handed to the worker: the next one's place in the ring.
        self.sent = 0
        if owner:
            self.fd: Optional[int] = fd
            register_parent_fd(fd)  # a forked worker keeps the mapping, not the descriptor
            # The worker's own descriptor for the claim lock, not registered as the parent's:
            # a worker forked from this process keeps it. Closed once the worker is started
            # (release_worker_copy), so no later fork inherits it.
            self._lock_fd: Optional[int] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
        else:
            # A worker's copy (spawn, forkserver, fork template): kept open, the claim lock
            # is taken on it.
            self._lock_fd = fd
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
        return int(self._view[_LAST_STARTED])

    @started.setter
    def started(self, task_id: int) -> None:
        self._view[_LAST_STARTED] = task_id

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
            self._seen_skips = frozenset(
                self._view[_SKIP_FIRST : _SKIP_FIRST + _SKIP_SLOTS].tolist()
            )
        return task_id in self._seen_skips

    # ------------------------------------------------------------------ claims

    def post(self, seq: int, task_id: int, started: bool) -> None:
        """(Parent) Write the claim word of the task sent as number ``seq``, before sending it.

        ``started``: the worker is idle and runs it next, so it is claimed for the worker.
        The place was last used ``CLAIM_RING`` sends ago by a task that is answered or
        revoked (the dispatcher's guard), so a plain store races with nothing that matters:
        a worker reading that place for the old task finds another id and drops it.
        """
        self._view[_CLAIM_FIRST + seq % CLAIM_RING] = task_id << 2 | (
            _STARTED if started else _PENDING
        )

    def is_started(self, seq: int, task_id: int) -> bool:
        """(Parent) The worker claimed the task (a started word never changes back)."""
        return int(self._view[_CLAIM_FIRST + seq % CLAIM_RING]) == task_id << 2 | _STARTED

    def revoke(self, seq: int, task_id: int) -> bool:
        """(Parent) Take the task back unless the worker started it; True if taken back.

        False also when the worker's lock could not be had in time (the worker is frozen):
        the task is then left to the worker, which is always safe.
        """
        return self._parent_swap(seq, task_id, _REVOKED) == _REVOKED

    def claim_for_worker(self, seq: int, task_id: int) -> bool:
        """(Parent) Mark a pending task started on the worker's behalf: it is the next one
        the (now idle) worker runs. True if it is started, by either side."""
        return self._parent_swap(seq, task_id, _STARTED) == _STARTED

    def claim(self, seq: int, task_id: int) -> bool:
        """(Worker) Claim the task received as number ``seq``: True if it may run now.

        False means the parent took it back: the worker drops it without a word.
        """
        index = _CLAIM_FIRST + seq % CLAIM_RING
        view = self._view
        word = view[index]
        if word == task_id << 2 | _STARTED:
            return True  # claimed for us before it was sent
        if word != task_id << 2 | _PENDING:
            return False
        fd = self._lock_fd
        assert fd is not None
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
        try:
            word = view[index]
            if word == task_id << 2 | _PENDING:
                view[index] = task_id << 2 | _STARTED
                return True
            return bool(word == task_id << 2 | _STARTED)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)

    def _parent_swap(self, seq: int, task_id: int, new_state: int) -> int:
        """Under both locks: a pending word becomes ``new_state``; the state it ends in."""
        index = _CLAIM_FIRST + seq % CLAIM_RING
        view = self._view
        with self._parent_lock:
            fd = self.fd
            if fd is None or not self._lock_parent(fd):
                return 0
            try:
                word = view[index]
                if word >> 2 != task_id:
                    return 0
                if word & 3 == _PENDING:
                    view[index] = task_id << 2 | new_state
                    return new_state
                return int(word & 3)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)

    def _lock_parent(self, fd: int) -> bool:
        # Never blocking in the kernel: the dispatcher must not hang on a frozen worker.
        deadline = time.monotonic() + _LOCK_PATIENCE
        delay = 0.00002
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    return False
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)  # the worker holds it for microseconds; no event to wait on
            delay = min(delay * 2, 0.002)

    def release_worker_copy(self) -> None:
        """(Parent) Close the descriptor kept for a worker forked from here; it is started."""
        if self.fd is not None and self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __reduce__(self) -> Any:
        if self.fd is None:
            raise TypeError("a RunningSlot travels only from the parent to a starting worker")
        return _rebuild_slot, (reduction.DupFd(self.fd),)

    def close(self) -> None:
        """Release the mapping and the descriptors."""
        self._view.release()
        self._map.close()
        self.release_worker_copy()
        if self.fd is not None:
            unregister_parent_fd(self.fd)
            os.close(self.fd)
            self.fd = None
        elif self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _rebuild_slot(dup: Any) -> RunningSlot:
    return RunningSlot(dup.detach())
