"""A worker's two pipes, and the parent's non-blocking reading and writing of frames on them.

Each worker owns one inbox (parent -> worker) and one outbox (worker -> parent). The worker
sees ordinary blocking ``multiprocessing`` Connections. The parent's ends are non-blocking:
the dispatcher thread queues outgoing frames and writes what the pipe accepts, and reads
whatever has arrived, so it never blocks on either direction. That is what lets a 50 MB
task and a 50 MB result cross at the same time without the full-pipe deadlock (parent blocked
writing a task while the worker is blocked writing a result).

Parent-only descriptors are recorded in a process-wide registry so that a worker started by
``fork`` can close the copies it inherits: a forked worker that kept another worker's inbox
open would stop that worker from ever seeing end-of-file when the parent dies.
"""

from __future__ import annotations

import collections
import fcntl
import os
import socket
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, Optional

from poolkit._wire.messages import STOP_BATCH, Buffer, FrameError, frame_header, parse_frame_header
from poolkit._worker.spin_wait import SpinWait

# Frames bigger than this are read straight into a buffer of their final size.
_DIRECT_READ_THRESHOLD = 1 << 20
_READ_CHUNK = 1 << 16
# Frames up to this size are joined into one buffer before they are written.
_JOIN_BELOW = 1 << 16
# Linux lets an unprivileged process grow a pipe to 1 MiB; fewer, larger writes for payloads.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_SIZE = 1 << 20


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not on Linux
        return 1 << 40


#: A frame announced as larger than the machine's memory cannot be one a worker wrote: its
#: header is stray bytes (a task wrote into the pipe), not a length to allocate.
MAX_FRAME = _physical_memory()

# fd -> (device, inode) of what it referred to when registered.
_parent_only_fds: dict[int, tuple[int, int]] = {}


def register_parent_fd(fd: int) -> None:
    """Record a descriptor that no worker process may keep open."""
    st = os.fstat(fd)
    _parent_only_fds[fd] = (st.st_dev, st.st_ino)


def unregister_parent_fd(fd: int) -> None:
    """Forget a descriptor; call before closing it, so the number is never closed twice."""
    _parent_only_fds.pop(fd, None)


def close_inherited_parent_fds() -> None:
    """In a freshly forked worker: close the parent-only descriptors it inherited.

    A number is closed only if it still refers to the pipe it was registered for: objects
    freed while the child is set up may already have closed it, and the number reused.
    """
    for fd, identity in list(_parent_only_fds.items()):
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == identity:
                os.close(fd)
        except OSError:
            pass
    _parent_only_fds.clear()


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # over the system limit (/proc/sys/fs/pipe-max-size): the default size works


class FrameReader:
    """Collects complete frames from a non-blocking pipe as data arrives."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._body: Optional[bytearray] = None
        self._filled = 0
        #: Why the bytes on this pipe cannot be read as frames any more (stray bytes).
        self.fault: Optional[FrameError] = None

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._buffer) or self._body is not None

    def read_frames(self) -> tuple[list[Buffer], bool]:
        """Read everything available now. Returns ``(frames, at_eof)``.

        A header that announces more than :data:`MAX_FRAME` bytes ends the reading:
        the frames before it are returned, and :attr:`fault` says what was wrong.
        """
        if self.fault is not None:
            return [], False
        frames: list[Buffer] = []
        while True:
            if self._body is not None:
                try:
                    count = os.readv(self.fd, [memoryview(self._body)[self._filled :]])
                except BlockingIOError:
                    return frames, False
                if count == 0:
                    return frames, True
                self._filled += count
                if self._filled == len(self._body):
                    frames.append(self._body)
                    self._body = None
                continue
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                return frames, False
            if not chunk:
                return frames, True
            self._buffer += chunk
            try:
                self._split(frames)
            except FrameError as exc:
                self.fault = exc
                self._buffer.clear()
                return frames, False
            if len(chunk) < _READ_CHUNK and self._body is None:
                # A short read emptied the pipe: skip the read that would only say so. The
                # selector is level-triggered, so later data (or end-of-file) wakes us again.
                return frames, False

    def _split(self, frames: list[Buffer]) -> None:
        buf = self._buffer
        while True:
            parsed = parse_frame_header(buf)
            if parsed is None:
                return
            header_size, body_size = parsed
            if body_size > MAX_FRAME:
                raise FrameError(f"a frame header announcing {body_size} bytes")
            end = header_size + body_size
            if len(buf) >= end:
                frames.append(bytes(buf[header_size:end]))
                del buf[:end]
                continue
            if body_size >= _DIRECT_READ_THRESHOLD:
                # Read the rest of a large frame in place instead of growing the buffer.
                body = bytearray(body_size)
                have = len(buf) - header_size
                body[:have] = buf[header_size:]
                buf.clear()
                self._body, self._filled = body, have
            return


class BlockingFrameSource:
    """The worker's side of its inbox: whole frames from a blocking pipe, few system calls.

    ``Connection.recv_bytes`` reads a frame's length and then its body: two reads for
    every batch of tasks. This reads whatever has arrived (up to 64 KiB) in one call and
    keeps the rest for the next frame.
    """

    def __init__(self, fd: int, spin: Optional[SpinWait] = None) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._spin = spin

    def next_frame(self) -> Buffer:
        """The next frame's body; raises EOFError at end-of-file."""
        buf = self._buffer
        while True:
            parsed = parse_frame_header(buf)
            if parsed is not None:
                header_size, body_size = parsed
                end = header_size + body_size
                if len(buf) >= end:
                    body = bytes(buf[header_size:end])
                    del buf[:end]
                    return body
                if body_size >= _DIRECT_READ_THRESHOLD:
                    return self._read_large(header_size, body_size)
            if self._spin is not None:
                self._spin.before_read()
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                raise EOFError
            buf += chunk

    def _read_large(self, header_size: int, body_size: int) -> Buffer:
        # Read the rest of a large frame in place instead of growing the buffer.
        body = bytearray(body_size)
        have = len(self._buffer) - header_size
        body[:have] = self._buffer[header_size:]
        self._buffer.clear()
        view = memoryview(body)
        while have < body_size:
            count = os.readv(self.fd, [view[have:]])
            if count == 0:
                raise EOFError
            have += count
        return body


class FrameWriter:
    """Queues frames for a non-blocking pipe and writes as much as the pipe accepts."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._parts: collections.deque[memoryview] = collections.deque()

    @property
    def pending(self) -> bool:
        """True while queued bytes are waiting for the pipe to drain."""
        return bool(self._parts)

    def queue_frame(self, parts: list[Buffer]) -> None:
        """Queue one frame made of ``parts``.

        A small frame is joined into one buffer (copying a few KiB costs less than handing
        the kernel hundreds of pieces); a large one is written piece by piece, never copied.
        """
        size = sum(map(len, parts))
        if size <= _JOIN_BELOW:
            parts.insert(0, frame_header(size))
            self._parts.append(memoryview(b"".join(parts)))
            return
        self._parts.append(memoryview(frame_header(size)))
        self._parts.extend(memoryview(p) for p in parts if len(p))

    def flush(self) -> bool:
        """Write until the pipe is full or the queue is empty; True when empty.

        Raises BrokenPipeError when the worker's end is gone.
        """
        parts = self._parts
        while parts:
            # writev hands the kernel several small parts in one system call.
            batch = [parts[i] for i in range(min(len(parts), 64))]
            try:
                written = os.writev(self.fd, batch)
            except BlockingIOError:
                return False
            while written:
                head = parts[0]
                if written >= len(head):
                    written -= len(head)
                    parts.popleft()
                else:
                    parts[0] = head[written:]
                    written = 0
        return True

    def discard(self) -> None:
        """Drop whatever is still queued (the worker is gone)."""
        self._parts.clear()


class WorkerChannel:
    """The inbox and outbox of one worker; the parent keeps the non-blocking ends.

    Beside them runs a Unix socket that carries the memory files of large buffers (see
    ``_oob``), where the platform can pass descriptors.
    """

    def __init__(self, context: BaseContext) -> None:
        made: list[Any] = []  # closed again if a later one cannot be made (EMFILE)
        try:
            inbox_reader, inbox_writer = context.Pipe(duplex=False)
            made += (inbox_reader, inbox_writer)
            outbox_reader, outbox_writer = context.Pipe(duplex=False)
            made += (outbox_reader, outbox_writer)
            side = worker_end = None
            if hasattr(socket, "send_fds"):
                side, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except BaseException:
            for item in made:
                item.close()
            raise
        #: Ends handed to the worker process (closed in the parent once it started).
        self.worker_inbox: Optional[Connection] = inbox_reader
        self.worker_outbox: Optional[Connection] = outbox_writer
        self._inbox = inbox_writer
        self._outbox = outbox_reader
        for conn in (inbox_writer, outbox_reader):
            register_parent_fd(conn.fileno())
            os.set_blocking(conn.fileno(), False)
        _grow_pipe(inbox_writer.fileno())
        _grow_pipe(outbox_reader.fileno())
        self.writer: Optional[FrameWriter] = FrameWriter(inbox_writer.fileno())
        self.reader = FrameReader(outbox_reader.fileno())
        #: The parent's end of the side socket, and the worker's (a Connection, so that
        #: every start method hands it over like the pipes).
        self.side: Optional[socket.socket] = side
        self.worker_side: Optional[Connection] = None
        if side is not None and worker_end is not None:
            register_parent_fd(side.fileno())
            self.worker_side = Connection(worker_end.detach())

    @property
    def outbox_fd(self) -> int:
        """The descriptor the parent reads worker messages from."""
        return self.reader.fd

    def release_worker_ends(self) -> None:
        """Close the parent's copies of the worker's ends, once the worker has them."""
        for conn in (self.worker_inbox, self.worker_outbox, self.worker_side):
            if conn is not None:
                conn.close()
        self.worker_inbox = self.worker_outbox = self.worker_side = None

    def close_inbox(self) -> None:
        """Close the parent's end of the inbox: the worker reads end-of-file and exits.

        An empty batch goes first, and the worker exits on it too. End-of-file alone is not
        enough under ``fork``: any other process forked from the parent meanwhile (another
        pool's worker, a ``multiprocessing.Process``) inherited a copy of this end, and the
        worker would wait for that process to end before it saw end-of-file.
        """
        if self.writer is None:
            return
        if not self.writer.pending:
            try:
                os.write(self.writer.fd, frame_header(len(STOP_BATCH)) + STOP_BATCH)
            except OSError:
                pass  # full or gone: end-of-file (or the worker's death) ends it anyway
        self.writer.discard()
        self.writer = None
        unregister_parent_fd(self._inbox.fileno())
        self._inbox.close()

    def close(self) -> None:
        """Close every descriptor of this channel that the parent still holds."""
        self.release_worker_ends()
        self.close_inbox()
        if not self._outbox.closed:
            unregister_parent_fd(self._outbox.fileno())
            self._outbox.close()
        if self.side is not None and self.side.fileno() >= 0:
            unregister_parent_fd(self.side.fileno())
            self.side.close()
