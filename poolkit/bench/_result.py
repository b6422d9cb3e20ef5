"""``BenchResult``: the numbers of one ``poolkit.bench.run``, as rows, JSON, text or HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from poolkit_bench_runner.catalog import (
    PEER_TITLES,
    WORKLOADS_BY_NAME,
    Metric,
    Workload,
    metric_label,
)

from ._machine import LoadCheck
from ._stats import Stat

if TYPE_CHECKING:
    from ._verdict import Verdict

CellKey = tuple[str, str, str, str]  # workload, metric key, method, implementation


@dataclass
class Cell:
    """One metric of one implementation under one start method, over the repetitions."""

    stat: Optional[Stat] = None
    note: str = ""  #: why there is no number (skipped, failed, pool broken, ...)


@dataclass
class BenchResult:
    """Everything one benchmark run measured, and on what machine.

    ``str(result)`` is the terminal report; in a notebook the result displays as HTML tables.
    :meth:`rows` gives one dict per number, :meth:`to_dict` the whole run as JSON-ready data.
    """

    machine: dict[str, Any]
    methods: list[str]
    impls: list[str]
    workloads: list[str]
    workers: int
    repeat: int
    quick: bool
    cells: dict[CellKey, Cell] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  #: peer -> why it was not measured
    problems: list[str] = field(default_factory=list)  #: errors and leftover processes
    seconds: float = 0.0
    load: Optional[LoadCheck] = None  #: how busy the machine was before, during and after
    note: str = ""  #: how the run differs from its plan (fewer rounds than asked for, ...)

    # ------------------------------------------------------------------ queries

    def metrics(self) -> list[tuple[Workload, Metric]]:
        """The (workload, metric) pairs of this run, in report order."""
        pairs = []
        for name in self.workloads:
            workload = WORKLOADS_BY_NAME[name]
            for metric in workload.metrics:
                if metric.floor_only and "floor" not in self.impls:
                    continue
                pairs.append((workload, metric))
        return pairs

    def label(self, workload: Workload, metric: Metric) -> str:
        """The metric's label with this run's parameters."""
        return metric_label(workload, metric, self.quick)

    def cell(self, workload: str, metric: str, method: str, impl: str = "poolkit") -> Cell:
        """The cell of one number (an empty cell if it was not measured)."""
        return self.cells.get((workload, metric, method, impl), Cell(note="not measured"))

    def value(
        self, workload: str, metric: str, method: str, impl: str = "poolkit"
    ) -> Optional[float]:
        """The median of one number, or None."""
        stat = self.cell(workload, metric, method, impl).stat
        return None if stat is None else stat.median

    def best(
        self, workload: str, metric: str, candidates: list[tuple[str, str]]
    ) -> Optional[tuple[str, str]]:
        """The best of (method, impl) candidates for a metric, or None if none has a number."""
        higher = metric_of(workload, metric).higher_is_better
        scored = [
            (value, candidate)
            for candidate in candidates
            if (value := self.value(workload, metric, *candidate)) is not None
        ]
        if len(scored) < 2:
            return None
        return (max if higher else min)(scored)[1]

    def best_method(self, workload: str, metric: str, impl: str = "poolkit") -> Optional[str]:
        """The start method with the best median for a metric."""
        found = self.best(workload, metric, [(m, impl) for m in self.methods])
        return None if found is None else found[0]

    def ratio(self, workload: str, metric: str, method: str, impl: str) -> Optional[float]:
        """poolkit's median divided by ``impl``'s, same metric and start method."""
        mine = self.value(workload, metric, method, "poolkit")
        theirs = self.value(workload, metric, method, impl)
        if mine is None or not theirs:
            return None
        return mine / theirs

    def verdict(self) -> Verdict:
        """Which start method to use here, and why, by the noise rule (see ``_verdict``)."""
        from ._verdict import build

        return build(self)

    # ------------------------------------------------------------------ export

    def rows(self) -> list[dict[str, Any]]:
        """One dict per number: workload, metric, label, unit, method, impl, median, ... ."""
        rows = []
        for workload, metric in self.metrics():
            for method in self.methods:
                for impl in self.impls:
                    key = (workload.name, metric.key, method, impl)
                    if key not in self.cells:
                        continue
                    cell = self.cells[key]
                    row: dict[str, Any] = {
                        "workload": workload.name,
                        "metric": metric.key,
                        "label": self.label(workload, metric),
                        "unit": metric.unit,
                        "higher_is_better": metric.higher_is_better,
                        "method": method,
                        "impl": impl,
                        "median": None,
                        "min": None,
                        "max": None,
                        "spread_pct": None,
                        "n": 0,
                        "ratio_poolkit_to_impl": None,
                        "note": cell.note,
                    }
                    if cell.stat is not None:
                        row.update(cell.stat.to_dict())
                        del row["samples"]
                    if impl != "poolkit":
                        row["ratio_poolkit_to_impl"] = self.ratio(
                            workload.name, metric.key, method, impl
                        )
                    rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The whole run as JSON-ready data (``from_dict`` reads it back)."""
        return {
            "format": "poolkit-bench/1",
            "machine": self.machine,
            "config": {
                "methods": self.methods,
                "impls": self.impls,
                "workloads": self.workloads,
                "workers": self.workers,
                "repeat": self.repeat,
                "quick": self.quick,
                "seconds": self.seconds,
                "note": self.note,
            },
            "cells": [
                {
                    "workload": w,
                    "metric": m,
                    "method": method,
                    "impl": impl,
                    "stat": None if cell.stat is None else cell.stat.to_dict(),
                    "note": cell.note,
                }
                for (w, m, method, impl), cell in self.cells.items()
            ],
            "rows": self.rows(),
            "skipped": self.skipped,
            "problems": self.problems,
            "load": None if self.load is None else self.load.to_dict(),
            "verdict": self.verdict().to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """Rebuild a result saved with ``to_dict`` (e.g. by ``--json``)."""
        config = data["config"]
        result = cls(
            machine=data.get("machine", {}),
            methods=list(config["methods"]),
            impls=list(config["impls"]),
            workloads=list(config["workloads"]),
            workers=int(config["workers"]),
            repeat=int(config["repeat"]),
            quick=bool(config["quick"]),
            skipped=dict(data.get("skipped", {})),
            problems=list(data.get("problems", [])),
            seconds=float(config.get("seconds", 0.0)),
            note=str(config.get("note", "")),
            load=LoadCheck.from_dict(data["load"]) if data.get("load") else None,
        )
        for entry in data.get("cells", []):
            stat = None if entry["stat"] is None else Stat.from_dict(entry["stat"])
            key = (entry["workload"], entry["metric"], entry["method"], entry["impl"])
            result.cells[key] = Cell(stat, entry.get("note", ""))
        return result

    def to_json(self, path: str) -> None:
        """Write :meth:`to_dict` to a file."""
        with open(path, "w") as out:
            json.dump(self.to_dict(), out, indent=1)
            out.write("\n")

    def to_text(self) -> str:
        """The terminal report."""
        from ._render import render_text

        return render_text(self)

    def to_markdown(self, verdict: bool = True) -> str:
        """The report as Markdown tables (and the verdict, unless ``verdict=False``)."""
        from ._render import render_markdown

        return render_markdown(self, verdict=verdict)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        from ._render import render_html

        return render_html(self)


def metric_of(workload: str, key: str) -> Metric:
    """The catalog's metric ``key`` of ``workload``."""
    for metric in WORKLOADS_BY_NAME[workload].metrics:
        if metric.key == key:
            return metric
    raise KeyError(f"{workload} has no metric {key!r}")


def impl_title(impl: str) -> str:
    """How an implementation is named in reports."""
    return PEER_TITLES.get(impl, impl)
