"""multiprocessing objects in initargs reach every worker, first and replacement alike.

Each kind of object is given to a one-worker pool, which then goes through a recycle
(``max_tasks_per_child``), a SIGKILL and another recycle; the workers before and after
each use the object in a way only a handle shared with the parent makes visible there.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import multiprocessing.queues
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Callable, Optional

import initargs_tasks as worker
import pytest
from fifo import Gate

from poolkit import Executor, TaskStopped, TaskTimeoutError

# ------------------------------------------------------------------ the kinds


@dataclass
class Kind:
    """How to make an object of one kind, use it in a worker, and release it."""

    make: Callable[[BaseContext], Any]
    #: Runs one task in ``ex`` that uses the object; asserts the parent sees the effect;
    #: returns the worker's pid.
    use: Callable[[Executor, Any, int], int]
    release: Callable[[Any], None] = lambda obj: None


def _result(future: Future[Any]) -> Any:
    return future.result(timeout=60)


def _use_lock(ex: Executor, lock: Any, token: int) -> int:
    # Held by the parent, the worker cannot take it; released, it can. A copy of the lock
    # would be free in both cases.
    if token % 2:
        with lock:
            got, pid = _result(ex.submit(worker.try_acquire))
        assert got is False
    else:
        got, pid = _result(ex.submit(worker.try_acquire))
        assert got is True
    return int(pid)


def _use_condition(ex: Executor, condition: Any, token: int) -> int:
    with condition:
        future = ex.submit(worker.notify)  # it waits for the lock that wait() releases
        assert condition.wait(timeout=60), "the worker's notify did not reach the parent"
    return int(_result(future))


def _use_event(ex: Executor, event: Any, token: int) -> int:
    event.clear()
    pid = _result(ex.submit(worker.set_event))
    assert event.is_set()
    return int(pid)


def _use_barrier(ex: Executor, barrier: Any, token: int) -> int:
    future = ex.submit(worker.pass_barrier)
    barrier.wait(timeout=60)  # BrokenBarrierError unless the worker waits on the same one
    return int(_result(future))


def _use_queue(ex: Executor, queue: Any, token: int) -> int:
    pid = _result(ex.submit(worker.put, token))
    # A SimpleQueue's put is done when the task returns; a Queue's feeder thread may lag.
    simple = isinstance(queue, multiprocessing.queues.SimpleQueue)
    assert (queue.get() if simple else queue.get(timeout=60)) == (token, pid)
    return int(pid)


def _use_value(ex: Executor, value: Any, token: int) -> int:
    before = value.value
    pid = _result(ex.submit(worker.add_to_value, token))
    assert value.value == before + token
    return int(pid)


def _use_array(ex: Executor, array: Any, token: int) -> int:
    pid = _result(ex.submit(worker.write_array, token % len(array), token * 10))
    assert array[token % len(array)] == token * 10
    return int(pid)


def _use_shared_memory(ex: Executor, block: shared_memory.SharedMemory, token: int) -> int:
    pid = _result(ex.submit(worker.write_shared_memory, token, 100 + token))
    assert block.buf[token] == 100 + token
    return int(pid)


def _use_proxy(ex: Executor, proxy: Any, token: int) -> int:
    pid = _result(ex.submit(worker.set_item, f"key{token}", token))
    assert proxy[f"key{token}"] == token
    return int(pid)


def _use_pipe(ex: Executor, ends: Any, token: int) -> int:
    pid = _result(ex.submit(worker.send, token))
    assert ends[0].poll(60)
    assert ends[0].recv() == (token, pid)
    return int(pid)


def _close_pipe(ends: Any) -> None:
    for end in ends:
        end.close()


def _close_queue(queue: Any) -> None:
    queue.close()
    queue.join_thread()


def _new_shared_memory(ctx: BaseContext) -> shared_memory.SharedMemory:
    return shared_memory.SharedMemory(create=True, size=64)


def _release_shared_memory(block: shared_memory.SharedMemory) -> None:
    block.close()
    block.unlink()


class _ManagedDict:
    """A manager's dict proxy, with its manager, released together."""

    def __init__(self, ctx: BaseContext) -> None:
        self.manager = ctx.Manager()  # type: ignore[attr-defined]
        self.proxy = self.manager.dict()

    def release(self) -> None:
        del self.proxy
        self.manager.shutdown()
        del self.manager
        gc.collect()  # the proxies' connections and the manager's process sentinel


KINDS: dict[str, Kind] = {
    "Lock": Kind(lambda ctx: ctx.Lock(), _use_lock),  # type: ignore[attr-defined]
    "RLock": Kind(lambda ctx: ctx.RLock(), _use_lock),  # type: ignore[attr-defined]
    "Semaphore": Kind(lambda ctx: ctx.Semaphore(1), _use_lock),  # type: ignore[attr-defined]
    "BoundedSemaphore": Kind(
        lambda ctx: ctx.BoundedSemaphore(1),  # type: ignore[attr-defined]
        _use_lock,
    ),
    "Condition": Kind(lambda ctx: ctx.Condition(), _use_condition),  # type: ignore[attr-defined]
    "Event": Kind(lambda ctx: ctx.Event(), _use_event),  # type: ignore[attr-defined]
    "Barrier": Kind(lambda ctx: ctx.Barrier(2), _use_barrier),  # type: ignore[attr-defined]
    "Queue": Kind(lambda ctx: ctx.Queue(), _use_queue, _close_queue),  # type: ignore[attr-defined]
    "SimpleQueue": Kind(
        lambda ctx: ctx.SimpleQueue(),  # type: ignore[attr-defined]
        _use_queue,
        lambda q: q.close() if hasattr(q, "close") else None,
    ),
    "JoinableQueue": Kind(
        lambda ctx: ctx.JoinableQueue(),  # type: ignore[attr-defined]
        _use_queue,
        _close_queue,
    ),
    "Value": Kind(lambda ctx: ctx.Value("i", 0), _use_value),  # type: ignore[attr-defined]
    "RawValue": Kind(lambda ctx: ctx.RawValue("i", 0), _use_value),  # type: ignore[attr-defined]
    "Array": Kind(lambda ctx: ctx.Array("i", 8), _use_array),  # type: ignore[attr-defined]
    "RawArray": Kind(lambda ctx: ctx.RawArray("i", 8), _use_array),  # type: ignore[attr-defined]
    "SharedMemory": Kind(_new_shared_memory, _use_shared_memory, _release_shared_memory),
    "Pipe": Kind(lambda ctx: ctx.Pipe(), _use_pipe, _close_pipe),  # type: ignore[attr-defined]
}


@pytest.fixture(scope="module", autouse=True)
def _shared_heap() -> Iterator[None]:
    # multiprocessing keeps the arena of its shared heap (a descriptor and its mapping) for
    # the life of the process once a Value or Array made it: make it before the leak check
    # of the first such test looks at the descriptors.
    import multiprocessing.heap

    block = multiprocessing.heap.BufferWrapper(64)
    yield
    del block


@pytest.fixture
def pool_context(start_method: str) -> BaseContext:
    return multiprocessing.get_context(start_method)


@contextlib.contextmanager
def _made(kind: Kind, ctx: BaseContext) -> Iterator[Any]:
    obj = kind.make(ctx)
    try:
        yield obj
    finally:
        kind.release(obj)
        del obj
        gc.collect()  # the objects' descriptors and semaphores go now, before the leak check


def _through_recycle_and_crash(ex: Executor, use: Callable[[int], int]) -> None:
    """First worker, recycled replacement, SIGKILL, crash replacement, recycled again.

    ``max_tasks_per_child=2``. The killed worker never touched the object: a worker killed
    while a queue's feeder thread holds its write lock leaves the queue locked for every
    process (as under the standard library), which is not what this test is about.
    """
    first = use(1)
    assert use(2) == first  # its last task: it retires
    recycled = _result(ex.submit(worker.pid))
    assert recycled != first
    os.kill(recycled, signal.SIGKILL)
    after_crash = use(3)  # requeued onto the replacement if the dead worker had it
    assert after_crash not in (first, recycled)
    assert use(4) == after_crash
    last = use(5)
    assert last not in (first, recycled, after_crash)


# ------------------------------------------------------------------ the tests


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind_name", list(KINDS))
def test_kind_reaches_every_worker(
    start_method: str, pool_context: BaseContext, kind_name: str
) -> None:
    kind = KINDS[kind_name]
    with (
        _made(kind, pool_context) as obj,
        Executor(
            1,
            start_method=start_method,
            initializer=worker.keep,
            initargs=(obj,),
            max_tasks_per_child=2,
        ) as ex,
    ):
        _through_recycle_and_crash(ex, lambda token: kind.use(ex, obj, token))


@pytest.mark.timeout(180)
def test_manager_proxy_reaches_every_worker(start_method: str, pool_context: BaseContext) -> None:
    managed = _ManagedDict(pool_context)
    try:
        with Executor(
            1,
            start_method=start_method,
            initializer=worker.keep,
            initargs=(managed.proxy,),
            max_tasks_per_child=2,
        ) as ex:
            _through_recycle_and_crash(ex, lambda token: _use_proxy(ex, managed.proxy, token))
    finally:
        managed.release()


def _use_many(ex: Executor, objects: tuple[Any, Any, Any], token: int) -> int:
    lock, queue, value = objects
    before = value.value
    with lock:  # the worker waits for it: the task cannot finish while the parent holds it
        future = ex.submit(worker.use_many, token)
        assert not future.done()
    pid = _result(future)
    assert queue.get() == (token, pid)
    assert value.value == before + 1
    return int(pid)


@pytest.mark.timeout(120)
def test_objects_reach_replacements_of_time_limits_and_stop(
    start_method: str, pool_context: BaseContext, tmp_path: Path
) -> None:
    # The workers are killed only once the FIFO says their put is over: a worker killed
    # while it holds the queue's write lock would leave that lock taken for every process
    # (as under the standard library).
    ctx: Any = pool_context
    objects = (ctx.Lock(), ctx.SimpleQueue(), ctx.Value("i", 0))
    _, queue, value = objects
    with Executor(
        1, start_method=start_method, initializer=worker.keep_many, initargs=objects
    ) as ex:
        first = _use_many(ex, objects, 1)
        limit_gate = Gate(tmp_path, "limit")
        limited = ex.with_options(timeout=3).submit(worker.announce_and_sleep, 2, limit_gate.ready)
        assert limit_gate.wait_started() == first
        assert queue.get() == (2, first)
        with pytest.raises(TaskTimeoutError):
            _result(limited)
        after_limit = _use_many(ex, objects, 3)
        assert after_limit != first
        stop_gate = Gate(tmp_path, "stop")
        stopped = ex.submit(worker.announce_and_sleep, 4, stop_gate.ready)
        assert stop_gate.wait_started() == after_limit
        assert queue.get() == (4, after_limit)
        ex.stop(stopped)
        with pytest.raises(TaskStopped):
            _result(stopped)
        after_stop = _use_many(ex, objects, 5)
        assert after_stop not in (first, after_limit)
    assert value.value == 3
    if hasattr(queue, "close"):
        queue.close()


def test_the_same_object_twice_arrives_once(start_method: str, pool_context: BaseContext) -> None:
    lock = pool_context.Lock()  # type: ignore[attr-defined]
    with Executor(
        1, start_method=start_method, initializer=worker.keep_many, initargs=(lock, lock)
    ) as ex:
        assert _result(ex.submit(worker.same_objects)) is True


def test_objects_inside_containers_and_partials(
    start_method: str, pool_context: BaseContext
) -> None:
    ctx: Any = pool_context
    value = ctx.Value("i", 0)
    initializer = functools.partial(worker.keep_many, {"counter": [value]})
    with Executor(1, start_method=start_method, initializer=initializer) as ex:
        _result(ex.submit(_add_through_container, 7))
    assert value.value == 7


def _add_through_container(amount: int) -> None:
    (holder,) = worker.kept["objects"]
    counter = holder["counter"][0]
    with counter.get_lock():
        counter.value += amount


# ---------------------------------------------------- objects of the default context


_DEFAULT_IS_FORK = multiprocessing.get_start_method() == "fork"


@pytest.mark.skipif(not _DEFAULT_IS_FORK, reason="multiprocessing's default is not fork")
@pytest.mark.parametrize("kind_name", ["Lock", "Queue", "Value"])
def test_fork_context_objects_choose_fork_when_no_method_is_given(kind_name: str) -> None:
    # multiprocessing.Lock() before Python 3.14 on Linux: only a forked child can use it,
    # and the standard library's pool forks by default there.
    kind = KINDS[kind_name]
    with (
        _made(kind, multiprocessing.get_context()) as obj,
        Executor(1, initializer=worker.keep, initargs=(obj,), max_tasks_per_child=2) as ex,
    ):
        assert ex.start_method == "fork"
        _through_recycle_and_crash(ex, lambda token: kind.use(ex, obj, token))


def test_without_such_objects_the_default_method_stays() -> None:
    ctx: Any = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    with Executor(1, initializer=worker.keep, initargs=(lock,)) as ex:
        assert ex.start_method == poolkit_default()
        assert _result(ex.submit(worker.try_acquire))[0] is True


def poolkit_default() -> str:
    import poolkit

    return poolkit.default_start_method()


@pytest.mark.skipif(not _DEFAULT_IS_FORK, reason="multiprocessing's default is not fork")
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_fork_context_object_for_another_method_is_named_at_construction(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available")
    queue = multiprocessing.Queue()
    with pytest.raises(TypeError) as info:
        Executor(1, start_method=method, initializer=worker.keep_many, initargs=(1, queue))
    message = str(info.value)
    del info  # its frames hold the queue, whose pipe the leak check must not find open
    assert "initargs[1]" in message
    assert "multiprocessing.queues.Queue" in message
    assert f"get_context({method!r})" in message
    assert not [t for t in threading.enumerate() if t.name == "poolkit-dispatcher"]
    del queue
    gc.collect()


_NOT_FORK = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("method", _NOT_FORK)
def test_an_unpicklable_initarg_is_named(method: str) -> None:
    with pytest.raises(TypeError, match=r"initargs\[2\] \(a _thread\.lock\) cannot be pickled"):
        Executor(
            1,
            start_method=method,
            initializer=worker.keep_many,
            initargs=(1, "two", threading.Lock()),
        )


@pytest.mark.parametrize("method", _NOT_FORK)
def test_an_unpicklable_initializer_is_named(method: str) -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"the initializer \(partial\(.*keep\)\) cannot be"):
        Executor(1, start_method=method, initializer=functools.partial(worker.keep, lock))


@pytest.mark.parametrize("method", [None, "fork"])
def test_unpicklable_initargs_are_inherited_under_fork(method: Optional[str]) -> None:
    # As with the standard library's fork pools, nothing is pickled under fork: the
    # workers, replacements included, inherit the initargs. Without a start method, the
    # pool uses fork for them (the standard library's default before 3.14).
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork is not available")
    lock = threading.Lock()
    with Executor(
        1,
        start_method=method,
        initializer=worker.keep,
        initargs=(lock,),
        max_tasks_per_child=2,
    ) as ex:
        assert ex.start_method == "fork"
        _through_recycle_and_crash(ex, lambda token: _check_inherited_lock(ex))


def _check_inherited_lock(ex: Executor) -> int:
    kind, pid = _result(ex.submit(worker.kind_of_kept))
    assert kind == "_thread.lock"
    return int(pid)


def test_tqdm_lock_travels_without_a_start_method() -> None:
    # tqdm.contrib.concurrent.process_map's pattern: its write lock (a multiprocessing
    # RLock of the default context, and a threading RLock) as initargs.
    tqdm = pytest.importorskip("tqdm")
    lock = tqdm.tqdm.get_lock()
    with Executor(1, initializer=tqdm.tqdm.set_lock, initargs=(lock,)) as ex:
        assert _result(ex.submit(worker.tqdm_lock_kind)) == "TqdmDefaultWriteLock"


def test_the_fork_bound_check_without_multiprocessing_internals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The check borrows multiprocessing's spawning slot (CPython 3.9-3.13). With it, a
    # fork-context lock is found fork-bound and the slot is left as it was; without it,
    # nothing is (a worker's start then reports the object), and nothing raises.
    import multiprocessing.context

    from poolkit._pickling.initargs import fork_bound

    lock = multiprocessing.get_context("fork").Lock()
    assert fork_bound((lock,)) == [lock]
    assert multiprocessing.context.get_spawning_popen() is None
    monkeypatch.delattr(multiprocessing.context, "set_spawning_popen")
    assert fork_bound((lock,)) == []
