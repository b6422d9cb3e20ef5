"""How a process of the pool (a worker, the fork template) ends when the pool's parent dies.

Three mechanisms, because each one alone has a case it misses:

- **A watcher thread** waits on a pidfd of the pool's parent, and on a hang-up of the
  worker's inbox. A pidfd becomes readable when that very process exits, however many
  processes still hold copies of its pipes (a ``multiprocessing.Process`` the parent
  forked keeps every descriptor it had) and whoever the worker's own parent is (the fork
  server, the fork template). Without pidfds, it polls ``getppid()`` instead.
- **The kernel's parent-death signal** (``PR_SET_PDEATHSIG``): the thread above needs the
  GIL, and a task stuck in a long C call (a catastrophic regex) holds it. The kernel sends
  SIGKILL to the worker when its direct parent ends, GIL or not. Linux sends it when the
  parent *thread* that forked the worker ends, so the parent arms it only where that thread
  outlives the worker: the main thread, the pool's dispatcher thread, the fork server.
- **The fork server and the template** watch the parent as well (they never hold the GIL
  long), so a worker armed against them dies with them.

The last two need ``prctl``, through ctypes; where it cannot be had, the thread remains.
"""

from __future__ import annotations

import _thread
import os
import select
import threading
from typing import Callable, NamedTuple, Optional

from poolkit._thread_signals import signals_blocked

#: Exit code of a worker that stopped because its parent went away mid-task.
EXIT_PARENT_GONE = 70
_PR_SET_PDEATHSIG = 1
_POLL_MS = 1000  # only without pidfds: how often getppid() is checked


class ParentLink(NamedTuple):
    """What a starting worker is told about the pool's parent."""

    pid: int  #: the pool's parent process
    #: arm the parent-death signal: the thread that starts the worker outlives it
    death_signal: bool


def arm_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent thread ends.

    Returns False where that cannot be done (no Linux prctl, no ctypes).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError, ImportError):
        return False


def open_pidfd(pid: int) -> Optional[int]:
    """A pidfd for ``pid``; None where pidfds do not exist. Raises ProcessLookupError."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:
        return None  # an old kernel


class BusyFlag:
    """Shared by a worker's main loop and its watcher: is a task's code running?"""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = False
        self.parent_gone = False


def start_watch(link: ParentLink, inbox_fd: int, state: BusyFlag) -> None:
    """Exit the process if the pool's parent dies (see the module docstring).

    The process exits at once with :data:`EXIT_PARENT_GONE` when the parent is gone, or
    when the inbox hangs up while a task runs. After a hang-up while idle, the main loop
    reads end-of-file and exits by itself.
    """
    original_ppid = os.getppid()
    if link.death_signal and arm_death_signal(9) and os.getppid() != original_ppid:
        os._exit(EXIT_PARENT_GONE)  # the parent died before the signal was armed
    try:
        parent_fd = open_pidfd(link.pid)
    except ProcessLookupError:
        os._exit(EXIT_PARENT_GONE)  # already gone
    if parent_fd is None:

        def parent_gone() -> bool:
            return os.getppid() != original_ppid

    else:

        def parent_gone() -> bool:
            return bool(select.select([parent_fd], [], [], 0)[0])

    def watch() -> None:
        poller = select.poll()
        poller.register(inbox_fd, 0)  # no events asked: wakes on hang-up only
        if parent_fd is not None:
            poller.register(parent_fd, select.POLLIN)
        timeout = None if parent_fd is not None else _POLL_MS
        while True:
            events = poller.poll(timeout)
            if any(fd == inbox_fd and mask & select.POLLNVAL for fd, mask in events):
                return  # the inbox was closed: the worker is exiting anyway
            gone = parent_gone()
            hung_up = any(fd == inbox_fd for fd, _ in events)
            if not (gone or hung_up):
                continue
            with state.lock:
                state.parent_gone = True
                # The parent never closes the inbox while a task runs, so a hang-up then
                # means it died. A hang-up while idle is left to the main loop, which reads
                # end-of-file and exits cleanly (atexit handlers run).
                if gone or state.busy:
                    os._exit(EXIT_PARENT_GONE)
            return

    start_bare_thread(watch)


def start_bare_thread(target: Callable[[], None]) -> None:
    """Start ``target`` on a thread of its own, every signal blocked, without waiting for it.

    ``threading.Thread.start`` waits until the new thread runs, which in a freshly forked
    worker on a busy machine took 0.6-0.9 ms. Like a daemon thread, it never delays the
    process's exit. With every signal blocked, a task's own signal handlers wake the task's
    thread.
    """
    with signals_blocked():
        _thread.start_new_thread(target, ())
