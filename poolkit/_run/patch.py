"""Put ``poolkit.Executor`` in the place of ``concurrent.futures.ProcessPoolExecutor``.

``python -m poolkit run`` calls :func:`install` before the program's first module loads, so
every way of naming the class finds the replacement: ``concurrent.futures.ProcessPoolExecutor``
(normally resolved lazily by the package's ``__getattr__``), and
``concurrent.futures.process.ProcessPoolExecutor``.

Child processes are covered too. A spawn or forkserver child re-imports the program's main
module (as ``__mp_main__``) before it runs anything else, so a name imported at the top of
the program would be the stdlib class there. :func:`install` therefore wraps
``multiprocessing.spawn.get_preparation_data``: a child whose main module is the program's
first imports :mod:`poolkit._run.child`, which installs the patch and then runs the
program's main module in its place. A forked child inherits the patched modules.

The stderr summary counts what the replaced pools did in this process: tasks (a map chunk
counts as its items) that finished, and tasks that failed because their worker died while
the pool went on.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing.spawn
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, Callable, Optional

from poolkit._errors import WorkerCrashedError
from poolkit._executor import Executor
from poolkit._map.chunk_future import ChunkFuture
from poolkit._pool.tasks import TaskState

#: What the program runs, for its children: ``path:/abs/script.py`` or ``module:pkg.mod``.
TARGET_ENV = "POOLKIT_RUN_MAIN"
#: The start method given to ``python -m poolkit run --start-method``, for its children too.
START_METHOD_ENV = "POOLKIT_RUN_START_METHOD"
#: The module a child imports as its main module instead of the program's.
CHILD_MODULE = "poolkit._run.child"

#: The class the patch replaces (kept so the runner can restore it and tests can compare).
STDLIB_PROCESS_POOL = concurrent.futures.process.ProcessPoolExecutor


class RunStats:
    """What the replaced pools of this process did (thread-safe counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pools = 0
        self.tasks = 0
        self.crashes = 0
        self.start_methods: list[str] = []

    def pool_started(self, method: str) -> None:
        with self._lock:
            self.pools += 1
            if method not in self.start_methods:
                self.start_methods.append(method)

    def task_done(self, task: TaskState) -> None:
        future = task.future
        assert isinstance(future, (Future, ChunkFuture))  # what TaskState holds
        if future.cancelled():
            return
        error = future.outcome()[1] if isinstance(future, ChunkFuture) else future.exception()
        with self._lock:
            self.tasks += task.items
            if isinstance(error, WorkerCrashedError):
                self.crashes += 1

    def summary(self) -> str:
        """The one line ``python -m poolkit run`` prints to stderr at exit."""
        with self._lock:
            if not self.pools:
                return "poolkit run: the program started no ProcessPoolExecutor"
            methods = ", ".join(self.start_methods)
            return (
                f"poolkit run: {self.tasks} task(s) run on poolkit "
                f"({self.pools} pool(s), start method {methods}); "
                f"{self.crashes} worker crash(es) survived"
            )


stats = RunStats()


class ProcessPoolExecutor(Executor):
    """``poolkit.Executor`` under the stdlib's name, installed by ``python -m poolkit run``.

    It takes ``ProcessPoolExecutor``'s arguments (and poolkit's keywords). Without
    ``mp_context`` or ``start_method`` it uses the method given to ``poolkit run
    --start-method``, else poolkit's default. Every task is counted for the exit summary.
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
        **options: Any,
    ) -> None:
        if start_method is None and mp_context is None:
            start_method = os.environ.get(START_METHOD_ENV) or None
        super().__init__(
            max_workers,
            mp_context,
            initializer,
            initargs,
            max_tasks_per_child=max_tasks_per_child,
            start_method=start_method,
            **options,
        )
        stats.pool_started(self.start_method)

    def _deliver(self, task: TaskState) -> None:
        super()._deliver(task)
        # Every task, from submit or a map chunk, passes here exactly once.
        task.future.add_done_callback(lambda _: stats.task_done(task))


_original_preparation_data = multiprocessing.spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    """``get_preparation_data``, with the program's main module swapped for the patching one."""
    data: dict[str, Any] = _original_preparation_data(name)
    kind, _, target = os.environ.get(TARGET_ENV, "").partition(":")
    if (kind == "path" and data.get("init_main_from_path") == target) or (
        kind == "module" and data.get("init_main_from_name") == target
    ):
        data.pop("init_main_from_path", None)
        data["init_main_from_name"] = CHILD_MODULE
    return data


def _set_class(cls: type) -> None:
    setattr(concurrent.futures.process, "ProcessPoolExecutor", cls)  # noqa: B010 (typed)
    # Setting the package attribute also bypasses its lazy __getattr__ from now on.
    setattr(concurrent.futures, "ProcessPoolExecutor", cls)  # noqa: B010


def install() -> None:
    """Replace ``ProcessPoolExecutor`` in this process, and in its spawn/forkserver children.

    Idempotent. Children find the program through :data:`TARGET_ENV`, which the runner sets.
    """
    _set_class(ProcessPoolExecutor)
    # A private-looking but stable function of multiprocessing.spawn (3.4-3.13), looked up
    # as a module attribute by the spawn and forkserver Popen classes. If a version drops
    # it, children are simply not covered (the parent still is).
    if getattr(multiprocessing.spawn, "get_preparation_data", None) is _original_preparation_data:
        multiprocessing.spawn.get_preparation_data = _preparation_data


def uninstall() -> None:
    """Put the stdlib class and ``get_preparation_data`` back (tests; the runner at exit)."""
    _set_class(STDLIB_PROCESS_POOL)
    if multiprocessing.spawn.get_preparation_data is _preparation_data:
        multiprocessing.spawn.get_preparation_data = _original_preparation_data


def target_for(path: Optional[str], module: Optional[str]) -> str:
    """The :data:`TARGET_ENV` value for a script path or a module name."""
    if module is not None:
        return f"module:{module}"
    assert path is not None
    return f"path:{os.path.normpath(os.path.abspath(path))}"
