"""poolkit: a process pool Executor that is a drop-in ``ProcessPoolExecutor``.

>>> from poolkit import Executor
>>> with Executor(max_workers=2) as ex:
...     ex.submit(pow, 2, 10).result()
1024
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolkit._dask.security import InsecureClusterWarning
    from poolkit._errors import (
        BrokenProcessPool,
        DeserializationError,
        RemoteTraceback,
        TaskStopped,
        TaskTimeoutError,
        WorkerCrashedError,
    )
    from poolkit._executor import Executor
    from poolkit._start_methods.registry import default_start_method, start_methods

# Names are imported on first use (PEP 562). A worker process imports ``poolkit._worker.main``,
# which imports this package first: eager imports here would load the whole parent side
# (executor, dispatcher, backends, map) into every worker, costing start-up time and memory.
_LAZY = {
    "Executor": "._executor",
    "default_start_method": "._start_methods.registry",
    "start_methods": "._start_methods.registry",
    "BrokenProcessPool": "._errors",
    "DeserializationError": "._errors",
    "RemoteTraceback": "._errors",
    "TaskStopped": "._errors",
    "TaskTimeoutError": "._errors",
    "WorkerCrashedError": "._errors",
    "InsecureClusterWarning": "._dask.security",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    # The public names and the module's own dunders: not what this module imported for
    # itself (Any, TYPE_CHECKING, annotations), and each name once, loaded or not.
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


__version__ = "0.1.0"

__all__ = [
    "BrokenProcessPool",
    "DeserializationError",
    "Executor",
    "InsecureClusterWarning",
    "RemoteTraceback",
    "TaskStopped",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "__version__",
    "default_start_method",
    "start_methods",
]
