"""``Executor(backend="dask")``: the same Executor on a dask.distributed cluster.

::

    caller threads                      dask client (its own event-loop thread)
    submit() / map()  ── pickle here ──► Client.submit(run_task, header, fn, args,
      (poolkit envelope)                               key=unique, pure=False)
                                                  │ scheduler ──► a dask worker:
    futures resolved ◄── "poolkit-dask" thread ◄──┘   _dask_runner.run_task runs the record
       (same messages as a local worker)   gathers finished results in batches

poolkit does not use ``Client.get_executor()``: that executor merges identical calls, takes
keyword arguments such as ``key=`` and ``retries=`` for itself, ignores ``chunksize``,
rejects iterators in ``map`` and cannot cancel on shutdown. Instead every task is poolkit's
own envelope (the header, pickled function and pickled arguments of a local task record),
submitted under a unique key with ``pure=False``, and run on the worker by
:func:`poolkit._dask.runner.run_task`, which is the local worker's own code. Results,
exceptions (with the worker's traceback as a :class:`~poolkit.RemoteTraceback` cause) and
pickling failures therefore come back exactly as on the local backends, and ``map`` is the
local implementation (``poolkit._map.driver``), which drives this class through the members
of :class:`poolkit._map.host.MapHost`.

Faults (see docs/distributed.md):

- A dask worker that dies while running a task: the scheduler re-runs the task on another
  worker, at most ``distributed.scheduler.allowed-failures`` times, then reports
  ``KilledWorker``, which becomes :class:`~poolkit.WorkerCrashedError` on that future only.
  dask cannot tell a task that was running on the dead worker from one merely queued there,
  so the retry is what keeps the queued ones alive. The cluster poolkit starts sets the bound
  to 1: a task that kills its worker fails after one re-run (two worker deaths); dask's own
  default, on clusters started elsewhere, is 3.
- A lost scheduler: the client cancels every future it holds; each pending poolkit future
  fails with ``BrokenProcessPool`` naming the scheduler, and the executor is broken.

Security (``poolkit._dask.security``): the cluster poolkit starts speaks mutual TLS with
credentials made for it, so no other local user can connect to it; its HTTP servers serve
nothing. A cluster given by ``address=`` or ``client=`` is the user's to secure: poolkit
passes ``security=`` on to the client and warns once about a plain ``tcp://`` address.
"""

from __future__ import annotations

import inspect
import logging
import queue
import re
import threading
import uuid
import weakref
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, TypeVar

from poolkit import _lifecycle as lifecycle
from poolkit._dask.runner import run_task
from poolkit._dask.security import PrivateCluster, check_address
from poolkit._errors import BrokenProcessPool, WorkerCrashedError
from poolkit._executor_base import TaskFrontend
from poolkit._pool.tasks import TaskFuture, TaskState, fail, resolve
from poolkit._thread_signals import leave_signals_to_other_threads
from poolkit._wire.messages import decode_message

if TYPE_CHECKING:
    from poolkit._map.host import MapHost

logger = logging.getLogger(__name__)

T = TypeVar("T")

INSTALL_HINT = "pip install 'poolkit[dask]'"
#: Scheduler settings of the cluster poolkit starts: a task whose worker dies is re-run on
#: another worker at most once (a task queued behind a crash survives it; a task that kills
#: every worker it runs on fails after two deaths), and workers are not handed more map
#: chunks than they have threads. Their HTTP servers (which dask starts even without a
#: dashboard, on loopback) get no routes: the task names, logs and metrics they would
#: show are nobody else's business, and the scheduler's would be reachable without TLS.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.scheduler.http.routes": [],
    "distributed.worker.http.routes": [],
}
#: Results gathered from the cluster in one request, at most.
GATHER_BATCH = 512

_WAKE = object()  # put in a session's inbox to make its thread look at the stop request


def _stop_at_exit(session: _Session, interrupted: bool) -> None:
    """As for the local pool (see ``_lifecycle``): before the interpreter joins non-daemon
    threads, every open executor finishes its work and then closes its client (and its
    cluster); after an unhandled Ctrl-C, its tasks are cancelled first."""
    if interrupted:
        session.cancel_all()
    session.request_stop()


def _join_at_exit(session: _Session) -> None:
    session.thread.join()


def import_distributed() -> Any:
    """Import ``distributed``, or raise an ImportError that says which extra to install."""
    try:
        import dask.config  # noqa: F401  (the cluster settings need it)
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"backend='dask' needs dask.distributed, which is not installed: {INSTALL_HINT}"
        ) from exc
    return distributed


class DaskExecutor(TaskFrontend):
    """What ``poolkit.Executor(backend="dask", ...)`` returns: tasks run on a dask cluster.

    ``submit``, ``map``, ``starmap``, ``shutdown`` and the context manager behave as on the
    local backends and raise the same exceptions; futures are ``concurrent.futures.Future``.
    See docs/distributed.md for what differs.

    Args:
        max_workers: with neither ``address`` nor ``client``: the number of worker processes
            (one thread each) of the local cluster poolkit starts, bound to 127.0.0.1 and
            reachable only with the TLS credentials poolkit made for it (mutual TLS: no
            other user of the machine can connect). Default: the CPUs this process may
            use. Not allowed with ``address`` or ``client`` (the cluster's size is the
            cluster's business).
        address: the scheduler to connect to, e.g. ``"tcp://10.0.0.5:8786"`` (anything
            ``distributed.Client`` accepts as an address). poolkit creates a client and
            closes it on shutdown; the cluster itself is never stopped. A plain
            ``tcp://`` address without ``security`` gives a
            ``poolkit._dask.security.InsecureClusterWarning`` (once per address).
        security: with ``address`` only: passed to ``distributed.Client`` as is (a
            ``distributed.security.Security``, e.g. for a ``tls://`` scheduler).
        client: an existing ``distributed.Client`` (not asynchronous). poolkit uses it and
            never closes it.

    Raises:
        ImportError: dask.distributed is not installed, or (for the local cluster)
            ``cryptography`` is not (``pip install 'poolkit[dask]'``).
        TypeError: an argument has the wrong type.
        ValueError: both ``address`` and ``client``; ``max_workers`` with one of them or
            not positive; ``security`` without ``address``; a ``tls://`` address without
            ``security`` (nor credentials in dask's configuration); an option of the
            local backends (``start_method``, ``initializer``, ``max_tasks_per_child``,
            ...) that does not apply to dask.
        OSError: the scheduler cannot be reached (from ``distributed.Client``).
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        *local_args: Any,
        backend: Optional[str] = "dask",
        address: Any = None,
        client: Any = None,
        security: Any = None,
        **local_options: Any,
    ) -> None:
        if backend != "dask":
            raise ValueError(f"DaskExecutor is backend='dask', got backend={backend!r}")
        _reject_local_options(local_args, local_options)
        if address is not None and client is not None:
            raise ValueError("give the scheduler's address or a client, not both")
        if security is not None and address is None:
            raise ValueError(
                "security= goes with address=: a client passed in has its own, and the "
                "cluster poolkit starts gets TLS credentials made for it"
            )
        max_workers = lifecycle.check_max_workers(max_workers)
        if max_workers is not None and (address is not None or client is not None):
            raise ValueError(
                "max_workers sizes the local cluster poolkit starts; with address= or "
                "client= the cluster's own workers are used"
            )
        distributed = import_distributed()
        cluster = private = None
        if client is not None:
            if not isinstance(client, distributed.Client):
                raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
            if client.asynchronous:
                raise ValueError("an asynchronous distributed.Client cannot back an Executor")
            owns_client = False
        elif address is not None:
            check_address(address, security)
            client = distributed.Client(address, security=security, set_as_default=False)
            owns_client = True
        else:
            workers = max_workers or lifecycle.default_workers()
            cluster, private = _start_local_cluster(distributed, workers)
            try:
                client = distributed.Client(cluster, set_as_default=False)
            except BaseException:
                cluster.close()
                private.close()
                raise
            owns_client = True
        try:
            threads = max_workers or sum(client.nthreads().values())
        except BaseException:
            if owns_client:
                client.close()
            if cluster is not None:
                cluster.close()
            if private is not None:
                private.close()
            raise
        self._init_frontend(max(1, threads))
        self._session = _Session(client, cluster, owns_client, private)
        # An executor dropped without shutdown() behaves as if shutdown(wait=False) was called.
        weakref.finalize(self, self._session.request_stop)
        self._session.start()

    # --------------------------------------------------------------- properties

    @property
    def backend(self) -> str:
        """``"dask"``."""
        return "dask"

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (poolkit's own, or the one passed in)."""
        return self._session.client

    @property
    def cluster(self) -> Any:
        """The ``LocalCluster`` poolkit started, or None when connected to another cluster."""
        return self._session.cluster

    @property
    def address(self) -> str:
        """The scheduler's address."""
        return str(self._session.address)

    # ------------------------------------------------------------------ submit

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a dask worker and return its future.

        Every keyword argument goes to ``fn`` (``key=``, ``retries=``, ``pure=`` included).
        The task is pickled here: if it cannot be, the returned future fails with
        ``pickle.PicklingError`` naming the argument. Identical calls are never merged.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down (or the interpreter is exiting).
            BrokenProcessPool: the connection to the scheduler was lost.
        """
        future, task = self._call_task(fn, args, kwargs)
        if task is not None:
            self._enqueue(task)
        return future

    def _broken(self) -> Optional[BaseException]:
        return self._session.broken

    def _deliver(self, task: TaskState) -> None:
        self._session.submit(task)

    # ---------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; let the submitted ones finish; release the cluster.

        Args:
            wait: block until every submitted task is done and poolkit's client (and the
                local cluster it started, if any) is closed. A client passed in is never
                closed.
            cancel_futures: first cancel every task the scheduler has not started.

        Calling it again is harmless. Called from a future's callback, it does not wait.
        """
        if not cancel_futures:
            self._finish_maps()
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            self._session.cancel_not_started()
        self._session.request_stop()
        if wait and threading.current_thread() is not self._session.thread:
            self._session.thread.join()

    def terminate_workers(self) -> None:
        """Not available on the dask backend: dask workers are not poolkit's to signal.

        Raises:
            NotImplementedError: always; use ``shutdown(cancel_futures=True)``.
        """
        raise NotImplementedError(
            "terminate_workers() is not available with backend='dask'; use "
            "shutdown(cancel_futures=True)"
        )

    def kill_workers(self) -> None:
        """Not available on the dask backend (see :meth:`terminate_workers`)."""
        raise NotImplementedError(
            "kill_workers() is not available with backend='dask'; use shutdown(cancel_futures=True)"
        )

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: the user wants out now, not after the running tasks end.
            self._session.cancel_all()
        self.shutdown(wait=True)
        return False

    def __repr__(self) -> str:
        state = lifecycle.state_name(self._shutdown, self._session.broken)
        return (
            f"<poolkit.Executor {state}, backend='dask', address={self.address!r}, "
            f"max_workers={self._max_workers}>"
        )


if TYPE_CHECKING:
    _runs_maps: type[MapHost] = DaskExecutor  # map's contract: checked by mypy


def _reject_local_options(args: tuple[Any, ...], options: dict[str, Any]) -> None:
    """ValueError for options of the local backends given a value; TypeError for unknown ones.

    Which options those are, and which may be given by position, is read from the two
    constructors' signatures, so a new option of the local pool needs no change here.
    """
    positional, local_only = _local_only_parameters()
    if len(args) > len(positional):
        raise TypeError(
            f"Executor() takes at most {len(positional) + 1} positional arguments "
            f"({len(args) + 1} given)"
        )
    given = dict(zip(positional, args))
    for name, value in options.items():
        if name not in local_only:
            raise TypeError(f"Executor() got an unexpected keyword argument {name!r}")
        given[name] = value
    used = [name for name, value in given.items() if value is not None and value != ()]
    if used:
        raise ValueError(
            f"{', '.join(used)} do(es) not apply to backend='dask' (dask starts and manages its "
            "own worker processes; see docs/distributed.md)"
        )


def _local_only_parameters() -> tuple[tuple[str, ...], frozenset[str]]:
    """The local pool's constructor parameters that a dask executor does not take: those
    after ``max_workers`` that may be given by position, and all of them."""
    from poolkit._executor import Executor  # the module that imports this one, on demand

    own = inspect.signature(DaskExecutor.__init__).parameters
    local = list(inspect.signature(Executor.__init__).parameters.values())
    local_only = [p for p in local if p.name not in own]
    positional = tuple(
        p.name for p in local_only if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    )
    return positional, frozenset(p.name for p in local_only)


def _start_local_cluster(distributed: Any, workers: int) -> tuple[Any, PrivateCluster]:
    """A LocalCluster of ``workers`` single-threaded processes that only its owner can use.

    Returns the cluster and what it holds privately (credentials, scratch directory), to
    be closed after the cluster.
    """
    import dask.config

    private = PrivateCluster()
    # The nannies copy the dask configuration into every worker they start (and restart).
    config = dict(LOCAL_CLUSTER_CONFIG, **{"temporary-directory": private.directory})
    try:
        with dask.config.set(config):
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # Scheduler, nannies and workers accept only peers holding this cluster's
                # certificate: TLS with client certificates required.
                protocol="tls",
                security=private.security,
                # No dashboard. The HTTP servers dask starts anyway get no routes and
                # listen on loopback, on free ports: the scheduler's would take 8787, and
                # a worker's without an address binds to every interface in distributed
                # 2024.8 (the last for Python 3.9), so it gets one and the nanny turns
                # the worker's dashboard off again.
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                worker_dashboard_address="127.0.0.1:0",
                worker_class=_nanny_without_dashboard(distributed),
            )
    except BaseException:
        private.close()
        raise
    return cluster, private


def _nanny_without_dashboard(distributed: Any) -> Any:
    """A ``Nanny`` whose worker has no dashboard, whatever its dashboard address."""

    class NannyWithoutDashboard(distributed.Nanny):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["dashboard"] = False
            super().__init__(*args, **kwargs)

    return NannyWithoutDashboard


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


class _Session:
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
            self._break(BrokenProcessPool(f"the poolkit dask thread failed: {exc!r}"))
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
            error = BrokenProcessPool(
                f"the result of {task.fn_name}() could not be fetched from the dask cluster: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            self._finish(entry, error)
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
        if type(exc).__name__ == "KilledWorker":
            return _worker_crashed(task.fn_name, exc)
        message = f"dask could not run {task.fn_name}(): {type(exc).__name__}: {exc}"
        if isinstance(exc, ImportError) and "poolkit" in str(exc):
            message += " (poolkit must be installed on every dask worker)"
        error = BrokenProcessPool(message)
        error.__cause__ = exc
        return error

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
            error = self.broken or BrokenProcessPool(
                f"lost the connection to the dask scheduler at {self.address} "
                f"({reason}); the task's outcome is unknown"
            )
            self.broken = error
            return error
        return BrokenProcessPool(f"dask cancelled the task ({reason}); it did not complete")

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


def _worker_crashed(fn_name: str, killed: BaseException) -> WorkerCrashedError:
    """``KilledWorker`` as poolkit's error: which dask worker died, running what."""
    worker = getattr(killed, "last_worker", None)
    address = getattr(worker, "address", None) or "?"
    pid = getattr(worker, "pid", None)
    allowed = getattr(killed, "allowed_failures", 0) or 0
    who = f"dask worker {address}" + (f" (pid {pid})" if pid else "")
    message = f"{who} died while running {fn_name}()"
    if allowed:
        message += (
            f", after dask had re-run it on {allowed} other worker(s) that died too "
            f"(distributed.scheduler.allowed-failures={allowed})"
        )
    error = WorkerCrashedError(message, pid=pid if isinstance(pid, int) else None, fn_name=fn_name)
    error.__cause__ = killed
    return error
