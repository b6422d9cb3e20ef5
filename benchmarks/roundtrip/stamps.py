"""The worker's side of the round-trip profile: an initializer and a task that stamp times.

:func:`install` is the probed pool's ``initializer``: in the worker only, it wraps ``os.read``
(the inbox read) and ``Connection._send_bytes`` (the reply write) with timers. :func:`stamp`
is the task: it returns, in 40 bytes, the worker's pid, when its inbox read returned, when the
task's code started, and when the *previous* reply of this worker was written (a reply's write
ends after its task returns, so it travels with the next one). Both pickle by reference; this
module imports the standard library only.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import Any, Callable, NamedTuple

from benchmarks.roundtrip.patch_points import READ, REPLY, Patches

clock = time.perf_counter_ns
#: pid, inbox read returned, task started, previous reply write started and returned.
LAYOUT = struct.Struct("<5q")
_last = {"read": 0, "send0": 0, "send1": 0}


class WorkerStamps(NamedTuple):
    """What :func:`stamp` returns, unpacked (ns of ``perf_counter_ns``)."""

    pid: int
    read: int  #: the worker's last inbox read returned (the one that brought the task)
    call: int  #: the task's code started
    previous_send0: int  #: the worker's previous reply write started
    previous_send1: int  #: ... and returned

    @classmethod
    def unpack(cls, data: bytes) -> WorkerStamps:
        """From the bytes :func:`stamp` returned."""
        return cls(*LAYOUT.unpack(data))


def install() -> None:
    """Initializer of the probed pool: time the worker's reads and reply writes."""
    main = threading.get_ident()
    last = _last
    patches = Patches()

    def timed_read(read: Callable[[int, int], bytes]) -> Callable[[int, int], bytes]:
        def read_and_stamp(fd: int, size: int) -> bytes:
            data = read(fd, size)
            if data and threading.get_ident() == main:  # the worker loop reads its inbox
                last["read"] = clock()
            return data

        return read_and_stamp

    def timed_reply(send: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def send_and_stamp(connection: Any, buf: Any) -> None:
            start = clock()
            send(connection, buf)
            last["send0"], last["send1"] = start, clock()

        return send_and_stamp

    patches.replace(READ, timed_read)
    patches.replace(REPLY, timed_reply)
    # Never restored: the worker ends with the pool.


def stamp() -> bytes:
    """The probed task: no arguments, a plain ``bytes`` result (no buffer to look for)."""
    now = clock()
    last = _last
    return LAYOUT.pack(os.getpid(), last["read"], now, last["send0"], last["send1"])
