"""submit, map and the concurrent.futures protocol, under every start method."""

from __future__ import annotations

import asyncio
import itertools
import operator
from concurrent import futures

import pytest
import tasks

import poolkit
from poolkit import Executor


@pytest.mark.smoke
def test_issue_example(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert ex.submit(lambda x: x * 2, 21).result() == 42
        assert list(ex.map(pow, [2, 3], [5, 2])) == [32, 9]


def test_closures_and_local_functions(start_method: str) -> None:
    offset = 10

    def local(x: int) -> int:
        return x + offset

    class LocalValue:
        def __init__(self, v: int) -> None:
            self.v = v

    with Executor(max_workers=2, start_method=start_method) as ex:
        assert ex.submit(local, 5).result() == 15
        assert ex.submit(lambda v: v.v * 2, LocalValue(4)).result() == 8
        assert list(ex.map(local, range(3))) == [10, 11, 12]


def test_submit_passes_arguments_through(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        assert ex.submit(tasks.add, 1, 2, c=3).result() == 6
        # Keyword names that are the executor's own parameter names reach the function.
        assert ex.submit(lambda **kw: sorted(kw), fn=1, self=2).result() == ["fn", "self"]
        with pytest.raises(TypeError):
            ex.submit(fn=tasks.add, a=1)  # type: ignore[call-arg]


def test_returns_real_futures(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        fs = [ex.submit(tasks.square, i) for i in range(10)]
        assert all(isinstance(f, futures.Future) for f in fs)
        assert sorted(f.result() for f in futures.as_completed(fs, timeout=30)) == [
            i * i for i in range(10)
        ]
        done, not_done = futures.wait(fs, timeout=30)
        assert len(done) == 10 and not not_done

        async def use_asyncio() -> list[int]:
            loop = asyncio.get_running_loop()
            wrapped = await asyncio.wrap_future(ex.submit(tasks.square, 7))
            via_loop = await loop.run_in_executor(ex, tasks.square, 8)
            return [wrapped, via_loop]

        assert asyncio.run(use_asyncio()) == [49, 64]


def test_workers_are_persistent(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        pids = {f.result() for f in [ex.submit(tasks.getpid) for _ in range(50)]}
        assert 1 <= len(pids) <= 2
        more = {f.result() for f in [ex.submit(tasks.getpid) for _ in range(50)]}
        assert len(pids | more) <= 2  # the same processes served both rounds


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_map_matches_builtin(start_method: str, chunksize: int) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert list(ex.map(tasks.square, range(50), chunksize=chunksize)) == [
            i * i for i in range(50)
        ]
        assert list(ex.map(operator.add, range(5), range(10, 20), chunksize=chunksize)) == [
            10,
            12,
            14,
            16,
            18,
        ]
        assert list(ex.map(tasks.square, [], chunksize=chunksize)) == []


def test_many_small_tasks(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        fs = [ex.submit(tasks.square, i) for i in range(5000)]
        assert [f.result() for f in fs] == [i * i for i in range(5000)]


def test_map_exception_raised_at_its_position(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(tasks.divide, [1, 2, 3, 4], [1, 1, 0, 1])
        assert next(results) == 1
        assert next(results) == 2
        with pytest.raises(ZeroDivisionError):
            next(results)


def test_map_buffersize_reads_input_lazily(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        endless = itertools.count()
        results = ex.map(tasks.square, endless, buffersize=4)
        assert [next(results) for _ in range(20)] == [i * i for i in range(20)]
        results.close()
        # Input items read so far: the 20 consumed plus at most buffersize more.
        assert 20 <= next(endless) <= 25

        source = iter(range(10))
        ex.map(tasks.square, source, buffersize=2)
        assert next(source) == 2  # exactly `buffersize` items were taken at the call


def test_map_timeout_is_a_deadline(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(tasks.sleep_then, [0, 30], [1, 2], timeout=1.0)
        assert next(results) == 1
        with pytest.raises(futures.TimeoutError):
            next(results)
        ex.shutdown(wait=False, cancel_futures=True)
        ex.kill_workers()  # do not wait 30 s for the sleeping task


def test_default_start_method() -> None:
    assert poolkit.default_start_method() == poolkit.start_methods()[0]
    with Executor(max_workers=1) as ex:
        assert ex.start_method == poolkit.default_start_method()
        assert ex.submit(tasks.square, 3).result() == 9


@pytest.mark.smoke
def test_mp_context_is_accepted(start_method: str) -> None:
    import multiprocessing

    with Executor(2, multiprocessing.get_context(start_method)) as ex:
        assert ex.start_method == start_method
        assert ex.submit(tasks.square, 4).result() == 16


def test_submit_from_many_threads(start_method: str) -> None:
    import threading

    with Executor(max_workers=2, start_method=start_method) as ex:
        results: dict[int, list[int]] = {}

        def client(n: int) -> None:
            fs = [ex.submit(tasks.add, n, i) for i in range(200)]
            results[n] = [f.result(timeout=60) for f in fs]

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {n: [n + i for i in range(200)] for n in range(8)}
