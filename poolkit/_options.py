"""Per-task options: ``executor.with_options(timeout=...)`` and argument checks for them.

Options travel beside the call instead of as keyword arguments of ``submit``, so that
``submit(fn, /, *args, **kwargs)`` keeps every keyword name for ``fn``.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

if TYPE_CHECKING:
    from poolkit._executor import Executor

T = TypeVar("T")


class _Unset:
    def __repr__(self) -> str:
        return "<pool default>"


#: "Use the executor's setting" (distinct from None, which means "no limit").
UNSET: Any = _Unset()


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


class TaskOptions:
    """Submits tasks to an executor with options of their own; see ``Executor.with_options``."""

    def __init__(self, executor: Executor, timeout: Optional[float], priority: int = 0) -> None:
        self._executor = executor
        self._timeout = timeout
        self._priority = priority

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Like ``Executor.submit``, with these options."""
        return self._executor._submit(
            fn, args, kwargs, timeout=self._timeout, priority=self._priority
        )

    def __repr__(self) -> str:
        return (
            f"<poolkit task options timeout={self._timeout!r} priority={self._priority!r} "
            f"for {self._executor!r}>"
        )
