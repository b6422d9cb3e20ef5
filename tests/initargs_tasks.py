"""Worker-side helpers for test_initargs: keep the initargs objects, use them in tasks.

Each ``use_*`` task does something with the object that only a handle shared with the
parent makes visible there, and returns the worker's pid.
"""

from __future__ import annotations

import os
import time
from typing import Any

#: What the initializer received, in this worker.
kept: dict[str, Any] = {}


def keep(obj: Any) -> None:
    kept["obj"] = obj


def keep_many(*objects: Any) -> None:
    kept["objects"] = objects


def pid() -> int:
    return os.getpid()


def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def try_acquire() -> tuple[bool, int]:
    """Acquire without blocking: False while the parent holds the shared lock."""
    lock = kept["obj"]
    got = bool(lock.acquire(False))
    if got:
        lock.release()
    return got, os.getpid()


def notify() -> int:
    condition = kept["obj"]
    with condition:
        condition.notify_all()
    return os.getpid()


def set_event() -> int:
    kept["obj"].set()
    return os.getpid()


def pass_barrier() -> int:
    kept["obj"].wait(timeout=30)
    return os.getpid()


def put(token: int) -> int:
    kept["obj"].put((token, os.getpid()))
    return os.getpid()


def add_to_value(amount: int) -> int:
    value = kept["obj"]
    if hasattr(value, "get_lock"):
        with value.get_lock():
            value.value += amount
    else:
        value.value += amount
    return os.getpid()


def write_array(index: int, number: int) -> int:
    kept["obj"][index] = number
    return os.getpid()


def write_shared_memory(index: int, number: int) -> int:
    kept["obj"].buf[index] = number
    return os.getpid()


def set_item(key: str, number: int) -> int:
    kept["obj"][key] = number
    return os.getpid()


def use_many(token: int) -> int:
    """Lock, SimpleQueue and Value of keep_many: safe to use, then be killed."""
    lock, queue, value = kept["objects"]
    with lock:
        value.value += 1
    queue.put((token, os.getpid()))
    return os.getpid()


def announce_and_sleep(token: int, ready_fifo: str) -> int:
    """Put on the SimpleQueue of keep_many, then tell the test (through a FIFO, which takes
    no lock) that the put is over and it may kill this worker; then sleep."""
    kept["objects"][1].put((token, os.getpid()))
    with open(ready_fifo, "w") as ready:
        ready.write(str(os.getpid()))
    time.sleep(60)
    return os.getpid()


def same_objects() -> bool:
    first, second = kept["objects"][:2]
    return first is second


def kind_of_kept() -> tuple[str, int]:
    obj = kept["obj"]
    return f"{type(obj).__module__}.{type(obj).__qualname__}", os.getpid()


def tqdm_lock_kind() -> str:
    from tqdm import tqdm

    lock = tqdm.get_lock()
    with lock:  # the lock the parent passed works here
        pass
    return type(lock).__name__
