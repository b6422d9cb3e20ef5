"""Sampling profiles of the plain loops under ``py-spy``, summarized per thread.

The threads are told apart by what the loop's sidecar file says (the parent's pid, the
workers' pids, the dispatcher thread's name), never by poolkit's function names; a thread's
own work is what runs below its outermost frame in the ``poolkit`` package (the caller: below
the loop in :mod:`.loops`). A sample whose innermost frame waits (``select``, a condition's
``wait``, the worker's blocking inbox read) is counted apart.
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Optional

import poolkit
from benchmarks.roundtrip.children import ROOT, command

FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")
#: Innermost frames where any thread waits: (file name, function).
WAIT_FUNCTIONS = (("selectors.py", "select"), ("threading.py", "wait"))
#: Source lines where a role's thread waits: the worker blocks reading its inbox.
WAIT_LINES = {"worker": ("os.read(", "os.readv(")}
ROLES = ("caller", "dispatcher", "worker")
_IN_POOLKIT = re.compile(r"(^|/)poolkit/")


def is_marker(role: str, frame: str) -> bool:
    """Whether ``frame`` is the outermost one of ``role``'s measured work."""
    match = FRAME.match(frame)
    if match is None:
        return False
    function, path = match.group(1), match.group(2)
    if role == "caller":
        return path.endswith("roundtrip/loops.py") and function.endswith("_loop")
    return _IN_POOLKIT.search(path) is not None


def is_wait(role: str, function: str, path: str, line_text: str) -> bool:
    """Whether a sample whose innermost frame is this one is a thread waiting."""
    if any(path.endswith(name) and function.endswith(fn) for name, fn in WAIT_FUNCTIONS):
        return True
    return any(call in line_text for call in WAIT_LINES.get(role, ()))


def source_line(path: str, line: int) -> str:
    """The source text of ``path:line`` as py-spy names it (relative or absolute)."""
    packages = os.path.dirname(os.path.dirname(os.path.abspath(poolkit.__file__)))
    for base in [packages, ROOT, *sys.path]:
        full = os.path.join(base or ".", path)
        if os.path.exists(full):
            return linecache.getline(full, line).strip()
    return ""


def role_of(info: dict[str, Any], pid: int, thread: str) -> Optional[str]:
    """Which of the profile's threads a sample is from (None: another one)."""
    if pid == info["parent"] and thread.endswith("MainThread"):
        return "caller"
    if pid == info["parent"] and thread.endswith(info["dispatcher_name"]):
        return "dispatcher"
    if pid in set(info["workers"]) and thread.endswith("MainThread"):
        return "worker"
    return None


def summarize(raw: str, sidecar: str, top: int) -> dict[str, Any]:
    """Per thread of a py-spy raw profile: self-time lines and inclusive functions.

    Samples whose innermost frame is a wait (:func:`is_wait`) are counted apart. Inclusive
    counts take the frames below the thread's marker (:func:`is_marker`), each function once
    per sample.
    """
    with open(sidecar) as f:
        info = json.load(f)
    lines: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    waits: collections.Counter[str] = collections.Counter()
    dropped = 0
    with open(raw) as f:
        for text in f:
            stack, _, count_text = text.rstrip("\n").rpartition(" ")
            count = int(count_text)
            frames = stack.split(";")
            procs = [int(p.split()[1].split(":")[0]) for p in frames if p.startswith("process ")]
            thread = next((p for p in frames if p.startswith("thread (")), "")
            code = [p for p in frames if not p.startswith(("process ", "thread ("))]
            role = role_of(info, procs[-1] if procs else info["parent"], thread)
            marker = None
            if role is not None:
                marker = next((i for i, p in enumerate(code) if is_marker(role, p)), None)
            if role is None or marker is None:
                dropped += count
                continue
            leaf = code[-1]
            match = FRAME.match(leaf)
            if match:
                func, path, number = match.group(1), match.group(2), int(match.group(3))
                line_text = source_line(path, number)
                leaf = f"{func} ({path}:{number}) `{line_text}`"
                if is_wait(role, func, path, line_text):
                    waits[role] += count
                    lines[role + " (waiting)"][leaf] += count
                    continue
            totals[role] += count
            lines[role][leaf] += count
            for function in {FRAME.sub(r"\1 (\2)", p) for p in code[marker + 1 :]}:
                inclusive[role][function] += count
    summary: dict[str, Any] = {"kind": info["kind"], "method": info["method"], "roles": {}}
    for role in ROLES:
        busy = totals[role]

        def share(n: int, busy: int = busy) -> float:
            return n / busy if busy else 0.0

        summary["roles"][role] = {
            "samples": busy,
            "waiting_samples": waits[role],
            "waiting": lines[role + " (waiting)"].most_common(3),
            "top": [(leaf, n, share(n)) for leaf, n in lines[role].most_common(top)],
            "inclusive": [(fn, n, share(n)) for fn, n in inclusive[role].most_common(top)],
        }
    summary["dropped_samples"] = dropped
    return summary


def render_summary(summary: dict[str, Any]) -> str:
    """A summary as text: per thread, self time by line, waits, inclusive functions."""
    gil = " (--gil: only samples holding the GIL)" if summary.get("gil") else ""
    out = [f"## py-spy: {summary['kind']} loop, {summary['method']}{gil}"]
    for role, data in summary["roles"].items():
        out.append(
            f"\n{role}: {data['samples']} samples outside waits "
            f"(+{data['waiting_samples']} sampled in waits, excluded); self time by line:"
        )
        for leaf, n, share in data["top"]:
            out.append(f"  {share:6.1%} {n:6d}  {leaf}")
        for leaf, n in data["waiting"]:
            out.append(f"  (wait) {n:6d}  {leaf}")
        out.append(f"{role}: inclusive, by function (below the loop):")
        for function, n, share in data["inclusive"]:
            out.append(f"  {share:6.1%} {n:6d}  {function}")
    out.append(f"\n(samples outside the measured loops, dropped: {summary['dropped_samples']})")
    return "\n".join(out)


def run_pyspy(options: argparse.Namespace) -> list[dict[str, Any]]:
    """Each loop alone, then under ``py-spy record`` (all samples, then ``--gil``)."""
    out_dir = options.pyspy_out or tempfile.mkdtemp(prefix="poolkit-pyspy-")
    os.makedirs(out_dir, exist_ok=True)
    summaries = []
    for kind in ("latency", "burst"):
        loop = command("--loop", kind, "--method", options.pyspy_method)
        loop += ["--seconds", str(options.pyspy_seconds)]
        alone = subprocess.run(loop, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        print(f"{alone.stdout.strip()} (no profiler)")
        for gil in (False, True):
            name = f"{kind}-gil" if gil else kind
            raw = os.path.join(out_dir, f"{name}.raw")
            sidecar = os.path.join(out_dir, f"{name}.json")
            # --nonblocking: at 2000 samples/s, pausing the processes for every sample slowed
            # the latency loop several times over.
            spy = [options.pyspy, "record", "--nonblocking", "-r", "2000", "-f", "raw"]
            spy += ["-s", "-t", *(["--gil"] if gil else []), "-o", raw, "--"]
            spy += [*loop, "--sidecar", sidecar]
            profiled = subprocess.run(spy, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            summary = summarize(raw, sidecar, options.top)
            summary.update(
                gil=gil, without_profiler=alone.stdout.strip(), profiled=profiled.stdout.strip()
            )
            print(f"{profiled.stdout.strip()} (under py-spy{' --gil' if gil else ''})")
            print(render_summary(summary) + "\n")
            summaries.append(summary)
    print(f"raw profiles in {out_dir}")
    return summaries
