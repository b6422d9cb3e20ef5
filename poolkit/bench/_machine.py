"""A description of the machine a benchmark ran on, printed with every result."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
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
