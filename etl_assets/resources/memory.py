"""Handing memory freed by finished work back to the operating system.

connectorx decodes MySQL rows in its own threads, and glibc gives every thread its own malloc arena.
Memory freed in those arenas stays mapped to the process, fragmented, so a long backfill's RSS
creeps up partition after partition although nothing is still referenced (measured: +6 MB a month
of 40k rows, for as long as the run goes on). `malloc_trim(0)` returns the free pages of every
arena; Arrow's own pool (mimalloc or jemalloc) is asked to do the same.

Asking is not enough for a long archive backfill: mimalloc keeps freed segments for reuse and the
extra arenas fragment, so its peak RSS still grew with the size of a month (`make bench`, extraction
of 58 months without Dagster: +56 MB from 500k to 2M rows). `use_trimmable_allocators()` makes
Arrow allocate with malloc and caps glibc at two arenas, so what the run frees can be trimmed: the
same measurement grew +21 MB (247 -> 268 MB against 287 -> 343 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

# glibc's mallopt parameter for the most malloc arenas (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8
_ARENAS = 2


@functools.cache
def _glibc(function: str) -> Any:
    """A glibc function (a ctypes function pointer), or None where the C library lacks it (musl and
    macOS have no malloc_trim)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        found = getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None
    found.restype = ctypes.c_int
    return found


def _malloc_trim() -> Callable[[int], int] | None:
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
    return trim


@functools.cache
def use_trimmable_allocators() -> None:
    """For the rest of this process, allocate so that `release_freed_memory` can hand memory back.

    Arrow allocates with malloc instead of its own pool, unless `ARROW_DEFAULT_MEMORY_POOL` names a
    pool explicitly, and glibc creates at most two malloc arenas. Called by the runs that stream
    many slices (archive and replica assets); buffers already allocated keep their pool.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt(_M_ARENA_MAX, _ARENAS)


def release_freed_memory() -> None:
    """Return memory that is free but still mapped (malloc arenas, Arrow's pool) to the OS."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class PeriodicRelease:
    """`release_freed_memory()` at most once per `interval_seconds`, for calling inside a stream."""

    def __init__(self, interval_seconds: float = 2.0) -> None:
        self.interval_seconds = interval_seconds
        self._last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_seconds:
            release_freed_memory()
            self._last = now
