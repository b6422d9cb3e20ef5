"""Large buffers travel out of band, in memory files, in both directions (see ``_oob``).

``tasks.in_memory_file`` tells, in whichever process calls it, whether a buffer's memory
lies in one of poolkit's memory files: that is how each test knows which way data went.
A ``PickleBuffer`` argument or result arrives as a ``memoryview`` when it travelled out of
band (by memory file, or inline when no descriptor could be sent), and as a ``bytearray``
when it stayed inside the pickle.
"""

from __future__ import annotations

import os
import pickle
import socket
from typing import Any

import pytest
import tasks

from poolkit import Executor, WorkerCrashedError
from poolkit._pickling import serialization as serialization
from poolkit._wire import buffers as _oob
from poolkit._wire import memfiles as _memfiles
from poolkit._wire.messages import read_buffer_table

MB = 1 << 20


def _pattern(size: int) -> bytearray:
    return bytearray(i % 251 for i in range(size))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.smoke
def test_large_buffers_cross_in_memory_files_both_ways(start_method: str) -> None:
    data = _pattern(2 * MB)
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert ex.submit(tasks.in_memory_file, pickle.PickleBuffer(data)).result(timeout=60)
        assert ex.submit(tasks.to_bytes, pickle.PickleBuffer(data)).result(timeout=60) == data
        result = ex.submit(tasks.make_buffer, 3 * MB, 9).result(timeout=60)
        assert isinstance(result, memoryview) and not result.readonly
        assert tasks.in_memory_file(result)
        assert result == bytes([9]) * (3 * MB)


def test_small_buffers_stay_inside_the_pickle(start_method: str) -> None:
    small = bytearray(b"s" * 1024)
    with Executor(max_workers=1, start_method=start_method) as ex:
        name = ex.submit(tasks.type_name, pickle.PickleBuffer(small)).result(timeout=60)
        assert name == "bytearray"
        assert ex.submit(tasks.make_buffer, 1024).result(timeout=60) == bytearray(b"\7" * 1024)


def test_the_argument_is_a_snapshot_taken_at_submit(start_method: str) -> None:
    data = _pattern(MB)
    expected = bytes(data)
    with Executor(max_workers=1, start_method=start_method) as ex:
        future = ex.submit(tasks.to_bytes, pickle.PickleBuffer(data))
        data[:] = b"\0" * len(data)  # after submit: the task must not see it
        assert future.result(timeout=60) == expected


def test_a_worker_may_write_into_its_argument(start_method: str) -> None:
    data = bytearray(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        result = ex.submit(tasks.fill_and_return, pickle.PickleBuffer(data), 5).result(60)
        assert result == b"\5" * MB
    assert data == bytearray(MB)  # the parent's object is untouched


def test_a_result_does_not_share_memory_with_what_the_worker_kept(start_method: str) -> None:
    data = _pattern(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        result = ex.submit(tasks.keep_and_return, pickle.PickleBuffer(data)).result(timeout=60)
        ex.submit(tasks.overwrite_kept, 3).result(timeout=60)
        assert bytes(result) == bytes(data)


def test_a_result_stays_private_to_the_parent_in_a_forked_child(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        result = ex.submit(tasks.make_buffer, MB, 1).result(timeout=60)
    assert tasks.in_memory_file(result)
    pid = os.fork()  # no poolkit thread runs any more
    if pid == 0:
        result[:] = b"\2" * MB  # the child's copy (copy on write)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result == b"\1" * MB


def test_kept_results_hold_no_descriptor(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        ex.submit(tasks.make_buffer, MB).result(timeout=60)
        before = _open_fds()
        kept = [ex.submit(tasks.make_buffer, MB // 2, i).result(timeout=60) for i in range(40)]
        assert _open_fds() <= before + 2
        assert all(tasks.in_memory_file(result) for result in kept)
        assert [result[0] for result in kept] == list(range(40))


def test_numpy_arrays_round_trip_writeable(start_method: str) -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(MB, dtype=numpy.float64)  # 8 MiB
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert ex.submit(tasks.in_memory_file, array).result(timeout=60)
        scaled = ex.submit(tasks.scale_array, array, 2.0).result(timeout=60)
        assert numpy.array_equal(scaled, array * 2)
        assert scaled.flags.writeable and tasks.in_memory_file(scaled)
        scaled += 1  # the parent may write into a result too
        columns = ex.submit(tasks.echo, array.reshape(1024, -1)[:, ::2]).result(timeout=60)
        assert numpy.array_equal(columns, array.reshape(1024, -1)[:, ::2])  # not contiguous
    assert array[1] == 1.0  # the original is untouched


def test_map_chunks_carry_large_buffers(start_method: str) -> None:
    payloads = [_pattern(MB // 2 + i) for i in range(12)]
    buffers = [pickle.PickleBuffer(p) for p in payloads]
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert list(ex.map(tasks.to_bytes, buffers, chunksize=3)) == payloads
        assert all(ex.map(tasks.in_memory_file, buffers))


def test_inline_when_a_descriptor_cannot_be_sent(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full side socket is never waited for: the buffers go through the pipe instead, and
    # still arrive writable (256 KiB to 1 MiB frames are read into read-only bytes).
    monkeypatch.setattr(_oob, "_send", lambda sock, fds: False)
    data = _pattern(300 * 1024)
    with Executor(max_workers=1, start_method=start_method) as ex:
        assert not ex.submit(tasks.in_memory_file, pickle.PickleBuffer(data)).result(60)
        result = ex.submit(tasks.fill_and_return, pickle.PickleBuffer(data), 4).result(60)
        assert result == b"\4" * len(data) and not memoryview(result).readonly
        assert ex.submit(tasks.to_bytes, pickle.PickleBuffer(data)).result(timeout=60) == data


def test_past_the_limit_of_held_files_buffers_stay_in_the_pickle(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_oob, "MAX_HELD", 0)
    data = _pattern(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        name = ex.submit(tasks.type_name, pickle.PickleBuffer(data)).result(timeout=60)
        assert name == "bytearray"
        assert ex.submit(tasks.to_bytes, pickle.PickleBuffer(data)).result(timeout=60) == data


def test_memory_files_are_released_when_tasks_settle(start_method: str) -> None:
    # The no_leaks fixture checks that no memory file descriptor stays open either.
    data = pickle.PickleBuffer(_pattern(MB))
    with Executor(max_workers=2, start_method=start_method) as ex:
        futures = [ex.submit(tasks.length, data) for _ in range(20)]
        assert [f.result(timeout=60) for f in futures] == [MB] * 20
        crashed = ex.submit(tasks.crash_with_data, data)
        with pytest.raises(WorkerCrashedError):
            crashed.result(timeout=60)
        cancelled = [ex.submit(tasks.length, data) for _ in range(10)]
        ex.shutdown(cancel_futures=True)
        for future in cancelled:
            assert future.cancelled() or future.result(timeout=60) == MB
    assert _oob._held == 0


# The side socket never blocks the dispatcher: sending to a full socket, or receiving what is
# not there, fails at once. (socket.send_fds and recv_fds ignore their flags argument.)


def test_descriptors_are_never_waited_for() -> None:
    left, right = socket.socketpair()
    fd = os.memfd_create("test")
    with left, right:
        try:
            sent = 0
            while _memfiles.send(left, [fd]) and sent < 100_000:
                sent += 1
            assert 0 < sent < 100_000  # the socket filled up, and send said so
            with pytest.raises(ConnectionError):
                _memfiles.receive(left, 1, wait=False)  # nothing has come the other way
        finally:
            os.close(fd)


# What the worker sends back, decided in one process over a socket pair: a result that lies
# in a file the task received goes back in that file unless the worker still uses it, or it
# is a small part of the file.


def _receive(data: bytearray, parent_end: socket.socket, worker_end: socket.socket) -> Any:
    """``data``'s memory in a file, sent as the parent sends it and received as a worker does."""
    buffers: list[pickle.PickleBuffer] = []
    serialization.dumps(pickle.PickleBuffer(data), buffers)
    held = _oob.HeldBuffers.hold(buffers)
    assert held is not None
    try:
        (table,) = held.table_for(parent_end)
    finally:
        held.close()
    entries, _ = read_buffer_table(memoryview(table), 0, 1)
    return _oob.Received(entries, worker_end)


def _send_back(
    box: list[Any], received: Any, parent_end: socket.socket, worker_end: socket.socket
) -> tuple[int, bytes]:
    """Send ``box[0]`` back as a worker sends a result (the box is emptied, as the worker
    drops its result); the inode of the file the parent receives, and its content."""
    buffers: list[pickle.PickleBuffer] = []
    serialization.dumps(box[0], buffers)
    outgoing = _oob.Outgoing(buffers, received)
    box.clear()
    try:
        (table,) = outgoing.send(worker_end)
    finally:
        outgoing.close()
    entries, _ = read_buffer_table(memoryview(table), 0, 1)
    (fd,) = _memfiles.receive(parent_end, 1, wait=False)
    try:
        size, offset = entries[0]
        return os.fstat(fd).st_ino, os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _round_trip(data: bytearray, make_result: Any, keep: bool = False) -> tuple[bool, bytes]:
    """Whether ``make_result(argument)`` went back in the argument's file, and its bytes."""
    parent_end, worker_end = socket.socketpair()
    with parent_end, worker_end:
        received = _receive(data, parent_end, worker_end)
        came_in = os.fstat(received.file(0)[0]).st_ino
        argument = received.take_buffers()[0]
        box = [pickle.PickleBuffer(make_result(argument))]
        kept = argument if keep else None
        del argument
        inode, content = _send_back(box, received, parent_end, worker_end)
        del kept
        received.close()
    return inode == came_in, content


def test_a_returned_argument_goes_back_in_the_file_it_came_in() -> None:
    data = _pattern(MB)
    assert _round_trip(data, lambda argument: argument) == (True, bytes(data))


def test_most_of_an_argument_goes_back_at_its_offset() -> None:
    data = _pattern(MB)
    assert _round_trip(data, lambda argument: argument[12345:]) == (True, bytes(data[12345:]))


def test_a_small_part_of_an_argument_goes_back_as_a_copy() -> None:
    data = _pattern(MB)
    assert _round_trip(data, lambda argument: argument[: MB // 4]) == (
        False,
        bytes(data[: MB // 4]),
    )


def test_an_argument_the_worker_still_uses_goes_back_as_a_copy() -> None:
    data = _pattern(MB)
    assert _round_trip(data, lambda argument: argument, keep=True) == (False, bytes(data))


def test_a_side_socket_that_cannot_be_made_closes_the_pipes_made_before(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poolkit._start_methods.registry import resolve_start_method
    from poolkit._wire.channel import WorkerChannel

    def out_of_descriptors(*args: Any) -> Any:
        raise OSError(24, "Too many open files")

    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(socket, "socketpair", out_of_descriptors)
    with pytest.raises(OSError, match="Too many open files") as failure:
        WorkerChannel(resolve_start_method(start_method, None).pipe)
    # The traceback (kept alive here) still references the pipes: they must be closed.
    assert failure.value is not None
    assert set(os.listdir("/proc/self/fd")) == before
