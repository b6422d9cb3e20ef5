"""Where a pool stands in its life, as the dispatcher thread sees it.

::

    RUNNING ──shutdown()──► DRAINING ──no task left──► CLOSING ──┐
       │                       │                      (inboxes   │
       │                       │                       closed)   ├─► every worker gone:
       └───────────────────────┴─ terminate_workers() ─► FORCED ─┤   the dispatcher ends
                                  kill_workers()                 │
       any state ── cannot go on (initializer failed, ──► BROKEN ┘
                    no worker starts, the loop raised)

Other threads never change the state: they leave requests (``Dispatcher.request_stop``,
``force_stop``) that the dispatcher turns into a state when it wakes. A force on a broken pool
signals the workers again but leaves it BROKEN; why the pool broke, and who forced it, are kept
beside the state (``Dispatcher.broken``, ``Dispatcher._forced_by``) for the tasks' errors.
"""

from __future__ import annotations

import enum


class PoolState(enum.Enum):
    """One pool's phase; see the module docstring for the transitions."""

    #: Tasks are assigned; a retiring worker's successor starts before it exits.
    RUNNING = "running"
    #: ``shutdown()`` was asked for: what is queued still runs, then the inboxes close.
    DRAINING = "draining"
    #: The inboxes are closed: each worker exits by itself when it reads end-of-file.
    CLOSING = "closing"
    #: ``terminate_workers()`` or ``kill_workers()`` signalled every worker.
    FORCED = "forced"
    #: The pool cannot go on: every task failed, every worker was signalled.
    BROKEN = "broken"

    @property
    def assigns(self) -> bool:
        """Tasks go to workers, and a worker that dies is replaced (and, if it died before
        it was ready, counted as a startup failure)."""
        return self is PoolState.RUNNING or self is PoolState.DRAINING

    @property
    def abandons_tasks(self) -> bool:
        """The workers were stopped under their tasks: a task a dying worker held fails
        instead of going to another worker, and no death is the worker's own doing."""
        return self is PoolState.FORCED or self is PoolState.BROKEN
