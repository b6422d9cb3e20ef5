"""ChunkFuture: the future of one map chunk follows concurrent.futures.Future's states."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from poolkit._map.chunk_future import ChunkFuture, InvalidState


def make() -> tuple[ChunkFuture, list[Any]]:
    calls: list[Any] = []
    future = ChunkFuture(threading.Lock())
    future.add_done_callback(lambda f: calls.append((f, threading.current_thread().name)))
    return future, calls


def test_pending_running_finished() -> None:
    future, calls = make()
    assert not future.done()
    assert future.set_running_or_notify_cancel()
    assert not future.done()
    assert not future.cancel()  # running: too late
    future.set_result([1, 2])
    assert future.done() and future.succeeded() and not future.cancelled()
    assert future.outcome() == ([1, 2], None)
    assert calls == [(future, threading.current_thread().name)]


def test_a_failed_chunk_keeps_its_error() -> None:
    future, calls = make()
    future.set_running_or_notify_cancel()
    error = ValueError("whole chunk")
    future.set_exception(error)
    assert future.done() and not future.succeeded()
    assert future.outcome() == (None, error)
    assert len(calls) == 1


def test_cancel_while_pending_tells_the_dispatcher_not_to_run_it() -> None:
    future, calls = make()
    assert future.cancel()
    assert future.cancel()  # again: still cancelled, no second callback
    assert future.done() and future.cancelled() and not future.succeeded()
    assert not future.set_running_or_notify_cancel()
    assert len(calls) == 1


def test_finishing_twice_or_running_twice_is_refused() -> None:
    future, calls = make()
    future.set_running_or_notify_cancel()
    with pytest.raises(InvalidState):
        future.set_running_or_notify_cancel()
    future.set_result(1)
    with pytest.raises(InvalidState):
        future.set_result(2)
    with pytest.raises(InvalidState):
        future.set_exception(ValueError())
    assert future.outcome() == (1, None)
    assert len(calls) == 1


def test_a_callback_added_when_done_runs_at_once() -> None:
    future = ChunkFuture(threading.Lock())
    future.set_exception(KeyError("x"))  # a chunk that fails before it is sent
    calls: list[ChunkFuture] = []
    future.add_done_callback(calls.append)
    future.add_done_callback(calls.append)
    assert calls == [future, future]


def test_callbacks_run_once_in_the_thread_that_finishes_it() -> None:
    future, calls = make()
    future.add_done_callback(lambda f: calls.append("second"))
    future.set_running_or_notify_cancel()
    finisher = threading.Thread(target=future.set_result, args=(0,), name="finisher")
    finisher.start()
    finisher.join()
    assert calls == [(future, "finisher"), "second"]


def _race_once() -> tuple[bool, bool, int]:
    future, calls = make()
    outcomes: dict[str, bool] = {}
    barrier = threading.Barrier(2)

    def start() -> None:
        barrier.wait()
        outcomes["started"] = future.set_running_or_notify_cancel()

    def cancel() -> None:
        barrier.wait()
        outcomes["cancelled"] = future.cancel()

    threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes["started"], outcomes["cancelled"], len(calls)


def test_cancel_and_start_race_has_one_winner() -> None:
    # The dispatcher starts a chunk while the map's consumer cancels it: exactly one wins.
    for _ in range(200):
        started, cancelled, callbacks = _race_once()
        assert started != cancelled
        assert callbacks == int(cancelled)
