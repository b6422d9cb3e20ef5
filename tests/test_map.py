"""map and starmap: laziness, early exit, unordered results, auto chunks, errors, progress."""

from __future__ import annotations

import itertools
import pickle
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import map_tasks
import pytest
import tasks
from fifo import Gate

import poolkit
from poolkit import Executor, WorkerCrashedError
from poolkit._map import chunking as _chunking
from poolkit._map import driver as _map


class Counting:
    """An iterator that counts how many items were taken from it."""

    def __init__(self, source: Iterator[Any]) -> None:
        self.source = source
        self.taken = 0

    def __iter__(self) -> Counting:
        return self

    def __next__(self) -> Any:
        value = next(self.source)
        self.taken += 1
        return value


def no_work_left(ex: Executor) -> bool:
    """Every task still queued in the pool was cancelled."""
    return all(task.future.cancelled() for task in list(ex._dispatcher.pending))


@pytest.fixture
def auto_sizers(monkeypatch: pytest.MonkeyPatch) -> list[_chunking.AutoChunks]:
    """Every AutoChunks a map creates, to look at the sizes it chose."""
    made: list[_chunking.AutoChunks] = []

    class Recording(_chunking.AutoChunks):
        def __init__(self, workers: int) -> None:
            super().__init__(workers)
            self.all_sizes: list[int] = []
            made.append(self)

        def next_size(self, remaining: Any) -> int:
            size = super().next_size(remaining)
            self.all_sizes.append(size)
            return size

    monkeypatch.setattr(_map, "AutoChunks", Recording)
    return made


# ------------------------------------------------------------------ lazy and bounded


@pytest.mark.parametrize("ordered", [True, False])
def test_endless_input_is_read_lazily(start_method: str, ordered: bool) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        source = Counting(itertools.count())
        results = ex.map(tasks.square, source, ordered=ordered)
        got = [next(results) for _ in range(300)]
        results.close()
        if ordered:
            assert got == [i * i for i in range(300)]
        else:
            assert len(set(got)) == 300
        # Memory is bounded: what was read beyond the consumed items fits in the buffer.
        assert source.taken <= 300 + 8 * _chunking.AUTO_MAX_ITEMS

        source = Counting(itertools.count())
        results = ex.map(tasks.square, source, chunksize=5, buffersize=3, ordered=ordered)
        assert len([next(results) for _ in range(50)]) == 50
        results.close()
        assert source.taken <= 50 + 3 * 5 + 5
        assert no_work_left(ex)


def test_what_is_read_at_the_call(
    start_method: str, auto_sizers: list[_chunking.AutoChunks]
) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        source = Counting(iter(range(100000)))
        ex.map(tasks.square, source).close()  # default: 4 chunks per worker
        sizes = auto_sizers[-1].all_sizes
        assert len(sizes) == _map.BUFFER_CHUNKS_PER_WORKER * 2
        assert sizes[0] == 1 and source.taken == sum(sizes)
        source = Counting(iter(range(1000)))
        ex.map(tasks.square, source, buffersize=3).close()  # the stdlib spelling: chunksize 1
        assert source.taken == 3
        source = Counting(iter(range(1000)))
        results = ex.map(tasks.square, source, buffersize=None)  # no bound: all read now
        assert source.taken == 1000
        assert list(results) == [i * i for i in range(1000)]


# ------------------------------------------------------------------------ early exit


def test_break_close_and_consumer_error_cancel_the_rest(start_method: str, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    with Executor(max_workers=2, start_method=start_method) as ex:
        for way in ("break", "close", "raise"):
            log.write_text("")
            results = ex.map(map_tasks.record, itertools.repeat(str(log)), range(1000))
            consumed = 0
            try:
                for _ in results:
                    consumed += 1
                    if consumed == 3:
                        if way == "raise":
                            raise RuntimeError("the caller gave up")
                        if way == "break":
                            break
                        results.close()
            except RuntimeError:
                pass
            results.close()
            assert no_work_left(ex)
            # The pool is clean and usable, and only the chunks already running ran.
            assert list(ex.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]
            ran = len(log.read_text().split())
            assert consumed <= ran <= consumed + 2 * 2, way


def test_a_dropped_iterator_cancels_its_chunks(start_method: str) -> None:
    with Executor(max_workers=1, start_method=start_method) as ex:
        for value in ex.map(map_tasks.slow_square, range(1000)):
            assert value == 0
            break  # the loop's iterator is dropped (and closed) here
        assert no_work_left(ex)
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9


# --------------------------------------------------------------------------- unordered


def test_unordered_yields_results_as_they_complete(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(
            map_tasks.wait_at_zero,
            range(6),
            itertools.repeat(gate.ready),
            itertools.repeat(gate.release),
            chunksize=1,
            ordered=False,
        )
        gate.wait_started()
        # Item 0 is blocked in a worker: the others come first.
        assert sorted(next(results) for _ in range(5)) == [1, 2, 3, 4, 5]
        gate.open()
        assert next(results) == 0
        assert list(results) == []


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_timeout_is_a_deadline(start_method: str, tmp_path: Path, ordered: bool) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(
            map_tasks.wait_at_zero,
            range(3),
            itertools.repeat(gate.ready),
            itertools.repeat(gate.release),
            chunksize=1,
            ordered=ordered,
            timeout=0.5,
        )
        gate.wait_started()
        if not ordered:  # items 1 and 2 come first; ordered, blocked item 0 comes first
            assert sorted([next(results), next(results)]) == [1, 2]
        with pytest.raises(futures.TimeoutError):
            next(results)
        gate.open()
        assert ex.submit(tasks.square, 2).result(timeout=30) == 4


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_consumer_waiting_for_a_chunk_wakes_when_shutdown_cancels_it(
    start_method: str, tmp_path: Path, ordered: bool
) -> None:
    gate = Gate(tmp_path)
    with Executor(max_workers=1, start_method=start_method) as ex:
        blocker = ex.submit(tasks.signal_and_wait, *gate.args)
        gate.wait_started()
        # The only worker is busy: every chunk of this map waits in the queue.
        results = ex.map(tasks.square, range(3), chunksize=1, ordered=ordered)
        outcome: list[BaseException] = []

        def consume() -> None:
            try:
                next(results)
            except BaseException as exc:
                outcome.append(exc)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        if ordered:
            # Cancel only once the consumer waits for the first chunk: the wakeup is the test.
            (run,) = list(ex._live_maps)
            while run.awaited is None and consumer.is_alive():
                consumer.join(timeout=0.01)
        ex.shutdown(wait=False, cancel_futures=True)
        consumer.join(timeout=30)
        assert not consumer.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], futures.CancelledError)
        gate.open()
        assert blocker.result(timeout=30) > 0


# -------------------------------------------------------------------------- auto chunks


def test_auto_chunks_grow_for_tiny_tasks_and_stay_single_for_long_ones(
    start_method: str, auto_sizers: list[_chunking.AutoChunks]
) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert list(ex.map(tasks.square, range(20000))) == [i * i for i in range(20000)]
        tiny = auto_sizers[-1].all_sizes
        assert tiny[0] == 1 and max(tiny) >= 256
        assert list(ex.map(map_tasks.slow_square, range(12))) == [i * i for i in range(12)]
        assert set(auto_sizers[-1].all_sizes) == {1}
        # The stdlib spelling and max_tasks_per_child keep chunksize 1: no AutoChunks made.
        made = len(auto_sizers)
        list(ex.map(tasks.square, range(100), buffersize=4))
        assert len(auto_sizers) == made
    with Executor(max_workers=1, max_tasks_per_child=5, start_method=start_method) as ex:
        assert list(ex.map(tasks.square, range(12))) == [i * i for i in range(12)]
        assert len(auto_sizers) == made


def test_auto_chunk_sizes_follow_measurements() -> None:
    auto = _chunking.AutoChunks(workers=2)
    assert auto.next_size(None) == 1  # nothing measured yet
    auto.observe(1, 1e-6)
    assert auto.next_size(None) == _chunking.AUTO_GROWTH  # grows step by step
    for size in (8, 64, 512, 4096):
        auto.observe(size, size * 1e-7)
    assert auto.next_size(None) == _chunking.AUTO_MAX_ITEMS  # huge chunks are capped
    assert auto.next_size(10**9) == _chunking.AUTO_MAX_ITEMS
    assert auto.next_size(100) == 100  # 10 µs of work: one chunk, not split for balance
    for _ in range(40):  # the tasks became slow: 5 ms each
        auto.observe(2, 0.01)
    assert auto.next_size(None) == int(_chunking.AUTO_TARGET_SECONDS / 0.005)
    auto.observe_bytes(10, 10 * _chunking.AUTO_MAX_BYTES)  # huge arguments
    for _ in range(20):
        auto.observe(1, 1e-7)
    assert auto.next_size(None) == 1


def test_auto_chunks_share_the_tail_down_to_a_floor_of_work() -> None:
    auto = _chunking.AutoChunks(workers=2)
    for _ in range(10):
        auto.observe(64, 64 * 1e-4)  # 0.1 ms per item: 200 items make the 20 ms target
    per_item = auto.seconds_per_item
    assert per_item == pytest.approx(1e-4)
    assert auto.next_size(None) == int(_chunking.AUTO_TARGET_SECONDS / per_item)  # ~200
    assert auto.next_size(100) == 25  # the tail is shared among the workers (100 / (2*2))
    floor = int(_chunking.AUTO_TAIL_SECONDS / per_item)  # ~20 items: 2 ms of work
    assert 15 < floor < 60
    assert auto.next_size(60) == floor  # a share of 15 would be shorter than the floor
    assert auto.next_size(7) == 7  # never more than what is left


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("chunksize", [4, "auto"])
def test_error_is_raised_at_its_item_with_its_index(start_method: str, chunksize: Any) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(map_tasks.fail_at, range(100), itertools.repeat(6), chunksize=chunksize)
        assert [next(results) for _ in range(6)] == [0, 1, 2, 3, 4, 5]
        with pytest.raises(KeyError, match="item 6 is bad") as info:
            next(results)
        error = info.value
        assert error.map_index == 6  # type: ignore[attr-defined]
        assert isinstance(error.__cause__, poolkit.RemoteTraceback)
        assert "in fail_at" in str(error.__cause__)
        if sys.version_info >= (3, 11):
            assert "(poolkit: raised by map item 6: map_tasks.fail_at(6, 6))" in error.__notes__
        else:
            assert "raised by map item 6: map_tasks.fail_at(6, 6)" in str(error.__cause__)
        assert list(results) == []
        assert no_work_left(ex)
        assert list(ex.starmap(map_tasks.fail_at, [(1, 0), (2, 0)])) == [1, 2]


def test_what_cannot_be_pickled_fails_at_its_item(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(map_tasks.unpicklable_result_at, range(10), [3] * 10, chunksize=5)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(TypeError, match="pickle") as info:
            next(results)
        assert info.value.map_index == 3  # type: ignore[attr-defined]

        arguments = [1, 2, threading.Lock(), 4]
        results = ex.map(tasks.echo, arguments, chunksize=4)
        assert [next(results) for _ in range(2)] == [1, 2]
        with pytest.raises(pickle.PicklingError, match="map item 2") as raised:
            next(results)
        assert raised.value.map_index == 2  # type: ignore[attr-defined]

        results = ex.starmap(tasks.raise_unpicklable, [(), ()], chunksize=2)
        with pytest.raises(pickle.PicklingError, match="could not be sent") as raised:
            list(results)
        assert raised.value.map_index == 0  # type: ignore[attr-defined]


def test_crash_fails_its_chunk_and_the_pool_goes_on(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(map_tasks.crash_at, range(40), [13] * 40, chunksize=5)
        assert [next(results) for _ in range(10)] == list(range(10))
        with pytest.raises(WorkerCrashedError, match="exited with code 3") as info:
            next(results)
        assert info.value.map_index == 10  # type: ignore[attr-defined]
        if sys.version_info >= (3, 11):
            assert any("map items 10 to 14" in note for note in info.value.__notes__)
        assert list(ex.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("ordered", [True, False])
def test_progress_callback_counts_items(start_method: str, ordered: bool) -> None:
    calls: list[int] = []
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = list(
            ex.map(tasks.square, range(50), chunksize=7, ordered=ordered, progress=calls.append)
        )
        assert sorted(results) == [i * i for i in range(50)]
        assert sum(calls) == 50 and len(calls) == 8  # one call per chunk, counting items
        calls.clear()
        results = ex.map(map_tasks.fail_at, range(50), [9] * 50, chunksize=5, progress=calls.append)
        with pytest.raises(KeyError):
            list(results)
        assert sum(calls) == 9  # the items done before the failure


def test_progress_bar_with_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    with Executor(max_workers=2) as ex:
        assert len(list(ex.map(tasks.square, range(500), progress=True))) == 500
    assert "500/500" in capsys.readouterr().err


def test_progress_bar_without_tqdm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # makes the import fail
    with Executor(max_workers=1) as ex:
        with pytest.raises(ImportError, match=r"poolkit\[progress\]"):
            ex.map(tasks.square, range(3), progress=True)
        with pytest.raises(TypeError, match="progress must be"):
            ex.map(tasks.square, range(3), progress=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="chunksize must be an int or 'auto'"):
            ex.map(tasks.square, range(3), chunksize="big")
        assert list(ex.map(tasks.square, range(3), chunksize="auto")) == [0, 1, 4]


# ---------------------------------------------------------------------------- starmap


def test_starmap(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        assert list(ex.starmap(pow, [(2, 5), (3, 2)])) == [32, 9]
        pairs = ((i, 2) for i in range(100))
        assert sorted(ex.starmap(pow, pairs, ordered=False)) == [i * i for i in range(100)]
        assert list(ex.starmap(tasks.add, [[1], [1, 2]], chunksize=2)) == [1, 3]
        results = ex.starmap(tasks.add, [(1,), 5, (2,)], chunksize=3)
        assert next(results) == 1
        with pytest.raises(TypeError) as info:
            next(results)
        assert info.value.map_index == 1  # type: ignore[attr-defined]


def test_results_after_shutdown_then_a_clear_error(start_method: str) -> None:
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(tasks.square, range(100), chunksize=2, buffersize=3)
    # The chunks in flight at shutdown ran; then the map cannot go on, and says why.
    assert [next(results) for _ in range(6)] == [i * i for i in range(6)]
    with pytest.raises(RuntimeError, match="shut down while this map still had input"):
        next(results)
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(tasks.square, range(100), buffersize=None)
    assert list(results) == [i * i for i in range(100)]  # everything was submitted


def test_an_input_that_raises_runtime_error_is_not_taken_for_a_shutdown() -> None:
    def items() -> Iterator[int]:
        yield from range(4)
        raise RuntimeError("the input broke")

    with Executor(max_workers=1) as ex:
        # One chunk in flight: the input fails while results are read, not in the call.
        results = ex.map(tasks.square, items(), chunksize=2, buffersize=1)
        # The results before the input failed, then the input's own error, unchanged.
        assert [next(results) for _ in range(4)] == [0, 1, 4, 9]
        with pytest.raises(RuntimeError) as info:
            next(results)
    assert str(info.value) == "the input broke"


def test_the_executor_provides_what_map_uses() -> None:
    # mypy checks both executor classes against the contract; this checks an instance.
    from poolkit._map.host import MapHost

    with Executor(max_workers=1) as ex:
        assert isinstance(ex, MapHost)


def test_map_over_a_list_read_after_the_with_block(start_method: str) -> None:
    # Drop-in code: map inside the block, results read after it (the stdlib submitted all).
    with Executor(max_workers=2, start_method=start_method) as ex:
        results = ex.map(tasks.square, list(range(3000)))
        pairs = ex.map(pow, range(500), [2] * 500)
    assert list(results) == [i * i for i in range(3000)]
    assert list(pairs) == [i * i for i in range(500)]
