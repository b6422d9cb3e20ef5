"""What every poolkit executor does in the caller's thread: check, pickle, queue, map.

The local pool (``Executor``) and the dask backend (``DaskExecutor``) differ in where a
task goes once it is pickled; everything before that is here, once: argument checks, the
pickling of a call (so one bad task fails its own future, never the pool), the cache of
by-reference function pickles, the shutdown and broken checks, and ``map``/``starmap``.
"""

from __future__ import annotations

import itertools
import pickle
import threading
import weakref
from collections.abc import Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from typing import Any, Callable, Optional, TypeVar

from poolkit import _error_messages as messages
from poolkit._futures import new_future
from poolkit._lifecycle import interpreter_exiting
from poolkit._map import driver as _map
from poolkit._map.driver import BuffersizeArg, ChunksizeArg, ProgressArg
from poolkit._map.run import MapRun
from poolkit._options import DEFAULT
from poolkit._pickling import serialization as serialization
from poolkit._pickling.function_cache import FunctionBlobs
from poolkit._pickling.function_snapshot import Snapshot
from poolkit._pickling.function_snapshot import take as take_snapshot
from poolkit._pool.tasks import TaskState
from poolkit._wire.buffers import HeldBuffers
from poolkit._wire.messages import TaskKind, encode_task

T = TypeVar("T")

#: The arguments blob of a call without arguments, pickled once.
_NO_ARGUMENTS = serialization.dumps(((), {}))


def _plain_values(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True if every argument is of a plain type: no buffer to look for when pickling."""
    plain = serialization.plain_items
    return plain(args) and (not kwargs or plain(kwargs.values()))


class TaskFrontend(futures.Executor):
    """The caller-side half of a poolkit executor; subclasses say where tasks go."""

    _max_workers: int
    #: Tasks a worker runs before it is replaced (map keeps chunks at one item then).
    _max_tasks_per_child: Optional[int] = None
    #: Large buffers of arguments travel in memory files (``_oob``): local workers only.
    _out_of_band = False

    def _init_frontend(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._task_ids = itertools.count(1)
        self._function_blobs = FunctionBlobs()  # holds no function alive
        self._live_maps: weakref.WeakSet[MapRun] = weakref.WeakSet()  # maps still reading input

    # ------------------------------------------------------- for subclasses

    def _broken(self) -> Optional[BaseException]:
        """Why the executor cannot run tasks any more, or None."""
        raise NotImplementedError

    def _deliver(self, task: TaskState) -> None:
        """Hand a checked task to the backend (called with the shutdown lock held)."""
        raise NotImplementedError

    def _apply_chunk_defaults(self, task: TaskState) -> None:
        """Fill in executor-wide options of a map chunk's task (its time limit, ...)."""

    # ----------------------------------------------------------------- common

    @property
    def max_workers(self) -> int:
        """Number of tasks the executor runs at once."""
        return self._max_workers

    def _call_task(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Future[Any], Optional[TaskState]]:
        """Pickle ``fn(*args, **kwargs)``: its future, and its task (None if it failed)."""
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        self._check_open()
        fn_name = serialization.callable_name(fn)
        future = new_future()
        try:
            fn_blob = self._function_blob(fn)
            if not args and not kwargs:
                args_blob, held = _NO_ARGUMENTS, None
            elif _plain_values(args, kwargs):  # nothing that could go out of band
                args_blob, held = serialization.dumps((args, kwargs)), None
            else:
                args_blob, held = self._pickle_arguments((args, kwargs))
        except (Exception, SystemExit) as exc:
            error = pickle.PicklingError(
                serialization.explain_unpicklable(fn_name, args, kwargs, exc)
            )
            error.__cause__ = exc
            future.set_exception(error)
            return future, None
        task_id = next(self._task_ids)
        buffers = 0 if held is None else held.count
        parts = encode_task(task_id, TaskKind.CALL, fn_blob, args_blob, buffers)
        return future, TaskState(task_id, future, parts, fn_name, held=held)

    def _pickle_arguments(self, arguments: Any) -> tuple[bytes, Optional[HeldBuffers]]:
        """Pickle a task's arguments; large buffers go to memory files where they can."""
        if not self._out_of_band:
            return serialization.dumps(arguments), None
        out_of_band: list[pickle.PickleBuffer] = []
        blob = serialization.dumps(arguments, out_of_band)
        if not out_of_band:
            return blob, None
        held = HeldBuffers.hold(out_of_band)
        if held is None:  # the parent holds enough memory files already
            return serialization.dumps(arguments), None
        return blob, held

    def _check_open(self) -> None:
        broken = self._broken()
        if broken is not None:
            raise messages.still_broken(broken)
        if self._shutdown:
            raise messages.after_shutdown()
        if interpreter_exiting():
            raise messages.after_shutdown(interpreter=True)

    def _enqueue(self, task: TaskState) -> None:
        """Queue a task whose options are set; raises as ``_check_open`` does."""
        with self._shutdown_lock:
            self._check_open()
            self._deliver(task)

    def _enqueue_chunk(self, task: TaskState) -> None:
        """Queue a map chunk's task, with the executor's defaults for chunks."""
        self._apply_chunk_defaults(task)
        self._enqueue(task)

    def _function_blob(self, fn: Callable[..., Any]) -> bytes:
        # A module-level function pickles to a short reference that never changes: pickle it
        # once. A function pickled by value (defined in __main__, a closure, a lambda) is
        # pickled again unless a snapshot shows that nothing it captures changed (see
        # _function_snapshot); callable objects are pickled every time.
        try:
            cached = self._function_blobs.get(fn)
        except TypeError:  # unhashable callable
            return serialization.dumps(fn)
        if cached is not None:
            blob, snapshot = cached
            if snapshot is None or snapshot.matches(fn):
                return blob
        blob = serialization.dumps(fn)
        if serialization.is_reference(fn, blob):
            entry: Optional[tuple[bytes, Optional[Snapshot]]] = (blob, None)
        elif serialization.by_value_modules_registered():
            entry = None  # cloudpickle's own registry decides; do not second-guess it
        else:
            snapshot = take_snapshot(fn)
            entry = None if snapshot is None else (blob, snapshot)
        if entry is not None:
            self._function_blobs.put(fn, *entry)
        return blob

    def _register_map(self, run: MapRun) -> None:
        self._live_maps.add(run)

    def _finish_maps(self) -> None:
        # Lazy maps over sized inputs submit their remaining input before shutdown (see
        # MapRun.finish_input): results read after the `with` block still come.
        for run in list(self._live_maps):
            run.finish_input()

    # -------------------------------------------------------------------- map

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: ChunksizeArg = DEFAULT,
        buffersize: BuffersizeArg = DEFAULT,
        ordered: bool = True,
        progress: ProgressArg = None,
        priority: int = 0,
    ) -> Iterator[T]:
        """Like the built-in ``map(fn, *iterables)``, run in the workers (see docs/map.md).

        Lazy and bounded: at most ``buffersize`` chunks are in flight, and the input is read
        only as results are consumed, so an endless iterable is fine. Leaving the loop early
        (``break``, ``close()``, an exception) cancels every chunk that has not started.

        Args:
            timeout: a deadline, in seconds from this call, for the whole iteration.
            chunksize: items per task, or ``"auto"``: sized from the measured time per item
                and the pool size. Default ``"auto"``, except 1 when ``buffersize`` is given
                (the standard library's spelling gets its semantics) or the executor has
                ``max_tasks_per_child`` (a chunk counts as one task).
            buffersize: chunks in flight; default ``4 * max_workers``. ``None`` means no
                bound, as in the standard library: the whole input is read and every chunk
                submitted before ``map`` returns.
            ordered: ``False`` yields results as chunks complete (like
                ``multiprocessing.Pool.imap_unordered``) instead of in input order.
            progress: ``True`` for a tqdm progress bar (``pip install poolkit[progress]``),
                or a callable, called in the caller's thread with the number of items newly
                done (``progress=bar.update`` works). Counts items, not chunks.
            priority: of every chunk, as ``with_options(priority=...)`` gives a task:
                higher starts first, equal in order (default 0).

        Raises:
            TypeError: ``fn`` is not callable; ``chunksize``, ``buffersize`` or ``progress``
                has the wrong type.
            ValueError: ``chunksize`` < 1 or ``buffersize`` < 1.
            TypeError: ``priority`` is not an int.
            ImportError: ``progress=True`` and tqdm is not installed.
            RuntimeError, BrokenProcessPool: the executor is shut down or broken.
            TimeoutError: (while iterating) the deadline passed.
            Exception: (while iterating) the first exception raised by ``fn``, at its item's
                place, after the results before it; its ``map_index`` attribute (and, on
                3.11+, a note) gives the item's index, and its ``__cause__`` the worker's
                traceback.
        """
        single = len(iterables) == 1
        return _map.start_map(
            self,
            fn,
            iter(iterables[0]) if single else zip(*iterables),
            _map.common_length(iterables),
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
            star=not single,
            priority=priority,
        )

    def starmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        *,
        timeout: Optional[float] = None,
        chunksize: ChunksizeArg = DEFAULT,
        buffersize: BuffersizeArg = DEFAULT,
        ordered: bool = True,
        progress: ProgressArg = None,
        priority: int = 0,
    ) -> Iterator[T]:
        """Like ``itertools.starmap(fn, iterable)``: each item is a tuple of arguments.

        ``ex.starmap(pow, [(2, 5), (3, 2)])`` yields 32, 9. Keywords, laziness and errors
        as in :meth:`map`; an item that is not iterable fails with ``TypeError`` at its place.

        Raises:
            The same as :meth:`map`.
        """
        return _map.start_map(
            self,
            fn,
            iter(iterable),
            _map.common_length((iterable,)),
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
            priority=priority,
        )
