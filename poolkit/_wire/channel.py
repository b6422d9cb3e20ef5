"""A worker's channel as the parent holds it: two pipes and a side socket (parent only).

Each worker owns one inbox (parent -> worker) and one outbox (worker -> parent). The worker
sees ordinary blocking ``multiprocessing`` Connections. The parent keeps the other ends,
non-blocking, behind a :class:`~poolkit._wire.frames.FrameWriter` and a
:class:`~poolkit._wire.frames.FrameReader` (see ``frames`` for why). Every end the parent
keeps is registered as parent-only (``fds``), so that no forked worker holds it.
"""

from __future__ import annotations

import fcntl
import multiprocessing.connection
import os
import socket
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

from poolkit._wire.fds import register_parent_fd, unregister_parent_fd
from poolkit._wire.frames import FrameReader, FrameWriter, frame_header
from poolkit._wire.messages import STOP_BATCH

# Linux lets an unprivileged process grow a pipe to 1 MiB; fewer, larger writes for payloads.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_SIZE = 1 << 20


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # over the system limit (/proc/sys/fs/pipe-max-size): the default size works


def one_way_pipe() -> tuple[Connection, Connection]:
    """A ``multiprocessing`` pipe, ``(reading end, writing end)``."""
    reader, writer = multiprocessing.connection.Pipe(duplex=False)
    return reader, writer


class WorkerChannel:
    """The inbox and outbox of one worker; the parent keeps the non-blocking ends.

    Beside them runs a Unix socket that carries the memory files of large buffers (see
    ``buffers``), where the platform can pass descriptors. ``pipe`` makes each of the two
    pipes, ``(reading end, writing end)``: the start method's (``StartMethod.pipe``).
    """

    def __init__(self, pipe: Callable[[], tuple[Connection, Connection]] = one_way_pipe) -> None:
        made: list[Any] = []  # closed again if a later one cannot be made (EMFILE)
        try:
            inbox_reader, inbox_writer = pipe()
            made += (inbox_reader, inbox_writer)
            outbox_reader, outbox_writer = pipe()
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
