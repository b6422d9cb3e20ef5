"""Who may talk to a dask cluster: the private cluster poolkit starts, and plain addresses.

The cluster poolkit starts for ``Executor(backend="dask")`` (no ``address=``, no
``client=``) listens on 127.0.0.1, where every user of the machine can connect. A
connection to the scheduler, a nanny or a worker is enough to run code as the user who
started the executor (a task, ``run_on_scheduler``, a worker's or nanny's ``run``). So
every such connection is mutual TLS with credentials made for that one cluster by dask
itself (``distributed.security.Security.temporary``): the scheduler, the nannies and the
workers accept only a peer whose certificate that cluster's key signed. The key exists in
the parent's memory and in the worker processes the nannies start (it travels to them
inside the pickled ``Security`` object, through the anonymous pipe of their start), never
in a file another process could open (``poolkit._dask.credentials``).

A dask cluster keeps its scratch files (spilled task data, which is unpickled when read
back) under ``dask-scratch-space`` in the temporary directory, a name anyone can create
first. :class:`PrivateCluster` gives the cluster a fresh 0700 directory instead, removed
at shutdown, at interpreter exit and when the executor is collected; one left by a killed
parent is removed by the next cluster poolkit starts for the same user.

A cluster the user brings is the user's to secure; :func:`check_address` says once per
address when poolkit is asked to use one without TLS.

Importing this module does not import distributed (importing distributed changes how
exceptions pickle, process-wide).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import sys
import tempfile
import threading
import warnings
import weakref
from typing import Any, Optional

#: The cluster directories poolkit makes in the temporary directory, and their lock file.
DIRECTORY_PREFIX = "poolkit-dask-"
_LOCK_NAME = ".owner.lock"
#: Schemes on which dask neither encrypts nor authenticates.
PLAIN_SCHEMES = ("tcp", "ws")

# The package root: this module sits one level down, in poolkit/_dask/.
_POOLKIT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_warned: set[str] = set()
_warned_lock = threading.Lock()


class InsecureClusterWarning(UserWarning):
    """poolkit was asked to use a dask scheduler over plain TCP (no TLS, no authentication).

    Anyone who can reach that scheduler or its workers can run code on them and read every
    task. Issued once per address; see docs/distributed.md ("Security").
    """


def _remove_abandoned(base: str) -> None:
    """Remove the directories of clusters whose owner died without removing them (SIGKILL).

    A live owner holds an exclusive lock on its directory's lock file; this user's
    ``poolkit-dask-*`` directories whose lock anyone can take are abandoned.
    """
    me = os.geteuid()
    try:
        names = [name for name in os.listdir(base) if name.startswith(DIRECTORY_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != me:
                continue
            fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # not ours, or not a cluster's (yet)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner lives
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def _make_locked_directory(base: str) -> tuple[str, int]:
    """A new 0700 directory and the descriptor that holds its lock (see _remove_abandoned)."""
    directory = tempfile.mkdtemp(prefix=DIRECTORY_PREFIX, dir=base)
    fd = -1
    try:
        # Locked before it gets the name others look for: never seen unlocked while we live.
        staging = os.path.join(directory, _LOCK_NAME + ".new")
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staging, os.path.join(directory, _LOCK_NAME))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory, fd


def _remove_directory(directory: str, lock_fd: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.close(lock_fd)


class PrivateCluster:
    """What the cluster poolkit starts holds privately: TLS credentials and a directory.

    Use :meth:`close` once the cluster is closed; the directory is also removed at
    interpreter exit and when this object is collected, and, after a SIGKILL, by the next
    ``PrivateCluster`` of the same user (the worker processes exit with their parent).
    """

    def __init__(self) -> None:
        base = tempfile.gettempdir()
        _remove_abandoned(base)
        from poolkit._dask.credentials import temporary_security  # imports distributed

        self.security = temporary_security()
        #: Scratch space of the scheduler and the workers (dask's ``temporary-directory``).
        self.directory, lock_fd = _make_locked_directory(base)
        self._remove = weakref.finalize(self, _remove_directory, self.directory, lock_fd)

    def close(self) -> None:
        """Remove the directory and release the credentials."""
        self._remove()
        close = getattr(self.security, "close", None)
        if close is not None:
            close()


def _inside_poolkit(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_POOLKIT_DIR + os.sep)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside poolkit.

    Called by the function that warns; without ``sys._getframe`` (not every Python has
    it) the warning points at that function's caller.
    """
    get_frame = getattr(sys, "_getframe", None)
    if get_frame is None:
        return 2
    level = 1
    frame: Optional[Any] = get_frame(1)
    while frame is not None and _inside_poolkit(frame.f_code.co_filename):
        level += 1
        frame = frame.f_back
    return level


def check_address(address: Any, security: Any) -> None:
    """Before connecting to ``address``: warn about plain TCP, refuse TLS without credentials.

    Without ``security``: a plain-TCP scheduler (``tcp://``, ``ws://``, or no scheme while
    dask's default is tcp) gets an :class:`InsecureClusterWarning`, once per address; a
    ``tls://`` one, when dask's configuration holds no client certificate either, is a
    ValueError here rather than an error from inside distributed.Client (which then
    leaves its event loop behind).

    Raises:
        ValueError: a ``tls://`` address, no ``security``, no credentials configured.
    """
    if security is not None or not isinstance(address, str):
        return
    import dask.config
    from distributed.comm.addressing import parse_address
    from distributed.security import Security

    try:
        scheme, _ = parse_address(address)
    except ValueError:
        return  # distributed.Client reports a malformed address itself
    if scheme == "tls":
        loader = dask.config.get("distributed.client.security-loader", None)
        configured = Security()  # type: ignore[no-untyped-call]  # from dask's config
        if not loader and not getattr(configured, "tls_client_cert", None):
            raise ValueError(
                f"the dask scheduler at {address} speaks TLS: pass security= (a "
                "distributed.security.Security with this client's certificate and key), or "
                "configure distributed.comm.tls.client.* (see docs/distributed.md, 'Security')"
            )
        return
    if scheme not in PLAIN_SCHEMES:
        return
    with _warned_lock:
        if address in _warned:
            return
        _warned.add(address)
    warnings.warn(
        f"the dask scheduler at {address} is reached over plain {scheme.upper()}, without "
        "TLS or authentication: anyone who can reach it or its workers can run code on "
        "them and read every task. Use a tls:// address and pass security= (see "
        "docs/distributed.md, 'Security')",
        InsecureClusterWarning,
        stacklevel=_caller_stacklevel(),
    )
