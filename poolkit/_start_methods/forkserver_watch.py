"""Imported by the fork server at its start (a preload module): end it with its parent.

The ``multiprocessing`` fork server ends when the pipe from its parent hangs up. Any other
process the parent forked (a ``multiprocessing.Process``) holds a copy of that pipe, and then
the server, and every worker forked from it, would outlive a parent killed with SIGKILL. So
the server also waits on a pidfd of its parent on a thread of its own, and exits when the
parent does; its workers armed the parent-death signal against it (``_parent_watch``), so
they end with it, even one whose task holds the GIL.

The thread sits in ``poll`` holding no lock, so the server's later forks stay safe; Python
3.12+ warns about forking a process with threads, so that warning is silenced, in the server
only. Imported anywhere else (a test, a worker), it does nothing.
"""

from __future__ import annotations

import os
import select
import sys
import warnings

from poolkit._worker.parent_watch import open_pidfd, start_bare_thread


def _in_fork_server() -> bool:
    # The server imports its preload modules from multiprocessing.forkserver.main.
    # sys._getframe is CPython's; without it, the server is simply not watched.
    getframe = getattr(sys, "_getframe", None)
    server = sys.modules.get("multiprocessing.forkserver")
    main = getattr(server, "main", None)
    if getframe is None or main is None:
        return False
    frame = getframe(1)
    while frame is not None:
        if frame.f_code is main.__code__:
            return True
        frame = frame.f_back
    return False


def _watch_parent() -> None:
    parent = os.getppid()
    try:
        fd = open_pidfd(parent)
    except ProcessLookupError:
        os._exit(0)
    if fd is None:
        return  # no pidfds: the server's own pipe is all there is

    def wait() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
        os._exit(0)

    warnings.filterwarnings(
        "ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning
    )
    start_bare_thread(wait)


if _in_fork_server():
    _watch_parent()
