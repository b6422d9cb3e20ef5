"""One small adapter per implementation, so every workload drives every pool the same way.

An adapter offers ``submit(fn, *args)`` (returns a handle), ``wait(handle)`` (its result),
``map(fn, items, chunksize)`` (a list; ``chunksize=None`` leaves the pool's own default) and
``shutdown()``. Peers are imported here, in the runner, and only when measured: a peer that is
not installed costs nothing.
"""

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Iterator
from typing import Any, Callable, Optional


class PoolAdapter:
    """The interface every implementation is driven through."""

    impl = ""
    #: Modules imported before any clock starts: constructing a pool is measured, importing
    #: its library is not.
    modules: tuple[str, ...] = ()
    pool: Any = None

    @classmethod
    def preload(cls) -> None:
        """Import this implementation's library (raises ImportError if it is missing)."""
        for name in cls.modules:
            importlib.import_module(name)

    def __init__(self, method: str, workers: int) -> None:
        self.method = method
        self.workers = workers

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Schedule ``fn(*args)``; return a handle for :meth:`wait`."""
        raise NotImplementedError

    def wait(self, handle: Any, timeout: Optional[float] = None) -> Any:
        """The result of a submitted task (re-raises its exception; TimeoutError if late)."""
        return handle.result(timeout)

    def map(self, fn: Callable[..., Any], items: Any, chunksize: Optional[int]) -> list[Any]:
        """``[fn(x) for x in items]`` in the pool; ``chunksize=None``: the pool's own default."""
        raise NotImplementedError

    def imap(self, fn: Callable[..., Any], items: Any, **options: Any) -> Iterator[Any]:
        """The pool's lazy ``map`` with poolkit's keywords (poolkit only)."""
        raise Unsupported(f"{self.impl} has no map with poolkit's keywords")

    def shutdown(self) -> None:
        """Stop the pool and wait for its workers."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop a pool that may be stuck (after a worker's death): no waiting for tasks."""
        self.shutdown()


def chunking(chunksize: Optional[int], keyword: str = "chunksize") -> dict[str, int]:
    """The chunksize keyword to pass: none at all for the pool's own default."""
    return {} if chunksize is None else {keyword: chunksize}


class FuturesAdapter(PoolAdapter):
    """A ``concurrent.futures.Executor``: ``submit`` gives a Future, ``map`` an iterator."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Any, chunksize: Optional[int]) -> list[Any]:
        return list(self.pool.map(fn, items, **chunking(chunksize)))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


class AsyncResultAdapter(PoolAdapter):
    """A pool whose ``apply_async`` gives a ``multiprocessing`` AsyncResult."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def wait(self, handle: Any, timeout: Optional[float] = None) -> Any:
        try:
            return handle.get(timeout)
        except multiprocessing.TimeoutError:
            raise TimeoutError("no result in time") from None


class PoolkitAdapter(FuturesAdapter):
    impl = "poolkit"
    # poolkit.Executor loads on first use: import it before any clock starts, as the
    # stdlib adapter imports concurrent.futures.process.
    modules = ("poolkit", "poolkit._executor")

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        import poolkit

        self.pool = poolkit.Executor(workers, start_method=method)

    def imap(self, fn: Callable[..., Any], items: Any, **options: Any) -> Iterator[Any]:
        return self.pool.map(fn, items, **options)  # type: ignore[no-any-return]


class StdlibAdapter(FuturesAdapter):
    impl = "stdlib"
    modules = ("concurrent.futures.process",)

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(method)
        self.pool = ProcessPoolExecutor(workers, mp_context=context)


class MpPoolAdapter(AsyncResultAdapter):
    impl = "mppool"
    modules = ("multiprocessing.pool",)

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        self.pool = multiprocessing.get_context(method).Pool(workers)

    def map(self, fn: Callable[..., Any], items: Any, chunksize: Optional[int]) -> list[Any]:
        return self.pool.map(fn, items, chunksize)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.pool.close()
        self.pool.join()

    def abort(self) -> None:
        # Not terminate(): it takes the task queue's lock, which a killed worker may hold
        # forever. Kill the workers; the runner then exits without running finalizers.
        for process in list(getattr(self.pool, "_pool", [])):
            process.kill()
            process.join(1.0)


class LokyAdapter(FuturesAdapter):
    impl = "loky"
    modules = ("loky", "loky.backend.context")

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        if method == "fork":
            raise Unsupported("loky does not support the fork start method")
        loky: Any = importlib.import_module("loky")
        context = importlib.import_module("loky.backend.context").get_context(method)
        self.pool = loky.ProcessPoolExecutor(max_workers=workers, context=context)


class MpireAdapter(AsyncResultAdapter):
    impl = "mpire"
    modules = ("mpire",)

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        mpire: Any = importlib.import_module("mpire")
        # keep_alive: reuse the workers between calls, like every other pool here.
        self.pool = mpire.WorkerPool(n_jobs=workers, start_method=method, keep_alive=True)

    def map(self, fn: Callable[..., Any], items: Any, chunksize: Optional[int]) -> list[Any]:
        # mpire unpacks tuple items into arguments; wrap each item so fn gets it whole.
        wrapped = [(item,) for item in items]
        return list(self.pool.map(fn, wrapped, **chunking(chunksize, "chunk_size")))

    def shutdown(self) -> None:
        self.pool.stop_and_join()
        self.pool.terminate()

    def abort(self) -> None:
        self.pool.terminate()


class PebbleAdapter(PoolAdapter):
    impl = "pebble"
    modules = ("pebble",)

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        pebble: Any = importlib.import_module("pebble")
        context = multiprocessing.get_context(method)
        self.pool = pebble.ProcessPool(max_workers=workers, context=context)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.schedule(fn, args=args)

    def map(self, fn: Callable[..., Any], items: Any, chunksize: Optional[int]) -> list[Any]:
        return list(self.pool.map(fn, items, **chunking(chunksize)).result())

    def shutdown(self) -> None:
        self.pool.close()
        self.pool.join()

    def abort(self) -> None:
        self.pool.stop()
        self.pool.join()


class DaskAdapter(FuturesAdapter):
    """poolkit's ``backend="dask"`` on a LocalCluster it starts (127.0.0.1): the price of going
    distributed. The start method is the one dask's nannies start the workers with."""

    impl = "dask"
    modules = ("poolkit", "distributed")

    def __init__(self, method: str, workers: int) -> None:
        super().__init__(method, workers)
        import dask.config

        import poolkit

        # A fresh runner process per measurement: setting dask's global config is fine here.
        dask.config.set({"distributed.worker.multiprocessing-method": method})
        self.pool = poolkit.Executor(workers, backend="dask")

    def imap(self, fn: Callable[..., Any], items: Any, **options: Any) -> Iterator[Any]:
        return self.pool.map(fn, items, **options)  # type: ignore[no-any-return]

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Unsupported(Exception):
    """This implementation cannot run with the requested start method."""


ADAPTERS: dict[str, type[PoolAdapter]] = {
    cls.impl: cls
    for cls in (
        PoolkitAdapter,
        StdlibAdapter,
        MpPoolAdapter,
        LokyAdapter,
        MpireAdapter,
        PebbleAdapter,
        DaskAdapter,
    )
}


def make_pool(impl: str, method: str, workers: int) -> PoolAdapter:
    """Construct implementation ``impl``'s pool (workers may start lazily, as that pool does)."""
    try:
        cls = ADAPTERS[impl]
    except KeyError:
        raise ValueError(f"unknown implementation {impl!r}") from None
    return cls(method, workers)
