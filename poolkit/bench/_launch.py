"""Run one measurement in a fresh Python process and collect its JSON result.

The runner (:mod:`poolkit_bench_runner.main`, installed beside poolkit) gets its spec on stdin
and writes one JSON line on stdout. It runs in a new session, so that when it hangs (a
``--target`` that never returns) or leaves a process behind, the whole group, workers and fork
server included, can be killed at once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import py_compile
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import poolkit_bench_runner
from poolkit_bench_runner.procfs import all_processes

logger = logging.getLogger(__name__)

# ``-c``, not ``-m``: the runner has no main module, so a spawned worker imports none again.
_BOOT = "import sys; from poolkit_bench_runner.main import main; sys.exit(main())"
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
    """Give poolkit's modules and the runner's current bytecode, once, where they lack it.

    Every peer is measured as pip installed it, with the ``.pyc`` files pip writes at install
    time, and the published numbers are poolkit's as pip installs it too: compiled. A measured
    process (and every spawned worker) that finds no current bytecode compiles the module from
    source instead, every time when ``PYTHONDONTWRITEBYTECODE`` is set: milliseconds of
    start-up and megabytes of compiler memory that no installed copy pays.

    An installed copy already has current bytecode, so nothing is written into it: the check
    only reads. Only a copy without (a source checkout, an editable install, ``pip install
    --no-compile``) is compiled, file by file where the bytecode is missing or stale: that write
    is what makes its numbers those of an installed copy. A tree that cannot be written is left
    as it is.
    """
    global _bytecode_checked
    if _bytecode_checked:
        return
    _bytecode_checked = True
    import poolkit

    for init in (poolkit.__file__, poolkit_bench_runner.__file__):
        if init is not None:
            compile_stale(os.path.dirname(os.path.abspath(init)))


def compile_stale(package_dir: str) -> list[str]:
    """Compile the modules under ``package_dir`` whose bytecode is missing or stale.

    Returns the files compiled (none when the bytecode is current: then nothing is written).
    Bytecode is for the runner's interpreter flags (``-c``, no ``-O``).
    """
    compiled = []
    for source in stale_sources(package_dir):
        try:
            py_compile.compile(source, cfile=_bytecode_path(source), doraise=True)
        except (OSError, py_compile.PyCompileError) as exc:  # read-only, or a broken file
            logger.debug("could not compile %s: %s", source, exc)
            continue
        compiled.append(source)
    return compiled


def stale_sources(package_dir: str) -> list[str]:
    """The ``.py`` files under ``package_dir`` without current bytecode (reads only)."""
    found = []
    for folder, subfolders, files in os.walk(package_dir):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        for name in sorted(files):
            source = os.path.join(folder, name)
            if name.endswith(".py") and not _bytecode_current(source):
                found.append(source)
    return found


def _bytecode_path(source: str) -> str:
    return importlib.util.cache_from_source(source, optimization="")


def _bytecode_current(source: str) -> bool:
    """Whether the import system would use ``source``'s cached bytecode as it is."""
    try:
        with open(_bytecode_path(source), "rb") as cached:
            header = cached.read(16)
        stat = os.stat(source)
    except OSError:
        return False
    if len(header) < 16 or header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(header[4:8], "little"):
        return True  # hash-based (pip with SOURCE_DATE_EPOCH): the import checks it itself
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    return mtime == int(stat.st_mtime) & 0xFFFFFFFF and size == stat.st_size & 0xFFFFFFFF


def launch(spec: dict[str, Any], timeout: float) -> Outcome:
    """Run ``spec`` in a fresh process; never raises for anything the measured code does."""
    ensure_bytecode()
    spec = dict(spec, sys_path=[p for p in sys.path if p])
    # Files, not pipes, for the output: a process the measurement left behind would keep a
    # pipe open, and reading it to end-of-file would wait for that process forever.
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
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
