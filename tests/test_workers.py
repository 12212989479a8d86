"""The jobs' worker pools: results in order, and nothing computed for a caller that stopped taking them."""

from __future__ import annotations

import multiprocessing

from jamcaps_desktop.jobs.base import CancelToken
from jamcaps_desktop.jobs.workers import in_order


def test_items_no_worker_started_are_never_computed_once_the_caller_stops(tmp_path):
    """A job that stops taking results (a cancel, a failure, the analysis falling back to the CPU) does not
    wait for every item handed ahead to the workers: those not started are dropped, and results finished but
    never taken are handed to ``discard``."""
    from slow_items import marked_slowly

    items = [str(tmp_path / f"item{i}") for i in range(16)]
    discarded: list[str] = []
    results = in_order(marked_slowly, items, 2, CancelToken(), ahead=16, crashed=lambda item: item,
                       discard=discarded.append)
    assert next(results) == items[0]
    results.close()
    started = [item for item in items if (tmp_path / item).exists()]
    assert 1 < len(started) < len(items)  # the workers' own and the queued few, not all sixteen
    assert set(discarded) <= set(started) - {items[0]}
    assert not multiprocessing.active_children()


def test_a_cancelled_job_stops_its_workers_early(tmp_path):
    from slow_items import marked_slowly

    items = [str(tmp_path / f"item{i}") for i in range(16)]
    cancel = CancelToken()
    taken = []
    for result in in_order(marked_slowly, items, 2, cancel, ahead=16, crashed=lambda item: item):
        taken.append(result)
        cancel.cancel()
    assert taken == items[:1]
    assert sum((tmp_path / item).exists() for item in items) < len(items)
    assert not multiprocessing.active_children()
