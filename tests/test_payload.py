"""Large tasks and results cross in both directions at once without deadlock."""

from __future__ import annotations

import pytest
import tasks

from poolkit import Executor

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
