"""The start methods by name: which exist, which is the default, which one an executor uses.

Each start method is a :class:`~poolkit._start_methods.base.StartMethod` subclass in a
module of its own (``fork``, ``spawn``, ``forkserver``); this module only lists them. The
default policy is :data:`DEFAULT_ORDER`: the first available name in it is the default, and
``start_methods()`` lists the methods in that order, then any other registered ones in the
order they were registered. A method outside ``multiprocessing`` is one :func:`register`
call away (``docs/architecture.md``, "Adding a start method").
"""

from __future__ import annotations

from multiprocessing.context import BaseContext
from typing import Optional

from poolkit._start_methods.base import MultiprocessingStartMethod, StartMethod
from poolkit._start_methods.fork import ForkStartMethod
from poolkit._start_methods.forkserver import ForkserverStartMethod
from poolkit._start_methods.spawn import SpawnStartMethod

#: The default policy: ``forkserver`` where it exists, else ``spawn``; never ``fork`` by
#: default (forking a process that runs threads can deadlock the child; Python 3.14 made
#: the same choice for its default).
DEFAULT_ORDER: tuple[str, ...] = ("forkserver", "spawn", "fork")

_registered: dict[str, type[StartMethod]] = {}


def register(method: type[StartMethod]) -> type[StartMethod]:
    """Offer ``method`` under its ``name`` (usable as a class decorator).

    Raises:
        ValueError: another class is registered under that name (unregister it first).
    """
    current = _registered.get(method.name)
    if current is not None and current is not method:
        raise ValueError(
            f"start method {method.name!r} is already registered ({current.__qualname__})"
        )
    _registered[method.name] = method
    return method


def unregister(name: str) -> None:
    """Stop offering the start method ``name``; pools that use it already keep it.

    Raises:
        ValueError: no start method of that name is registered.
    """
    if _registered.pop(name, None) is None:
        raise ValueError(f"no start method {name!r} is registered")


for _builtin in (ForkserverStartMethod, SpawnStartMethod, ForkStartMethod):
    register(_builtin)


def start_methods() -> list[str]:
    """The start methods this platform offers, the default first.

    Example: ``['forkserver', 'spawn', 'fork']`` on Linux.
    """
    ordered = [name for name in DEFAULT_ORDER if name in _registered]
    ordered += [name for name in _registered if name not in DEFAULT_ORDER]
    return [name for name in ordered if _registered[name].available()]


def default_start_method() -> str:
    """``forkserver`` where it exists, else ``spawn``: never ``fork`` by default.

    Forking a process that runs threads can deadlock the child; Python 3.14 made the same
    choice for its default.
    """
    return start_methods()[0]


def resolve_start_method(
    start_method: Optional[str], mp_context: Optional[BaseContext]
) -> StartMethod:
    """The start method for an executor's ``start_method`` and ``mp_context`` arguments.

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
    available = start_methods()
    if method not in available:
        raise ValueError(
            f"unknown or unavailable start method {method!r}; "
            f"available here: {', '.join(available)}"
        )
    cls = _registered[method]
    if mp_context is not None and issubclass(cls, MultiprocessingStartMethod):
        return cls(mp_context)
    return cls()
