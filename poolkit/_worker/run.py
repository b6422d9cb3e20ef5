"""Running one task in a worker: unpickle it, call it, pickle its result or its exception.

The serve loop (``poolkit._worker.main``) decides *which* task runs and keeps the shared slot
and the parent informed; this module only turns one :class:`TaskRecord` into the bytes of
its reply. A dask worker runs the same function (``poolkit._dask.runner``), so both backends
report results, exceptions and unpickling errors alike.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import time
from typing import Any, Callable, Optional

from poolkit._error_notes import add_note, arguments_repr, short_repr
from poolkit._pickling import serialization as serialization
from poolkit._pickling.main_namespace import adopt_main_functions
from poolkit._wire import buffers as _oob
from poolkit._wire.messages import (
    ChunkOutcome,
    MessageKind,
    TaskKind,
    TaskRecord,
    encode_message,
)

__all__ = ["describe_failure", "run_task"]

#: Unpickled functions kept for map chunks: at most this many, and this many bytes of
#: pickles, so large closures that are dropped do not stay alive in every worker.
_FN_CACHE_SIZE = 64
_FN_CACHE_BYTES = 8 << 20


def run_task(
    record: TaskRecord,
    files: Optional[_oob.Received],
    functions: dict[bytes, Callable[..., Any]],
    side: Optional[socket.socket],
) -> bytes:
    """Run one task record: its reply, encoded (a RESULT, or an ERROR with the traceback).

    Never raises for what the task does: unpickling, the call and pickling the result all
    end in a reply. Also what a dask worker runs (``poolkit._dask.runner``).
    """
    started = time.perf_counter()
    try:
        fn = _load_function(record.fn_blob, functions)
        buffers = None if files is None else files.take_buffers()
        arguments = serialization.loads(record.args_blob, buffers)
        del buffers  # the arguments own the mappings now
    except BaseException as exc:
        from poolkit._errors import DeserializationError  # rare: not imported by every worker

        error = DeserializationError(
            f"the task could not be unpickled in worker {os.getpid()}: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return describe_failure(MessageKind.ERROR, record.task_id, error, 0.0)
    try:
        value = _call(fn, record.kind, arguments, started)
    except BaseException as exc:
        return describe_failure(
            MessageKind.ERROR, record.task_id, exc, time.perf_counter() - started
        )
    del arguments  # only the result may still refer to the task's memory files
    duration = time.perf_counter() - started
    # A plain value (None, a number, a string) has no buffer to look for.
    may_have_buffers = side is not None and not serialization.plain_items((value,))
    out_of_band: Optional[list[pickle.PickleBuffer]] = [] if may_have_buffers else None
    try:
        payload = serialization.dumps(value, out_of_band)
    except BaseException as exc:
        salvaged = _salvage_chunk(value) if isinstance(value, ChunkOutcome) else None
        if salvaged is not None:
            return encode_message(MessageKind.RESULT, record.task_id, salvaged, duration=duration)
        # The pickler's own exception, as the stdlib pool reports it, plus where it happened.
        add_note(exc, f"(raised while pickling the result of the task, {short_repr(value)})")
        return describe_failure(MessageKind.ERROR, record.task_id, exc, duration)
    if not out_of_band:
        return encode_message(MessageKind.RESULT, record.task_id, payload, duration=duration)
    assert side is not None
    count = len(out_of_band)
    try:
        outgoing = _oob.Outgoing(out_of_band, files)
    except OSError:  # no memory file could be made: the pickle carries the buffers
        payload = serialization.dumps(value)
        return encode_message(MessageKind.RESULT, record.task_id, payload, duration=duration)
    # Dropped before the buffers are sent: a buffer that lies in a file this task received
    # goes back in that file only if nothing in the worker refers to it any more.
    del value
    try:
        table = tuple(outgoing.send(side))
    finally:
        outgoing.close()
    return encode_message(
        MessageKind.RESULT, record.task_id, payload, duration=duration, buffers=count, table=table
    )


def _call(fn: Callable[..., Any], kind: TaskKind, arguments: Any, started: float) -> Any:
    """Run the task's code: one call, or a chunk of calls."""
    if kind is TaskKind.CALL:
        args, kwargs = arguments
        return fn(*args, **kwargs)
    return _run_chunk(fn, arguments, started, kind is TaskKind.CHUNK)


def _run_chunk(
    fn: Callable[..., Any], chunk: list[Any], started: float, star: bool = True
) -> ChunkOutcome:
    """Call ``fn(*args)`` (``fn(arg)`` if not ``star``) for each item; stop at the first item
    that raises (see map)."""
    results: list[Any] = []
    try:
        # The loop runs in C. When an item raises, list.extend keeps the results appended
        # before it, so their count is the failing item's index.
        results.extend(itertools.starmap(fn, chunk) if star else map(fn, chunk))
    except BaseException as exc:
        index = len(results)
        failing = chunk[index]
        return ChunkOutcome(
            results,
            time.perf_counter() - started,
            index,
            _pickle_exception(exc),
            serialization.format_exception(exc),
            arguments_repr(failing) if star else short_repr(failing),
        )
    return ChunkOutcome(results, time.perf_counter() - started)


def _salvage_chunk(outcome: ChunkOutcome) -> Optional[bytes]:
    """A chunk whose results cannot all be pickled: fail it at the first such result.

    Returns the pickled outcome (results before that item, then the pickler's error as that
    item's exception), or None if even that cannot be pickled.
    """
    for index, result in enumerate(outcome.results):
        try:
            serialization.dumps(result)
        except BaseException as exc:
            add_note(exc, f"(raised while pickling the result, {short_repr(result)})")
            salvaged = ChunkOutcome(
                outcome.results[:index],
                outcome.seconds,
                index,
                _pickle_exception(exc),
                serialization.format_exception(exc),
            )
            try:
                return serialization.dumps(salvaged)
            except BaseException:
                return None
    return None


def _load_function(blob: Any, functions: dict[bytes, Callable[..., Any]]) -> Callable[..., Any]:
    # map() ships the same pickled function with every chunk: unpickle it once.
    key = bytes(blob)
    fn = functions.get(key)
    if fn is None:
        loaded: Callable[..., Any] = adopt_main_functions(serialization.loads(key))
        fn = loaded
        if len(key) > _FN_CACHE_BYTES // 4:
            return loaded  # a large closure: kept only while its task runs
        if len(functions) >= _FN_CACHE_SIZE or _cached_bytes(functions) + len(key) > (
            _FN_CACHE_BYTES
        ):
            functions.clear()
        functions[key] = fn
    return fn


def _cached_bytes(functions: dict[bytes, Callable[..., Any]]) -> int:
    return sum(map(len, functions))


def describe_failure(kind: MessageKind, task_id: int, exc: BaseException, duration: float) -> bytes:
    """Encode an exception with its traceback; never raises."""
    tb = serialization.format_exception(exc)
    payload = _pickle_exception(exc)
    return encode_message(kind, task_id, payload, duration=duration, traceback=tb)


def _pickle_exception(exc: BaseException) -> bytes:
    """``exc`` pickled, or a ``PicklingError`` that describes it if it cannot travel."""
    try:
        payload = serialization.dumps(exc)
        serialization.loads(payload)  # an exception that cannot be rebuilt is no use to send
    except BaseException as pickle_exc:
        substitute = pickle.PicklingError(
            f"the task raised {type(exc).__qualname__}: {short_repr(exc)}, "
            f"which could not be sent to the parent: {type(pickle_exc).__name__}: {pickle_exc}"
        )
        payload = serialization.dumps(substitute)
    return payload
