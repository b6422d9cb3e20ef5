"""The future of one map chunk: what the dispatcher needs of a future, and nothing more.

A map makes one task per chunk, so with ``chunksize=1`` one per item. A stdlib ``Future``
per chunk builds a ``Condition`` (an ``RLock``, five bound methods, a deque) that nobody
waits on, since the map waits on its own queue of finished chunks; with the cyclic garbage
collector those eleven objects were a sixth of the consuming thread's time on tiny items.
A :class:`ChunkFuture` is a few slots; the chunks of one map share one lock, and each tells
its map once it is done (finished or cancelled).

The states and return values follow ``concurrent.futures.Future``, which the dispatcher was
written against: pending, then running or cancelled, then finished. Users never see these
objects: ``map`` hands out results, not futures.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

_PENDING = 0
_RUNNING = 1
_CANCELLED = 2
_FINISHED = 3


class InvalidState(RuntimeError):
    """A chunk was resolved twice (the dispatcher logs and ignores it, as for a Future)."""


class ChunkFuture:
    """The outcome of one map chunk.

    ``lock`` is shared by all the chunks of one map: a state change is a few assignments,
    too short for a lock per chunk to save any waiting.
    """

    __slots__ = ("_error", "_lock", "_on_done", "_state", "_value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._on_done: tuple[Callable[[ChunkFuture], object], ...] = ()
        self._state = _PENDING
        self._value: Any = None
        self._error: Optional[BaseException] = None

    # -- the dispatcher's side (any thread)

    def set_running_or_notify_cancel(self) -> bool:
        """Mark it running; False if it was cancelled first (then it must not run)."""
        with self._lock:
            if self._state == _PENDING:
                self._state = _RUNNING
                return True
            if self._state == _CANCELLED:
                return False
        raise InvalidState("the chunk already ran")

    def cancel(self) -> bool:
        """Cancel it unless it runs or ran; True if it is (now) cancelled."""
        with self._lock:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
        self._call_back()
        return True

    def set_result(self, result: Any) -> None:
        """Finish it with ``result``."""
        self._finish(result, None)

    def set_exception(self, exception: Optional[BaseException]) -> None:
        """Finish it with ``exception``: the chunk failed as a whole."""
        self._finish(None, exception)

    def _finish(self, value: Any, error: Optional[BaseException]) -> None:
        with self._lock:
            if self._state == _CANCELLED or self._state == _FINISHED:
                raise InvalidState("the chunk is already done")
            self._value = value
            self._error = error
            self._state = _FINISHED
        self._call_back()

    def _call_back(self) -> None:
        # Done now, so nobody adds to the tuple any more; read it outside the lock.
        for callback in self._on_done:
            callback(self)

    # -- the map's side

    def add_done_callback(self, callback: Callable[[ChunkFuture], object]) -> None:
        """Call ``callback(self)`` once it is done: now if it is, else in the thread that
        finishes or cancels it (outside the lock)."""
        with self._lock:
            if self._state < _CANCELLED:
                self._on_done = (*self._on_done, callback)
                return
        callback(self)

    def done(self) -> bool:
        """Finished or cancelled."""
        return self._state >= _CANCELLED

    def cancelled(self) -> bool:
        """Cancelled before it ran."""
        return self._state == _CANCELLED

    def outcome(self) -> tuple[Any, Optional[BaseException]]:
        """``(value, None)`` or ``(None, error)`` of a finished chunk."""
        assert self._state == _FINISHED
        return self._value, self._error

    def succeeded(self) -> bool:
        """Finished with a value (not cancelled, not failed as a whole)."""
        return self._state == _FINISHED and self._error is None
