"""The worker's configuration, with the ``multiprocessing`` objects of ``initargs`` set aside.

A lock, a queue, a shared ``Value``, a pipe's connection or a manager's proxy can only be
pickled while ``multiprocessing`` starts a process: their semaphores and descriptors are
handed to that child there (``multiprocessing.context.assert_spawning``), and a copy made
outside that moment would be useless (a ``RawValue``) or refused (a ``Lock``). poolkit
pickles the initializer and ``initargs`` once, in the constructor, with cloudpickle; so
:func:`pack` replaces each such object by a persistent id, and the objects themselves travel
as one argument of the worker's process, as the standard library sends its ``initargs``:

- ``spawn`` and ``forkserver``: ``multiprocessing`` pickles that argument while it starts
  each worker, so every worker (first or replacement) gets fresh handles;
- ``fork``: nothing is pickled, the worker inherits the objects; the fork template (see
  ``_start_methods.fork``) inherits them once, at pool start, and its forks inherit them again.

:func:`check_travel` tries that pickling at construction against a stand-in process, so an
object that cannot reach a worker of the pool's start method fails there, named.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from poolkit._pickling import serialization as serialization

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from poolkit._start_methods.base import StartMethod

# The worker only unpacks (``unpack``): the multiprocessing modules that define the objects
# are imported by the parent's side alone, on first need, so a worker starts without them.


@functools.cache
def _classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(process classes, ctypes kinds, every candidate class), imported on first need."""
    import ctypes
    import multiprocessing.connection
    import multiprocessing.managers
    import multiprocessing.queues
    import multiprocessing.sharedctypes
    import multiprocessing.synchronize
    import socket

    # Objects that must be pickled by multiprocessing while it starts a process.
    # Connection and socket would pickle outside that moment too, through a resource sharer
    # that hands the descriptor out once; each worker needs its own copy. Manager proxies
    # pickle anywhere, but only the spawning pickler sends the manager's authkey.
    process = (
        multiprocessing.synchronize.SemLock,  # Lock, RLock, Semaphore, BoundedSemaphore
        multiprocessing.synchronize.Condition,
        multiprocessing.synchronize.Event,
        multiprocessing.synchronize.Barrier,
        multiprocessing.queues.Queue,  # JoinableQueue too
        multiprocessing.queues.SimpleQueue,
        multiprocessing.sharedctypes.SynchronizedBase,  # Value, Array
        multiprocessing.connection.Connection,
        multiprocessing.managers.BaseProxy,
        socket.socket,
    )
    # RawValue and RawArray are plain ctypes objects over a shared heap block, which a
    # plain pickle would copy by value; a c_int may as well be private.
    kinds = (ctypes._SimpleCData, ctypes.Array, ctypes.Structure)
    return process, kinds, (*process, *kinds)


#: Where the candidate classes of ``_classes`` are defined, with their names there.
_CANDIDATES = {
    "multiprocessing.synchronize": ("SemLock", "Condition", "Event", "Barrier"),
    "multiprocessing.queues": ("Queue", "SimpleQueue"),
    "multiprocessing.sharedctypes": ("SynchronizedBase",),
    "multiprocessing.connection": ("Connection",),
    "multiprocessing.managers": ("BaseProxy",),
    "socket": ("socket",),
    "ctypes": ("_SimpleCData", "Array", "Structure"),
}


def _loaded_candidates() -> tuple[type, ...]:
    """The candidate classes whose modules are imported already, importing none.

    An object of a class exists only once the class's module has been imported (a subclass
    imports its base's module too), so a configuration can hold no instance of a class
    whose module is not in ``sys.modules``. Importing them all to find out, as ``_classes``
    does, costs every pool's construction milliseconds for nothing: ``multiprocessing.managers``
    alone brings in ``multiprocessing.pool``, ``shared_memory``, ``secrets`` and ``hashlib``.
    """
    found: list[type] = []
    for module_name, names in _CANDIDATES.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found.extend(getattr(module, name) for name in names)
    return tuple(found)


def _is_process_object(obj: Any) -> bool:
    process, kinds, _ = _classes()
    if isinstance(obj, process):
        return True
    if not isinstance(obj, kinds):
        return False
    import multiprocessing.heap

    # ``_wrapper``: private attribute of multiprocessing.sharedctypes (3.9-3.13). Without
    # it, a raw shared value travels as a copy, as it did before.
    return isinstance(getattr(obj, "_wrapper", None), multiprocessing.heap.BufferWrapper)


class PackedConfig(NamedTuple):
    """The pickled configuration, and the objects it refers to by persistent id.

    An empty ``blob`` means the configuration itself is ``objects[0]``: under ``fork``,
    where a configuration that cannot be pickled is inherited whole.
    """

    blob: bytes
    objects: tuple[Any, ...]


class _Collector:
    """Gives each process object met while pickling an index into :attr:`objects`."""

    def __init__(self) -> None:
        self.objects: list[Any] = []
        self._index: dict[int, int] = {}
        self._decided: dict[type, bool] = {}
        self._candidates = _loaded_candidates()

    def persistent_id(self, obj: Any) -> Optional[int]:
        cls = type(obj)
        decided = self._decided.get(cls)
        if decided is None:
            # Classes like ``c_int`` hold both shared and private values: ask each object.
            decided = self._decided[cls] = issubclass(cls, self._candidates)
        if not decided or not _is_process_object(obj):
            return None
        index = self._index.get(id(obj))
        if index is None:
            index = self._index[id(obj)] = len(self.objects)
            self.objects.append(obj)
        return index


def pack(config: Any) -> PackedConfig:
    """Pickle ``config`` (a ``WorkerConfig``) with its process objects set aside.

    The C pickler first, cloudpickle where it refuses or the result names ``__main__``
    (as :func:`poolkit._pickling.serialization.dumps` decides).

    Raises:
        Exception: whatever the pickler raises (the caller names the argument).
    """
    if not serialization.by_value_modules_registered():
        collector = _Collector()
        try:
            blob = _dump(pickle.Pickler, config, collector)
        except Exception:
            pass  # cloudpickle may succeed where the C pickler cannot; it reports if not
        else:
            if b"__main__" not in blob:
                return PackedConfig(blob, tuple(collector.objects))
    import cloudpickle

    collector = _Collector()
    blob = _dump(cloudpickle.Pickler, config, collector)
    return PackedConfig(blob, tuple(collector.objects))


def _dump(base: type[pickle.Pickler], obj: Any, collector: _Collector) -> bytes:
    class DeferringPickler(base):  # type: ignore[valid-type, misc]
        def persistent_id(self, obj: Any) -> Optional[int]:
            return collector.persistent_id(obj)

    buffer = io.BytesIO()
    DeferringPickler(buffer, serialization.PROTOCOL).dump(obj)
    return buffer.getvalue()


class _Unpickler(pickle.Unpickler):
    def __init__(self, blob: bytes, objects: tuple[Any, ...]) -> None:
        super().__init__(io.BytesIO(blob))
        self._objects = objects

    def persistent_load(self, index: Any) -> Any:
        return self._objects[index]


def unpack(blob: bytes, objects: tuple[Any, ...]) -> Any:
    """The configuration pickled by :func:`pack`, its process objects put back."""
    if not blob:
        return objects[0]
    return _Unpickler(blob, objects).load()


# ------------------------------------------------------------ will they reach a worker?


class _ForkBound(Exception):
    """A semaphore that only a forked child can use (made by a ``fork`` context)."""


def _fork_bound_semaphore(obj: Any) -> bool:
    # A fork context's semaphore is unlinked at birth (multiprocessing.synchronize), so no
    # other process can open it by name; the C object then has no name. (Private attribute
    # ``_semlock``, 3.9-3.13; without it, nothing is fork-bound here, and the start of a
    # worker reports the failure instead.)
    import multiprocessing.synchronize

    if sys.platform == "win32" or not isinstance(obj, multiprocessing.synchronize.SemLock):
        return False
    semlock = getattr(obj, "_semlock", None)
    return semlock is not None and getattr(semlock, "name", "") is None


class _StandInProcess:
    """What the spawning pickler asks of the process being started, and nothing more."""

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> None:
        return None


def _try_spawning_pickle(obj: Any) -> None:
    """Pickle ``obj`` as ``multiprocessing`` does while it starts a process; raise if not.

    Raises:
        _ForkBound: ``obj`` holds a semaphore of a ``fork`` context.
        Exception: what ``multiprocessing``'s pickler raises.
    """
    import multiprocessing.context
    from multiprocessing.reduction import ForkingPickler

    class TravelPickler(ForkingPickler):
        def reducer_override(self, obj: Any) -> Any:
            if _fork_bound_semaphore(obj):
                raise _ForkBound
            return NotImplemented

    # The thread-local slot the popen modules fill while they pickle a process: in it, the
    # objects' reducers hand their descriptors to the stand-in, which keeps nothing.
    # Not in multiprocessing.context.__all__, but what every start method calls on CPython
    # 3.9-3.13: re-check get_spawning_popen/set_spawning_popen on a new version. Without
    # them nothing is found fork-bound here, and a worker's start reports such an object.
    set_spawning = getattr(multiprocessing.context, "set_spawning_popen", None)
    get_spawning = getattr(multiprocessing.context, "get_spawning_popen", None)
    if set_spawning is None or get_spawning is None:
        return
    previous = get_spawning()
    set_spawning(_StandInProcess())  # duck-typed, as intended
    try:
        TravelPickler(io.BytesIO(), serialization.PROTOCOL).dump(obj)
    finally:
        set_spawning(previous)


def fork_bound(objects: tuple[Any, ...]) -> list[Any]:
    """The objects that only a forked worker can use."""
    bound = []
    for obj in objects:
        try:
            _try_spawning_pickle(obj)
        except _ForkBound:
            bound.append(obj)
        except Exception:
            pass  # not fork-bound; check_travel reports it
    return bound


def travel_error(obj: Any, start_method: str) -> Optional[str]:
    """Why ``obj`` cannot reach a worker started with ``start_method``, or None."""
    if start_method == "fork":
        return None  # inherited, never pickled
    try:
        _try_spawning_pickle(obj)
    except _ForkBound:
        return (
            f"it belongs to a 'fork' context (multiprocessing's default before Python 3.14), "
            f"whose semaphores only forked processes can open; create it from "
            f"multiprocessing.get_context({start_method!r}), or use start_method='fork'"
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def describe(obj: Any) -> str:
    """``a multiprocessing.synchronize.Lock``: how an object is named in an error."""
    cls = type(obj)
    return f"a {cls.__module__}.{cls.__qualname__}"


def describe_carried(obj: Any) -> str:
    """How an object a start method carries is named in an error."""
    from poolkit._worker.main import WorkerConfig

    if isinstance(obj, WorkerConfig):
        return "the initializer and initargs (inherited, as they cannot be pickled)"
    return f"{describe(obj)} in initargs"


def locate(target: Any, initializer: Any, initargs: tuple[Any, ...]) -> str:
    """Where ``target`` (a process object) sits: ``initargs[2]`` or ``the initializer``."""
    for index, value in enumerate(initargs):
        if value is target or _holds(value, target):
            return f"initargs[{index}]"
    return "the initializer"


def _holds(value: Any, target: Any) -> bool:
    try:
        objects = pack(value).objects
    except Exception:
        return False
    return any(obj is target for obj in objects)


def unpicklable_part(initializer: Any, initargs: tuple[Any, ...]) -> str:
    """Which of the initializer and ``initargs`` cannot be pickled, named for an error."""
    for index, value in enumerate(initargs):
        try:
            pack(value)
        except Exception:
            return f"initargs[{index}] ({describe(value)})"
    return f"the initializer ({serialization.callable_name(initializer)})"


# ------------------------------------------------------------ the executor's entry point


def prepare(
    config: Any, start_method: Optional[str], mp_context: Optional[BaseContext]
) -> tuple[PackedConfig, StartMethod]:
    """Pickle a ``WorkerConfig`` for the workers, and pick the start method that can take it.

    With neither ``start_method`` nor ``mp_context``, a configuration that only forked
    workers can use (objects of a ``fork`` context, such as ``multiprocessing.Lock()``
    before Python 3.14 on Linux, or objects that cannot be pickled at all) makes the pool
    use ``fork``, as the standard library's pool does by default on those versions. Under
    ``fork`` nothing needs pickling: a configuration that cannot be pickled is inherited
    whole by every worker and by the fork template.

    Raises:
        TypeError: the initializer or an item of ``initargs`` cannot be pickled, or cannot
            be given to the workers of the start method (the message names it).
        ValueError: see ``resolve_start_method``.
    """
    import logging  # the parent's side only: a worker does not import logging

    from poolkit._start_methods.registry import resolve_start_method, start_methods

    logger = logging.getLogger(__name__)
    method = resolve_start_method(start_method, mp_context)
    may_fork = start_method is None and mp_context is None and "fork" in start_methods()
    try:
        packed = pack(config)
    except Exception as exc:
        if method.name != "fork" and not may_fork:
            part = unpicklable_part(config.initializer, config.initargs)
            raise TypeError(f"{part} cannot be pickled: {type(exc).__name__}: {exc}") from exc
        if method.name != "fork":
            logger.info("poolkit: initargs cannot be pickled (%s): the pool uses fork", exc)
            method = resolve_start_method("fork", None)
        packed = PackedConfig(b"", (config,))
    else:
        if packed.objects and method.name != "fork" and may_fork and fork_bound(packed.objects):
            logger.info("poolkit: initargs hold objects of a fork context: the pool uses fork")
            method = resolve_start_method("fork", None)
        for obj in packed.objects:
            why = method.travel_error(obj)
            if why is not None:
                where = locate(obj, config.initializer, config.initargs)
                raise TypeError(
                    f"{where} ({describe(obj)}) cannot be given to {method.name} workers: {why}"
                )
    method.carry(packed.objects)
    return packed, method
