"""Give functions from the parent's ``__main__`` one shared namespace in the worker.

Functions defined in ``__main__`` travel by value (cloudpickle), and each arrives with its
own copy of the globals it uses. Code written for ``ProcessPoolExecutor`` expects them to
share the worker's module globals instead: an initializer sets ``_connection`` and later
tasks read it. So the worker rebinds every such function to its own ``__main__``
namespace. Of the globals a function brought, functions always replace the worker's (the
newest code wins, as a notebook user who edits a cell expects), while other values are only
added where the name is not there yet (state the worker created itself, in the initializer
or an earlier task, wins, as it would with functions looked up by reference).
"""

from __future__ import annotations

import sys
import types
from typing import Any, Optional

_MAIN_MODULES = ("__main__", "__mp_main__")


def adopt_main_functions(obj: Any) -> Any:
    """Return ``obj``, rebound to the worker's ``__main__`` namespace if it came from there."""
    if not isinstance(obj, types.FunctionType) or obj.__module__ not in _MAIN_MODULES:
        return obj
    main = sys.modules.get("__main__")
    if main is None:
        return obj
    return _adopt(obj, _namespace_of(main), {})


def _namespace_of(main: types.ModuleType) -> dict[str, Any]:
    # Under spawn and forkserver the worker ran the script with runpy, whose functions keep
    # the globals dict the script ran in, a different dict from vars(main): join theirs.
    for value in list(vars(main).values()):
        if isinstance(value, types.FunctionType) and value.__module__ in _MAIN_MODULES:
            return value.__globals__
    return vars(main)


def _adopt(
    fn: types.FunctionType, namespace: dict[str, Any], done: dict[int, types.FunctionType]
) -> types.FunctionType:
    if fn.__globals__ is namespace:
        return fn
    adopted: Optional[types.FunctionType] = done.get(id(fn))
    if adopted is not None:
        return adopted
    adopted = types.FunctionType(
        fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__
    )
    adopted.__kwdefaults__ = fn.__kwdefaults__
    adopted.__qualname__ = fn.__qualname__
    adopted.__module__ = fn.__module__
    adopted.__doc__ = fn.__doc__
    adopted.__dict__.update(fn.__dict__)
    done[id(fn)] = adopted
    for name, value in fn.__globals__.items():
        if isinstance(value, types.FunctionType) and value.__module__ in _MAIN_MODULES:
            namespace[name] = _adopt(value, namespace, done)  # helpers share it too
        elif name not in namespace:
            namespace[name] = value
    return adopted
