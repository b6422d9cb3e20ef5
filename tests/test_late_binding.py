"""Late binding: no task waits behind another while a worker is idle; a prefetched task can be
taken back (cancelled, outranked by a priority, run elsewhere), and never runs twice.

No timing assertion: tasks log ``label pid`` as they start, a gate task blocks on a FIFO
until the test opens it, and the assertions are about who ran what, in which order. The
warm-up makes the pool measure tasks as short, so that it prefetches.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from pathlib import Path

import late_tasks
import pytest
from fifo import Gate

import poolkit

#: Generous bound on waits that must end with the code right: a hang detector, not a timing.
HANG = 30


def _warm(ex: poolkit.Executor) -> None:
    for future in [ex.submit(late_tasks.noop) for _ in range(200)]:
        future.result()


def _as_one_batch(ex: poolkit.Executor, calls: list[tuple]) -> list[cf.Future]:  # type: ignore[type-arg]
    """Submit ``calls`` while the dispatcher is held, so it hands them out together: the
    first to an idle worker, the others prefetched behind it (made deterministic here)."""
    with ex._dispatcher._lock:
        return [ex.submit(*call) for call in calls]


def _prefetched(ex: poolkit.Executor) -> int:
    """How many tasks workers hold pending (prefetched, not known started)."""
    workers = list(ex._dispatcher._workers.values())
    return sum(1 for w in workers for t in list(w.assigned) if t.board is not None)


def test_short_tasks_start_on_the_idle_worker_while_a_long_one_runs(
    start_method: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    gate = Gate(tmp_path)
    with poolkit.Executor(2, start_method=start_method) as ex:
        _warm(ex)
        long, *shorts = _as_one_batch(
            ex,
            [(late_tasks.log_then_wait, log, "long", *gate.args)]
            + [(late_tasks.log_start, log, f"s{i}") for i in range(40)],
        )
        long_pid = gate.wait_started()
        # Every short task finishes while the long one still blocks: none waits behind it.
        not_done = cf.wait(shorts, timeout=HANG).not_done
        gate.open()
        assert not not_done, f"{len(not_done)} short tasks waited behind the long one"
        assert long.result() == long_pid
    ran = late_tasks.read_log(log)
    short_pids = {pid for label, pid in ran if label != "long"}
    assert long_pid not in short_pids
    assert sorted(label for label, _ in ran) == sorted(["long"] + [f"s{i}" for i in range(40)])


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
def test_a_prefetched_task_is_not_running_and_can_be_cancelled(
    start_method: str, tmp_path: Path, how: str
) -> None:
    log = str(tmp_path / "log")
    gate = Gate(tmp_path)
    ex = poolkit.Executor(1, start_method=start_method)
    try:
        _warm(ex)
        blocker, *waiting = _as_one_batch(
            ex,
            [(late_tasks.log_then_wait, log, "blocker", *gate.args)]
            + [(late_tasks.log_start, log, f"w{i}") for i in range(20)],
        )
        gate.wait_started()
        prefetched = _prefetched(ex)
        assert blocker.running()  # bound to the idle worker, and started
        assert not any(f.running() for f in waiting)
        if how == "cancel":
            assert all(f.cancel() for f in waiting)
        else:
            ex.shutdown(wait=False, cancel_futures=True)
        gate.open()
        assert blocker.result(timeout=HANG)
        ex.shutdown(wait=True)
        assert all(f.cancelled() for f in waiting)
        assert cf.wait(waiting, timeout=HANG).not_done == set()  # waiters were told
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    assert [label for label, _ in late_tasks.read_log(log)] == ["blocker"]
    # The test is about prefetched tasks: the pool did prefetch some of them.
    assert prefetched > 0


def test_priority_order_holds_over_prefetched_tasks(start_method: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    gate = Gate(tmp_path)
    with poolkit.Executor(1, start_method=start_method) as ex:
        _warm(ex)
        blocker, *lows = _as_one_batch(
            ex,
            [(late_tasks.log_then_wait, log, "blocker", *gate.args)]
            + [(late_tasks.log_start, log, f"low{i}") for i in range(6)],
        )
        gate.wait_started()
        prefetched = _prefetched(ex)
        mid = ex.with_options(priority=1).submit(late_tasks.log_start, log, "mid")
        high = [
            ex.with_options(priority=5).submit(late_tasks.log_start, log, f"high{i}")
            for i in range(3)
        ]
        mapped = ex.map(late_tasks.log_item, [log] * 3, ["map0", "map1", "map2"], priority=3)
        below = ex.with_options(priority=-1).submit(late_tasks.log_start, log, "below")
        gate.open()
        assert blocker.result(timeout=HANG)
        assert list(mapped) == ["map0", "map1", "map2"]
        cf.wait([*lows, mid, *high, below], timeout=HANG)
    order = [label for label, _ in late_tasks.read_log(log)]
    expected = ["blocker", "high0", "high1", "high2", "map0", "map1", "map2", "mid"]
    expected += [f"low{i}" for i in range(6)] + ["below"]
    assert order == expected
    assert prefetched > 0


def test_priority_must_be_an_int() -> None:
    with poolkit.Executor(1) as ex:
        with pytest.raises(TypeError):
            ex.with_options(priority=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ex.map(late_tasks.noop, [1], priority="high")  # type: ignore[arg-type]


def test_no_task_runs_twice_with_deaths_stops_and_cancels(
    start_method: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    count = 300
    with poolkit.Executor(2, start_method=start_method) as ex:
        _warm(ex)
        futures = [
            ex.submit(late_tasks.log_maybe_die, log, f"t{i}", i % 37 == 5) for i in range(count)
        ]
        # Stop and cancel some while others run, are prefetched or still queued.
        for i in range(0, count, 11):
            ex.stop(futures[i])
        cancelled = {i for i in range(3, count, 13) if futures[i].cancel()}
        cf.wait(futures, timeout=HANG)
    assert all(f.done() for f in futures)
    starts = collections.Counter(label for label, _ in late_tasks.read_log(log))
    twice = [label for label, n in starts.items() if n > 1]
    assert not twice, f"ran more than once: {twice}"
    for i, future in enumerate(futures):
        if i in cancelled:
            assert future.cancelled() and starts[f"t{i}"] == 0
        elif not future.cancelled() and future.exception() is None:
            assert starts[f"t{i}"] == 1  # a result means it ran, once


def test_pending_queue_orders_by_priority_then_submission() -> None:
    from concurrent.futures import Future

    from poolkit._pool.pending import PendingQueue
    from poolkit._pool.tasks import TaskState

    def task(task_id: int, priority: int = 0) -> TaskState:
        made = TaskState(task_id, Future(), (), "f")
        made.priority = priority
        return made

    queue = PendingQueue()
    for made in (task(1), task(2, 3), task(3), task(4, -1), task(5, 3)):
        queue.append(made)
    assert queue.top_priority() == 3 and len(queue) == 5
    first = queue.popleft()
    assert first.task_id == 2
    queue.requeue([task(0), first])  # taken back: to the front of each priority, by id
    assert [t.task_id for t in queue] == [2, 5, 0, 1, 3, 4]
    assert [t.task_id for t in queue.take_out(lambda t: t.task_id % 2 == 1)] == [5, 1, 3]
    assert [queue.popleft().task_id for _ in range(len(queue))] == [2, 0, 4]
    assert not queue and queue.top_priority() is None


def test_the_slot_keeps_the_last_started_task_apart_from_the_skip_list() -> None:
    # The worker writes the id of each task it takes; the parent's requests to skip a task
    # (stop()) live in other words of the same slot: neither may overwrite the other.
    from poolkit._wire.slots import RunningSlot

    slot = RunningSlot()
    try:
        slot.add_skip(7)
        slot.started = 12345
        assert slot.should_skip(7)
        assert not slot.should_skip(12345)
        slot.add_skip(8)
        assert slot.started == 12345
        assert slot.should_skip(8)
    finally:
        slot.close()
