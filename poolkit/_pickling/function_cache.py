"""The caller's cache of function pickles: pickle a function once, not once per submit.

It holds no strong reference to a function: an entry goes when its function is collected,
so a dropped closure over a large object is freed as it would be without poolkit. It is
bounded by entries and by bytes of pickles; a pickle larger than a quarter of the byte
budget is never kept (pickling such a function again costs little next to its size).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

from poolkit._pickling.function_snapshot import Snapshot

#: At most this many functions ...
MAX_ENTRIES = 64
#: ... and this many bytes of their pickles.
MAX_BYTES = 8 << 20


class FunctionBlobs:
    """fn -> (its pickle, None if pickled by reference, else the snapshot that must match)."""

    __slots__ = ("__weakref__", "_bytes", "_entries")

    def __init__(self) -> None:
        #: id(fn) -> (a weak reference to fn, its pickle, its snapshot)
        self._entries: dict[int, tuple[weakref.ref[Any], bytes, Optional[Snapshot]]] = {}
        self._bytes = 0

    def get(self, fn: Callable[..., Any]) -> Optional[tuple[bytes, Optional[Snapshot]]]:
        """The entry of ``fn``, or None."""
        entry = self._entries.get(id(fn))
        if entry is None or entry[0]() is not fn:
            return None  # never cached, or an id reused by another object
        return entry[1], entry[2]

    def put(self, fn: Callable[..., Any], blob: bytes, snapshot: Optional[Snapshot]) -> None:
        """Remember ``blob`` for ``fn`` while ``fn`` lives and the budget allows."""
        if len(blob) > MAX_BYTES // 4:
            return
        try:
            ref = weakref.ref(fn, self._forget_callback(id(fn)))
        except TypeError:
            return  # not weakly referenceable (a builtin): pickled each time, as it is short
        self._drop(id(fn))
        if len(self._entries) >= MAX_ENTRIES or self._bytes + len(blob) > MAX_BYTES:
            self._entries.clear()
            self._bytes = 0
        self._entries[id(fn)] = (ref, blob, snapshot)
        self._bytes += len(blob)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of pickles held."""
        return self._bytes

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    def _forget_callback(self, key: int) -> Callable[[weakref.ref[Any]], None]:
        # The callback must not keep the cache alive: it goes through a weak reference.
        cache = weakref.ref(self)

        def forget(ref: weakref.ref[Any]) -> None:
            owner = cache()
            if owner is not None:
                entry = owner._entries.get(key)
                if entry is not None and entry[0] is ref:
                    owner._drop(key)

        return forget
