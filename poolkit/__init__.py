"""poolkit: a process pool Executor that is a drop-in ``ProcessPoolExecutor``.

>>> from poolkit import Executor
>>> with Executor(max_workers=2) as ex:
...     ex.submit(pow, 2, 10).result()
1024
"""

from __future__ import annotations

from ._backends import default_start_method, start_methods
from ._errors import (
    BrokenProcessPool,
    DeserializationError,
    RemoteTraceback,
    TaskStopped,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ._executor import Executor

__version__ = "0.1.0"

__all__ = [
    "BrokenProcessPool",
    "DeserializationError",
    "Executor",
    "RemoteTraceback",
    "TaskStopped",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "__version__",
    "default_start_method",
    "start_methods",
]
