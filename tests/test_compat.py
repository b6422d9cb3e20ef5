"""Behaviours that code written for ProcessPoolExecutor (3.14) relies on."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import tasks

from poolkit import BrokenProcessPool, Executor


@pytest.mark.parametrize(
    ("fn", "args", "expected"),
    [
        (id, (tasks.ErrorAtPickle(),), "PicklingError"),
        (id, (tasks.ExitAtPickle(),), "PicklingError"),
        (id, (tasks.ExitAtUnpickle(),), "BrokenProcessPool"),
        (id, (tasks.ErrorAtUnpickle(),), "BrokenProcessPool"),
        (id, (tasks.CrashAtUnpickle(),), "BrokenProcessPool"),
        (tasks.segfault, (), "BrokenProcessPool"),
        (tasks.call_exit, (1,), "SystemExit"),
        (tasks.raise_value_error, ("x",), "ValueError"),
        (tasks.return_crash_at_pickle, (), "BrokenProcessPool"),
        (tasks.return_os_exit_at_pickle, (), "SystemExit"),
        (tasks.return_error_at_pickle, (), "PicklingError"),
        (tasks.return_parent_unpicklable, (), "BrokenProcessPool"),
        (tasks.return_exit_at_unpickle, (), "BrokenProcessPool"),
    ],
    ids=[
        "error-at-task-pickle",
        "exit-at-task-pickle",
        "exit-at-task-unpickle",
        "error-at-task-unpickle",
        "crash-at-task-unpickle",
        "crash-in-task",
        "exit-in-task",
        "error-in-task",
        "crash-at-result-pickle",
        "exit-at-result-pickle",
        "error-at-result-pickle",
        "error-at-result-unpickle",
        "exit-at-result-unpickle",
    ],
)
def test_failure_at_each_stage_has_the_stdlib_exception_type(
    start_method: str, fn: object, args: tuple, expected: str
) -> None:
    import pickle

    kinds = {
        "PicklingError": pickle.PicklingError,
        "BrokenProcessPool": BrokenProcessPool,
        "SystemExit": SystemExit,
        "ValueError": ValueError,
    }
    with Executor(max_workers=2, start_method=start_method) as ex:
        with pytest.raises(kinds[expected]):
            ex.submit(fn, *args).result(timeout=30)  # type: ignore[arg-type]
        # ...and unlike the stdlib pool, this one goes on.
        assert ex.submit(tasks.square, 4).result(timeout=30) == 16


def test_map_of_crashing_tasks_with_big_data_does_not_deadlock(start_method: str) -> None:
    data = b"x" * (1 << 20)
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(tasks.crash_with_data, [data] * 4)
        with pytest.raises(BrokenProcessPool):
            list(results)


@pytest.mark.skipif(
    sys.version_info < (3, 14),
    reason="concurrent.futures.Future.result() before 3.14 ignores a falsey exception",
)
def test_falsey_exceptions_are_raised(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        future = ex.submit(tasks.raise_falsey)
        assert isinstance(future.exception(), tasks.FalseyError)
        with pytest.raises(tasks.FalseyError):
            future.result()


def test_map_keeps_no_reference_to_yielded_results(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        results = ex.map(tasks.echo, [tasks.FalseyError() for _ in range(3)], chunksize=3)
        first = next(results)
        ref = weakref.ref(first)
        del first
        gc.collect()
        assert ref() is None
        assert len(list(results)) == 2


def test_cancelled_future_then_shutdown(start_method: str) -> None:
    ex = Executor(max_workers=1, start_method=start_method)
    ex.submit(int).cancel()
    ex.shutdown(wait=True)


def test_max_tasks_early_shutdown(start_method: str) -> None:
    ex = Executor(max_workers=3, max_tasks_per_child=1, start_method=start_method)
    fs = [ex.submit(tasks.square, i) for i in range(6)]
    ex.shutdown()
    assert [f.result() for f in fs] == [i * i for i in range(6)]


def test_submit_in_atexit_handler_raises(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import atexit
        from poolkit import Executor

        ex = Executor(max_workers=1)

        def late():
            try:
                ex.submit(abs, 1)
            except RuntimeError as exc:
                print("REFUSED", exc)

        atexit.register(late)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED cannot schedule new futures after" in proc.stdout


def test_failed_initializer_is_logged_on_the_stdlib_logger(start_method: str) -> None:
    # As ProcessPoolExecutor's workers do (CPython's test_init checks it this way): the
    # failure reaches a handler the initializer put on the ``concurrent.futures`` logger.
    import multiprocessing

    log_queue = multiprocessing.get_context(start_method).Queue()
    ex = Executor(
        max_workers=1,
        start_method=start_method,
        initializer=tasks.init_fail_logging_to,
        initargs=(log_queue,),
    )
    try:
        with pytest.raises(BrokenProcessPool):
            ex.submit(abs, 1).result(timeout=30)
    finally:
        ex.shutdown()
    record = log_queue.get(timeout=30)
    assert "Exception in initializer" in record.getMessage()
    assert "ValueError: error in initializer" in record.getMessage()
    log_queue.close()
    log_queue.join_thread()
    del log_queue, record
    gc.collect()  # the queue's reading end closes with the queue
