"""``fork``: workers are forks of the calling process, the fastest start, no re-import.

Once the dispatcher thread runs, forking the parent is unsafe: the child inherits every lock
another thread held at that instant, and Python 3.12+ warns about it. So this start method
forks its first workers directly (before any poolkit thread exists) and, in the same
moment, a *template*: a copy of the parent that does nothing but wait on a socket. A
replacement worker is forked from the template, so it starts as fast as a fork and as
safely as a fork server, with the parent's imports and state as of pool start.

The parent sends the template a ``SpawnRequest`` with the worker's pipe and slot
descriptors attached (SCM_RIGHTS); the template answers with the pid, and later reports the
worker's exit code (it is the worker's parent, so only it can reap it). The parent watches
the worker through a pidfd, which works for a grandchild. The template's own process is in
``fork_template``.

A forked worker inherits every descriptor the parent had open; it closes poolkit's
parent-only descriptors first thing (``_wire.fds``).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import time
import warnings
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Optional

from poolkit._pickling import initargs as initargs_pickling
from poolkit._start_methods.base import (
    MultiprocessingStartMethod,
    StartMethod,
    WorkerProcess,
)
from poolkit._start_methods.fork_template import (
    CHANNEL_FDS,
    MAX_MESSAGE,
    ChildExit,
    SpawnReply,
    SpawnRequest,
    template_main,
)
from poolkit._start_methods.forkserver import ForkserverStartMethod
from poolkit._start_methods.spawn import SpawnStartMethod
from poolkit._wire.fds import (
    close_parent_fd,
    pidfds_supported,
    register_parent_fd,
    signal_pidfd,
    unregister_parent_fd,
)
from poolkit._worker.args import WorkerArgs

logger = logging.getLogger(__name__)


class ForkStartMethod(MultiprocessingStartMethod):
    """Workers are forks of the calling process: the fastest start, no re-import.

    Replacements are forked from a template process made at pool start (see the module
    docstring), never from the parent once its dispatcher thread runs.
    """

    name = "fork"

    def __init__(self, context: Optional[BaseContext] = None) -> None:
        super().__init__(context)
        self._template: Optional[ForkTemplate] = None
        #: Starts the replacements once the template is lost (see start_worker).
        self._fallback: Optional[StartMethod] = None

    def travel_error(self, obj: Any) -> Optional[str]:
        return None  # inherited, never pickled

    def prepare_respawns(self, config_blob: bytes) -> None:
        if supported():
            # The template inherits the carried objects now and its forks inherit them
            # again: a replacement gets the same handles as the first workers.
            self._template = ForkTemplate(self.context, config_blob, self.carried)

    def death_signal_safe(self, long_lived_thread: bool) -> bool:
        if self._fallback is not None:
            return self._fallback.death_signal_safe(long_lived_thread)
        # The template's workers are armed by the template (against nobody: see
        # fork_template); the first workers are forks of the calling thread.
        return long_lived_thread

    def start_worker(self, args: WorkerArgs) -> WorkerProcess:
        if self._fallback is not None:
            return self._fallback.start_worker(args)
        if self._template is None:
            return super().start_worker(args)
        try:
            return self._template.start_worker(args)
        except TemplateFailed as exc:
            # Killed, stopped or gone: forking the parent instead is not safe now that
            # the dispatcher thread runs, so replacements come from a clean process.
            fallback = _fallback_start_method()
            _check_carried(self.carried, fallback, exc)
            fallback.carry(self.carried)
            self._fallback = fallback
            message = (
                f"{exc}; replacement workers of this pool now start with "
                f"{fallback.name!r} (they import the main module like any "
                f"{fallback.name} worker)"
            )
            logger.warning("poolkit: %s", message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return fallback.start_worker(args)

    def close(self) -> None:
        if self._template is not None:
            self._template.close()
            self._template = None
        if self._fallback is not None:
            self._fallback.close()


def _check_carried(objects: tuple[Any, ...], method: StartMethod, lost: TemplateFailed) -> None:
    """Raise TypeError if one of ``objects`` cannot reach a worker of ``method``."""
    for obj in objects:
        why = method.travel_error(obj)
        if why is not None:
            raise TypeError(
                f"{lost}; its replacements would start with {method.name!r}, and "
                f"{initargs_pickling.describe_carried(obj)} cannot be given to "
                f"{method.name} workers: {why}"
            ) from lost


def _fallback_start_method() -> StartMethod:
    """What starts a fork pool's replacements once its template is lost."""
    if ForkserverStartMethod.available():
        return ForkserverStartMethod()
    return SpawnStartMethod()


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
        self, context: BaseContext, config_blob: bytes, carried: tuple[Any, ...] = ()
    ) -> None:
        parent_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        register_parent_fd(parent_end.fileno())
        self._socket = parent_end
        self._exits: dict[int, int] = {}
        self._reply_pidfd = -1  #: the pidfd that came with the last SpawnReply
        #: Why the template forks no more workers, once it does not.
        self.failure: Optional[TemplateFailed] = None
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=template_main,
            args=(template_end, config_blob, os.getpid(), carried),
            name="poolkit-fork-template",
        )
        try:
            self.process.start()
        finally:
            template_end.close()

    def start_worker(self, args: WorkerArgs) -> TemplateChild:
        """Have the template fork a worker running ``worker_main`` with ``args``'s channel.

        The rest of ``args`` the template has had since it was forked.
        """
        if args.side is None or args.running.fd is None:
            raise ValueError("a template worker needs a side socket and the parent's slot")
        by_name = {
            "inbox": args.inbox.fileno(),
            "outbox": args.outbox.fileno(),
            "side": args.side.fileno(),
            "running": args.running.fd,
        }
        fds = [by_name[name] for name in CHANNEL_FDS]
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
            data, fds, _flags, _addr = socket.recv_fds(self._socket, MAX_MESSAGE, 1)
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
