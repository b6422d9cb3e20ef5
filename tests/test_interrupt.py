"""Ctrl-C: a real SIGINT to a real Python process that waits on poolkit results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_gone

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
