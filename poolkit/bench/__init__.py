"""``poolkit.bench``: which start method is fastest for this machine and this function?

The library behind ``python -m poolkit bench``::

    import poolkit.bench
    result = poolkit.bench.run(quick=True, against="stdlib")
    print(result)            # the terminal report; a notebook shows HTML tables
    result.rows()            # one dict per number
    poolkit.bench.run_target("mymodule:work", args=[[1], [2], [3]])

Every number is measured in a fresh Python process (a small runner with JSON on stdout),
repeated, with implementations interleaved and warm-up excluded; results carry the machine.

Attributes are loaded lazily, so that worker processes which import the benchmark's task
functions do not import the whole package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._orchestrate import run
    from ._result import BenchResult
    from ._target import TargetResult, run_target

__all__ = ["BenchResult", "TargetResult", "run", "run_target"]

_LAZY = {
    "run": "._orchestrate",
    "BenchResult": "._result",
    "run_target": "._target",
    "TargetResult": "._target",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
