"""Resolving a future without running its done-callbacks in the thread that resolves it.

The dispatcher thread resolves every future of its pool. A done-callback is user code: run
there, one that raises ``SystemExit`` would end the dispatcher (``Future`` only catches
``Exception``), and one that waits for another future of the same pool would wait for the
very thread it blocks. So the resolving thread sets the future's state itself (``result()``,
``wait()`` and ``as_completed()`` wake at once, as before) and hands the callbacks to
:data:`callbacks`, a small set of threads that exists only once a callback has been deferred.

The callbacks are taken off the future under its condition, in the same critical section
that sets its state, so a callback added concurrently either is taken (and deferred) or sees
the future done and runs in the adding thread, as ``add_done_callback`` documents. A future
without callbacks (the common ``submit(...).result()``) costs one lock round more than a
plain ``set_result``.

That needs two private attributes of the stdlib ``Future``: ``_condition`` and
``_done_callbacks`` (CPython 3.9 to 3.13). :data:`DEFERRED` says whether this Python has
them; where it does not, callbacks run in the resolving thread, guarded so that whatever
they raise is logged and goes no further. Re-check both names on a new Python version
(``tests/test_containment.py`` runs the fallback too).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: A callback that has run this long is taken as stuck: further callbacks get a new thread.
_STUCK_SECONDS = 0.05
#: At most this many callback threads at once.
_MAX_THREADS = 16
#: A callback thread idle this long ends.
_IDLE_SECONDS = 2.0


def _has_private_layout() -> bool:
    future: Future[Any] = Future()
    return hasattr(future, "_condition") and isinstance(
        getattr(future, "_done_callbacks", None), list
    )


#: True where callbacks can be taken off a future as it is resolved (see the module doc).
DEFERRED = _has_private_layout()


def set_result(future: Future[Any], value: Any) -> None:
    """``future.set_result(value)``, its callbacks run by :data:`callbacks`."""
    settle_with(future, lambda f: f.set_result(value))


def settle_with(future: Future[Any], action: Callable[[Future[Any]], None]) -> None:
    """Run ``action(future)`` (which resolves it); its callbacks run by :data:`callbacks`.

    Raises what ``action`` raises (``InvalidStateError`` for a future resolved already).
    """
    if not DEFERRED:
        # Future runs the callbacks itself and logs what they raise, Exception only.
        try:
            action(future)
        except Exception:  # InvalidStateError (resolved already): the caller's to handle
            raise
        except BaseException:  # a callback's SystemExit: logged, it ends no poolkit thread
            logger.exception("a done-callback of a poolkit future raised")
        return
    with future._condition:
        taken = future._done_callbacks  # type: ignore[attr-defined]
        if taken:
            future._done_callbacks = []  # type: ignore[attr-defined]
        try:
            action(future)  # the condition is re-entrant; no callback is left to run here
        except BaseException:
            if taken:
                future._done_callbacks = taken  # type: ignore[attr-defined]
            raise
    if taken:
        callbacks.defer(future, taken)  # the module's current one: replaced after a fork


class CallbackThreads:
    """Runs deferred done-callbacks, in order per future, on threads of their own.

    One thread is enough while callbacks return promptly. When every thread has been inside
    one callback for longer than ``_STUCK_SECONDS`` (it waits for something), the next
    callback gets a new thread, so a callback that waits for another future's callback never
    waits forever.
    """

    def __init__(self) -> None:
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # callback threads wait here for work
        self._drained = threading.Condition(lock)  # drain() waits here
        self._queue: collections.deque[tuple[Any, list[Callable[[Any], object]]]] = (
            collections.deque()
        )
        #: thread -> when its current callback started (None: waiting for work)
        self._busy_since: dict[threading.Thread, float | None] = {}
        self._unfinished = 0  # queued or running items

    def defer(self, future: Any, taken: list[Callable[[Any], object]]) -> None:
        """Run ``taken`` (callbacks of the now resolved ``future``) on a callback thread."""
        with self._work:
            self._queue.append((future, taken))
            self._unfinished += 1
            if self._needs_thread():
                thread = threading.Thread(target=self._serve, name="poolkit-callbacks", daemon=True)
                self._busy_since[thread] = None
                thread.start()
            else:
                self._work.notify()

    def _needs_thread(self) -> bool:
        if len(self._busy_since) >= _MAX_THREADS:
            return False
        now = time.monotonic()
        for since in self._busy_since.values():
            if since is None or now - since < _STUCK_SECONDS:
                return False  # one is free, or will be soon
        return True

    def in_callback_thread(self) -> bool:
        """True in a thread that runs deferred callbacks."""
        return threading.current_thread() in self._busy_since

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every callback deferred so far has run; False if ``timeout`` ran out.

        Returns at once in a callback thread: a callback that shuts its executor down must
        not wait for itself.
        """
        if self.in_callback_thread():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._drained:
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    def _serve(self) -> None:
        me = threading.current_thread()
        work = self._work
        while True:
            with work:
                while not self._queue:
                    # Every idle thread ends, the last one too: a fork pool started later
                    # should find a parent with no thread of ours in it.
                    if not work.wait(_IDLE_SECONDS) and not self._queue:
                        del self._busy_since[me]
                        return
                future, taken = self._queue.popleft()
                self._busy_since[me] = time.monotonic()
            for callback in taken:
                try:
                    callback(future)
                except BaseException:  # SystemExit too: it ends no thread of poolkit's
                    logger.exception("exception calling callback for %r", future)
            with work:
                self._busy_since[me] = None
                self._unfinished -= 1
                if not self._unfinished:
                    self._drained.notify_all()


#: The process's callback threads.
callbacks = CallbackThreads()


def _forget_threads_after_fork() -> None:
    # A forked child has none of the parent's callback threads: start afresh, or deferred
    # callbacks would wait for a thread that does not exist.
    global callbacks
    callbacks = CallbackThreads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_after_fork)
