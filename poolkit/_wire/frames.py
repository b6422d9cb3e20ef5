"""Frames on a worker's pipes: one parser, the parent's non-blocking reader and writer, and
the worker's blocking source.

Each direction of a worker's channel is a pipe carrying frames in the format of
``multiprocessing.connection.Connection.send_bytes``: a signed 4-byte big-endian length, or
``-1`` followed by an 8-byte length for frames over 2 GiB, then the body. What a body holds
is ``messages``'s business.

The parent's ends are non-blocking: the dispatcher thread queues outgoing frames and writes
what the pipe accepts (:class:`FrameWriter`), and reads whatever has arrived
(:class:`FrameReader`), so it never blocks on either direction. That is what lets a 50 MB
task and a 50 MB result cross at the same time without the full-pipe deadlock (parent
blocked writing a task while the worker is blocked writing a result). The worker reads its
inbox with blocking reads (:class:`BlockingFrameSource`). Both readers cut frames with the
same :class:`FrameParser`.

Imported by workers: nothing here may pull in parent-side modules.
"""

from __future__ import annotations

import collections
import os
import struct
from typing import TYPE_CHECKING, Optional

from poolkit._wire.messages import Buffer, FrameError

if TYPE_CHECKING:
    from poolkit._worker.spin_wait import SpinWait

# Frames bigger than this are read straight into a buffer of their final size.
_DIRECT_READ_THRESHOLD = 1 << 20
_READ_CHUNK = 1 << 16
# Frames up to this size are joined into one buffer before they are written.
_JOIN_BELOW = 1 << 16

_SMALL_FRAME = struct.Struct("!i")
_LARGE_FRAME = struct.Struct("!iQ")
_MAX_SMALL_FRAME = 0x7FFFFFFF


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not on Linux
        return 1 << 40


#: A frame announced as larger than the machine's memory cannot be one a worker wrote: its
#: header is stray bytes (a task wrote into the pipe), not a length to allocate.
MAX_FRAME = _physical_memory()


def frame_header(length: int) -> bytes:
    """The length prefix ``Connection.recv_bytes`` expects before a frame of ``length`` bytes."""
    if length > _MAX_SMALL_FRAME:
        return _LARGE_FRAME.pack(-1, length)
    return _SMALL_FRAME.pack(length)


def parse_frame_header(buf: Buffer) -> tuple[int, int] | None:
    """Return ``(header_size, body_size)`` from the start of ``buf``, or None if incomplete."""
    if len(buf) < 4:
        return None
    (size,) = _SMALL_FRAME.unpack_from(buf)
    if size >= 0:
        return 4, size
    if len(buf) < 12:
        return None
    _, size = _LARGE_FRAME.unpack_from(buf)
    return 12, size


class FrameParser:
    """Cuts a byte stream into frames; the caller does the reading.

    Bytes read in chunks are handed to :meth:`feed`, and :meth:`pop_frame` returns each
    frame once it is complete. The rest of a large frame is not gathered chunk by chunk:
    :meth:`body_space` then offers the unfilled part of a buffer of the frame's final size,
    for the caller to read into directly (``os.readv``), and :meth:`body_filled` says how
    much arrived. ``limit``: a header announcing more bytes than this raises FrameError.
    """

    __slots__ = ("_body", "_buffer", "_filled", "_limit")

    def __init__(self, limit: Optional[int] = None) -> None:
        self._buffer = bytearray()
        self._body: Optional[bytearray] = None  # a large frame, read in place
        self._filled = 0  # bytes of _body that have arrived
        self._limit = limit

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._buffer) or self._body is not None

    def feed(self, chunk: bytes) -> None:
        """Add bytes read from the stream (never while :meth:`body_space` offers room)."""
        self._buffer += chunk

    def pop_frame(self) -> Optional[Buffer]:
        """The next complete frame's body, or None until more bytes have arrived.

        Raises FrameError for a header over the limit (the bytes are not frames).
        """
        body = self._body
        if body is not None:
            if self._filled < len(body):
                return None
            self._body = None
            return body
        buf = self._buffer
        parsed = parse_frame_header(buf)
        if parsed is None:
            return None
        header_size, body_size = parsed
        if self._limit is not None and body_size > self._limit:
            raise FrameError(f"a frame header announcing {body_size} bytes")
        end = header_size + body_size
        if len(buf) >= end:
            frame = bytes(buf[header_size:end])
            del buf[:end]
            return frame
        if body_size >= _DIRECT_READ_THRESHOLD:
            # Read the rest of a large frame in place instead of growing the buffer; every
            # byte buffered belongs to it, since it is not complete yet.
            body = bytearray(body_size)
            have = len(buf) - header_size
            body[:have] = buf[header_size:]
            buf.clear()
            self._body, self._filled = body, have
        return None

    def body_space(self) -> Optional[memoryview]:
        """Where the rest of a large frame goes, while one is being read; else None."""
        if self._body is None:
            return None
        return memoryview(self._body)[self._filled :]

    def body_filled(self, count: int) -> None:
        """``count`` more bytes were read into :meth:`body_space`."""
        self._filled += count

    def clear(self) -> None:
        """Drop everything buffered (the stream is given up)."""
        self._buffer.clear()
        self._body = None


class FrameReader:
    """Collects complete frames from a non-blocking pipe as data arrives (the parent's)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._parser = FrameParser(limit=MAX_FRAME)
        #: Why the bytes on this pipe cannot be read as frames any more (stray bytes).
        self.fault: Optional[FrameError] = None

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return self._parser.mid_frame

    def read_frames(self) -> tuple[list[Buffer], bool]:
        """Read everything available now. Returns ``(frames, at_eof)``.

        A header that announces more than :data:`MAX_FRAME` bytes ends the reading:
        the frames before it are returned, and :attr:`fault` says what was wrong.
        """
        if self.fault is not None:
            return [], False
        parser = self._parser
        frames: list[Buffer] = []
        while True:
            space = parser.body_space()
            if space is not None:
                try:
                    count = os.readv(self.fd, [space])
                except BlockingIOError:
                    return frames, False
                if count == 0:
                    return frames, True
                parser.body_filled(count)
                frame = parser.pop_frame()
                if frame is not None:
                    frames.append(frame)
                continue
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                return frames, False
            if not chunk:
                return frames, True
            parser.feed(chunk)
            try:
                frame = parser.pop_frame()
                while frame is not None:
                    frames.append(frame)
                    frame = parser.pop_frame()
            except FrameError as exc:
                self.fault = exc
                parser.clear()
                return frames, False
            if len(chunk) < _READ_CHUNK and parser.body_space() is None:
                # A short read emptied the pipe: skip the read that would only say so. The
                # selector is level-triggered, so later data (or end-of-file) wakes us again.
                return frames, False


class BlockingFrameSource:
    """The worker's side of its inbox: whole frames from a blocking pipe, few system calls.

    ``Connection.recv_bytes`` reads a frame's length and then its body: two reads for
    every batch of tasks. This reads whatever has arrived (up to 64 KiB) in one call and
    keeps the rest for the next frame.
    """

    def __init__(self, fd: int, spin: Optional[SpinWait] = None) -> None:
        self.fd = fd
        self._parser = FrameParser()
        self._spin = spin

    def next_frame(self) -> Buffer:
        """The next frame's body; raises EOFError at end-of-file."""
        parser = self._parser
        while True:
            frame = parser.pop_frame()
            if frame is not None:
                return frame
            space = parser.body_space()
            if space is not None:
                count = os.readv(self.fd, [space])
                if count == 0:
                    raise EOFError
                parser.body_filled(count)
                continue
            if self._spin is not None:
                self._spin.before_read()
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                raise EOFError
            parser.feed(chunk)


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
