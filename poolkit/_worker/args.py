"""What a worker process is started with: one record, ``worker_main``'s only argument.

Built by the parent (``WorkerHandle.start``) for every start method, and by the fork
template for the workers it forks (from the descriptors the parent sends it). Fields are
read by name: nothing unpacks it by position. Every worker unpickles or inherits one, so
this module imports nothing at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from poolkit._wire.slots import RunningSlot
    from poolkit._worker.parent_watch import ParentLink


class WorkerArgs(NamedTuple):
    """The worker's ends of its channel, and what it needs to know at start."""

    inbox: Connection  #: task batches from the parent (the worker reads, blocking)
    outbox: Connection  #: the worker's messages to the parent
    #: The socket that carries the memory files of large buffers (``buffers``), or None
    #: where descriptors cannot be passed.
    side: Optional[Connection]
    running: RunningSlot  #: memory shared with the parent: which task runs, claims, skips
    config_blob: bytes  #: the pickled ``WorkerConfig`` (``initargs.pack``)
    parent: ParentLink  #: the pool's parent process, which the worker must not outlive
    #: The ``multiprocessing`` objects of ``initargs``, which ``config_blob`` refers to by
    #: persistent id (``initargs``).
    carried: tuple[Any, ...] = ()
