"""Parts of the profile that run in a fresh process of their own: ``python -m
benchmarks.roundtrip --<part>-child``, from the checkout's root, JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

#: The checkout's root, where ``benchmarks`` imports (and where children start).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def command(*args: str) -> list[str]:
    """This profile run with ``args``, as a command line."""
    return [sys.executable, "-m", "benchmarks.roundtrip", *args]


def run_child(*args: str) -> Any:
    """Run this profile with ``args`` in a fresh process; what it printed, as JSON."""
    done = subprocess.run(command(*args), check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return json.loads(done.stdout)
