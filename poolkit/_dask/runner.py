"""What a dask worker runs for poolkit: one poolkit task record in, one worker message out.

The dask backend (``poolkit._dask.executor``) ships every task as poolkit's own envelope, the three
parts of a task record (:func:`poolkit._wire.messages.encode_task`: a fixed header, the pickled
function, the pickled arguments), as plain ``bytes`` arguments of :func:`run_task`. dask
therefore never sees the user's function or keyword arguments (no ``key=``/``retries=``
collisions), and the worker side is the very code a local worker runs
(``poolkit._worker.run.run_task``): the same unpickling errors, the same result and exception
handling, the same ``map`` chunks. :func:`run_task` never raises for anything the task does;
the outcome travels back as a worker message (bytes), decoded by the client like a local one.

This module must stay importable on a dask worker: poolkit has to be installed there.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from poolkit._wire.messages import TASK_HEADER, TaskKind, TaskRecord
from poolkit._worker.run import run_task as run_record

#: Unpickled functions, by their pickled bytes: a ``map`` ships the same function per chunk.
_functions: dict[bytes, Callable[..., Any]] = {}


def run_task(header: bytes, fn_blob: bytes, args_blob: bytes) -> tuple[int, bytes]:
    """Run one poolkit task in this dask worker; return ``(worker pid, encoded message)``.

    The message is a RESULT or an ERROR (``poolkit._wire.messages.encode_message``), exactly as a
    local worker would write it to its outbox.
    """
    task_id, kind, _, _, _ = TASK_HEADER.unpack(header)
    record = TaskRecord(task_id, TaskKind(kind), fn_blob, args_blob)
    # No out-of-band buffers: dask moves the blobs itself, and the result goes back in band.
    return os.getpid(), run_record(record, None, _functions, None)
