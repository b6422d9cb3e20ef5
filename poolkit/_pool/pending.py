"""The dispatcher's queue of tasks not yet given to a worker: by priority, then FIFO.

Most pools never use priorities, so the queue is one ``deque`` per priority level with the
default level always present: a task of priority 0 costs what a plain ``deque`` costs.
Callers append from their threads while the dispatcher pops from its own; each step is one
``deque`` operation (atomic under the GIL), and the list of levels is replaced, never
changed in place, when a new priority first appears.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from typing import Callable, Optional

from poolkit._pool.tasks import TaskState


class PendingQueue:
    """Tasks waiting for a worker: the highest priority first, equal priorities in order."""

    def __init__(self) -> None:
        self._default: collections.deque[TaskState] = collections.deque()
        self._levels: dict[int, collections.deque[TaskState]] = {0: self._default}
        #: (priority, level) from the highest priority down; replaced as a whole.
        self._order: tuple[tuple[int, collections.deque[TaskState]], ...] = ((0, self._default),)
        self._grow_lock = threading.Lock()

    def _level(self, priority: int) -> collections.deque[TaskState]:
        if priority == 0:
            return self._default
        level = self._levels.get(priority)
        if level is None:
            with self._grow_lock:
                level = self._levels.get(priority)
                if level is None:
                    level = collections.deque()
                    self._levels[priority] = level
                    self._order = tuple(
                        (p, self._levels[p]) for p in sorted(self._levels, reverse=True)
                    )
        return level

    def append(self, task: TaskState) -> None:
        """Queue a new task behind those of its priority."""
        self._level(task.priority).append(task)

    def appendleft(self, task: TaskState) -> None:
        """Put a task back at the front of its priority (requeued: it is the oldest)."""
        self._level(task.priority).appendleft(task)

    def extendleft(self, tasks: Iterable[TaskState]) -> None:
        """``appendleft`` each task in turn (as ``deque.extendleft``: the last ends first)."""
        for task in tasks:
            self.appendleft(task)

    def requeue(self, tasks: Iterable[TaskState]) -> None:
        """Put tasks taken back from a worker at the front, in the order they were submitted."""
        self.extendleft(sorted(tasks, key=lambda task: task.task_id, reverse=True))

    def popleft(self) -> TaskState:
        """The next task to run; IndexError if there is none."""
        for _, level in self._order:
            if level:
                try:
                    return level.popleft()
                except IndexError:  # taken meanwhile (by cancel_pending's snapshot users)
                    continue
        raise IndexError("pop from an empty PendingQueue")

    def __getitem__(self, index: int) -> TaskState:
        if index != 0:
            raise IndexError("only the head of a PendingQueue can be read")
        for _, level in self._order:
            if level:
                return level[0]
        raise IndexError("PendingQueue is empty")

    def top_priority(self) -> Optional[int]:
        """The priority of the next task, None if the queue is empty."""
        for priority, level in self._order:
            if level:
                return priority
        return None

    def remove(self, task: TaskState) -> None:
        """Take ``task`` out; ValueError if it is not queued."""
        self._level(task.priority).remove(task)

    def take_out(self, unwanted: Callable[[TaskState], bool]) -> list[TaskState]:
        """Take every task for which ``unwanted(task)`` is true out, in order; return them."""
        taken = []
        for _, level in self._order:
            for _ in range(len(level)):
                try:
                    task = level.popleft()
                except IndexError:
                    break
                if unwanted(task):
                    taken.append(task)
                else:
                    level.append(task)
        return taken

    def __len__(self) -> int:
        if len(self._order) == 1:
            return len(self._default)
        return sum(len(level) for _, level in self._order)

    def __bool__(self) -> bool:
        if len(self._order) == 1:
            return bool(self._default)
        return any(level for _, level in self._order)

    def __iter__(self) -> Iterator[TaskState]:
        """A snapshot, highest priority first (others may change the queue meanwhile)."""
        snapshot: list[TaskState] = []
        for _, level in self._order:
            snapshot.extend(list(level))
        return iter(snapshot)
