"""Event-style synchronisation with running tasks through named pipes (no sleeps)."""

from __future__ import annotations

import os
from pathlib import Path


class Gate:
    """A task calls ``tasks.signal_and_wait(gate.ready, gate.release)``; the test then
    learns the worker's pid with :meth:`wait_started` and lets it finish with :meth:`open`.

    Opening a FIFO blocks until the other side opens it: that is the event.
    """

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.ready = str(directory / f"{name}.ready")
        self.release = str(directory / f"{name}.release")
        os.mkfifo(self.ready)
        os.mkfifo(self.release)

    def wait_started(self) -> int:
        """Block until the task runs; return its worker's pid."""
        with open(self.ready) as ready:
            return int(ready.read())

    def open(self) -> None:
        """Let the task return."""
        fd = os.open(self.release, os.O_WRONLY)
        os.close(fd)

    @property
    def args(self) -> tuple[str, str]:
        return (self.ready, self.release)
