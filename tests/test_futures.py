"""The futures submit returns: exactly ``concurrent.futures.Future``, built without the
stdlib's bound lock methods per instance (``poolkit._futures``), and behaving the same."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import tasks
from fifo import Gate

from poolkit import Executor, _futures


@pytest.mark.smoke
def test_the_light_construction_is_used_on_every_supported_python() -> None:
    # CPython 3.9 to 3.13 share the layout it imitates; a change would fall back silently,
    # and this test is how we would hear of it.
    assert _futures.new_future is _futures._light_future
    light, stdlib = _futures.new_future(), Future()  # type: ignore[var-annotated]
    assert type(light) is Future
    assert set(vars(light)) == set(vars(stdlib))
    assert isinstance(vars(light)["_condition"], threading.Condition)


def test_a_changed_layout_falls_back_to_the_stdlib_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing_an_attribute() -> Future[Any]:
        future = _futures._light_future()
        del future._done_callbacks  # type: ignore[attr-defined]
        return future

    monkeypatch.setattr(_futures, "_light_future", missing_an_attribute)
    assert not _futures._layout_matches()


def test_waiting_threads_timeouts_callbacks_and_cancel() -> None:
    future = _futures.new_future()
    with pytest.raises(futures.TimeoutError):
        future.result(timeout=0.01)
    seen: list[Any] = []
    future.add_done_callback(lambda f: seen.append(f.result()))
    results: list[Any] = []
    waiters = [threading.Thread(target=lambda: results.append(future.result())) for _ in range(4)]
    for waiter in waiters:
        waiter.start()
    assert future.set_running_or_notify_cancel()
    future.set_result(42)
    for waiter in waiters:
        waiter.join(timeout=30)
    assert results == [42] * 4 and seen == [42]
    cancelled = _futures.new_future()
    assert cancelled.cancel()
    with pytest.raises(futures.CancelledError):
        cancelled.result(timeout=30)


def test_submitted_futures_work_with_wait_as_completed_and_asyncio(
    start_method: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=2, start_method=start_method) as ex:
        quick = [ex.submit(tasks.square, i) for i in range(5)]
        assert all(type(f) is Future for f in quick)
        assert sorted(f.result() for f in futures.as_completed(quick, timeout=30)) == [
            i * i for i in range(5)
        ]
        done, not_done = futures.wait(quick, timeout=30)
        assert done == set(quick) and not not_done
        blocked = ex.submit(tasks.signal_and_wait, *gate.args)
        opener = threading.Thread(target=gate.open)
        try:
            gate.wait_started()
            # It cannot finish before the gate opens: wait() must time out on it.
            done, not_done = futures.wait([blocked], timeout=0.05)
            assert not done and not_done == {blocked}

            async def through_asyncio() -> Any:
                return await asyncio.wrap_future(blocked)

            opener.start()
            assert asyncio.run(through_asyncio()) > 0
        finally:  # never leave the task blocked: the executor's exit would wait for it
            if opener.ident is None:
                gate.open()
            else:
                opener.join(timeout=30)
