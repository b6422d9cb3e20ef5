"""``poolkit.Executor``: argument checks, futures, submit / map / shutdown."""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, Callable, Optional, TypeVar

from . import _serialization as serialization
from ._backends import resolve_backend
from ._dispatcher import Dispatcher
from ._errors import BrokenProcessPool
from ._messages import TaskKind, encode_task
from ._tasks import TaskState
from ._worker import WorkerConfig

T = TypeVar("T")

_interpreter_exiting = False
_live_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_live_lock = threading.Lock()


def _at_interpreter_exit() -> None:
    # Runs before the interpreter joins non-daemon threads (as the stdlib pool does): every
    # executor still open finishes its queued work, then its workers stop.
    global _interpreter_exiting
    _interpreter_exiting = True
    with _live_lock:
        dispatchers = list(_live_dispatchers)
    for dispatcher in dispatchers:
        dispatcher.request_stop()
    for dispatcher in dispatchers:
        dispatcher.join()


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_at_interpreter_exit)


def _default_workers() -> int:
    count: Optional[int] = getattr(os, "process_cpu_count", lambda: None)()
    if count is None and hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    return count or os.cpu_count() or 1


class Executor(futures.Executor):
    """A pool of persistent worker processes behind the ``concurrent.futures`` interface.

    A drop-in replacement for ``concurrent.futures.ProcessPoolExecutor``: the same
    constructor arguments in the same order, the same methods, real
    ``concurrent.futures.Future`` objects. Functions, arguments and results travel with
    cloudpickle, so lambdas, closures and functions defined in ``__main__`` work under every
    start method. A worker that dies fails only the task it was running
    (:class:`~poolkit.WorkerCrashedError`) and is replaced.

    Args:
        max_workers: number of worker processes; defaults to the CPUs this process may use.
        mp_context: a ``multiprocessing`` context, for compatibility with
            ``ProcessPoolExecutor``; its start method is used.
        initializer: called in each worker, with ``initargs``, before it takes tasks. If it
            raises, the pool is broken: pending and later work fail with ``BrokenProcessPool``.
        initargs: arguments for ``initializer``.
        max_tasks_per_child: a worker is replaced after this many tasks (under every start
            method, ``fork`` included).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; default
            :func:`poolkit.default_start_method` (``forkserver`` on Linux).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is not positive; the start
            method is unknown or unavailable; ``start_method`` and ``mp_context`` disagree.
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Optional[BaseContext] = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: Optional[int] = None,
        start_method: Optional[str] = None,
    ) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        elif not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, got {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        try:
            initargs = tuple(initargs)
        except TypeError:
            raise TypeError(f"initargs must be iterable, got {type(initargs).__name__}") from None
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        backend = resolve_backend(start_method, mp_context)
        try:
            config_blob = serialization.dumps(
                WorkerConfig(initializer, initargs, max_tasks_per_child)
            )
        except Exception as exc:
            raise TypeError(f"initializer or initargs cannot be pickled: {exc}") from exc

        self._max_workers = max_workers
        self._start_method = backend.name
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._task_ids = itertools.count(1)
        self._function_blobs: dict[Callable[..., Any], bytes] = {}
        self._dispatcher = Dispatcher(backend, max_workers, config_blob, max_tasks_per_child)
        self._dispatcher.start(self)
        with _live_lock:
            _live_dispatchers.add(self._dispatcher)

    @property
    def max_workers(self) -> int:
        """Number of worker processes the pool keeps running."""
        return self._max_workers

    @property
    def start_method(self) -> str:
        """The start method in use: ``"fork"``, ``"spawn"`` or ``"forkserver"``."""
        return self._start_method

    # ------------------------------------------------------------------ submit

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker and return its future.

        The task is pickled here, in the calling thread: if it cannot be pickled, the
        returned future fails with ``pickle.PicklingError`` naming the argument, and the pool
        is unaffected.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down (or the interpreter is exiting).
            BrokenProcessPool: the pool is broken (for instance, the initializer failed).
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        self._check_open()
        fn_name = serialization.callable_name(fn)
        future: Future[T] = Future()
        try:
            fn_blob = self._function_blob(fn)
            args_blob = serialization.dumps((args, kwargs))
        except (Exception, SystemExit) as exc:
            error = pickle.PicklingError(
                serialization.explain_unpicklable(fn_name, args, kwargs, exc)
            )
            error.__cause__ = exc
            future.set_exception(error)
            return future
        task_id = next(self._task_ids)
        self._enqueue(
            TaskState(
                task_id, future, encode_task(task_id, TaskKind.CALL, fn_blob, args_blob), fn_name
            )
        )
        return future

    def _check_open(self) -> None:
        if self._dispatcher.broken is not None:
            raise BrokenProcessPool(
                str(self._dispatcher.broken)
            ) from self._dispatcher.broken.__cause__
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _enqueue(self, task: TaskState) -> None:
        with self._shutdown_lock:
            self._check_open()
            self._dispatcher.submit(task)

    def _function_blob(self, fn: Callable[..., Any]) -> bytes:
        # A module-level function pickles to a short reference that never changes: pickle it
        # once. Anything else (closures, __main__ functions, callable objects) may change
        # between calls, so it is pickled every time.
        try:
            cached = self._function_blobs.get(fn)
        except TypeError:  # unhashable callable
            return serialization.dumps(fn)
        if cached is not None:
            return cached
        blob = serialization.dumps(fn)
        if serialization.is_reference(fn, blob):
            if len(self._function_blobs) >= 64:
                self._function_blobs.clear()
            self._function_blobs[fn] = blob
        return blob

    # --------------------------------------------------------------------- map

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        buffersize: Optional[int] = None,
    ) -> Iterator[T]:
        """Like the built-in ``map(fn, *iterables)``, run in the workers; results in order.

        Items travel in chunks of ``chunksize``. With ``buffersize=None`` every chunk is
        submitted now (the input is read to the end); with ``buffersize=N`` at most ``N``
        chunks are in flight and the input is read as results are consumed. ``timeout`` is
        a deadline, in seconds from this call, for the whole iteration.

        Raises:
            TypeError: ``fn`` is not callable, or ``buffersize`` is not an int.
            ValueError: ``chunksize`` < 1 or ``buffersize`` < 1.
            TimeoutError: (while iterating) the deadline passed.
            Exception: (while iterating) the first exception raised by ``fn``, at its place.
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if not isinstance(chunksize, int) or isinstance(chunksize, bool):
            raise TypeError(f"chunksize must be an int, got {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        self._check_open()
        end_time = None if timeout is None else time.monotonic() + timeout
        chunks = _chunked(zip(*iterables), chunksize)
        submit_chunk = _ChunkSubmitter(self, fn)
        first = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        in_flight: collections.deque[Future[list[Any]]] = collections.deque()
        for chunk in first:
            future = submit_chunk(chunk)
            assert future is not None  # self is alive
            in_flight.append(future)
        refill = chunks if buffersize is not None else None
        return _ordered_results(in_flight, refill, submit_chunk, end_time)

    # ---------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; finish the queued ones; stop the workers.

        Args:
            wait: block until every queued task is done and every worker has exited.
            cancel_futures: cancel every queued task that has not started first.

        Calling it again is harmless. Called from a future's callback (the dispatcher
        thread), it does not wait.
        """
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                self._dispatcher.cancel_pending()
            self._dispatcher.request_stop()
        if wait:
            self._dispatcher.join()

    def terminate_workers(self) -> None:
        """Shut down at once: cancel queued tasks and send SIGTERM to every worker.

        Tasks that were running fail with :class:`~poolkit.WorkerCrashedError`. Does not wait
        for the workers to exit; no worker is restarted. Submitting afterwards raises.
        """
        self._force(signal.SIGTERM)

    def kill_workers(self) -> None:
        """Like :meth:`terminate_workers`, with SIGKILL, which a worker cannot catch."""
        self._force(signal.SIGKILL)

    def _force(self, signum: signal.Signals) -> None:
        self.shutdown(wait=False, cancel_futures=True)
        self._dispatcher.force_stop(signum)

    def __repr__(self) -> str:
        state = (
            "shut down" if self._shutdown else ("broken" if self._dispatcher.broken else "running")
        )
        return (
            f"<poolkit.Executor {state}, max_workers={self._max_workers}, "
            f"start_method={self._start_method!r}>"
        )


class _ChunkSubmitter:
    """Submits map chunks; the function is pickled once for the whole map."""

    def __init__(self, executor: Executor, fn: Callable[..., Any]) -> None:
        # A weak reference: an abandoned map iterator must not keep the executor alive.
        self._executor_ref = weakref.ref(executor)
        self._fn_name = serialization.callable_name(fn)
        self._fn_blob: Optional[bytes] = None
        self._fn_error: Optional[BaseException] = None
        try:
            self._fn_blob = executor._function_blob(fn)
        except (Exception, SystemExit) as exc:
            error = pickle.PicklingError(f"cannot pickle the function {self._fn_name}: {exc}")
            error.__cause__ = exc
            self._fn_error = error

    def __call__(self, chunk: list[tuple[Any, ...]]) -> Optional[Future[list[Any]]]:
        """Submit one chunk; None if the executor no longer exists."""
        executor = self._executor_ref()
        if executor is None:
            return None
        future: Future[list[Any]] = Future()
        if self._fn_error is not None:
            future.set_exception(self._fn_error)
            return future
        try:
            args_blob = serialization.dumps(chunk)
        except (Exception, SystemExit) as exc:
            error = pickle.PicklingError(f"cannot pickle the arguments of {self._fn_name}(): {exc}")
            error.__cause__ = exc
            future.set_exception(error)
            return future
        assert self._fn_blob is not None
        task_id = next(executor._task_ids)
        parts = encode_task(task_id, TaskKind.CHUNK, self._fn_blob, args_blob)
        executor._enqueue(TaskState(task_id, future, parts, self._fn_name))
        return future


def _chunked(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _ordered_results(
    in_flight: collections.deque[Future[list[Any]]],
    refill: Optional[Iterator[list[tuple[Any, ...]]]],
    submit_chunk: _ChunkSubmitter,
    end_time: Optional[float],
) -> Iterator[Any]:
    # A generator of its own (not part of map) so that map validates and submits eagerly.
    try:
        while in_flight:
            if refill is not None:
                # Keep `buffersize` chunks in flight: submit one more before waiting.
                chunk = next(refill, None)
                if chunk is not None:
                    submitted = submit_chunk(chunk)
                    if submitted is None:
                        refill = None
                    else:
                        in_flight.append(submitted)
            future = in_flight.popleft()
            try:
                remaining = None if end_time is None else end_time - time.monotonic()
                values = future.result(remaining)
            finally:
                future.cancel()
                del future
            # Pop as we go: no reference to a result is kept once it has been yielded.
            values.reverse()
            while values:
                yield values.pop()
    finally:
        for future in in_flight:
            future.cancel()
