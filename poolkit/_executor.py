"""``poolkit.Executor``: argument checks, futures, submit / map / shutdown."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, TypeVar, Union, overload

from poolkit import _lifecycle as lifecycle
from poolkit._executor_base import TaskFrontend
from poolkit._options import DEFAULT, Default, check_bytes, check_priority, check_seconds
from poolkit._pickling import initargs as initargs_pickling
from poolkit._pool import completion as completion
from poolkit._pool.dispatcher import Dispatcher
from poolkit._pool.tasks import TaskState
from poolkit._wire.buffers import AVAILABLE as oob_available
from poolkit._worker.main import WorkerConfig

if TYPE_CHECKING:
    import inspect

    from poolkit._dask.executor import DaskExecutor
    from poolkit._map.host import MapHost

T = TypeVar("T")

#: After Ctrl-C, how long to wait for the killed workers to be reaped.
EXIT_JOIN_SECONDS = 10.0


def _stop_at_exit(dispatcher: Dispatcher, interrupted: bool) -> None:
    """The interpreter is exiting (see ``_lifecycle``): finish the queue, or stop now."""
    if interrupted:
        dispatcher.force_stop(signal.SIGKILL)
    else:
        dispatcher.request_stop()


def _join_at_exit(dispatcher: Dispatcher) -> None:
    dispatcher.join()


class _ConstructorSignature:
    """A class's signature, taken from its ``__init__`` (a subclass's own, if it has one).

    ``inspect.signature`` reads ``__signature__`` before it looks at ``__new__``.
    """

    def __get__(self, instance: object, owner: type) -> inspect.Signature:
        if instance is not None:
            # An executor is not callable: it has no signature of its own.
            raise AttributeError("__signature__")
        # Imported here: inspect (with ast, dis and tokenize) costs milliseconds of the
        # executor's import, and only help(), IDEs and signature checks ever ask for it.
        import inspect

        signature = inspect.signature(owner.__init__)  # type: ignore[misc]
        parameters = list(signature.parameters.values())[1:]  # without self
        return signature.replace(parameters=parameters, return_annotation=owner.__name__)


class Executor(TaskFrontend):
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
        backend: ``None`` or ``"local"`` (default): this pool of local processes.
            ``"dask"``: the call returns a ``DaskExecutor`` instead, with the same
            interface, that runs tasks on a dask.distributed cluster (docs/distributed.md;
            ``pip install 'poolkit[dask]'``); with it, only ``max_workers``, ``address`` and
            ``client`` apply.
        address: with ``backend="dask"``, the scheduler to connect to (for example
            ``"tcp://10.0.0.5:8786"``); without ``address`` or ``client``, poolkit starts a
            local cluster of ``max_workers`` processes.
        client: with ``backend="dask"``, a ``distributed.Client`` to use (poolkit never
            closes it).

    ``initargs`` may hold ``multiprocessing`` objects (locks, queues, ``Value``/``Array``,
    manager proxies, ...): every worker, replacements included, gets working handles to
    them, as with the standard library (docs/api.md).

    Raises:
        TypeError: an argument has the wrong type; the initializer or an item of
            ``initargs`` cannot be pickled, or cannot be given to this start method's
            workers (the message names it).
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is not positive; the start
            method is unknown or unavailable; ``start_method`` and ``mp_context`` disagree;
            ``backend`` is unknown; ``address`` or ``client`` without ``backend="dask"``.
        ImportError: ``backend="dask"`` without dask.distributed installed.
    """

    # help(), pydoc and reprs name the class where users import it from.
    __module__ = "poolkit"

    #: What ``inspect.signature(Executor)``, ``help()`` and IDEs show: the parameters of
    #: ``__init__``, which ``__new__`` (with its ``*args, **kwargs``) would hide.
    __signature__ = _ConstructorSignature()

    @overload
    def __new__(
        cls,
        max_workers: Optional[int] = None,
        mp_context: Optional[BaseContext] = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        *,
        backend: Optional[Literal["local"]] = None,
        max_tasks_per_child: Optional[int] = None,
        start_method: Optional[str] = None,
        task_timeout: Optional[float] = None,
        max_memory_per_child: Optional[int] = None,
    ) -> Executor: ...

    # Checkers that follow the typing spec's constructor rules (pyright) read these
    # overloads and type this form as DaskExecutor. mypy refuses a __new__ that returns
    # another class, and types every call as Executor (python/mypy#15182); it checks the
    # arguments against __init__.
    @overload
    def __new__(  # type: ignore[misc]
        cls,
        max_workers: Optional[int] = None,
        *,
        backend: Literal["dask"],
        address: Any = None,
        client: Any = None,
    ) -> DaskExecutor: ...

    def __new__(cls, *args: Any, backend: Optional[str] = None, **kwargs: Any) -> Any:
        """``backend="dask"`` returns a ``poolkit._dask.executor.DaskExecutor``
        (docs/distributed.md).

        Raises:
            ValueError: ``backend`` is not None, ``"local"`` or ``"dask"``.
            ImportError: ``backend="dask"`` without dask.distributed installed.
        """
        if backend == "dask":
            from poolkit._dask.executor import DaskExecutor

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
        address: Any = None,
        client: Any = None,
    ) -> None:
        if address is not None or client is not None:
            given = "address" if address is not None else "client"
            raise ValueError(f"{given}= names a dask cluster: it needs backend='dask'")
        max_workers = lifecycle.check_max_workers(max_workers) or lifecycle.default_workers()
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
        config = WorkerConfig(initializer, initargs, max_tasks_per_child, max_memory)
        packed, method = initargs_pickling.prepare(config, start_method, mp_context)

        self._init_frontend(max_workers)
        self._max_tasks_per_child = max_tasks_per_child
        self._out_of_band = oob_available
        self._start_method = method.name
        self._dispatcher = Dispatcher(method, max_workers, packed.blob, max_tasks_per_child)
        self._dispatcher.start(self)
        lifecycle.track(self._dispatcher, _stop_at_exit, _join_at_exit)

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
        return self._submit(fn, args, kwargs, timeout=DEFAULT)

    def with_options(
        self, *, timeout: Union[float, Default, None] = DEFAULT, priority: int = 0
    ) -> TaskOptions:
        """Options for the tasks submitted through the returned object.

        ``ex.with_options(timeout=2).submit(fn, x)`` runs ``fn(x)`` with a 2-second limit
        (``timeout=None``: no limit, whatever the executor's ``task_timeout``).
        ``ex.with_options(priority=5).submit(fn, x)`` starts ``fn(x)`` before every task of
        a lower priority that has not started, prefetched ones included; equal priorities
        start in the order they were submitted (the default priority is 0; negative ones
        are allowed). The options never take keyword names from ``fn``.

        Raises:
            TypeError, ValueError: ``timeout`` is not None or a positive number, or
                ``priority`` is not an int.
        """
        if timeout is not DEFAULT:
            timeout = check_seconds("timeout", timeout)
        return TaskOptions(self, timeout, check_priority(priority))

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: Union[float, Default, None],
        priority: int = 0,
    ) -> Future[T]:
        future, task = self._call_task(fn, args, kwargs)
        if task is not None:
            task.timeout = self._task_timeout if timeout is DEFAULT else timeout
            task.priority = priority
            self._enqueue(task)
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

    def _broken(self) -> Optional[BaseException]:
        return self._dispatcher.broken

    def _deliver(self, task: TaskState) -> None:
        self._dispatcher.submit(task)

    def _apply_chunk_defaults(self, task: TaskState) -> None:
        # A map chunk of n items may run n times as long as one item.
        if task.timeout is None and self._task_timeout is not None:
            task.timeout = self._task_timeout * task.items

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
            self._finish_maps()
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                self._dispatcher.cancel_pending()
            self._dispatcher.request_stop()
        if wait:
            self._dispatcher.join()
            # As with the stdlib, every done-callback has run once shutdown returns; here
            # they run on callback threads (see _completion), so wait for them.
            if not self._dispatcher.in_dispatcher_thread():
                completion.callbacks.drain()

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
        state = lifecycle.state_name(self._shutdown, self._dispatcher.broken)
        return (
            f"<poolkit.Executor {state}, max_workers={self._max_workers}, "
            f"start_method={self._start_method!r}>"
        )


if TYPE_CHECKING:
    _runs_maps: type[MapHost] = Executor  # map's contract: checked by mypy


class TaskOptions:
    """Submits tasks to an executor with options of their own; see ``Executor.with_options``."""

    def __init__(
        self, executor: Executor, timeout: Union[float, Default, None], priority: int = 0
    ) -> None:
        self._executor = executor
        self._timeout = timeout
        self._priority = priority

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Like ``Executor.submit``, with these options."""
        return self._executor._submit(
            fn, args, kwargs, timeout=self._timeout, priority=self._priority
        )

    def __repr__(self) -> str:
        return (
            f"<poolkit task options timeout={self._timeout!r} priority={self._priority!r} "
            f"for {self._executor!r}>"
        )
