"""The fork template's own process: it forks replacement workers for a ``fork`` pool.

See ``fork`` for why the template exists and for the parent's side of it. The template is a
fork of the parent made at pool start, before any poolkit thread runs; it waits on a socket
for :class:`SpawnRequest`, forks a worker for each, answers :class:`SpawnReply`, and
reports each worker's :class:`ChildExit` (it is the workers' parent, so only it can reap
them). Its messages are pickled ``NamedTuple``s on a ``SOCK_SEQPACKET`` socket, with
descriptors attached (SCM_RIGHTS): a wire format of their own, not the workers' frames.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

from poolkit._wire.fds import close_inherited_parent_fds, close_parent_fd, register_parent_fd
from poolkit._wire.slots import RunningSlot
from poolkit._worker.args import WorkerArgs
from poolkit._worker.main import worker_main
from poolkit._worker.parent_watch import ParentLink

#: The largest message either side sends (they are a few dozen bytes).
MAX_MESSAGE = 4096
#: The worker's descriptors a SpawnRequest carries, in this order.
CHANNEL_FDS = ("inbox", "outbox", "side", "running")


class SpawnRequest(NamedTuple):
    """Parent -> fork template: fork a worker (its descriptors travel with the message)."""


class SpawnReply(NamedTuple):
    """Fork template -> parent: the worker was forked (its pidfd travels with it)."""

    pid: int


class ChildExit(NamedTuple):
    """Fork template -> parent: a worker forked by the template ended and was reaped."""

    pid: int
    exitcode: int


def template_main(
    sock: socket.socket,
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
                    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, len(CHANNEL_FDS))
                except OSError:
                    data = b""
                if not data:
                    return  # the parent closed the pool, or died
                process = _fork_worker(context, fds, config_blob, link, carried)
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
    fds: list[int],
    config_blob: bytes,
    link: ParentLink,
    carried: tuple[Any, ...],
) -> BaseProcess:
    by_name = dict(zip(CHANNEL_FDS, fds))
    args = WorkerArgs(
        inbox=Connection(by_name["inbox"], writable=False),
        outbox=Connection(by_name["outbox"], readable=False),
        side=Connection(by_name["side"]),
        running=RunningSlot(by_name["running"]),  # maps the slot and closes the descriptor
        config_blob=config_blob,
        parent=link,
        carried=carried,
    )
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=worker_main, args=(args,), name="poolkit-worker-fork"
    )
    process.start()
    # The worker has its copies; the template keeps none of a worker's descriptors.
    args.inbox.close()
    args.outbox.close()
    if args.side is not None:
        args.side.close()
    args.running.close()
    return process
