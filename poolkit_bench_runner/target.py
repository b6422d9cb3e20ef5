"""The runner's side of ``--target``: import the user's function; time it serially or pooled."""

from __future__ import annotations

import importlib
import os
import pickle
import threading
import time
from typing import Any, Callable

from poolkit_bench_runner import tasks
from poolkit_bench_runner.adapters import make_pool


class TargetError(Exception):
    """The user's function or inputs failed at ``stage`` (import, inputs, call, pool)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def resolve(reference: str, what: str, stage: str = "import") -> Any:
    """Import ``module:attribute`` (dots allowed in both)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise TargetError(stage, f"{what} must look like module:name, got {reference!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except BaseException as exc:
        raise TargetError(
            stage, f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(
                stage, f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return obj


def load(spec: dict[str, Any]) -> tuple[Callable[..., Any], list[tuple[Any, ...]]]:
    """The target function and its list of argument tuples."""
    fn = resolve(spec["target"], "--target")
    if not callable(fn):
        raise TargetError("import", f"{spec['target']} is not callable ({type(fn).__name__})")
    if spec.get("inputs"):
        source = resolve(spec["inputs"], "--inputs", "inputs")
        try:
            if callable(source):
                source = source()
            items = list(source)
        except BaseException as exc:
            raise TargetError(
                "inputs", f"cannot read the inputs {spec['inputs']}: {type(exc).__name__}: {exc}"
            ) from exc
        calls = [tuple(i) if spec.get("star") else (i,) for i in items]
    else:
        calls = [tuple(a) for a in spec["args"]]
    if not calls:
        raise TargetError("inputs", "no inputs: the function would never be called")
    return fn, calls


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Import, then call once in this process: catches import errors, raises and hangs early.

    Also tells what a pool adds to one call: the time to pickle and unpickle its arguments and
    its result (the least a process pool pays per call), and how many threads run once the
    user's module is imported (forking a process with threads can deadlock the child).
    """
    fn, calls = load(spec)
    start = time.perf_counter()
    try:
        result = fn(*calls[0])
    except BaseException as exc:
        raise TargetError(
            "call", f"{spec['target']}{_short(calls[0])} raised {type(exc).__name__}: {exc}"
        ) from exc
    elapsed = time.perf_counter() - start
    return {
        "items": len(calls),
        "first_s": elapsed,
        "result": _short(result),
        **_pickling(calls[0], result),
        "threads": _threads(),
        "thread_names": sorted(t.name for t in threading.enumerate())[:8],
    }


def _pickling(args: tuple[Any, ...], result: Any) -> dict[str, Any]:
    """Seconds to pickle and unpickle one call's arguments and result, and their bytes."""
    try:
        start = time.perf_counter()
        rounds = 0
        while True:  # repeat tiny ones until the clock can see them
            sent = pickle.dumps(args, pickle.HIGHEST_PROTOCOL)
            back = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
            pickle.loads(sent)
            pickle.loads(back)
            rounds += 1
            elapsed = time.perf_counter() - start
            if elapsed > 0.01 or rounds >= 1000:
                break
    except Exception as exc:  # cloudpickle may still ship it; then no estimate
        return {"pickle_s": None, "pickle_bytes": None, "pickle_note": repr(exc)[:200]}
    return {"pickle_s": elapsed / rounds, "pickle_bytes": len(sent) + len(back)}


def _threads() -> int:
    """Threads of this process, C threads (a BLAS pool, ...) included where /proc tells."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def serial(spec: dict[str, Any]) -> dict[str, Any]:
    """Every call, one after the other, in this process."""
    fn, calls = load(spec)
    fn(*calls[0])  # warm-up
    start = time.perf_counter()
    try:
        for args in calls:
            fn(*args)
    except BaseException as exc:
        raise TargetError("call", f"{spec['target']} raised {type(exc).__name__}: {exc}") from exc
    return {"seconds": time.perf_counter() - start}


def pooled(spec: dict[str, Any]) -> dict[str, Any]:
    """Every call through one implementation's ``map`` at one chunksize, on a warm pool.

    Also the start-up: from constructing the pool to the end of a first map of one call per
    worker (each worker has imported the function), timed apart from the warm map.
    """
    fn, calls = load(spec)
    single = all(len(args) == 1 for args in calls)
    func: Callable[..., Any] = fn if single else tasks.Star(fn)
    items = [args[0] for args in calls] if single else calls
    started = time.perf_counter()
    pool = make_pool(spec["impl"], spec["method"], int(spec["workers"]))
    try:
        try:
            pool.map(func, items[: pool.workers], 1)  # warm-up: every worker has imported fn
            startup = time.perf_counter() - started
            start = time.perf_counter()
            pool.map(func, items, int(spec["chunksize"]))
            elapsed = time.perf_counter() - start
        except BaseException as exc:
            raise TargetError(
                "pool", f"{spec['target']} failed in a worker: {type(exc).__name__}: {exc}"
            ) from exc
    finally:
        pool.shutdown()
    return {"seconds": elapsed, "startup": startup}


def _short(value: Any, limit: int = 120) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    if isinstance(value, tuple):
        text = "(" + text[1:-2] + ")" if text.endswith(",)") else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "target_probe": probe,
    "target_serial": serial,
    "target_map": pooled,
}
