"""Shared fixtures: a start-method parameter, and a leak check after every test."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import poolkit

START_METHODS = poolkit.start_methods()


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Every start method this platform offers."""
    return str(request.param)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process visible in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, grandchildren, ...)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _infrastructure() -> set[int]:
    """Long-lived helper processes multiprocessing keeps per parent: not workers."""
    pids = set()
    server_pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    tracker_pid = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    for pid in (server_pid, tracker_pid):
        if pid:
            pids.add(pid)
    return pids


def run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script of its own (the tests' modules importable); its outcome."""
    script = tmp_path / "left_open.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait, on process-exit events, until the pids are gone; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = set()
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                alive.add(pid)
        finally:
            os.close(fd)
    return alive


def _open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return fds


@pytest.fixture(scope="session", autouse=True)
def _warm_infrastructure() -> None:
    # Start the process-wide helpers once, so the first test does not count them as leaks.
    if "forkserver" in START_METHODS:
        multiprocessing.forkserver.ensure_running()
    multiprocessing.resource_tracker.ensure_running()


def _shared_memory_entries() -> set[str]:
    """Named semaphores and shared-memory blocks (both live in /dev/shm on Linux)."""
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: no poolkit thread, worker process, descriptor or /dev/shm entry left."""
    fds_before = _open_fds()
    shm_before = _shared_memory_entries()
    yield
    for thread in threading.enumerate():
        if thread.name == "poolkit-dispatcher":
            thread.join(20)
            assert not thread.is_alive(), "a poolkit dispatcher thread is still running"
    me = os.getpid()
    leftover = descendants(me) - _infrastructure()
    # Children of this process that exited but were not reaped are leaks too (zombies):
    # pidfd reports them as gone, so check the process table for them explicitly.
    still_alive = wait_gone(leftover, timeout=10)
    assert not still_alive, f"worker processes left running: {sorted(still_alive)}"
    zombies = {
        pid
        for pid, (ppid, state) in _process_table().items()
        if ppid == me and state == "Z" and pid in leftover
    }
    assert not zombies, f"worker processes left unreaped: {sorted(zombies)}"
    fds_after = _open_fds()
    new = {fd: target for fd, target in fds_after.items() if fds_before.get(fd) != target}
    assert not new, f"descriptors left open: {new}"
    # Other programs on the machine may use /dev/shm too: only entries named after this
    # process (multiprocessing's naming) count.
    mine = {e for e in _shared_memory_entries() - shm_before if str(me) in e}
    assert not mine, f"semaphores or shared memory left in /dev/shm: {sorted(mine)}"
