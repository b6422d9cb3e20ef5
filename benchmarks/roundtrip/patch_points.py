"""Every attribute the round-trip profile replaces while it measures, in one list.

The profile measures poolkit from the outside, so it must survive poolkit's own refactors: it
stamps at public points (``submit``, ``result``, an ``initializer``, the task function) and in
the standard library (``Future``'s two transitions, the ``os`` pipe calls, ``Connection``'s
write), and touches one private name of poolkit, the direct-send switch. A name that disappears
makes :func:`check` fail before anything is measured (and ``tests/test_roundtrip_smoke.py``
with it); a name that stays but is no longer on the path a round trip takes leaves its stage
without samples, which the smoke test catches too.

Standard library only: the worker side (:mod:`.stamps`) imports this module.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class PatchPoint(NamedTuple):
    """``module``'s attribute ``path`` (dotted: ``Class.method``), replaced where ``side`` says."""

    module: str
    path: str
    side: str  #: "parent" or "worker"
    why: str

    @property
    def name(self) -> str:
        """``module.path``, as the error messages spell it."""
        return f"{self.module}.{self.path}"


#: poolkit's only private name here: where ``Dispatcher.submit`` decides whether the caller
#: writes the task to an idle worker itself.
DIRECT_SEND = PatchPoint(
    "poolkit._pool.dispatcher",
    "Dispatcher._send_direct",
    "parent",
    "the direct send: timed in the direct mode, refused in the queued mode",
)
CLAIM = PatchPoint(
    "concurrent.futures",
    "Future.set_running_or_notify_cancel",
    "parent",
    "the task is claimed (its future marked running) by whoever sends it",
)
SETTLE = PatchPoint(
    "concurrent.futures",
    "Future.set_result",
    "parent",
    "the dispatcher delivers the result and notifies the waiting caller",
)
WRITEV = PatchPoint("os", "writev", "parent", "the inbox write (caller or dispatcher)")
WRITE = PatchPoint("os", "write", "parent", "the caller wakes the dispatcher (queued mode)")
READ = PatchPoint("os", "read", "parent and worker", "the dispatcher's and the worker's reads")
REPLY = PatchPoint(
    "multiprocessing.connection",
    "Connection._send_bytes",
    "worker",
    "the worker's reply write (Connection.send_bytes calls it)",
)

PATCH_POINTS: tuple[PatchPoint, ...] = (DIRECT_SEND, CLAIM, SETTLE, WRITEV, WRITE, READ, REPLY)


def resolve(point: PatchPoint) -> tuple[Any, str]:
    """The object that holds ``point``'s attribute, and the attribute's name.

    Raises LookupError, naming the point, when the module or the attribute is gone.
    """
    try:
        owner: Any = importlib.import_module(point.module)
    except ImportError as exc:
        raise LookupError(f"{point.name}: module {point.module} is gone ({exc})") from exc
    *parents, name = point.path.split(".")
    for part in parents:
        try:
            owner = getattr(owner, part)
        except AttributeError:
            raise LookupError(f"{point.name}: {part} is gone from {point.module}") from None
    if not hasattr(owner, name):
        raise LookupError(f"{point.name}: {name} is gone")
    return owner, name


def missing() -> list[str]:
    """What is gone, one line per patch point (empty when every point is there)."""
    gone = []
    for point in PATCH_POINTS:
        try:
            resolve(point)
        except LookupError as exc:
            gone.append(f"{exc} (used for {point.why})")
    return gone


def check() -> None:
    """Raise SystemExit, listing every patch point that is gone, before measuring anything."""
    gone = missing()
    if gone:
        raise SystemExit(
            "the round-trip profile's patch points are gone; update benchmarks/roundtrip "
            "to poolkit's new names:\n  " + "\n  ".join(gone)
        )


class Patches:
    """Attributes replaced for a while, then put back (in the reverse order)."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any, bool]] = []

    def replace(self, point: PatchPoint, make: Any) -> Any:
        """Set ``point`` to ``make(original)``; returns the original."""
        owner, name = resolve(point)
        original = getattr(owner, name)
        had = name in vars(owner)
        self._saved.append((owner, name, vars(owner).get(name), had))
        setattr(owner, name, make(original))
        return original

    def restore(self) -> None:
        """Put every replaced attribute back."""
        while self._saved:
            owner, name, old, had = self._saved.pop()
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
