"""Descriptors with a rule attached: parent-only ones, memory files, and pidfds.

Parent-only descriptors are recorded in a process-wide registry so that a worker started by
``fork`` (or by the fork template) can close the copies it inherits: a forked worker that
kept another worker's inbox open would stop that worker from ever seeing end-of-file when
the parent dies. Every poolkit descriptor that no worker may keep is registered when it is
made and unregistered just before it is closed (:func:`close_parent_fd` does both).

Memory files (``memfd_create``) hold the running slot of each worker and the large buffers
sent out of band; pidfds name one process for good, so the parent can watch and signal a
worker that is not its child (forkserver, template workers) without racing pid reuse.

Imported by workers too (they close the inherited descriptors first thing): keep it light.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

# fd -> (device, inode) of what it referred to when registered.
_parent_only_fds: dict[int, tuple[int, int]] = {}


def register_parent_fd(fd: int) -> None:
    """Record a descriptor that no worker process may keep open."""
    st = os.fstat(fd)
    _parent_only_fds[fd] = (st.st_dev, st.st_ino)


def unregister_parent_fd(fd: int) -> None:
    """Forget a descriptor; call before closing it, so the number is never closed twice."""
    _parent_only_fds.pop(fd, None)


def close_parent_fd(fd: int) -> None:
    """Forget a registered descriptor, then close it."""
    _parent_only_fds.pop(fd, None)
    os.close(fd)


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


def create_memory_file(name: str, size: int = 0) -> int:
    """A new anonymous memory file of ``size`` bytes (zeros), closed on exec; its descriptor.

    ``name`` shows in ``/proc/<pid>/fd`` as ``/memfd:<name>``. Where there are no memory
    files, an unlinked temporary file stands in.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux
        import tempfile

        with tempfile.TemporaryFile() as tmp:
            fd = os.dup(tmp.fileno())
    if size:
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
    return fd


def pidfds_supported() -> bool:
    """Can this process open pidfds and signal through them (Linux 5.3+, Python 3.9+)?"""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def open_parent_pidfd(pid: int) -> Optional[int]:
    """A pidfd for ``pid``, registered as parent-only; None if it cannot be had.

    None where pidfds do not exist, and for a process already gone (whoever asked learns
    of its exit another way).
    """
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    register_parent_fd(fd)  # a forked worker must not keep it
    return fd


def signal_pidfd(pidfd: int, signum: signal.Signals) -> None:
    """Send ``signum`` to the process ``pidfd`` names, if it still runs (never another)."""
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass  # already gone
