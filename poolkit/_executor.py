"""``poolkit.Executor``: argument checks, futures, submit / map / shutdown."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, Callable, Literal, Optional, TypeVar

from . import _map
from . import _serialization as serialization
from ._backends import resolve_backend
from ._dispatcher import Dispatcher
from ._errors import BrokenProcessPool
from ._map import DEFAULT, BuffersizeArg, ChunksizeArg, ProgressArg
from ._messages import TaskKind, encode_task
from ._options import UNSET, TaskOptions, check_bytes, check_seconds
from ._tasks import TaskState, abandon_futures
from ._worker import WorkerConfig

T = TypeVar("T")

#: After Ctrl-C, how long to wait for the killed workers to be reaped.
EXIT_JOIN_SECONDS = 10.0

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
    # Exiting because of an unhandled Ctrl-C: stop now instead of finishing the queue.
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    if interrupted:
        abandon_futures()
    for dispatcher in dispatchers:
        if interrupted:
            dispatcher.force_stop(signal.SIGKILL)
        else:
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
        task_timeout: seconds a task may run (a ``map`` chunk: seconds per item); past it
            the task's worker is killed and replaced, and the future fails with
            :class:`~poolkit.TaskTimeoutError`. None (default): no limit. Override per task
            with :meth:`with_options`.
        max_memory_per_child: bytes of resident memory after which a worker is replaced
            (checked after each task; the worker finishes that task first).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is not positive; the start
            method is unknown or unavailable; ``start_method`` and ``mp_context`` disagree.
    """

    def __new__(cls, *args: Any, backend: Optional[str] = None, **kwargs: Any) -> Any:
        """``backend="dask"`` returns a ``poolkit._dask.DaskExecutor`` (docs/distributed.md).

        Raises:
            ValueError: ``backend`` is not None, ``"local"`` or ``"dask"``.
            ImportError: ``backend="dask"`` without dask.distributed installed.
        """
        if backend == "dask":
            from ._dask import DaskExecutor

            return DaskExecutor(*args, **kwargs)
        if backend not in (None, "local"):
            raise ValueError(f"unknown backend {backend!r}; choose 'local' (default) or 'dask'")
        return super().__new__(cls)

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Optional[BaseContext] = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        *,
        backend: Optional[str] = None,  # None or "local" here; "dask" is chosen in __new__
        max_tasks_per_child: Optional[int] = None,
        start_method: Optional[str] = None,
        task_timeout: Optional[float] = None,
        max_memory_per_child: Optional[int] = None,
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
        self._task_timeout = check_seconds("task_timeout", task_timeout)
        max_memory = check_bytes("max_memory_per_child", max_memory_per_child)
        method = resolve_backend(start_method, mp_context)
        try:
            config_blob = serialization.dumps(
                WorkerConfig(initializer, initargs, max_tasks_per_child, max_memory)
            )
        except Exception as exc:
            raise TypeError(f"initializer or initargs cannot be pickled: {exc}") from exc

        self._max_workers = max_workers
        self._start_method = method.name
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._task_ids = itertools.count(1)
        self._function_blobs: dict[Callable[..., Any], bytes] = {}
        self._live_maps: weakref.WeakSet[Any] = weakref.WeakSet()  # maps still reading input
        self._dispatcher = Dispatcher(method, max_workers, config_blob, max_tasks_per_child)
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
        return self._submit(fn, args, kwargs, timeout=UNSET)

    def with_options(self, *, timeout: Optional[float] = UNSET) -> TaskOptions:
        """Options for the tasks submitted through the returned object.

        ``ex.with_options(timeout=2).submit(fn, x)`` runs ``fn(x)`` with a 2-second limit
        (``timeout=None``: no limit, whatever the executor's ``task_timeout``). The options
        never take keyword names from ``fn``.

        Raises:
            TypeError, ValueError: ``timeout`` is not None or a positive number.
        """
        if timeout is not UNSET:
            timeout = check_seconds("timeout", timeout)
        return TaskOptions(self, timeout)

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: Optional[float],
    ) -> Future[T]:
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
        parts = encode_task(task_id, TaskKind.CALL, fn_blob, args_blob)
        task = TaskState(task_id, future, parts, fn_name)
        task.timeout = self._task_timeout if timeout is UNSET else timeout
        self._enqueue(task, default_timeout=False)
        return future

    def stop(self, future: Future[Any]) -> None:
        """Stop the task of ``future``, even while it runs (``Future.cancel`` cannot).

        A task still queued is cancelled. A running task's worker is killed (with the
        processes the task started) and replaced; the future fails with
        :class:`~poolkit.TaskStopped`, a ``CancelledError``. A task that already finished
        keeps its result. It returns at once; the future resolves promptly. Never affects
        any other task, not even the one the worker would run next.
        """
        if not isinstance(future, Future):
            raise TypeError(f"expected a concurrent.futures.Future, got {type(future).__name__}")
        if future.done() or future.cancel():
            return
        self._dispatcher.stop_task(future)

    def _register_map(self, run: Any) -> None:
        self._live_maps.add(run)

    def _check_open(self) -> None:
        if self._dispatcher.broken is not None:
            raise BrokenProcessPool(
                str(self._dispatcher.broken)
            ) from self._dispatcher.broken.__cause__
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _enqueue(self, task: TaskState, default_timeout: bool = True) -> None:
        if default_timeout and task.timeout is None and self._task_timeout is not None:
            task.timeout = self._task_timeout * task.items
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
        chunksize: ChunksizeArg = DEFAULT,
        buffersize: BuffersizeArg = DEFAULT,
        ordered: bool = True,
        progress: ProgressArg = None,
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

        Raises:
            TypeError: ``fn`` is not callable; ``chunksize``, ``buffersize`` or ``progress``
                has the wrong type.
            ValueError: ``chunksize`` < 1 or ``buffersize`` < 1.
            ImportError: ``progress=True`` and tqdm is not installed.
            RuntimeError, BrokenProcessPool: the executor is shut down or broken.
            TimeoutError: (while iterating) the deadline passed.
            Exception: (while iterating) the first exception raised by ``fn``, at its item's
                place, after the results before it; its ``map_index`` attribute (and, on
                3.11+, a note) gives the item's index, and its ``__cause__`` the worker's
                traceback.
        """
        return _map.start_map(
            self,
            fn,
            zip(*iterables),
            _map.common_length(iterables),
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
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
        )

    # ---------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; finish the queued ones; stop the workers.

        Args:
            wait: block until every queued task is done and every worker has exited.
            cancel_futures: cancel every queued task that has not started first.

        Calling it again is harmless. Called from a future's callback (the dispatcher
        thread), it does not wait.
        """
        if not cancel_futures:
            # Lazy maps over sized inputs submit their remaining input first (see
            # _map._MapRun.finish_input): results read after the `with` block still come.
            for run in list(self._live_maps):
                run.finish_input()
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

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: the user wants out now, not after the queue drains.
            self.kill_workers()
            self._dispatcher.join(EXIT_JOIN_SECONDS)
            return False
        self.shutdown(wait=True)
        return False

    def __repr__(self) -> str:
        state = (
            "shut down" if self._shutdown else ("broken" if self._dispatcher.broken else "running")
        )
        return (
            f"<poolkit.Executor {state}, max_workers={self._max_workers}, "
            f"start_method={self._start_method!r}>"
        )
