"""``spawn``: every worker is a fresh interpreter, the safest and slowest start.

The new interpreter re-imports the main module as ``__mp_main__``; functions defined in
``__main__`` travel by value through cloudpickle instead, so a main module that names no
file (``python - < script``) is hidden while the worker starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager

from poolkit._start_methods.base import MultiprocessingStartMethod


class SpawnStartMethod(MultiprocessingStartMethod):
    """Workers are fresh interpreters: the safest and slowest start."""

    name = "spawn"

    def _starting(self) -> ContextManager[None]:
        return unimportable_main_hidden()


_main_lock = threading.Lock()


@contextlib.contextmanager
def unimportable_main_hidden() -> Iterator[None]:
    """Hide a ``__main__.__file__`` that names no file while a process starts.

    ``python - < script`` sets it to ``"<stdin>"``; multiprocessing would make the worker
    run that "file" and fail. Functions from such a ``__main__`` travel by value
    (cloudpickle), so the worker does not need it.
    """
    with _main_lock:
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        spec = getattr(main, "__spec__", None)
        if main is None or path is None or spec is not None or os.path.exists(path):
            yield
            return
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path
