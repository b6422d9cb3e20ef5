"""``map`` through ``submit``, for executors whose ``submit`` someone replaced.

The standard library builds ``Executor.map`` on ``self.submit``: one call per chunk.
Programs rely on it. ``tqdm.contrib.concurrent.process_map`` assigns its own ``submit`` to
the executor, which adds a done-callback advancing the bar, and then calls ``ex.map``; a
subclass may override ``submit`` to log or count. poolkit's own ``map`` sends chunks
straight to the dispatcher, so such a ``submit`` was never called: tqdm's bar stayed at
0/2000 on poolkit while it reached 2000/2000 on the stdlib.

The bar also needs each result to come after its future's done-callbacks ran. The stdlib's
manager thread runs them right after it resolves the future; poolkit runs them on a callback
thread (see ``_completion``), so the caller could take the last result and close the bar
while updates were still queued (the bar then ended at 1568/2000). Here each result waits
for a marker callback added after the program's own.

So when ``submit`` is not poolkit's (an instance attribute, or a method a class outside
poolkit defines), a ``map`` with the stdlib's keywords runs as the stdlib's does: every
chunk goes through ``self.submit``, the whole input is submitted at the call (or at most
``buffersize`` chunks, as in Python 3.14), results come in order, and closing the iterator
cancels the chunks not started.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from poolkit._map.host import MapHost


#: A submitted chunk's future, and an event set once its done-callbacks have run.
_Tracked = tuple[Future[Any], threading.Event]


def submit_replaced(executor: MapHost) -> bool:
    """True if ``executor.submit`` is not one of poolkit's own methods."""
    if "submit" in vars(executor):
        return True
    submit = getattr(type(executor), "submit", None)
    return not str(getattr(submit, "__module__", "")).startswith("poolkit.")


def run_chunk(fn: Callable[..., Any], chunk: list[Any], star: bool) -> list[Any]:
    """Run a chunk of items in a worker (module-level, so it pickles by reference)."""
    if star:
        return [fn(*args) for args in chunk]
    return [fn(item) for item in chunk]


def fixed_chunksize(chunksize: Any, total: Optional[int], workers: int) -> int:
    """An int chunk size for ``chunksize`` (an int, ``"auto"`` or the default)."""
    if isinstance(chunksize, int):
        return chunksize
    if chunksize == "auto" and total:
        return max(1, math.ceil(total / (4 * workers)))  # multiprocessing.Pool.map's size
    return 1  # the stdlib default


def submit_map(
    executor: MapHost,
    fn: Callable[..., Any],
    items: Iterator[Any],
    *,
    end_time: Optional[float],
    chunksize: int,
    buffersize: Optional[int],
    star: bool,
) -> Iterator[Any]:
    """Submit the chunks now, through ``executor.submit``; return the results iterator."""
    if chunksize == 1:

        def submit_next() -> Optional[Future[Any]]:
            for item in items:
                return executor.submit(fn, *item) if star else executor.submit(fn, item)
            return None

    else:

        def submit_next() -> Optional[Future[Any]]:
            chunk = list(islice(items, chunksize))
            return executor.submit(run_chunk, fn, chunk, star) if chunk else None

    def submit_tracked() -> Optional[_Tracked]:
        future = submit_next()
        if future is None:
            return None
        callbacks_ran = threading.Event()
        # Added after the program's callbacks, so it runs after them (they run in order).
        future.add_done_callback(lambda _: callbacks_ran.set())
        return future, callbacks_ran

    in_flight: deque[_Tracked] = deque()
    while buffersize is None or len(in_flight) < buffersize:
        tracked = submit_tracked()
        if tracked is None:
            break
        in_flight.append(tracked)
    return _results(in_flight, submit_tracked, end_time, chunked=chunksize != 1)


def _results(
    in_flight: deque[_Tracked],
    submit_next: Callable[[], Optional[_Tracked]],
    end_time: Optional[float],
    *,
    chunked: bool,
) -> Iterator[Any]:
    try:
        while in_flight:
            future, callbacks_ran = in_flight.popleft()
            remaining = None if end_time is None else max(0.0, end_time - time.monotonic())
            result = future.result(remaining)
            del future  # hold no finished future (and its result) while the caller works
            remaining = None if end_time is None else max(0.0, end_time - time.monotonic())
            callbacks_ran.wait(remaining)
            refill = submit_next()
            if refill is not None:
                in_flight.append(refill)
            if chunked:
                yield from result
            else:
                yield result
            del result
    finally:
        for future, _ in in_flight:
            future.cancel()
