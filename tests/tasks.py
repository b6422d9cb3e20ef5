"""Task functions for the tests: importable by workers under every start method."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
import time
from typing import Any, NoReturn


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def getpid(_: object = None) -> int:
    return os.getpid()


def raise_value_error(message: str) -> NoReturn:
    raise ValueError(message)


def divide(a: int, b: int) -> float:
    return a / b


def call_exit(code: int) -> NoReturn:
    sys.exit(code)


def hard_exit(code: int) -> NoReturn:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def echo(value: Any) -> Any:
    return value


def length(value: bytes) -> int:
    return len(value)


def make_bytes(size: int) -> bytes:
    return b"x" * size


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def sleep_getpid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def thread_signal_masks() -> tuple[int, list[int]]:
    """The blocked-signal masks (SigBlk) of this thread and of the process's other threads."""
    own = threading.get_native_id()
    masks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as status:
            for line in status:
                if line.startswith("SigBlk:"):
                    masks[int(tid)] = int(line.split()[1], 16)
    return masks.pop(own), list(masks.values())


def signal_and_wait(ready_fifo: str, release_fifo: str, value: Any = None) -> Any:
    """Tell the test this task runs (our pid on ready_fifo), then block until released.

    The test releases the task by opening release_fifo for writing and closing it.
    """
    with open(ready_fifo, "w") as ready:
        ready.write(str(os.getpid()))
    with open(release_fifo) as release:
        release.read()
    return value if value is not None else os.getpid()


def return_lock() -> object:
    import threading

    return threading.Lock()


class UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        import threading

        self.lock = threading.Lock()


def raise_unpicklable() -> NoReturn:
    raise UnpicklableError()


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt by unpickling (its __init__ wants two arguments)."""

    def __init__(self, a: object, b: object) -> None:
        super().__init__(f"{a}-{b}")


def raise_needs_two_args() -> NoReturn:
    raise NeedsTwoArgs(1, 2)


class ErrorAtUnpickle:
    """Pickles fine; raises when unpickled."""

    def __reduce__(self) -> Any:
        return _fail_unpickle, ()


def _fail_unpickle() -> NoReturn:
    raise pickle.UnpicklingError("refusing to unpickle")


class ErrorInParentUnpickle:
    """Unpickles in a worker, fails to unpickle in the test process."""

    def __reduce__(self) -> Any:
        return _fail_in_parent, (os.getpid(),)


def _fail_in_parent(origin: int) -> object:
    if os.getpid() != origin:
        raise pickle.UnpicklingError("refusing to unpickle away from home")
    return ErrorInParentUnpickle()


def return_parent_unpicklable() -> ErrorInParentUnpickle:
    return ErrorInParentUnpickle()


def return_os_exit_at_pickle() -> object:
    return ExitAtPickle()


class ExitAtPickle:
    def __reduce__(self) -> Any:
        sys.exit(7)


class ErrorAtPickle:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("refusing to pickle")


def return_error_at_pickle() -> ErrorAtPickle:
    return ErrorAtPickle()


_state: dict[str, Any] = {}


def init_state(value: Any) -> None:
    _state["value"] = value


def get_state() -> Any:
    return _state.get("value")


def failing_initializer() -> NoReturn:
    raise ValueError("error in initializer")


def exiting_initializer() -> NoReturn:
    os._exit(4)


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class FalseyError(Exception):
    def __bool__(self) -> bool:
        return False


def raise_falsey() -> NoReturn:
    raise FalseyError()


def crash_with_data(data: bytes) -> None:
    segfault()


class ExitAtUnpickle:
    def __reduce__(self) -> Any:
        return sys.exit, (5,)


class CrashAtUnpickle:
    def __reduce__(self) -> Any:
        return segfault, ()


class CrashAtPickle:
    def __reduce__(self) -> Any:
        segfault()
        return object, ()


def return_crash_at_pickle() -> CrashAtPickle:
    return CrashAtPickle()


def return_exit_at_unpickle() -> ExitAtUnpickle:
    return ExitAtUnpickle()


def spawn_child_then_wait(pid_fifo: str, seconds: float) -> None:
    """Start a grandchild process, report its pid, then run for a long time."""
    import subprocess

    child = subprocess.Popen(["sleep", str(seconds)])
    with open(pid_fifo, "w") as out:
        out.write(str(child.pid))
    time.sleep(seconds)


def allocate(megabytes: int) -> int:
    blob = bytearray(megabytes << 20)
    _state.setdefault("keep", []).append(blob)  # grows the worker on purpose
    return os.getpid()


def sleep_or_square(x: int) -> int:
    if x % 7 == 0:
        time.sleep(0.01)
    return x * x


def type_name(value: object) -> str:
    """What an argument arrived as: out-of-band buffers arrive as the object carrying them."""
    return type(value).__name__


def make_buffer(size: int, fill: int = 7) -> pickle.PickleBuffer:
    """A result whose memory may travel out of band."""
    return pickle.PickleBuffer(bytearray([fill]) * size)


def fill_and_return(data: Any, fill: int) -> pickle.PickleBuffer:
    """Write into an argument (any writable buffer), and return its memory."""
    view = memoryview(data).cast("B")
    view[:] = bytes([fill]) * len(view)
    return pickle.PickleBuffer(data)


def to_bytes(data: Any) -> bytes:
    return bytes(data)


def in_memory_file(data: Any) -> bool:
    """True if a (writable) buffer's memory lies in one of poolkit's memory files."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(memoryview(data).cast("B")))
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:poolkit-buffer" in line:
                low, high = (int(part, 16) for part in line.split()[0].split("-"))
                if low <= address < high:
                    return True
    return False


def keep_and_return(data: Any) -> pickle.PickleBuffer:
    """Keep a reference to an argument in the worker after the task, and return its memory."""
    _state["kept"] = data
    return pickle.PickleBuffer(data)


def overwrite_kept(fill: int) -> None:
    """Write into the argument :func:`keep_and_return` kept."""
    kept = _state["kept"]
    kept[:] = bytes([fill]) * len(kept)


def scale_array(array: Any, factor: float) -> Any:
    """numpy: scale an array in place (it must arrive writeable) and return it."""
    array *= factor
    return array


def write_file(path: str, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


def limit_address_space(extra_megabytes: int) -> None:
    """An initializer: this worker may map only ``extra_megabytes`` more than it has now."""
    import resource

    with open("/proc/self/status") as status:
        vm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = (vm_kib << 10) + (extra_megabytes << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def init_fail_logging_to(log_queue: Any) -> None:
    """An initializer that routes the ``concurrent.futures`` logger to a queue, then fails."""
    import logging
    from logging.handlers import QueueHandler

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(QueueHandler(log_queue))
    logger.setLevel("CRITICAL")
    logger.propagate = False
    raise ValueError("error in initializer")
