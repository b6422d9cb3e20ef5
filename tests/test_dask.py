"""``Executor(backend="dask")`` on a real dask.distributed LocalCluster on 127.0.0.1.

One cluster (2 worker processes, 1 thread each) serves the module. It runs in a subprocess
of its own, so the per-test leak check below can still demand that nothing of poolkit's is
left in this process: no thread, no descriptor, no child process outside that cluster. The
cluster is created with the scheduler settings poolkit uses for the cluster it starts
itself (``poolkit._dask.executor.LOCAL_CLUSTER_CONFIG``): a task whose worker dies is re-run once.
"""

from __future__ import annotations

import copyreg
import itertools
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import pytest
import tasks
import test_basic
import test_compat
import test_errors
import test_lifecycle
from conftest import _infrastructure, _open_fds, _process_table, descendants, wait_gone
from fifo import Gate

import poolkit
from poolkit import BrokenProcessPool, RemoteTraceback, WorkerCrashedError
from poolkit._dask.executor import LOCAL_CLUSTER_CONFIG, DaskExecutor
from poolkit._map.host import MapHost

TESTS_DIR = str(Path(__file__).parent)
# The module's cluster is a plain-TCP one on loopback, as a user may bring: poolkit warns
# about it once (tests/test_dask_security.py checks the warning).
pytestmark = pytest.mark.filterwarnings("ignore:the dask scheduler at tcp.*:UserWarning")

_CLUSTER_SCRIPT = """
import json, sys
import dask
from distributed import LocalCluster

with dask.config.set(json.loads(sys.argv[1])):
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
    )
print(json.dumps({"address": cluster.scheduler_address}), flush=True)
sys.stdin.read()  # until the test closes our stdin
cluster.close()
"""


def _env() -> dict[str, str]:
    """The environment of a cluster process: the tests' task modules importable."""
    path = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from process {process.pid} within {timeout} s")
    return process.stdout.readline()


def _stop(process: subprocess.Popen[str], timeout: float = 20) -> None:
    """Let the process end (its stdin closed); kill its whole session if it does not."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


_shared_cluster: list[Cluster] = []  # the module's cluster, once started


class Cluster:
    """The module's cluster: its scheduler address and its process tree."""

    def __init__(self, process: subprocess.Popen[str], address: str, distributed: Any) -> None:
        self.process = process
        self.address = address
        self.distributed = distributed

    def pids(self) -> set[int]:
        return {self.process.pid} | descendants(self.process.pid)

    def executor(self, *_args: Any, **_kwargs: Any) -> DaskExecutor:
        """A dask-backed executor on this cluster (a local executor's arguments ignored)."""
        ex = poolkit.Executor(backend="dask", address=self.address)
        assert isinstance(ex, DaskExecutor)
        return ex

    def wait_for_workers(self, count: int = 2) -> None:
        with self.distributed.Client(self.address, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=30)


@pytest.fixture(scope="module")
def distributed() -> Iterator[Any]:
    """``distributed``, imported here and not at collection; its side effect undone after.

    Importing distributed installs tblib's pickling for every exception class in
    ``copyreg`` (``tblib.pickling_support.install()``), process-wide. Exceptions that could
    not be rebuilt from a pickle then can, in this process and in workers forked from it,
    which would change what other test modules observe. The dispatch table is restored when
    this module is done (``sys.modules`` keeps distributed: its import does not run again).
    """
    saved = dict(copyreg.dispatch_table)
    imported_before = "distributed" in sys.modules
    module = pytest.importorskip("distributed")
    yield module
    if not imported_before:
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(saved)


@pytest.fixture(scope="module")
def cluster(distributed: Any) -> Iterator[Cluster]:
    process = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER_SCRIPT, json.dumps(LOCAL_CLUSTER_CONFIG)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        address = json.loads(_read_line(process, 60))["address"]
        found = Cluster(process, address, distributed)
        found.wait_for_workers()  # also creates dask's process-wide helpers before any test
        _shared_cluster.append(found)
        yield found
    finally:
        _shared_cluster.clear()
        pids = {process.pid} | descendants(process.pid)
        _stop(process)
    # Module-end check: the cluster's processes (scheduler, nannies, workers) are all gone.
    assert not wait_gone(pids, timeout=10), "dask cluster processes left running"


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """conftest's leak check, except for the module's cluster and dask's own helpers.

    After each test: no poolkit thread, no child process other than the shared cluster's
    (and multiprocessing's helpers), and no new descriptor once dask's client connections
    have closed.
    """
    fds_before = _open_fds()
    yield
    for thread in threading.enumerate():
        if thread.name in ("poolkit-dask", "poolkit-dispatcher"):
            thread.join(20)
            assert not thread.is_alive(), f"a {thread.name} thread is still running"
    me = os.getpid()
    shared = _shared_cluster[0].pids() if _shared_cluster else set()
    leftover = descendants(me) - _infrastructure() - shared
    assert not wait_gone(leftover, timeout=10), f"processes left running: {sorted(leftover)}"
    zombies = {
        pid
        for pid, (ppid, state) in _process_table().items()
        if ppid == me and state == "Z" and pid in leftover
    }
    assert not zombies, f"processes left unreaped: {sorted(zombies)}"
    # A closed client's sockets are released by its event loop thread: give it a moment.
    deadline = time.monotonic() + 5
    while True:
        fds_after = _open_fds()
        new = {fd: t for fd, t in fds_after.items() if fds_before.get(fd) != t}
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new, f"descriptors left open: {new}"


# ----------------------------------------------------------------- the contract


def _contract_cases() -> list[Any]:
    """Tests every start method passes that apply to a shared dask cluster too.

    Left out: tests that rely on a pool of their own (same worker pid after an error,
    one worker, reaped workers), on ``kill_workers()``, on ``max_tasks_per_child`` or an
    initializer, and the slowest ones (5000 separate tasks).
    """
    chosen = [
        (test_basic, "test_issue_example"),
        (test_basic, "test_closures_and_local_functions"),
        (test_basic, "test_submit_passes_arguments_through"),
        (test_basic, "test_returns_real_futures"),
        (test_basic, "test_workers_are_persistent"),
        (test_basic, "test_map_exception_raised_at_its_position"),
        (test_basic, "test_map_buffersize_reads_input_lazily"),
        (test_basic, "test_submit_from_many_threads"),
        (test_errors, "test_task_exception_carries_worker_traceback"),
        (test_errors, "test_unpicklable_argument_fails_only_its_future"),
        (test_errors, "test_error_at_task_pickle_is_a_pickling_error"),
        (test_errors, "test_result_that_cannot_be_unpickled_in_the_parent"),
        (test_errors, "test_submit_after_shutdown_raises"),
        (test_lifecycle, "test_shutdown_without_wait_still_finishes_the_work"),
        (test_lifecycle, "test_context_manager_and_callback_shutdown"),
        (test_compat, "test_map_keeps_no_reference_to_yielded_results"),
        (test_compat, "test_cancelled_future_then_shutdown"),
    ]
    cases = [pytest.param(m, name, {}, id=f"{m.__name__}.{name}") for m, name in chosen]
    for chunksize in (1, 3, 100):
        cases.append(
            pytest.param(
                test_basic,
                "test_map_matches_builtin",
                {"chunksize": chunksize},
                id=f"test_basic.test_map_matches_builtin[{chunksize}]",
            )
        )
    # Every failure stage of the stdlib parity table (crashes included).
    stages = test_compat.test_failure_at_each_stage_has_the_stdlib_exception_type
    mark = next(m for m in stages.pytestmark if m.name == "parametrize")
    names = [n.strip() for n in mark.args[0]] if not isinstance(mark.args[0], str) else None
    names = names or [n.strip() for n in mark.args[0].split(",")]
    for values, case_id in zip(mark.args[1], mark.kwargs["ids"]):
        cases.append(
            pytest.param(
                test_compat,
                stages.__name__,
                dict(zip(names, values)),
                id=f"test_compat.failure_stage[{case_id}]",
            )
        )
    return cases


@pytest.mark.parametrize(("module", "name", "kwargs"), _contract_cases())
def test_contract(
    cluster: Cluster,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    kwargs: dict[str, Any],
) -> None:
    """A test of the local suite, with its ``Executor`` replaced by the dask backend."""
    monkeypatch.setattr(module, "Executor", cluster.executor)
    test: Callable[..., None] = getattr(module, name)
    test(start_method="dask", **kwargs)
    if kwargs.get("expected") == "BrokenProcessPool":  # some of these kill their worker
        cluster.wait_for_workers()


# ------------------------------------------------------------------ submit & map


def test_submit_on_the_cluster(cluster: Cluster) -> None:
    with poolkit.Executor(backend="dask", address=cluster.address) as ex:
        assert isinstance(ex, DaskExecutor) and not isinstance(ex, poolkit.Executor)
        assert isinstance(ex, MapHost)  # what map uses of an executor
        assert ex.max_workers == 2 and ex.address == cluster.address
        future = ex.submit(pow, 2, 10)
        assert isinstance(future, futures.Future)
        assert future.result(timeout=30) == 1024
        assert ex.submit(lambda x: x * 2, 21).result(timeout=30) == 42
        assert "backend='dask'" in repr(ex) and "running" in repr(ex)
    assert "shut down" in repr(ex)


def test_dask_keyword_names_reach_the_function(cluster: Cluster) -> None:
    names = dict(
        key="k",
        retries=3,
        pure=True,
        workers=["nowhere"],
        resources={"GPU": 1},
        priority=9,
        allow_other_workers=False,
        actor=True,
        fifo_timeout="0s",
    )
    with cluster.executor() as ex:
        assert ex.submit(dict, **names).result(timeout=30) == names
        assert ex.submit(tasks.add, 1, 2, c=3).result(timeout=30) == 6


def test_identical_calls_are_never_merged(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        fs = [ex.submit(uuid.uuid4) for _ in range(20)]
        assert len({f.result(timeout=30) for f in fs}) == 20
        assert len(set(ex.map(lambda _: uuid.uuid4(), [1] * 20, chunksize=1))) == 20


def test_map_is_lazy_over_an_endless_generator(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        endless = itertools.count()
        results = ex.map(tasks.square, endless)
        assert list(itertools.islice(results, 100)) == [i * i for i in range(100)]
        results.close()
        read = next(endless)
        # Bounded: what was consumed plus the chunks in flight (default buffersize).
        assert 100 <= read <= 100 + 4 * ex.max_workers * 4096
        unordered = sorted(ex.map(tasks.square, range(30), ordered=False, chunksize=4))
        assert unordered == sorted(i * i for i in range(30))
        assert list(ex.starmap(pow, [(2, 5), (3, 2)])) == [32, 9]
        done: list[int] = []
        assert len(list(ex.map(tasks.square, range(25), progress=done.append))) == 25
        assert sum(done) == 25


def test_map_priority_is_dask_priority(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        results = ex.map(tasks.square, range(10), priority=3, chunksize=1)
        assert list(results) == [i * i for i in range(10)]
        with pytest.raises(TypeError):
            ex.map(tasks.square, range(3), priority=1.5)  # type: ignore[arg-type]


def test_map_rejects_bad_keywords(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        with pytest.raises(ValueError):
            ex.map(tasks.square, range(3), chunksize=0)
        with pytest.raises(TypeError):
            ex.map(tasks.square, range(3), buffersize="many")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ex.map(3, range(3))  # type: ignore[arg-type]


# ------------------------------------------------------------------------ errors


def test_task_exception_has_the_remote_traceback(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(tasks.raise_value_error, "boom").result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in cause.tb and "raise ValueError(message)" in cause.tb
        results = ex.map(tasks.divide, [1, 2], [1, 0], chunksize=2)
        assert next(results) == 1
        with pytest.raises(ZeroDivisionError) as info2:
            next(results)
        assert isinstance(info2.value.__cause__, RemoteTraceback)


def test_unpicklable_argument_fails_its_future_with_pickling_error(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        future = ex.submit(tasks.echo, threading.Lock())
        with pytest.raises(pickle.PicklingError, match="argument 0"):
            future.result(timeout=30)
        assert ex.submit(tasks.square, 5).result(timeout=30) == 25


def test_worker_killed_mid_task_is_retried_once_then_fails(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL of the dask worker running a task: one transparent re-run on another worker
    (allowed-failures=1, as on the cluster poolkit starts); a second death fails the future
    with WorkerCrashedError naming the worker and the function. Other futures are untouched."""
    survivor_gate, victim_gate = Gate(tmp_path, "survivor"), Gate(tmp_path, "victim")
    with cluster.executor() as ex:
        survivor = ex.submit(tasks.signal_and_wait, *survivor_gate.args, "survived")
        survivor_pid = survivor_gate.wait_started()
        victim = ex.submit(tasks.signal_and_wait, *victim_gate.args)
        first_pid = victim_gate.wait_started()
        assert first_pid != survivor_pid
        os.kill(first_pid, signal.SIGKILL)
        survivor_gate.open()
        assert survivor.result(timeout=30) == "survived"
        second_pid = victim_gate.wait_started()  # the re-run, on another worker process
        assert second_pid != first_pid and not victim.done()
        os.kill(second_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            victim.result(timeout=30)
        error = info.value
        assert error.pid == second_pid and error.fn_name == "tasks.signal_and_wait"
        message = str(error)
        assert message.startswith("dask worker tcp://127.0.0.1:")
        assert f"(pid {second_pid}) died while running tasks.signal_and_wait()" in message
        assert "re-run it on 1 other worker" in message and "allowed-failures=1" in message
        assert ex.submit(tasks.square, 6).result(timeout=30) == 36  # the executor goes on
    cluster.wait_for_workers()  # the nanny's replacements, for the tests that follow


def test_shutdown_cancel_futures_spares_running_tasks(cluster: Cluster, tmp_path: Path) -> None:
    gates = [Gate(tmp_path, "a"), Gate(tmp_path, "b")]
    ex = cluster.executor()
    running = [ex.submit(tasks.signal_and_wait, *gate.args, i) for i, gate in enumerate(gates)]
    for gate in gates:
        gate.wait_started()
    queued = [ex.submit(tasks.square, i) for i in range(10)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)
    for gate in gates:
        gate.open()
    assert [f.result(timeout=30) for f in running] == [0, 1]
    ex.shutdown(wait=True)


def test_shutdown_waits_for_submitted_work(cluster: Cluster) -> None:
    ex = cluster.executor()
    fs = [ex.submit(tasks.sleep_then, 0.01, i) for i in range(20)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(20))
    ex.shutdown()  # a second call is harmless


def test_a_client_passed_in_is_never_closed(cluster: Cluster) -> None:
    client = cluster.distributed.Client(cluster.address, set_as_default=False)
    try:
        with poolkit.Executor(backend="dask", client=client) as ex:
            assert ex.client is client and ex.max_workers == 2
            assert ex.submit(tasks.square, 7).result(timeout=30) == 49
        assert client.status == "running"
        assert client.submit(tasks.square, 8).result(timeout=30) == 64
    finally:
        client.close()


# -------------------------------------------------------- the cluster poolkit starts


def _listening(pid: int) -> list[str]:
    import psutil

    return [
        conn.laddr.ip
        for conn in psutil.Process(pid).net_connections("inet")
        if conn.status == psutil.CONN_LISTEN
    ]


def test_own_local_cluster_is_loopback_only_and_stops(distributed: Any) -> None:
    """No address: poolkit starts a LocalCluster on 127.0.0.1 and stops it at shutdown."""
    with poolkit.Executor(backend="dask", max_workers=1) as ex:
        assert ex.max_workers == 1 and ex.address.startswith("tls://127.0.0.1:")
        worker_pids = list(ex.client.run(os.getpid).values())
        addresses = _listening(os.getpid()) + [ip for p in worker_pids for ip in _listening(p)]
        assert addresses and set(addresses) == {"127.0.0.1"}
        assert ex.submit(tasks.getpid).result(timeout=30) == worker_pids[0]
        # The settings poolkit gives its scheduler: one re-run, then the task fails.
        crash = ex.submit(tasks.kill_self, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match=r"kill_self\(\), after dask had re-run"):
            crash.result(timeout=30)
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9  # on the replacement
    assert ex.cluster.status.name == "closed"


# ---------------------------------------------------------------- lost scheduler


def test_lost_scheduler_fails_pending_futures(distributed: Any, tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None, "no scheduler"
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        ex = poolkit.Executor(backend="dask", address=address)
        pending = [ex.submit(tasks.square, i) for i in range(3)]  # no worker: they wait
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        for future in pending:
            with pytest.raises(BrokenProcessPool, match="lost the connection to the dask"):
                future.result(timeout=30)
        with pytest.raises(BrokenProcessPool, match="lost the connection"):
            ex.submit(tasks.square, 1)
        assert "broken" in repr(ex)
        ex.shutdown(wait=True)  # returns (pytest-timeout fails the test if it hangs)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


# ------------------------------------------------------------ arguments, import


def test_backend_argument_is_checked(distributed: Any) -> None:
    with pytest.raises(ValueError, match=r"'local'.*'dask'"):
        poolkit.Executor(backend="spark")
    with pytest.raises(ValueError, match="not both"):
        poolkit.Executor(backend="dask", address="tcp://127.0.0.1:1", client=object())
    with pytest.raises(ValueError, match="start_method"):
        poolkit.Executor(backend="dask", start_method="spawn")
    with pytest.raises(ValueError, match="initializer"):
        poolkit.Executor(1, None, print, backend="dask")
    with pytest.raises(ValueError, match="max_workers"):
        poolkit.Executor(2, backend="dask", address="tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="nosuch"):
        poolkit.Executor(backend="dask", nosuch=1)
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        poolkit.Executor(backend="dask", client="tcp://127.0.0.1:1")
    with poolkit.Executor(max_workers=1, backend="local") as local:
        assert isinstance(local, poolkit.Executor)


def test_not_available_methods_say_so(cluster: Cluster) -> None:
    with cluster.executor() as ex:
        with pytest.raises(NotImplementedError, match="cancel_futures"):
            ex.kill_workers()
        with pytest.raises(NotImplementedError, match="cancel_futures"):
            ex.terminate_workers()


def test_missing_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'poolkit\[dask\]'"):
        poolkit.Executor(backend="dask")
