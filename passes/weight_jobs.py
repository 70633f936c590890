"""Per-weight work of a pass (pruning thresholds, sparse encodings) on a few threads, results in order.

Torch's CPU kernels release the GIL, and much of this work (random generation, selection, the encoders'
index arithmetic) runs on one core per call, so weights in flight side by side use the machine's cores.
At most WORKERS weights are in flight, so memory stays within a few weights' temporaries (a Llama layer
has seven linear weights)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from fdpp.compiler.progress import Counter

Item = TypeVar("Item")
Result = TypeVar("Result")

WORKERS = 4


def map_weights(fn: Callable[[Item], Result], items: Iterable[Item], report: Counter) -> list[Result]:
    """[fn(item) for item in items], up to WORKERS at a time, calling report(done, total) as results arrive in
    order; the first exception raised by fn propagates."""
    items = list(items)
    workers = max(1, min(WORKERS, os.cpu_count() or 1, len(items)))
    results: list[Result] = []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="fdpp-weights")
    try:
        for result in pool.map(fn, items):
            results.append(result)
            report(len(results), len(items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)      # after a failure, start no further weight
    return results
