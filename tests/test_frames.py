"""Frames on a worker's pipes: the one parser both readers use, and what a worker imports.

The parser is fed real pipe reads (small and large frames, split at every awkward place);
the parent's non-blocking reader and the worker's blocking source must cut the same frames
from the same bytes. The last tests check that the worker side of the wire never pulls in
the parent's modules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import poolkit
from poolkit._wire.frames import (
    MAX_FRAME,
    BlockingFrameSource,
    FrameParser,
    FrameReader,
    FrameWriter,
    frame_header,
    parse_frame_header,
)
from poolkit._wire.messages import FrameError

LARGE = 3 << 20  # over the direct-read threshold (1 MiB)


class Pipe:
    """Both ends of a pipe; an end the test closes is never closed again by number."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self._open = {self.read_end, self.write_end}

    def close(self, fd: int) -> None:
        self._open.discard(fd)
        os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._open):
            self.close(fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    ends = Pipe()
    yield ends
    ends.close_all()


def _stream(*bodies: bytes) -> bytes:
    return b"".join(frame_header(len(body)) + body for body in bodies)


def _parse_in_pieces(data: bytes, piece: int) -> list[bytes]:
    """Feed ``data`` to a parser ``piece`` bytes at a time, filling large bodies in place."""
    parser = FrameParser()
    frames: list[bytes] = []
    at = 0
    while at < len(data) or parser.mid_frame:
        space = parser.body_space()
        if space is not None:
            count = min(len(space), piece, len(data) - at)
            assert count > 0, "the parser wants more bytes than were sent"
            space[:count] = data[at : at + count]
            parser.body_filled(count)
        else:
            if at == len(data):
                break
            parser.feed(data[at : at + piece])
            count = min(piece, len(data) - at)
        at += count
        frame = parser.pop_frame()
        while frame is not None:
            frames.append(bytes(frame))
            frame = parser.pop_frame()
    return frames


@pytest.mark.parametrize("piece", [1, 3, 4, 5, 7, 4096, 1 << 16])
def test_the_parser_cuts_the_same_frames_whatever_the_reads(piece: int) -> None:
    bodies = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"z" * 70000]
    assert _parse_in_pieces(_stream(*bodies), piece) == bodies


def test_a_large_frame_is_read_into_a_buffer_of_its_final_size() -> None:
    body = os.urandom(1024) * (LARGE // 1024)
    data = _stream(b"before", body, b"after")
    parser = FrameParser()
    parser.feed(data[: 1 << 16])
    assert bytes(parser.pop_frame() or b"?") == b"before"
    assert parser.pop_frame() is None
    space = parser.body_space()
    assert space is not None
    # The buffered start of the body is already in place; the rest is read into it.
    assert len(space) == len(data) - (1 << 16) - len(frame_header(5)) - len(b"after")
    space[:] = data[(1 << 16) : (1 << 16) + len(space)]
    parser.body_filled(len(space))
    assert parser.pop_frame() == body
    assert parser.body_space() is None and not parser.mid_frame


def test_the_long_header_form_is_understood() -> None:
    header = frame_header(5 << 30)
    assert len(header) == 12
    assert parse_frame_header(header) == (12, 5 << 30)
    assert parse_frame_header(header[:11]) is None
    assert parse_frame_header(frame_header(7)) == (4, 7)
    assert parse_frame_header(b"\x00\x00") is None


def test_a_header_over_the_limit_is_a_frame_error() -> None:
    parser = FrameParser(limit=100)
    parser.feed(_stream(b"ok") + frame_header(101))
    assert parser.pop_frame() == b"ok"
    with pytest.raises(FrameError, match="101 bytes"):
        parser.pop_frame()


def test_the_parent_reader_returns_frames_before_stray_bytes(pipe: Pipe) -> None:
    read_end, write_end = pipe.read_end, pipe.write_end
    os.set_blocking(read_end, False)
    reader = FrameReader(read_end)
    os.write(write_end, _stream(b"one", b"two") + frame_header(MAX_FRAME + 1))
    frames, at_eof = reader.read_frames()
    assert [bytes(f) for f in frames] == [b"one", b"two"] and not at_eof
    assert reader.fault is not None and not reader.mid_frame
    assert reader.read_frames() == ([], False)  # given up: nothing more is read


def test_the_parent_reader_and_writer_carry_large_frames_both_ways(
    pipe: Pipe,
) -> None:
    read_end, write_end = pipe.read_end, pipe.write_end
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    reader, writer = FrameReader(read_end), FrameWriter(write_end)
    big = os.urandom(LARGE)
    writer.queue_frame([b"small"])
    writer.queue_frame([big[:100], big[100:]])  # parts, written without being joined
    writer.queue_frame([b"last"])
    received: list[bytes] = []
    at_eof = False
    while not at_eof:
        if writer.pending and writer.flush():
            pipe.close(write_end)  # all written: the reader sees end-of-file after the frames
        frames, at_eof = reader.read_frames()
        received += [bytes(f) for f in frames]
    assert received == [b"small", big, b"last"]


def test_the_worker_source_reads_what_the_parent_writer_wrote(pipe: Pipe) -> None:
    read_end, write_end = pipe.read_end, pipe.write_end
    big = os.urandom(LARGE)
    bodies = [b"first", big, b"", b"x" * 100000, b"last"]
    writer = FrameWriter(write_end)
    for body in bodies:
        writer.queue_frame([body])

    def write_all() -> None:
        while writer.pending:
            writer.flush()  # a blocking pipe: each write waits for the reader
        pipe.close(write_end)

    thread = threading.Thread(target=write_all)
    thread.start()
    source = BlockingFrameSource(read_end)
    got = [bytes(source.next_frame()) for _ in bodies]
    with pytest.raises(EOFError):
        source.next_frame()
    thread.join()
    assert got == bodies


def test_end_of_file_inside_a_large_frame_is_end_of_file(pipe: Pipe) -> None:
    read_end, write_end = pipe.read_end, pipe.write_end
    os.write(write_end, frame_header(LARGE) + b"only the start")
    pipe.close(write_end)
    with pytest.raises(EOFError):
        BlockingFrameSource(read_end).next_frame()


# ---------------------------------------------------------------- what a worker imports

#: Modules of the parent's side: a worker that imports one pays for it at every start (and
#: drags its imports along). ``forkserver_watch`` is the fork server's own preload.
PARENT_SIDE = (
    "poolkit._pool",
    "poolkit._executor",
    "poolkit._executor_base",
    "poolkit._map",
    "poolkit._dask",
    "poolkit._run",
    "poolkit.bench",
    "poolkit._futures",
    "poolkit._options",
    "poolkit._errors",  # imported by a worker only for a task it cannot unpickle
    "poolkit._pickling.function_cache",
    "poolkit._pickling.function_snapshot",
    "poolkit._wire.channel",
    "poolkit._start_methods.base",
    "poolkit._start_methods.registry",
    "poolkit._start_methods.fork",
    "poolkit._start_methods.fork_template",
    "poolkit._start_methods.spawn",
    "poolkit._start_methods.forkserver",
)


def _parent_side(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if any(name == prefix or name.startswith(prefix + ".") for prefix in PARENT_SIDE)
    ]


def _imported_by_worker_code() -> list[str]:
    """The poolkit modules a fresh interpreter has after importing the worker's entry."""
    from poolkit._worker.args import WorkerArgs
    from poolkit._worker.main import worker_main

    code = (
        "import sys, importlib\n"
        f"importlib.import_module({worker_main.__module__!r})\n"
        f"importlib.import_module({WorkerArgs.__module__!r})\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('poolkit'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.split()


def test_the_worker_entry_imports_no_parent_module() -> None:
    imported = _imported_by_worker_code()
    assert "poolkit._worker.main" in imported and "poolkit._wire.frames" in imported
    assert _parent_side(imported) == []


def test_a_running_worker_has_no_parent_module(start_method: str) -> None:
    with poolkit.Executor(max_workers=1, start_method=start_method) as ex:
        in_worker = ex.submit(
            lambda: sorted(m for m in sys.modules if m.startswith("poolkit"))
        ).result()
    assert "poolkit._worker.main" in in_worker
    if start_method == "fork":
        # A fork inherits the parent's modules: what counts is what the worker's own code
        # imports, which a fresh interpreter shows.
        in_worker = _imported_by_worker_code()
    assert _parent_side(in_worker) == []
