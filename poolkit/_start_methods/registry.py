"""Start methods: each backend knows how to start one worker process, and nothing else.

The dispatcher calls :meth:`Backend.start_worker` and gets back a ``multiprocessing``
process object (``pid``, ``sentinel``, ``exitcode``, ``terminate``, ``kill``, ``join``,
``close``). A start method's quirks stay in its class:

- ``fork`` copies the parent, so a worker inherits every descriptor the parent had open;
  the worker closes poolkit's parent-only descriptors first thing (see ``_wire.fds``).
- ``spawn`` starts a fresh interpreter that re-imports the main module as ``__mp_main__``;
  functions defined in ``__main__`` travel by value through cloudpickle instead.
- ``forkserver`` forks workers from a server process; poolkit adds its worker module to the
  server's preload list so each worker starts with it already imported.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from multiprocessing.context import BaseContext
from typing import Any, Callable, ClassVar, Optional, Protocol

from poolkit._pickling import initargs as initargs_pickling
from poolkit._start_methods.fork_template import ForkTemplate, TemplateFailed
from poolkit._start_methods.fork_template import supported as template_supported

logger = logging.getLogger(__name__)

_WORKER_MODULE = "poolkit._worker.main"
#: Imported by the fork server only: it makes the server end with the parent.
_SERVER_WATCH_MODULE = "poolkit._start_methods.forkserver_watch"


class WorkerProcess(Protocol):
    """What the dispatcher needs of a started worker (``multiprocessing.Process`` has it)."""

    @property
    def pid(self) -> Optional[int]: ...
    @property
    def sentinel(self) -> int: ...
    @property
    def exitcode(self) -> Optional[int]: ...
    def join(self, timeout: Optional[float] = None) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


class Backend:
    """Starts worker processes with one ``multiprocessing`` start method."""

    name: ClassVar[str]

    def __init__(self, context: BaseContext) -> None:
        self.context = context
        #: The ``multiprocessing`` objects of ``initargs`` (see ``_initargs``): every
        #: worker gets them as a process argument, which ``multiprocessing`` pickles while
        #: it starts the worker (or, under fork, the worker inherits).
        self.carried: tuple[Any, ...] = ()

    def carry(self, objects: tuple[Any, ...]) -> None:
        """Give every worker started from now on these objects (``worker_main``'s last)."""
        self.carried = objects

    def prepare_respawns(self, target: Callable[..., Any], config_blob: bytes) -> None:
        """Called once the first workers run, before any poolkit thread starts."""

    def close(self) -> None:
        """Release what the backend holds; called after the last worker has exited."""

    def death_signal_safe(self, long_lived_thread: bool) -> bool:
        """May a worker started now arm the parent-death signal (``_parent_watch``)?

        Linux sends it when the *thread* that forked the worker ends: only safe when the
        calling thread outlives the worker. A backend whose workers have another parent
        says so.
        """
        return long_lived_thread

    def start_worker(
        self, target: Callable[..., Any], args: tuple[Any, ...], name: str
    ) -> WorkerProcess:
        """Start a process running ``target(*args)`` and return it once it is started."""
        # Not daemonic: tasks may start processes of their own, as under the stdlib pool.
        process = self.context.Process(target=target, args=args, name=name)  # type: ignore[attr-defined]
        with self._starting():
            process.start()
        return process  # type: ignore[no-any-return]

    def _starting(self) -> ContextManager[None]:
        return contextlib.nullcontext()


class ForkBackend(Backend):
    """Workers are forks of the calling process: the fastest start, no re-import.

    Replacements are forked from a template process made at pool start (see
    ``_fork_template``), never from the parent once its dispatcher thread runs.
    """

    name = "fork"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._template: Optional[ForkTemplate] = None
        #: Starts the replacements once the template is lost (see start_worker).
        self._fallback: Optional[Backend] = None

    def prepare_respawns(self, target: Callable[..., Any], config_blob: bytes) -> None:
        if template_supported():
            # The template inherits the carried objects now and its forks inherit them
            # again: a replacement gets the same handles as the first workers.
            self._template = ForkTemplate(self.context, target, config_blob, self.carried)

    def death_signal_safe(self, long_lived_thread: bool) -> bool:
        if self._fallback is not None:
            return self._fallback.death_signal_safe(long_lived_thread)
        # The template's workers are armed by the template (against nobody: see
        # _fork_template); the first workers are forks of the calling thread.
        return long_lived_thread

    def start_worker(
        self, target: Callable[..., Any], args: tuple[Any, ...], name: str
    ) -> WorkerProcess:
        if self._fallback is not None:
            return self._fallback.start_worker(target, args, name)
        if self._template is None:
            return super().start_worker(target, args, name)
        try:
            return self._template.start_worker(args)
        except TemplateFailed as exc:
            # Killed, stopped or gone: forking the parent instead is not safe now that
            # the dispatcher thread runs, so replacements come from a clean process.
            fallback = _fallback_backend()
            _check_carried(self.carried, fallback.name, exc)
            fallback.carry(self.carried)
            self._fallback = fallback
            message = (
                f"{exc}; replacement workers of this pool now start with "
                f"{self._fallback.name!r} (they import the main module like any "
                f"{self._fallback.name} worker)"
            )
            logger.warning("poolkit: %s", message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return self._fallback.start_worker(target, args, name)

    def close(self) -> None:
        if self._template is not None:
            self._template.close()
            self._template = None
        if self._fallback is not None:
            self._fallback.close()


def _check_carried(objects: tuple[Any, ...], method: str, lost: TemplateFailed) -> None:
    """Raise TypeError if one of ``objects`` cannot reach a ``method`` worker."""
    for obj in objects:
        why = initargs_pickling.travel_error(obj, method)
        if why is not None:
            raise TypeError(
                f"{lost}; its replacements would start with {method!r}, and "
                f"{initargs_pickling.describe_carried(obj)} cannot be given to "
                f"{method} workers: {why}"
            ) from lost


def _fallback_backend() -> Backend:
    """The backend that starts a fork pool's replacements once its template is lost."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return _BACKENDS[method](multiprocessing.get_context(method))


class SpawnBackend(Backend):
    """Workers are fresh interpreters: the safest and slowest start."""

    name = "spawn"

    def _starting(self) -> ContextManager[None]:
        return _unimportable_main_hidden()


class ForkserverBackend(Backend):
    """Workers are forked from a clean server process started once per parent process."""

    name = "forkserver"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        _add_forkserver_preload(_WORKER_MODULE, _SERVER_WATCH_MODULE)

    def death_signal_safe(self, long_lived_thread: bool) -> bool:
        return True  # the fork server's single thread forks every worker

    def _starting(self) -> ContextManager[None]:
        return _unimportable_main_hidden()


_main_lock = threading.Lock()


@contextlib.contextmanager
def _unimportable_main_hidden() -> Iterator[None]:
    """Hide a ``__main__.__file__`` that names no file while a process starts.

    ``python - < script`` sets it to ``"<stdin>"``; multiprocessing would make the worker
    run that "file" and fail. Functions from such a ``__main__`` travel by value
    (cloudpickle), so the worker does not need it.
    """
    with _main_lock:
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        spec = getattr(main, "__spec__", None)
        if main is None or path is None or spec is not None or os.path.exists(path):
            yield
            return
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


def _add_forkserver_preload(*modules: str) -> None:
    # The preload list belongs to the process-wide fork server and only matters before the
    # server starts; keep whatever the user (or the stdlib default, "__main__") put there.
    # Private names of multiprocessing.forkserver (3.9-3.13; re-check on a new version):
    # without them, nothing is added, and workers start without the preload.
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [module for module in modules if module not in current]
    if missing and server is not None and getattr(server, "_forkserver_pid", None) is None:
        multiprocessing.forkserver.set_forkserver_preload([*current, *missing])


_BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (ForkserverBackend, SpawnBackend, ForkBackend)
}


def start_methods() -> list[str]:
    """The start methods this platform offers, the default first.

    Example: ``['forkserver', 'spawn', 'fork']`` on Linux.
    """
    available = set(multiprocessing.get_all_start_methods())
    return [name for name in _BACKENDS if name in available]


def default_start_method() -> str:
    """``forkserver`` where it exists, else ``spawn``: never ``fork`` by default.

    Forking a process that runs threads can deadlock the child; Python 3.14 made the same
    choice for its default.
    """
    return start_methods()[0]


def resolve_backend(start_method: Optional[str], mp_context: Optional[BaseContext]) -> Backend:
    """Pick the backend for an executor's ``start_method`` and ``mp_context`` arguments.

    Raises:
        ValueError: the method is unknown or unavailable here (the message lists the
            available ones), or ``start_method`` and ``mp_context`` disagree.
        TypeError: ``start_method`` is not a string, or ``mp_context`` is not a context.
    """
    if start_method is not None and not isinstance(start_method, str):
        raise TypeError(f"start_method must be a string or None, got {type(start_method).__name__}")
    context_method: Optional[str] = None
    if mp_context is not None:
        getter = getattr(mp_context, "get_start_method", None)
        if getter is None:
            raise TypeError(
                f"mp_context must be a multiprocessing context, got {type(mp_context).__name__}"
            )
        context_method = getter(allow_none=False)
    if start_method is not None and context_method is not None and start_method != context_method:
        raise ValueError(
            f"start_method={start_method!r} disagrees with mp_context, whose start method is "
            f"{context_method!r}; give one of them, or the same method in both"
        )
    method = start_method if start_method is not None else context_method
    if method is None:
        method = default_start_method()
    if method not in start_methods():
        raise ValueError(
            f"unknown or unavailable start method {method!r}; "
            f"available here: {', '.join(start_methods())}"
        )
    context = mp_context if mp_context is not None else multiprocessing.get_context(method)
    return _BACKENDS[method](context)
