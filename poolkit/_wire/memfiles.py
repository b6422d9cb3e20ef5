"""Anonymous memory files: make, fill, map, and pass between processes over a Unix socket.

The low-level half of ``_oob``. Two behaviours of the standard library are worked around:

* ``mmap.mmap`` keeps a duplicate of the file's descriptor for as long as the mapping lives
  (until Python 3.13's ``trackfd=False``). Every large result a caller keeps would hold a
  descriptor, and a program that keeps a thousand results would run out of them. Mappings
  here are made with libc's ``mmap`` through ctypes, and unmapped when the last object
  that uses their memory is gone; the descriptor is closed at once.
* ``socket.send_fds`` and ``socket.recv_fds`` ignore their ``flags`` argument, so
  ``MSG_DONTWAIT`` would not stop them from blocking. ``sendmsg``/``recvmsg`` are called
  directly.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import socket
import weakref
from typing import Any, Optional

from poolkit._wire.fds import create_memory_file

_MAX_WRITE = 1 << 30
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Python 3.10+; without it, pages fault in
_MAP_FAILED = ctypes.c_void_p(-1).value
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_FD_SIZE = array.array("i").itemsize


def _load_libc() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc() if hasattr(os, "memfd_create") else None
#: Memory files can be made, mapped and passed here (Linux; socket.sendmsg with SCM_RIGHTS).
AVAILABLE = _libc is not None and hasattr(socket, "CMSG_SPACE")


def create(view: memoryview) -> int:
    """A new memory file holding a copy of ``view``; returns its descriptor."""
    fd = create_memory_file("poolkit-buffer")
    try:
        done, size = 0, view.nbytes
        while done < size:
            done += os.write(fd, view[done : done + _MAX_WRITE])
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_file(fd: int, size: int, offset: int, private: bool) -> tuple[Any, int]:
    """Map ``size`` bytes of file ``fd`` from ``offset``, writable, pages loaded up front.

    Returns the mapped memory (a ctypes array: it exports the buffer, and the mapping goes
    when it and every view of it are gone) and its address. ``private`` mappings see the
    file's contents but keep their own writes (copy on write), as memory of one's own does,
    also in a process forked later; shared ones write into the file.
    """
    assert _libc is not None
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    length = size + offset - start
    # A private mapping is loaded read-only, then made writable: loading it writable would
    # copy every page up front.
    protection = mmap.PROT_READ if private else mmap.PROT_READ | mmap.PROT_WRITE
    flags = (mmap.MAP_PRIVATE if private else mmap.MAP_SHARED) | _POPULATE
    address = _libc.mmap(None, length, protection, flags, fd, start)
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap of a memory file failed: {os.strerror(error)}")
    if private and _libc.mprotect(address, length, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
        error = ctypes.get_errno()
        _libc.munmap(address, length)
        raise OSError(error, f"mprotect of a memory file failed: {os.strerror(error)}")
    region = (ctypes.c_char * length).from_address(address)
    # Not at interpreter exit: objects still alive then (an array a late __del__ reads)
    # may use the memory until the process is gone, which unmaps it anyway.
    weakref.finalize(region, _libc.munmap, address, length).atexit = False
    if start == offset:
        return region, address
    # A view of the requested part keeps the whole mapping alive.
    return (ctypes.c_char * size).from_buffer(region, offset - start), address + offset - start


def as_bytes(region: Any) -> memoryview:
    """A byte view of mapped memory: what unpickling gets (numpy and others accept it)."""
    return memoryview(region).cast("B")


def address_of(view: memoryview) -> Optional[int]:
    """Where a writable buffer's memory starts; None for a read-only one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


def send(sock: socket.socket, fds: list[int]) -> bool:
    """Send ``fds`` as one message, never waiting; False if the socket is full or gone."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    try:
        sock.sendmsg([b"\0"], rights, socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def receive(sock: socket.socket, count: int, wait: bool) -> list[int]:
    """The next message's ``count`` descriptors (close-on-exec); ConnectionError if not so."""
    flags = _CLOEXEC | (0 if wait else socket.MSG_DONTWAIT)
    try:
        data, ancillary, msg_flags, _address = sock.recvmsg(
            1, socket.CMSG_SPACE(count * _FD_SIZE), flags
        )
    except OSError as exc:
        raise ConnectionError(f"the buffers of a message did not arrive: {exc}") from exc
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
    received = list(fds)
    if not data or len(received) != count or msg_flags & socket.MSG_CTRUNC:
        for fd in received:
            os.close(fd)
        raise ConnectionError(
            f"expected {count} buffer descriptors with a message, received {len(received)}"
        )
    return received
