"""Run one measurement in a fresh Python process and collect its JSON result.

The runner (``_pkbench.main``) gets its spec on stdin and writes one JSON line on stdout. It
runs in a new session, so that when it hangs (a ``--target`` that never returns) or leaves a
process behind, the whole group, workers and fork server included, can be killed at once.
"""

from __future__ import annotations

import compileall
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ._pkbench.procfs import all_processes

logger = logging.getLogger(__name__)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# Appended, not prepended: the user's own modules must win over anything in this directory.
_BOOT = "import sys; sys.path.append({!r}); from _pkbench.main import main; sys.exit(main())"
#: After the runner exits, how long its fork server and resource tracker may take to follow.
_DRAIN_SECONDS = 2.0


@dataclass
class Outcome:
    """What one runner process produced."""

    data: dict[str, Any]
    stderr: str = ""
    timed_out: bool = False
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The measurement ran to the end."""
        return bool(self.data.get("ok")) and not self.timed_out

    @property
    def error(self) -> str:
        """Why it did not (empty when it did)."""
        return "" if self.ok else str(self.data.get("error", "the runner failed"))


_bytecode_checked = False


def ensure_bytecode() -> None:
    """Compile poolkit's modules once, where they have no up-to-date bytecode yet.

    Every peer is measured as pip installed it, with its ``.pyc`` files written at install
    time. poolkit run from a source checkout (an editable install), with
    ``PYTHONDONTWRITEBYTECODE`` set, would instead compile its modules from source in every
    measured process and every spawned worker: milliseconds of start-up and megabytes of
    compiler memory that no installed copy pays. A read-only install is left as it is.
    """
    global _bytecode_checked
    if _bytecode_checked:
        return
    _bytecode_checked = True
    import poolkit

    package_dir = os.path.dirname(os.path.abspath(poolkit.__file__))
    try:
        compileall.compile_dir(package_dir, quiet=2)
    except OSError as exc:  # pragma: no cover - a read-only tree; pip compiled it
        logger.debug("could not compile %s: %s", package_dir, exc)


def launch(spec: dict[str, Any], timeout: float) -> Outcome:
    """Run ``spec`` in a fresh process; never raises for anything the measured code does."""
    ensure_bytecode()
    spec = dict(spec, sys_path=[p for p in sys.path if p])
    # Files, not pipes, for the output: a process the measurement left behind would keep a
    # pipe open, and reading it to end-of-file would wait for that process forever.
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT.format(BENCH_DIR)],
            stdin=subprocess.PIPE,
            stdout=out_file,
            stderr=err_file,
            start_new_session=True,
        )
        timed_out = False
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(spec).encode())
            process.stdin.close()
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.kill(process.pid, signal.SIGUSR1)  # the runner dumps its threads' stacks
                time.sleep(0.3)
            except ProcessLookupError:
                pass
            _kill_group(process.pid)
            process.wait()
        except BaseException:  # Ctrl-C: take the measurement's processes down with us
            _kill_group(process.pid)
            process.wait()
            raise
        leftovers = _reap_group(process.pid)
        out_file.seek(0)
        err_file.seek(0)
        out = out_file.read()
        stderr = err_file.read().decode(errors="replace")
    if timed_out:
        return Outcome({"ok": False, "error": f"timed out after {timeout:g} s"}, stderr, True)
    if leftovers:
        logger.warning(
            "processes left behind by a measurement (%s): %s", spec.get("impl"), leftovers
        )
    try:
        data = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = stderr.strip().splitlines()[-5:]
        data = {
            "ok": False,
            "error": f"the runner exited with code {process.returncode} and no result",
            "traceback": "\n".join(tail),
        }
    return Outcome(data, stderr, False, leftovers)


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, name) of every live process in process group ``pgid`` (Linux ``/proc``)."""
    return [(stat.pid, stat.name) for stat in all_processes() if stat.pgid == pgid]


def _reap_group(pgid: int) -> list[str]:
    """Wait for the group to empty; kill and name whatever is still there after a grace."""
    deadline = time.monotonic() + _DRAIN_SECONDS
    while True:
        members = group_members(pgid)
        if not members:
            return []
        if time.monotonic() > deadline:
            _kill_group(pgid)
            return [f"{name}[{pid}]" for pid, name in members]
        time.sleep(0.02)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
