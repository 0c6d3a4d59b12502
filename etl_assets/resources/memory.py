"""Handing memory freed by finished work back to the operating system.

connectorx decodes MySQL rows in its own threads, and glibc gives every thread its own malloc arena.
Memory freed in those arenas stays mapped to the process, fragmented, so a long backfill's RSS
creeps up partition after partition although nothing is still referenced (measured: +6 MB a month
of 40k rows, for as long as the run goes on). `malloc_trim(0)` returns the free pages of every
arena; Arrow's own pool (mimalloc or jemalloc) is asked to do the same.

Asking is not enough for a long archive backfill: mimalloc keeps freed segments for reuse and the
extra arenas fragment, so peak RSS grew with the size of a month. Arrow chooses its process-wide
pool once, when pyarrow is imported, and Parquet's readers and writers take their page and column
buffers from that pool whatever the Python side is given; so `etl_assets/__init__.py` asks for
malloc (`ARROW_DEFAULT_MEMORY_POOL=system`) before pyarrow is imported, and
`use_trimmable_allocators()` caps glibc at two arenas. Measured on the archive of a 2M-row table as
one backfill (`make bench`, whole Dagster run): peak RSS 400 MB with Parquet in mimalloc, 320 MB in
malloc (500k rows: 319 and 299 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Callable
from typing import Any

from etl_assets import ARROW_POOL_VARIABLE

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
def use_trimmable_allocators() -> str | None:
    """For the rest of this process, allocate so that `release_freed_memory` can hand memory back.

    Arrow allocates with malloc, unless `ARROW_DEFAULT_MEMORY_POOL` names another pool, and glibc
    creates at most two malloc arenas. Called by the runs that stream many slices (archive and
    replica assets); buffers already allocated keep their pool.

    Returns:
        None, or a warning for the run's log when Arrow's process-wide pool is not malloc although
        no other pool was asked for: pyarrow was imported before `etl_assets`, too late for the
        package to choose (Parquet's buffers then stay in that pool).
    """
    import pyarrow as pa  # here, not at the top: the code location loads without pyarrow

    asked = os.environ.get(ARROW_POOL_VARIABLE) or "system"
    # Before set_memory_pool below, this is the pool Arrow chose when pyarrow was imported.
    process_pool = pa.default_memory_pool().backend_name
    if asked == "system":
        pa.set_memory_pool(pa.system_memory_pool())
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt(_M_ARENA_MAX, _ARENAS)
    if asked == "system" and process_pool != "system":
        return (
            f"Arrow's Parquet buffers come from its {process_pool} pool, which keeps freed memory, so a long "
            "backfill's peak memory grows with the size of a partition: pyarrow was imported before etl_assets. "
            f"Start the process with {ARROW_POOL_VARIABLE}=system (or import etl_assets first)"
        )
    return None


def release_freed_memory() -> None:
    """Return memory that is free but still mapped (malloc arenas, Arrow's pool) to the OS."""
    import pyarrow as pa

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
