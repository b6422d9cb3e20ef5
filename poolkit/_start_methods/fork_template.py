"""Fork replacement workers from a single-threaded template instead of the threaded parent.

Once the dispatcher thread runs, forking the parent is unsafe: the child inherits every lock
another thread held at that instant, and Python 3.12+ warns about it. So the fork backend
forks its first workers directly (before any poolkit thread exists) and, in the same
moment, a *template*: a copy of the parent that does nothing but wait on a socket. A
replacement worker is forked from the template, so it starts as fast as a fork and as
safely as a fork server, with the parent's imports and state as of pool start.

The parent sends the template a :class:`~poolkit._wire.messages.SpawnRequest` with the worker's
pipe and slot descriptors attached (SCM_RIGHTS); the template answers with the pid, and
later reports the worker's exit code (it is the worker's parent, so only it can reap it).
The parent watches the worker through a pidfd, which works for a grandchild.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Optional

from poolkit._wire.fds import (
    close_inherited_parent_fds,
    close_parent_fd,
    pidfds_supported,
    register_parent_fd,
    signal_pidfd,
    unregister_parent_fd,
)
from poolkit._wire.messages import ChildExit, SpawnReply, SpawnRequest
from poolkit._wire.slots import RunningSlot
from poolkit._worker.parent_watch import ParentLink

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 4096
#: How long the parent waits for the template to answer a request: a fork takes about a
#: millisecond, so a template silent this long is stopped or wedged, and is given up.
_REPLY_TIMEOUT = 5.0
#: How long a dead worker's exit code may take to arrive from the template.
_EXIT_REPORT_TIMEOUT = 1.0
#: Tries, a millisecond apart, at closing a template whose exit code another thread holds.
_CLOSE_RETRIES = 200


class TemplateFailed(ConnectionError):
    """The template exited, or did not answer in time: it forks no more workers."""


def supported() -> bool:
    """Templates need pidfds (Linux 5.3+) and descriptor passing."""
    return hasattr(socket, "send_fds") and pidfds_supported()


class ForkTemplate:
    """The parent's side of a template process."""

    def __init__(
        self,
        context: BaseContext,
        target: Callable[..., Any],
        config_blob: bytes,
        carried: tuple[Any, ...] = (),
    ) -> None:
        parent_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        register_parent_fd(parent_end.fileno())
        self._socket = parent_end
        self._exits: dict[int, int] = {}
        self._reply_pidfd = -1  #: the pidfd that came with the last SpawnReply
        #: Why the template forks no more workers, once it does not.
        self.failure: Optional[TemplateFailed] = None
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_template_main,
            args=(template_end, target, config_blob, os.getpid(), carried),
            name="poolkit-fork-template",
        )
        try:
            self.process.start()
        finally:
            template_end.close()

    def start_worker(self, args: tuple[Any, ...]) -> TemplateChild:
        """Have the template fork a worker running ``target(*args)``; args as for worker_main."""
        inbox, outbox, side, running = args[:4]
        fds = [inbox.fileno(), outbox.fileno(), side.fileno(), running.fd]
        if self.failure is not None:
            raise self.failure
        try:
            socket.send_fds(self._socket, [pickle.dumps(SpawnRequest())], fds)
        except OSError as exc:
            raise self._failed(f"the fork template could not be reached: {exc}") from exc
        deadline = time.monotonic() + _REPLY_TIMEOUT
        while True:
            message = self._receive(deadline)
            if isinstance(message, SpawnReply):
                pidfd, self._reply_pidfd = self._reply_pidfd, -1
                if pidfd < 0:  # not sent (cannot happen with this template): open one
                    pidfd = os.pidfd_open(message.pid)
                    register_parent_fd(pidfd)
                return TemplateChild(self, message.pid, pidfd)
            if message is None:
                raise self._failed(
                    f"the fork template (pid {self.process.pid}) did not answer "
                    f"within {_REPLY_TIMEOUT:g} s"
                )

    def exitcode(self, pid: int, timeout: float = 0.0) -> Optional[int]:
        """The exit code the template reported for ``pid``; None if not reported (yet).

        Never raises: once the template is gone, the codes it had not reported stay unknown.
        """
        deadline = time.monotonic() + timeout
        while pid not in self._exits:
            try:
                if self._receive(deadline) is None:
                    return None
            except TemplateFailed:
                return None
        return self._exits[pid]

    def _failed(self, why: str) -> TemplateFailed:
        """Give the template up: kill it (it may be stopped) and remember why."""
        if self.failure is None:
            self.failure = TemplateFailed(why)
            try:
                self.process.kill()
            except (OSError, ValueError, AttributeError):
                pass
        return self.failure

    def _receive(self, deadline: float) -> Optional[object]:
        """The next message, or None once ``deadline`` passed. Raises TemplateFailed."""
        if self.failure is not None:
            raise self.failure
        remaining = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self._socket], [], [], remaining)
        if not ready:
            return None
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._socket, _MAX_MESSAGE, 1)
        except OSError as exc:
            raise self._failed(f"the fork template could not be read: {exc}") from exc
        if not data:
            for fd in fds:
                os.close(fd)
            raise self._failed(f"the fork template (pid {self.process.pid}) exited")
        message: object = pickle.loads(data)
        if isinstance(message, ChildExit):
            self._exits[message.pid] = message.exitcode
        elif isinstance(message, SpawnReply) and fds:
            # The template's pidfd of the new worker: the parent cannot open its own by pid
            # once the worker has exited and the template reaped it (an initializer that
            # exits at once), and then the pid could already name another process.
            self._reply_pidfd = fds[0]
            register_parent_fd(fds[0])
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
        # multiprocessing polls every child it knows whenever any thread starts a process:
        # that thread's waitpid may win, and join() then returns before the code is stored.
        for _ in range(_CLOSE_RETRIES):
            try:
                self.process.close()
                return
            except ValueError:
                time.sleep(0.001)
        logger.warning("poolkit fork template %s: not reaped at close", self.process.pid)


class TemplateChild:
    """A worker forked by the template: the subset of ``Process`` the dispatcher uses."""

    def __init__(self, template: ForkTemplate, pid: int, pidfd: int) -> None:
        self._template = template
        self.pid = pid
        self.sentinel = pidfd  # readable once the process has exited (registered already)
        self._exitcode: Optional[int] = None

    @property
    def exitcode(self) -> Optional[int]:
        if self._exitcode is None:
            self._exitcode = self._template.exitcode(self.pid)
        return self._exitcode

    def join(self, timeout: Optional[float] = None) -> None:
        ready, _, _ = select.select([self.sentinel], [], [], timeout)
        if ready and self._exitcode is None:
            # Dead; the template reports the code as soon as it has reaped it (a template
            # that is gone reports nothing: the code stays unknown).
            self._exitcode = self._template.exitcode(self.pid, timeout=_EXIT_REPORT_TIMEOUT)

    def is_alive(self) -> bool:
        return not select.select([self.sentinel], [], [], 0)[0]

    def terminate(self) -> None:
        self._send(signal.SIGTERM)

    def kill(self) -> None:
        self._send(signal.SIGKILL)

    def _send(self, signum: signal.Signals) -> None:
        signal_pidfd(self.sentinel, signum)

    def close(self) -> None:
        if self.sentinel < 0:
            return
        if self.is_alive():
            raise ValueError("cannot close a process that is still running")
        close_parent_fd(self.sentinel)
        self.sentinel = -1


def _template_main(
    sock: socket.socket,
    target: Callable[..., Any],
    config_blob: bytes,
    parent_pid: int,
    carried: tuple[Any, ...] = (),
) -> None:
    """The template process: fork a worker per request; report each worker's exit.

    Each worker is watched through a pidfd, not ``multiprocessing``'s sentinel pipe: a
    process the worker's task started holds a copy of that pipe, and would hide the
    worker's death for as long as it lives. The template also watches the pool's parent:
    when it dies, the template kills every worker's process group and exits, so no worker
    outlives the parent, even one whose task holds the GIL (see ``_parent_watch``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_parent_fds()
    register_parent_fd(sock.fileno())  # so the workers forked from here close it
    from multiprocessing import get_context

    context = get_context("fork")
    children: dict[int, tuple[BaseProcess, int]] = {}  # pidfd -> (process, pid)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    try:
        parent_fd = os.pidfd_open(parent_pid)
    except ProcessLookupError:
        return
    poller.register(parent_fd, select.POLLIN)
    link = ParentLink(parent_pid, death_signal=False)  # the template's death ends no worker
    while True:
        for fd, _mask in poller.poll():
            if fd == parent_fd:
                _kill_groups(pid for _, pid in children.values())
                return
            if fd == sock.fileno():
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 4)
                except OSError:
                    data = b""
                if not data:
                    return  # the parent closed the pool, or died
                process = _fork_worker(context, target, fds, config_blob, link, carried)
                pid: int = process.pid  # type: ignore[assignment]
                pidfd = os.pidfd_open(pid)
                register_parent_fd(pidfd)
                children[pidfd] = (process, pid)
                poller.register(pidfd, select.POLLIN)
                socket.send_fds(sock, [pickle.dumps(SpawnReply(pid))], [pidfd])
            elif fd in children:
                process, pid = children.pop(fd)
                poller.unregister(fd)
                close_parent_fd(fd)
                exitcode = _reap(process)
                sock.send(pickle.dumps(ChildExit(pid, exitcode)))


def _reap(process: BaseProcess) -> int:
    """The exit code of a worker whose pidfd reported its exit (it is a zombie now)."""
    code = process.exitcode  # a non-blocking waitpid: the zombie is reaped at once
    if code is None:
        process.join()  # another thread of this process reaped it first: join reads it
        code = process.exitcode
    try:
        process.close()
    except ValueError:
        pass
    return code if code is not None else 255


def _kill_groups(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _fork_worker(
    context: BaseContext,
    target: Callable[..., Any],
    fds: list[int],
    config_blob: bytes,
    link: ParentLink,
    carried: tuple[Any, ...],
) -> BaseProcess:
    inbox_fd, outbox_fd, side_fd, slot_fd = fds
    inbox = Connection(inbox_fd, writable=False)
    outbox = Connection(outbox_fd, readable=False)
    side = Connection(side_fd)
    running = RunningSlot(slot_fd)  # maps the slot and closes the descriptor
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=target,
        args=(inbox, outbox, side, running, config_blob, link, carried),
        name="poolkit-worker-fork",
    )
    process.start()
    # The worker has its copies; the template keeps none of a worker's descriptors.
    inbox.close()
    outbox.close()
    side.close()
    running.close()
    return process
