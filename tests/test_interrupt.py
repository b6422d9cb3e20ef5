"""Ctrl-C: a real SIGINT to a real Python process that waits on poolkit results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tasks
from conftest import wait_gone

from poolkit import Executor

SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from concurrent import futures

    import tasks
    from poolkit import Executor

    mode, method = sys.argv[1], sys.argv[2]
    if __name__ == "__main__":
        ex = Executor(2, start_method=method)
        pids = sorted(set(ex.map(tasks.sleep_getpid, [0.3, 0.3])))
        print("PIDS", *pids, flush=True)
        if mode == "with":
            with ex:
                fs = [ex.submit(tasks.sleep_then, 60, i) for i in range(6)]
                print("WAITING", flush=True)
                fs[0].result()
        elif mode == "map":
            with ex:
                print("WAITING", flush=True)
                for _ in ex.map(tasks.sleep_then, [60] * 6, range(6)):
                    pass
        elif mode == "lock_held":
            # Ctrl-C landing inside as_completed's setup, after it acquired a future's lock
            # and before its `with` block: the lock stays held by the main thread for good.
            fs = [ex.submit(tasks.sleep_then, 60, i) for i in range(6)]
            while not fs[0].running():  # running in a worker (not just queued)
                time.sleep(0.01)
            fs[0]._condition.acquire()
            print("WAITING", flush=True)
            for _ in futures.as_completed(fs[1:]):
                pass
        else:
            fs = [ex.submit(tasks.sleep_then, 60, i) for i in range(6)]
            print("WAITING", flush=True)
            for _ in futures.as_completed(fs):
                pass
    """
)


def _wait_until_asleep(pid: int) -> None:
    """Wait until the main thread of ``pid`` sleeps on a lock, and stays asleep.

    CPython loses a signal that lands between its last check for signals and the system
    call that puts a thread to sleep on a lock: the handler runs, but nothing wakes the
    thread to act on it (the same under every executor, and in plain threading code). A
    user's second Ctrl-C would; this test sends one, so it sends it once the thread sleeps.
    There is no event for "asleep": the kernel's wait channel is read until it has named a
    futex for 50 ms in a row (longer than the 5 ms in which a thread waiting for the GIL
    gets it back).
    """
    deadline = time.monotonic() + 30
    asleep_since = None
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as wchan:
            asleep = wchan.read().startswith("futex")
        now = time.monotonic()
        if not asleep:
            asleep_since = None
        elif asleep_since is None:
            asleep_since = now
        elif now - asleep_since >= 0.05:
            return
        time.sleep(0.002)
    pytest.fail("the script's main thread never went to sleep")


@pytest.mark.parametrize("mode", ["with", "map", "as_completed", "lock_held"])
def test_ctrl_c_stops_the_pool_at_once(start_method: str, mode: str, tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack (see below)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, start_method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        pids = {int(p) for p in proc.stdout.readline().split()[1:]}
        assert len(pids) == 2
        assert proc.stdout.readline().strip() == "WAITING"
        _wait_until_asleep(proc.pid)
        proc.send_signal(signal.SIGINT)  # what a terminal sends on Ctrl-C
        try:
            _, stderr = proc.communicate(timeout=30)  # promptly: the tasks would run 60 s
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=30)
            pytest.fail(f"no exit 30 s after Ctrl-C; its threads:\n{stderr[-8000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    # One traceback, the main process's: no worker printed one.
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    assert not wait_gone(pids, timeout=10), "workers outlived Ctrl-C"


def _blocked_signals(status_path: str) -> set[int]:
    with open(status_path) as status:
        line = next(line for line in status if line.startswith("SigBlk:"))
    bits = int(line.split()[1], 16)
    return {n + 1 for n in range(64) if bits >> n & 1}


def test_signals_reach_the_callers_thread_and_replacement_workers(start_method: str) -> None:
    # A Ctrl-C taken by the dispatcher thread would leave the main thread asleep in
    # result(): the dispatcher blocks every asynchronous signal, so the kernel delivers
    # them to the user's threads. A worker it starts must not inherit that mask.
    with Executor(1, start_method=start_method) as ex:
        first = ex.submit(tasks.getpid).result(timeout=30)
        thread = ex._dispatcher._thread
        assert thread is not None and thread.native_id is not None
        blocked = _blocked_signals(f"/proc/self/task/{thread.native_id}/status")
        assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= blocked
        assert signal.SIGINT not in _blocked_signals("/proc/thread-self/status")
        os.kill(first, signal.SIGKILL)  # the dispatcher thread starts its replacement
        assert not wait_gone({first}, timeout=10)
        second = ex.submit(tasks.getpid).result(timeout=30)
        assert second != first
        assert signal.SIGTERM not in _blocked_signals(f"/proc/{second}/status")


@pytest.mark.parametrize(
    "moment", ["before it is assigned", "before the frame is queued", "before it is written"]
)
def test_an_interrupted_direct_send_loses_no_worker_and_no_task(
    start_method: str, moment: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A signal handler's exception (Ctrl-C) can land between any two steps of the send a
    # caller's thread makes to an idle worker. No real signal can be aimed at one bytecode,
    # so the exception is raised from inside the send, where a handler would raise it.
    from poolkit._pool import dispatcher as _dispatcher
    from poolkit._wire.frames import FrameWriter

    queue_frame = FrameWriter.queue_frame
    batch_prefix = _dispatcher.batch_prefix
    raised = []

    def interrupt() -> None:
        if not raised:
            raised.append(True)
            raise KeyboardInterrupt

    def interrupted_prefix(count: int) -> bytes:
        interrupt()
        return batch_prefix(count)

    def interrupted_queue(self: FrameWriter, parts: list[bytes]) -> None:
        if moment == "before it is written":
            queue_frame(self, parts)
        interrupt()

    marker = tmp_path / "ran"
    with Executor(1, start_method=start_method) as ex:
        assert ex.submit(tasks.square, 2).result(timeout=30) == 4  # warm: an idle worker
        if moment == "before it is assigned":
            monkeypatch.setattr(_dispatcher, "batch_prefix", interrupted_prefix)
        else:
            monkeypatch.setattr(FrameWriter, "queue_frame", interrupted_queue)
        with pytest.raises(KeyboardInterrupt):
            ex.submit(tasks.write_file, str(marker), "ran")
        monkeypatch.undo()
        # The worker the send was cut short on is replaced; the pool goes on at full size.
        assert ex.submit(tasks.square, 4).result(timeout=30) == 16
        assert ex.submit(tasks.square, 5).result(timeout=30) == 25
    # The interrupted task had not reached the worker: it ran once, on the replacement.
    assert marker.read_text() == "ran"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_a_worker_leaves_every_signal_to_the_thread_that_runs_tasks(start_method: str) -> None:
    # The worker's parent watcher must never take a signal meant for a task's handler: only
    # the thread that receives a signal has its blocking call interrupted.
    with Executor(1, start_method=start_method) as ex:
        own, others = ex.submit(tasks.thread_signal_masks).result()
    assert others, "the worker has no parent watcher thread"
    wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGUSR1, signal.SIGCHLD]
    for mask in others:
        assert all(mask & (1 << (s - 1)) for s in wanted), hex(mask)
    assert not any(own & (1 << (s - 1)) for s in wanted), hex(own)
