"""Checks of the options both executors take, and the one "use the default" sentinel.

Options travel beside the call instead of as keyword arguments of ``submit``, so that
``submit(fn, /, *args, **kwargs)`` keeps every keyword name for ``fn``: see
``Executor.with_options``. ``map`` takes its options as keywords (``chunksize``,
``buffersize``, ``priority``, ...). Both use :data:`DEFAULT` for "the executor decides",
which is distinct from None (no limit, no bound).

This module imports neither executor: ``map`` runs on both, and its checks live here.
"""

from __future__ import annotations

import enum
from typing import Optional


class Default(enum.Enum):
    """The type of :data:`DEFAULT` (one member, so a type checker can narrow on it)."""

    DEFAULT = "default"

    def __repr__(self) -> str:
        return "<default>"


#: "Use the executor's setting": the default of ``with_options(timeout=...)``, and of
#: ``map``'s ``chunksize`` and ``buffersize`` (distinct from None, which means "no limit").
DEFAULT = Default.DEFAULT


def check_seconds(name: str, value: Optional[float]) -> Optional[float]:
    """Validate a duration option: None, or a positive number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_priority(value: int) -> int:
    """Validate a priority: any int (higher runs first)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an int, got {type(value).__name__}")
    return value


def check_bytes(name: str, value: Optional[int]) -> Optional[int]:
    """Validate a size option: None, or a positive whole number of bytes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be a number of bytes (int) or None, got {type(value).__name__}"
        )
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
