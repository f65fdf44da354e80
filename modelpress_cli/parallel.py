"""One big tensor's work split over the cores, and the thread count that bounds it.

Tensors already encode in parallel (api.py), but a file's largest tensors (a 262 MB
embedding) are encoded with little beside them: the memory bound lets only 256 MiB more in
flight, and a decoder writes one tensor at a time. The compiled
kernels work on independent items (groups, rANS chunks), so running ranges of them on
several threads gives the same bytes as one call, and both cores stay busy.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import TypeVar

#: The most threads one call may use: compress(threads=N) sets it for its own workers.
THREADS: ContextVar[int] = ContextVar("modelpress_threads", default=os.cpu_count() or 1)
#: Values per range: enough to outweigh the hand-over, few enough to balance two threads.
RANGE_VALUES = 1 << 20

T = TypeVar("T")
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """Helper threads, made per process (a pool inherited through fork() has no threads
    behind it and would hang). Work running on them splits no further: THREADS is 1 there,
    so a nested in_parts cannot wait on a task queued behind itself."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(
            max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="modelpress-split",
            initializer=THREADS.set, initargs=(1,)))
    return _POOL[1]


def in_parts(work: Callable[[int, int], T], n_items: int, n_values: int,
             align: int = 1) -> list[T]:
    """[work(first, last) for each range] over items 0…n_items−1 (n_values values in all),
    in ranges of about RANGE_VALUES values and a multiple of `align` items, taken by up to
    THREADS.get() threads (this one included); results in range order.

    The ranges do not depend on the thread count, so neither do results that are combined
    from them (sums of floats, for one).
    """
    per_item = max(1, n_values // max(n_items, 1))
    step = max(1, -(-RANGE_VALUES // per_item // align)) * align
    bounds = [(first, min(first + step, n_items)) for first in range(0, n_items, step)]
    threads = min(THREADS.get(), len(bounds))
    if threads < 2:
        return [work(first, last) for first, last in bounds] or [work(0, 0)]
    results: list = [None] * len(bounds)
    tickets = itertools.count()  # next() on it is atomic: each range is taken once

    def drain() -> None:
        for k in tickets:
            if k >= len(bounds):
                return
            results[k] = work(*bounds[k])

    helpers = [_pool().submit(drain) for _ in range(threads - 1)]
    try:
        drain()
    finally:
        for helper in helpers:
            helper.result()
    return results
