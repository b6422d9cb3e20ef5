"""Large buffers out of band: a pickle's big buffers cross in shared memory, not the pipe.

Pickle protocol 5 lets an object that owns a large block of memory (a numpy array, a
``pickle.PickleBuffer``, any type whose ``__reduce_ex__`` returns one) hand that block to
the pickler as a separate buffer instead of copying it into the pickle stream. poolkit
copies each such buffer of at least ``OUT_OF_BAND_MIN`` bytes (``_serialization``) once,
into an anonymous memory file (``memfd_create``), and passes the file's descriptor to the
other process over a Unix socket beside the worker's pipes (``SCM_RIGHTS``). The receiver
maps the file and unpickles straight from the mapping (``_memfiles`` makes, maps and
passes the files). A 32 MiB array is so copied once each way, instead of being copied into
a pickle, pushed through a pipe 1 MiB at a time, read back into a new buffer and copied
out of it again.

Why anonymous files and descriptor passing rather than named shared memory: an anonymous
file has no name that could be left behind. It lives while a descriptor or a mapping refers
to it, so whichever process dies at whatever moment, the memory goes with the last holder;
nothing can leak into ``/dev/shm``.

The parent maps what it receives privately (copy on write): a result behaves like memory
of its own, also in a process the parent forks later. A worker maps its arguments shared,
so that a task that changes its argument in place and returns it sends it back in the same
file, without a copy; that happens only when nothing in the worker refers to the file any
more, and only when the result covers at least half of the file (a small slice must not
keep a large file alive in the parent).

In a message, each out-of-band buffer has a table entry: how it travels and its size. The
descriptors of one message travel as one socket message, sent before the message itself is
written, so the receiver always finds them waiting. A send is never waited for: if the
socket is full, the buffers travel inline instead, after the table, through the pipe; if
no memory file can be made, the pickle carries its buffers as before.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import threading
from typing import Any, Optional

from poolkit._wire import memfiles as memfiles
from poolkit._wire.fds import register_parent_fd, unregister_parent_fd
from poolkit._wire.messages import BY_DESCRIPTOR, INLINE, Buffer, buffer_table

#: Memory files the parent may hold at once for tasks not yet settled. Beyond it, tasks
#: carry their buffers in the pickle: a burst of large submissions must not run the
#: process out of descriptors.
MAX_HELD = 64
#: Large buffers travel in memory files where the platform has them (Linux).
AVAILABLE = memfiles.AVAILABLE

_held = 0
_held_lock = threading.Lock()


def _send(sock: socket.socket, fds: list[int]) -> bool:
    # A seam for the tests: a full socket is hard to make on purpose.
    return memfiles.send(sock, fds)


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
        """Copy ``buffers`` into memory files; None if the parent already holds too many,
        or if no memory file can be made."""
        global _held
        sizes = [buffer.raw().nbytes for buffer in buffers]
        with _held_lock:
            if _held + len(sizes) > MAX_HELD:
                return None
            _held += len(sizes)
        held = cls(sizes)  # from here on, close() gives the room back
        try:
            for buffer in buffers:
                fd = memfiles.create(buffer.raw())
                held._fds.append(fd)
                register_parent_fd(fd)  # a process forked from the parent drops its copy
        except OSError:
            held.close()
            return None  # out of descriptors or memory: the pickle carries the buffers
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
        if sock is not None and _send(sock, self._fds):
            return [buffer_table(self._sizes, BY_DESCRIPTOR)]
        parts: list[Buffer] = [buffer_table(self._sizes, INLINE)]
        for fd, size in zip(self._fds, self._sizes):
            parts.append(memfiles.as_bytes(memfiles.map_file(fd, size, 0, private=True)[0]))
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


def _descriptor_count(entries: list[Any]) -> int:
    return sum(1 for entry in entries if isinstance(entry, tuple))


def _inline(view: memoryview) -> bytearray:
    # A writable copy: an array must arrive writeable whichever way it came, and a view of
    # a small frame is a view of read-only bytes.
    return bytearray(view)


def open_buffers(entries: list[Any], sock: Optional[socket.socket]) -> list[Any]:
    """The parent's side: a result's buffers, memory files received and mapped privately.

    Never waits: the descriptors were sent before the message, so they are already there.
    Raises ConnectionError if they are not.
    """
    count = _descriptor_count(entries)
    if not count:
        return [_inline(entry) for entry in entries]
    if sock is None:
        raise ConnectionError("buffers were sent by descriptor, and there is no side socket")
    fds = memfiles.receive(sock, count, wait=False)
    try:
        received = iter(fds)
        return [
            memfiles.as_bytes(memfiles.map_file(next(received), entry[0], entry[1], True)[0])
            if isinstance(entry, tuple)
            else _inline(entry)
            for entry in entries
        ]
    finally:
        for fd in fds:
            os.close(fd)


class Received:
    """The memory files that came with one task, in the worker.

    They are mapped (shared) for the task's arguments and stay open until its reply is
    sent, so a result that lies in one of them (a task that returns its argument, perhaps
    changed in place) can go back in that file instead of in a copy.
    """

    __slots__ = ("_files", "buffers")

    def __init__(self, entries: list[Any], sock: Optional[socket.socket]) -> None:
        count = _descriptor_count(entries)
        if count and sock is None:
            raise ConnectionError("buffers were sent by descriptor, and there is no side socket")
        fds = memfiles.receive(sock, count, wait=True) if count and sock is not None else []
        #: (descriptor, mapped memory, its address, its size) per memory file
        self._files: list[tuple[int, Any, int, int]] = []
        buffers: list[Any] = []
        try:
            received = iter(fds)
            for entry in entries:
                if isinstance(entry, tuple):
                    fd = next(received)
                    region, address = memfiles.map_file(fd, entry[0], entry[1], private=False)
                    self._files.append((fd, region, address, entry[0]))
                    buffers.append(memfiles.as_bytes(region))
                    del region  # the list entry is the one reference we keep
                else:
                    buffers.append(_inline(entry))
        except BaseException:
            self._files = []
            for fd in fds:
                os.close(fd)
            raise
        #: What ``loads`` takes; handed over once (see take_buffers).
        self.buffers: Optional[list[Any]] = buffers

    def take_buffers(self) -> Optional[list[Any]]:
        """The buffers for ``loads``: the record keeps no reference to them."""
        buffers, self.buffers = self.buffers, None
        return buffers

    def locate(self, view: memoryview) -> Optional[tuple[int, int]]:
        """``(file index, offset)`` if ``view`` lies in one of the files and covers at least
        half of it (a small slice goes back as a copy: it must not pin a large file)."""
        if not self._files:
            return None
        start = memfiles.address_of(view)
        if start is None:
            return None
        size = view.nbytes
        for index, (_fd, _region, base, length) in enumerate(self._files):
            if base <= start and start + size <= base + length and 2 * size >= length:
                return index, start - base
        return None

    def reusable(self, index: int) -> bool:
        """True if nothing in the worker uses file ``index``'s memory any more.

        Every view of the mapped memory, and every object built on it, holds a reference
        to the mapped object (directly, or through the one shared buffer of its views).
        """
        # The list entry's tuple and getrefcount's argument; no local name (one more).
        return sys.getrefcount(self._files[index][1]) <= 2

    def file(self, index: int) -> tuple[int, Any]:
        """The descriptor and the mapped memory of file ``index``."""
        fd, region, _address, _size = self._files[index]
        return fd, region

    def close(self) -> None:
        """Close the descriptors; each mapping goes when the last object using it does."""
        files, self._files = self._files, []
        for file in files:
            os.close(file[0])


class Outgoing:
    """A result's large buffers on their way to the parent (the worker's side).

    Built right after the result is pickled, while the buffers exist: each buffer is
    either located in a file the task received, or copied into a new memory file. Then
    the caller drops the result, and :meth:`send` decides for each located buffer whether
    its file can go back as it is (nothing in the worker uses it any more) or must be
    copied after all. Raises OSError if a memory file cannot be made (the caller then
    pickles the result with its buffers inside).
    """

    def __init__(self, buffers: list[pickle.PickleBuffer], received: Optional[Received]) -> None:
        self._sizes: list[int] = []
        # Per buffer: ("file", index, offset) in a received file, or ("copy", fd).
        self._places: list[tuple[Any, ...]] = []
        self._received = received
        try:
            for buffer in buffers:
                view = buffer.raw()
                self._sizes.append(view.nbytes)
                place = None if received is None else received.locate(view)
                if place is not None:
                    self._places.append(("file", *place))
                else:
                    self._places.append(("copy", memfiles.create(view)))
                view.release()
        except BaseException:
            self.close()
            raise
        finally:
            for buffer in buffers:
                buffer.release()

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
                # Still used in the worker: the parent gets a copy of its own.
                region = self._received.file(file_index)[1]
                view = memfiles.as_bytes(region)[offset : offset + self._sizes[index]]
                copied = memfiles.create(view)
                del view, region  # or the next buffer in this file would look used
                self._places[index] = ("copy", copied)
                fds.append(copied)
                offsets.append(0)
            if _send(sock, fds):
                return [buffer_table(self._sizes, BY_DESCRIPTOR, offsets)]
        except OSError:
            pass  # no memory file (out of descriptors, say): the buffers go inline
        return [buffer_table(self._sizes, INLINE), *self._inline()]

    def _inline(self) -> list[Buffer]:
        parts: list[Buffer] = []
        for size, place in zip(self._sizes, self._places):
            if place[0] == "copy":
                parts.append(memfiles.as_bytes(memfiles.map_file(place[1], size, 0, True)[0]))
            else:
                assert self._received is not None
                region = self._received.file(place[1])[1]
                parts.append(memfiles.as_bytes(region)[place[2] : place[2] + size])
        return parts

    def close(self) -> None:
        """Close the memory files made for the result (sent ones live on in the parent)."""
        places, self._places = self._places, []
        for place in places:
            if place[0] == "copy":
                os.close(place[1])
