"""The start-method registry, and a fourth start method that is not ``multiprocessing``'s.

``spawn_by_subprocess`` starts each worker with ``subprocess.Popen``; registered with one
call, it must carry real work: submit, map, a worker killed and replaced, a clean shutdown.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tasks
from conftest import descendants, wait_gone
from fifo import Gate
from spawn_by_subprocess import SubprocessStartMethod
from test_frames import PARENT_SIDE

import poolkit
from poolkit import Executor, WorkerCrashedError
from poolkit._start_methods import registry
from poolkit._start_methods.base import StartMethod
from poolkit._start_methods.spawn import SpawnStartMethod


@pytest.fixture
def by_subprocess() -> Iterator[str]:
    """The subprocess start method, registered for one test."""
    registry.register(SubprocessStartMethod)
    try:
        yield SubprocessStartMethod.name
    finally:
        registry.unregister(SubprocessStartMethod.name)


# ---------------------------------------------------------------- the registry


def test_the_default_order_is_the_policy() -> None:
    offered = poolkit.start_methods()
    assert offered == [m for m in registry.DEFAULT_ORDER if m in offered]
    assert poolkit.default_start_method() == offered[0]
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert offered[0] == "forkserver"
    assert "fork" not in offered[:1]  # never the default


def test_a_registered_method_is_offered_after_the_default_order(by_subprocess: str) -> None:
    offered = poolkit.start_methods()
    assert offered[-1] == by_subprocess  # not filtered out for not being multiprocessing's
    assert poolkit.default_start_method() != by_subprocess
    assert by_subprocess not in multiprocessing.get_all_start_methods()


def test_an_unknown_method_names_the_available_ones() -> None:
    with pytest.raises(ValueError) as info:
        Executor(max_workers=1, start_method="subprocess")
    message = str(info.value)
    assert "unknown or unavailable start method 'subprocess'" in message
    assert f"available here: {', '.join(poolkit.start_methods())}" in message


def test_unregister_removes_a_method(by_subprocess: str) -> None:
    registry.unregister(by_subprocess)
    try:
        assert by_subprocess not in poolkit.start_methods()
        with pytest.raises(ValueError, match="unknown or unavailable"):
            registry.resolve_start_method(by_subprocess, None)
        with pytest.raises(ValueError, match="no start method 'subprocess' is registered"):
            registry.unregister(by_subprocess)
    finally:
        registry.register(SubprocessStartMethod)  # the fixture unregisters it


def test_a_name_is_taken_once(by_subprocess: str) -> None:
    registry.register(SubprocessStartMethod)  # the same class again: nothing changes

    class Impostor(SpawnStartMethod):
        name = "spawn"

    with pytest.raises(ValueError, match="'spawn' is already registered"):
        registry.register(Impostor)
    assert type(registry.resolve_start_method("spawn", None)) is SpawnStartMethod


def test_an_unavailable_method_is_not_offered() -> None:
    class Nowhere(StartMethod):
        name = "nowhere"

        @classmethod
        def available(cls) -> bool:
            return False

    registry.register(Nowhere)
    try:
        assert "nowhere" not in poolkit.start_methods()
        with pytest.raises(ValueError, match="unknown or unavailable start method 'nowhere'"):
            registry.resolve_start_method("nowhere", None)
    finally:
        registry.unregister("nowhere")


def test_mp_context_and_a_method_outside_multiprocessing_disagree(by_subprocess: str) -> None:
    with pytest.raises(ValueError, match="disagrees with mp_context"):
        registry.resolve_start_method(by_subprocess, multiprocessing.get_context("spawn"))


def test_mp_context_is_the_one_used() -> None:
    context = multiprocessing.get_context("spawn")
    method = registry.resolve_start_method(None, context)
    assert isinstance(method, SpawnStartMethod) and method.context is context


# ---------------------------------------------------------------- a pool on subprocess


def test_submit_and_map(by_subprocess: str) -> None:
    offset = 10

    def _command_line_and_parent() -> tuple[list[str], int]:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().decode().split("\0")[:3], os.getppid()

    with Executor(max_workers=2, start_method=by_subprocess) as ex:
        assert ex.start_method == by_subprocess
        assert ex.submit(tasks.add, 1, 2, c=3).result(timeout=60) == 6
        assert ex.submit(lambda x: x + offset, 5).result(timeout=60) == 15  # by value
        assert list(ex.map(tasks.square, range(50), chunksize=4)) == [i * i for i in range(50)]
        big = os.urandom(3 << 20)  # out of band, through the side socket
        assert ex.submit(tasks.length, big).result(timeout=60) == len(big)
        with pytest.raises(ValueError, match="boom"):
            ex.submit(tasks.raise_value_error, "boom").result(timeout=60)
        # Started by subprocess, from this process: the bootstrap is its command line.
        cmdline, parent = ex.submit(_command_line_and_parent).result(timeout=60)
    assert cmdline[:2] == [sys.executable, "-c"] and "worker_main" in cmdline[2]
    assert parent == os.getpid()


def test_an_initializer_runs_in_each_worker(by_subprocess: str) -> None:
    with Executor(
        max_workers=1, start_method=by_subprocess, initializer=tasks.init_state, initargs=(7,)
    ) as ex:
        assert ex.submit(tasks.get_state).result(timeout=60) == 7


def test_a_killed_worker_fails_its_task_and_is_replaced(by_subprocess: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=by_subprocess) as ex:
        victim = ex.submit(tasks.signal_and_wait, *gate.args)
        queued = [ex.submit(tasks.getpid) for _ in range(3)]
        pid = gate.wait_started()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
            victim.result(timeout=60)
        assert info.value.pid == pid
        replacement = {f.result(timeout=60) for f in queued}
        assert pid not in replacement and len(replacement) == 1
        assert ex.submit(tasks.square, 9).result(timeout=60) == 81


def test_shutdown_leaves_no_worker(by_subprocess: str) -> None:
    ex = Executor(max_workers=2, start_method=by_subprocess)
    pids = set(ex.map(tasks.sleep_getpid, [0.2] * 4))
    assert pids <= descendants(os.getpid())
    ex.shutdown(wait=True)
    assert not wait_gone(pids, timeout=10)
    assert not pids & descendants(os.getpid())
    # Descriptors: the autouse leak check (conftest) compares this process's before and after.


def test_objects_of_initargs_are_refused_by_name(by_subprocess: str) -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    with pytest.raises(TypeError, match="given no multiprocessing objects"):
        Executor(
            max_workers=1,
            start_method=by_subprocess,
            initializer=tasks.init_state,
            initargs=(lock,),
        )


def test_its_workers_import_no_parent_module(by_subprocess: str) -> None:
    with Executor(max_workers=1, start_method=by_subprocess) as ex:
        in_worker = ex.submit(
            lambda: sorted(m for m in sys.modules if m.startswith("poolkit"))
        ).result(timeout=60)
    assert "poolkit._worker.main" in in_worker
    parent_side = [
        name
        for name in in_worker
        if any(name == prefix or name.startswith(prefix + ".") for prefix in PARENT_SIDE)
    ]
    assert parent_side == []
