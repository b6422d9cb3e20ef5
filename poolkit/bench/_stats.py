"""Summary statistics for repeated measurements: median and spread."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Stat:
    """The repetitions of one measurement: their median, extremes and count."""

    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    @property
    def n(self) -> int:
        """How many repetitions."""
        return len(self.samples)

    @property
    def spread_pct(self) -> Optional[float]:
        """Half the range, as a percentage of the median (None for a single sample)."""
        if self.n < 2 or self.median == 0:
            return None
        return (self.high - self.low) / 2 / abs(self.median) * 100

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": self.n,
            "spread_pct": self.spread_pct,
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stat:
        """The inverse of :meth:`to_dict`."""
        samples = tuple(float(s) for s in data.get("samples", [data["median"]]))
        return cls(float(data["median"]), float(data["min"]), float(data["max"]), samples)


def summarize(samples: list[float]) -> Optional[Stat]:
    """A :class:`Stat` over the samples, or None if there are none."""
    if not samples:
        return None
    return Stat(statistics.median(samples), min(samples), max(samples), tuple(samples))


def format_value(value: Optional[float]) -> str:
    """A number with about three significant digits, thousands separated."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_stat(stat: Optional[Stat]) -> str:
    """``median ±spread%``."""
    if stat is None:
        return "-"
    text = format_value(stat.median)
    spread = stat.spread_pct
    if spread is not None:
        text += f" ±{spread:.0f}%"
    return text


def format_seconds(seconds: Optional[float]) -> str:
    """A duration in s, ms or us, about three significant digits."""
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{format_value(seconds)} s"
    if seconds >= 1e-3:
        return f"{format_value(seconds * 1e3)} ms"
    return f"{format_value(seconds * 1e6)} us"


def format_duration_stat(stat: Optional[Stat]) -> str:
    """``median ±spread%`` of a duration in seconds."""
    if stat is None:
        return "-"
    spread = stat.spread_pct
    return format_seconds(stat.median) + ("" if spread is None else f" ±{spread:.0f}%")
