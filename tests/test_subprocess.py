"""Behaviour that needs a real parent process: __main__ code, interpreter exit, parent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_script, wait_gone

PROGRAM = """
from poolkit import Executor

def triple(x):
    return x * 3

class Box:
    def __init__(self, v):
        self.v = v

def run(method):
    factor = 5
    with Executor(max_workers=2, start_method=method) as ex:
        results = [
            ex.submit(lambda x: x * 2, 21).result(),
            list(ex.map(pow, [2, 3], [5, 2])),
            ex.submit(triple, 4).result(),
            ex.submit(lambda b: b.v + factor, Box(1)).result(),
            list(ex.map(triple, range(3))),
        ]
    print("RESULT", results)
"""
EXPECTED = "RESULT [42, [32, 9], 12, 6, [0, 3, 6]]"


def _python(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.smoke
def test_main_script(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(PROGRAM + f"\nif __name__ == '__main__':\n    run({start_method!r})\n")
    assert EXPECTED in _python(str(script), cwd=tmp_path)


def test_python_dash_c(start_method: str, tmp_path: Path) -> None:
    assert EXPECTED in _python("-c", PROGRAM + f"\nrun({start_method!r})\n", cwd=tmp_path)


def test_script_on_stdin(start_method: str, tmp_path: Path) -> None:
    code = PROGRAM + f"\nif __name__ == '__main__':\n    run({start_method!r})\n"
    assert EXPECTED in _python("-", stdin=code, cwd=tmp_path)


def test_interactive_interpreter(start_method: str, tmp_path: Path) -> None:
    # The REPL reads statements one by one; a blank line ends each compound statement.
    lines = [
        "from poolkit import Executor",
        f"ex = Executor(max_workers=2, start_method={start_method!r})",
        "def quad(x):",
        "    return x * 4",
        "",
        "print('RESULT', ex.submit(quad, 5).result(), ex.submit(lambda: 7).result())",
        "ex.shutdown()",
        "",
    ]
    out = _python("-i", "-q", stdin="\n".join(lines) + "\n", cwd=tmp_path)
    assert "RESULT 20 7" in out


def test_notebook_style_main(start_method: str, tmp_path: Path) -> None:
    # A notebook kernel runs cells in a __main__ module that has no file.
    runner = textwrap.dedent(
        f"""
        import sys, types
        cell = {PROGRAM + f"run({start_method!r})"!r}
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(cell, "<cell>", "exec"), main.__dict__)
        """
    )
    assert EXPECTED in _python("-c", runner, cwd=tmp_path)


def test_executor_left_open_at_interpreter_exit(start_method: str, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, time
        from poolkit import Executor
        import tasks

        if __name__ == "__main__":
            ex = Executor(max_workers=2, start_method={start_method!r})
            pids = {{f.result() for f in [ex.submit(tasks.getpid) for _ in range(6)]}}
            print("PIDS", *pids, flush=True)
            # Queued work still runs to completion at exit, as with ProcessPoolExecutor.
            ex.submit(tasks.sleep_then, 0.2, None).add_done_callback(
                lambda f: print("DONE", flush=True))
        """
    )
    proc = run_script(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "DONE" in proc.stdout
    pids = {int(p) for p in proc.stdout.split("PIDS", 1)[1].split("\n", 1)[0].split()}
    assert not wait_gone(pids, timeout=10)


@pytest.mark.smoke
def test_workers_exit_when_the_parent_is_killed(start_method: str, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from poolkit import Executor
        import tasks

        if __name__ == "__main__":
            ex = Executor(max_workers=2, start_method={start_method!r})
            # Two 0.2 s tasks at once occupy both workers: we learn both pids.
            pids = set(ex.map(tasks.sleep_getpid, [0.2, 0.2]))
            busy = ex.submit(tasks.sleep_then, 600, None)  # one worker stays busy
            print("PIDS", os.getpid(), *sorted(pids), flush=True)
            time.sleep(600)
        """
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("PIDS"), line
        parent_pid, *workers = (int(p) for p in line.split()[1:])
        # Both workers: the busy one (running the 600 s task) and the idle one.
        assert len(workers) == 2
        os.kill(parent_pid, signal.SIGKILL)
        parent.wait(timeout=30)
        assert not wait_gone(set(workers), timeout=10), "workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


INITIALIZER_STATE = """
from poolkit import Executor

_connection = None

def connect(address):
    global _connection
    _connection = address

def describe():
    return "connection" if _connection else "none"

def query(q):
    return (_connection, q, describe())
"""


@pytest.mark.smoke
def test_initializer_sets_globals_that_tasks_of_main_read(
    start_method: str, tmp_path: Path
) -> None:
    # The common pattern: an initializer in the script sets a module global; tasks read it.
    script = tmp_path / "init_state.py"
    script.write_text(
        INITIALIZER_STATE
        + "\nif __name__ == '__main__':\n"
        + f"    with Executor(1, None, connect, ('db',), start_method={start_method!r}) as ex:\n"
        + "        print('RESULT', [ex.submit(query, i).result() for i in range(3)])\n"
    )
    out = _python(str(script), cwd=tmp_path)
    assert (
        "RESULT [('db', 0, 'connection'), ('db', 1, 'connection'), ('db', 2, 'connection')]" in out
    )
    code = INITIALIZER_STATE + (
        f"with Executor(1, None, connect, ('db',), start_method={start_method!r}) as ex:\n"
        "    print('RESULT', ex.submit(query, 7).result())\n"
    )
    assert "RESULT ('db', 7, 'connection')" in _python("-c", code, cwd=tmp_path)
