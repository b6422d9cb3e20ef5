"""Large buffers travel out of band, in memory files, in both directions (see ``_oob``).

What a task's argument arrives as tells how it travelled: a ``PickleBuffer`` argument
unpickles as the object that carried its memory, an ``mmap`` for a memory file, a
``memoryview`` of the message for inline data, a ``bytearray`` when it stayed in the pickle.
"""

from __future__ import annotations

import mmap
import os
import pickle
import socket
from typing import Any

import pytest
import tasks

from poolkit import Executor, WorkerCrashedError, _oob
from poolkit import _serialization as serialization
from poolkit._messages import read_buffer_table

MB = 1 << 20


def _pattern(size: int) -> bytearray:
    return bytearray(i % 251 for i in range(size))


@pytest.mark.smoke
def test_large_buffers_cross_in_memory_files_both_ways(start_method: str) -> None:
    data = _pattern(2 * MB)
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert ex.submit(tasks.type_name, pickle.PickleBuffer(data)).result(timeout=60) == "mmap"
        result = ex.submit(tasks.make_buffer, 3 * MB, 9).result(timeout=60)
        assert isinstance(result, mmap.mmap)
        assert result[:] == bytes([9]) * (3 * MB)
        echoed = ex.submit(tasks.echo, data).result(timeout=60)
        assert isinstance(echoed, bytearray) and echoed == data


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
        future = ex.submit(tasks.echo, data)
        data[:] = b"\0" * len(data)  # after submit: the task must not see it
        assert future.result(timeout=60) == expected


def test_a_worker_may_write_into_its_argument(start_method: str) -> None:
    data = bytearray(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        assert ex.submit(tasks.fill_and_return, data, 5).result(timeout=60) == b"\5" * MB
    assert data == bytearray(MB)  # the parent's object is untouched


def test_a_result_does_not_share_memory_with_what_the_worker_kept(start_method: str) -> None:
    data = _pattern(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        result = ex.submit(tasks.keep_and_return, pickle.PickleBuffer(data)).result(timeout=60)
        ex.submit(tasks.overwrite_kept, 3).result(timeout=60)
        assert bytes(result) == bytes(data)


def test_numpy_arrays_round_trip_writeable(start_method: str) -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(MB, dtype=numpy.float64)  # 8 MiB
    with Executor(max_workers=2, start_method=start_method) as ex:
        scaled = ex.submit(tasks.scale_array, array, 2.0).result(timeout=60)
        assert numpy.array_equal(scaled, array * 2)
        assert scaled.flags.writeable
        scaled += 1  # the parent may write into a result too
        columns = ex.submit(tasks.echo, array.reshape(1024, -1)[:, ::2]).result(timeout=60)
        assert numpy.array_equal(columns, array.reshape(1024, -1)[:, ::2])  # not contiguous
    assert array[1] == 1.0  # the original is untouched


def test_map_chunks_carry_large_buffers(start_method: str) -> None:
    payloads = [_pattern(MB // 2 + i) for i in range(12)]
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert list(ex.map(tasks.echo, payloads, chunksize=3)) == payloads
        names = list(ex.map(tasks.type_name, [pickle.PickleBuffer(p) for p in payloads]))
        assert names == ["mmap"] * len(payloads)


def test_inline_when_a_descriptor_cannot_be_sent(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full side socket is never waited for: the buffers go through the pipe instead.
    monkeypatch.setattr(_oob, "_try_send", lambda sock, fds: False)
    data = _pattern(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        assert ex.submit(tasks.type_name, pickle.PickleBuffer(data)).result(timeout=60) in (
            "memoryview"
        )
        assert ex.submit(tasks.echo, data).result(timeout=60) == data
        assert bytes(ex.submit(tasks.make_buffer, MB).result(timeout=60)) == b"\7" * MB


def test_past_the_limit_of_held_files_buffers_stay_in_the_pickle(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_oob, "MAX_HELD", 0)
    data = _pattern(MB)
    with Executor(max_workers=1, start_method=start_method) as ex:
        name = ex.submit(tasks.type_name, pickle.PickleBuffer(data)).result(timeout=60)
        assert name == "bytearray"
        assert ex.submit(tasks.echo, data).result(timeout=60) == data


def test_memory_files_are_released_when_tasks_settle(start_method: str) -> None:
    # The no_leaks fixture checks that no memory file descriptor stays open either.
    data = _pattern(MB)
    with Executor(max_workers=2, start_method=start_method) as ex:
        futures = [ex.submit(tasks.length, data) for _ in range(20)]
        assert [f.result(timeout=60) for f in futures] == [MB] * 20
        crashed = ex.submit(tasks.crash_with_data, pickle.PickleBuffer(data))
        with pytest.raises(WorkerCrashedError):
            crashed.result(timeout=60)
        cancelled = [ex.submit(tasks.length, data) for _ in range(10)]
        ex.shutdown(cancel_futures=True)
        for future in cancelled:
            assert future.cancelled() or future.result(timeout=60) == MB
    assert _oob._held == 0


# What the worker sends back, decided in one process over a socket pair: a result that lies in
# a file the task received goes back in that file unless the worker still refers to it.


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
    fds = _oob._receive_fds(entries, parent_end, wait=False)
    try:
        (fd,) = fds
        size, offset = entries[0]
        return os.fstat(fd).st_ino, os.pread(fd, size, offset)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_returned_argument_goes_back_in_the_file_it_came_in() -> None:
    data = _pattern(MB)
    parent_end, worker_end = socket.socketpair()
    with parent_end, worker_end:
        received = _receive(data, parent_end, worker_end)
        came_in = os.fstat(received.file(0)[0]).st_ino
        box = [pickle.PickleBuffer(received.take_buffers()[0])]
        inode, content = _send_back(box, received, parent_end, worker_end)
        received.close()
    assert inode == came_in and content == data


def test_a_part_of_an_argument_goes_back_at_its_offset() -> None:
    data = _pattern(MB)
    parent_end, worker_end = socket.socketpair()
    with parent_end, worker_end:
        received = _receive(data, parent_end, worker_end)
        came_in = os.fstat(received.file(0)[0]).st_ino
        box = [pickle.PickleBuffer(memoryview(received.take_buffers()[0])[12345:])]
        inode, content = _send_back(box, received, parent_end, worker_end)
        received.close()
    assert inode == came_in and content == data[12345:]


def test_an_argument_the_worker_still_refers_to_goes_back_as_a_copy() -> None:
    data = _pattern(MB)
    parent_end, worker_end = socket.socketpair()
    with parent_end, worker_end:
        received = _receive(data, parent_end, worker_end)
        came_in = os.fstat(received.file(0)[0]).st_ino
        kept = received.take_buffers()[0]
        inode, content = _send_back([pickle.PickleBuffer(kept)], received, parent_end, worker_end)
        del kept
        received.close()
    assert inode != came_in and content == data
