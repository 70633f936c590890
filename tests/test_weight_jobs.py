"""Per-weight work of the pruning and encoding passes (passes/weight_jobs.py) and compile progress counters
(compiler/progress.py)."""

from __future__ import annotations

import threading
import time

import pytest

from fdpp.compiler import progress
from fdpp.passes.weight_jobs import WORKERS, map_weights


def test_results_keep_the_items_order_and_progress_counts_each():
    seen = []

    def slow_first(i: int) -> int:
        time.sleep(0.05 if i == 0 else 0)                 # the first item finishes last
        return i * i
    assert map_weights(slow_first, range(9), lambda done, total: seen.append((done, total))) == \
        [i * i for i in range(9)]
    assert seen == [(d, 9) for d in range(1, 10)]


def test_at_most_workers_weights_in_flight():
    lock, running, most = threading.Lock(), [0], [0]

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i
    map_weights(job, range(20), lambda done, total: None)
    assert 1 <= most[0] <= WORKERS


def test_a_failure_propagates():
    def job(i: int) -> int:
        if i == 3:
            raise ValueError("weight 3 is broken")
        return i
    with pytest.raises(ValueError, match="weight 3"):
        map_weights(job, range(8), lambda done, total: None)


def test_throttled_says_the_last_count_and_nothing_without_a_callback():
    lines = []
    report = progress.throttled(lines.append, "encoded weights", every_s=3600)
    for done in range(1, 6):
        report(done, 5)
    assert lines == ["  encoded weights 5/5"]
    progress.throttled(None, "anything")(1, 1)            # no callback: nothing to say, no error
