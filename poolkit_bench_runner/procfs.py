"""What Linux's ``/proc`` says about processes: parent, group, state, CPU time, memory.

Standard library only: imported by the runner (memory workloads, floors), by the parent
(``_launch``, to find what a measurement left behind) and by ``benchmarks/roundtrip`` (CPU
counters). Every function returns nothing rather
than raising for a process that is gone or a ``/proc`` that is not there.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` the benchmark uses."""

    pid: int
    name: str
    state: str
    ppid: int
    pgid: int
    user_ticks: int = 0  #: CPU time in user mode, every thread, in clock ticks
    system_ticks: int = 0  #: CPU time in the kernel, every thread, in clock ticks


def read_stat(pid: int) -> Optional[ProcStat]:
    """``/proc/<pid>/stat`` of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # The name is in parentheses and may itself hold spaces or parentheses.
    name = text[text.find("(") + 1 : text.rfind(")")]
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 13:
        return None
    # Fields 3, 4, 5, 14 and 15 of proc(5), counted from the state after the name.
    return ProcStat(
        pid, name, fields[0], int(fields[1]), int(fields[2]), int(fields[11]), int(fields[12])
    )


class ThreadCounters(NamedTuple):
    """What the scheduler counted for one thread (``schedstat`` and ``status``)."""

    on_cpu_ns: int  #: time spent running
    run_wait_ns: int  #: time spent runnable, waiting for a CPU
    voluntary_switches: int  #: times it blocked and had to be woken


def thread_counters(pid: int, tid: int) -> Optional[ThreadCounters]:
    """The scheduler's counters of thread ``tid`` of process ``pid``, or None if it is gone."""
    base = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{base}/schedstat") as schedstat:
            on_cpu, run_wait = (int(x) for x in schedstat.read().split()[:2])
        with open(f"{base}/status") as status:
            voluntary = next(
                (int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt")),
                0,
            )
    except (OSError, ValueError):
        return None
    return ThreadCounters(on_cpu, run_wait, voluntary)


def all_processes() -> list[ProcStat]:
    """Every live (not zombie) process this user can see."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = (read_stat(int(entry)) for entry in entries if entry.isdigit())
    return [stat for stat in found if stat is not None and stat.state != "Z"]


def descendants(root: int) -> list[int]:
    """Pids of every live process below ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for stat in all_processes():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return sorted(found)


def memory_mib(pid: int, field: str = "Rss") -> Optional[float]:
    """A process's ``Rss`` or ``Pss`` in MiB (``/proc/<pid>/smaps_rollup``); None if unknown.

    RSS counts every page the process maps, so pages forked processes share are counted in
    each of them; PSS splits each shared page between the processes that share it.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None
