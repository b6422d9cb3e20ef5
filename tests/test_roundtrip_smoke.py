"""The round-trip profile (``python -m benchmarks.roundtrip``) still measures what it says.

The profile stamps poolkit from the outside (``benchmarks/roundtrip/patch_points.py``), so a
refactor of poolkit can leave it measuring nothing without any error: it once printed an
empty stage table for months. These tests fail instead, naming what is gone: a patch point
that no longer exists, or a stage of either mode that got no samples. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import poolkit
from benchmarks.roundtrip import patch_points
from benchmarks.roundtrip.pyspy import summarize
from benchmarks.roundtrip.stages import MODES, STAGE_ORDER, STAGES

ROOT = Path(__file__).resolve().parent.parent
METHOD = "fork" if "fork" in poolkit.start_methods() else poolkit.start_methods()[0]


def test_every_patch_point_is_still_there() -> None:
    assert patch_points.missing() == []


@pytest.mark.timeout(180)
def test_one_round_stamps_every_stage_of_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "roundtrip.json"
    command = [sys.executable, "-m", "benchmarks.roundtrip", "--methods", METHOD]
    command += ["--rounds", "1", "--samples", "40", "--warmup", "10", "--burst", "200"]
    command += ["--json", str(out)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a hang, its pools' processes go down with it
    )
    try:
        stdout, stderr = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["patch_points"] == [point.name for point in patch_points.PATCH_POINTS]
    for mode in MODES:
        column = result["columns"][f"{METHOD} {mode}"]
        counts = column["stage_samples"]
        assert list(counts) == [label for label, _, _ in STAGES[mode]]
        empty = [label for label, count in counts.items() if count == 0]
        assert not empty, f"{mode}: no samples for {empty} (a patch point no longer on the path?)"
        assert column["samples"] > 0 and column["total_us"] > 0
    # The printed table has a number for each stage in each mode that has it.
    table = {line.split(" | ")[0].lstrip("| "): line for line in stdout.splitlines()}
    for label in STAGE_ORDER:
        cells = table[label].strip(" |").split(" | ")[1:]
        modes_with_it = [mode for mode in MODES if label in {s[0] for s in STAGES[mode]}]
        assert sum(cell != "-" for cell in cells) == len(modes_with_it), table[label]


def test_a_py_spy_profile_is_split_by_thread_and_waits_are_set_apart(tmp_path: Path) -> None:
    sidecar = tmp_path / "loop.json"
    info = {"kind": "latency", "method": "fork", "parent": 100, "workers": [200]}
    info.update(dispatcher_tid=101, dispatcher_name="poolkit-dispatcher")
    sidecar.write_text(json.dumps(info))
    caller = 'process 100:"python";thread (0x1): MainThread;<module> (x.py:1)'
    caller += ";latency_loop (benchmarks/roundtrip/loops.py:70)"
    dispatcher = 'process 100:"python";thread (0x2): poolkit-dispatcher;run (threading.py:9)'
    dispatcher += ";_run (poolkit/_pool/dispatcher.py:1)"
    worker = 'process 200:"python";thread (0x3): MainThread;_bootstrap (process.py:3)'
    worker += ";worker_main (poolkit/_worker/main.py:1)"
    raw = tmp_path / "loop.raw"
    raw.write_text(
        f"{caller};submit (poolkit/_executor.py:1) 7\n"
        f"{caller};result (_base.py:1);wait (threading.py:320) 5\n"
        f"{dispatcher};select (selectors.py:468) 11\n"
        f"{dispatcher};resolve (poolkit/_pool/tasks.py:1) 3\n"
        f"{worker};_serve (poolkit/_worker/main.py:2) 2\n"
        'process 300:"other";thread (0x4): MainThread;f (y.py:1) 9\n'
    )
    summary = summarize(str(raw), str(sidecar), top=5)
    roles = summary["roles"]
    assert (roles["caller"]["samples"], roles["caller"]["waiting_samples"]) == (7, 5)
    assert (roles["dispatcher"]["samples"], roles["dispatcher"]["waiting_samples"]) == (3, 11)
    assert roles["worker"]["samples"] == 2
    assert summary["dropped_samples"] == 9
    assert roles["dispatcher"]["inclusive"][0][:2] == ("resolve (poolkit/_pool/tasks.py)", 3)
