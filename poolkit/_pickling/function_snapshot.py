"""When a function pickled by value may reuse its last pickle: a snapshot of what it captures.

A function defined in ``__main__`` (a script, a notebook, ``python -c``) travels by value
through cloudpickle: its code, defaults, closure cells, and the globals it names are pickled
on every ``submit``, about 45 µs for a small function. Reusing the last pickle is correct only
while everything cloudpickle would capture is unchanged. :func:`take` records, for a plain
function, the identity of each such thing, and only when each is immutable (numbers,
strings, bytes, tuples of those), pickled by reference (modules, and functions and classes
of importable modules) or itself a function that qualifies: an identical object then
pickles identically. A snapshot :meth:`~Snapshot.matches` the function while every name it
uses is still bound to the same object (or still unbound) and its attributes are the same
objects. Anything else (a list or dict it reads, a class defined in ``__main__``, attributes
set on the function) means no snapshot, and the function is pickled on every call as before.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable, Optional

#: Types whose values cannot change: an identical object pickles identically.
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), range)
#: How deep helper functions of a function are followed (a helper calling a helper ...).
_MAX_DEPTH = 4
_UNBOUND = object()


class Snapshot:
    """What a by-value pickle of one function captured, by identity."""

    __slots__ = ("_attributes", "_cells", "_globals", "_helpers", "_namespace")

    def __init__(
        self,
        attributes: tuple[Any, ...],
        cells: tuple[Any, ...],
        namespace: dict[str, Any],
        globals_: tuple[tuple[str, Any], ...],
        helpers: tuple[tuple[Callable[..., Any], Snapshot], ...],
    ) -> None:
        self._attributes = attributes
        self._cells = cells
        self._namespace = namespace
        self._globals = globals_
        self._helpers = helpers

    def matches(self, fn: Callable[..., Any]) -> bool:
        """Would pickling ``fn`` now give the same bytes as when this was taken?"""
        if not _same(_attributes(fn), self._attributes):
            return False
        if not _same(_cell_contents(fn), self._cells):
            return False
        namespace = self._namespace
        for name, value in self._globals:
            if namespace.get(name, _UNBOUND) is not value:
                return False
        return all(helper.matches(function) for function, helper in self._helpers)


def take(fn: Callable[..., Any]) -> Optional[Snapshot]:
    """A snapshot of ``fn``, or None if what it captures could change unseen."""
    return _take(fn, _MAX_DEPTH, set())


def _take(fn: Any, depth: int, seen: set[int]) -> Optional[Snapshot]:
    if type(fn) is not types.FunctionType or depth <= 0 or id(fn) in seen:
        return None  # a helper that calls back into its caller: give up (rare)
    seen.add(id(fn))
    if fn.__dict__:
        return None  # attributes set on the function: cloudpickle takes them too
    attributes = _attributes(fn)
    if not all(_stable(value) for value in (*(fn.__defaults__ or ()), *_kwdefault_values(fn))):
        return None
    cells = _cell_contents(fn)
    helpers: list[tuple[Callable[..., Any], Snapshot]] = []
    if not _all_stable(cells, helpers, depth, seen):
        return None
    namespace = fn.__globals__
    captured = []
    for name in _global_names(fn.__code__):
        value = namespace.get(name, _UNBOUND)
        if value is not _UNBOUND and not _all_stable((value,), helpers, depth, seen):
            return None
        captured.append((name, value))
    return Snapshot(attributes, cells, namespace, tuple(captured), tuple(helpers))


def _all_stable(
    values: tuple[Any, ...],
    helpers: list[tuple[Callable[..., Any], Snapshot]],
    depth: int,
    seen: set[int],
) -> bool:
    for value in values:
        if _stable(value):
            continue
        if type(value) is types.FunctionType and not _by_reference(value):
            helper = _take(value, depth - 1, seen)
            if helper is None:
                return False
            helpers.append((value, helper))
            continue
        return False
    return True


def _stable(value: Any) -> bool:
    """Immutable, or pickled by reference: identity says everything about its pickle."""
    kind = type(value)
    if kind in _IMMUTABLE:  # exact types: a subclass may carry mutable state
        return True
    if kind is tuple or kind is frozenset:
        return all(_stable(item) for item in value)
    if kind is types.ModuleType:
        return bool(value.__name__ != "__main__")
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return _by_reference(value)
    return False


def _by_reference(obj: Any) -> bool:
    """cloudpickle's rule: a function or class travels as a name if importing its module
    and looking up its qualified name finds this very object; otherwise by value."""
    module_name = getattr(obj, "__module__", None)
    if not module_name or module_name == "__main__":
        return False
    target: Any = sys.modules.get(module_name)
    for part in getattr(obj, "__qualname__", "<lambda>").split("."):
        target = getattr(target, part, _UNBOUND)
        if target is _UNBOUND:
            return False
    return target is obj


def _attributes(fn: Any) -> tuple[Any, ...]:
    """Everything of the function object itself that cloudpickle pickles, flat."""
    found = [fn.__code__, fn.__defaults__, fn.__name__, fn.__qualname__, fn.__module__]
    found.append(fn.__doc__)
    for mapping in (fn.__kwdefaults__, fn.__annotations__):
        if mapping:  # a dict the user may change in place: its items, not the dict
            for key, value in mapping.items():
                found += (key, value)
        found.append(None)  # separates the two
    return tuple(found)


def _kwdefault_values(fn: Any) -> tuple[Any, ...]:
    return tuple(fn.__kwdefaults__.values()) if fn.__kwdefaults__ else ()


def _cell_contents(fn: Any) -> tuple[Any, ...]:
    if not fn.__closure__:
        return ()
    try:
        return tuple(cell.cell_contents for cell in fn.__closure__)
    except ValueError:  # an empty cell (a name assigned later in the enclosing function)
        return (_UNBOUND,)  # never stable: no snapshot, and never matches one


def _same(left: tuple[Any, ...], right: tuple[Any, ...]) -> bool:
    return len(left) == len(right) and all(a is b for a, b in zip(left, right))


_names_cache: dict[types.CodeType, tuple[str, ...]] = {}


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name the code (and the code nested in it) may look up as a global."""
    names = _names_cache.get(code)
    if names is None:
        found: set[str] = set()
        stack = [code]
        while stack:
            current = stack.pop()
            found.update(current.co_names)
            stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
        names = tuple(sorted(found))
        if len(_names_cache) > 256:
            _names_cache.clear()
        _names_cache[code] = names
    return names
