"""A fourth start method, outside ``multiprocessing``: each worker is ``python -c`` started
by ``subprocess.Popen``, its channel passed as inherited descriptors (``pass_fds``).

This one module and one ``registry.register(SubprocessStartMethod)`` call are all it takes
(see docs/architecture.md, "Adding a start method"). It is a test fixture, not a feature:
it proves that the pool assumes nothing of a start method beyond ``StartMethod``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from typing import Any, Optional

from poolkit._start_methods.base import StartMethod, WorkerProcess
from poolkit._wire.fds import close_parent_fd, open_parent_pidfd, pidfds_supported
from poolkit._worker.args import WorkerArgs

#: What the new interpreter runs: take the parent's module path, then the start record, from
#: stdin; rebuild the worker's ends of its channel from the descriptors it inherited (same
#: numbers), and become a worker.
BOOTSTRAP = """\
import os, pickle, sys
sys.path[:] = pickle.load(sys.stdin.buffer)
record = pickle.load(sys.stdin.buffer)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
from multiprocessing.connection import Connection
from poolkit._wire.slots import RunningSlot
from poolkit._worker.args import WorkerArgs
from poolkit._worker.main import worker_main
fds = record["fds"]
side = fds["side"]
worker_main(
    WorkerArgs(
        inbox=Connection(fds["inbox"], writable=False),
        outbox=Connection(fds["outbox"], readable=False),
        side=None if side is None else Connection(side),
        running=RunningSlot(fds["running"]),
        config_blob=record["config_blob"],
        parent=record["parent"],
    )
)
"""


class SubprocessStartMethod(StartMethod):
    """Workers are fresh interpreters started by ``subprocess``, not ``multiprocessing``."""

    name = "subprocess"

    @classmethod
    def available(cls) -> bool:
        # pass_fds is POSIX; the sentinel is a pidfd (Popen has no descriptor of its own).
        return os.name == "posix" and pidfds_supported()

    def travel_error(self, obj: Any) -> Optional[str]:
        return "a worker started by subprocess is given no multiprocessing objects"

    def start_worker(self, args: WorkerArgs) -> WorkerProcess:
        assert args.running.fd is not None, "the parent's slot"
        fds = {
            "inbox": args.inbox.fileno(),
            "outbox": args.outbox.fileno(),
            "side": None if args.side is None else args.side.fileno(),
            "running": args.running.fd,
        }
        record = {
            "fds": fds,
            "config_blob": args.config_blob,
            "parent": args.parent,
        }
        popen = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP],
            stdin=subprocess.PIPE,
            pass_fds=[fd for fd in fds.values() if fd is not None],
        )
        try:
            assert popen.stdin is not None
            with popen.stdin:
                # The path first: the record's classes import from it (tests/tasks.py too).
                popen.stdin.write(pickle.dumps(sys.path) + pickle.dumps(record))
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        return PopenWorker(popen)


class PopenWorker:
    """A ``subprocess.Popen`` with the surface the pool needs (``WorkerProcess``)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        pidfd = open_parent_pidfd(popen.pid)
        if pidfd is None:  # gone already: its exit status is waiting to be read
            popen.wait()
            pidfd = os.open(os.devnull, os.O_RDONLY)  # always readable, like a dead pidfd
        self._sentinel = pidfd

    @property
    def pid(self) -> Optional[int]:
        return self._popen.pid

    @property
    def sentinel(self) -> int:
        return self._sentinel

    @property
    def exitcode(self) -> Optional[int]:
        return self._popen.poll()  # -signal for a signal, as multiprocessing says it

    def join(self, timeout: Optional[float] = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        self._popen.send_signal(signal.SIGTERM)  # never to a reaped (recycled) pid

    def kill(self) -> None:
        self._popen.send_signal(signal.SIGKILL)

    def close(self) -> None:
        if self._sentinel < 0:
            return
        if self._popen.poll() is None:
            raise ValueError("cannot close a process that is still running")
        close_parent_fd(self._sentinel)
        self._sentinel = -1
