"""Progress of a benchmark run: one line updated in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Hashable
from typing import Callable, Optional, Union

Progress = Union[bool, Callable[[str], None], None]
#: A job's guess before anything like it ran: about what a small measurement takes here.
FIRST_GUESS_S = 0.6


def progress_printer(progress: Progress) -> Callable[[str], None]:
    """A callable that shows a progress line: ``True`` for stderr, or the callable itself.

    On a terminal the line is rewritten in place (cut to the terminal's width, so that it
    never wraps and leaves a trail); elsewhere (a log, CI) each update is a line of its own.
    An empty text clears the line.
    """
    if callable(progress):
        return progress
    if not progress:
        return lambda _text: None
    tty = sys.stderr.isatty()

    def show(text: str) -> None:
        if tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            sys.stderr.write("\r\x1b[K" + text[:width])
        elif text:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    return show


class Eta:
    """Time left in a list of jobs, from how long the jobs like each one took so far.

    A job is guessed from the earlier runs of the same job (the same workload, start method
    and pool in an earlier round), else of its kind (the same workload), else from the mean
    of everything so far: rounds repeat the same jobs, so from the second round on the
    estimate is good to a few seconds.
    """

    def __init__(self, jobs: list[tuple[Hashable, Hashable]]) -> None:
        self.jobs = jobs  #: (job, kind) pairs, in the order they run
        self.took: dict[Hashable, list[float]] = {}
        self.kind_took: dict[Hashable, list[float]] = {}
        self.started = time.monotonic()
        self._job_started: Optional[float] = None

    def start(self) -> None:
        """The next job starts now."""
        self._job_started = time.monotonic()

    def done(self, index: int) -> None:
        """Job ``index`` has ended."""
        if self._job_started is None:
            return
        seconds = time.monotonic() - self._job_started
        job, kind = self.jobs[index]
        self.took.setdefault(job, []).append(seconds)
        self.kind_took.setdefault(kind, []).append(seconds)
        self._job_started = None

    def guess(self, job: Hashable, kind: Hashable) -> float:
        """How long one job will take."""
        for known in (self.took.get(job), self.kind_took.get(kind)):
            if known:
                return sum(known) / len(known)
        every = [s for values in self.took.values() for s in values]
        return sum(every) / len(every) if every else FIRST_GUESS_S

    def left(self, index: int, stop: Optional[int] = None) -> float:
        """Seconds from the start of job ``index`` to the end of the last job (or of the job
        before ``stop``)."""
        return sum(self.guess(job, kind) for job, kind in self.jobs[index:stop])

    def elapsed(self) -> float:
        """Seconds since the first job."""
        return time.monotonic() - self.started

    def line(self, index: int, what: str) -> str:
        """``[3/45] cold start | spawn | poolkit: 4 s elapsed, ~52 s left``."""
        return (
            f"[{index + 1}/{len(self.jobs)}] {what}: {self.elapsed():.0f} s elapsed, "
            f"~{self.left(index):.0f} s left"
        )
