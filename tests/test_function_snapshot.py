"""Functions pickled by value reuse their pickle only while nothing they capture changed."""

from __future__ import annotations

from typing import Any

import pytest

from poolkit import Executor
from poolkit._pickling import function_snapshot as _function_snapshot
from poolkit._pickling import serialization as serialization

SOURCE = """
import math

FACTOR = 2
TABLE = {"a": 1}

def scale(x):
    return x * FACTOR

def helper():
    return FACTOR + 1

def uses_helper():
    return helper() * 10

def look(key):
    return TABLE[key]

def with_default(x=1):
    return x

def make_counter():
    n = 1
    def get():
        return n
    def set_(value):
        nonlocal n
        n = value
    return get, set_

def uses_module(x):
    return math.floor(x)

class Local:
    pass

def uses_local_class():
    return Local
"""


def main_namespace() -> dict[str, Any]:
    """Functions as a script defines them: in a namespace called ``__main__``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(SOURCE, "<script>", "exec"), namespace)
    return namespace


def test_what_gets_a_snapshot() -> None:
    ns = main_namespace()
    for name in ("scale", "uses_helper", "with_default", "uses_module"):
        assert _function_snapshot.take(ns[name]) is not None, name
    get, _ = ns["make_counter"]()
    assert _function_snapshot.take(get) is not None
    # A mutable global, a class defined in __main__, attributes on the function: none.
    assert _function_snapshot.take(ns["look"]) is None
    assert _function_snapshot.take(ns["uses_local_class"]) is None
    ns["scale"].note = "set by the user"
    assert _function_snapshot.take(ns["scale"]) is None
    assert _function_snapshot.take(len) is None  # not a plain function


def test_a_snapshot_stops_matching_when_a_capture_changes() -> None:
    ns = main_namespace()
    scale, uses_helper = ns["scale"], ns["uses_helper"]
    snapshots = {f: _function_snapshot.take(f) for f in (scale, uses_helper)}
    assert all(s is not None and s.matches(f) for f, s in snapshots.items())
    ns["FACTOR"] = 3  # read by scale, and by uses_helper through helper
    assert not any(s is not None and s.matches(f) for f, s in snapshots.items())

    ns = main_namespace()
    with_default = ns["with_default"]
    snapshot = _function_snapshot.take(with_default)
    assert snapshot is not None
    with_default.__defaults__ = (5,)
    assert not snapshot.matches(with_default)

    get, set_ = ns["make_counter"]()
    snapshot = _function_snapshot.take(get)
    assert snapshot is not None and snapshot.matches(get)
    set_(7)
    assert not snapshot.matches(get)

    ns = main_namespace()
    scale = ns["scale"]
    snapshot = _function_snapshot.take(scale)
    assert snapshot is not None
    ns["scale"] = lambda x: x  # rebinding the name itself does not change this function
    assert snapshot.matches(scale)


def test_submit_reuses_the_pickle_until_a_capture_changes(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = main_namespace()
    scale, look, with_default = ns["scale"], ns["look"], ns["with_default"]
    pickled: list[Any] = []
    real_dumps = serialization.dumps

    def counting(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        pickled.append(obj)
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(serialization, "dumps", counting)
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert [ex.submit(scale, 3).result(timeout=30) for _ in range(3)] == [6, 6, 6]
        assert pickled.count(scale) == 1
        # A changed global: pickled again, the same bytes as a fresh pickle. (What the
        # worker does with a global value it already has is _main_namespace's business.)
        ns["FACTOR"] = 5
        assert ex._function_blob(scale) == real_dumps(scale)
        assert pickled.count(scale) == 2
        # Closure cells and defaults travel with the function: the worker sees each change.
        get, set_ = ns["make_counter"]()
        assert ex.submit(get).result(timeout=30) == 1
        set_(9)
        assert ex.submit(get).result(timeout=30) == 9
        assert ex.submit(with_default).result(timeout=30) == 1
        with_default.__defaults__ = (5,)
        assert ex.submit(with_default).result(timeout=30) == 5
        # A function that reads a dict is pickled on every call, as before.
        for _ in range(3):
            assert ex.submit(look, "a").result(timeout=30) == 1
        assert pickled.count(look) == 3
