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
"""

from __future__ import annotations

import collections
import importlib
import itertools
import logging
import math
import pickle
import queue
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sized
from concurrent import futures
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from poolkit._errors import BrokenProcessPool, map_shut_down_error, remote_exception
from poolkit._map.chunk_future import ChunkFuture
from poolkit._map.chunking import AutoChunks, ChunkSizer, FixedChunks
from poolkit._map.via_submit import fixed_chunksize, submit_map, submit_replaced
from poolkit._options import DEFAULT, Default, check_priority
from poolkit._pickling import serialization as serialization
from poolkit._pool.tasks import TaskState
from poolkit._wire.buffers import HeldBuffers
from poolkit._wire.messages import ChunkOutcome, TaskKind, encode_task

if TYPE_CHECKING:
    from poolkit._map.host import MapHost

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- submit


class _Chunk(ChunkFuture):
    """One chunk in flight: its first item's index, its size, and its outcome.

    The chunk is its own task's future (see ``_chunk_future``): one object per chunk.
    """

    __slots__ = ("count", "start", "task")

    def __init__(self, lock: threading.Lock, start: int, count: int) -> None:
        super().__init__(lock)
        self.start = start
        self.count = count
        #: Its task while the chunk is unresolved: cancel() must take it back from a worker
        #: that holds it prefetched (see TaskState.cancel).
        self.task: Optional[TaskState] = None

    def cancel(self) -> bool:
        """Cancel the chunk unless it started; a prefetched chunk is taken back first."""
        task = self.task
        if task is None:
            return ChunkFuture.cancel(self)
        return task.cancel()

    #: The cancel of a chunk no worker holds (TaskState.cancel ends with it).
    plain_cancel = ChunkFuture.cancel


class _ChunkSubmitter:
    """Submits map chunks; the function is pickled once for the whole map."""

    def __init__(self, executor: MapHost, fn: Callable[..., Any], kind: TaskKind) -> None:
        # A weak reference: an abandoned map iterator must not keep the executor alive.
        self._executor_ref = weakref.ref(executor)
        self._kind = kind
        self._lock = threading.Lock()  # shared by this map's chunks (see ChunkFuture)
        self.fn_name = serialization.callable_name(fn)
        self._fn_blob: Optional[bytes] = None
        self._fn_error: Optional[BaseException] = None
        self.priority = 0  # of every chunk (map's priority=)
        try:
            self._fn_blob = executor._function_blob(fn)
        except (Exception, SystemExit) as exc:
            error = pickle.PicklingError(f"cannot pickle the function {self.fn_name}: {exc}")
            error.__cause__ = exc
            self._fn_error = error

    def __call__(self, start: int, chunk: list[Any], sizer: ChunkSizer) -> list[_Chunk]:
        """Submit one chunk. Empty if the executor no longer exists.

        If an item cannot be pickled, the items before it still go as one chunk, and the
        item gets a failed future of its own, so the error comes at its position.
        """
        executor = self._executor_ref()
        if executor is None:
            return []
        if self._fn_error is not None:
            return [self._failed(start, len(chunk), self._fn_error)]
        try:
            if len(chunk) <= _CHECK_PLAIN_UP_TO and serialization.plain_items(chunk):
                args_blob, held = serialization.dumps(chunk), None  # nothing for out of band
            else:
                args_blob, held = executor._pickle_arguments(chunk)
        except (Exception, SystemExit):
            return self._split_unpicklable(executor, start, chunk, sizer)
        sizer.observe_bytes(len(chunk), len(args_blob) + (0 if held is None else held.size))
        return [self._enqueue(executor, start, len(chunk), args_blob, held)]

    def _enqueue(
        self,
        executor: MapHost,
        start: int,
        count: int,
        args_blob: bytes,
        held: Optional[HeldBuffers] = None,
    ) -> _Chunk:
        assert self._fn_blob is not None
        entry = _Chunk(self._lock, start, count)
        task_id = next(executor._task_ids)
        buffers = 0 if held is None else held.count
        parts = encode_task(task_id, self._kind, self._fn_blob, args_blob, buffers)
        # Per-task time limits are per item: a chunk of n items may run n times as long.
        task = TaskState(task_id, entry, parts, self.fn_name, items=count, held=held)
        task.priority = self.priority
        entry.task = task
        executor._enqueue_chunk(task)
        return entry

    def _failed(self, start: int, count: int, error: BaseException) -> _Chunk:
        """A chunk that fails at once, with ``error``, at its place among the results."""
        entry = _Chunk(self._lock, start, count)
        entry.set_exception(error)
        return entry

    def _split_unpicklable(
        self, executor: MapHost, start: int, chunk: list[Any], sizer: ChunkSizer
    ) -> list[_Chunk]:
        for index, args in enumerate(chunk):
            try:
                serialization.dumps(args)
            except (Exception, SystemExit) as exc:
                error = pickle.PicklingError(
                    f"cannot pickle the arguments of {self.fn_name}() for map item "
                    f"{start + index}: {exc}"
                )
                error.__cause__ = exc
                entries = []
                if index:
                    entries.extend(self(start, chunk[:index], sizer))
                entries.append(self._failed(start + index, len(chunk) - index, error))
                return entries
        # Each item pickles alone but not together (shared state?): fail the chunk.
        error = pickle.PicklingError(f"cannot pickle the arguments of {self.fn_name}()")
        return [self._failed(start, len(chunk), error)]


#: Chunks up to this many items are checked for plain values (see ``plain_items``).
_CHECK_PLAIN_UP_TO = 8


# ---------------------------------------------------------------------------- a map


class MapRun:
    """The state of one map: the input, the chunks in flight, and how they are consumed."""

    def __init__(
        self,
        executor: MapHost,
        fn: Callable[..., Any],
        items: Iterator[Any],
        total: Optional[int],
        sizer: ChunkSizer,
        buffersize: Optional[int],
        ordered: bool,
        end_time: Optional[float],
        star: bool,
    ) -> None:
        kind = TaskKind.CHUNK if star else TaskKind.ITEMS
        self.submit = _ChunkSubmitter(executor, fn, kind)
        self.items: Optional[Iterator[Any]] = items
        self.total = total
        self.sizer = sizer
        self.buffersize = buffersize
        self.ordered = ordered
        self.end_time = end_time
        self.next_index = 0  # index of the next item to read
        self.in_flight: collections.deque[_Chunk] = collections.deque()
        # Unordered: chunks land here as they complete (from the dispatcher thread).
        # Ordered: the chunk the consumer waits for (``awaited``) lands here once done.
        self.done: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()
        self.awaited: Optional[_Chunk] = None
        self.pending: set[_Chunk] = set()  # unordered: submitted, not yet taken from `done`
        self.stop_error: Optional[BaseException] = None  # why the input stopped early
        # fill() runs in the consuming thread, and in a thread that calls shutdown().
        self._lock = threading.RLock()
        self.finish_at_shutdown = False
        executor._register_map(self)

    def finish_input(self) -> None:
        """Submit all the remaining input now, if it has a known length (at shutdown).

        Code written for the stdlib maps over a list inside ``with Executor()`` and reads
        the results after the block: the stdlib submitted everything at the call. A lazy
        map with a finite, sized input keeps that working by submitting the rest before
        the executor closes. An input of unknown length (a generator) may be endless: its
        map stops at shutdown, and reading past that raises.
        """
        with self._lock:
            if self.finish_at_shutdown and self.items is not None and self.total is not None:
                self.buffersize = None
                self.fill()

    def fill(self) -> None:
        """Submit chunks until ``buffersize`` are in flight or the input ends.

        If the executor was shut down (or broke) meanwhile, the input stops here: the
        results already in flight are still yielded, then :attr:`stop_error` is raised.
        """
        try:
            with self._lock:
                while self.items is not None and (
                    self.buffersize is None or self._outstanding() < self.buffersize
                ):
                    if not self._submit_one():
                        return
        except RuntimeError as exc:  # BrokenProcessPool included
            # Raised by the input itself: it too comes after the results in flight.
            self._stop_input(exc)

    def _stop_input(self, error: BaseException) -> None:
        self.items = None
        self.stop_error = error

    def _outstanding(self) -> int:
        return len(self.in_flight) if self.ordered else len(self.pending)

    def _submit_one(self) -> bool:
        assert self.items is not None
        remaining = None if self.total is None else max(0, self.total - self.next_index)
        size = self.sizer.next_size(remaining)
        chunk = list(itertools.islice(self.items, size))
        if not chunk:
            self.items = None
            return False
        start = self.next_index
        self.next_index += len(chunk)
        try:
            entries = self.submit(start, chunk, self.sizer)
        except BrokenProcessPool as exc:  # the pool broke meanwhile
            self._stop_input(exc)
            return False
        except RuntimeError as exc:  # shut down meanwhile: _enqueue_chunk's other refusal
            self._stop_input(map_shut_down_error(exc))
            return False
        if not entries:  # the executor is gone
            self.items = None
            return False
        for entry in entries:
            if self.ordered:
                self.in_flight.append(entry)
            else:
                self.pending.add(entry)
            entry.add_done_callback(self._chunk_done)  # after pending.add: see _chunk_done
        return True

    def _chunk_done(self, chunk: ChunkFuture) -> None:
        """A chunk finished or was cancelled (in the dispatcher thread, mostly)."""
        assert isinstance(chunk, _Chunk)
        if chunk.succeeded():
            # Right away, even if an ordered map has not reached this chunk yet: the next
            # chunk's size uses it.
            outcome: ChunkOutcome = chunk.outcome()[0]
            self.sizer.observe(
                len(outcome.results) + (outcome.error_index is not None), outcome.seconds
            )
        # Unordered, every chunk is queued, and only once it is in `pending` (the callback is
        # added after that): the consumer stops when `pending` is empty.
        if not self.ordered or chunk is self.awaited:
            self.done.put(chunk)

    def next_chunk(self) -> Optional[_Chunk]:
        """The next chunk whose results are due (waits for it), or None at the end."""
        remaining = None if self.end_time is None else self.end_time - time.monotonic()
        if self.ordered:
            if not self.in_flight:
                return None
            entry = self.in_flight[0]
            if not entry.done():
                self._await(entry, remaining)
            self.in_flight.popleft()
        else:
            if not self.pending:
                return None
            entry = self._take_done(remaining)
            self.pending.discard(entry)
        if entry.cancelled():
            raise futures.CancelledError()
        return entry

    def _await(self, entry: _Chunk, remaining: Optional[float]) -> None:
        # Tell the dispatcher which chunk to signal, then wait for the signal. Any chunk in
        # the queue is a wakeup only (a late one of an earlier wait, at most), so loop until
        # this one is done.
        self.awaited = entry
        try:
            deadline = None if remaining is None else time.monotonic() + remaining
            while not entry.done():
                left = None if deadline is None else deadline - time.monotonic()
                self._take_done(left)
        finally:
            self.awaited = None

    def _take_done(self, remaining: Optional[float]) -> _Chunk:
        try:
            if remaining is None:
                return self.done.get()
            return self.done.get(timeout=max(0.0, remaining))
        except queue.Empty:
            raise futures.TimeoutError() from None

    def collect(self, entry: _Chunk) -> tuple[list[Any], Optional[BaseException]]:
        """The results of a finished chunk and the exception to raise after them, if any."""
        value, error = entry.outcome()
        if error is not None:
            if entry.count == 1:
                where = f"map item {entry.start}"
            else:
                last = entry.start + entry.count - 1
                where = f"map items {entry.start} to {last} (a chunk that failed as a whole)"
            _mark(error, entry.start, where)
            return [], error
        outcome: ChunkOutcome = value
        # The caller pops the results from this very list as it yields them, so the future's
        # reference to the outcome does not keep a yielded result alive.
        if outcome.error_index is None:
            return outcome.results, None
        return outcome.results, self._item_error(entry, outcome)

    def _item_error(self, entry: _Chunk, outcome: ChunkOutcome) -> BaseException:
        assert outcome.error_index is not None
        index = entry.start + outcome.error_index
        call = f"{self.submit.fn_name}({outcome.error_args})"
        where = f"map item {index}: {call}"
        tb = outcome.traceback
        if sys.version_info < (3, 11):
            # No notes before 3.11: say it in the worker's traceback, which is printed.
            tb = f"{tb.rstrip()}\n\n(poolkit: raised by {where})\n"
        error = remote_exception(outcome.error, None, tb, f"the exception raised by {call}")
        _mark(error, index, where)
        return error

    def cancel(self) -> None:
        """Cancel every chunk that has not started; stop reading the input."""
        self.items = None
        while self.in_flight:
            self.in_flight.popleft().cancel()
        while self.pending:
            self.pending.pop().cancel()


def _mark(error: BaseException, index: int, where: str) -> None:
    """Record which map item failed: a ``map_index`` attribute, and a note on 3.11+."""
    try:
        error.map_index = index  # type: ignore[attr-defined]
    except Exception:
        pass  # an exception class that refuses attributes: the note and traceback remain
    note = f"(poolkit: raised by {where})"
    add_note = getattr(error, "add_note", None)
    if add_note is not None and note not in getattr(error, "__notes__", ()):
        add_note(note)


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
