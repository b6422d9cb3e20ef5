"""The pool's states and what each allows (``poolkit._pool.state``)."""

from __future__ import annotations

from poolkit._pool.state import PoolState


def test_only_a_running_or_draining_pool_assigns_tasks() -> None:
    assigning = {state for state in PoolState if state.assigns}
    assert assigning == {PoolState.RUNNING, PoolState.DRAINING}


def test_a_forced_or_broken_pool_abandons_the_tasks_of_dying_workers() -> None:
    abandoning = {state for state in PoolState if state.abandons_tasks}
    assert abandoning == {PoolState.FORCED, PoolState.BROKEN}
    # A pool that closed its inboxes lets every worker finish what it holds.
    assert not PoolState.CLOSING.abandons_tasks and not PoolState.CLOSING.assigns
