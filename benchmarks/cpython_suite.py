"""CPython's own ProcessPoolExecutor tests, run against poolkit.Executor.

    python benchmarks/cpython_suite.py                       # poolkit, every start method
    python benchmarks/cpython_suite.py --pool stdlib         # the same tests on the stdlib
    python benchmarks/cpython_suite.py --check benchmarks/cpython_suite_expected.txt

The tests are CPython's ``test.test_concurrent_futures`` package, as the interpreter running
this script ships it (3.13 has the package; many distributions strip ``test`` from their
builds, so run it with an interpreter that has it, e.g. pyenv's 3.13). The script swaps
``poolkit.Executor`` in for ``concurrent.futures.ProcessPoolExecutor`` before the test modules
are imported, runs only the process-pool test classes, and prints one line per test: its
outcome and, for a failure, the first line of the reason.

Some of these tests read the stdlib executor's private attributes (``_processes``,
``_executor_manager_thread``, ``_call_queue``) or patch its private classes: they test the
stdlib's implementation, not the ``Executor`` interface, and fail on any other pool. The
expected-outcome file lists each test that does not pass on poolkit with the reason, so
``--check`` fails only on a change: a test that newly fails, or one listed that now passes.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from concurrent import futures
from typing import Optional

#: The test modules of ``test.test_concurrent_futures`` that exercise process pools.
MODULES = (
    "test_process_pool",
    "test_shutdown",
    "test_wait",
    "test_as_completed",
    "test_init",
    "test_deadlock",
)
#: The start-method mixins of CPython's ``util`` module, by start method.
MIXINS = {
    "fork": "ProcessPoolForkMixin",
    "forkserver": "ProcessPoolForkserverMixin",
    "spawn": "ProcessPoolSpawnMixin",
}
#: A test still running after this many seconds is a hang: the run stops with tracebacks.
HANG_SECONDS = 120
#: One module under one start method runs in its own process, stopped after this long (a
#: hang in a module's clean-up, after its last test, is caught here).
PART_SECONDS = 600


class _Outcomes(unittest.TextTestResult):
    """Keeps one outcome per test id and arms a hang alarm around each test."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.outcomes: dict[str, tuple[str, str]] = {}
        self._started = 0.0

    def startTest(self, test: unittest.TestCase) -> None:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        # A test that failed half-way may leave an executor in a reference cycle: collect it
        # now (the executor's finalizer shuts it down), as the end of the test would for a
        # pool that passes, rather than at the module's clean-up.
        gc.collect()
        outcome, reason = self.outcomes.setdefault(test.id(), ("pass", ""))
        # At once, one JSON line: a hang in the module's clean-up must not lose the results.
        print(json.dumps([test.id(), outcome, reason]), file=sys.__stdout__, flush=True)
        super().stopTest(test)

    def _record(self, test: unittest.TestCase, outcome: str, reason: str) -> None:
        self.outcomes[test.id()] = (outcome, reason)

    def addFailure(self, test, err):  # type: ignore[no-untyped-def]
        super().addFailure(test, err)
        self._record(test, "FAIL", _first_line(err[1]))

    def addError(self, test, err):  # type: ignore[no-untyped-def]
        super().addError(test, err)
        self._record(test, "ERROR", _first_line(err[1]))

    def addSkip(self, test, reason):  # type: ignore[no-untyped-def]
        super().addSkip(test, reason)
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test, err):  # type: ignore[no-untyped-def]
        super().addExpectedFailure(test, err)
        self._record(test, "xfail", _first_line(err[1]))

    def addUnexpectedSuccess(self, test):  # type: ignore[no-untyped-def]
        super().addUnexpectedSuccess(test)
        self._record(test, "xpass", "")


def _first_line(exc: Optional[BaseException]) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    return text.strip().splitlines()[0][:200] if text.strip() else ""


#: Put first on the path of the suite's processes (and every process they start: some tests
#: run ``python -c "from concurrent.futures import ProcessPoolExecutor ..."``), it makes the
#: stdlib's name mean poolkit's executor, under the stdlib's class name.
SHIM = """\
import concurrent.futures
import poolkit


class ProcessPoolExecutor(poolkit.Executor):
    \"\"\"poolkit.Executor, under the name CPython's tests import.\"\"\"


concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor
"""


def _install(pool: str) -> None:
    """Make the test classes build ``pool``'s executor wherever they ask for the stdlib's."""
    if pool == "stdlib":
        return
    import poolkit

    executor_type = futures.ProcessPoolExecutor
    if not issubclass(executor_type, poolkit.Executor):
        raise SystemExit("the poolkit shim (sitecustomize) did not load: see SHIM")
    # The mixins read the name when their module was imported, before any patch could.
    util = importlib.import_module("test.test_concurrent_futures.util")
    for name in MIXINS.values():
        getattr(util, name).executor_type = executor_type


def _suite(
    methods: list[str], pattern: Optional[str], modules: tuple[str, ...] = MODULES
) -> unittest.TestSuite:
    util = importlib.import_module("test.test_concurrent_futures.util")
    wanted = tuple(getattr(util, MIXINS[m]) for m in methods)
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for module_name in modules:
        module = importlib.import_module(f"test.test_concurrent_futures.{module_name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, wanted):
                for test in loader.loadTestsFromTestCase(value):
                    if pattern is None or pattern in test.id():
                        suite.addTest(test)
    return suite


def read_expected(path: str) -> dict[str, str]:
    """``test id -> reason`` for the tests expected not to pass on poolkit.

    A line that starts with ``~`` names a test known to fail only sometimes (a race the
    reason describes): ``check`` accepts either outcome for it. Its reason starts with ``~``.
    """
    expected: dict[str, str] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            flaky = line.startswith("~")
            line = line.lstrip("~ ")
            if line and not line.startswith("#"):
                test_id, _, reason = line.partition(" ")
                expected[test_id] = ("~" if flaky else "") + reason.strip()
    return expected


def check(outcomes: dict[str, tuple[str, str]], expected: dict[str, str]) -> list[str]:
    """What changed against the expectations: newly failing, and listed but now passing."""
    changes = []
    for test_id, (outcome, reason) in sorted(outcomes.items()):
        failed = outcome in ("FAIL", "ERROR")
        if failed and test_id not in expected:
            changes.append(f"newly failing: {test_id}: {outcome} {reason}")
        elif failed or outcome == "skip" or test_id not in expected:
            continue
        elif not expected[test_id].startswith("~"):  # a known race may pass
            changes.append(f"listed as failing but {outcome}: {test_id}")
    return changes


def run_part(module_name: str, method: str, pool: str, pattern: Optional[str]) -> int:
    """Run one module under one start method in this process; one JSON line per test."""
    from test import support

    # Tests marked requires_resource('walltime') run too: they are the timeout tests.
    support.use_resources = ["walltime"]
    support.verbose = False
    _install(pool)
    suite = _suite([method], pattern, (module_name,))
    runner = unittest.TextTestRunner(stream=io.StringIO(), resultclass=_Outcomes, verbosity=2)
    runner.run(suite)
    return 0


def _run_parts(options: argparse.Namespace) -> dict[str, tuple[str, str]]:
    outcomes: dict[str, tuple[str, str]] = {}
    _run_modules(options, MODULES, outcomes)
    return outcomes


def _run_modules(
    options: argparse.Namespace, modules: tuple[str, ...], outcomes: dict[str, tuple[str, str]]
) -> None:
    env = dict(os.environ)
    shim_dir = tempfile.mkdtemp(prefix="poolkit-cpython-suite-")
    if options.pool == "poolkit":
        with open(os.path.join(shim_dir, "sitecustomize.py"), "w", encoding="utf-8") as shim:
            shim.write(SHIM)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim_dir, env.get("PYTHONPATH")]))
    try:
        _run_all(options, modules, env, outcomes)
    finally:
        shutil.rmtree(shim_dir, ignore_errors=True)


def _run_all(
    options: argparse.Namespace,
    modules: tuple[str, ...],
    env: dict[str, str],
    outcomes: dict[str, tuple[str, str]],
) -> None:
    for method in options.methods.split(","):
        for module_name in modules:
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--part",
                module_name,
                "--methods",
                method,
                "--pool",
                options.pool,
            ]
            if options.pattern:
                command += ["-k", options.pattern]
            started = time.monotonic()
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=PART_SECONDS, env=env
                )
                stdout, status = done.stdout, done.returncode
            except subprocess.TimeoutExpired as expired:
                out = expired.stdout or b""
                stdout = out.decode() if isinstance(out, bytes) else out
                status = None
            seen = 0
            for line in stdout.splitlines():
                if line.startswith("["):
                    test_id, outcome, reason = json.loads(line)
                    outcomes[test_id] = (outcome, reason)
                    seen += 1
            part = f"{module_name}[{method}]"
            if status is None:
                outcomes[part] = ("HANG", f"did not end within {PART_SECONDS} s")
            elif status != 0 or (seen == 0 and not options.pattern):
                outcomes[part] = ("ERROR", f"exit status {status}, {seen} tests reported")
            print(f"# {part}: {seen} tests, {time.monotonic() - started:.0f} s", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the suite; with --check, exit 1 if an outcome differs from the expected file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", choices=("poolkit", "stdlib"), default="poolkit")
    parser.add_argument("--methods", default="fork,forkserver,spawn")
    parser.add_argument("-k", dest="pattern", help="only test ids containing this")
    parser.add_argument("--check", metavar="EXPECTED.txt")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    try:
        importlib.import_module("test.test_concurrent_futures.util")
    except ImportError as exc:
        print(f"this interpreter has no test.test_concurrent_futures package ({exc})")
        return 2
    if options.part:
        return run_part(options.part, options.methods, options.pool, options.pattern)
    started = time.monotonic()
    outcomes = _run_parts(options)
    counts: dict[str, int] = {}
    for test_id, (outcome, reason) in sorted(outcomes.items()):
        counts[outcome] = counts.get(outcome, 0) + 1
        short = test_id.replace("test.test_concurrent_futures.", "")
        print(f"{outcome:5} {short}" + (f"  -- {reason}" if outcome != "pass" else ""))
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(
        f"{options.pool} on Python {sys.version.split()[0]}: {len(outcomes)} tests, "
        f"{summary} in {time.monotonic() - started:.0f} s"
    )
    if options.check:
        expected = read_expected(options.check)
        changes = check(outcomes, expected)
        if changes:
            # Some of these tests time sleeps against timeouts (map's timeout=5 beside a 6 s
            # task): on a loaded machine one can miss. A test that fails alone again is a change.
            outcomes.update(_retry_failures(options, outcomes, expected))
            changes = check(outcomes, expected)
        for line in changes:
            print(line)
        return 1 if changes else 0
    return 0


def _method_of(class_name: str) -> Optional[str]:
    """A generated test class's start method: ``ProcessPoolForkserverWaitTest`` -> forkserver."""
    rest = class_name[len("ProcessPool") :] if class_name.startswith("ProcessPool") else ""
    for method in sorted(MIXINS, key=len, reverse=True):  # forkserver before fork
        if rest.lower().startswith(method):
            return method
    return None


def _retry_failures(
    options: argparse.Namespace,
    outcomes: dict[str, tuple[str, str]],
    expected: dict[str, str],
) -> dict[str, tuple[str, str]]:
    """Run each test that newly failed once more, alone; its outcome then is the one kept."""
    again: dict[str, tuple[str, str]] = {}
    for test_id, (outcome, _) in sorted(outcomes.items()):
        if outcome not in ("FAIL", "ERROR", "HANG") or test_id in expected:
            continue
        parts = test_id.split(".")
        if len(parts) < 5:
            continue  # a whole module's failure: nothing smaller to retry
        module_name, class_name, test_name = parts[-3], parts[-2], parts[-1]
        method = _method_of(class_name)
        if method is None:
            continue
        retry = argparse.Namespace(**{**vars(options), "methods": method})
        retry.pattern = f"{class_name}.{test_name}"
        found: dict[str, tuple[str, str]] = {}
        _run_modules(retry, (module_name,), found)
        print(f"# retried {test_id}: {found.get(test_id, ('missing', ''))[0]}")
        again.update(found)
    return again


if __name__ == "__main__":
    sys.exit(main())
