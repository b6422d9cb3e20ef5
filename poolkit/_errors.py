"""Exception classes, and the helpers every message poolkit builds uses.

Every poolkit exception subclasses a standard-library exception that code written for
``concurrent.futures.ProcessPoolExecutor`` already catches, so switching executors never
turns a handled failure into an unhandled one.

The messages themselves are built next door, in :mod:`poolkit._error_messages`: how a worker
ended, why a task did not run, what could not be pickled, where in a map an item failed.
Short reprs and exception notes come from :mod:`poolkit._error_notes`, which the worker
process uses too without importing this module.
"""

from __future__ import annotations

import signal
from concurrent import futures
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Callable, Optional

from poolkit._pickling import serialization as serialization

if TYPE_CHECKING:
    pass

# Before 3.11 concurrent.futures.TimeoutError is its own class; since, it is the builtin.
_FUTURES_TIMEOUT: tuple[type, ...] = (
    () if issubclass(futures.TimeoutError, TimeoutError) else (futures.TimeoutError,)
)

#: The exception classes (``poolkit`` exports them). The builders are poolkit's own.
__all__ = [
    "BrokenProcessPool",
    "DeserializationError",
    "RemoteTraceback",
    "TaskStopped",
    "TaskTimeoutError",
    "WorkerCrashedError",
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
