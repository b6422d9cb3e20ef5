"""The worker's brief spin before a blocking read: it must notice data and end-of-file.

The spinning tests give the spin an hour, so a spin that missed the pipe becoming ready
would run into the test's timeout instead of passing by falling back to the blocking read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from poolkit._wire.frames import BlockingFrameSource, frame_header
from poolkit._worker.spin_wait import SpinWait, machine_busy

AN_HOUR = 3600.0


class _ObservedSpin(SpinWait):
    """Says when a wait begins, so that the test writes while the reader spins."""

    def __init__(self, fd: int, seconds: float) -> None:
        # Spin whatever the machine's load, so that these tests always take the spin's path.
        super().__init__(fd, seconds, busy=lambda: False)
        self.waiting = threading.Event()
        self.waits = 0

    def before_read(self) -> None:
        self.waits += 1
        self.waiting.set()
        super().before_read()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    ends = {read_end, write_end}
    yield read_end, write_end
    for fd in ends:
        try:
            os.close(fd)
        except OSError:
            pass  # the test closed it


def _waiting_reader(read_end: int, seconds: float) -> tuple[threading.Thread, list[object]]:
    """A thread reading one frame, returned once its wait has begun, and its outcome."""
    spin = _ObservedSpin(read_end, seconds)
    source = BlockingFrameSource(read_end, spin)
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(bytes(source.next_frame()))
        except EOFError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert spin.waiting.wait(10)
    return thread, outcome


@pytest.mark.timeout(30)
def test_a_frame_written_during_the_spin_is_read(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    thread, outcome = _waiting_reader(read_end, AN_HOUR)
    body = b"the next batch"
    os.write(write_end, frame_header(len(body)) + body)
    thread.join(20)
    assert outcome == [body]


@pytest.mark.timeout(30)
def test_end_of_file_during_the_spin_ends_the_read(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    thread, outcome = _waiting_reader(read_end, AN_HOUR)
    os.close(write_end)  # the parent went away
    thread.join(20)
    assert len(outcome) == 1 and isinstance(outcome[0], EOFError)


@pytest.mark.timeout(30)
def test_a_buffered_frame_needs_no_wait(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    first, second = b"first", b"second"
    os.write(write_end, frame_header(len(first)) + first + frame_header(len(second)) + second)
    spin = _ObservedSpin(read_end, AN_HOUR)
    source = BlockingFrameSource(read_end, spin)
    assert bytes(source.next_frame()) == first
    assert bytes(source.next_frame()) == second
    # One read brought both frames: the second came from the buffer, with no wait.
    assert spin.waits == 1


@pytest.mark.timeout(30)
def test_a_zero_budget_goes_straight_to_the_blocking_read(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    spin = SpinWait(read_end, 0.0)
    spin.before_read()  # returns at once, with nothing to read
    assert spin._poll is None  # never polled
    body = b"x" * 100
    os.write(write_end, frame_header(len(body)) + body)
    assert bytes(BlockingFrameSource(read_end, spin).next_frame()) == body


@pytest.mark.timeout(30)
def test_a_busy_machine_goes_straight_to_the_blocking_read(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    looks: list[None] = []

    def busy() -> bool:
        looks.append(None)
        return True

    spin = SpinWait(read_end, AN_HOUR, busy=busy)
    spin.before_read()  # returns at once: an hour's spin would time the test out
    spin.before_read()
    assert spin._poll is None  # never polled
    assert len(looks) == 1  # one look at the load holds for BUSY_CHECK_NS
    body = b"x" * 100
    os.write(write_end, frame_header(len(body)) + body)
    assert bytes(BlockingFrameSource(read_end, spin).next_frame()) == body


def test_machine_busy_reads_the_runnable_count() -> None:
    # Whatever the load now, the answer is a bool, and no machine runs more than a million
    # threads at once.
    assert machine_busy(1) in (True, False)
    assert machine_busy(10**6) is False
