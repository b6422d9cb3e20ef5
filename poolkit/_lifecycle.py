"""What outlives one executor: the interpreter-exit hook and the pools it must stop.

Both executors (the local pool and the dask backend) register their running part here (a
local executor's dispatcher, a dask executor's session) with how to stop it and how to wait
for it. At interpreter exit one hook, run before the interpreter joins its non-daemon
threads (as ``concurrent.futures.process`` does), refuses new tasks, asks every open pool
to finish its queued work (or, after an unhandled Ctrl-C, to stop now) and waits for them.

The checks and words both executors share live here too: the ``max_workers`` argument, its
default, and the state a ``repr`` shows.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import Any, Callable, Optional, TypeVar

from poolkit._pool.tasks import abandon_futures

logger = logging.getLogger(__name__)

P = TypeVar("P")

#: Set by the exit hook: no executor accepts a task any more.
_interpreter_exiting = False

#: Every pool still running -> (how to stop it, given "interrupted"; how to wait for it).
#: Held weakly: a pool that ends and is dropped leaves by itself.
_live: weakref.WeakKeyDictionary[Any, tuple[Callable[[Any, bool], None], Callable[[Any], None]]]
_live = weakref.WeakKeyDictionary()
_live_lock = threading.Lock()


def interpreter_exiting() -> bool:
    """True once the interpreter-exit hook ran: new tasks are refused."""
    return _interpreter_exiting


def track(pool: P, stop: Callable[[P, bool], None], wait: Callable[[P], None]) -> None:
    """Stop ``pool`` at interpreter exit with ``stop(pool, interrupted)``, then ``wait(pool)``.

    ``interrupted`` is True when the interpreter exits because of an unhandled Ctrl-C: the
    pool should stop now instead of finishing its queue. ``stop`` and ``wait`` must not
    hold a reference to ``pool`` (it is tracked weakly): pass plain functions.
    """
    with _live_lock:
        _live[pool] = (stop, wait)


def untrack(pool: object) -> None:
    """Forget ``pool``: it has ended (harmless if it was never tracked)."""
    with _live_lock:
        _live.pop(pool, None)


def _at_interpreter_exit() -> None:
    # Runs before the interpreter joins non-daemon threads (see install_exit_hook): every
    # pool still open finishes its queued work, then its workers stop.
    global _interpreter_exiting
    _interpreter_exiting = True
    with _live_lock:
        pools = list(_live.items())
    # Exiting because of an unhandled Ctrl-C: stop now instead of finishing the queue.
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    if interrupted:
        abandon_futures()
    # An exception escaping this hook would also skip the interpreter's joining of threads:
    # one pool that fails to stop must not leave the others (and their workers) running.
    for pool, (stop, _) in pools:
        try:
            stop(pool, interrupted)
        except Exception:
            logger.exception("stopping %r at interpreter exit failed", pool)
    for pool, (_, wait) in pools:
        try:
            wait(pool)
        except Exception:
            logger.exception("waiting for %r at interpreter exit failed", pool)


def install_exit_hook() -> bool:
    """Register the exit hook; True if it runs before non-daemon threads are joined.

    ``threading._register_atexit`` (CPython 3.9+, private) runs a function at the start of
    interpreter shutdown, before the non-daemon threads are joined; the stdlib's process
    pool uses it for the same reason. On a new CPython, re-check that it still exists and
    still runs before ``threading._shutdown`` joins the threads. Without it, ``atexit`` is
    the fallback, but ``atexit`` runs only after those joins: the pools' threads must then
    be daemon threads (see :data:`POOL_THREADS_ARE_DAEMON`), or an executor left open would
    keep the interpreter waiting forever for a thread that waits for a stop request.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_at_interpreter_exit)
        return True
    atexit.register(_at_interpreter_exit)
    return False


#: True when the exit hook runs only after non-daemon threads are joined (the ``atexit``
#: fallback): the threads a pool starts, which the hook stops, must be daemon threads then.
POOL_THREADS_ARE_DAEMON = not install_exit_hook()


# --------------------------------------------------------------- shared by both executors


def default_workers() -> int:
    """The number of CPUs this process may use."""
    count: Optional[int] = getattr(os, "process_cpu_count", lambda: None)()
    if count is None and hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    return count or os.cpu_count() or 1


def check_max_workers(max_workers: Optional[int]) -> Optional[int]:
    """Validate ``max_workers``: None, or a positive int (a bool is not one).

    Raises:
        TypeError: not an int.
        ValueError: not positive.
    """
    if max_workers is None:
        return None
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an int, got {type(max_workers).__name__}")
    if max_workers <= 0:
        raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
    return max_workers


def state_name(shut_down: bool, broken: Optional[BaseException]) -> str:
    """How an executor's ``repr`` describes it: ``"broken"``, ``"shut down"`` or ``"running"``."""
    if broken is not None:
        return "broken"
    return "shut down" if shut_down else "running"
