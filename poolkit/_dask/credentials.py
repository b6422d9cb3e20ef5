"""The TLS credentials of the cluster poolkit starts, held in anonymous memory files.

``Security.temporary()`` (dask's own) makes a key and a certificate for one cluster. dask
loads a certificate given as PEM text by writing it, and the private key, to a temporary
directory for the instant ``ssl`` needs a path, on every TLS context it makes.
:class:`MemorySecurity` hands dask paths of anonymous memory files (``memfd_create``)
instead: ``/proc/self/fd/N`` can be opened only by this process (and by root), and the
memory is gone with the process, even after a SIGKILL. Where memory files do not exist,
dask's own way is used (a 0700 directory, removed as soon as the key is loaded).

This module imports distributed (``MemorySecurity`` subclasses its ``Security``, and must
be importable where a worker unpickles it); ``poolkit._dask.security`` imports it only
when a cluster is started.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from distributed.security import Security

#: The role fields of a Security object that name a certificate and its key.
_CERT_FIELDS = ("tls_client_cert", "tls_scheduler_cert", "tls_worker_cert")
_KEY_FIELDS = ("tls_client_key", "tls_scheduler_key", "tls_worker_key")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _memory_file(name: str, text: str) -> int:
    """An anonymous memory file holding ``text`` (its descriptor, not inherited by exec)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


class MemorySecurity(Security):
    """A dask ``Security`` whose certificate and key are read from memory files.

    Built from the PEM text of one certificate (also the cluster's CA) and its key, as
    made by ``Security.temporary()``; every role (client, scheduler, worker) uses them.
    Pickled, it carries the PEM text and makes its own memory files where it is unpickled
    (a worker process), since a descriptor number means nothing in another process.
    """

    # No __slots__ here: Security checks its keyword arguments against ``self.__slots__``.

    def __init__(self, ca_pem: str, cert_pem: str, key_pem: str, **options: Any) -> None:
        fds: list[int] = []
        try:
            fds.append(_memory_file("poolkit-dask-cert", cert_pem))
            fds.append(_memory_file("poolkit-dask-key", key_pem))
        except BaseException:
            _close_all(fds)
            raise
        # A path without a newline is a file name to dask: it hands it to ssl as is.
        cert_path, key_path = (f"/proc/self/fd/{fd}" for fd in fds)
        roles = {field: cert_path for field in _CERT_FIELDS}
        roles.update({field: key_path for field in _KEY_FIELDS})
        super().__init__(  # type: ignore[no-untyped-call]  # distributed: no hints here
            require_encryption=True, tls_ca_file=ca_pem, **roles, **options
        )
        self._pem = (ca_pem, cert_pem, key_pem)
        self._fds = fds
        weakref.finalize(self, _close_all, fds)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._pem)

    def close(self) -> None:
        """Release the memory files; the object cannot make TLS contexts afterwards."""
        _close_all(self._fds)
        self._fds.clear()
        # The descriptor numbers will be reused: never let ssl read what gets them next.
        for field in (*_CERT_FIELDS, *_KEY_FIELDS):
            setattr(self, field, os.devnull)


def memory_files_work() -> bool:
    """Whether memory files can be made and opened by path here (Linux 3.17+ with /proc)."""
    if not hasattr(os, "memfd_create"):
        return False
    try:
        fd = _memory_file("poolkit-probe", "x")
    except OSError:
        return False
    try:
        with open(f"/proc/self/fd/{fd}") as f:
            return f.read() == "x"
    except OSError:
        return False
    finally:
        os.close(fd)


def temporary_security() -> Any:
    """Fresh mutual-TLS credentials for one cluster, which only its own processes hold.

    Raises:
        ImportError: the ``cryptography`` package is missing (``pip install
            'poolkit[dask]'`` installs it).
    """
    try:
        generated = Security.temporary()  # type: ignore[no-untyped-call]
    except ImportError as exc:
        raise ImportError(
            "backend='dask' secures the cluster it starts with TLS credentials made by "
            "distributed.security.Security.temporary(), which needs the 'cryptography' "
            "package: pip install 'poolkit[dask]'"
        ) from exc
    if not memory_files_work():
        return generated  # dask's own handling: a 0700 directory for the instant of loading
    return MemorySecurity(
        generated.tls_ca_file, generated.tls_client_cert, generated.tls_client_key
    )
