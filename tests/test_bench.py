"""The benchmark's library and command line: it runs, reports, and fails clearly.

Fast runs only (``--quick``, one start method, a few workloads); no test asserts a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poolkit.bench
from poolkit.__main__ import main
from poolkit.bench import BenchResult
from poolkit.bench._orchestrate import resolve_peers
from poolkit.bench._stats import format_value, summarize
from poolkit.bench._target import default_chunksizes, normalize_args

FAST = "fork" if "fork" in poolkit.start_methods() else poolkit.start_methods()[0]

USER_MODULE = """
import time

VALUES = [1, 2, 3, 4, 5, 6]
PAIRS = [(1, 2), (3, 4), (5, 6)]

def square(x):
    return x * x

def add(a, b):
    return a + b

def explode(x):
    return _inner(x)

def _inner(x):
    raise ValueError(f"cannot handle {x}")

def hang(x):
    while True:
        time.sleep(0.05)
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``bench_user_mod`` importable by the benchmark's runner processes."""
    (tmp_path / "bench_user_mod.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return "bench_user_mod"


def bench(*args: str) -> int:
    return main(["bench", "--no-progress", *args])


def test_quick_run_writes_table_json_and_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    status = bench(
        "--quick", "--methods", FAST, "--workloads", "latency,memory",
        "--json", str(out_json), "--markdown", str(out_md),
    )  # fmt: skip
    assert status == 0
    text = capsys.readouterr().out
    assert "latency submit(noop).result(), median" in text
    assert "machine:" in text and "CPUs" in text
    data = json.loads(out_json.read_text())
    assert data["config"]["methods"] == [FAST]
    assert data["machine"]["python"]
    medians = {row["metric"]: row["median"] for row in data["rows"]}
    assert medians["median_us"] > 0 and medians["worker_mib"] > 0
    assert "| latency submit(noop).result(), median |" in out_md.read_text()


def test_api_result_object_rows_html_and_round_trip() -> None:
    result = poolkit.bench.run(quick=True, methods=FAST, workloads="cold", repeat=2)
    assert isinstance(result, BenchResult)
    rows = result.rows()
    assert {row["metric"] for row in rows} == {"first_ms", "ready_ms"}
    assert all(row["n"] == 2 and row["median"] > 0 for row in rows)
    assert "cold start -> first result" in str(result)
    assert "<table>" in result._repr_html_()
    again = BenchResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.rows() == rows


def test_target_reports_the_fastest_combination(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "t.json"
    status = bench(
        "--target", f"{user_module}:square", "--args", "[1, 2, 3, 4, 5, 6, 7, 8]",
        "--methods", FAST, "--repeat", "1", "--chunksizes", "1,4", "--json", str(out_json),
    )  # fmt: skip
    assert status == 0
    text = capsys.readouterr().out
    assert "fastest: start_method=" in text
    data = json.loads(out_json.read_text())
    assert data["items"] == 8 and data["first_call"] == "1"
    assert data["best"]["method"] == FAST and data["best"]["chunksize"] in (1, 4)
    assert all(row["seconds"] > 0 for row in data["rows"])


def test_target_with_module_level_inputs_and_star(user_module: str) -> None:
    result = poolkit.bench.run_target(
        f"{user_module}:add", inputs=f"{user_module}:PAIRS", star=True,
        methods=FAST, repeat=1, chunksizes=[2],
    )  # fmt: skip
    assert result.ok, result.to_text()
    assert result.items == 3 and result.first_call == "3"


def test_target_import_error_is_reported(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench("--target", "no_such_module_here:fn", "--methods", FAST) == 1
    text = capsys.readouterr().out
    assert "FAILED (import)" in text and "no_such_module_here" in text
    assert bench("--target", f"{user_module}:missing", "--methods", FAST) == 1
    assert "has no attribute 'missing'" in capsys.readouterr().out


def test_target_that_raises_is_reported_with_its_traceback(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench("--target", f"{user_module}:explode", "--args", "[7]", "--methods", FAST) == 1
    text = capsys.readouterr().out
    assert "FAILED (call)" in text and "ValueError: cannot handle 7" in text
    assert "in _inner" in text  # the user's own frames are shown


def test_target_that_hangs_is_stopped_and_located(user_module: str) -> None:
    result = poolkit.bench.run_target(
        f"{user_module}:hang", args=[1], methods=FAST, timeout=2, repeat=1
    )
    assert not result.ok and result.stage == "timeout"
    assert "did not finish within 2 s" in result.failure
    assert "hang" in result.details  # where it was stuck
    assert "FAILED (timeout)" in str(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "nosuch"], "available here"),
        (["--workers", "0"], "positive integer"),
        (["--repeat", "x"], "positive integer"),
        (["--against", "nosuchpool"], "known peers"),
        (["--workloads", "nosuch"], "workloads:"),
        (["--args", "[1]"], "only make(s) sense with --target"),
        (["--target", "nocolon"], "module:function"),
        (["--target", "m:f", "--args", "{bad"], "not valid JSON"),
        (["--target", "m:f", "--args", "[1]", "--inputs", "m:x"], "not both"),
        (["--target", "m:f", "--args", "[[1], 2]"], "mix argument lists"),
    ],
)
def test_bad_arguments_give_a_clear_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench(*args) == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert bench("--quick", "--plot", str(tmp_path / "x.png")) == 2
        assert "poolkit[plot]" in capsys.readouterr().err
    else:
        pytest.skip("matplotlib is installed")


def test_missing_peer_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "loky" else real(name, *a)
    )
    peers, skipped = resolve_peers("stdlib,loky")
    assert peers == ["stdlib"]
    assert "not installed" in skipped["loky"] and "pip install loky" in skipped["loky"]


def test_normalize_args_and_chunksizes() -> None:
    assert normalize_args([[1, 2], [3, 4]]) == [[1, 2], [3, 4]]
    assert normalize_args([1, 2]) == [[1], [2]]
    assert normalize_args("x", count=3) == [["x"]] * 3
    assert normalize_args(None, count=2) == [[], []]
    with pytest.raises(ValueError, match="empty"):
        normalize_args([])
    assert default_chunksizes(1000, 2) == [1, 32, 125]
    assert default_chunksizes(3, 2) == [1]


def test_stats_and_formatting() -> None:
    stat = summarize([3.0, 1.0, 2.0])
    assert stat is not None and stat.median == 2.0 and stat.spread_pct == 50.0
    assert summarize([]) is None
    assert format_value(12345.6) == "12,346" and format_value(1.234) == "1.23"


def test_command_line_demo_and_unknown_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "poolkit", "demo"], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert "map(square, range(8)) = [0, 1, 4, 9" in done.stdout
    assert main(["frobnicate"]) == 2
