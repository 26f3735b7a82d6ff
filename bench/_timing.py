"""Timing shared by the benchmarks (sibling import: `python bench/NAME.py` puts bench/ first)."""

from __future__ import annotations

import time


def best_of(n, fn) -> float:
    """The fastest of n calls of fn, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
