"""The interpreter-exit hook both executors share (``poolkit._lifecycle``), and its fallback."""

from __future__ import annotations

import atexit
import gc
import sys
import textwrap
import threading
import weakref
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import run_script, wait_gone

from poolkit import _lifecycle as lifecycle


class _Pool:
    """A stand-in for a dispatcher or a dask session: records what the hook asks of it."""

    def __init__(self, name: str, log: list[tuple[str, Any]]) -> None:
        self.name = name
        self.log = log


def _stop(pool: _Pool, interrupted: bool) -> None:
    pool.log.append(("stop", pool.name, interrupted))


def _wait(pool: _Pool) -> None:
    pool.log.append(("wait", pool.name))


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty registry, and the "exiting" flag restored after the test."""
    monkeypatch.setattr(lifecycle, "_live", weakref.WeakKeyDictionary())
    monkeypatch.setattr(lifecycle, "_interpreter_exiting", False)


@pytest.mark.usefixtures("fresh_registry")
def test_the_hook_stops_every_pool_then_waits_for_each() -> None:
    log: list[tuple[str, Any]] = []
    first, second = _Pool("first", log), _Pool("second", log)
    lifecycle.track(first, _stop, _wait)
    lifecycle.track(second, _stop, _wait)
    lifecycle._at_interpreter_exit()
    assert log == [
        ("stop", "first", False),
        ("stop", "second", False),
        ("wait", "first"),
        ("wait", "second"),
    ]
    assert lifecycle.interpreter_exiting()


@pytest.mark.usefixtures("fresh_registry")
def test_after_an_unhandled_ctrl_c_the_hook_abandons_futures_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    abandoned: list[bool] = []
    monkeypatch.setattr(lifecycle, "abandon_futures", lambda: abandoned.append(True))
    monkeypatch.setattr(sys, "last_value", KeyboardInterrupt(), raising=False)
    log: list[tuple[str, Any]] = []
    pool = _Pool("pool", log)
    lifecycle.track(pool, _stop, _wait)
    lifecycle._at_interpreter_exit()
    assert abandoned == [True]
    assert log == [("stop", "pool", True), ("wait", "pool")]


@pytest.mark.usefixtures("fresh_registry")
def test_a_pool_that_fails_to_stop_does_not_keep_the_others_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[tuple[str, Any]] = []

    def fail_to_stop(pool: _Pool, interrupted: bool) -> None:
        raise OSError("cannot stop")

    def fail_to_wait(pool: _Pool) -> None:
        raise OSError("cannot wait")

    broken, working = _Pool("broken", log), _Pool("working", log)
    lifecycle.track(broken, fail_to_stop, fail_to_wait)
    lifecycle.track(working, _stop, _wait)
    lifecycle._at_interpreter_exit()
    assert log == [("stop", "working", False), ("wait", "working")]
    assert "cannot stop" in caplog.text and "cannot wait" in caplog.text


@pytest.mark.usefixtures("fresh_registry")
def test_pools_are_tracked_weakly_and_can_leave() -> None:
    log: list[tuple[str, Any]] = []
    dropped, ended, kept = _Pool("dropped", log), _Pool("ended", log), _Pool("kept", log)
    for pool in (dropped, ended, kept):
        lifecycle.track(pool, _stop, _wait)
    del dropped
    gc.collect()
    lifecycle.untrack(ended)
    lifecycle.untrack(ended)  # harmless twice
    lifecycle._at_interpreter_exit()
    assert log == [("stop", "kept", False), ("wait", "kept")]


def test_the_hook_runs_before_threads_are_joined_where_it_can(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[Callable[[], None]] = []
    used_atexit: list[Callable[[], None]] = []
    monkeypatch.setattr(threading, "_register_atexit", registered.append, raising=False)
    monkeypatch.setattr(atexit, "register", used_atexit.append)
    assert lifecycle.install_exit_hook() is True
    assert registered == [lifecycle._at_interpreter_exit]
    assert used_atexit == []


def test_without_register_atexit_the_hook_falls_back_to_atexit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used_atexit: list[Callable[[], None]] = []
    monkeypatch.delattr(threading, "_register_atexit", raising=False)
    monkeypatch.setattr(atexit, "register", used_atexit.append)
    assert lifecycle.install_exit_hook() is False
    assert used_atexit == [lifecycle._at_interpreter_exit]


def test_an_executor_left_open_finishes_its_work_under_the_atexit_fallback(
    start_method: str, tmp_path: Path
) -> None:
    # A CPython without threading._register_atexit: the hook runs from atexit, after the
    # interpreter joined its non-daemon threads, so the pool's threads must be daemons for
    # the exit not to wait forever; the queued work still finishes.
    code = textwrap.dedent(
        f"""
        import threading
        import concurrent.futures.process  # the stdlib pool needs it at import: give it that
        del threading._register_atexit  # before poolkit is imported
        from poolkit import Executor, _lifecycle
        import tasks

        if __name__ == "__main__":
            assert _lifecycle.POOL_THREADS_ARE_DAEMON
            ex = Executor(max_workers=2, start_method={start_method!r})
            pids = {{f.result() for f in [ex.submit(tasks.getpid) for _ in range(6)]}}
            print("PIDS", *pids, flush=True)
            # Still queued when the main module ends: run at exit, as with the stdlib.
            ex.submit(tasks.sleep_then, 0.2, None)
            for i in range(10):
                ex.submit(tasks.write_file, {str(tmp_path)!r} + f"/done-{{i}}", "done")
        """
    )
    proc = run_script(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("done-*")) == [f"done-{i}" for i in range(10)]
    pids = {int(p) for p in proc.stdout.split("PIDS", 1)[1].split("\n", 1)[0].split()}
    assert not wait_gone(pids, timeout=10)
