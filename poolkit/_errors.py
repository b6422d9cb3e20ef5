"""Exception classes, and the words poolkit uses to describe how a worker ended.

Every poolkit exception subclasses a standard-library exception that code written for
``concurrent.futures.ProcessPoolExecutor`` already catches, so switching executors never
turns a handled failure into an unhandled one.
"""

from __future__ import annotations

import signal
from concurrent import futures
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Optional

from poolkit._pickling import serialization as serialization

# Before 3.11 concurrent.futures.TimeoutError is its own class; since, it is the builtin.
_FUTURES_TIMEOUT: tuple[type, ...] = (
    () if issubclass(futures.TimeoutError, TimeoutError) else (futures.TimeoutError,)
)

__all__ = [
    "BrokenProcessPool",
    "DeserializationError",
    "RemoteTraceback",
    "TaskStopped",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "describe_exit",
]


class WorkerCrashedError(BrokenProcessPool):
    """The worker running a task died before the task finished.

    Only the future of the task that was running fails with this error; the pool starts a
    replacement worker and stays usable. The message names the worker's pid, how it ended
    (signal name or exit code) and the task's function.

    Attributes:
        pid: process id of the worker that died.
        exitcode: the worker's exit code; negative for a signal, as in ``Process.exitcode``.
        fn_name: qualified name of the function the task was running.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: Optional[int] = None,
        exitcode: Optional[int] = None,
        fn_name: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.fn_name = fn_name

    @property
    def signal_name(self) -> Optional[str]:
        """Name of the signal that killed the worker (``"SIGKILL"``), or None."""
        if self.exitcode is None or self.exitcode >= 0:
            return None
        return _signal_name(-self.exitcode)

    def __reduce__(self) -> Any:
        # Keyword-only attributes do not survive the default exception pickling.
        return (
            _rebuild_crash,
            (str(self), self.pid, self.exitcode, self.fn_name),
        )


def _rebuild_crash(
    message: str, pid: Optional[int], exitcode: Optional[int], fn_name: Optional[str]
) -> WorkerCrashedError:
    return WorkerCrashedError(message, pid=pid, exitcode=exitcode, fn_name=fn_name)


class TaskTimeoutError(TimeoutError, *_FUTURES_TIMEOUT):  # type: ignore[misc]
    """A task ran past its time limit; its worker was killed and replaced.

    Only that task's future fails with it. It is a ``TimeoutError`` (and, on Python 3.9 and
    3.10, also a ``concurrent.futures.TimeoutError``).
    """


class TaskStopped(CancelledError):
    """The task was stopped by :meth:`Executor.stop` while it ran (its worker was killed).

    A task stopped before it started is cancelled instead (``future.cancelled()`` is True).
    It is a ``concurrent.futures.CancelledError``, so code that handles cancellation
    handles it too.
    """


class DeserializationError(BrokenProcessPool):
    """A task could not be unpickled in its worker, or its result or exception in the parent.

    Only that task's future fails; the pool goes on. Its ``__cause__`` is the unpickling
    error (with the worker's traceback where it happened in a worker). It subclasses
    ``BrokenProcessPool`` because that is what ``ProcessPoolExecutor`` raises in this case.
    """


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in a worker.

    poolkit sets it as the ``__cause__`` of the exception that ``Future.result()`` re-raises,
    so the printed traceback shows where in the worker the task failed.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


def safe_str(exc: BaseException, how: Callable[[object], str] = str) -> str:
    """``str(exc)`` (or ``how(exc)``), or a stand-in when the exception's own code fails."""
    try:
        return how(exc)
    except BaseException:  # user code: whatever it raises, a message is still made
        return f"<{type(exc).__qualname__}: str() failed>"


_CAUSE = BaseException.__dict__["__cause__"]  # the slot itself, past any __setattr__


def set_cause(exc: BaseException, cause: BaseException) -> None:
    """Set ``exc.__cause__`` even where the class refuses attribute assignment.

    A frozen dataclass exception raises ``FrozenInstanceError`` from ``__setattr__``; the
    slot's own descriptor bypasses it. If even that fails, the exception stays without it.
    """
    try:
        _CAUSE.__set__(exc, cause)
    except BaseException:
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(exitcode: Optional[int]) -> str:
    """Describe how a process ended, for error messages.

    ``-9`` reads "was killed by SIGKILL", ``3`` reads "exited with code 3".
    """
    if exitcode is None:
        return "ended (exit status unknown)"
    if exitcode < 0:
        return f"was killed by {_signal_name(-exitcode)}"
    return f"exited with code {exitcode}"


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
