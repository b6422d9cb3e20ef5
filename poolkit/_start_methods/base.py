"""What a start method is: the one interface the pool starts its workers through.

A start method owns the whole launch of a worker process: it makes the worker's pipes,
starts a process that runs ``worker_main(args)`` (:class:`~poolkit._worker.args.WorkerArgs`),
and hands back something with the :class:`WorkerProcess` surface. The pool never asks
how: ``fork``, ``spawn`` and ``forkserver`` are built on ``multiprocessing``
(:class:`MultiprocessingStartMethod`), and a method that is not (a plain ``subprocess``,
say) subclasses :class:`StartMethod` directly. Each class keeps its own quirks; the hooks
only one method needs (``prepare_respawns`` for fork's template) are no-ops here.

``registry`` lists the methods by name; ``docs/architecture.md`` ("Adding a start method")
walks through writing one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from contextlib import AbstractContextManager as ContextManager
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, ClassVar, Optional, Protocol

from poolkit._pickling import initargs as initargs_pickling
from poolkit._wire.channel import one_way_pipe
from poolkit._worker.args import WorkerArgs
from poolkit._worker.main import worker_main


class WorkerProcess(Protocol):
    """What the pool needs of a started worker (``multiprocessing.Process`` has it).

    ``sentinel`` is a descriptor that becomes readable once the process has ended (where
    the kernel has pidfds, the pool watches a pidfd instead, and only signals through it).
    ``exitcode`` is None while the process runs, else its exit status (``-signal`` if a
    signal ended it); asking for it reaps the process. ``close`` releases the sentinel.
    """

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


class StartMethod:
    """Starts worker processes one way. Subclass it, and register the class (``registry``)."""

    #: The name users pass as ``Executor(start_method=...)``.
    name: ClassVar[str]

    def __init__(self) -> None:
        #: The ``multiprocessing`` objects of ``initargs`` (see ``initargs``): every
        #: worker gets them in ``WorkerArgs.carried``.
        self.carried: tuple[Any, ...] = ()

    @classmethod
    def available(cls) -> bool:
        """Can this platform start workers this way? Unavailable methods are not offered."""
        raise NotImplementedError

    def pipe(self) -> tuple[Connection, Connection]:
        """A one-way pipe for a worker's channel: ``(reading end, writing end)``."""
        return one_way_pipe()

    def start_worker(self, args: WorkerArgs) -> WorkerProcess:
        """Start a process running ``worker_main(args)``; return it once it is started.

        The worker's ends of its channel (``args.inbox``, ``args.outbox``, ``args.side``,
        ``args.running``) must reach the process as the same open files; the parent closes
        its copies when this returns.
        """
        raise NotImplementedError

    def travel_error(self, obj: Any) -> Optional[str]:
        """Why a ``multiprocessing`` object of ``initargs`` cannot reach this method's
        workers, or None if it can (then it travels in ``WorkerArgs.carried``)."""
        return initargs_pickling.travel_error(obj, self.name)

    def carry(self, objects: tuple[Any, ...]) -> None:
        """Give every worker started from now on these objects (``WorkerArgs.carried``)."""
        self.carried = objects

    def prepare_respawns(self, config_blob: bytes) -> None:
        """Called once the first workers run, before any poolkit thread starts."""

    def death_signal_safe(self, long_lived_thread: bool) -> bool:
        """May a worker started now arm the parent-death signal (``parent_watch``)?

        Linux sends it when the *thread* that forked the worker ends: only safe when the
        calling thread outlives the worker. A method whose workers have another parent
        says so.
        """
        return long_lived_thread

    def close(self) -> None:
        """Release what the method holds; called after the last worker has exited."""


class MultiprocessingStartMethod(StartMethod):
    """A start method that is one of ``multiprocessing``'s, through its context."""

    def __init__(self, context: Optional[BaseContext] = None) -> None:
        super().__init__()
        self.context = context if context is not None else multiprocessing.get_context(self.name)

    @classmethod
    def available(cls) -> bool:
        return cls.name in multiprocessing.get_all_start_methods()

    def start_worker(self, args: WorkerArgs) -> WorkerProcess:
        # Not daemonic: tasks may start processes of their own, as under the stdlib pool.
        process = self.context.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(args,), name=f"poolkit-worker-{self.name}"
        )
        with self._starting():
            process.start()
        return process  # type: ignore[no-any-return]

    def _starting(self) -> ContextManager[None]:
        """Held while ``multiprocessing`` starts a process."""
        return contextlib.nullcontext()
