"""One big tensor's work split over the cores, and the thread count that bounds it.

Tensors already encode in parallel (api.py), but a file's largest tensors (a 262 MB
embedding) are encoded alone: the memory bound lets no second one in flight. The compiled
kernels work on independent items (groups, rANS chunks), so splitting their range across
threads gives the same bytes as one call, and both cores stay busy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import TypeVar

#: The most threads one call may use: compress(threads=N) sets it for its own workers.
THREADS: ContextVar[int] = ContextVar("modelpress_threads", default=os.cpu_count() or 1)
#: Below this many values a split costs more in hand-over than it saves.
MIN_SPLIT_VALUES = 1 << 20

T = TypeVar("T")
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """Helper threads, made per process: a pool inherited through fork() has no threads
    behind it and would hang."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1),
                                                 thread_name_prefix="modelpress-split"))
    return _POOL[1]


def in_parts(work: Callable[[int, int], T], n_items: int, n_values: int,
             align: int = 1) -> list[T]:
    """work(first, last) over items 0…n_items−1 in up to THREADS.get() ranges (each a
    multiple of `align` items but the last), the first on this thread; results in order.

    Only split when there are at least MIN_SPLIT_VALUES values (`n_values`, all items).
    """
    parts = min(THREADS.get(), n_values // MIN_SPLIT_VALUES, n_items // max(align, 1))
    if parts < 2:
        return [work(0, n_items)]
    step = -(-n_items // parts // align) * align
    bounds = [(k, min(k + step, n_items)) for k in range(0, n_items, step)]
    futures = [_pool().submit(work, first, last) for first, last in bounds[1:]]
    return [work(*bounds[0]), *(f.result() for f in futures)]
