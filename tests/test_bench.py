"""The benchmark's library and command line: it runs, reports, and fails clearly.

Fast runs only (``--quick``, one start method, a few workloads); no test asserts a speed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import poolkit.bench
from benchmarks import goals
from poolkit.__main__ import main
from poolkit.bench import BenchResult, _plot
from poolkit.bench._launch import compile_stale, launch, stale_sources
from poolkit.bench._orchestrate import resolve_peers
from poolkit.bench._result import Cell
from poolkit.bench._stats import format_value, summarize
from poolkit.bench._target import default_chunksizes, normalize_args
from poolkit_bench_runner.catalog import WORKLOADS, WORKLOADS_BY_NAME

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
        "--quick", "--methods", FAST, "--workloads", "latency,memory", "--repeat", "1",
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
    # The memory total is the parent, every worker and every helper process, nothing else.
    workers = data["config"]["workers"]
    assert medians["processes"] >= workers
    assert medians["total_mib"] == pytest.approx(
        medians["parent_mib"] + workers * medians["worker_mib"] + medians["helper_mib"]
    )
    assert 0 < medians["total_pss_mib"] <= medians["total_mib"]


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


def test_the_runner_measuring_a_peer_never_imports_poolkit(tmp_path: Path) -> None:
    # The runner as the parent starts it (``python -c``, a fresh interpreter, the spec on
    # stdin), from a directory holding nothing, so poolkit could only come from an import.
    code = (
        "import json, sys\n"
        "from poolkit_bench_runner.main import dispatch\n"
        "result = dispatch(json.loads(sys.stdin.read()))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'poolkit')\n"
        "print(json.dumps({'ok': result['ok'], 'poolkit_modules': loaded}))\n"
    )
    spec = {
        "workload": "latency",
        "impl": "stdlib",
        "method": FAST,
        "workers": 1,
        "params": WORKLOADS_BY_NAME["latency"].parameters(quick=True),
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"ok": True, "poolkit_modules": []}


def test_bytecode_is_written_only_where_it_is_missing_or_stale(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text("VALUE = 1\n")
    assert len(stale_sources(str(package))) == 2
    assert len(compile_stale(str(package))) == 2
    assert stale_sources(str(package)) == []
    cached = Path(importlib.util.cache_from_source(str(package / "sub" / "mod.py")))
    written = cached.stat().st_mtime_ns
    # Current bytecode (as pip leaves an installed copy): nothing is compiled or written,
    # even where nothing could be.
    for folder in (package, package / "sub", cached.parent):
        folder.chmod(0o555)
    try:
        assert compile_stale(str(package)) == []
    finally:
        for folder in (package, package / "sub", cached.parent):
            folder.chmod(0o755)
    assert cached.stat().st_mtime_ns == written
    # A changed source is stale again, and only it is compiled.
    (package / "sub" / "mod.py").write_text("VALUE = 22\n")
    assert compile_stale(str(package)) == [str(package / "sub" / "mod.py")]


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
    assert "start method: " in text and "chunksize: " in text and "pool start-up" in text
    data = json.loads(out_json.read_text())
    assert data["items"] == 8 and data["first_call"] == "1"
    assert data["best"]["method"] == FAST and data["best"]["chunksize"] in (1, 4)
    assert all(row["seconds"] > 0 for row in data["rows"])
    answer = data["verdict"]
    assert answer["method"] == FAST and answer["chunksize"] in (1, 4)
    assert answer["startup_s"] > 0 and answer["warm_calls_per_s"] > 0
    assert all(row["startup_s"] > 0 for row in data["rows"])
    assert set(data["probe"]) >= {"pickle_s", "pickle_bytes", "threads"}


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


# ---------------------------------------------------------------- the workloads of the targets


def measure(workload: str, impl: str, **params: Any) -> dict[str, Any]:
    """One measurement in a fresh runner process, with small parameters."""
    spec = {
        "kind": "workload",
        "workload": workload,
        "impl": impl,
        "method": FAST,
        "workers": 2,
        "params": params,
    }
    outcome = launch(spec, 60)
    assert outcome.ok, (outcome.error, outcome.stderr[-2000:])
    return outcome.data


@pytest.mark.parametrize("impl", ["poolkit", "stdlib", "mppool"])
def test_map_with_each_pools_default_arguments(impl: str) -> None:
    values = measure("mapdefault", impl, items=300)["values"]
    assert values["rate"] > 0


def test_array_round_trip_and_its_floor() -> None:
    pytest.importorskip("numpy")
    assert measure("array", "poolkit", mib=1, reps=2)["values"]["mibs"] > 0
    assert measure("array", "floor", mib=1, reps=2)["values"]["mibs"] > 0


def test_array_without_numpy_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A numpy that cannot be imported, first on the runner's path.
    (tmp_path / "numpy.py").write_text("raise ImportError('no numpy in this test')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = poolkit.bench.run(quick=True, methods=FAST, workloads="array")
    cell = result.cell("array", "mibs", FAST)
    assert cell.stat is None and "numpy is not installed" in cell.note
    assert "numpy is not installed" in result.to_text() and not result.problems


def test_respawn_is_timed_from_the_death_to_a_task_on_the_replacement() -> None:
    values = measure("respawn", "poolkit", kills=2)["values"]
    # From the death, not the kill, to a task's start on the new worker: after the death.
    assert values["respawn_ms"] > 0
    assert measure("respawn", "floor", kills=2)["values"]["respawn_ms"] > 0
    stdlib = measure("respawn", "stdlib", kills=1)
    assert "cannot go on after a worker's death (BrokenProcessPool)" in stdlib["note"]


def test_memory_floor_counts_bare_processes_like_a_pool() -> None:
    values = measure("memory", "floor")["values"]
    assert values["processes"] >= 2 and values["worker_mib"] > 0
    assert values["total_mib"] == pytest.approx(
        values["parent_mib"] + 2 * values["worker_mib"] + values["helper_mib"]
    )


# ---------------------------------------------------------------- targets, from given numbers

ORDER = [w.name for w in WORKLOADS]


def synthetic(
    values: dict[tuple[str, str, str, str], float],
    methods: tuple[str, ...] = ("fork", "spawn"),
    impls: tuple[str, ...] = ("poolkit", "stdlib", "mppool", "loky", "floor"),
    quick: bool = False,
) -> BenchResult:
    """A result holding exactly these medians: (workload, metric, method, impl) -> value."""
    names = {key[0] for key in values}
    result = BenchResult(
        machine={}, methods=list(methods), impls=list(impls),
        workloads=[name for name in ORDER if name in names],
        workers=2, repeat=1, quick=quick,
    )  # fmt: skip
    for key, value in values.items():
        result.cells[key] = Cell(summarize([value]))
    return result


def verdicts(result: BenchResult) -> dict[tuple[str, str, str, str], tuple[str, str]]:
    """(workload, metric, against, method) -> (verdict, reference) for every target."""
    return {
        (c.goal.workload, c.goal.metric, c.goal.against, c.method): (c.verdict, c.reference)
        for c in goals.evaluate(result)
    }


def test_targets_pass_and_miss_from_the_runs_own_numbers() -> None:
    result = synthetic({
        # latency (lower is better): 100/400 = 0.25 <= 0.3; best peer mp.Pool 150: 0.67 > 0.5
        ("latency", "median_us", "fork", "poolkit"): 100.0,
        ("latency", "median_us", "fork", "stdlib"): 400.0,
        ("latency", "median_us", "fork", "mppool"): 150.0,
        ("latency", "median_us", "fork", "floor"): 10.0,  # the floor is not a peer
        # burst (higher is better): exactly 8x stdlib passes; best peer 50k: 1.6x < 2x
        ("burst", "rate", "fork", "poolkit"): 80000.0,
        ("burst", "rate", "fork", "stdlib"): 10000.0,
        ("burst", "rate", "fork", "mppool"): 50000.0,
        # default-arguments map against mp.Pool's: 0.79x misses 0.8x
        ("mapdefault", "rate", "fork", "poolkit"): 790.0,
        ("mapdefault", "rate", "fork", "mppool"): 1000.0,
        # cold start against the floor: 1.3x passes; all workers ready 1.31x stdlib misses
        ("cold", "first_ms", "fork", "poolkit"): 13.0,
        ("cold", "first_ms", "fork", "floor"): 10.0,
        ("cold", "ready_ms", "fork", "poolkit"): 13.1,
        ("cold", "ready_ms", "fork", "stdlib"): 10.0,
        # memory total: 1.2x stdlib misses 1.1x
        ("memory", "total_mib", "fork", "poolkit"): 60.0,
        ("memory", "total_mib", "fork", "stdlib"): 50.0,
    })  # fmt: skip
    found = verdicts(result)
    best = goals.BEST_PEER
    assert found["latency", "median_us", "stdlib", "fork"] == ("PASS", "stdlib")
    assert found["latency", "median_us", best, "fork"] == ("MISS", "mppool")
    assert found["burst", "rate", "stdlib", "fork"] == ("PASS", "stdlib")
    assert found["burst", "rate", best, "fork"] == ("MISS", "mppool")
    assert found["mapdefault", "rate", "mppool", "fork"] == ("MISS", "mppool")
    assert found["cold", "first_ms", "floor", "fork"] == ("PASS", "floor")
    assert found["cold", "ready_ms", "stdlib", "fork"] == ("MISS", "stdlib")
    assert found["memory", "total_mib", "stdlib", "fork"] == ("MISS", "stdlib")
    # Nothing measured under spawn: every target there is n/a, none passes or misses.
    assert {v for (_, _, _, m), (v, _) in found.items() if m == "spawn"} == {"n/a"}
    # Only the targets of the workloads the run measured are listed.
    assert {key[0] for key in found} == {"latency", "burst", "mapdefault", "cold", "memory"}
    summary = goals.summary(result, goals.evaluate(result))
    assert summary.startswith("targets met: 3 of 16 (fork 3/8, spawn 0/8)")
    assert "8 could not be computed" in summary


def test_targets_best_peer_and_missing_references() -> None:
    result = synthetic(
        {
            ("burst", "rate", "fork", "poolkit"): 30000.0,
            ("burst", "rate", "fork", "stdlib"): 10000.0,
            ("burst", "rate", "fork", "loky"): 14000.0,  # the best peer: 30k/14k = 2.14x
            ("respawn", "respawn_ms", "fork", "poolkit"): 9.0,
            ("cpu", "speedup", "fork", "poolkit"): 1.9,
        },
        methods=("fork",),
        impls=("poolkit", "stdlib", "loky", "dask"),  # no floor; dask is poolkit, not a peer
    )
    result.cells["cpu", "speedup", "fork", "stdlib"] = Cell(note="the pool hung")
    checks = {(c.goal.workload, c.goal.against): c for c in goals.evaluate(result)}
    best = checks["burst", goals.BEST_PEER]
    assert (best.verdict, best.reference) == ("PASS", "loky")
    assert best.ratio == pytest.approx(30000 / 14000)
    assert goals.cell_text(best) == "2.14x PASS (vs loky)"
    respawn = checks["respawn", "floor"]
    assert respawn.verdict == "n/a" and respawn.note == "floor not measured"
    cpu = checks["cpu", "stdlib"]
    assert cpu.verdict == "n/a" and cpu.note == "stdlib PPE: the pool hung"
    assert goals.cell_text(cpu) == "n/a (stdlib PPE: the pool hung)"


def test_target_ratio_shows_enough_digits_for_its_verdict() -> None:
    result = synthetic(
        {
            ("latency", "median_us", "fork", "poolkit"): 120.16,
            ("latency", "median_us", "fork", "stdlib"): 400.0,  # 0.3004: just over 0.3
        },
        methods=("fork",),
        impls=("poolkit", "stdlib"),
    )
    (check, best) = goals.evaluate(result)
    assert check.verdict == "MISS" and goals.cell_text(check) == "0.3004x MISS"
    # Against the best peer's 0.5 bound, two digits leave no doubt.
    assert goals.cell_text(best) == "0.30x PASS (vs stdlib PPE)"
    text = goals.render_markdown(result, [check, best])
    assert "| latency submit(noop).result(), median | <= 0.3x stdlib PPE | 0.3004x MISS |" in text
    assert "**0.30x PASS (vs stdlib PPE)**" in text
    assert "<= 0.5x best peer" in goals.render_text(result, [check, best])
    assert best.to_dict()["direction"] == "<=" and best.to_dict()["reference"] == "stdlib"


# ---------------------------------------------------------------- benchmarks/run.py


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    """``benchmarks/run.py``, imported as a module."""
    from benchmarks import run

    return run


def test_compare_flags_slowdowns_of_new_workloads(suite: ModuleType) -> None:
    before = synthetic({
        ("mapdefault", "rate", "fork", "poolkit"): 1000.0,
        ("array", "mibs", "fork", "poolkit"): 400.0,
        ("memory", "total_mib", "fork", "poolkit"): 50.0,
        ("mapauto", "tiny_best_chunksize", "fork", "poolkit"): 4096.0,
    }, methods=("fork",))  # fmt: skip
    now = synthetic({
        ("mapdefault", "rate", "fork", "poolkit"): 790.0,  # 21% slower: flagged
        ("array", "mibs", "fork", "poolkit"): 330.0,  # 17.5% slower: within the noise allowed
        ("memory", "total_mib", "fork", "poolkit"): 61.0,  # 22% larger: flagged
        ("mapauto", "tiny_best_chunksize", "fork", "poolkit"): 64.0,  # describes, not a speed
        ("cpu", "speedup", "fork", "poolkit"): 1.9,  # not in the saved result
    }, methods=("fork",))  # fmt: skip
    regressions, unmatched, drifted = suite.compare(now, before)
    assert not drifted
    assert len(regressions) == 2
    assert regressions[0].startswith("map 200,000 tiny tasks, each pool's default arguments [fork]")
    assert "(+21% worse)" in regressions[0]
    assert regressions[1].startswith("memory: parent + workers + helpers, total RSS [fork]")
    assert unmatched == ["CPU scaling, 64 x 20 ms pure-Python tasks [fork]"]


def test_compare_puts_a_slowdown_the_floor_shares_down_to_the_machine(suite: ModuleType) -> None:
    before = synthetic({
        ("latency", "median_us", "fork", "poolkit"): 100.0,
        ("latency", "median_us", "fork", "floor"): 40.0,
        ("latency", "median_us", "spawn", "poolkit"): 100.0,
        ("latency", "median_us", "spawn", "floor"): 40.0,
    }, methods=("fork", "spawn"))  # fmt: skip
    now = synthetic({
        ("latency", "median_us", "fork", "poolkit"): 130.0,  # +30%, and the floor +30%
        ("latency", "median_us", "fork", "floor"): 52.0,
        ("latency", "median_us", "spawn", "poolkit"): 130.0,  # +30% on a steady floor
        ("latency", "median_us", "spawn", "floor"): 40.0,
    }, methods=("fork", "spawn"))  # fmt: skip
    regressions, unmatched, drifted = suite.compare(now, before)
    assert not unmatched
    assert len(drifted) == 1 and "[fork]" in drifted[0] and "against floor: +0%" in drifted[0]
    assert len(regressions) == 1 and "[spawn]" in regressions[0]
    assert "(+30% worse); against floor: +30%" in regressions[0]


def test_suite_writes_targets_and_exits_non_zero_on_a_regression(
    suite: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = {
        ("burst", "rate", "fork", "poolkit"): 40000.0,
        ("burst", "rate", "fork", "stdlib"): 4000.0,
        ("array", "mibs", "fork", "poolkit"): 300.0,
        ("array", "mibs", "fork", "stdlib"): 100.0,
    }
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(synthetic(values, methods=("fork",)).to_dict()))
    values["burst", "rate", "fork", "poolkit"] = 20000.0  # half the saved rate
    monkeypatch.setattr(poolkit.bench, "run", lambda **_: synthetic(values, methods=("fork",)))

    def no_chart(*_: Any) -> None:  # matplotlib or not: the chart is not this test's subject
        raise _plot.PlotUnavailable("no chart in this test")

    monkeypatch.setattr(_plot, "plot", no_chart)
    out = tmp_path / "bench.md"
    assert suite.main(["--compare", str(saved), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    printed = captured.out
    assert "no chart in this test" in captured.err
    assert "REGRESSION: submit burst, 20,000 no-ops waited together [fork]" in printed
    assert "targets met: 1 of 3 (fork 1/3)" in printed
    doc = out.read_text()
    assert "## Targets" in doc and doc.index("## Targets") < doc.index("## Results")
    # The verdict section is written, once, between the targets and the results.
    assert doc.index("## Targets") < doc.index("## Verdict") < doc.index("## Results")
    assert doc.count("Verdict\n") == 1 and "Mann-Whitney U" in doc and "Measured on: " in doc
    assert "| submit burst, 20,000 no-ops waited together | >= 8x stdlib PPE | **5.00x" not in doc
    assert "| submit burst, 20,000 no-ops waited together | >= 8x stdlib PPE | 5.00x MISS |" in doc
    assert "| 32 MiB numpy float64 array round trip" in doc and "3.00x MISS" in doc
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {row["verdict"] for row in data["targets"]} == {"PASS", "MISS"}
    # A saved --quick result is not compared with a full run: its sizes differ.
    saved.write_text(json.dumps(synthetic(values, methods=("fork",), quick=True).to_dict()))
    with pytest.raises(SystemExit, match="sizes differ"):
        suite.main(["--compare", str(saved), "--out", str(out)])


def test_render_rewrites_the_page_of_a_saved_run_without_measuring(
    suite: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_run(**_: Any) -> None:
        raise AssertionError("--render measured something")

    def no_chart(*_: Any) -> None:
        raise _plot.PlotUnavailable("no chart in this test")

    monkeypatch.setattr(poolkit.bench, "run", no_run)
    monkeypatch.setattr(_plot, "plot", no_chart)
    values = {
        ("respawn", "respawn_ms", "fork", "poolkit"): 4.0,
        ("respawn", "respawn_ms", "fork", "floor"): 2.0,  # 2x: over the 1.5x bound
        ("burst", "rate", "fork", "poolkit"): 40000.0,
        ("burst", "rate", "fork", "stdlib"): 4000.0,
    }
    data = synthetic(values, methods=("fork",)).to_dict()
    data["command"] = "python benchmarks/run.py --repeat 5"
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    out = tmp_path / "page.md"
    assert suite.main(["--render", str(saved), "--out", str(out)]) == 0
    doc = out.read_text()
    assert "python benchmarks/run.py --repeat 5" in doc
    assert "## Verdict" in doc and "- only fork was measured: nothing to compare" in doc
    assert "2.00x MISS" in doc and "**10.00x PASS**" in doc
    assert "performance.md#fork-where-cold-start-respawn-and-memory-go" in doc
    # Without a fork miss of those three, the page does not explain one.
    values["respawn", "respawn_ms", "fork", "poolkit"] = 2.5
    saved.write_text(json.dumps(synthetic(values, methods=("fork",)).to_dict()))
    assert suite.main(["--render", str(saved), "--out", str(out)]) == 0
    assert "performance.md#fork" not in out.read_text()
    title = "### `python -m poolkit bench` on this machine"
    assert title not in out.read_text()  # no saved default run next to the page
    # A saved `python -m poolkit bench --json` run next to the page: its verdict is shown too.
    default_run = synthetic({("cold", "first_ms", "fork", "poolkit"): 8.0}, methods=("fork",))
    (tmp_path / suite.DEFAULT_RUN).write_text(json.dumps(default_run.to_dict()))
    assert suite.main(["--render", str(saved), "--out", str(out)]) == 0
    doc = out.read_text()
    assert doc.index("## Verdict") < doc.index(title) < doc.index("## Results")
    assert "start-up and respawn  only fork measured" in doc


def test_the_side_by_side_page_keeps_its_hand_written_end(tmp_path: Path) -> None:
    from benchmarks import run

    page = tmp_path / "benchmarks.md"
    assert run._hand_written(str(page)) == ""  # no page yet
    page.write_text(f"# generated\n\nold tables\n\n{run.HAND_WRITTEN}\n\n## By hand\n\ntext\n")
    assert run._hand_written(str(page)) == f"{run.HAND_WRITTEN}\n\n## By hand\n\ntext\n"
