"""release_freed_memory hands freed-but-mapped heap pages back to the OS (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
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


@pytest.mark.parametrize(("pool_env", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_runs_allocate_arrow_memory_with_malloc_unless_told_otherwise(
    pool_env: str | None, expected: str
) -> None:
    # A fresh interpreter: the choice is made once per process and lasts for its lifetime.
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if pool_env:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool_env
    code = (
        "import pyarrow as pa\n"
        "from etl_assets.resources.memory import use_trimmable_allocators\n"
        "use_trimmable_allocators()\n"
        "print(pa.default_memory_pool().backend_name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
