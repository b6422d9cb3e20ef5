"""One map in progress: its input, its chunks in flight, and how they are consumed.

A :class:`MapRun` reads the input only to make a new chunk, and makes one only when the
consumer takes the results of an old one (see ``poolkit._map.driver``). Ordered, the
consumer waits for the chunk at the head; unordered, for whichever finishes first. A chunk
that failed, or whose item raised, gives its results first and then its exception, marked
with the item's index.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any, Callable, Optional

from poolkit import _error_messages as messages
from poolkit import _errors as errors
from poolkit._map.chunk_future import ChunkFuture
from poolkit._map.chunking import ChunkSizer
from poolkit._map.submit import Chunk, ChunkSubmitter
from poolkit._wire.messages import ChunkOutcome, TaskKind

if TYPE_CHECKING:
    from poolkit._map.host import MapHost


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
        self.submit = ChunkSubmitter(executor, fn, kind)
        self.items: Optional[Iterator[Any]] = items
        self.total = total
        self.sizer = sizer
        self.buffersize = buffersize
        self.ordered = ordered
        self.end_time = end_time
        self.next_index = 0  # index of the next item to read
        self.in_flight: collections.deque[Chunk] = collections.deque()
        # Unordered: chunks land here as they complete (from the dispatcher thread).
        # Ordered: the chunk the consumer waits for (``awaited``) lands here once done.
        self.done: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self.awaited: Optional[Chunk] = None
        self.pending: set[Chunk] = set()  # unordered: submitted, not yet taken from `done`
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
        except errors.BrokenProcessPool as exc:  # the pool broke meanwhile
            self._stop_input(exc)
            return False
        except RuntimeError as exc:  # shut down meanwhile: _enqueue_chunk's other refusal
            self._stop_input(messages.map_shut_down_error(exc))
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
        assert isinstance(chunk, Chunk)
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

    def next_chunk(self) -> Optional[Chunk]:
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

    def _await(self, entry: Chunk, remaining: Optional[float]) -> None:
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

    def _take_done(self, remaining: Optional[float]) -> Chunk:
        try:
            if remaining is None:
                return self.done.get()
            return self.done.get(timeout=max(0.0, remaining))
        except queue.Empty:
            raise futures.TimeoutError() from None

    def collect(self, entry: Chunk) -> tuple[list[Any], Optional[BaseException]]:
        """The results of a finished chunk and the exception to raise after them, if any."""
        value, error = entry.outcome()
        if error is not None:
            messages.mark_map_error(
                error, entry.start, messages.chunk_place(entry.start, entry.count)
            )
            return [], error
        outcome: ChunkOutcome = value
        # The caller pops the results from this very list as it yields them, so the future's
        # reference to the outcome does not keep a yielded result alive.
        if outcome.error_index is None:
            return outcome.results, None
        return outcome.results, self._item_error(entry, outcome)

    def _item_error(self, entry: Chunk, outcome: ChunkOutcome) -> BaseException:
        assert outcome.error_index is not None
        call = f"{self.submit.fn_name}({outcome.error_args})"
        index = entry.start + outcome.error_index
        return messages.map_item_error(outcome.error, outcome.traceback, index, call)

    def cancel(self) -> None:
        """Cancel every chunk that has not started; stop reading the input."""
        self.items = None
        while self.in_flight:
            self.in_flight.popleft().cancel()
        while self.pending:
            self.pending.pop().cancel()
