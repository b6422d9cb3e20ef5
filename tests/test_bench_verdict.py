"""The benchmark's verdict, from synthetic repetitions: groups, advice, peers, load, --target.

No test here asserts a speed: the numbers are made up, and the one real run is tiny and only
checked for its structure.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import poolkit
from poolkit.__main__ import main
from poolkit.bench import BenchResult
from poolkit.bench._machine import LoadCheck
from poolkit.bench._progress import Eta, progress_printer
from poolkit.bench._result import Cell
from poolkit.bench._stats import summarize
from poolkit.bench._target import TargetResult

METHODS = ("forkserver", "spawn", "fork")
FAST = "fork" if "fork" in poolkit.start_methods() else poolkit.start_methods()[0]

Key = tuple[str, str, str, str]


def result_of(
    values: dict[Key, list[float]],
    methods: tuple[str, ...] = METHODS,
    impls: tuple[str, ...] = ("poolkit",),
    repeat: int = 3,
) -> BenchResult:
    """A run holding exactly these repetitions: (workload, metric, method, impl) -> samples."""
    order = ["cold", "respawn", "latency", "mapdefault", "payload", "memory"]
    names = {key[0] for key in values}
    result = BenchResult(
        machine={}, methods=list(methods), impls=list(impls),
        workloads=[n for n in order if n in names], workers=2, repeat=repeat, quick=False,
    )  # fmt: skip
    for key, samples in values.items():
        result.cells[key] = Cell(summarize(samples))
    return result


def steady(value: float, n: int = 3) -> list[float]:
    """n repetitions within 1% of ``value``."""
    return [value * (1 + 0.005 * (i - 1)) for i in range(n)]


def typical(n: int = 3) -> dict[Key, list[float]]:
    """fork starts fastest; forkserver respawns faster than spawn; the rest is a tie."""
    return {
        ("cold", "first_ms", "forkserver", "poolkit"): steady(70.0, n),
        ("cold", "first_ms", "spawn", "poolkit"): steady(68.0, n),
        ("cold", "first_ms", "fork", "poolkit"): steady(8.0, n),
        ("respawn", "respawn_ms", "forkserver", "poolkit"): steady(6.0, n),
        ("respawn", "respawn_ms", "spawn", "poolkit"): steady(60.0, n),
        ("respawn", "respawn_ms", "fork", "poolkit"): steady(4.0, n),
        ("latency", "median_us", "forkserver", "poolkit"): [80.0, 84.0, 79.0, 83.0, 81.0][:n],
        ("latency", "median_us", "spawn", "poolkit"): [82.0, 78.0, 85.0, 80.0, 84.0][:n],
        ("latency", "median_us", "fork", "poolkit"): [79.0, 86.0, 81.0, 78.0, 83.0][:n],
    }


def group(result: BenchResult, name: str) -> Any:
    return next(g for g in result.verdict().groups if g.name == name)


def test_groups_name_a_method_only_where_the_rule_does() -> None:
    result = result_of(typical())
    start = group(result, "start-up and respawn")
    assert start.choice == "fork" and start.summary == "fork: wins 2 of 2 rows"
    overhead = group(result, "per-task overhead")
    assert overhead.choice is None and overhead.summary.startswith("tied: no start method")
    assert [row.methods.text() for row in overhead.rows] == ["tied"]
    # Groups the run did not measure are left out, not reported as tied.
    assert [g.name for g in result.verdict().groups] == [
        "start-up and respawn",
        "per-task overhead",
    ]


def test_advice_puts_safety_first_and_says_where_fork_is_faster() -> None:
    verdict = result_of(typical()).verdict()
    assert verdict.method == "forkserver"
    use, fork = verdict.advice
    assert use.startswith("use: start_method='forkserver' (poolkit's default): safe in any")
    assert "beats spawn in 1 row (start-up and respawn 1)" in use
    assert "spawn beats it in no row" in use
    assert fork.startswith("fork beats forkserver in 2 rows (start-up and respawn 2)")
    assert "only if no other thread runs" in fork
    assert any("threaded parent" in fact for fact in verdict.safety)
    text = "\n".join(verdict.lines())
    assert "Mann-Whitney U" in text and "p <= 0.05" in text and ">= 3" in text


def test_spawn_is_chosen_when_it_beats_forkserver_and_fork_that_wins_nothing_is_not_sold() -> None:
    values = {
        ("latency", "median_us", "forkserver", "poolkit"): steady(100.0),
        ("latency", "median_us", "spawn", "poolkit"): steady(80.0),
        ("latency", "median_us", "fork", "poolkit"): steady(80.5),
    }
    verdict = result_of(values).verdict()
    assert verdict.method == "spawn"
    assert "beats forkserver in 1 row (per-task overhead 1)" in verdict.advice[0]
    assert verdict.advice[1].startswith("fork beats spawn in no row beyond the noise")


def test_fewer_than_three_repetitions_name_no_winner_and_say_so() -> None:
    result = result_of(typical(n=2), repeat=2)
    verdict = result.verdict()
    assert all(g.choice is None for g in verdict.groups)
    assert verdict.advice[0].startswith("2 repetition(s): too few for the rule")
    row = group(result, "start-up and respawn").rows[0]
    assert "too few repetitions" in row.text()


def test_one_noisy_method_ties_its_row() -> None:
    values = typical()
    values["cold", "first_ms", "fork", "poolkit"] = [8.0, 90.0, 7.5]  # one slow repetition
    start = group(result_of(values), "start-up and respawn")
    cold = start.rows[0]
    assert cold.methods.winner is None and "fork" in cold.methods.leaders
    # The group still goes to fork, which wins respawn and ties cold start, and says so.
    assert start.choice == "fork" and start.summary == "fork: wins 1 of 2 rows, ties the other 1"


def test_the_method_table_marks_only_winners() -> None:
    text = result_of(typical()).to_text()
    cold = next(line for line in text.splitlines() if line.startswith("cold start -> first"))
    latency = next(line for line in text.splitlines() if line.startswith("latency submit"))
    assert cold.rstrip().endswith("fork") and cold.count("*") == 1
    assert latency.rstrip().endswith("tied") and "*" not in latency


def test_peers_get_the_same_rule() -> None:
    values: dict[Key, list[float]] = {
        ("payload", "result_mibs", "fork", "poolkit"): steady(230.0),
        ("payload", "result_mibs", "fork", "stdlib"): steady(400.0),
        ("payload", "result_mibs", "fork", "mppool"): steady(300.0),
        ("latency", "median_us", "fork", "poolkit"): steady(80.0),
        ("latency", "median_us", "fork", "stdlib"): steady(330.0),
        ("latency", "median_us", "fork", "mppool"): [81.0, 79.0, 300.0],  # noisy: a tie
        ("latency", "median_us", "fork", "floor"): steady(20.0),  # the floor is not a pool
    }
    result = result_of(values, methods=("fork",), impls=("poolkit", "stdlib", "mppool", "floor"))
    payload = group(result, "large payloads")
    assert "beaten in 1: payload: 8 MiB result [fork] by stdlib PPE (1.74x)" in payload.peers
    overhead = group(result, "per-task overhead")
    assert overhead.peers.startswith(
        "poolkit best in 0 of 1 (row, start method), tied for best in 1"
    )
    data = result.to_dict()["verdict"]
    latency_row = data["groups"][0]["rows"][0]
    assert latency_row["pools"]["fork"]["leaders"] == ["poolkit", "mppool"]
    assert "[fork] by stdlib PPE" in result.to_markdown()


def test_load_check_says_when_the_machine_was_too_busy() -> None:
    quiet = LoadCheck(0.1, 2.0, 0.02, 0.05, 0.0)
    assert not quiet.too_busy and quiet.text().startswith("machine quiet enough")
    busy = LoadCheck(1.9, 2.5, 0.80, 0.05, 0.08)
    assert busy.too_busy and busy.text().startswith("TOO BUSY TO TELL")
    assert "80% of the CPUs busy before" in busy.text() and "steal" in busy.text()
    result = result_of(typical())
    result.load = busy
    data = json.loads(json.dumps(result.to_dict()))
    assert data["load"]["too_busy"] and data["verdict"]["too_busy"]
    again = BenchResult.from_dict(data)
    assert again.load is not None and again.load.others_before == pytest.approx(0.80)
    assert "TOO BUSY TO TELL" in again.to_text()


def test_a_real_tiny_run_carries_the_verdict_in_its_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    methods = ",".join(poolkit.start_methods()[:2])
    status = main([
        "bench", "--no-progress", "--methods", methods, "--workloads", "cold",
        "--repeat", "3", "--quick", "--json", str(out),
    ])  # fmt: skip
    assert status == 0
    data = json.loads(out.read_text())
    verdict = data["verdict"]
    assert [g["name"] for g in verdict["groups"]] == ["start-up and respawn"]
    rows = verdict["groups"][0]["rows"]
    assert [row["metric"] for row in rows] == ["first_ms", "ready_ms"]
    assert all(len(row["methods"]["medians"]) == 2 for row in rows)
    assert verdict["method"] in poolkit.start_methods() and verdict["advice"]
    assert set(data["load"]) >= {"others_before", "others_after", "steal", "too_busy"}


# ---------------------------------------------------------------- --target


def target_of(
    serial: list[float],
    timings: dict[tuple[str, int], list[float]],
    items: int = 1000,
    startup: float = 0.07,
    probe: Any = None,
) -> TargetResult:
    """A --target result with these repetitions: (method, chunksize) -> warm seconds."""
    result = TargetResult("mod:fn", {}, workers=2, repeat=len(serial), items=items)
    result.serial = summarize(serial)
    result.serial_rounds = dict(enumerate(serial))
    for (method, size), samples in timings.items():
        config = ("poolkit", method, size)
        result.timings[config] = summarize(samples)
        result.startup[config] = summarize([startup] * len(samples))
        result.rounds[config] = dict(enumerate(samples))
    result.probe = probe or {"pickle_s": 2e-6, "pickle_bytes": 40, "threads": 1}
    return result


def test_target_answer_with_a_sure_chunksize_and_a_speedup_range() -> None:
    result = target_of(
        serial=[1.0, 1.02, 0.98],
        timings={
            ("forkserver", 1): [0.9, 0.92, 0.91], ("forkserver", 16): [0.52, 0.53, 0.51],
            # spawn's median is a little better, within the noise: a tie
            ("spawn", 1): [0.9, 0.93, 0.92], ("spawn", 16): [0.53, 0.50, 0.51],
        },
    )  # fmt: skip
    answer = result.answer()
    assert answer.methods is not None and answer.methods.best == "spawn"
    assert answer.method == "forkserver"  # tied with spawn: poolkit's default decides
    assert answer.chunksize == 16 and answer.chunksizes is not None
    assert answer.chunksizes.winner == "16"
    assert answer.beats_serial and answer.speedup == pytest.approx(1 / 0.52, rel=0.03)
    low, high = answer.speedup_range
    assert low < answer.speedup < high
    assert answer.startup_s == pytest.approx(0.07)
    text = result.verdict()
    assert "tied with spawn by the rule; chosen as safe in any program" in text
    assert "chunksize: 16, sure by the rule" in text
    assert "pool start-up (forkserver): 70.0 ms" in text and "warm throughput" in text
    assert "NOTHING BEATS SERIAL" not in text
    assert result.best == ("poolkit", "forkserver", 16)
    assert result.to_dict()["verdict"]["chunksize"] == 16


def test_target_that_nothing_beats_says_why() -> None:
    result = target_of(
        serial=[0.0002, 0.00021, 0.00019],
        timings={("forkserver", 1): [0.09, 0.1, 0.11], ("forkserver", 250): [0.003, 0.004, 0.003]},
        items=2000,
    )
    answer = result.answer()
    assert not answer.beats_serial
    text = result.verdict()
    assert "NOTHING BEATS SERIAL here: run the function in a plain loop." in text
    assert "shorter than what a pool adds to each call" in text
    assert "pickling its arguments and result (40 bytes)" in text
    assert "the whole serial loop (200 us) is shorter than starting a pool (70.0 ms)" in text


def test_target_with_tied_chunksizes_and_a_threaded_import() -> None:
    result = target_of(
        serial=[1.0, 1.0, 1.0],
        timings={("fork", 1): [0.6, 0.5, 0.55], ("fork", 8): [0.52, 0.58, 0.54]},
        probe={"threads": 3, "thread_names": ["MainThread", "worker"]},
    )
    answer = result.answer()
    assert answer.chunksizes is not None and answer.chunksizes.winner is None
    text = result.verdict()
    assert "is tied: it does not matter here" in text
    assert "leaves 3 threads running" in text and "prefer forkserver or spawn" in text


# ---------------------------------------------------------------- progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_prints_lines_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    show = progress_printer(True)
    show("[1/2] cold start: 0 s elapsed, ~3 s left")
    show("[2/2] memory: 1 s elapsed, ~1 s left")
    show("")
    written = terminal.getvalue()
    assert "\n" not in written and written.count("\r\x1b[K") == 3
    assert "~1 s left" in written
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    show = progress_printer(True)
    show("[1/2] a")
    show("")
    show("[2/2] b")
    assert log.getvalue() == "[1/2] a\n[2/2] b\n"


def test_time_left_learns_from_the_jobs_done() -> None:
    eta = Eta(
        [(("cold", "fork"), "cold"), (("memory", "fork"), "memory"), (("cold", "fork"), "cold")]
    )
    assert eta.left(0) == pytest.approx(3 * 0.6)  # nothing known yet: the first guess
    eta.took[("cold", "fork")] = [2.0]
    eta.kind_took["cold"] = [2.0]
    assert eta.left(1) == pytest.approx(2.0 + 2.0)  # memory: the mean so far; cold: its own
    assert "[2/3] memory: " in eta.line(1, "memory") and "~4 s left" in eta.line(1, "memory")


@pytest.fixture(scope="module")
def fonts_loaded() -> None:
    """matplotlib keeps its font files open in a process-wide cache once it draws text: open
    them before the test's descriptor check starts (a module fixture runs first)."""
    pytest.importorskip("matplotlib")
    from poolkit.bench._plot import load_pyplot

    plt = load_pyplot()
    figure, ax = plt.subplots()
    ax.set_title("warm-up")
    figure.canvas.draw()
    plt.close(figure)


def test_plot_draws_the_verdict_chart_when_matplotlib_is_installed(
    tmp_path: Path, fonts_loaded: None
) -> None:
    from poolkit.bench._plot import plot

    path = tmp_path / "verdict.png"
    plot(result_of(typical()), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = target_of(serial=[1.0, 1.0, 1.0], timings={("spawn", 1): [0.5, 0.6, 0.55]})
    target_path = tmp_path / "target.png"
    plot(target, str(target_path))
    assert target_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_default_run_keeps_to_its_time_budget_with_no_fewer_than_three_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from poolkit.bench import _orchestrate

    monkeypatch.setattr(_orchestrate, "DEFAULT_BUDGET_S", 0.0)  # every round is one too many
    result = poolkit.bench.run(methods=FAST, workloads="cold")
    assert result.repeat == 3 and "stopped after 3 of 5 rounds" in result.note
    assert all(row["n"] == 3 for row in result.rows())
    assert "stopped after 3 of 5 rounds" in result.to_text()
    # An explicit --repeat is kept whatever the time.
    assert poolkit.bench.run(methods=FAST, workloads="cold", repeat=4).repeat == 4


def test_target_whose_pool_looks_faster_but_overlaps_the_loop_says_so() -> None:
    result = target_of(
        serial=[1.0, 0.6, 1.05],  # one fast serial round overlaps the pool's
        timings={("spawn", 1): [0.7, 0.65, 0.72]},
    )
    answer = result.answer()
    assert not answer.beats_serial and answer.speedup is not None and answer.speedup > 1.05
    text = result.verdict()
    assert "NOTHING BEATS SERIAL beyond the noise here: the pool looks faster" in text
    assert "run the function in a plain loop" not in text
    assert "with 3 repetitions on this machine the two overlap" in text
