"""The answer of ``--target``: what to use for the user's function, and how sure that is.

From the repetitions of every (pool, start method, chunksize) and of the serial loop:

- the start method: each method at its best chunksize, ranked by the noise rule; among methods
  the rule cannot separate, the one that is safe in any program (forkserver, then spawn);
- the chunksize for that method, ranked the same way: one winner, or the tied ones;
- the pool's start-up (construct -> one call per worker done) apart from its warm throughput;
- the speed-up over serial, warm (a pool kept for many maps) and with the start-up (a pool made
  for this one map), each with its range over the rounds;
- when nothing beats serial by the rule, why: the call is shorter than what a pool adds to it
  (pickling and a round trip), or the workers did not run in parallel.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ._noise import MIN_GAP, MIN_REPEATS, RULE, Ranking, compare, rank
from ._result import impl_title
from ._stats import format_seconds, format_value

if TYPE_CHECKING:
    from ._target import Config, TargetResult

SAFE_ORDER = ("forkserver", "spawn", "fork")


@dataclass
class TargetVerdict:
    """The answer, as data and as lines."""

    method: Optional[str] = None
    chunksize: Optional[int] = None
    methods: Optional[Ranking] = None
    chunksizes: Optional[Ranking] = None
    startup_s: Optional[float] = None
    startup_range: tuple[float, float] = (0.0, 0.0)
    warm_calls_per_s: Optional[float] = None
    warm_range: tuple[float, float] = (0.0, 0.0)
    speedup: Optional[float] = None
    speedup_range: tuple[float, float] = (0.0, 0.0)
    cold_speedup: Optional[float] = None
    beats_serial: bool = False  #: some pool configuration beats the serial loop by the rule
    chosen_beats_serial: Optional[bool] = None  #: the recommended one does
    why_not: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load: str = ""

    def lines(self) -> list[str]:
        """The answer, a few lines."""
        load = [f"  {self.load}"] if self.load else []
        return [f"answer ({RULE}):", *(f"  {line}" for line in self._body()), *load]

    def _body(self) -> list[str]:
        if self.method is None or self.methods is None:
            return ["no start method ran the function to the end", *self.notes]
        out = [f"start method: {self._method_text()}"]
        if self.chunksizes is not None:
            out.append(f"chunksize: {self._chunksize_text()}")
        low, high = self.startup_range
        if self.startup_s is not None:
            out.append(
                f"pool start-up ({self.method}): {format_seconds(self.startup_s)} "
                f"(range {format_seconds(low)}-{format_seconds(high)}): construct -> one call "
                f"per worker done; paid once per pool"
            )
        if self.warm_calls_per_s is not None:
            low, high = self.warm_range
            out.append(
                f"warm throughput: {format_value(self.warm_calls_per_s)} calls/s "
                f"(range {format_value(low)}-{format_value(high)})"
            )
        if self.speedup is not None:
            low, high = self.speedup_range
            text = (
                f"speed-up over serial, warm pool: {self.speedup:.2f}x (range {low:.2f}-{high:.2f})"
            )
            if self.chosen_beats_serial is not None:
                text += (
                    ", faster than the loop by the rule"
                    if self.chosen_beats_serial
                    else ", not beyond the noise"
                )
            if self.cold_speedup is not None:
                text += f"; {self.cold_speedup:.2f}x counting the start-up (a pool for one map)"
            out.append(text)
        if not self.beats_serial and self._looks_faster():
            out.append(
                "NOTHING BEATS SERIAL beyond the noise here: the pool looks faster, but its "
                "repetitions overlap the loop's."
            )
        elif not self.beats_serial:
            out.append("NOTHING BEATS SERIAL here: run the function in a plain loop.")
        if not self.beats_serial:
            out.extend(f"why: {line}" for line in self.why_not)
        out.extend(self.notes)
        return out

    def _looks_faster(self) -> bool:
        """The warm pool's median speed-up is past the rule's gap, yet the rule is not met."""
        return self.speedup is not None and self.speedup >= 1 + MIN_GAP

    def _method_text(self) -> str:
        assert self.methods is not None and self.method is not None
        ranking = self.methods
        if ranking.winner == self.method:
            closest = ranking.measured[1]
            return f"{self.method} (beats every other: {ranking.against[closest].why} vs {closest})"
        if len(ranking.measured) < 2:
            return f"{self.method} (the only one measured)"
        tied = [m for m in ranking.leaders if m != self.method]
        text = f"{self.method} (tied with {', '.join(tied)} by the rule"
        if self.method in ("forkserver", "spawn"):
            text += "; chosen as safe in any program"
        behind = [m for m in ranking.measured if m not in ranking.leaders]
        if behind:
            text += f"; {', '.join(behind)} slower"
        return text + ")"

    def _chunksize_text(self) -> str:
        assert self.chunksizes is not None
        ranking = self.chunksizes
        if len(ranking.measured) < 2:
            return f"{self.chunksize} (the only one tried)"
        if ranking.winner is not None:
            closest = ranking.measured[1]
            return (
                f"{self.chunksize}, sure by the rule ({ranking.against[closest].why} vs "
                f"chunksize={closest})"
            )
        if len(ranking.leaders) == len(ranking.measured):
            return (
                f"{self.chunksize} has the best median, but every chunksize tried "
                f"({', '.join(ranking.measured)}) is tied: it does not matter here"
            )
        behind = [size for size in ranking.measured if size not in ranking.leaders]
        return (
            f"{self.chunksize} has the best median; tied with "
            f"{', '.join(s for s in ranking.leaders if s != str(self.chunksize))}; "
            f"{', '.join(behind)} slower by the rule"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "rule": RULE,
            "method": self.method,
            "chunksize": self.chunksize,
            "methods": None if self.methods is None else self.methods.to_dict(),
            "chunksizes": None if self.chunksizes is None else self.chunksizes.to_dict(),
            "startup_s": self.startup_s,
            "startup_range": list(self.startup_range),
            "warm_calls_per_s": self.warm_calls_per_s,
            "warm_range": list(self.warm_range),
            "speedup": self.speedup,
            "speedup_range": list(self.speedup_range),
            "speedup_with_startup": self.cold_speedup,
            "beats_serial": self.beats_serial,
            "chosen_beats_serial": self.chosen_beats_serial,
            "why_not": self.why_not,
            "notes": self.notes,
            "lines": self.lines(),
        }


def _samples(result: TargetResult, config: Config) -> list[float]:
    stat = result.timings.get(config)
    return [] if stat is None else list(stat.samples)


def _best_chunksize(result: TargetResult, impl: str, method: str) -> Optional[Config]:
    measured = [
        (stat.median, config)
        for config, stat in result.timings.items()
        if stat is not None and config[0] == impl and config[1] == method
    ]
    return min(measured)[1] if measured else None


def build(result: TargetResult) -> TargetVerdict:
    """The answer for ``result`` (which did not fail)."""
    verdict = TargetVerdict()
    if result.load is not None:
        verdict.load = result.load.text()
    methods = list(dict.fromkeys(config[1] for config in result.timings))
    best_of: dict[str, Config] = {}
    for m in methods:
        config = _best_chunksize(result, "poolkit", m)
        if config is not None:
            best_of[m] = config
    if not best_of:
        return verdict
    ranking = rank({m: _samples(result, config) for m, config in best_of.items()}, False)
    verdict.methods = ranking
    order = [m for m in SAFE_ORDER if m in ranking.leaders] or ranking.leaders
    method = ranking.winner or order[0]
    verdict.method = method
    sizes = {
        str(config[2]): _samples(result, config)
        for config in result.timings
        if config[0] == "poolkit" and config[1] == method
    }
    verdict.chunksizes = rank(sizes, False)
    chosen = best_of[method]
    verdict.chunksize = chosen[2]
    stat = result.timings[chosen]
    assert stat is not None
    startups = [
        s for config, st in result.startup.items() if config[:2] == ("poolkit", method) and st
        for s in st.samples
    ]  # fmt: skip
    if startups:
        verdict.startup_s = statistics.median(startups)
        verdict.startup_range = (min(startups), max(startups))
    rates = [result.items / s for s in stat.samples if s > 0]
    if rates:
        verdict.warm_calls_per_s = result.items / stat.median
        verdict.warm_range = (min(rates), max(rates))
    speedups = result.speedups(chosen)
    if speedups and result.serial is not None:
        verdict.speedup = statistics.median(speedups)
        verdict.speedup_range = (min(speedups), max(speedups))
        if verdict.startup_s is not None:
            verdict.cold_speedup = result.serial.median / (stat.median + verdict.startup_s)
    serial = [] if result.serial is None else list(result.serial.samples)
    if serial:
        verdict.chosen_beats_serial = compare(list(stat.samples), serial, False).beats
    verdict.beats_serial = any(
        compare(_samples(result, config), serial, False).beats
        for config in result.timings
        if config[0] == "poolkit"
    )
    if not verdict.beats_serial:
        verdict.why_not = _why_not(result, verdict)
    elif verdict.cold_speedup is not None and verdict.cold_speedup < 1:
        verdict.notes.append(
            "a warm pool beats serial, but its start-up costs more than it saves in one map: "
            "keep one pool for many maps (a pool made for each map is slower than a loop)"
        )
    if result.repeat < MIN_REPEATS:
        verdict.notes.append(
            f"{result.repeat} repetition(s): too few for the rule to be sure of anything; "
            f"use --repeat {MIN_REPEATS} or more"
        )
    verdict.notes.extend(_safety(result, method))
    verdict.notes.extend(_peers(result, method))
    return verdict


def _why_not(result: TargetResult, verdict: TargetVerdict) -> list[str]:
    """Why no pool beat the serial loop, from what was measured."""
    reasons = []
    if result.serial is None or not result.items:
        return ["the serial loop was not measured"]
    per_call = result.serial.median / result.items
    pickle_s = result.probe.get("pickle_s")
    pickle_bytes = result.probe.get("pickle_bytes")
    one_by_one = _best_at_chunksize_1(result)
    overhead = None
    if one_by_one is not None:
        # Each worker ran items/workers calls one message at a time: its share of the time,
        # per call, less the call itself, is what the pool added to each call.
        overhead = max(0.0, one_by_one * result.workers / result.items - per_call)
    pickled = (
        f"; pickling its arguments and result ({pickle_bytes:,} bytes) alone takes "
        f"{format_seconds(pickle_s)}"
        if pickle_s is not None and pickle_bytes is not None
        else ""
    )
    if overhead is not None and per_call < overhead:
        reasons.append(
            f"one call takes {format_seconds(per_call)}, shorter than what a pool adds to each "
            f"call (about {format_seconds(overhead)}: pickling, a round trip to a worker and "
            f"back){pickled}. Give each call more work (a batch of items per call), or keep "
            f"it serial"
        )
    elif verdict._looks_faster():
        reasons.append(
            f"a warm pool's median is {verdict.speedup:.2f}x the loop's speed, but with "
            f"{result.repeat} repetitions on this machine the two overlap: run again with "
            f"--repeat 5 (or more) on a quieter machine to be sure"
        )
    elif result.workers < 2:
        reasons.append(f"the pool has {result.workers} worker: nothing runs in parallel")
    else:
        reasons.append(
            f"one call takes {format_seconds(per_call)}, longer than a pool's cost per call"
            f"{pickled}, yet {result.workers} workers were not faster than one loop: the calls "
            f"do not run in parallel here (they may wait on one shared resource, hold a lock, "
            f"or already use every core, as numpy's BLAS threads do)"
        )
    if verdict.startup_s is not None and result.serial.median < verdict.startup_s:
        reasons.append(
            f"the whole serial loop ({format_seconds(result.serial.median)}) is shorter than "
            f"starting a pool ({format_seconds(verdict.startup_s)})"
        )
    return reasons


def _best_at_chunksize_1(result: TargetResult) -> Optional[float]:
    medians = [
        stat.median
        for config, stat in result.timings.items()
        if stat is not None and config[0] == "poolkit" and config[2] == 1
    ]
    return min(medians) if medians else None


def _safety(result: TargetResult, method: str) -> list[str]:
    threads = result.probe.get("threads")
    if not isinstance(threads, int) or threads <= 1:
        return []
    names = ", ".join(result.probe.get("thread_names") or [])
    text = (
        f"safety: importing {result.target.partition(':')[0]} leaves {threads} threads "
        f"running in the process ({names}): a fork start method would fork a threaded parent, "
        f"which can deadlock a worker"
    )
    if method == "fork":
        text += "; prefer forkserver or spawn unless you know those threads hold no lock"
    return [text]


def _peers(result: TargetResult, method: str) -> list[str]:
    """poolkit against the peers under the chosen method, each at its best chunksize."""
    impls = list(dict.fromkeys(config[0] for config in result.timings))
    if len(impls) < 2:
        return []
    best = {impl: _best_chunksize(result, impl, method) for impl in impls}
    ranking = rank(
        {impl: _samples(result, config) for impl, config in best.items() if config}, False
    )
    if "poolkit" not in ranking.measured:
        return []
    if ranking.winner == "poolkit":
        return ["vs peers: poolkit is the fastest pool for it, by the rule"]
    if "poolkit" in ranking.leaders:
        tied = [impl_title(i) for i in ranking.leaders if i != "poolkit"]
        return [f"vs peers: poolkit tied with {', '.join(tied) or 'nobody'} by the rule"]
    leader = ranking.best or ""
    return [
        f"vs peers: {impl_title(leader)} is faster ({ranking.against['poolkit'].why}) under "
        f"{method}"
    ]
