"""Fault containment: what a task, a callback or a worker does stays that one future's error.

Each test is a hostile user: a task or callback that misbehaves without (or before)
dying. None may stop the pool, hang a future or leave a process behind.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from concurrent import futures
from pathlib import Path
from typing import Any

import hostile_tasks as hostile
import pytest
import tasks
from conftest import descendants, wait_gone
from fifo import Gate

import poolkit._pool.completion as completion
from poolkit import BrokenProcessPool, Executor, WorkerCrashedError, start_methods
from poolkit._pool.dispatcher import Dispatcher


def _fifo(tmp_path: Path, name: str) -> str:
    path = str(tmp_path / name)
    os.mkfifo(path)
    return path


def _read(fifo: str) -> str:
    with open(fifo) as f:
        return f.read()


# --------------------------------------------------------- user code in the parent


def test_a_frozen_dataclass_exception_reaches_its_future(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        future = ex.submit(hostile.raise_frozen)
        with pytest.raises(hostile.FrozenError) as info:
            future.result(timeout=30)
        # The worker's traceback is attached even though the class refuses setattr.
        assert "raise_frozen" in str(info.value.__cause__)
        # With a field it cannot be rebuilt at all: the future says so.
        with pytest.raises(pickle.PicklingError, match="FrozenFieldError"):
            ex.submit(hostile.raise_frozen_field, 7).result(timeout=30)
        assert ex.submit(tasks.square, 4).result(timeout=30) == 16


def test_exceptions_whose_str_or_unpickling_fails_stay_their_futures(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        unprintable = ex.submit(hostile.raise_unprintable)
        exiting = ex.submit(hostile.return_exit_in_parent)
        assert isinstance(unprintable.exception(timeout=30), hostile.UnprintableError)
        # SystemExit raised while the parent unpickles a result: that future's error only.
        error = exiting.exception(timeout=30)
        assert error is not None and "SystemExit" in repr(error) + repr(error.__cause__)
        assert [f.result(timeout=30) for f in [ex.submit(tasks.square, i) for i in range(8)]] == [
            i * i for i in range(8)
        ]


def _exit_callback(_future: futures.Future[Any]) -> None:
    raise SystemExit("from a done-callback")


def test_a_callback_raising_systemexit_breaks_nothing(
    start_method: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=2, start_method=start_method) as ex:
        # The task waits at a gate until the callback is added: a future already done would
        # run the callback here, in the test's own thread.
        first = ex.submit(tasks.signal_and_wait, *gate.args)
        first.add_done_callback(_exit_callback)
        gate.wait_started()
        gate.open()
        first.result(timeout=30)
        results = [f.result(timeout=30) for f in [ex.submit(tasks.square, i) for i in range(20)]]
        assert results == [i * i for i in range(20)]
    assert any("SystemExit" in (r.exc_text or "") for r in caplog.records)


def test_a_callback_may_wait_for_another_future_of_its_pool(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        seen: list[int] = []
        done = threading.Event()

        def chain(_future: futures.Future[Any]) -> None:
            seen.append(ex.submit(tasks.square, 5).result(timeout=30))
            done.set()

        ex.submit(tasks.square, 1).add_done_callback(chain)
        assert done.wait(30), "the callback's own wait stalled the pool"
        assert seen == [25]


def test_callbacks_have_all_run_when_shutdown_returns(start_method: str) -> None:
    ran: list[int] = []
    with Executor(max_workers=2, start_method=start_method) as ex:
        for i in range(50):
            ex.submit(tasks.square, i).add_done_callback(lambda f: ran.append(f.result()))
    assert sorted(ran) == sorted(i * i for i in range(50))


def test_without_the_private_future_layout_callbacks_run_guarded(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback for a Python whose Future lacks _condition/_done_callbacks.
    monkeypatch.setattr(completion, "DEFERRED", False)
    with Executor(max_workers=2, start_method=start_method) as ex:
        first = ex.submit(tasks.square, 3)
        first.add_done_callback(_exit_callback)
        assert first.result(timeout=30) == 9
        assert ex.submit(tasks.square, 6).result(timeout=30) == 36


# ---------------------------------------------- one worker's fault is that worker's


@pytest.mark.parametrize(
    "stray", [hostile.NINE_BYTES, hostile.HUGE_HEADER], ids=["nine-bytes", "huge-header"]
)
def test_stray_bytes_on_a_result_pipe_fail_only_their_task(start_method: str, stray: bytes) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        before = [ex.submit(tasks.square, i) for i in range(10)]
        doomed = ex.submit(hostile.write_stray_bytes, stray)
        after = [ex.submit(tasks.square, i) for i in range(10, 30)]
        with pytest.raises(WorkerCrashedError, match="result pipe held") as info:
            doomed.result(timeout=30)
        assert "write_stray_bytes" in str(info.value)
        _all_right_but_one_killed_with_it(before + after)


def _all_right_but_one_killed_with_it(
    submitted: list[futures.Future[int]], guilty: str = "write_stray_bytes"
) -> None:
    """Every future has its square, except those that had started in the faulty worker,
    behind the stray bytes, when the pool killed it: they fail (a started task never runs
    twice) with an error naming the fault and the task that caused it, not as the culprit."""
    for i, future in enumerate(submitted):
        error = future.exception(timeout=30)
        if error is None:
            assert future.result() == i * i
        else:
            assert isinstance(error, WorkerCrashedError), error
            message = str(error)
            assert "result pipe" in message, message
            assert "after an earlier task of that worker" in message, message
            assert f"{guilty}()) ran" in message, message
            assert "not run again" in message, message


def test_an_answer_from_a_process_the_task_forked_is_detected(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        doomed = ex.submit(hostile.answer_from_a_fork, 3)
        others = [ex.submit(tasks.square, i) for i in range(10)]
        with pytest.raises(WorkerCrashedError, match="not the worker"):
            doomed.result(timeout=30)
        _all_right_but_one_killed_with_it(others, "answer_from_a_fork")


def test_a_task_whose_fork_returns_into_the_worker_loop(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        forked = [ex.submit(hostile.fork_and_return, i) for i in range(6)]
        plain = [ex.submit(tasks.square, i) for i in range(20)]
        assert [f.result(timeout=30) for f in forked] == [i * 10 for i in range(6)]
        assert [f.result(timeout=30) for f in plain] == [i * i for i in range(20)]


def test_a_worker_cut_off_from_its_pipe_fails_its_task_once(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        pids_before = {f.result(timeout=30) for f in [ex.submit(tasks.getpid) for _ in range(4)]}
        doomed = ex.submit(hostile.silence_the_worker, 1)
        with pytest.raises(WorkerCrashedError, match="silence_the_worker"):
            doomed.result(timeout=30)
        pids = {f.result(timeout=30) for f in [ex.submit(tasks.getpid) for _ in range(8)]}
        started = set(ex._dispatcher._workers) | pids
        # One worker was lost and replaced once, not over and over.
        assert len(started - pids_before) <= 2, started


def test_tasks_queued_behind_a_silencing_task_run_elsewhere(start_method: str) -> None:
    # One worker, warmed up so that it is sent several tasks at once: the squares sit in its
    # inbox behind the task that silences it. The worker must end before starting them,
    # so none of their answers goes to /dev/null and none of them is charged.
    with Executor(max_workers=1, start_method=start_method) as ex:
        for _ in range(50):
            ex.submit(tasks.square, 1).result(timeout=30)
        doomed = ex.submit(hostile.silence_the_worker, 1)
        behind = [ex.submit(tasks.square, i) for i in range(40)]
        with pytest.raises(WorkerCrashedError, match="silence_the_worker"):
            doomed.result(timeout=30)
        assert [f.result(timeout=30) for f in behind] == [i * i for i in range(40)]


# ------------------------------------------------------------ deaths noticed at once


def test_a_worker_killed_while_its_tasks_child_lives(start_method: str, tmp_path: Path) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        fifo = _fifo(tmp_path, "pids")
        held = ex.submit(hostile.start_child_and_report, fifo, 120)
        queued = ex.submit(tasks.square, 9)
        worker, child = (int(p) for p in _read(fifo).split())
        os.kill(worker, signal.SIGKILL)
        # The child holds the worker's pipes and lives 120 s: the death is seen at once.
        with pytest.raises(WorkerCrashedError, match="SIGKILL"):
            held.result(timeout=30)
        assert queued.result(timeout=30) == 81  # a replacement ran it
        assert not wait_gone({child}, timeout=10), "the task's child outlived its worker"


@pytest.mark.skipif("fork" not in start_methods(), reason="no fork start method")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_lost_fork_template_falls_back_for_replacements(
    how: signal.Signals, tmp_path: Path
) -> None:
    with Executor(max_workers=2, start_method="fork") as ex:
        template = ex._dispatcher._start_method._template  # type: ignore[attr-defined]
        if template is None:
            pytest.skip("no fork template on this platform")
        os.kill(template.process.pid, how)
        fifo = _fifo(tmp_path, "pid")
        victim = ex.submit(hostile.report_pid, fifo)
        # The worker is killed while the task runs: its replacement needs the template.
        # (report_pid returns right after writing: kill whichever worker ran it.)
        pid = int(_read(fifo))
        victim.result(timeout=30)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            os.kill(pid, signal.SIGKILL)
            squares = [ex.submit(tasks.square, i) for i in range(10)]
            results = [f.result(timeout=60) for f in squares]
            assert results == [i * i for i in range(10)]
            # The replacement started: it runs tasks too (the other worker may take both
            # of a pair while the replacement still starts, so pairs are sent until it shows).
            pids: set[int] = set()
            give_up = time.monotonic() + 60
            while len(pids) < 2 and time.monotonic() < give_up:
                pids |= set(ex.map(tasks.sleep_getpid, [0.3, 0.3], timeout=60))
        assert pid not in pids and len(pids) == 2
        assert any("fork template" in str(w.message) for w in caught), [
            str(w.message) for w in caught
        ]


def test_executors_dropped_without_waiting_leave_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="poolkit"):
        for i in range(60):
            ex = Executor(max_workers=2, start_method="fork")
            ex.submit(tasks.square, i)
            if i % 2:
                ex.shutdown(wait=False)
            del ex
        gc.collect()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ---------------------------------------------------------------- the parent's death


_PARENT_SCRIPT = """
import multiprocessing, os, sys, time
from poolkit import Executor
import hostile_tasks, tasks

if __name__ == "__main__":
    method, case, fifo = sys.argv[1], sys.argv[2], sys.argv[3]
    ex = Executor(max_workers=2, start_method=method)
    pids = set(ex.map(tasks.sleep_getpid, [0.3, 0.3]))
    if case == "other-child":
        # Another child of the parent holds a copy of every pipe: no end-of-file comes.
        other = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
        other.start()
        ex.submit(tasks.sleep_then, 600, None)
        extra = [other.pid]
    else:
        ex.submit(hostile_tasks.report_then_hold_gil, fifo)
        with open(fifo) as f:
            f.read()
        extra = []
    helpers = []
    backend = ex._dispatcher._start_method
    template = getattr(backend, "_template", None)
    if template is not None:
        helpers.append(template.process.pid)
    print("PIDS", " ".join(map(str, sorted(pids))), "|", " ".join(map(str, helpers + extra)),
          flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("case", ["other-child", "gil-held"])
def test_nothing_outlives_a_killed_parent(start_method: str, case: str, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_PARENT_SCRIPT))
    fifo = _fifo(tmp_path, "held")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method, case, fifo],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    other: list[int] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("PIDS"), line
        workers_text, helpers_text = line[4:].split("|")
        workers = {int(p) for p in workers_text.split()}
        helpers = [int(p) for p in helpers_text.split()]
        if case == "other-child":
            other = helpers[-1:]
            helpers = helpers[:-1]
        below = descendants(parent.pid) - set(other)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        left = wait_gone(workers | set(helpers) | below, timeout=20)
        if other:
            # multiprocessing's resource tracker ends when the last holder of its pipe does,
            # and the other child (the user's, not the pool's) holds a copy: it outlives
            # the parent by design, and must end with that child.
            tracker = {pid for pid in left if "resource_tracker" in " ".join(_cmdlines({pid}))}
            left -= tracker
            os.kill(other[0], signal.SIGKILL)
            tracker = wait_gone(tracker, timeout=20)
            assert not tracker, f"outlived the other child: {_cmdlines(tracker)}"
        assert not left, f"left running after the parent's death: {_cmdlines(left)}"
    finally:
        for pid in other:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    # The other child of the killed parent was not ours to stop: it was killed above.
    assert not wait_gone(set(other), timeout=10)


# ----------------------------------------------------------------------- memory


def test_the_function_cache_keeps_no_closure_alive(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        refs = []
        for i in range(4):
            adder = hostile.make_adder(4 << 20)
            refs.append(weakref.ref(adder))
            assert ex.submit(adder, i).result(timeout=30) == i + (4 << 20)
            del adder
        gc.collect()
        assert all(ref() is None for ref in refs), "a dropped closure is still referenced"


# --------------------------------------------------- a failure of the dispatcher itself


@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
def test_a_failing_dispatcher_still_resolves_every_future(
    start_method: str, monkeypatch: pytest.MonkeyPatch, fault: type[BaseException]
) -> None:
    real = Dispatcher._on_answer
    calls = []

    def faulty(self: Dispatcher, worker: Any, task: Any, message: Any) -> None:
        calls.append(task)
        if len(calls) == 3:
            raise fault("injected into the dispatcher")
        real(self, worker, task, message)

    monkeypatch.setattr(Dispatcher, "_on_answer", faulty)
    ex = Executor(max_workers=2, start_method=start_method)
    submitted = []
    for i in range(30):
        try:
            submitted.append(ex.submit(tasks.square, i))
        except BrokenProcessPool:
            break  # the third answer came while submitting: the pool is broken already
    _, not_done = futures.wait(submitted, timeout=60)
    assert not not_done, "futures left unresolved after the dispatcher failed"
    in_hand = calls[2].future
    assert isinstance(in_hand.exception(timeout=0), BrokenProcessPool)
    assert "injected" in str(in_hand.exception(timeout=0))
    with pytest.raises(BrokenProcessPool):
        ex.submit(tasks.square, 1)
    ex.shutdown()


def _cmdlines(pids: set[int]) -> list[str]:
    """Each pid with its command line, for a failure message."""
    named = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
            named.append(f"{pid}: {b' '.join(words).decode()[:120]}")
        except OSError:
            named.append(str(pid))
    return named
