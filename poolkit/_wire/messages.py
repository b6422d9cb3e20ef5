"""The messages exchanged between the parent and a worker, and their wire format.

Each direction of a worker's channel is a pipe carrying length-prefixed frames (see
``frames``); this module says what a frame's body holds.

Parent -> worker: one frame is a *task batch*: a count, then for each task a fixed header
(:data:`TASK_HEADER`) followed by the pickled function and the pickled arguments. The blobs
are pickled in the submitting thread; the dispatcher only frames them, without copying.

Worker -> parent: one frame is one :class:`WorkerMessage`: a fixed header
(:data:`MESSAGE_HEADER`), an optional UTF-8 traceback, and a pickled payload. The header
opens with a marker and names the process that wrote it, so that bytes a task wrote into
the pipe, or a message from a process the task forked, are told from the worker's own
(:class:`FrameError`): a worker channel is a pipe any process holding it can write to.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Any, NamedTuple, Optional, Union

Buffer = Union[bytes, bytearray, memoryview]


class FrameError(ValueError):
    """Bytes on a worker's channel that are not a message the worker wrote."""


class TaskKind(enum.IntEnum):
    """What the worker does with a task's arguments."""

    CALL = 1  #: args blob is ``(args, kwargs)``: call ``fn(*args, **kwargs)`` once.
    #: args blob is a list of argument tuples: call ``fn(*a)`` for each, in order, and return
    #: a :class:`ChunkOutcome` (the results, and the first failure if an item raised).
    CHUNK = 2
    #: like CHUNK, but the list holds single arguments: call ``fn(a)`` for each. What
    #: ``map`` over one iterable sends: no 1-tuple per item to build, pickle and unpickle.
    ITEMS = 3


class MessageKind(enum.IntEnum):
    """What a worker tells the parent."""

    READY = 1  #: the initializer ran; the worker takes tasks. ``task_id`` holds its pid.
    RESULT = 2  #: a task returned; the payload is its pickled return value.
    ERROR = 3  #: a task raised; the payload is the pickled exception, plus its traceback.
    INIT_FAILED = 4  #: the initializer raised; the payload is the pickled exception.
    SKIPPED = 5  #: the task was stopped before it started; it did not run.
    RETIRING = 6  #: over its memory limit: the worker exits after this message.
    #: the worker's own loop raised outside any task (reading its inbox, for instance
    #: ``MemoryError`` on an argument too large); the payload is the pickled exception,
    #: and the worker exits with code 1 after this message.
    LOOP_FAILED = 7


class TaskRecord(NamedTuple):
    """One task as the worker receives it."""

    task_id: int
    kind: TaskKind
    fn_blob: Buffer
    args_blob: Buffer
    #: The out-of-band buffers of ``args_blob`` (see ``_oob``): table entries, each a
    #: ``(size, offset)`` (its memory file comes over the side socket) or a view of
    #: inline data.
    buffers: Optional[list[Any]] = None


class WorkerMessage(NamedTuple):
    """One message from a worker."""

    kind: MessageKind
    task_id: int
    duration: float  #: seconds the task ran in the worker (0 for non-task messages)
    traceback: str  #: formatted traceback text for ERROR and INIT_FAILED, else ""
    payload: Buffer
    #: The payload's out-of-band buffers, as for :attr:`TaskRecord.buffers`; once the
    #: parent has received their memory files, the buffers themselves.
    buffers: Optional[list[Any]] = None
    sender: int = 0  #: pid of the process that wrote the message


class ChunkOutcome(NamedTuple):
    """The value a CHUNK task returns (inside an ordinary RESULT message).

    The worker stops at the first item that raises: ``results`` holds the results of the
    items before it, ``error_index`` its position in the chunk (None if every item returned),
    ``error`` the pickled exception (or a ``PicklingError`` standing in for one that cannot
    travel) and ``traceback`` its formatted traceback.
    """

    results: list[Any]
    seconds: float  #: time the worker spent on the chunk (unpickling and calls)
    error_index: Optional[int] = None
    error: bytes = b""
    traceback: str = ""
    error_args: str = ""  #: short repr of the failing item's arguments


#: task id, kind, length of the function blob, length of the arguments blob, number of
#: out-of-band buffers (their table follows the arguments blob)
TASK_HEADER = struct.Struct("!QBQQH")
#: number of tasks in a batch
BATCH_HEADER = struct.Struct("!I")
#: marker, kind, sender pid, task id, duration, length of the traceback text, number of
#: out-of-band buffers (their table follows the traceback; the payload comes last)
MESSAGE_HEADER = struct.Struct("!HBIQdIH")
#: The first two bytes of every worker message ("pk").
MESSAGE_MARKER = 0x706B
#: An out-of-band buffer's table entry: how it travels (below), its size in bytes, and where
#: in its memory file it starts.
BUFFER_ENTRY = struct.Struct("!BQQ")
BY_DESCRIPTOR = 0  #: its memory file's descriptor comes over the side socket
INLINE = 1  #: its bytes follow the table, in the frame


def encode_task(
    task_id: int, kind: TaskKind, fn_blob: bytes, args_blob: bytes, buffers: int = 0
) -> tuple[bytes, ...]:
    """The parts of one task record; the dispatcher writes them without joining them.

    With out-of-band ``buffers``, the dispatcher writes their table after these parts.
    """
    header = TASK_HEADER.pack(task_id, kind, len(fn_blob), len(args_blob), buffers)
    return (header, fn_blob, args_blob)


def buffer_table(sizes: list[int], how: int, offsets: Optional[list[int]] = None) -> bytes:
    """The table entries of out-of-band buffers of ``sizes`` that all travel ``how``."""
    if offsets is None:
        offsets = [0] * len(sizes)
    return b"".join([BUFFER_ENTRY.pack(how, size, at) for size, at in zip(sizes, offsets)])


def read_buffer_table(view: memoryview, offset: int, count: int) -> tuple[list[Any], int]:
    """Parse ``count`` table entries at ``offset``, and the inline data after them.

    Returns the entries (each ``(size, offset)`` in a memory file that comes by
    descriptor, or a view of its inline data) and the offset past the table and its data.
    """
    entries: list[Any] = []
    data = offset + count * BUFFER_ENTRY.size
    for _ in range(count):
        how, size, at = BUFFER_ENTRY.unpack_from(view, offset)
        offset += BUFFER_ENTRY.size
        if how == INLINE:
            entries.append(view[data : data + size])
            data += size
        else:
            entries.append((size, at))
    return entries, data


#: A batch of no tasks: the worker exits, as at end-of-file.
STOP_BATCH = BATCH_HEADER.pack(0)


def batch_prefix(count: int) -> bytes:
    """The bytes that open a batch of ``count`` task records."""
    return BATCH_HEADER.pack(count)


def decode_batch(frame: Buffer) -> list[TaskRecord]:
    """Split a task-batch frame into records; the blobs are views into ``frame``."""
    view = memoryview(frame)
    (count,) = BATCH_HEADER.unpack_from(view)
    offset = BATCH_HEADER.size
    records = []
    for _ in range(count):
        task_id, kind, fn_len, args_len, buffer_count = TASK_HEADER.unpack_from(view, offset)
        offset += TASK_HEADER.size
        fn_blob = view[offset : offset + fn_len]
        offset += fn_len
        args_blob = view[offset : offset + args_len]
        offset += args_len
        buffers = None
        if buffer_count:
            buffers, offset = read_buffer_table(view, offset, buffer_count)
        records.append(TaskRecord(task_id, _TASK_KINDS[kind], fn_blob, args_blob, buffers))
    return records


def encode_message(
    kind: MessageKind,
    task_id: int,
    payload: bytes,
    *,
    duration: float = 0.0,
    traceback: str = "",
    buffers: int = 0,
    table: tuple[Buffer, ...] = (),
) -> bytes:
    """One worker message as a frame body; ``table`` describes ``buffers`` out-of-band
    buffers of the payload (see ``_oob.Outgoing``)."""
    tb = traceback.encode("utf-8", "replace")
    # The pid is asked for each time: a process forked by a task is not the worker.
    header = _pack_message_header(
        MESSAGE_MARKER, kind, _getpid(), task_id, duration, len(tb), buffers
    )
    return b"".join((header, tb, *table, payload))


def decode_message(frame: Buffer) -> WorkerMessage:
    """Parse a worker message; the payload is a view into ``frame``.

    Raises FrameError for a frame that is not a worker message.
    """
    view = memoryview(frame)
    try:
        marker, kind, sender, task_id, duration, tb_len, buffer_count = _unpack_message_header(view)
    except struct.error:
        raise FrameError(f"a frame of {len(view)} bytes, too short for a message") from None
    if marker != MESSAGE_MARKER or kind not in _MESSAGE_KINDS:
        raise FrameError(f"a frame of {len(view)} bytes that does not start as a message")
    start = MESSAGE_HEADER.size
    if start + tb_len > len(view):
        raise FrameError("a message whose traceback runs past its frame")
    tb = bytes(view[start : start + tb_len]).decode("utf-8", "replace") if tb_len else ""
    start += tb_len
    buffers = None
    if buffer_count:
        try:
            buffers, start = read_buffer_table(view, start, buffer_count)
        except struct.error:
            raise FrameError("a message whose buffer table runs past its frame") from None
    return WorkerMessage(_MESSAGE_KINDS[kind], task_id, duration, tb, view[start:], buffers, sender)


# Looked up once per message or task: a dict is several times cheaper than an enum call.
_MESSAGE_KINDS = {kind.value: kind for kind in MessageKind}
_TASK_KINDS = {kind.value: kind for kind in TaskKind}
_unpack_message_header = MESSAGE_HEADER.unpack_from
_pack_message_header = MESSAGE_HEADER.pack
_getpid = os.getpid
