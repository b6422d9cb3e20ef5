"""The benchmark's noise rule, on synthetic repetitions: when a row names a winner, and when not."""

from __future__ import annotations

import itertools
import math

import pytest

from poolkit.bench import _noise
from poolkit.bench._noise import compare, mann_whitney_less, rank


def brute_force_p(xs: list[float], ys: list[float]) -> float:
    """P(U >= observed) over every split of the pooled values: the definition itself."""
    pooled = [*xs, *ys]
    observed = _noise.u_statistic(xs, ys)
    splits = list(itertools.combinations(range(len(pooled)), len(xs)))
    hits = 0
    for chosen in splits:
        first = [pooled[i] for i in chosen]
        second = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += _noise.u_statistic(first, second) >= observed
    return hits / len(splits)


def test_exact_p_values_of_complete_separation() -> None:
    # Every x below every y: one split in C(n1+n2, n1) is this extreme.
    assert mann_whitney_less([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20)
    assert mann_whitney_less([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(1 / 70)
    assert mann_whitney_less([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1 / 252)
    # The other way round, every split is at least as extreme.
    assert mann_whitney_less([4, 5, 6], [1, 2, 3]) == 1.0


def test_exact_p_values_with_ties_worked_by_hand() -> None:
    # Ties count a half (the brute force below shares the code's U, so it cannot check
    # this branch). [1, 2, 2] against [2, 3, 3]: U = 7.5 of 9; of the 20 splits of the
    # pooled values, 3 reach it.
    assert mann_whitney_less([1, 2, 2], [2, 3, 3]) == pytest.approx(3 / 20)
    # All equal: every split ties, so none is less extreme.
    assert mann_whitney_less([5, 5, 5], [5, 5, 5]) == 1.0


@pytest.mark.parametrize(
    ("xs", "ys"),
    [
        ([1.0, 4.0, 2.0], [3.0, 5.0, 6.0]),
        ([1.0, 7.0, 3.0, 9.0], [2.0, 4.0, 8.0, 10.0, 5.0]),
        ([1.0, 2.0, 2.0], [2.0, 3.0, 3.0]),  # ties across the samples
        ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]),
    ],
)
def test_p_values_match_the_definition(xs: list[float], ys: list[float]) -> None:
    assert mann_whitney_less(xs, ys) == pytest.approx(brute_force_p(xs, ys))


def test_normal_approximation_for_large_samples_is_close_to_exact() -> None:
    xs = [float(i) for i in range(0, 40, 2)]  # 20 values, interleaved with ys
    ys = [float(i) + 1.5 for i in range(0, 40, 2)]
    exact = mann_whitney_less(xs, ys)  # no ties: the exact recursion
    approx = _noise._normal_p(_noise.u_statistic(xs, ys), [*xs, *ys], 20, 20)
    assert math.isclose(exact, approx, abs_tol=0.02)
    with pytest.raises(ValueError):
        mann_whitney_less([], [1.0])


def test_clear_win_for_lower_and_for_higher_is_better() -> None:
    fast, slow = [7.5, 7.8, 8.1], [66.0, 70.3, 68.0]
    assert compare(fast, slow, higher_is_better=False).beats
    assert not compare(slow, fast, higher_is_better=False).beats
    assert compare(slow, fast, higher_is_better=True).beats
    ranking = rank({"fork": fast, "spawn": slow, "forkserver": [70.0, 71.0, 69.0]}, False)
    assert ranking.winner == "fork" and ranking.text() == "fork"
    assert ranking.leaders == ["fork"] and not ranking.tied


def test_overlapping_repetitions_are_a_tie() -> None:
    ranking = rank({"fork": [80.0, 82.0, 79.0], "spawn": [81.0, 83.0, 78.0]}, False)
    assert ranking.winner is None and ranking.text() == "tied"
    assert ranking.against["spawn" if ranking.best == "fork" else "fork"].p is not None


def test_one_noisy_method_is_not_beaten_by_luck() -> None:
    # spawn's median is worst, but one lucky repetition beats fork's best: no separation.
    samples = {"fork": [10.0, 10.5, 11.0], "forkserver": [10.2, 10.8, 10.4],
               "spawn": [9.0, 30.0, 25.0]}  # fmt: skip
    ranking = rank(samples, higher_is_better=False)
    assert ranking.best in ("fork", "forkserver")
    assert "spawn" in ranking.leaders and ranking.text() == "tied"
    # Without the lucky repetition, spawn is beaten, and the other two stay tied.
    samples["spawn"] = [24.0, 30.0, 25.0]
    ranking = rank(samples, higher_is_better=False)
    assert sorted(ranking.leaders) == ["fork", "forkserver"]
    assert ranking.text() == "tied: " + ", ".join(ranking.leaders)


def test_fewer_than_three_repetitions_never_name_a_winner() -> None:
    verdict = compare([1.0, 1.1], [50.0, 51.0], higher_is_better=False)
    assert not verdict.beats and verdict.p is None and "too few repetitions" in verdict.why
    assert rank({"fork": [1.0], "spawn": [50.0]}, False).text() == "tied"
    assert rank({"fork": [1.0], "spawn": []}, False).text() == "only fork"


def test_a_separated_but_tiny_difference_is_a_tie() -> None:
    # Memory: steady to the last digit, 2% apart. Significant, but not worth choosing by.
    verdict = compare([40.0, 40.0, 40.0], [40.8, 40.8, 40.8], higher_is_better=False)
    assert not verdict.beats and verdict.p == pytest.approx(0.05)
    assert "2.0% apart" in verdict.why
    assert compare([40.0] * 3, [42.2] * 3, higher_is_better=False).beats


def test_nothing_measured() -> None:
    ranking = rank({"fork": [], "spawn": []}, False)
    assert ranking.best is None and ranking.text() == "-"
    assert rank({"fork": [1.0, 2.0, 3.0]}, False).text() == "only fork"  # nobody to beat
    data = rank({"a": [1.0, 1.1, 1.2], "b": [5.0, 5.1, 5.2]}, False).to_dict()
    assert data["winner"] == "a" and data["against"]["b"]["beats"] is True
