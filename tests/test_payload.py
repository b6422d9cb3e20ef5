"""Large tasks and results cross in both directions at once without deadlock."""

from __future__ import annotations

import pytest
import tasks

from poolkit import Executor, WorkerCrashedError

MB = 1 << 20


@pytest.mark.smoke
def test_large_argument_and_large_result_in_flight_together(start_method: str) -> None:
    big = b"a" * (50 * MB)
    with Executor(max_workers=2, start_method=start_method) as ex:
        sent = ex.submit(tasks.length, big)  # 50 MB parent -> worker
        received = ex.submit(tasks.make_bytes, 50 * MB)  # 50 MB worker -> parent
        echoed = ex.submit(tasks.echo, big)  # both ways through one worker
        assert sent.result(timeout=60) == 50 * MB
        assert received.result(timeout=60) == b"x" * (50 * MB)
        assert echoed.result(timeout=60) == big


def test_many_medium_payloads(start_method: str) -> None:
    payloads = [bytes([i]) * (MB + i) for i in range(16)]
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert list(ex.map(tasks.echo, payloads)) == payloads


def test_hundred_megabyte_task_and_result(start_method: str) -> None:
    size = 100 * MB
    with Executor(max_workers=1, start_method=start_method) as ex:
        assert ex.submit(tasks.length, b"z" * size).result(timeout=120) == size
        result = ex.submit(tasks.make_bytes, size).result(timeout=120)
        assert len(result) == size
        del result
        # A worker that dies holding a 100 MB task fails only that task.
        crashed = ex.submit(tasks.crash_with_data, b"y" * size)
        with pytest.raises(WorkerCrashedError):
            crashed.result(timeout=120)
        assert ex.submit(tasks.square, 7).result(timeout=60) == 49
