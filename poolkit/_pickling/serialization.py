"""Serialization: cloudpickle's reach at the C pickler's speed, and remote tracebacks.

``dumps`` first tries the C pickler. It falls back to cloudpickle when the C pickler
refuses the object (lambdas, closures, local classes) or when its output names ``__main__``:
a reference to ``__main__.f`` cannot be resolved in a worker that runs another ``__main__``
(``python -c``, a REPL, a notebook), so such objects travel by value. Plain data therefore
never pays for cloudpickle's Python-level reducer hooks.
"""

from __future__ import annotations

import pickle
import sys
import traceback
import types
from collections.abc import Iterable
from typing import Any, Callable, Optional

PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAIN_MARKER = b"__main__"


def by_value_modules_registered() -> bool:
    # cloudpickle.register_pickle_by_value() asks for whole modules to travel by value;
    # the C pickler would ship them by reference, so honour the registration. (Nothing is
    # registered while cloudpickle has not even been imported.)
    module = sys.modules.get("cloudpickle.cloudpickle")
    return bool(getattr(module, "_PICKLE_BY_VALUE_MODULES", None))


#: Buffers smaller than this stay inside the pickle (see ``_oob``): below it, creating,
#: mapping and unmapping a memory file costs more than the pipe.
OUT_OF_BAND_MIN = 256 * 1024
#: At most this many buffers of one pickle go out of band (a socket message carries at most
#: 253 descriptors); the rest stay inside.
OUT_OF_BAND_MAX_COUNT = 64


def dumps(obj: Any, out_of_band: Optional[list[pickle.PickleBuffer]] = None) -> bytes:
    """Pickle ``obj`` for another process; raises what the pickler raises on failure.

    If ``out_of_band`` is a list, buffers of at least :data:`OUT_OF_BAND_MIN` bytes that
    ``obj`` offers under protocol 5 (numpy arrays, bytearrays, PickleBuffers) are not
    copied into the pickle but appended to it, in the order :func:`loads` needs them.
    """
    callback = None if out_of_band is None else _collect_large(out_of_band)
    if not by_value_modules_registered():
        try:
            data = pickle.dumps(obj, PROTOCOL, buffer_callback=callback)
        except Exception:
            pass  # cloudpickle may succeed where the C pickler cannot; it reports if not
        else:
            if _MAIN_MARKER not in data:
                return data
        if out_of_band:
            out_of_band.clear()  # the attempt is discarded, and its buffers with it
    # Imported on first need: plain data and module-level functions never need it, and a
    # worker that never pickles by value saves the import time and memory.
    import cloudpickle

    by_value: bytes = cloudpickle.dumps(obj, PROTOCOL, buffer_callback=callback)
    return by_value


#: Types whose values never offer a buffer to pickle protocol 5.
_PLAIN_TYPES = frozenset({int, float, complex, bool, str, bytes, type(None)})


def plain_items(values: Iterable[Any]) -> bool:
    """True if every value is of a plain type: nothing in them could go out of band.

    A loop in Python: worth it for a few values, where it saves the pickler's buffer hook.
    """
    plain = _PLAIN_TYPES
    for value in values:  # noqa: SIM110 (a loop is faster than all() over a generator)
        if type(value) not in plain:
            return False
    return True


def _collect_large(collected: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    def in_band(buffer: pickle.PickleBuffer) -> bool:
        # The pickler copies a buffer into the pickle when this returns True.
        try:
            size = buffer.raw().nbytes
        except BufferError:  # not contiguous
            return True
        if size < OUT_OF_BAND_MIN or len(collected) >= OUT_OF_BAND_MAX_COUNT:
            return True
        collected.append(buffer)
        return False

    return in_band


def is_reference(obj: Any, blob: bytes) -> bool:
    """True if ``blob`` is a by-reference pickle of a function or class (safe to reuse)."""
    kinds = (types.FunctionType, types.BuiltinFunctionType, type)
    return isinstance(obj, kinds) and b"cloudpickle" not in blob


def loads(data: Any, buffers: Optional[list[Any]] = None) -> Any:
    """Unpickle bytes produced by :func:`dumps` (any bytes-like object), with the
    out-of-band ``buffers`` it was given, in order."""
    return pickle.loads(data, buffers=buffers)


def callable_name(fn: Callable[..., Any]) -> str:
    """A readable name for ``fn`` in error messages: ``module.qualname`` where it has one."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        inner = getattr(fn, "func", None)  # functools.partial
        if inner is not None and inner is not fn:
            return f"partial({callable_name(inner)})"
        return repr(fn)
    module = getattr(fn, "__module__", None)
    if module and module not in ("builtins", "__main__", "__mp_main__"):
        return f"{module}.{name}"
    return str(name)


def explain_unpicklable(
    fn_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: BaseException
) -> str:
    """Name the argument of a task that cannot be pickled, for the future's error message."""
    for position, value in enumerate(args):
        try:
            dumps(value)
        except (Exception, SystemExit) as exc:
            return f"cannot pickle argument {position} of {fn_name}(): {value!r}: {exc}"
    for key, value in kwargs.items():
        try:
            dumps(value)
        except (Exception, SystemExit) as exc:
            return f"cannot pickle keyword argument {key!r} of {fn_name}(): {value!r}: {exc}"
    return f"cannot pickle task {fn_name}(): {error}"


def format_exception(exc: BaseException) -> str:
    """The full formatted traceback of ``exc``, chained causes included."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
