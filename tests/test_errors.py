"""Bad input gets a clear error, and nothing else breaks."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import threading

import pytest
import tasks

import poolkit
from poolkit import BrokenProcessPool, DeserializationError, Executor, RemoteTraceback


def test_task_exception_carries_worker_traceback(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        future = ex.submit(tasks.raise_value_error, "boom")
        with pytest.raises(ValueError, match="boom") as info:
            future.result()
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in cause.tb
        assert "raise ValueError(message)" in cause.tb
        assert "Traceback (most recent call last)" in str(cause)
        # The pool is unaffected.
        assert ex.submit(tasks.square, 3).result() == 9


def test_system_exit_in_task_is_the_task_exception(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        pid = ex.submit(tasks.getpid).result()
        with pytest.raises(SystemExit):
            ex.submit(tasks.call_exit, 2).result()
        assert ex.submit(tasks.getpid).result() == pid  # the same worker lives on


def test_unpicklable_argument_fails_only_its_future(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        lock = threading.Lock()
        future = ex.submit(tasks.echo, lock)
        with pytest.raises(pickle.PicklingError) as info:
            future.result()
        message = str(info.value)
        assert "argument 0" in message and "lock" in message and "echo" in message
        keyword = ex.submit(tasks.add, 1, b=lock)
        with pytest.raises(pickle.PicklingError, match="keyword argument 'b'"):
            keyword.result()
        assert ex.submit(tasks.square, 5).result() == 25


def test_error_at_task_pickle_is_a_pickling_error(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        future = ex.submit(id, tasks.ErrorAtPickle())
        with pytest.raises(pickle.PicklingError):
            future.result()


def test_unpicklable_result_fails_its_future_and_worker_lives(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        pid = ex.submit(tasks.getpid).result()
        with pytest.raises(TypeError, match="lock") as info:
            ex.submit(tasks.return_lock).result()
        assert "pickling the result" in info.value.__cause__.tb  # type: ignore[union-attr]
        with pytest.raises(pickle.PicklingError):
            ex.submit(tasks.return_error_at_pickle).result()
        with pytest.raises(SystemExit):
            ex.submit(tasks.return_os_exit_at_pickle).result()
        assert ex.submit(tasks.getpid).result() == pid


def test_unpicklable_exception_fails_with_a_clear_error(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        pid = ex.submit(tasks.getpid).result()
        with pytest.raises(pickle.PicklingError, match="UnpicklableError") as info:
            ex.submit(tasks.raise_unpicklable).result()
        assert "raise_unpicklable" in info.value.__cause__.tb  # type: ignore[union-attr]
        with pytest.raises(pickle.PicklingError, match="NeedsTwoArgs"):
            ex.submit(tasks.raise_needs_two_args).result()
        assert ex.submit(tasks.getpid).result() == pid


def test_task_that_cannot_be_unpickled_in_the_worker(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        pid = ex.submit(tasks.getpid).result()
        with pytest.raises(DeserializationError, match="refusing to unpickle"):
            ex.submit(id, tasks.ErrorAtUnpickle()).result()
        assert ex.submit(tasks.getpid).result() == pid


def test_result_that_cannot_be_unpickled_in_the_parent(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        with pytest.raises(DeserializationError, match="return_parent_unpicklable") as info:
            ex.submit(tasks.return_parent_unpicklable).result()
        assert isinstance(info.value, BrokenProcessPool)
        assert ex.submit(tasks.square, 2).result() == 4


@pytest.mark.smoke
@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        Executor(max_workers=bad)


@pytest.mark.parametrize("bad", ["2", 2.0, True])
def test_max_workers_must_be_an_int(bad: object) -> None:
    with pytest.raises(TypeError, match="max_workers must be an int"):
        Executor(max_workers=bad)  # type: ignore[arg-type]


@pytest.mark.smoke
def test_unknown_start_method_lists_the_available_ones() -> None:
    with pytest.raises(ValueError) as info:
        Executor(1, start_method="threads")
    for method in poolkit.start_methods():
        assert method in str(info.value)


def test_start_method_and_mp_context_must_agree() -> None:
    methods = poolkit.start_methods()
    if len(methods) < 2:
        pytest.skip("needs two start methods")
    with pytest.raises(ValueError, match="disagrees"):
        Executor(1, multiprocessing.get_context(methods[0]), start_method=methods[1])
    with pytest.raises(TypeError, match="mp_context"):
        Executor(1, mp_context="spawn")  # type: ignore[arg-type]


def test_constructor_type_checks() -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        Executor(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        Executor(1, max_tasks_per_child="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        Executor(1, max_tasks_per_child=0)
    with pytest.raises(TypeError, match="start_method must be a string"):
        Executor(1, start_method=1)  # type: ignore[arg-type]


def test_submit_and_map_argument_errors() -> None:
    with Executor(max_workers=1) as ex:
        with pytest.raises(TypeError, match="not callable"):
            ex.submit(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not callable"):
            ex.map(42, [1])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="chunksize must be >= 1"):
            ex.map(tasks.square, [1], chunksize=0)
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(tasks.square, [1], buffersize=2.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="buffersize must be None or > 0"):
            ex.map(tasks.square, [1], buffersize=0)
        assert ex.submit(tasks.square, 3).result() == 9


def test_submit_after_shutdown_raises(start_method: str) -> None:
    ex = Executor(max_workers=1, start_method=start_method)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(tasks.square, [1])


@pytest.mark.smoke
def test_initializer_runs_in_every_worker(start_method: str) -> None:
    with Executor(
        2, initializer=tasks.init_state, initargs=("ready",), start_method=start_method
    ) as ex:
        assert [f.result() for f in [ex.submit(tasks.get_state) for _ in range(6)]] == ["ready"] * 6


def test_failing_initializer_breaks_the_pool(start_method: str) -> None:
    ex = Executor(2, initializer=tasks.failing_initializer, start_method=start_method)
    # Depending on how fast the workers start, the break shows at submit or on the future.
    with pytest.raises(BrokenProcessPool, match="initializer") as info:
        ex.submit(tasks.square, 2).result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "error in initializer"
    assert isinstance(cause.__cause__, RemoteTraceback)
    assert "failing_initializer" in cause.__cause__.tb
    with pytest.raises(BrokenProcessPool):
        ex.submit(tasks.square, 3)
    ex.shutdown()


def test_initializer_that_kills_the_worker_breaks_the_pool(start_method: str) -> None:
    ex = Executor(1, initializer=tasks.exiting_initializer, start_method=start_method)
    with pytest.raises(BrokenProcessPool, match="exited with code 4 while starting up"):
        ex.submit(tasks.square, 2).result(timeout=30)
    with pytest.raises(BrokenProcessPool):
        ex.submit(tasks.square, 2)
    ex.shutdown()


def test_empty_start_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="available here"):
        Executor(1, start_method="")


def test_initargs_may_be_any_iterable(start_method: str) -> None:
    with Executor(
        1, initializer=tasks.init_state, initargs=["listed"], start_method=start_method
    ) as ex:
        assert ex.submit(tasks.get_state).result() == "listed"


# ------------------------------------------------------- notes and short reprs (both sides)


class _BadRepr:
    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_short_reprs_are_cut_and_survive_a_failing_repr() -> None:
    from poolkit._error_notes import arguments_repr, short_repr

    assert short_repr("x" * 500).endswith("...") and len(short_repr("x" * 500)) == 200
    assert short_repr(_BadRepr()) == "<_BadRepr object>"
    assert arguments_repr((1, "a")) == "1, 'a'"
    assert arguments_repr([1]) == "[1]"  # not an argument tuple: its repr
    assert len(arguments_repr(tuple(range(1000)))) == 200


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="notes are 3.11+")
def test_a_note_is_added_once_and_a_broken_notes_list_is_left_alone() -> None:
    from poolkit._error_notes import add_note

    error = ValueError("x")
    add_note(error, "(where)")
    add_note(error, "(where)")
    assert error.__notes__ == ["(where)"]
    odd = ValueError("y")
    odd.__notes__ = "not a list"  # type: ignore[assignment]
    add_note(odd, "(where)")  # does not raise
    assert odd.__notes__ == "not a list"


def test_the_worker_reports_failures_without_importing_the_errors_module() -> None:
    code = (
        "import sys, poolkit._worker.main, poolkit._error_notes\n"
        "print('poolkit._errors' in sys.modules, 'concurrent.futures' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.split() == ["False", "False"]
