"""``Executor.map`` and ``Executor.starmap``: lazy, bounded, ordered or not, auto-chunked.

::

    input ──► chunker ──► submit (pickle once per chunk) ──► dispatcher ──► workers
     (read lazily)  ▲                                                          │
                    │  refill one chunk per chunk consumed   ChunkOutcome      │
    caller ◄── yield items ◄── collect (order, errors, progress, timing) ◄─────┘

A map keeps at most ``buffersize`` chunks in flight. It reads the input only to make a new
chunk, and it makes a new chunk only when the caller takes the results of an old one, so
memory stays bounded however long the input (an endless generator is fine). Closing the
iterator (``break``, ``close()``, an exception in the caller, garbage collection) cancels
every chunk that has not started.

A worker runs a chunk item by item and stops at the first item that raises; it returns a
:class:`~poolkit._wire.messages.ChunkOutcome` with the results before that item and the error, so
the caller gets those results first and then the exception, marked with the item's index.

Chunk sizes, fixed or ``"auto"``, are decided in :mod:`poolkit._map.chunking`; the worker's
time per chunk comes back in the outcome and feeds the next decision.

Here: the checks, the defaults and the results generator. The parts: ``submit``
(:class:`~poolkit._map.submit.ChunkSubmitter`: pickling and queueing chunks), ``run``
(:class:`~poolkit._map.run.MapRun`: the chunks in flight and their consumption), ``chunking``,
``via_submit`` (for an executor whose ``submit`` a program replaced) and ``host`` (what all
of it uses of the executor).
"""

from __future__ import annotations

import importlib
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from poolkit._map.chunking import AutoChunks, ChunkSizer, FixedChunks
from poolkit._map.run import MapRun
from poolkit._map.via_submit import fixed_chunksize, submit_map, submit_replaced
from poolkit._options import DEFAULT, Default, check_priority

if TYPE_CHECKING:
    from poolkit._map.host import MapHost

#: Default ``buffersize``: chunks in flight per worker (one running, the rest queued so a
#: worker never waits for the caller, and a slow chunk at the head of an ordered map does
#: not idle the others at once).
BUFFER_CHUNKS_PER_WORKER = 4
#: ...and with a small fixed ``chunksize``, at least this many items in flight per worker
#: (``chunksize=1`` on tiny tasks runs 2.5x faster with 128 chunks in flight than with 8).
BUFFER_ITEMS_PER_WORKER = 64


#: What ``map`` accepts as ``chunksize``, ``buffersize`` (both default to ``DEFAULT``) and
#: ``progress``.
ChunksizeArg = Union[int, str, Default]
BuffersizeArg = Union[int, None, Default]
ProgressArg = Union[bool, Callable[[int], Any], None]


def common_length(iterables: tuple[Iterable[Any], ...]) -> Optional[int]:
    """``len(zip(*iterables))`` when every iterable has a length, else None."""
    if not iterables:
        return 0
    lengths = []
    for iterable in iterables:
        if not isinstance(iterable, Sized):
            return None
        try:
            lengths.append(len(iterable))
        except Exception:
            return None
    return min(lengths)


def start_map(
    executor: MapHost,
    fn: Callable[..., Any],
    items: Iterator[Any],
    total: Optional[int],
    *,
    timeout: Optional[float],
    chunksize: ChunksizeArg,
    buffersize: BuffersizeArg,
    ordered: bool,
    progress: ProgressArg,
    star: bool = True,
    priority: int = 0,
) -> Iterator[Any]:
    """Validate, submit the first chunks, and return the results iterator (see map).

    ``items`` are argument tuples (``fn(*item)``), or single arguments (``fn(item)``) if
    ``star`` is False.
    """
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if chunksize is not DEFAULT and chunksize != "auto":
        if not isinstance(chunksize, int) or isinstance(chunksize, bool):
            raise TypeError(f"chunksize must be an int or 'auto', got {chunksize!r}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
    if buffersize is not None and buffersize is not DEFAULT:
        if not isinstance(buffersize, int) or isinstance(buffersize, bool):
            raise TypeError("buffersize must be an integer or None")
        if buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress must be a bool or a callable, got {type(progress).__name__}")
    check_priority(priority)
    make_bar = _tqdm_factory() if progress is True else None
    executor._check_open()
    end_time = None if timeout is None else time.monotonic() + timeout
    if ordered and progress is None and priority == 0 and submit_replaced(executor):
        # The stdlib's map calls self.submit per chunk; a replaced submit expects it (tqdm's
        # process_map advances its bar there): see _submit_map.
        size = fixed_chunksize(chunksize, total, executor.max_workers)
        buffer = None if buffersize is DEFAULT else buffersize
        return submit_map(
            executor, fn, items, end_time=end_time, chunksize=size, buffersize=buffer, star=star
        )

    workers = executor.max_workers
    # With the stdlib's spelling (buffersize given) the map stops at shutdown, as in 3.14;
    # with poolkit's default bound, a sized input is finished at shutdown instead.
    finish_at_shutdown = buffersize is DEFAULT
    if chunksize is DEFAULT:
        # The stdlib spelling (buffersize given) gets the stdlib default; a chunk counts as
        # one task toward max_tasks_per_child, so auto chunks would change what it means.
        max_tasks = executor._max_tasks_per_child
        chunksize = "auto" if buffersize is DEFAULT and max_tasks is None else 1
    if buffersize is DEFAULT:
        buffersize = BUFFER_CHUNKS_PER_WORKER * workers
        if isinstance(chunksize, int):
            # Small fixed chunks: enough of them that round trips overlap.
            buffersize = max(buffersize, math.ceil(BUFFER_ITEMS_PER_WORKER * workers / chunksize))
    sizer: ChunkSizer
    if chunksize == "auto":
        if buffersize is None:
            # Everything is submitted now, before any measurement: the input is read to the
            # end anyway, so size the chunks like multiprocessing.Pool.map does.
            materialized = list(items)
            total = len(materialized)
            items = iter(materialized)
            sizer = FixedChunks(max(1, math.ceil(total / (4 * workers))))
        else:
            sizer = AutoChunks(workers)
    else:
        assert isinstance(chunksize, int)
        sizer = FixedChunks(chunksize)

    run = MapRun(executor, fn, items, total, sizer, buffersize, ordered, end_time, star)
    run.submit.priority = priority
    run.finish_at_shutdown = finish_at_shutdown
    run.fill()
    if run.stop_error is not None:  # shut down or broken during the call
        run.cancel()
        raise run.stop_error
    callback: Optional[Callable[[int], Any]] = None
    if callable(progress) and not isinstance(progress, bool):
        callback = progress
    return _results(run, callback, make_bar)


# ---------------------------------------------------------------------------- results


def _results(
    run: MapRun,
    callback: Optional[Callable[[int], Any]],
    make_bar: Optional[Callable[[Optional[int]], Any]],
) -> Iterator[Any]:
    # A generator of its own (not part of start_map) so that map validates and submits
    # eagerly, at the call, as the stdlib does.
    bar = None
    try:
        if make_bar is not None:
            bar = make_bar(run.total)
            callback = bar.update
        while True:
            entry = run.next_chunk()
            if entry is None:
                if run.stop_error is not None:
                    raise run.stop_error
                return
            values, error = run.collect(entry)
            del entry
            if error is None:
                run.fill()  # keep the workers busy while the caller handles these results
            if callback is not None and values:
                callback(len(values))
            # Pop as we go: no reference to a result is kept once it has been yielded. The
            # popping runs in C (map over list.pop): a Python loop here cost more per item
            # than the whole trip through the worker for tiny tasks.
            values.reverse()
            yield from map(values.pop, itertools.repeat(-1, len(values)))
            if error is not None:
                raise error
    finally:
        run.cancel()
        if bar is not None:
            bar.close()


def _tqdm_factory() -> Callable[[Optional[int]], Any]:
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm  # an optional extra: untyped here
    except ImportError:
        raise ImportError(
            "progress=True needs tqdm: pip install 'poolkit[progress]' (or pass a callable, "
            "which map calls with the number of items done each time results arrive)"
        ) from None

    def make(total: Optional[int]) -> Any:
        return tqdm(total=total, unit="item")

    return make
