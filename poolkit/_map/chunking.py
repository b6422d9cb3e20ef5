"""How many items each map chunk holds: a fixed ``chunksize``, or ``"auto"``.

``"auto"`` (:class:`AutoChunks`): the first chunks hold one item each, so a long task never
waits behind a big chunk. Once workers report how long items take, each new chunk is sized to
take about :data:`AUTO_TARGET_SECONDS`, never more than :data:`AUTO_GROWTH` times the largest
chunk measured so far, never more than :data:`AUTO_MAX_ITEMS` items or :data:`AUTO_MAX_BYTES`
pickled bytes of arguments, and, when the input's length is known, never more than a
``1/(AUTO_GUIDED_SHARES * workers)`` share of what is left, so the tail of a map is spread
over every worker (guided scheduling), unless that share would take less than
:data:`AUTO_TAIL_SECONDS`: a chunk that short cannot unbalance the tail by more, and
shrinking it further only adds round trips.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

#: ``chunksize="auto"``: aim for chunks that take this long in a worker. Per-chunk overhead
#: (framing, a pipe round trip, a future) is ~0.1-0.3 ms, so this keeps it near 1%; the
#: tail stays balanced by the guided cap below.
AUTO_TARGET_SECONDS = 0.02
#: ``chunksize="auto"``: at most this many items in one chunk (bounds memory per chunk when
#: tasks are so short that the target would ask for huge chunks).
AUTO_MAX_ITEMS = 16384
#: ``chunksize="auto"``: at most about this many pickled argument bytes in one chunk.
AUTO_MAX_BYTES = 1 << 20
#: ``chunksize="auto"``: a new chunk is at most this many times the largest one measured.
AUTO_GROWTH = 8
#: ``chunksize="auto"`` with a known input length: chunk at most remaining/(this*workers).
AUTO_GUIDED_SHARES = 2
#: ...but the guided share never cuts a chunk below this much work: 200,000 tiny items
#: took 30-44 ms with the share alone, two thirds of it in a tail of some 35 chunks
#: shrinking to one item each.
AUTO_TAIL_SECONDS = 0.002


class ChunkSizer:
    """Decides how many items the next chunk holds."""

    def next_size(self, remaining: Optional[int]) -> int:
        """Items for the next chunk; ``remaining`` is the number of unread items, if known."""
        raise NotImplementedError

    def observe(self, items: int, seconds: float) -> None:
        """A chunk of ``items`` items took ``seconds`` in a worker."""

    def observe_bytes(self, items: int, nbytes: int) -> None:
        """A chunk of ``items`` items pickled to ``nbytes`` bytes."""


class FixedChunks(ChunkSizer):
    """A fixed ``chunksize``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def next_size(self, remaining: Optional[int]) -> int:
        return self.size


class AutoChunks(ChunkSizer):
    """``chunksize="auto"``: sizes chunks from the measured time per item and the pool size.

    Time per item is an item-weighted moving average over recent chunks, so it follows a
    workload whose tasks get longer or shorter as the input goes on.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._seconds = 0.0  # decayed sums: seconds and items of recent chunks
        self._items = 0.0
        self._largest = 0  # largest chunk measured
        self._bytes_per_item: Optional[float] = None

    @property
    def seconds_per_item(self) -> Optional[float]:
        """The current estimate, or None before the first measurement."""
        with self._lock:
            return self._seconds / self._items if self._items else None

    def next_size(self, remaining: Optional[int]) -> int:
        per_item = self.seconds_per_item
        if per_item is None:
            size = 1  # measure first: a long task must never wait behind a big chunk
        else:
            size = AUTO_MAX_ITEMS if per_item <= 0 else int(AUTO_TARGET_SECONDS / per_item)
            size = min(size, AUTO_MAX_ITEMS, AUTO_GROWTH * self._largest)
            if self._bytes_per_item:
                size = min(size, int(AUTO_MAX_BYTES / self._bytes_per_item))
        if remaining is not None:
            share = math.ceil(remaining / (AUTO_GUIDED_SHARES * self.workers))
            if per_item is not None and per_item > 0:
                share = min(remaining, max(share, int(AUTO_TAIL_SECONDS / per_item)))
            size = min(size, share)
        return max(1, size)

    def observe(self, items: int, seconds: float) -> None:
        # Called from the dispatcher thread; next_size from the caller's.
        with self._lock:
            # Decay by chunk, weight by item: a big chunk counts for more than a small one.
            self._seconds = 0.7 * self._seconds + seconds
            self._items = 0.7 * self._items + items
            self._largest = max(self._largest, items)

    def observe_bytes(self, items: int, nbytes: int) -> None:
        per_item = nbytes / items
        previous = self._bytes_per_item
        self._bytes_per_item = per_item if previous is None else 0.7 * previous + 0.3 * per_item
