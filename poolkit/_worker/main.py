"""The worker process: run the initializer, then run tasks from the inbox until end-of-file.

A worker is deliberately simple and single-minded. It reads one batch of tasks at a time
from its inbox, runs them in order, and writes one message per task to its outbox. Before a
task runs, the worker records the task's id in a shared slot the parent can read, so if the
worker dies the parent knows exactly which task was running and which were merely waiting.
Out of work, it polls its inbox for a moment before it blocks (``_spin_wait``).

It ignores SIGINT (the parent decides what Ctrl-C means), and it ends by itself when the
parent dies: idle, it reads end-of-file on its inbox; busy, a watcher thread notices the
hang-up of the inbox (or that it was re-parented) and exits the process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from multiprocessing.connection import Connection
from typing import Any, Callable, NamedTuple, Optional

from poolkit._pickling import serialization as serialization
from poolkit._pickling.initargs import unpack as unpack_config
from poolkit._pickling.main_namespace import adopt_main_functions
from poolkit._wire import buffers as _oob
from poolkit._wire.fds import close_inherited_parent_fds
from poolkit._wire.frames import BlockingFrameSource
from poolkit._wire.messages import (
    MessageKind,
    TaskRecord,
    decode_batch,
    encode_message,
)
from poolkit._worker.args import WorkerArgs
from poolkit._worker.parent_watch import EXIT_PARENT_GONE, BusyFlag, start_watch
from poolkit._worker.run import describe_failure, run_task
from poolkit._worker.spin_wait import SpinWait

__all__ = ["EXIT_PARENT_GONE", "WorkerConfig", "worker_main"]


class WorkerConfig(NamedTuple):
    """What a worker needs to know at start; pickled by the parent (``_initargs.pack``)."""

    initializer: Optional[Callable[..., Any]]
    initargs: tuple[Any, ...]
    max_tasks: Optional[int]
    max_memory: Optional[int] = None  #: resident bytes after which the worker retires


def worker_main(args: WorkerArgs) -> None:
    """Entry point of a worker process, under every start method.

    ``args.side`` is the socket that carries the memory files of large buffers (``_oob``),
    or None where descriptors cannot be passed. ``args.parent`` names the pool's parent
    process, which the worker must not outlive (``_parent_watch``). ``args.carried``: the
    ``multiprocessing`` objects of ``initargs``, which ``args.config_blob`` refers to
    (``_initargs``).
    """
    me = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A process group of its own: Ctrl-C in a terminal reaches only the parent, and when the
    # parent kills this worker it kills the processes a task started along with it.
    try:
        os.setpgrp()
    except OSError:
        pass
    close_inherited_parent_fds()
    inbox = args.inbox
    outbox = args.outbox  # a local of this frame: tests/hostile_tasks.py finds it here
    state = BusyFlag()
    start_watch(args.parent, inbox.fileno(), state)
    send = outbox.send_bytes
    side_socket = None
    if args.side is not None:
        side_socket = socket.socket(fileno=os.dup(args.side.fileno()))
        args.side.close()

    try:
        config: WorkerConfig = unpack_config(args.config_blob, args.carried)
        if config.initializer is not None:
            adopt_main_functions(config.initializer)(*config.initargs)
    except BaseException as exc:
        _log_initializer_failure(exc)
        _end_if_forked(me)
        send(describe_failure(MessageKind.INIT_FAILED, 0, exc, 0.0))
        sys.exit(1)
    _end_if_forked(me)

    try:
        send(encode_message(MessageKind.READY, os.getpid(), b""))
        _name_process()  # cosmetic: done while the parent answers READY with a first task
        _serve(
            inbox,
            send,
            _PipeIdentity(outbox.fileno()),
            side_socket,
            args.running,
            state,
            config.max_tasks,
            config.max_memory,
            me,
        )
    except (BrokenPipeError, ConnectionError):
        pass  # the parent is gone; nobody is left to tell
    except Exception as exc:
        # Outside any task: the parent can charge it to no task, but it can say why this
        # worker died. The exception is raised again, so the worker exits with code 1.
        try:
            send(describe_failure(MessageKind.LOOP_FAILED, 0, exc, 0.0))
        except BaseException:
            pass  # the parent is gone or the message cannot be built: the exit code remains
        raise


class _PipeIdentity:
    """What the worker's result pipe is, to tell when a task has replaced or closed it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.identity = self._read()

    def _read(self) -> Optional[tuple[int, int]]:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def intact(self) -> bool:
        """Whether the descriptor still refers to the pipe the worker was started with."""
        return self._read() == self.identity


def _serve(
    inbox: Connection,
    send: Callable[[bytes], None],
    outbox: _PipeIdentity,
    side: Optional[socket.socket],
    running: Any,
    state: BusyFlag,
    remaining: Optional[int],
    max_memory: Optional[int],
    me: int,
) -> None:
    functions: dict[bytes, Callable[..., Any]] = {}
    frames = BlockingFrameSource(inbox.fileno(), SpinWait(inbox.fileno()))
    received_count = 0  # tasks received so far: a task's place in the claim ring
    while True:
        try:
            frame = frames.next_frame()
        except EOFError:
            return
        records = decode_batch(frame)
        if not records:
            return  # the parent's stop signal (see WorkerChannel.close_inbox)
        # Every record's memory files are taken off the side socket now, in order, even
        # those of a task that is then skipped: the next batch's files come after them.
        received = [
            None if record.buffers is None else _oob.Received(record.buffers, side)
            for record in records
        ]
        first_seq = received_count
        received_count += len(records)
        claimed = _claim_from(running, records, received, first_seq, 0)
        for index, (record, files) in enumerate(zip(records, received)):
            if index < claimed:
                continue  # taken back by the parent (files closed by _claim_from)
            with state.lock:
                if state.parent_gone:
                    return
                state.busy = True
            running.value = record.task_id
            running.started = record.task_id  # kept after the reply: see RunningSlot
            # Checked after the slot is written: if the parent finds the slot without this
            # id, the task cannot start later (see _slots.RunningSlot).
            if running.should_skip(record.task_id):
                state.busy = False
                running.value = 0
                if files is not None:
                    files.close()
                claimed = _claim_from(running, records, received, first_seq, index + 1)
                send(encode_message(MessageKind.SKIPPED, record.task_id, b""))
                continue
            try:
                reply = run_task(record, files, functions, side)
            finally:
                _end_if_forked(me)
                if files is not None:
                    files.close()
            # Not busy once the task's own code is done: the parent may close the inbox the
            # moment it reads this reply, and that hang-up must not look like its death.
            # The slot keeps the id until the reply is written, so a death while writing is
            # still charged to this task.
            state.busy = False
            if not outbox.intact():
                # The task closed the result pipe or put something else over it (dup2): its
                # answer would go nowhere, and so would every later one. Ending here, before
                # the next task is claimed, charges the death to this task alone (the parent
                # finds it unanswered in the slot's "started"); the tasks behind it are
                # still pending and run elsewhere.
                return
            # The next task is claimed before the reply goes: the parent, reading the reply,
            # then sees it started (its future is running) without asking.
            claimed = _claim_from(running, records, received, first_seq, index + 1)
            send(reply)
            running.value = 0
            if max_memory is not None and _resident_bytes() > max_memory:
                send(encode_message(MessageKind.RETIRING, os.getpid(), b""))
                return
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    # The parent never sends more than the budget; it started our
                    # replacement when it sent the last task.
                    return


def _claim_from(
    running: Any,
    records: list[TaskRecord],
    received: list[Optional[_oob.Received]],
    first_seq: int,
    start: int,
) -> int:
    """Claim the first task from ``records[start]`` on that the parent has not taken back
    (``_slots.RunningSlot.claim``); return its index (``len(records)``: none is left).

    The tasks passed over were taken back: their memory files are closed here.
    """
    for index in range(start, len(records)):
        if running.claim(first_seq + index, records[index].task_id):
            return index
        files = received[index]
        if files is not None:
            files.close()
    return len(records)


def _end_if_forked(me: int) -> None:
    """In a process a task forked that returned into this loop: end it, silently.

    It holds copies of the worker's pipes; left to go on, it would answer for the worker
    and take the worker's tasks. Only the worker itself reads and writes them.
    """
    if os.getpid() != me:
        os._exit(0)


def _log_initializer_failure(exc: BaseException) -> None:
    """Log a failed initializer where the stdlib's workers do, as well as telling the parent.

    ``ProcessPoolExecutor``'s workers log it at CRITICAL on the ``concurrent.futures`` logger
    (with no handler set, Python prints it on stderr), and programs collect it there: an
    initializer that sets a QueueHandler on that logger before it fails, as CPython's own
    test of a failing initializer does. ``logging`` is imported only on this path, so a
    worker that starts cleanly does not pay for it.
    """
    try:
        import logging

        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=exc)
    except BaseException:
        pass  # a broken logging set-up must not hide the failure from the parent


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _name_process() -> None:
    # Shows as "poolkit-worker" in ps/top; best effort, Linux only.
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write("poolkit-worker")
    except OSError:
        pass
