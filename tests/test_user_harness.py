"""Smoke test of benchmarks/user_harness.py: each implementation measures, in a subprocess.

No figure is checked against another (the machine is shared): only that every measurement ran
in its own process, on the copy of poolkit the harness made, and produced numbers.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    """``benchmarks/user_harness.py``, imported as a module."""
    path = ROOT / "benchmarks" / "user_harness.py"
    spec = importlib.util.spec_from_file_location("user_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def paths(harness: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths: dict[str, Path] = harness.prepare(tmp_path_factory.mktemp("harness"), ROOT)
    return paths


def _condition(harness: ModuleType, **settings: str) -> dict[str, str]:
    return {**harness.DEFAULTS, **settings}


def _numbers(result: dict[str, Any]) -> list[float]:
    assert "error" not in result, result["error"]
    values = list(result["values"].values()) + list(result["parts_ms"].values())
    assert values and all(isinstance(v, float) and math.isfinite(v) for v in values), result
    return values


@pytest.mark.parametrize("impl", ["poolkit", "stdlib", "mppool", "loky"])
def test_each_implementation_measures_a_latency(
    harness: ModuleType, paths: dict[str, Path], start_method: str, impl: str
) -> None:
    cond = _condition(harness, method=start_method, warmup="workers")
    result = harness.measure(impl, "latency", cond, 5, 2, paths)
    if impl == "loky" and start_method == "fork":
        assert result == {"skipped": "loky does not support fork", "load": result["load"]}
        return
    _numbers(result)
    assert result["values"]["median_us"] > 0
    if impl == "poolkit":
        # The harness's compiled copy, never the checkout the test runs from.
        assert result["file"].startswith(str(paths["compiled"])), result["file"]


def test_cold_start_with_a_hog_source_poolkit_and_no_spin(
    harness: ModuleType, paths: dict[str, Path]
) -> None:
    cond = _condition(harness, hogs="1", bytecode="none", spin="off", start="import")
    result = harness.measure("poolkit", "cold", cond, 1, 2, paths)
    _numbers(result)
    assert result["file"].startswith(str(paths["none"])), result["file"]
    assert result["values"]["first_ms"] >= result["parts_ms"]["construct->constructed"]


@pytest.mark.parametrize("workload", ["burst", "map1"])
def test_rates_from_a_busy_parent(
    harness: ModuleType, paths: dict[str, Path], workload: str
) -> None:
    cond = _condition(harness, parent="threads", start="construct", stop="shutdown")
    assert _numbers(harness.measure("poolkit", workload, cond, 20, 2, paths))


@pytest.mark.parametrize("impl", ["poolkit", "stdlib"])
def test_task_functions_from_the_scripts_own_main(
    harness: ModuleType, paths: dict[str, Path], impl: str
) -> None:
    cond = _condition(harness, task="main")  # fork: the stdlib's workers find __main__'s
    assert _numbers(harness.measure(impl, "burst", cond, 20, 2, paths))


def test_a_candidate_checkout_is_measured_from_its_own_copy(
    harness: ModuleType, tmp_path: Path
) -> None:
    paths = harness.prepare(tmp_path, ROOT, ROOT)
    result = harness.measure("candidate", "cold", _condition(harness), 1, 2, paths)
    _numbers(result)
    assert result["file"].startswith(str(paths["candidate-compiled"])), result["file"]


def test_conditions_combine_every_varied_value(harness: ModuleType) -> None:
    conds = harness.conditions({"method": "spawn"}, ["hogs=0,2", "warmup=none,full"])
    assert [(c["hogs"], c["warmup"]) for c in conds] == [
        ("0", "none"),
        ("0", "full"),
        ("2", "none"),
        ("2", "full"),
    ]
    assert {c["method"] for c in conds} == {"spawn"}
    with pytest.raises(SystemExit):
        harness.parse_settings(["spin=sometimes"])
