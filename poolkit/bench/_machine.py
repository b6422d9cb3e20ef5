"""A description of the machine a benchmark ran on, printed with every result."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

#: Distributions whose versions the header names, when installed.
PACKAGES = ("poolkit", "cloudpickle", "loky", "mpire", "pebble", "matplotlib")


def usable_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def package_version(name: str) -> Optional[str]:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name, where ``/proc/cpuinfo`` tells it."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> dict[str, Any]:
    """Cores, CPU, Python, OS, package versions, load and date."""
    packages = {name: version for name in PACKAGES if (version := package_version(name))}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": usable_cpus(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "os": platform.platform(),
        "packages": packages,
        "load_average": [round(x, 2) for x in load] if load else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def summary_line(machine: dict[str, Any]) -> str:
    """The machine in one line."""
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items())
    load = machine.get("load_average")
    load_text = f" | load {load[0]:.2f} at start" if load else ""
    return (
        f"{machine.get('cpus')} CPUs ({machine.get('cpu_model')}) | {machine.get('python')} | "
        f"{machine.get('os')} | {packages}{load_text} | {machine.get('date')}"
    )


# ---------------------------------------------------------------------- machine load

#: How long each quiet look at the machine lasts, before and after a run: while the benchmark
#: itself does nothing, whatever keeps the CPUs busy is someone else.
LOAD_WINDOW_S = 0.5
#: Others using more than this share of the usable CPUs, before or after, is too busy to tell.
BUSY_SHARE = 0.25
#: The hypervisor taking more than this share of CPU time during the run is too busy to tell.
STEAL_SHARE = 0.05


def cpu_times() -> Optional[tuple[float, float, float]]:
    """(busy, steal, total) jiffies of the whole machine from ``/proc/stat``, or None."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    values = [float(v) for v in fields[1:9]] + [0.0] * max(0, 8 - len(fields[1:9]))
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS does not tell."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def others_share(window: float = LOAD_WINDOW_S) -> Optional[float]:
    """The share of the usable CPUs busy during ``window`` seconds while this process sleeps.

    Counts the whole machine's busy time, so it is a share of every CPU, not just the usable
    ones; on a machine whose CPUs are all usable (the usual case) they are the same.
    """
    before = cpu_times()
    time.sleep(window)
    after = cpu_times()
    if before is None or after is None or after[2] <= before[2]:
        return None
    return max(0.0, min(1.0, (after[0] - before[0]) / (after[2] - before[2])))


@dataclass
class LoadCheck:
    """How busy the machine was around a run: a quiet look before, one after, steal during."""

    load_before: Optional[float] = None
    load_after: Optional[float] = None  #: includes the run itself: for the record only
    others_before: Optional[float] = None  #: share of the CPUs others kept busy
    others_after: Optional[float] = None
    steal: Optional[float] = None  #: share of CPU time the hypervisor took during the run
    _start: Optional[tuple[float, float, float]] = None

    def begin(self) -> None:
        """Look before the run."""
        self.load_before = load_average()
        self.others_before = others_share()
        self._start = cpu_times()

    def end(self) -> None:
        """Look after the run."""
        stop = cpu_times()
        if self._start is not None and stop is not None and stop[2] > self._start[2]:
            self.steal = (stop[1] - self._start[1]) / (stop[2] - self._start[2])
        self.load_after = load_average()
        self.others_after = others_share()

    @property
    def busy_reasons(self) -> list[str]:
        """Why the machine was too busy to tell (empty when it was quiet enough)."""
        reasons = []
        for when, share in (("before", self.others_before), ("after", self.others_after)):
            if share is not None and share > BUSY_SHARE:
                reasons.append(f"other processes kept {share:.0%} of the CPUs busy {when} the run")
        if self.steal is not None and self.steal > STEAL_SHARE:
            reasons.append(f"the hypervisor took {self.steal:.0%} of the CPU time (steal)")
        return reasons

    @property
    def too_busy(self) -> bool:
        """Others' load or steal over the thresholds: the verdict may not hold."""
        return bool(self.busy_reasons)

    def text(self) -> str:
        """One line: the numbers, and whether the machine was quiet enough."""

        def share(value: Optional[float]) -> str:
            return "?" if value is None else f"{value:.0%}"

        def load(value: Optional[float]) -> str:
            return "?" if value is None else f"{value:.2f}"

        numbers = (
            f"others' CPU use {share(self.others_before)} before, {share(self.others_after)} "
            f"after; steal {share(self.steal)} during; load average {load(self.load_before)} "
            f"before, {load(self.load_after)} after (the run's own load included)"
        )
        if self.too_busy:
            return (
                f"TOO BUSY TO TELL: {'; '.join(self.busy_reasons)}. Ties may hide real "
                f"differences and wins may be the neighbours' doing: run again on a quiet "
                f"machine. ({numbers})"
            )
        if self.others_before is None and self.steal is None:
            return f"machine load: unknown (no /proc/stat here); {numbers}"
        return f"machine quiet enough: {numbers}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "load_before": self.load_before,
            "load_after": self.load_after,
            "others_before": self.others_before,
            "others_after": self.others_after,
            "steal": self.steal,
            "too_busy": self.too_busy,
            "reasons": self.busy_reasons,
            "thresholds": {"others": BUSY_SHARE, "steal": STEAL_SHARE},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadCheck:
        """The inverse of :meth:`to_dict`."""
        keys = ("load_before", "load_after", "others_before", "others_after", "steal")
        return cls(**{key: data.get(key) for key in keys})
