"""The parent's side of the round-trip profile: timestamps around one task at a time.

While :func:`instrumented_run` measures, :class:`ParentProbe` replaces the patch points of
the parent (:mod:`.patch_points`): the direct-send switch, ``Future``'s two transitions (each
future keeps its own stamps, so they belong to the right task whatever thread runs them) and
the ``os`` pipe calls (kept in lists; a row takes the first call after its previous stage, as
only one task is in flight). The worker's stamps come back as the task's result
(:mod:`.stamps`). Rows are assembled after the run, once every thread has finished stamping.
"""

from __future__ import annotations

import bisect
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Optional

from benchmarks.roundtrip import patch_points as points
from benchmarks.roundtrip.stamps import WorkerStamps, stamp
from poolkit import Executor

clock = time.perf_counter_ns
_CLAIM_KEY, _SETTLE_KEY = "_roundtrip_claim", "_roundtrip_settle"


class ParentProbe:
    """Timers at the parent's patch points, for one instrumented run."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.caller = threading.get_ident()
        #: The direct-send decision of the task being submitted: (start, end, sent).
        self.decision: Optional[tuple[int, int, bool]] = None
        self.writev: list[tuple[int, int]] = []  #: (start, end) of every os.writev
        self.wakes: list[tuple[int, int]] = []  #: (start, end) of the caller's os.write
        self.reads: list[tuple[int, int]] = []  #: (end, thread) of every os.read with data

    def take_decision(self) -> Optional[tuple[int, int, bool]]:
        """The direct-send decision of the task just submitted (None: none was seen)."""
        decision, self.decision = self.decision, None
        return decision

    def install(self) -> points.Patches:
        """Replace the parent's patch points; the returned patches put them back."""
        probe, patches = self, points.Patches()
        now, ident = clock, threading.get_ident

        def direct_send(send: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
            def timed(dispatcher: Any, task: Any) -> bool:
                start = now()
                sent = send(dispatcher, task)
                if ident() == probe.caller:
                    probe.decision = (start, now(), sent)
                return sent

            def refused(dispatcher: Any, task: Any) -> bool:
                if ident() == probe.caller:
                    probe.decision = (now(), 0, False)
                return False

            return refused if probe.mode == "queued" else timed

        def claim(method: Callable[[Future[Any]], bool]) -> Callable[[Future[Any]], bool]:
            def timed(future: Future[Any]) -> bool:
                start = now()
                claimed = method(future)
                vars(future)[_CLAIM_KEY] = (start, now())
                return claimed

            return timed

        def settle(
            method: Callable[[Future[Any], Any], None],
        ) -> Callable[[Future[Any], Any], None]:
            def timed(future: Future[Any], result: Any) -> None:
                start = now()
                method(future, result)
                vars(future)[_SETTLE_KEY] = (start, now(), ident())

            return timed

        def writev(call: Callable[[int, Any], int]) -> Callable[[int, Any], int]:
            def timed(fd: int, buffers: Any) -> int:
                start = now()
                written = call(fd, buffers)
                probe.writev.append((start, now()))
                return written

            return timed

        def write(call: Callable[[int, Any], int]) -> Callable[[int, Any], int]:
            def timed(fd: int, data: Any) -> int:
                start = now()
                written = call(fd, data)
                if ident() == probe.caller:
                    probe.wakes.append((start, now()))
                return written

            return timed

        def read(call: Callable[[int, int], bytes]) -> Callable[[int, int], bytes]:
            def timed(fd: int, size: int) -> bytes:
                data = call(fd, size)
                if data:
                    probe.reads.append((now(), ident()))
                return data

            return timed

        patches.replace(points.DIRECT_SEND, direct_send)
        patches.replace(points.CLAIM, claim)
        patches.replace(points.SETTLE, settle)
        patches.replace(points.WRITEV, writev)
        patches.replace(points.WRITE, write)
        patches.replace(points.READ, read)
        return patches


def instrumented_run(
    executor: Executor, mode: str, warmup: int, count: int
) -> list[dict[str, Any]]:
    """``warmup + count`` round trips of :func:`.stamps.stamp`, one at a time; the rows of the
    last ``count`` (complete or not: :func:`.stages.stage_samples` picks)."""
    probe = ParentProbe(mode)
    submit = executor.submit
    taken: list[tuple[dict[str, Any], Future[Any], bytes]] = []
    patches = probe.install()
    try:
        for _ in range(warmup + count):
            start = clock()
            future = submit(stamp)
            submitted = clock()
            result = future.result()
            end = clock()
            row: dict[str, Any] = {"t0": start, "t1": submitted, "t2": end}
            decision = probe.take_decision()
            if decision is not None:
                row["sd0"], sent_at, sent = decision
                row["direct"] = int(sent)
                if sent:
                    row["sd1"] = sent_at
            taken.append((row, future, result))
    finally:
        patches.restore()
    _await_settled(taken[-1][1])
    probe.writev.sort()  # appended by two threads
    rows = [_assemble(row, future, result, probe) for row, future, result in taken]
    _pair_replies(rows)
    _attach_dispatcher_reads(rows, probe.reads)
    return rows[warmup:]


def _await_settled(future: Future[Any]) -> None:
    """Wait (at most a second) for the dispatcher to finish stamping the last future.

    ``set_result`` wakes the caller before it returns: ``result()`` may be back first.
    """
    deadline = time.monotonic() + 1.0
    while _SETTLE_KEY not in vars(future) and time.monotonic() < deadline:
        time.sleep(0.001)


def _assemble(row: dict[str, Any], future: Future[Any], result: bytes, probe: ParentProbe) -> Any:
    stamps = vars(future)
    if _CLAIM_KEY in stamps:
        row["srn0"], row["srn1"] = stamps[_CLAIM_KEY]
    if _SETTLE_KEY in stamps:
        row["sr0"], row["sr1"], settler = stamps[_SETTLE_KEY]
    else:
        settler = None
    worker = WorkerStamps.unpack(result)
    row["pid"] = worker.pid
    row["previous_send"] = (worker.previous_send0, worker.previous_send1)
    if worker.read:
        row["w_read"] = worker.read
    row["w_call"] = worker.call
    if "srn1" in row:
        write = _first_after(probe.writev, row["srn1"])
        if write is not None:
            row["wr0"], row["wr1"] = write
    if "sd0" in row and probe.mode == "queued":
        wake = _first_after(probe.wakes, row["sd0"])
        if wake is not None and wake[1] <= row.get("srn0", wake[1]):
            row["wake1"] = wake[1]
    row["_settler"] = settler
    return row


def _pair_replies(rows: list[dict[str, Any]]) -> None:
    """Give each row its worker's reply write, which that worker reported with its next task."""
    previous: dict[int, dict[str, Any]] = {}
    for row in rows:
        before = previous.get(row["pid"])
        send0, send1 = row.pop("previous_send")
        if before is not None and send0 >= before["w_call"]:
            before["w_send0"], before["w_send1"] = send0, send1
        previous[row["pid"]] = row


def _attach_dispatcher_reads(rows: list[dict[str, Any]], reads: list[tuple[int, int]]) -> None:
    """``d_read``: the settling thread's first read with data once the reply write started."""
    ordered = sorted(reads)
    times = [end for end, _ in ordered]
    for row in rows:
        settler = row.pop("_settler", None)
        if "w_send0" not in row or "sr0" not in row:
            continue
        index = bisect.bisect_left(times, row["w_send0"])
        for end, thread in ordered[index:]:
            if end > row["sr0"]:
                break
            if thread == settler:
                row["d_read"] = end
                break


def _first_after(calls: list[tuple[int, int]], moment: int) -> Optional[tuple[int, int]]:
    """The first (start, end) in ``calls`` (appended in time order) starting at ``moment`` or
    later."""
    index = bisect.bisect_left(calls, (moment, 0))
    return calls[index] if index < len(calls) else None
