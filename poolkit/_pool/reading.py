"""Reading a worker's result pipe: the messages it wrote, and whether the pipe can be trusted.

Every message a worker writes names the writing process; anything else on the pipe (bytes
that do not decode, a message from another process) was written by a task or by a process
a task started, and nothing read after it can be trusted. :func:`read_messages` returns the
messages read before such bytes and why the pipe is at fault; the dispatcher acts on both.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional

from poolkit._pool.worker_handle import WorkerHandle
from poolkit._wire.buffers import open_buffers
from poolkit._wire.messages import FrameError, WorkerMessage, decode_message

logger = logging.getLogger(__name__)


class Reading(NamedTuple):
    """What one read of a worker's result pipe found."""

    #: The worker's messages, in the order written, with their large buffers received.
    messages: list[WorkerMessage]
    #: Why the pipe cannot be trusted from here on ("held ..."), or None.
    fault: Optional[str]
    #: The worker closed its end.
    at_eof: bool


def read_messages(worker: WorkerHandle) -> Reading:
    """Read everything the worker has written so far (never blocks)."""
    reader = worker.channel.reader
    frames, at_eof = reader.read_frames()
    messages: list[WorkerMessage] = []
    for frame in frames:
        try:
            message = decode_message(frame)
        except FrameError as exc:
            return Reading(messages, f"held {exc} (it begins {bytes(frame[:16])!r})", at_eof)
        if message.sender != worker.pid:
            fault = f"held a message written by process {message.sender}, not the worker"
            return Reading(messages, fault, at_eof)
        if message.buffers is not None:
            message = _receive_buffers(worker, message)
        messages.append(message)
    if reader.fault is not None:
        return Reading(messages, f"held {reader.fault}", at_eof)
    return Reading(messages, None, at_eof)


def _receive_buffers(worker: WorkerHandle, message: WorkerMessage) -> WorkerMessage:
    # Taken off the side socket for every message that has them, in order, even one whose
    # task is settled already: the next message's files come after them.
    assert message.buffers is not None
    try:
        buffers = open_buffers(message.buffers, worker.channel.side)
    except (ConnectionError, OSError) as exc:
        # Unpickling then fails, and says so in the task's error.
        logger.warning("the buffers of a message from worker %d: %s", worker.pid, exc)
        return message._replace(buffers=None)
    return message._replace(buffers=buffers)
