"""Submitting a map's chunks: the function pickled once, the arguments per chunk.

Each chunk is one task whose future is the chunk itself (:class:`Chunk`, a
:class:`~poolkit._map.chunk_future.ChunkFuture`). An item whose arguments cannot be pickled
fails alone, at its place: the items before it still go as one chunk.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from poolkit import _error_messages as messages
from poolkit._map.chunk_future import ChunkFuture
from poolkit._map.chunking import ChunkSizer
from poolkit._pickling import serialization as serialization
from poolkit._pool.tasks import TaskState
from poolkit._wire.buffers import HeldBuffers
from poolkit._wire.messages import TaskKind, encode_task

if TYPE_CHECKING:
    from poolkit._map.host import MapHost


class Chunk(ChunkFuture):
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


class ChunkSubmitter:
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
            self._fn_error = messages.unpicklable_function(self.fn_name, exc)

    def __call__(self, start: int, chunk: list[Any], sizer: ChunkSizer) -> list[Chunk]:
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
    ) -> Chunk:
        assert self._fn_blob is not None
        entry = Chunk(self._lock, start, count)
        task_id = next(executor._task_ids)
        buffers = 0 if held is None else held.count
        parts = encode_task(task_id, self._kind, self._fn_blob, args_blob, buffers)
        # Per-task time limits are per item: a chunk of n items may run n times as long.
        task = TaskState(task_id, entry, parts, self.fn_name, items=count, held=held)
        task.priority = self.priority
        entry.task = task
        executor._enqueue_chunk(task)
        return entry

    def _failed(self, start: int, count: int, error: BaseException) -> Chunk:
        """A chunk that fails at once, with ``error``, at its place among the results."""
        entry = Chunk(self._lock, start, count)
        entry.set_exception(error)
        return entry

    def _split_unpicklable(
        self, executor: MapHost, start: int, chunk: list[Any], sizer: ChunkSizer
    ) -> list[Chunk]:
        for index, args in enumerate(chunk):
            try:
                serialization.dumps(args)
            except (Exception, SystemExit) as exc:
                error = messages.unpicklable_map_item(self.fn_name, start + index, exc)
                entries = []
                if index:
                    entries.extend(self(start, chunk[:index], sizer))
                entries.append(self._failed(start + index, len(chunk) - index, error))
                return entries
        # Each item pickles alone but not together (shared state?): fail the chunk.
        error = messages.unpicklable_map_chunk(self.fn_name)
        return [self._failed(start, len(chunk), error)]


#: Chunks up to this many items are checked for plain values (see ``plain_items``).
_CHECK_PLAIN_UP_TO = 8
