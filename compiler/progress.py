"""Progress lines for long compile work: one callback that takes a line, and a throttled counter over it."""

from __future__ import annotations

import time
from typing import Callable

Progress = Callable[[str], None]
Counter = Callable[[int, int], None]

EVERY_S = 5.0       # a counter reports at most this often, and always at the last item


def throttled(say: Progress | None, what: str, every_s: float = EVERY_S) -> Counter:
    """report(done, total) that says "  {what} {done}/{total}" at most every `every_s` seconds and when
    done == total; does nothing when say is None."""
    last = [time.perf_counter()]

    def report(done: int, total: int) -> None:
        if say is not None and (time.perf_counter() - last[0] > every_s or done == total):
            last[0] = time.perf_counter()
            say(f"  {what} {done}/{total}")
    return report
