"""The stages of a round trip: which two timestamps each one runs between.

A row holds one round trip's timestamps (ns, one clock for every process), named:

``t0``/``t1``/``t2``
    the caller calls ``submit()``, it returns, ``result()`` returns;
``sd0``
    ``Dispatcher.submit`` reaches the direct-send decision (after the pickling);
``wake1``
    queued only: the caller's write to the dispatcher's wake pipe returned;
``srn0``/``srn1``
    ``Future.set_running_or_notify_cancel``: the sender claims the task;
``wr0``/``wr1``
    the sender's inbox write (``os.writev``);
``w_read``/``w_call``/``w_send0``/``w_send1``
    in the worker: its inbox read returned, the task's code started, its reply write;
``d_read``
    the dispatcher's first read that returned data once the reply write started;
``sr0``/``sr1``
    ``Future.set_result`` in the dispatcher thread.

The *sender* is the caller in the direct mode and the dispatcher thread in the queued one.
"""

from __future__ import annotations

import collections
from typing import Any

MODES = ("direct", "queued")
_CLAIMED = [
    ("sender: Future.set_running_or_notify_cancel (the claim)", "srn0", "srn1"),
    ("sender: frame the batch, post the claim", "srn1", "wr0"),
    ("pipe: inbox write -> the worker's read returns", "wr0", "w_read"),
    ("worker: decode the batch, claim, unpickle; the task starts", "w_read", "w_call"),
    ("worker: the task returns; pickle, encode, check the pipe", "w_call", "w_send0"),
    ("pipe: reply write -> the dispatcher's read returns", "w_send0", "d_read"),
    ("dispatcher: decode the reply, unpickle the result", "d_read", "sr0"),
    ("dispatcher: Future.set_result (notifies the caller)", "sr0", "sr1"),
    ("caller: wakes, result() returns", "sr1", "t2"),
]
_SUBMIT = ("caller: submit() up to the send: checks, Future(), pickle, encode", "t0", "sd0")
#: One stage: a label, then the timestamps it runs between.
STAGES: dict[str, list[tuple[str, str, str]]] = {
    "direct": [
        _SUBMIT,
        ("caller: _send_direct: try the dispatcher's lock, find an idle worker", "sd0", "srn0"),
        *_CLAIMED,
    ],
    "queued": [
        _SUBMIT,
        ("caller: queue the task, wake the dispatcher (pipe write)", "sd0", "wake1"),
        ("dispatcher: wakes (wake pipe -> select), assigns, takes a batch", "wake1", "srn0"),
        *_CLAIMED,
    ],
}
#: Every stage of both modes, in the order of the table.
STAGE_ORDER = list(
    dict.fromkeys(
        label
        for label, _, _ in [*STAGES["direct"][:1], *STAGES["queued"][1:3], *STAGES["direct"][1:]]
    )
)
#: Side numbers of every complete row: a label, then the two timestamps. A write system call
#: overlaps the stages after it: the reader it wakes may run (on another CPU, or on this one,
#: first) before the call returns.
SIDE = [
    ("total (instrumented)", "t0", "t2"),
    ("caller: submit() returns", "t0", "t1"),
    ("caller: time in result()", "t1", "t2"),
    ("worker: busy per task (read returned -> reply written)", "w_read", "w_send1"),
    ("the inbox write system call alone", "wr0", "wr1"),
    ("the worker's reply write system call alone", "w_send0", "w_send1"),
]


def needed(mode: str) -> set[str]:
    """The timestamps a row of ``mode`` must hold to count."""
    return {key for _, *keys in STAGES[mode] + SIDE for key in keys}


def stage_samples(mode: str, rows: list[dict[str, Any]]) -> tuple[dict[str, list[int]], int]:
    """Per stage (and side number), the samples of the complete rows (ns); and their count.

    A row of the direct mode whose task the caller could not send itself (the dispatcher held
    its lock) went through the queue: it is left out of that mode.
    """
    keys = needed(mode)
    out: dict[str, list[int]] = collections.defaultdict(list)
    complete = 0
    for row in rows:
        if not keys <= row.keys() or (mode == "direct" and not row.get("direct")):
            continue
        complete += 1
        for label, start, end in STAGES[mode] + SIDE:
            out[label].append(row[end] - row[start])
    return out, complete
