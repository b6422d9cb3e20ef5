"""``python -m poolkit run``: unchanged programs get poolkit as their ProcessPoolExecutor."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing.spawn
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import tasks
from fifo import Gate

import poolkit
from poolkit._run import patch as _run_patch

# Names imported at the top, before any pool: the patch must already be in place. The task
# functions read the module's globals in the worker, where spawn and forkserver re-import
# this module: they see the patch only if the worker has it.
PROGRAM = """
import os
import sys
import concurrent.futures as cf
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import ProcessPoolExecutor as ProcessPoolFromModule

def square(x):
    return x * x

def class_seen_here():
    return ProcessPoolExecutor.__module__

def pool_inside_worker(n):
    with ProcessPoolExecutor(max_workers=1) as inner:
        return type(inner).__module__, list(inner.map(square, range(n)))

def crash():
    os._exit(3)

if __name__ == "__main__":
    print("same class", ProcessPoolExecutor is ProcessPoolFromModule is cf.ProcessPoolExecutor)
    with ProcessPoolExecutor(max_workers=2) as ex:
        print("type", type(ex).__module__, isinstance(ex, cf.ProcessPoolExecutor))
        print("map", list(ex.map(square, range(5))))
        print("submit", ex.submit(square, 7).result())
        print("worker sees", ex.submit(class_seen_here).result())
        print("inside worker", ex.submit(pool_inside_worker, 3).result())
        if "--crash" in sys.argv:
            try:
                ex.submit(crash).result()
            except cf.process.BrokenProcessPool as exc:
                print("crashed", type(exc).__name__)
            print("after crash", ex.submit(square, 9).result())
    print("name", __name__, "argv", sys.argv[1:], "file", os.path.basename(sys.argv[0]))
    sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""

SUMMARY = re.compile(
    r"poolkit run: (\d+) task\(s\) run on poolkit \((\d+) pool\(s\), start method ([\w, ]+)\); "
    r"(\d+) worker crash\(es\) survived"
)


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "poolkit", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=full_env,
    )


def _summary(stderr: str) -> tuple[int, int, str, int]:
    found = SUMMARY.search(stderr)
    assert found, stderr
    return int(found[1]), int(found[2]), found[3], int(found[4])


def _check_program_output(stdout: str) -> None:
    assert "same class True" in stdout
    assert "type poolkit._run.patch True" in stdout
    assert "map [0, 1, 4, 9, 16]" in stdout
    assert "submit 49" in stdout
    assert "worker sees poolkit._run.patch" in stdout, stdout
    assert "inside worker ('poolkit._run.patch', [0, 1, 4])" in stdout, stdout


@pytest.mark.smoke
def test_script_runs_on_poolkit(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    proc = _run("--start-method", start_method, str(script), "a", "--b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_program_output(proc.stdout)
    assert "name __main__ argv ['a', '--b'] file prog.py" in proc.stdout
    # 5 map items + 3 submits; the pool inside a worker counts in the worker, not here.
    assert _summary(proc.stderr) == (8, 1, start_method, 0)
    assert proc.stderr.count("poolkit run:") == 1  # children print no summary


def test_module_form(start_method: str, tmp_path: Path) -> None:
    package = tmp_path / "tools"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "prog.py").write_text(PROGRAM)
    proc = _run("--start-method", start_method, "-m", "tools.prog", "x", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_program_output(proc.stdout)
    # sys.argv[0] is the module's file, as with python -m.
    assert "name __main__ argv ['x'] file prog.py" in proc.stdout
    assert _summary(proc.stderr) == (8, 1, start_method, 0)


def test_worker_crash_is_survived_and_counted(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    proc = _run("--start-method", start_method, str(script), "--crash", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "crashed WorkerCrashedError" in proc.stdout
    assert "after crash 81" in proc.stdout
    # The crashed task did not run to the end but its future finished: 8 + 2 tasks.
    assert _summary(proc.stderr) == (10, 1, start_method, 1)


@pytest.mark.parametrize(
    ("body", "code", "stderr_part"),
    [
        ("pass", 0, None),
        ("import sys; sys.exit(3)", 3, None),
        ("import sys; sys.exit('bad input')", 1, "bad input"),
        ("raise SystemExit", 0, None),
        ("def f():\n    raise ValueError('boom')\nf()", 1, "ValueError: boom"),
    ],
)
def test_exit_code_is_the_programs(
    body: str, code: int, stderr_part: str | None, tmp_path: Path
) -> None:
    script = tmp_path / "prog.py"
    script.write_text(body + "\n")
    proc = _run(str(script), cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    if stderr_part is not None:
        assert stderr_part in proc.stderr
    assert "the program started no ProcessPoolExecutor" in proc.stderr
    if "Traceback" in proc.stderr:
        # The traceback starts at the program, as with `python prog.py`.
        assert "_run/program.py" not in proc.stderr and "runpy" not in proc.stderr, proc.stderr
        assert 'prog.py", line 3, in <module>' in proc.stderr


def test_environment_variable_start_method_and_mp_context(tmp_path: Path) -> None:
    # A pool that asks for a context keeps it; one that does not gets --start-method.
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            if __name__ == "__main__":
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as a:
                    print(a.start_method, a.submit(abs, -1).result())
                with ProcessPoolExecutor(1) as b:
                    print(b.start_method, b.submit(abs, -2).result())
            """
        )
    )
    proc = _run("--start-method", "fork", str(script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["spawn", "1", "fork", "2"]
    assert _summary(proc.stderr) == (2, 2, "spawn, fork", 0)


def test_subclass_submit_is_used_by_map(tmp_path: Path) -> None:
    # Code that subclasses the stdlib class gets poolkit's as its base, and map goes
    # through its submit as the stdlib's map does.
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """
            from concurrent.futures import ProcessPoolExecutor
            class Counting(ProcessPoolExecutor):
                submitted = 0
                def submit(self, fn, /, *args, **kwargs):
                    Counting.submitted += 1
                    return super().submit(fn, *args, **kwargs)
            if __name__ == "__main__":
                with Counting(2) as ex:
                    print(list(ex.map(abs, [-1, -2, -3])), Counting.submitted)
            """
        )
    )
    proc = _run(str(script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 2, 3] 3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no program given"),
        (("--bogus", "x.py"), "unknown option '--bogus'"),
        (("--start-method", "threads", "x.py"), "unknown or unavailable start method"),
        (("missing.py",), "can't open file 'missing.py'"),
        (("-m",), "-m needs a module name"),
    ],
)
def test_usage_errors(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_install_replaces_every_name_and_uninstall_restores() -> None:
    stdlib = concurrent.futures.process.ProcessPoolExecutor
    preparation = multiprocessing.spawn.get_preparation_data
    _run_patch.install()
    try:
        from concurrent.futures import ProcessPoolExecutor

        assert ProcessPoolExecutor is _run_patch.ProcessPoolExecutor
        assert concurrent.futures.process.ProcessPoolExecutor is ProcessPoolExecutor
        assert issubclass(ProcessPoolExecutor, poolkit.Executor)
        assert issubclass(ProcessPoolExecutor, concurrent.futures.Executor)
        assert multiprocessing.spawn.get_preparation_data is not preparation
        _run_patch.install()  # idempotent: the wrapper is not wrapped again
        assert multiprocessing.spawn.get_preparation_data is _run_patch._preparation_data
    finally:
        _run_patch.uninstall()
    assert concurrent.futures.ProcessPoolExecutor is stdlib
    assert concurrent.futures.process.ProcessPoolExecutor is stdlib
    assert multiprocessing.spawn.get_preparation_data is preparation


def test_submit_map_waits_for_done_callbacks(start_method: str) -> None:
    # tqdm's process_map: ex.submit replaced by one that adds a bar-advancing callback, then
    # list(ex.map(...)). Every callback must have run by the time map's results are taken.
    advanced: list[int] = []
    with poolkit.Executor(max_workers=2, start_method=start_method) as ex:
        original = ex.submit

        def submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            future = original(fn, *args, **kwargs)
            future.add_done_callback(lambda _: advanced.append(1))
            return future

        ex.submit = submit  # type: ignore[method-assign]
        results = list(ex.map(abs, range(-300, 0), chunksize=1))
        seen_by_the_end = len(advanced)
        chunked = list(ex.map(abs, range(-30, 0), chunksize=7))
    assert results == list(range(300, 0, -1))
    assert seen_by_the_end == 300
    assert chunked == list(range(30, 0, -1))
    assert len(advanced) == 300 + 5  # stdlib: one submit per chunk of 7


def gated(index: int, first: tuple[str, str], second: tuple[str, str]) -> int:
    """Items 0 and 1 wait for their gate; the others return at once."""
    if index < 2:
        tasks.signal_and_wait(*(first if index == 0 else second))
    return index


def test_submit_map_closing_cancels_unstarted(start_method: str, tmp_path: Path) -> None:
    first, second = Gate(tmp_path, "first"), Gate(tmp_path, "second")
    with poolkit.Executor(max_workers=1, start_method=start_method) as ex:
        futures: list[Any] = []
        original = ex.submit

        def submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            futures.append(original(fn, *args, **kwargs))
            return futures[-1]

        ex.submit = submit  # type: ignore[method-assign]
        items = range(50)
        results = ex.map(
            gated, items, [first.args] * 50, [second.args] * 50, buffersize=20, chunksize=1
        )
        try:
            assert len(futures) == 20  # at most buffersize submitted
            first.wait_started()
            first.open()
            assert next(results) == 0
            second.wait_started()  # the one worker is busy with item 1
            assert len(futures) == 21  # one refill per result taken
            results.close()  # type: ignore[attr-defined]
            # Those the worker took ahead (prefetch) still run; the others are cancelled.
            assert sum(f.cancelled() for f in futures) >= 10
        except BaseException:
            ex.kill_workers()  # a gate nobody waits at cannot be opened: end the tasks
            raise
        second.open()
        assert list(ex.map(abs, range(-5, 0), buffersize=2)) == [5, 4, 3, 2, 1]
        assert len(futures) == 21 + 5
