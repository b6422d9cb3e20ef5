"""Fork replacement workers from a single-threaded template instead of the threaded parent.

Once the dispatcher thread runs, forking the parent is unsafe: the child inherits every lock
another thread held at that instant, and Python 3.12+ warns about it. So the fork backend
forks its first workers directly (before any poolkit thread exists) and, in the same
moment, a *template*: a copy of the parent that does nothing but wait on a socket. A
replacement worker is forked from the template, so it starts as fast as a fork and as
safely as a fork server, with the parent's imports and state as of pool start.

The parent sends the template a :class:`~poolkit._messages.SpawnRequest` with the worker's
pipe and slot descriptors attached (SCM_RIGHTS); the template answers with the pid, and
later reports the worker's exit code (it is the worker's parent, so only it can reap it).
The parent watches the worker through a pidfd, which works for a grandchild.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import time
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Optional

from ._messages import ChildExit, SpawnReply, SpawnRequest
from ._slots import RunningSlot
from ._transport import (
    close_inherited_parent_fds,
    register_parent_fd,
    unregister_parent_fd,
)

_MAX_MESSAGE = 4096
_REPLY_TIMEOUT = 30.0


def supported() -> bool:
    """Templates need pidfds (Linux 5.3+) and descriptor passing."""
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


class ForkTemplate:
    """The parent's side of a template process."""

    def __init__(
        self, context: BaseContext, target: Callable[..., Any], config_blob: bytes
    ) -> None:
        parent_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        register_parent_fd(parent_end.fileno())
        self._socket = parent_end
        self._exits: dict[int, int] = {}
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_template_main,
            args=(template_end, target, config_blob),
            name="poolkit-fork-template",
        )
        try:
            self.process.start()
        finally:
            template_end.close()

    def start_worker(self, args: tuple[Any, ...]) -> TemplateChild:
        """Have the template fork a worker running ``target(*args)``; args as for worker_main."""
        inbox, outbox, side, running, _config = args
        fds = [inbox.fileno(), outbox.fileno(), side.fileno(), running.fd]
        socket.send_fds(self._socket, [pickle.dumps(SpawnRequest())], fds)
        deadline = time.monotonic() + _REPLY_TIMEOUT
        while True:
            message = self._receive(deadline)
            if isinstance(message, SpawnReply):
                return TemplateChild(self, message.pid)

    def exitcode(self, pid: int, timeout: float = 0.0) -> Optional[int]:
        """The exit code the template reported for ``pid``; None if not reported yet."""
        deadline = time.monotonic() + timeout
        while pid not in self._exits:
            if self._receive(deadline) is None:
                return None
        return self._exits[pid]

    def _receive(self, deadline: float) -> Optional[object]:
        remaining = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self._socket], [], [], remaining)
        if not ready:
            if remaining > 0:
                raise TimeoutError("the fork template did not answer")
            return None
        data = self._socket.recv(_MAX_MESSAGE)
        if not data:
            raise ConnectionError("the fork template exited")
        message: object = pickle.loads(data)
        if isinstance(message, ChildExit):
            self._exits[message.pid] = message.exitcode
        return message

    def close(self) -> None:
        """Stop the template (it exits at end-of-file) and reap it."""
        if self._socket.fileno() >= 0:
            unregister_parent_fd(self._socket.fileno())
            self._socket.close()
        self.process.join(5.0)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        self.process.close()


class TemplateChild:
    """A worker forked by the template: the subset of ``Process`` the dispatcher uses."""

    def __init__(self, template: ForkTemplate, pid: int) -> None:
        self._template = template
        self.pid = pid
        self.sentinel = os.pidfd_open(pid)  # readable once the process has exited
        register_parent_fd(self.sentinel)
        self._exitcode: Optional[int] = None

    @property
    def exitcode(self) -> Optional[int]:
        if self._exitcode is None:
            self._exitcode = self._template.exitcode(self.pid)
        return self._exitcode

    def join(self, timeout: Optional[float] = None) -> None:
        ready, _, _ = select.select([self.sentinel], [], [], timeout)
        if ready and self._exitcode is None:
            # Dead; the template reports the code as soon as it has reaped it.
            self._exitcode = self._template.exitcode(self.pid, timeout=_REPLY_TIMEOUT)

    def is_alive(self) -> bool:
        return not select.select([self.sentinel], [], [], 0)[0]

    def terminate(self) -> None:
        self._send(signal.SIGTERM)

    def kill(self) -> None:
        self._send(signal.SIGKILL)

    def _send(self, signum: signal.Signals) -> None:
        try:
            signal.pidfd_send_signal(self.sentinel, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.is_alive():
            raise ValueError("cannot close a process that is still running")
        unregister_parent_fd(self.sentinel)
        os.close(self.sentinel)


def _template_main(sock: socket.socket, target: Callable[..., Any], config_blob: bytes) -> None:
    """The template process: fork a worker per request; report each worker's exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_parent_fds()
    register_parent_fd(sock.fileno())  # so the workers forked from here close it
    from multiprocessing import get_context

    context = get_context("fork")
    children: dict[int, BaseProcess] = {}
    while True:
        sentinels = {p.sentinel: p for p in children.values()}
        ready = connection.wait([sock, *sentinels])
        for item in ready:
            if item is sock:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 4)
                except OSError:
                    data = b""
                if not data:
                    return  # the parent closed the pool, or died
                process = _fork_worker(context, target, fds, config_blob)
                children[process.pid] = process  # type: ignore[index]
                sock.send(pickle.dumps(SpawnReply(process.pid)))  # type: ignore[arg-type]
            else:
                process = sentinels[item]  # type: ignore[index]
                process.join()
                del children[process.pid]  # type: ignore[arg-type]
                sock.send(pickle.dumps(ChildExit(process.pid, process.exitcode)))  # type: ignore[arg-type]
                process.close()


def _fork_worker(
    context: BaseContext, target: Callable[..., Any], fds: list[int], config_blob: bytes
) -> BaseProcess:
    inbox_fd, outbox_fd, side_fd, slot_fd = fds
    inbox = Connection(inbox_fd, writable=False)
    outbox = Connection(outbox_fd, readable=False)
    side = Connection(side_fd)
    running = RunningSlot(slot_fd)  # maps the slot and closes the descriptor
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=target, args=(inbox, outbox, side, running, config_blob), name="poolkit-worker-fork"
    )
    process.start()
    # The worker has its copies; the template keeps none of a worker's descriptors.
    inbox.close()
    outbox.close()
    side.close()
    running.close()
    return process
