"""CI's quick run of benchmarks/clients.py: third-party programs give the same output on poolkit.

Each client needs its program (``pip install 'poolkit[clients]'``); without it the test skips.
Times are printed by the script, never asserted here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "clients.py"
NEEDS = {
    "black": ("black", "dask"),
    "tqdm": ("tqdm",),
    "dask": ("dask",),
    "asyncio": (),
    "logging": (),
}


@pytest.mark.smoke
@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", sorted(NEEDS))
def test_client_output_is_the_same_on_poolkit(client: str) -> None:
    for module in NEEDS[client]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'poolkit[clients]')")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", client],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(client))
    assert " yes " in row and "FAIL" not in row, proc.stdout
