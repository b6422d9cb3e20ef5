"""``forkserver``: workers are forked from a clean server process, started once per parent.

poolkit adds its worker module to the server's preload list, so each worker starts with it
already imported, and a module of its own (``forkserver_watch``) that makes the server end
with its parent.
"""

from __future__ import annotations

import multiprocessing.forkserver
from contextlib import AbstractContextManager as ContextManager
from multiprocessing.context import BaseContext
from typing import Optional

from poolkit._start_methods.base import MultiprocessingStartMethod
from poolkit._start_methods.spawn import unimportable_main_hidden
from poolkit._worker.main import worker_main

#: Imported by the fork server only: it makes the server end with the parent.
_SERVER_WATCH_MODULE = "poolkit._start_methods.forkserver_watch"


class ForkserverStartMethod(MultiprocessingStartMethod):
    """Workers are forked from a clean server process started once per parent process."""

    name = "forkserver"

    def __init__(self, context: Optional[BaseContext] = None) -> None:
        super().__init__(context)
        _add_forkserver_preload(worker_main.__module__, _SERVER_WATCH_MODULE)

    def death_signal_safe(self, long_lived_thread: bool) -> bool:
        return True  # the fork server's single thread forks every worker

    def _starting(self) -> ContextManager[None]:
        # The server's workers import the main module as spawn's do.
        return unimportable_main_hidden()


def _add_forkserver_preload(*modules: str) -> None:
    # The preload list belongs to the process-wide fork server and only matters before the
    # server starts; keep whatever the user (or the stdlib default, "__main__") put there.
    # Private names of multiprocessing.forkserver (3.9-3.13; re-check on a new version):
    # without them, nothing is added, and workers start without the preload.
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [module for module in modules if module not in current]
    if missing and server is not None and getattr(server, "_forkserver_pid", None) is None:
        multiprocessing.forkserver.set_forkserver_preload([*current, *missing])
