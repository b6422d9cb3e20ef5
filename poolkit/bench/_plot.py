"""``--plot FILE.png``: bar charts of a benchmark result (needs matplotlib: ``poolkit[plot]``)."""

from __future__ import annotations

import importlib
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
    metrics = [(w, m) for w, m in result.metrics() if not m.floor_only]
    columns = 3
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), squeeze=False)
    impls = result.impls
    width = 0.8 / max(1, len(impls))
    for index, (workload, metric) in enumerate(metrics):
        ax = axes[index // columns][index % columns]
        for k, impl in enumerate(impls):
            values = [
                result.value(workload.name, metric.key, m, impl) or 0.0 for m in result.methods
            ]
            positions = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(result.methods))]
            ax.bar(positions, values, width, label=impl_title(impl))
        ax.set_xticks(range(len(result.methods)))
        ax.set_xticklabels(result.methods)
        better = "higher" if metric.higher_is_better else "lower"
        ax.set_title(f"{result.label(workload, metric)}", fontsize=8)
        ax.set_ylabel(f"{metric.unit} ({better} is better)", fontsize=7)
        ax.tick_params(labelsize=7)
    for index in range(len(metrics), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=len(impls), fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def _target_figure(plt: Any, result: TargetResult) -> Any:
    rows = [r for r in result.rows() if r["seconds"] is not None]
    figure, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    labels = [f"{impl_title(r['impl'])} {r['method']} c={r['chunksize']}" for r in rows]
    ax.barh(range(len(rows)), [r["seconds"] for r in rows])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    if result.serial:
        ax.axvline(result.serial.median, color="grey", linestyle="--", label="serial")
        ax.legend(fontsize=8)
    ax.set_xlabel("seconds for all calls (lower is better)")
    ax.set_title(result.target, fontsize=9)
    figure.tight_layout()
    return figure
