"""``--target module:function``: which start method and chunksize run the user's function fastest.

First a probe, in a fresh process: import the function, read its inputs, call it once. An import
error, a function that raises or one that hangs (``timeout``) ends the run there with a clear
report. Then, interleaved and repeated, each (start method, chunksize[, peer]) runs every input
through ``map`` in a fresh process, next to a serial run of the same inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from ._launch import launch
from ._machine import LoadCheck, describe, usable_cpus
from ._orchestrate import (
    TARGET_REPEAT,
    check_positive,
    resolve_methods,
    resolve_peers,
    rotate,
)
from ._progress import Eta, Progress, progress_printer
from ._result import impl_title
from ._stats import Stat, summarize
from ._target_failure import describe_failure, record_failure

if TYPE_CHECKING:
    from ._target_verdict import TargetVerdict

DEFAULT_COUNT = 100
DEFAULT_TARGET_TIMEOUT = 60.0
Config = tuple[str, str, int]  # impl, method, chunksize


def normalize_args(args: Any, count: Optional[int] = None) -> list[list[Any]]:
    """The calls described by ``args``, as a list of argument lists.

    A list of lists is a list of argument tuples (``[[1, 2], [3, 4]]``: ``f(1, 2)``,
    ``f(3, 4)``); a list of anything else is one argument per call (``[1, 2]``: ``f(1)``,
    ``f(2)``); any other value is one argument, repeated ``count`` times (default 100).
    ``None`` means calls without arguments, ``count`` times.

    Raises:
        ValueError: the list mixes argument tuples and plain values, or is empty, or
            ``count`` is given with a list.
    """
    if isinstance(args, (list, tuple)):
        if count is not None:
            raise ValueError("a count only applies to a single repeated value, not to a list")
        if not args:
            raise ValueError("the list of arguments is empty: the function would never run")
        nested = [isinstance(a, (list, tuple)) for a in args]
        if all(nested):
            return [list(a) for a in args]
        if any(nested):
            raise ValueError(
                "the arguments mix argument lists and plain values; give either a list of "
                "argument lists ([[1, 2], [3, 4]]) or a list of single arguments ([1, 2])"
            )
        return [[a] for a in args]
    total = DEFAULT_COUNT if count is None else count
    if total < 1:
        raise ValueError(f"count must be at least 1, got {total}")
    return [[] if args is None else [args] for _ in range(total)]


def default_chunksizes(items: int, workers: int) -> list[int]:
    """1, about 16 chunks per worker, and about 4 chunks per worker."""
    sizes = {1, max(1, math.ceil(items / (16 * workers))), max(1, math.ceil(items / (4 * workers)))}
    return sorted(sizes)


@dataclass
class TargetResult:
    """The outcome of benchmarking one user function.

    ``failure`` is set (with ``stage``: import, inputs, call, timeout, pool) when the function
    could not be measured; otherwise ``timings`` maps (impl, method, chunksize) to seconds for
    all inputs, and ``best`` names the fastest combination.
    """

    target: str
    machine: dict[str, Any]
    workers: int
    repeat: int
    items: int = 0
    first_call: str = ""
    serial: Optional[Stat] = None
    timings: dict[Config, Optional[Stat]] = field(default_factory=dict)
    errors: dict[Config, str] = field(default_factory=dict)
    failure: str = ""
    stage: str = ""
    details: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    #: (impl, method, chunksize) -> pool start-up (construct -> first map of one call per
    #: worker done), seconds, over the repetitions
    startup: dict[Config, Optional[Stat]] = field(default_factory=dict)
    #: What the probe saw: one call's time, its pickling cost, the threads after import.
    probe: dict[str, Any] = field(default_factory=dict)
    #: Round -> serial seconds, and (config -> round -> warm seconds): pairs for speed-ups.
    serial_rounds: dict[int, float] = field(default_factory=dict)
    rounds: dict[Config, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0
    load: Optional[LoadCheck] = None

    @property
    def ok(self) -> bool:
        """At least one combination was measured."""
        return not self.failure and any(s is not None for s in self.timings.values())

    @property
    def best(self) -> Optional[Config]:
        """The (impl, method, chunksize) of poolkit the answer recommends, or None."""
        if self.failure:
            return None
        answer = self.answer()
        if answer.method is None or answer.chunksize is None:
            return None
        return ("poolkit", answer.method, answer.chunksize)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per combination: impl, method, chunksize, seconds, calls/s, speed-up."""
        rows = []
        serial = self.serial.median if self.serial else None
        for (impl, method, chunksize), stat in self.timings.items():
            row: dict[str, Any] = {
                "impl": impl,
                "method": method,
                "chunksize": chunksize,
                "seconds": None,
                "spread_pct": None,
                "calls_per_s": None,
                "speedup_vs_serial": None,
                "speedup_low": None,
                "speedup_high": None,
                "startup_s": None,
                "error": self.errors.get((impl, method, chunksize), ""),
            }
            startup = self.startup.get((impl, method, chunksize))
            if startup is not None:
                row["startup_s"] = startup.median
            speedups = self.speedups((impl, method, chunksize))
            if speedups:
                row.update(speedup_low=min(speedups), speedup_high=max(speedups))
            if stat is not None:
                row.update(
                    seconds=stat.median,
                    spread_pct=stat.spread_pct,
                    calls_per_s=self.items / stat.median if stat.median else None,
                    # The median of the per-round ratios (a serial loop and this map ran in the
                    # same round), as the answer gives it; the ratio of medians without pairs.
                    speedup_vs_serial=statistics.median(speedups)
                    if speedups
                    else (serial / stat.median if serial and stat.median else None),
                )
            rows.append(row)
        return rows

    def speedups(self, config: Config) -> list[float]:
        """Serial time over this config's warm time, one per round that measured both."""
        return [
            self.serial_rounds[r] / seconds
            for r, seconds in self.rounds.get(config, {}).items()
            if r in self.serial_rounds and seconds > 0
        ]

    def answer(self) -> TargetVerdict:
        """What to use for this function, and how sure that is (see ``_target_verdict``)."""
        from ._target_verdict import build

        return build(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        best = self.best
        return {
            "format": "poolkit-bench-target/1",
            "target": self.target,
            "machine": self.machine,
            "workers": self.workers,
            "repeat": self.repeat,
            "items": self.items,
            "first_call": self.first_call,
            "serial": None if self.serial is None else self.serial.to_dict(),
            "rows": self.rows(),
            "best": None
            if best is None
            else {"impl": best[0], "method": best[1], "chunksize": best[2]},
            "failure": self.failure,
            "stage": self.stage,
            "details": self.details,
            "skipped": self.skipped,
            "probe": self.probe,
            "seconds": self.seconds,
            "load": None if self.load is None else self.load.to_dict(),
            "verdict": None if self.failure else self.answer().to_dict(),
        }

    def verdict(self) -> str:
        """The answer in lines: start-up, warm throughput, chunksize, speed-up; or the failure."""
        if self.failure:
            return f"could not benchmark {self.target} ({self.stage}): {self.failure}"
        return "\n".join(self.answer().lines())

    def to_text(self) -> str:
        """The terminal report."""
        from ._render_target import render_target_text

        return render_target_text(self)

    def to_markdown(self) -> str:
        """The report as Markdown."""
        from ._render_target import render_target_markdown

        return render_target_markdown(self)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        from ._render_target import render_target_html

        return render_target_html(self)


def run_target(
    target: str,
    *,
    args: Any = None,
    inputs: Optional[str] = None,
    star: bool = False,
    count: Optional[int] = None,
    methods: Union[str, list[str], None] = None,
    workers: Optional[int] = None,
    chunksizes: Union[str, list[int], None] = None,
    repeat: Optional[int] = None,
    against: Union[str, list[str], None] = None,
    timeout: float = DEFAULT_TARGET_TIMEOUT,
    progress: Progress = False,
) -> TargetResult:
    """Benchmark ``target`` ("module:function") under each start method and chunksize.

    Args:
        target: the function, as ``"package.module:function"``; importable from the current
            directory or ``sys.path``.
        args: JSON-like data: see :func:`normalize_args`. Exclusive with ``inputs``.
        inputs: ``"module:name"`` of a module-level iterable (or a function returning one);
            each item is one argument, or an argument tuple with ``star=True``.
        count: how many calls for a single repeated ``args`` value (or for no arguments).
        methods, workers, repeat, against, progress: as for :func:`poolkit.bench.run`.
        chunksizes: chunksizes to try (default: 1, n/(16*workers), n/(4*workers)).
        timeout: seconds each fresh process may take (the probe's single call included).

    Returns:
        A :class:`TargetResult`; import errors, exceptions and hangs are reported in it
        (``result.failure``), never raised.

    Raises:
        ValueError, TypeError: an argument is invalid.
    """
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"target must look like 'module:function', got {target!r}")
    if args is not None and inputs is not None:
        raise ValueError("give the inputs with args or with inputs, not both")
    if inputs is not None and ":" not in inputs:
        raise ValueError(f"inputs must look like 'module:name', got {inputs!r}")
    check_positive("workers", workers)
    check_positive("repeat", repeat)
    check_positive("count", count)
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    chosen_methods = resolve_methods(methods)
    peers, skipped = resolve_peers(against)
    calls = None if inputs is not None else normalize_args(args, count)
    sizes = _parse_chunksizes(chunksizes)
    pool_size = workers or usable_cpus()
    rounds = repeat or TARGET_REPEAT
    result = TargetResult(target, describe(), pool_size, rounds, skipped=skipped)
    base: dict[str, Any] = {"target": target, "args": calls, "inputs": inputs, "star": star}
    show = progress_printer(progress)

    show(f"probing {target} (import, one call)")
    probe = launch(dict(base, kind="target_probe"), timeout)
    if not probe.ok:
        record_failure(result, probe.data, probe.timed_out, probe.stderr, timeout)
        show("")
        return result
    result.items = int(probe.data["items"])
    result.first_call = str(probe.data.get("result", ""))
    result.probe = {
        key: probe.data.get(key)
        for key in ("first_s", "pickle_s", "pickle_bytes", "pickle_note", "threads", "thread_names")
    }
    sizes = sizes or default_chunksizes(result.items, pool_size)
    impls = ["poolkit", *peers]
    configs = [
        (impl, method, size) for method in chosen_methods for size in sizes for impl in impls
    ]
    samples: dict[Config, list[float]] = {c: [] for c in configs}
    startups: dict[Config, list[float]] = {c: [] for c in configs}
    serial: list[float] = []
    jobs: list[tuple[int, Optional[Config]]] = []
    for round_index in range(rounds):
        jobs.append((round_index, None))  # the serial run
        jobs.extend((round_index, c) for c in rotate(configs, round_index))
    result.load = LoadCheck()
    show("looking at the machine's load (0.5 s)")
    result.load.begin()
    eta = Eta([(config, config and config[:2]) for _, config in jobs])
    for index, (round_index, config) in enumerate(jobs):
        what = (
            "serial"
            if config is None
            else f"{impl_title(config[0])} {config[1]} chunksize={config[2]}"
        )
        show(eta.line(index, f"{target}: {what}"))
        eta.start()
        if config is None:
            outcome = launch(dict(base, kind="target_serial"), timeout)
        else:
            if config in result.errors:
                continue  # failed once: do not wait for it again
            spec = dict(
                base,
                kind="target_map",
                impl=config[0],
                method=config[1],
                chunksize=config[2],
                workers=pool_size,
            )
            outcome = launch(spec, timeout)
        eta.done(index)
        if outcome.ok:
            seconds = float(outcome.data["seconds"])
            if config is None:
                serial.append(seconds)
                result.serial_rounds[round_index] = seconds
            else:
                samples[config].append(seconds)
                startups[config].append(float(outcome.data.get("startup", 0.0)))
                result.rounds.setdefault(config, {})[round_index] = seconds
        elif config is not None:
            result.errors[config] = describe_failure(outcome.data, outcome.timed_out, timeout)
    show("looking at the machine's load again (0.5 s)")
    result.seconds = eta.elapsed()
    result.load.end()
    show("")
    result.serial = summarize(serial)
    result.timings = {config: summarize(values) for config, values in samples.items()}
    result.startup = {config: summarize(values) for config, values in startups.items()}
    return result


def _parse_chunksizes(value: Union[str, list[int], None]) -> list[int]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    sizes = []
    for item in items:
        try:
            size = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"chunksizes must be positive integers, got {item!r}") from None
        if size < 1:
            raise ValueError(f"chunksizes must be positive integers, got {size}")
        sizes.append(size)
    return sorted(set(sizes))
