"""Tasks that misbehave without dying: they attack the pool from inside a worker.

Importable by workers under every start method (the tests directory is on sys.path).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any


def _result_pipes() -> list[Connection]:
    """The worker's result pipe: the ``outbox`` of the ``worker_main`` frame running this task.

    Taken from the frame, not found among live objects: a worker may also hold stale
    ``Connection`` objects (the parent's, under fork; the fork server's, under forkserver)
    whose descriptor numbers now name other files.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "worker_main" and "outbox" in frame.f_locals:
            return [frame.f_locals["outbox"]]
        frame = frame.f_back
    raise RuntimeError("not running in a poolkit worker")


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """An exception whose attributes cannot be set, ``__cause__`` included."""


@dataclasses.dataclass(frozen=True)
class FrozenFieldError(Exception):
    """The same with a field: it cannot even be unpickled (its state cannot be set)."""

    code: int = 0


def raise_frozen() -> None:
    raise FrozenError()


def raise_frozen_field(code: int) -> None:
    raise FrozenFieldError(code)


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")


def raise_unprintable() -> None:
    raise UnprintableError()


class ExitInParent:
    """A result whose unpickling in the parent raises ``SystemExit``."""

    def __reduce__(self) -> Any:
        return (_exit_if_parent, (os.getpid(),))


def _exit_if_parent(origin: int) -> object:
    if os.getpid() != origin:
        raise SystemExit("unpickled in the parent")
    return ExitInParent()


def return_exit_in_parent() -> ExitInParent:
    return ExitInParent()


def write_stray_bytes(data: bytes) -> str:
    """Write ``data`` onto the worker's result pipe, then return normally."""
    pipes = _result_pipes()
    for pipe in pipes:
        os.write(pipe.fileno(), data)
    return f"wrote to {len(pipes)} pipe(s)"


#: A frame header announcing 2**50 bytes (the long form of the length prefix).
HUGE_HEADER = struct.pack("!i", -1) + struct.pack("!Q", 1 << 50)
#: Nine bytes of frame that are not a message.
NINE_BYTES = struct.pack("!i", 9) + b"garbage!!"


def answer_from_a_fork(value: int) -> int:
    """Fork; the child sends a well-formed answer of its own, then exits."""
    pid = os.fork()
    if pid == 0:
        try:
            from poolkit._wire.frames import frame_header
            from poolkit._wire.messages import MessageKind, encode_message

            body = encode_message(MessageKind.RESULT, 1, b"\x80\x04K\x07.")
            for pipe in _result_pipes():
                os.write(pipe.fileno(), frame_header(len(body)) + body)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return value


def fork_and_return(value: int) -> int:
    """Fork; the child returns into the worker loop like the parent does."""
    pid = os.fork()
    if pid != 0:
        os.waitpid(pid, 0)
    return value * 10


def silence_the_worker(value: int) -> int:
    """Put /dev/null over the worker's result pipe, then return: the answer goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    for pipe in _result_pipes():
        os.dup2(null, pipe.fileno())
    os.close(null)
    return value


def start_child_and_report(pid_fifo: str, seconds: float) -> None:
    """Start a process that holds every descriptor the worker has, report it, keep running."""
    child = subprocess.Popen(["sleep", str(seconds)], close_fds=False)
    with open(pid_fifo, "w") as out:
        out.write(f"{os.getpid()} {child.pid}")
    time.sleep(seconds)


def report_then_hold_gil(pid_fifo: str) -> bool:
    """Report the worker's pid, then hold the GIL in one long C call (a regex)."""
    import re

    with open(pid_fifo, "w") as out:
        out.write(str(os.getpid()))
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None


def report_pid(pid_fifo: str) -> int:
    with open(pid_fifo, "w") as out:
        out.write(str(os.getpid()))
    return os.getpid()


def make_adder(size: int) -> Any:
    """A closure over ``size`` bytes."""
    blob = bytes(size)

    def add(x: int) -> int:
        return x + len(blob)

    return add
