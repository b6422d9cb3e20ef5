"""The noise rule: when one set of repetitions is really better than another, and when not.

A start method (or a pool) *wins* a row only if, against every other candidate of the row:

- both have at least :data:`MIN_REPEATS` fresh-process repetitions;
- a one-sided Mann-Whitney U test says its repetitions are better at ``p <=`` :data:`ALPHA`;
- its median is at least :data:`MIN_GAP` (5%) better.

Otherwise the row is *tied* between the candidates the best one does not beat. The rank test
asks only whether one set of numbers tends to sit on the better side of the other; it assumes
no distribution, which suits repetitions that a busy neighbour skews. With 3 repetitions each,
the smallest p it can give is 1/20 = 0.05: three against three wins only when every repetition
of the winner is better than every repetition of the other. The gap keeps a real but tiny
difference (1% on a steady number such as memory) from being sold as a reason to choose.

Pure Python (no scipy): exact for small samples, a normal approximation beyond.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Optional

#: Fewer fresh-process repetitions than this never name a winner.
MIN_REPEATS = 3
#: The one-sided Mann-Whitney U test's threshold.
ALPHA = 0.05
#: The medians must differ by at least this fraction of the better one.
MIN_GAP = 0.05
#: Above this many ways of splitting tied samples, use the normal approximation: 7 against 7
#: repetitions (3432 splits) are still exact, and a verdict of a hundred rows stays instant.
EXACT_LIMIT = 3500

RULE = (
    f"a row names a winner only if it beats each other candidate in a one-sided "
    f"Mann-Whitney U test at p <= {ALPHA:g} over >= {MIN_REPEATS} fresh-process repetitions "
    f"each, with a median at least {MIN_GAP:.0%} better; otherwise the row is tied"
)


@cache
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many orderings of n1 + n2 distinct values give each U = #(x < y) pairs.

    The largest value is either one of the x (it is below no y: U unchanged) or one of the
    y (it is above every x: U grows by n1).
    """
    if n1 == 0 or n2 == 0:
        return (1,)
    counts = [0] * (n1 * n2 + 1)
    for u, ways in enumerate(_u_counts(n1 - 1, n2)):
        counts[u] += ways
    for u, ways in enumerate(_u_counts(n1, n2 - 1)):
        counts[u + n1] += ways
    return tuple(counts)


def u_statistic(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pairs with x below y, ties counted as half a pair."""
    return sum(1.0 if x < y else 0.5 if x == y else 0.0 for x in xs for y in ys)


def mann_whitney_less(xs: Sequence[float], ys: Sequence[float]) -> float:
    """One-sided p-value of "the xs tend to be smaller than the ys".

    Exact (every split of the pooled values) for small samples, the normal approximation
    with tie and continuity corrections beyond :data:`EXACT_LIMIT` splits.

    Raises:
        ValueError: a sample is empty.
    """
    n1, n2 = len(xs), len(ys)
    if not n1 or not n2:
        raise ValueError("both samples need at least one value")
    observed = u_statistic(xs, ys)
    pooled = [*xs, *ys]
    if len(set(pooled)) == len(pooled):
        counts = _u_counts(n1, n2)
        # U counts pairs, so it is a whole number without ties.
        return sum(counts[math.ceil(observed - 1e-9) :]) / sum(counts)
    if math.comb(n1 + n2, n1) <= EXACT_LIMIT:
        # Ties: the exact distribution of U given these values, over every split.
        total = at_least = 0
        for chosen in itertools.combinations(range(n1 + n2), n1):
            picked = set(chosen)
            first = [pooled[i] for i in chosen]
            second = [pooled[i] for i in range(n1 + n2) if i not in picked]
            total += 1
            at_least += u_statistic(first, second) >= observed - 1e-9
        return at_least / total
    return _normal_p(observed, pooled, n1, n2)


def _normal_p(observed: float, pooled: list[float], n1: int, n2: int) -> float:
    n = n1 + n2
    tie_sizes = [pooled.count(value) for value in set(pooled)]
    tie_term = sum(t**3 - t for t in tie_sizes) / (n * (n - 1))
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return 1.0
    z = (observed - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def gap(better: float, worse: float) -> float:
    """How much worse ``worse`` is than ``better``, as a fraction of the smaller magnitude."""
    low = min(abs(better), abs(worse))
    if low == 0:
        return 0.0 if better == worse else math.inf
    return abs(better - worse) / low


@dataclass(frozen=True)
class Comparison:
    """Whether candidate ``a`` beats candidate ``b`` under the rule, and by how much."""

    beats: bool
    p: Optional[float]  #: None when there were too few repetitions to test
    gap: float  #: the medians' difference, as a fraction
    why: str  #: the reason, in words: "p=0.004, 3.1x", "too few repetitions", ...


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> Comparison:
    """Does ``a`` beat ``b`` by the rule (enough repetitions, p, and gap)?"""
    if not a or not b:
        return Comparison(False, None, 0.0, "not measured")
    med_a, med_b = statistics.median(a), statistics.median(b)
    difference = gap(med_a, med_b)
    if min(len(a), len(b)) < MIN_REPEATS:
        return Comparison(False, None, difference, f"too few repetitions (needs >= {MIN_REPEATS})")
    # "a is better": a's values tend to be the larger (rates) or the smaller (times).
    p = mann_whitney_less(b, a) if higher_is_better else mann_whitney_less(a, b)
    ahead = med_a > med_b if higher_is_better else med_a < med_b
    if p > ALPHA + 1e-12:
        return Comparison(False, p, difference, f"within the noise: p={p:.2g}")
    if not ahead or difference < MIN_GAP:
        return Comparison(False, p, difference, f"medians only {difference:.1%} apart")
    return Comparison(True, p, difference, f"p={p:.2g}, medians {difference:.0%} apart")


@dataclass
class Ranking:
    """The candidates of one row: the best median, and who the rule cannot separate from it."""

    best: Optional[str]  #: the candidate with the best median (None if none was measured)
    leaders: list[str]  #: the best and every candidate it does not beat
    measured: list[str]  #: the candidates with numbers, best median first
    medians: dict[str, float] = field(default_factory=dict)
    against: dict[str, Comparison] = field(default_factory=dict)  #: best vs each other one

    @property
    def winner(self) -> Optional[str]:
        """The one candidate that beats every other, or None for a tie."""
        return self.leaders[0] if len(self.leaders) == 1 and len(self.measured) > 1 else None

    @property
    def tied(self) -> bool:
        """No single winner (a tie between some or all, or fewer than two measured)."""
        return self.winner is None

    def text(self) -> str:
        """``fork`` / ``tied: fork, forkserver`` / ``tied`` / ``only fork`` / ``-``."""
        if not self.measured:
            return "-"
        if len(self.measured) == 1:
            return f"only {self.measured[0]}"
        if self.winner:
            return self.winner
        if len(self.leaders) == len(self.measured):
            return "tied"
        return "tied: " + ", ".join(self.leaders)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "winner": self.winner,
            "leaders": self.leaders,
            "best_median": self.best,
            "medians": self.medians,
            "against": {
                name: {"beats": c.beats, "p": c.p, "gap": c.gap, "why": c.why}
                for name, c in self.against.items()
            },
        }


def rank(samples: Mapping[str, Sequence[float]], higher_is_better: bool) -> Ranking:
    """Rank candidates by median and find who the best one beats by the rule."""
    medians = {name: statistics.median(values) for name, values in samples.items() if values}
    ordered = sorted(medians, key=lambda name: medians[name], reverse=higher_is_better)
    if not ordered:
        return Ranking(None, [], [])
    best = ordered[0]
    against = {
        name: compare(samples[best], samples[name], higher_is_better) for name in ordered[1:]
    }
    leaders = [best, *(name for name in ordered[1:] if not against[name].beats)]
    return Ranking(best, leaders, ordered, medians, against)
