"""The dask side of a ``DaskExecutor``: the client, the tasks in flight, and the thread that
resolves their futures.

A task goes to dask as poolkit's own envelope (see ``poolkit._dask.executor``), under a unique
key. dask calls back, on its own thread, with each finished dask future; the "poolkit-dask"
thread takes them from an inbox, gathers their results in batches and resolves the poolkit
futures with the same messages a local worker sends. It also turns what dask reports (a
``KilledWorker``, a cancellation, a lost scheduler) into poolkit's errors (``_errors``).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import uuid
from typing import Any, Optional

from poolkit import _error_messages as messages
from poolkit import _lifecycle as lifecycle
from poolkit._dask.runner import run_task
from poolkit._dask.security import PrivateCluster
from poolkit._pool.tasks import TaskFuture, TaskState, fail, resolve
from poolkit._thread_signals import leave_signals_to_other_threads
from poolkit._wire.messages import decode_message

logger = logging.getLogger(__name__)

#: Results gathered from the cluster in one request, at most.
GATHER_BATCH = 512

_WAKE = object()  # put in a session's inbox to make its thread look at the stop request


def _stop_at_exit(session: Session, interrupted: bool) -> None:
    """As for the local pool (see ``_lifecycle``): before the interpreter joins non-daemon
    threads, every open executor finishes its work and then closes its client (and its
    cluster); after an unhandled Ctrl-C, its tasks are cancelled first."""
    if interrupted:
        session.cancel_all()
    session.request_stop()


def _join_at_exit(session: Session) -> None:
    session.thread.join()


def _executing_keys(dask_worker: Any) -> list[str]:
    """Run on each dask worker (``Client.run``): the keys of the tasks it is executing."""
    state = getattr(dask_worker, "state", None)
    executing = getattr(state, "executing", None)
    if executing is None:  # not a worker state machine this poolkit knows: assume all run
        return [str(key) for key in getattr(state, "tasks", {})]
    return [str(ts.key) for ts in executing]


def _key_prefix(fn_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", fn_name.rsplit(".", 1)[-1]).strip("_")
    return f"poolkit-{name[:40] or 'task'}"


class Session:
    """The client (and cluster poolkit started), the tasks in flight, and the thread that
    resolves their futures. Kept apart from the executor so that the thread does not keep
    an abandoned executor alive."""

    def __init__(
        self, client: Any, cluster: Any, owns_client: bool, private: Optional[PrivateCluster]
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.owns_client = owns_client
        self.private = private
        self.address = getattr(client.scheduler, "address", None) or "the scheduler"
        self.lock = threading.Lock()
        #: dask key -> (the task, its dask future), until the future is resolved
        self.tasks: dict[str, tuple[TaskState, Any]] = {}
        #: finished dask futures (from dask's callback thread), or _WAKE
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stopping = False
        self.broken: Optional[BaseException] = None
        self.thread = threading.Thread(
            target=self._run, name="poolkit-dask", daemon=lifecycle.POOL_THREADS_ARE_DAEMON
        )

    def start(self) -> None:
        lifecycle.track(self, _stop_at_exit, _join_at_exit)
        self.thread.start()

    # ------------------------------------------------------------ caller side

    def submit(self, task: TaskState) -> None:
        """Hand the task's envelope to dask under a unique key."""
        header, fn_blob, args_blob = task.parts
        task.parts = ()  # dask holds the envelope now; it is never resent from here
        key = f"{_key_prefix(task.fn_name)}-{uuid.uuid4().hex}"
        # dask has priorities of its own, with the same meaning: higher runs first.
        dask_future = self.client.submit(
            run_task, header, fn_blob, args_blob, key=key, pure=False, priority=task.priority
        )
        with self.lock:
            self.tasks[key] = (task, dask_future)
        dask_future.add_done_callback(self.inbox.put)
        task.future.add_done_callback(lambda f: self._on_future_done(key, f))

    def _on_future_done(self, key: str, future: TaskFuture) -> None:
        # A future cancelled by the caller (or by map's cleanup): release its dask task, so
        # the scheduler forgets it if it has not run (a running one ends, unobserved).
        if not future.cancelled():
            return
        with self.lock:
            entry = self.tasks.pop(key, None)
        if entry is not None:
            entry[1].release()
            self.inbox.put(_WAKE)

    def cancel_not_started(self) -> None:
        """Cancel every task no dask worker is executing (shutdown with cancel_futures)."""
        with self.lock:
            entries = list(self.tasks.items())
        if not entries:
            return
        try:
            replies = self.client.run(_executing_keys)
            running = {key for keys in replies.values() if keys for key in keys}
        except Exception as exc:  # the scheduler is gone: nothing will run anyway
            logger.debug("could not ask the dask workers what runs: %r", exc)
            running = set()
        for key, (task, _) in entries:
            if key not in running:
                task.future.cancel()

    def cancel_all(self) -> None:
        """Cancel every unfinished task, running or not (Ctrl-C, interpreter exit)."""
        with self.lock:
            entries = list(self.tasks.values())
        for task, _ in entries:
            task.future.cancel()

    def request_stop(self) -> None:
        """Close the client (and cluster) once every task is done; returns at once."""
        self.stopping = True
        self.inbox.put(_WAKE)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        leave_signals_to_other_threads()  # Ctrl-C must wake the caller, not this thread
        try:
            while True:
                batch = [self.inbox.get()]
                while len(batch) < GATHER_BATCH:
                    try:
                        batch.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                self._collect([item for item in batch if item is not _WAKE])
                del batch
                if self.stopping:
                    with self.lock:
                        if not self.tasks:
                            break
        except BaseException as exc:  # a bug in poolkit: never leave a future unresolved
            logger.exception("the poolkit dask thread failed")
            self._break(messages.dask_thread_failed(exc))
        finally:
            self._close()

    def _collect(self, finished: list[Any]) -> None:
        """Resolve the poolkit futures of these finished dask futures."""
        ready = []
        for dask_future in finished:
            with self.lock:
                entry = self.tasks.get(dask_future.key)
            if entry is None:
                continue  # cancelled by the caller meanwhile
            status = dask_future.status
            if status == "finished":
                ready.append(entry)
            elif status == "error":
                self._finish(entry, self._dask_error(entry[0], dask_future))
            elif status == "cancelled":
                self._finish(entry, self._cancelled_error(dask_future))
            else:  # "lost"/"pending": dask recomputes it and calls back again
                logger.debug("dask future %s called back in state %s", dask_future.key, status)
        if ready:
            self._gather(ready)

    def _gather(self, entries: list[tuple[TaskState, Any]]) -> None:
        try:
            values = self.client.gather([dask_future for _, dask_future in entries])
        except BaseException as exc:
            logger.debug("gathering %d results failed (%r); one by one", len(entries), exc)
            for entry in entries:
                self._gather_one(entry)
            return
        for entry, value in zip(entries, values):
            self._finish(entry, value)

    def _gather_one(self, entry: tuple[TaskState, Any]) -> None:
        task, dask_future = entry
        try:
            value = dask_future.result()
        except BaseException as exc:
            if dask_future.status == "cancelled":
                self._finish(entry, self._cancelled_error(dask_future))
                return
            self._finish(entry, messages.dask_fetch_failed(task.fn_name, exc))
        else:
            self._finish(entry, value)

    def _finish(self, entry: tuple[TaskState, Any], outcome: Any) -> None:
        """Resolve one task from ``(pid, message)`` or an exception; forget its dask future."""
        task, dask_future = entry
        with self.lock:
            if self.tasks.pop(dask_future.key, None) is None:
                return
        dask_future.release()
        if isinstance(outcome, BaseException):
            fail(task, outcome)
            return
        pid, message = outcome
        resolve(task, decode_message(message), pid)

    def _dask_error(self, task: TaskState, dask_future: Any) -> BaseException:
        """The poolkit error for a task dask itself failed (the runner never raises)."""
        try:
            exc = dask_future.exception()
        except BaseException as fetch_error:
            exc = fetch_error
        return messages.dask_run_failed(task.fn_name, exc)

    def _cancelled_error(self, dask_future: Any) -> BaseException:
        """The error for a task dask cancelled behind poolkit's back (lost scheduler...)."""
        try:
            dask_future.result()  # returns at once: the future is already cancelled
        except BaseException as exc:  # distributed's CancelledError, with a reason if new
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        else:
            reason = "unknown"
        status = getattr(self.client, "status", "")
        if reason == "scheduler-connection-lost" or status in ("connecting", "closing", "closed"):
            error = self.broken or messages.dask_scheduler_lost(self.address, reason)
            self.broken = error
            return error
        return messages.dask_cancelled(reason)

    def _break(self, error: BaseException) -> None:
        self.broken = error
        with self.lock:
            entries = list(self.tasks.values())
            self.tasks.clear()
        for task, dask_future in entries:
            dask_future.release()
            fail(task, error)

    def _close(self) -> None:
        lifecycle.untrack(self)
        if self.owns_client:
            try:
                self.client.close()
            except Exception as exc:
                logger.warning("closing the dask client failed: %r", exc)
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception as exc:
                logger.warning("closing the local dask cluster failed: %r", exc)
        if self.private is not None:
            self.private.close()
