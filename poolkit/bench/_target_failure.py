"""How a ``--target`` run failed: the stage, the message, and where a hung call was stuck."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._target import TargetResult


def describe_failure(data: dict[str, Any], timed_out: bool, timeout: float) -> str:
    """Why one measurement failed, in a line."""
    if timed_out:
        return f"timed out after {timeout:g} s"
    return str(data.get("error", "failed"))


def record_failure(
    result: TargetResult, data: dict[str, Any], timed_out: bool, stderr: str, timeout: float
) -> None:
    """Set ``result``'s stage, failure and details from the probe that failed."""
    if timed_out:
        result.stage = "timeout"
        result.failure = (
            f"{result.target} did not finish within {timeout:g} s when called once in a fresh "
            f"process: it hangs, or one call takes longer than --timeout"
        )
        result.details = _where_it_hung(stderr)
        return
    result.stage = str(data.get("stage", "runner"))
    result.failure = str(data.get("error", "the probe failed"))
    result.details = str(data.get("traceback", "")).strip()


def _where_it_hung(stderr: str) -> str:
    """The main thread's stack from the runner's faulthandler dump, innermost call first."""
    lines = stderr.splitlines()
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if "most recent call first" in line and "Current thread" in line
        ),
        None,
    )
    if start is None:
        return stderr.strip()[-2000:]
    stack = []
    for line in lines[start + 1 :]:
        if not line.strip().startswith("File"):
            break
        if "poolkit_bench_runner" not in line and '"<string>"' not in line:
            stack.append("  " + line.strip())
    return "where it was when stopped (innermost first):\n" + "\n".join(stack)
