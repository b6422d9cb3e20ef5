"""Large buffers out of band: a pickle's big buffers cross in shared memory, not the pipe.

Pickle protocol 5 lets an object that owns a large block of memory (a numpy array, a
``bytearray``, a ``pickle.PickleBuffer``) hand that block to the pickler as a separate
buffer instead of copying it into the pickle stream. poolkit copies each such buffer of at
least ``OUT_OF_BAND_MIN`` bytes (``_serialization``) once, into an anonymous memory file
(``memfd_create``), and passes the file's descriptor to the other process over a Unix
socket beside the worker's pipes (``SCM_RIGHTS``). The receiver maps the file and
unpickles straight from the mapping. A 32 MiB array is so copied once each way, instead of
being copied into a pickle, pushed through a pipe 1 MiB at a time, read back into a new
buffer and copied out of it again.

Why anonymous files and descriptor passing rather than named shared memory: an anonymous
file has no name that could be left behind. It lives while a descriptor or a mapping refers
to it, so whichever process dies at whatever moment, the memory goes with the last holder;
nothing can leak into ``/dev/shm``.

In a message, each out-of-band buffer has a table entry: how it travels and its size. The
descriptors of one message travel as one socket message, sent before the message itself is
written, so the receiver always finds them waiting. A send is never waited for: if the
socket is full, the buffers travel inline instead, after the table, through the pipe.
"""

from __future__ import annotations

import mmap
import os
import pickle
import socket
import threading
from typing import Any, Optional

from ._messages import BY_DESCRIPTOR, INLINE, Buffer, buffer_table
from ._transport import register_parent_fd, unregister_parent_fd

#: Memory files the parent may hold at once for tasks not yet settled. Beyond it, tasks
#: carry their buffers in the pickle: a burst of large submissions must not run the
#: process out of descriptors.
MAX_HELD = 64
#: memfd_create and descriptor passing are Linux features (socket.send_fds: Python 3.9+).
AVAILABLE = hasattr(os, "memfd_create") and hasattr(socket, "send_fds")

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Python 3.10+; without it, pages fault in
_MAX_WRITE = 1 << 30
_held = 0
_held_lock = threading.Lock()


def _copy_to_memory_file(buffer: pickle.PickleBuffer) -> int:
    view = buffer.raw()
    fd = os.memfd_create("poolkit-buffer", os.MFD_CLOEXEC)
    try:
        done, size = 0, view.nbytes
        while done < size:
            done += os.write(fd, view[done : done + _MAX_WRITE])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_send(sock: socket.socket, fds: list[int]) -> bool:
    try:
        socket.send_fds(sock, [b"\0"], fds, socket.MSG_DONTWAIT)
    except OSError:  # full (BlockingIOError), or the other side is gone
        return False
    return True


class HeldBuffers:
    """The large buffers of one task, copied into memory files the parent holds.

    They are held until the task is settled, so a task handed back by a worker that died
    before running it can be sent again. ``close`` (or garbage collection) frees them.
    """

    __slots__ = ("_fds", "_sizes")

    def __init__(self, sizes: list[int]) -> None:
        self._fds: list[int] = []
        self._sizes = sizes

    @classmethod
    def hold(cls, buffers: list[pickle.PickleBuffer]) -> Optional[HeldBuffers]:
        """Copy ``buffers`` into memory files; None if the parent already holds too many."""
        global _held
        sizes = [buffer.raw().nbytes for buffer in buffers]
        with _held_lock:
            if _held + len(sizes) > MAX_HELD:
                return None
            _held += len(sizes)
        held = cls(sizes)  # from here on, close() gives the room back
        try:
            for buffer in buffers:
                fd = _copy_to_memory_file(buffer)
                held._fds.append(fd)
                register_parent_fd(fd)  # a process forked from the parent drops its copy
        except BaseException:
            held.close()
            raise
        return held

    @property
    def count(self) -> int:
        """How many buffers (table entries) travel with the task."""
        return len(self._sizes)

    @property
    def size(self) -> int:
        """Their total size in bytes."""
        return sum(self._sizes)

    def table_for(self, sock: Optional[socket.socket]) -> list[Buffer]:
        """The table (and any inline data) to write after the task, descriptors sent to ``sock``."""
        if sock is not None and _try_send(sock, self._fds):
            return [buffer_table(self._sizes, BY_DESCRIPTOR)]
        parts: list[Buffer] = [buffer_table(self._sizes, INLINE)]
        for fd, size in zip(self._fds, self._sizes):
            parts.append(memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ)))
        return parts

    def close(self) -> None:
        """Close the memory files (their memory goes once the receiver unmaps it)."""
        global _held
        fds, self._fds = self._fds, []
        for fd in fds:
            unregister_parent_fd(fd)
            os.close(fd)
        if self._sizes:
            with _held_lock:
                _held -= len(self._sizes)
            self._sizes = []

    def __del__(self) -> None:
        self.close()


def share(buffers: list[pickle.PickleBuffer], sock: socket.socket) -> list[Buffer]:
    """Send ``buffers`` now (the worker's side): the table and any inline data to write.

    The descriptors are closed as soon as they are sent: the receiving process holds the
    memory from then on.
    """
    sizes = [buffer.raw().nbytes for buffer in buffers]
    fds: list[int] = []
    try:
        for buffer in buffers:
            fds.append(_copy_to_memory_file(buffer))
        if _try_send(sock, fds):
            return [buffer_table(sizes, BY_DESCRIPTOR)]
    except OSError:
        pass  # no memory file (out of descriptors, say): the buffers go inline
    finally:
        for fd in fds:
            os.close(fd)
    return [buffer_table(sizes, INLINE), *(buffer.raw() for buffer in buffers)]


def open_buffers(entries: list[Any], sock: Optional[socket.socket], wait: bool = True) -> list[Any]:
    """The buffers of a table: inline views as they are, memory files received and mapped.

    ``wait`` is False in the parent's dispatcher, which must never block: the descriptors
    were sent before the message, so they are already there. Raises ConnectionError if
    they are not.
    """
    expected = sum(1 for entry in entries if isinstance(entry, int))
    if not expected:
        return entries
    if sock is None:
        raise ConnectionError("buffers were sent by descriptor, and there is no side socket")
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0) | (0 if wait else socket.MSG_DONTWAIT)
    try:
        message, fds, _flags, _address = socket.recv_fds(sock, 1, expected, flags)
    except OSError as exc:
        raise ConnectionError(f"the buffers of a message did not arrive: {exc}") from exc
    try:
        if not message or len(fds) != expected:
            raise ConnectionError(
                f"expected {expected} buffer descriptors with a message, received {len(fds)}"
            )
        received = iter(fds)
        return [
            entry if not isinstance(entry, int) else _map(next(received), entry)
            for entry in entries
        ]
    finally:
        for fd in fds:
            os.close(fd)


def _map(fd: int, size: int) -> mmap.mmap:
    # Shared, not private: a private writable mapping would be populated by copying every
    # page. Nobody else writes the file: its sender closed or only keeps it to resend a
    # task that never ran.
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
