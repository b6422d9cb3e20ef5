"""``--plot FILE.png``: bar charts of a benchmark result (needs matplotlib: ``poolkit[plot]``)."""

from __future__ import annotations

import importlib
import statistics
from typing import TYPE_CHECKING, Any, Union

from ._result import BenchResult, impl_title

if TYPE_CHECKING:
    from ._target import TargetResult

MISSING = (
    "--plot needs matplotlib, which is not installed: pip install 'poolkit[plot]' "
    "(or pip install matplotlib)"
)


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def load_pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend.

    Raises:
        PlotUnavailable: matplotlib is not installed (the message says how to install it).
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(MISSING) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plot(result: Union[BenchResult, TargetResult], path: str) -> None:
    """Write a PNG chart of ``result`` to ``path``.

    Raises:
        PlotUnavailable: matplotlib is not installed.
    """
    plt = load_pyplot()
    if isinstance(result, BenchResult):
        figure = _bench_figure(plt, result)
    else:
        figure = _target_figure(plt, result)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _bench_figure(plt: Any, result: BenchResult) -> Any:
    """The verdict's chart: per group, its first row, start methods side by side (one bar per
    pool with peers), each bar the median with its range over the repetitions."""
    from ._verdict import build, samples

    verdict = build(result)
    groups = verdict.groups
    columns = min(3, max(1, len(groups)))
    rows = -(-len(groups) // columns) if groups else 1
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    pools = [impl for impl in result.impls if impl != "floor"] or ["poolkit"]
    width = 0.8 / len(pools)
    for index, group in enumerate(groups):
        ax = axes[index // columns][index % columns]
        row = group.rows[0]
        for k, impl in enumerate(pools):
            medians, low, high = [], [], []
            for method in result.methods:
                values = samples(result, row.workload, row.metric, method, impl)
                mid = statistics.median(values) if values else 0.0
                medians.append(mid)
                low.append(mid - min(values) if values else 0.0)
                high.append(max(values) - mid if values else 0.0)
            positions = [i + (k - (len(pools) - 1) / 2) * width for i in range(len(medians))]
            ax.bar(positions, medians, width, yerr=[low, high], capsize=3, label=impl_title(impl))
        ax.set_xticks(range(len(result.methods)))
        ax.set_xticklabels(result.methods)
        better = "higher" if row.higher_is_better else "lower"
        ax.set_title(f"{group.name}: {group.summary}\n{row.label}", fontsize=7)
        ax.set_ylabel(f"{row.unit} ({better} is better)", fontsize=7)
        ax.tick_params(labelsize=7)
    for index in range(len(groups), rows * columns):
        axes[index // columns][index % columns].axis("off")
    top = 0.95
    if len(pools) > 1:
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="upper center", ncol=len(pools), fontsize=8)
        top = 0.90
    figure.suptitle(
        f"verdict by group (bars: median; whiskers: range over {result.repeat} repetitions)",
        fontsize=9,
        y=top + 0.03,
    )
    figure.tight_layout(rect=(0, 0, 1, top))
    return figure


def _target_figure(plt: Any, result: TargetResult) -> Any:
    rows = [r for r in result.rows() if r["seconds"] is not None]
    figure, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    labels = [f"{impl_title(r['impl'])} {r['method']} c={r['chunksize']}" for r in rows]
    low, high = [], []
    for r in rows:
        stat = result.timings.get((r["impl"], r["method"], r["chunksize"]))
        low.append(r["seconds"] - stat.low if stat else 0.0)
        high.append(stat.high - r["seconds"] if stat else 0.0)
    ax.barh(range(len(rows)), [r["seconds"] for r in rows], xerr=[low, high], capsize=3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    if result.serial:
        ax.axvline(result.serial.median, color="grey", linestyle="--", label="serial")
        ax.legend(fontsize=8)
    ax.set_xlabel("seconds for all calls on a warm pool; whiskers: range (lower is better)")
    ax.set_title(result.target, fontsize=9)
    figure.tight_layout()
    return figure
