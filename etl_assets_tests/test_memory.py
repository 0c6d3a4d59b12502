"""release_freed_memory hands freed-but-mapped heap pages back to the OS (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading

import pytest

from etl_assets.resources.memory import PeriodicRelease, _malloc_trim, release_freed_memory

BLOCK = 100_000  # below glibc's mmap threshold: served from a malloc arena, not its own mapping
BLOCKS = 2_000  # ~200 MB


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def fragment_a_thread_arena() -> list[ctypes.Array[ctypes.c_char]]:
    """Fill ~200 MB from a worker thread's arena, then free 9 blocks in 10 (the survivors pin the heap)."""
    kept: list[ctypes.Array[ctypes.c_char]] = []

    def work() -> None:
        blocks = [ctypes.create_string_buffer(BLOCK) for _ in range(BLOCKS)]
        kept.extend(blocks[::10])
        blocks.clear()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return kept


@pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's; other C libraries have none")
def test_freed_arena_memory_goes_back_to_the_os() -> None:
    release_freed_memory()
    before = resident_mb()
    kept = fragment_a_thread_arena()
    fragmented = resident_mb()
    assert fragmented - before > 100, (
        "the freed blocks stay mapped until trimmed (else the test proves nothing)"
    )
    release_freed_memory()
    trimmed = resident_mb()
    assert fragmented - trimmed > 100, f"RSS {fragmented:.0f} MB before the trim, {trimmed:.0f} MB after"
    assert len(kept) == BLOCKS // 10


def test_periodic_release_waits_for_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("etl_assets.resources.memory.release_freed_memory", lambda: calls.append(1))
    clock = iter([100.0, 100.5, 101.9, 102.1, 102.2, 104.2])
    monkeypatch.setattr("etl_assets.resources.memory.time.monotonic", lambda: next(clock))
    release = PeriodicRelease(interval_seconds=2.0)  # starts its interval at 100.0
    for _ in range(5):
        release()
    assert len(calls) == 2, "released at 102.1 and at 104.2, not in between"


PARQUET_ROUND_TRIP = """
import json, sys, tempfile
{first_import}
import pyarrow as pa
import pyarrow.parquet as pq
from etl_assets.resources.memory import use_trimmable_allocators

warning = use_trimmable_allocators()
table = pa.table({{"id": list(range(50_000)), "note": ["x" * 90] * 50_000}})
with tempfile.TemporaryDirectory() as tmp:
    pq.write_table(table, tmp + "/t.parquet", compression="zstd")
    assert pq.read_table(tmp + "/t.parquet").num_rows == 50_000
print(json.dumps({{
    "python_pool": pa.default_memory_pool().backend_name,
    "parquet_in_mimalloc": pa.mimalloc_memory_pool().max_memory(),
    "parquet_in_malloc": pa.system_memory_pool().max_memory(),
    "warning": warning,
}}))
"""


def parquet_round_trip(*, pool_env: str | None, pyarrow_first: bool) -> dict[str, object]:
    """Write and read a Parquet file in a fresh interpreter (Arrow picks its pool once per process)
    and say which pools served it."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if pool_env:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool_env
    first_import = "import pyarrow" if pyarrow_first else "import etl_assets"
    code = PARQUET_ROUND_TRIP.format(first_import=first_import)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_parquet_buffers_come_from_malloc_in_a_process_of_ours() -> None:
    # Parquet's readers and writers allocate from Arrow's process-wide pool, not the Python side's
    # default; mimalloc kept what a month freed and a backfill's peak grew with the month's size.
    used = parquet_round_trip(pool_env=None, pyarrow_first=False)
    assert used["parquet_in_mimalloc"] == 0
    assert used["parquet_in_malloc"] > 1_000_000
    assert used["python_pool"] == "system"
    assert used["warning"] is None


def test_a_pool_named_in_the_environment_wins() -> None:
    used = parquet_round_trip(pool_env="mimalloc", pyarrow_first=False)
    assert used["parquet_in_mimalloc"] > 1_000_000
    assert used["python_pool"] == "mimalloc"
    assert used["warning"] is None


def test_pyarrow_imported_too_early_is_reported_with_the_fix() -> None:
    used = parquet_round_trip(pool_env=None, pyarrow_first=True)
    assert used["parquet_in_mimalloc"] > 1_000_000, "Arrow chose its pool before etl_assets could"
    assert used["python_pool"] == "system"
    warning = str(used["warning"])
    assert "mimalloc" in warning and "ARROW_DEFAULT_MEMORY_POOL=system" in warning
