"""Timing shared by the benchmark scripts (imported as a sibling module)."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_min(fns: list[Callable[[], object]], repeats: int, warmup: int = 1):
    """Minimum time of each thunk, in seconds, after ``warmup`` calls of each.

    Rounds interleave the thunks, so a burst of load from other processes on a
    shared machine hits all of them alike.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best
