"""Every message poolkit builds for an exception it raises, next to the classes in ``_errors``.

These builders make the exceptions a task's future fails with (or the executor raises),
with their words in one place: how a worker ended, why a task did not run, what could not be
pickled, where in a map an item failed, what a stopped or timed-out task was doing, what the
dask cluster did. The classes themselves, and the small helpers every message uses
(``describe_exit``, ``safe_str``, ``set_cause``), are in :mod:`poolkit._errors`; short reprs
and exception notes in :mod:`poolkit._error_notes`, which the worker uses without either.
"""

from __future__ import annotations

import pickle
import sys
from typing import TYPE_CHECKING, Any, Optional

from poolkit._error_notes import add_note
from poolkit._errors import (
    BrokenProcessPool,
    DeserializationError,
    RemoteTraceback,
    TaskStopped,
    TaskTimeoutError,
    WorkerCrashedError,
    describe_exit,
    safe_str,
    set_cause,
)
from poolkit._pickling import serialization as serialization

if TYPE_CHECKING:
    from poolkit._pool.tasks import TaskState
    from poolkit._wire.messages import WorkerMessage


def crash_error(
    pid: int,
    exitcode: Optional[int],
    fn_name: str,
    forced_by: Optional[str],
    fault: Optional[str] = None,
) -> WorkerCrashedError:
    """The error of the task worker ``pid`` was running when it ended with ``exitcode``.

    ``forced_by`` names the call that signalled the workers, if one did; ``fault`` what
    the pool found on the worker's result pipe, if it killed the worker for that.
    """
    how = describe_exit(exitcode)
    if forced_by is not None:
        how = f"{how} by {forced_by}"
    elif fault is not None:
        how = f"was killed by the pool (its result pipe {fault}); it {how}"
    return WorkerCrashedError(
        f"worker process {pid} {how} while running {fn_name}()",
        pid=pid,
        exitcode=exitcode,
        fn_name=fn_name,
    )


def collateral_error(
    pid: int, exitcode: Optional[int], fn_name: str, fault: Optional[str], guilty_fn: str
) -> WorkerCrashedError:
    """The error of a task that had started on worker ``pid`` after another task of that
    worker (``guilty_fn``) wrote into its result pipe: the pool killed the worker, and this
    task's answer, behind the stray bytes, could not be read."""
    return WorkerCrashedError(
        f"worker process {pid} was killed by the pool while running {fn_name}(): its result "
        f"pipe {fault}, after an earlier task of that worker ({guilty_fn}()) ran, so the "
        f"answer of {fn_name}() could not be read; it had started, so it is not run again",
        pid=pid,
        exitcode=exitcode,
        fn_name=fn_name,
    )


def name_exception(exc: Optional[BaseException]) -> str:
    """`` (MemoryError)`` or `` (OSError: message)`` to follow a death's description."""
    if exc is None:
        return ""
    detail = safe_str(exc)
    return f" ({type(exc).__name__}{': ' + detail if detail else ''})"


def unstarted_crash_error(
    pid: int,
    exitcode: Optional[int],
    fn_name: str,
    deaths: int,
    cause: Optional[BaseException] = None,
) -> WorkerCrashedError:
    """The error of a task that ``deaths`` workers in turn died holding, before it started.

    Something in the task itself most likely kills them, such as an argument too large for
    the memory a worker may use, so it is failed instead of being sent to yet another worker.
    ``cause`` is what the last worker's loop raised, if it could say (its ``__cause__``).
    """
    how = describe_exit(exitcode) + name_exception(cause)
    error = WorkerCrashedError(
        f"worker process {pid} {how} before it started {fn_name}(); "
        f"{deaths} workers in turn died holding this task, so it is not sent to another",
        pid=pid,
        exitcode=exitcode,
        fn_name=fn_name,
    )
    if cause is not None:
        set_cause(error, cause)
    return error


def not_run_error(broken: Optional[BaseException], forced_by: Optional[str]) -> BrokenProcessPool:
    """The error of a task that never ran: the pool broke, was force-stopped, or stopped."""
    if broken is not None:
        error = BrokenProcessPool(f"the task did not run: {broken}")
        error.__cause__ = broken.__cause__
        return error
    if forced_by is not None:
        return BrokenProcessPool(f"the task did not run: the workers were stopped by {forced_by}")
    return BrokenProcessPool("the task did not run: the executor stopped first")


def rebuild_exception(message: WorkerMessage, what: str) -> BaseException:
    """The exception a worker sent in an ERROR message, with the worker's traceback as its
    ``__cause__`` (see :func:`remote_exception`, which never raises either)."""
    return remote_exception(message.payload, message.buffers, message.traceback, what)


def remote_exception(
    payload: Any, buffers: Optional[list[Any]], traceback: str, what: str
) -> BaseException:
    """The exception a worker sent (pickled in ``payload``, with its out-of-band
    ``buffers``), with the worker's ``traceback`` as its ``__cause__``.

    Never raises: an exception that cannot be unpickled (``what`` names it in the message)
    becomes a :class:`DeserializationError`; one that refuses its ``__cause__`` (a frozen
    dataclass) is kept without it.
    """
    remote = RemoteTraceback(traceback)
    exc: BaseException
    try:
        exc = serialization.loads(payload, buffers)
        if not isinstance(exc, BaseException):
            raise TypeError(f"expected an exception, got {type(exc).__name__}")
    except BaseException as unpickling_error:
        exc = DeserializationError(
            f"{what} could not be unpickled: {type(unpickling_error).__name__}: "
            f"{safe_str(unpickling_error)}"
        )
    set_cause(exc, remote)
    return exc


def map_shut_down_error(refusal: BaseException) -> RuntimeError:
    """What a map raises once its results in flight are read, when the executor refused its
    next chunk (``refusal``) because it was shut down."""
    return RuntimeError(
        f"{refusal}: the executor was shut down while this map still had input "
        "(map reads its input as results are consumed; consume them before "
        "shutdown, e.g. inside the `with` block, or pass buffersize=None to "
        "submit everything at the call)"
    )


# ------------------------------------------------------------------ refusing new tasks


def still_broken(broken: BaseException) -> BrokenProcessPool:
    """What ``submit`` and ``map`` raise once the pool is broken (``broken`` says why)."""
    error = BrokenProcessPool(str(broken))
    error.__cause__ = broken.__cause__
    return error


def after_shutdown(*, interpreter: bool = False) -> RuntimeError:
    """What ``submit`` and ``map`` raise after ``shutdown`` (or at interpreter exit): the
    standard library's words."""
    if interpreter:
        return RuntimeError("cannot schedule new futures after interpreter shutdown")
    return RuntimeError("cannot schedule new futures after shutdown")


# ------------------------------------------------------------------------------- map


def unpicklable_function(fn_name: str, exc: BaseException) -> pickle.PicklingError:
    """The error of every item of a map whose function cannot be pickled."""
    error = pickle.PicklingError(f"cannot pickle the function {fn_name}: {exc}")
    error.__cause__ = exc
    return error


def unpicklable_map_item(fn_name: str, index: int, exc: BaseException) -> pickle.PicklingError:
    """The error of map item ``index``, whose arguments cannot be pickled."""
    error = pickle.PicklingError(
        f"cannot pickle the arguments of {fn_name}() for map item {index}: {exc}"
    )
    error.__cause__ = exc
    return error


def unpicklable_map_chunk(fn_name: str) -> pickle.PicklingError:
    """The error of a chunk whose items pickle one by one but not together."""
    return pickle.PicklingError(f"cannot pickle the arguments of {fn_name}()")


def chunk_place(start: int, count: int) -> str:
    """Where a chunk that failed as a whole lies in the map's input, for its note."""
    if count == 1:
        return f"map item {start}"
    return f"map items {start} to {start + count - 1} (a chunk that failed as a whole)"


def map_item_error(payload: bytes, traceback: str, index: int, call: str) -> BaseException:
    """The exception map item ``index`` raised in its worker (``call`` shows the call), as
    ``remote_exception`` rebuilds it, marked with its place (see ``mark_map_error``)."""
    where = f"map item {index}: {call}"
    if sys.version_info < (3, 11):
        # No notes before 3.11: say it in the worker's traceback, which is printed.
        traceback = f"{traceback.rstrip()}\n\n(poolkit: raised by {where})\n"
    error = remote_exception(payload, None, traceback, f"the exception raised by {call}")
    mark_map_error(error, index, where)
    return error


def mark_map_error(error: BaseException, index: int, where: str) -> None:
    """Record which map item failed: a ``map_index`` attribute, and a note on 3.11+."""
    try:
        error.map_index = index  # type: ignore[attr-defined]
    except Exception:
        pass  # an exception class that refuses attributes: the note and traceback remain
    add_note(error, f"(poolkit: raised by {where})")


# ------------------------------------------------------------------------------ dask


def dask_thread_failed(exc: BaseException) -> BrokenProcessPool:
    """The error of every task in flight when poolkit's dask thread failed (a bug)."""
    return BrokenProcessPool(f"the poolkit dask thread failed: {exc!r}")


def dask_fetch_failed(fn_name: str, exc: BaseException) -> BrokenProcessPool:
    """The error of a task that finished on the cluster but whose result could not be fetched."""
    error = BrokenProcessPool(
        f"the result of {fn_name}() could not be fetched from the dask cluster: "
        f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


def dask_run_failed(fn_name: str, exc: BaseException) -> BaseException:
    """The error of a task dask itself failed (poolkit's runner never raises)."""
    if type(exc).__name__ == "KilledWorker":
        return dask_worker_crashed(fn_name, exc)
    message = f"dask could not run {fn_name}(): {type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError) and "poolkit" in str(exc):
        message += " (poolkit must be installed on every dask worker)"
    error = BrokenProcessPool(message)
    error.__cause__ = exc
    return error


def dask_worker_crashed(fn_name: str, killed: BaseException) -> WorkerCrashedError:
    """``KilledWorker`` as poolkit's error: which dask worker died, running what."""
    worker = getattr(killed, "last_worker", None)
    address = getattr(worker, "address", None) or "?"
    pid = getattr(worker, "pid", None)
    allowed = getattr(killed, "allowed_failures", 0) or 0
    who = f"dask worker {address}" + (f" (pid {pid})" if pid else "")
    message = f"{who} died while running {fn_name}()"
    if allowed:
        message += (
            f", after dask had re-run it on {allowed} other worker(s) that died too "
            f"(distributed.scheduler.allowed-failures={allowed})"
        )
    error = WorkerCrashedError(message, pid=pid if isinstance(pid, int) else None, fn_name=fn_name)
    error.__cause__ = killed
    return error


def dask_scheduler_lost(address: str, reason: str) -> BrokenProcessPool:
    """The error of every task in flight when the client lost its scheduler; the executor
    is broken."""
    return BrokenProcessPool(
        f"lost the connection to the dask scheduler at {address} "
        f"({reason}); the task's outcome is unknown"
    )


def dask_cancelled(reason: str) -> BrokenProcessPool:
    """The error of a task dask cancelled behind poolkit's back for another ``reason``."""
    return BrokenProcessPool(f"dask cancelled the task ({reason}); it did not complete")


def dispatcher_failed(exc: BaseException) -> BrokenProcessPool:
    """The pool's error when its dispatcher loop itself raised."""
    error = BrokenProcessPool(f"the poolkit dispatcher failed: {safe_str(exc, repr)}")
    set_cause(error, exc)
    return error


def replacement_failed(exc: BaseException) -> BrokenProcessPool:
    """The pool's error when a replacement worker could not be started."""
    error = BrokenProcessPool(f"could not start a replacement worker: {safe_str(exc, repr)}")
    set_cause(error, exc)
    return error


def initializer_failed(pid: int, cause: BaseException) -> BrokenProcessPool:
    """The pool's error when a worker's initializer raised ``cause``."""
    error = BrokenProcessPool(
        f"the initializer failed in worker {pid} "
        f"({type(cause).__name__}: {safe_str(cause)}); the pool cannot start workers"
    )
    set_cause(error, cause)
    return error


def startup_failed_reason(
    pid: int, exitcode: Optional[int], in_a_row: int, start_method: str
) -> str:
    """Why the pool gives up after ``in_a_row`` workers ended by themselves while starting."""
    hint = ""
    if start_method != "fork":  # fork alone does not import the main module again
        hint = (
            f" Under {start_method}, a script must create the executor under "
            "`if __name__ == '__main__':`."
        )
    return (
        f"worker {pid} {describe_exit(exitcode)} while starting up (in the initializer, "
        f"or before it; its stderr says why), {in_a_row} times in a row; the pool "
        f"cannot start workers.{hint}"
    )


def result_unpickling_failed(fn_name: str, pid: int, exc: BaseException) -> DeserializationError:
    """A task's result from worker ``pid`` could not be unpickled in the parent."""
    error = DeserializationError(
        f"the result of {fn_name}() from worker {pid} could not be unpickled: "
        f"{type(exc).__name__}: {safe_str(exc)}"
    )
    set_cause(error, exc)
    return error


def stopped_error(task: TaskState, pid: int, killed: bool) -> BaseException:
    """The error of a task stopped by ``Executor.stop()``."""
    how = f"its worker (pid {pid}) was killed" if killed else "it never ran"
    return TaskStopped(f"{task.fn_name}() was stopped by Executor.stop(); {how}")


def timeout_error(task: TaskState, pid: int, killed: bool) -> BaseException:
    """The error of a task that ran past its time limit."""
    how = f"its worker (pid {pid}) was killed" if killed else "it never started"
    return TaskTimeoutError(
        f"{task.fn_name}() exceeded its time limit of {task.timeout:g} s; {how}"
    )
