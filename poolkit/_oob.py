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
import sys
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


def _receive_fds(entries: list[Any], sock: Optional[socket.socket], wait: bool) -> list[int]:
    """The descriptors of a table's memory files, off the side socket (one message)."""
    expected = sum(1 for entry in entries if isinstance(entry, tuple))
    if not expected:
        return []
    if sock is None:
        raise ConnectionError("buffers were sent by descriptor, and there is no side socket")
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0) | (0 if wait else socket.MSG_DONTWAIT)
    try:
        message, fds, _flags, _address = socket.recv_fds(sock, 1, expected, flags)
    except OSError as exc:
        raise ConnectionError(f"the buffers of a message did not arrive: {exc}") from exc
    if not message or len(fds) != expected:
        for fd in fds:
            os.close(fd)
        raise ConnectionError(
            f"expected {expected} buffer descriptors with a message, received {len(fds)}"
        )
    return fds


def _map(fd: int, size: int, offset: int) -> Any:
    # Shared, not private: a private writable mapping would be populated by copying every
    # page. Writes by the receiver go into the file, which the sender no longer reads: the
    # parent keeps its copy only to resend a task that never ran, and a worker's result
    # goes back in the file it came in only when nothing in the worker still refers to it.
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapping = mmap.mmap(fd, size + offset - start, flags=mmap.MAP_SHARED | _POPULATE, offset=start)
    return mapping if start == offset else memoryview(mapping)[offset - start :]


def open_buffers(entries: list[Any], sock: Optional[socket.socket], wait: bool = True) -> list[Any]:
    """The buffers of a table: inline views as they are, memory files received and mapped.

    ``wait`` is False in the parent's dispatcher, which must never block: the descriptors
    were sent before the message, so they are already there. Raises ConnectionError if
    they are not.
    """
    fds = _receive_fds(entries, sock, wait)
    try:
        received = iter(fds)
        return [
            _map(next(received), *entry) if isinstance(entry, tuple) else entry for entry in entries
        ]
    finally:
        for fd in fds:
            os.close(fd)


def _address(obj: Any) -> Optional[int]:
    """Where a writable buffer's memory starts; None for a read-only one."""
    import ctypes  # only a worker that returns large buffers needs it

    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(obj))
    except (TypeError, ValueError):
        return None


class Received:
    """The memory files that came with one task, in the worker.

    They are mapped for the task's arguments and stay open until its reply is sent, so a
    result that lies in one of them (a task that returns its argument, or a part of it,
    perhaps changed in place) can go back in that file instead of in a copy.
    """

    __slots__ = ("_files", "buffers")

    def __init__(self, entries: list[Any], sock: Optional[socket.socket]) -> None:
        fds = _receive_fds(entries, sock, wait=True)
        self._files: list[tuple[int, Any]] = []
        try:
            received = iter(fds)
            buffers = []
            for entry in entries:
                if isinstance(entry, tuple):
                    fd = next(received)
                    mapping = _map(fd, *entry)
                    self._files.append((fd, mapping))
                    buffers.append(mapping)
                else:
                    buffers.append(entry)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        #: What ``loads`` takes; the caller drops this list once the arguments exist.
        self.buffers: Optional[list[Any]] = buffers

    def take_buffers(self) -> Optional[list[Any]]:
        """The buffers for ``loads``, handed over once."""
        buffers, self.buffers = self.buffers, None
        return buffers

    def locate(self, view: memoryview) -> Optional[tuple[int, int]]:
        """``(file index, offset)`` if ``view`` lies within one of the mapped files."""
        if not self._files:
            return None
        start = _address(view)
        if start is None:
            return None
        for index, (_fd, mapping) in enumerate(self._files):
            base = _address(mapping)
            if base is not None and base <= start and start + view.nbytes <= base + len(mapping):
                return index, start - base
        return None

    def reusable(self, index: int) -> bool:
        """True if nothing but this record refers to file ``index``'s mapping any more.

        Then no code in the worker can write the memory after the reply: it may go to the
        parent as the result's own.
        """
        # References: the list entry's tuple, and getrefcount's argument (no local name:
        # it would be one more).
        return sys.getrefcount(self._files[index][1]) <= 2

    def file(self, index: int) -> tuple[int, Any]:
        """The descriptor and the mapping of file ``index``."""
        return self._files[index]

    def close(self) -> None:
        """Close the descriptors; each mapping goes when the last object using it does."""
        files, self._files = self._files, []
        for fd, _mapping in files:
            os.close(fd)


class Outgoing:
    """A result's large buffers on their way to the parent (the worker's side).

    Built right after the result is pickled, while the buffers exist: each buffer is
    either located in a file the task received, or copied into a new memory file. Then
    the caller drops the result, and :meth:`send` decides for each located buffer whether
    its file can go back as it is (nothing in the worker refers to it any more) or must
    be copied after all.
    """

    def __init__(self, buffers: list[pickle.PickleBuffer], received: Optional[Received]) -> None:
        self._sizes: list[int] = []
        # Per buffer: ("file", index, offset) in a received file, or ("copy", fd).
        self._places: list[tuple[Any, ...]] = []
        try:
            for buffer in buffers:
                view = buffer.raw()
                self._sizes.append(view.nbytes)
                place = None if received is None else received.locate(view)
                if place is not None:
                    self._places.append(("file", *place))
                else:
                    self._places.append(("copy", _copy_to_memory_file(buffer)))
                view.release()
        except BaseException:
            self.close()
            raise
        finally:
            for buffer in buffers:
                buffer.release()
            buffers.clear()
        self._received = received

    def send(self, sock: socket.socket) -> list[Buffer]:
        """Send the descriptors now: the table, and any inline data, to write after it.

        Inline when a descriptor cannot be sent (the socket is full, or no memory file
        could be made): the bytes go through the pipe then.
        """
        fds: list[int] = []
        offsets: list[int] = []
        try:
            for index, place in enumerate(self._places):
                if place[0] == "copy":
                    fds.append(place[1])
                    offsets.append(0)
                    continue
                assert self._received is not None
                _kind, file_index, offset = place
                if self._received.reusable(file_index):
                    fds.append(self._received.file(file_index)[0])
                    offsets.append(offset)
                    continue
                # Still referred to in the worker: the parent gets a copy of its own.
                mapping = self._received.file(file_index)[1]
                view = memoryview(mapping)[offset : offset + self._sizes[index]]
                copied = _copy_to_memory_file(pickle.PickleBuffer(view))
                del view, mapping  # or the next buffer in this file would look referred to
                self._places[index] = ("copy", copied)
                fds.append(copied)
                offsets.append(0)
            if _try_send(sock, fds):
                return [buffer_table(self._sizes, BY_DESCRIPTOR, offsets)]
        except OSError:
            pass  # no memory file (out of descriptors, say): the buffers go inline
        return [buffer_table(self._sizes, INLINE), *self._inline()]

    def _inline(self) -> list[Buffer]:
        parts: list[Buffer] = []
        for size, place in zip(self._sizes, self._places):
            if place[0] == "copy":
                parts.append(memoryview(mmap.mmap(place[1], size, prot=mmap.PROT_READ)))
            else:
                assert self._received is not None
                mapping = self._received.file(place[1])[1]
                parts.append(memoryview(mapping)[place[2] : place[2] + size])
        return parts

    def close(self) -> None:
        """Close the memory files made for the result (sent ones live on in the parent)."""
        places, self._places = self._places, []
        for place in places:
            if place[0] == "copy":
                os.close(place[1])
