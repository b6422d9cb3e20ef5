"""What ``map`` and ``starmap`` use of the executor they run on: the :class:`MapHost` contract.

Both executors (the local pool and the dask backend) run the same map code. It reaches them
only through the members listed here, so an executor that provides them (and a new backend
would) gets ``map`` as it is. ``poolkit._executor_base.TaskFrontend`` implements all of
them; each executor module states, in a line mypy checks, that its class is a MapHost.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    from poolkit._map.driver import MapRun
    from poolkit._pool.tasks import TaskState
    from poolkit._wire.buffers import HeldBuffers


@runtime_checkable
class MapHost(Protocol):
    """The executor a map runs on, as the map code sees it."""

    @property
    def max_workers(self) -> int:
        """Tasks the executor runs at once: sizes the chunks and how many are in flight."""
        ...

    @property
    def _max_tasks_per_child(self) -> Optional[int]:
        """Tasks a worker runs before it is replaced, if bounded: chunks stay at one item."""
        ...

    @property
    def _task_ids(self) -> Iterator[int]:
        """The ids of new tasks (``next()`` gives the next one)."""
        ...

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """The executor's ``submit``: map calls it only where a program replaced it."""
        ...

    def _check_open(self) -> None:
        """Raise as ``submit`` would if the executor cannot take tasks (shut down, broken)."""
        ...

    def _function_blob(self, fn: Callable[..., Any]) -> bytes:
        """``fn`` pickled (cached where it may be); raises what pickling raises."""
        ...

    def _pickle_arguments(self, arguments: Any) -> tuple[bytes, Optional[HeldBuffers]]:
        """A chunk's arguments pickled, and the memory files of their large buffers."""
        ...

    def _enqueue_chunk(self, task: TaskState) -> None:
        """Queue a chunk's task with the executor's per-chunk defaults (its time limit).

        Raises what ``submit`` raises for a closed executor: ``BrokenProcessPool`` if it is
        broken, else ``RuntimeError`` (shut down, or the interpreter is exiting).
        """
        ...

    def _register_map(self, run: MapRun) -> None:
        """Remember a map still reading its input, to finish it at ``shutdown``."""
        ...
