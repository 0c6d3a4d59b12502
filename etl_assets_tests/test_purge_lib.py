"""lib/purge.py: when a delete batch is one key range or a key list, and the numbers it is written as."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa

from etl_assets.lib.purge import epoch_microseconds, integer_key_batch, key_tuples

STAMP = datetime(2024, 1, 5, 10, 25, 26)


def test_pairs_are_key_and_time_as_integers() -> None:
    keys = pa.array([3, 1, 2], pa.uint64())
    stamp_us = 1704450326 * 1_000_000
    times = pa.array([STAMP, STAMP.replace(microsecond=120000), STAMP.replace(second=0)], pa.timestamp("us"))
    batch = integer_key_batch(keys, times)
    assert batch is not None
    assert (batch.lowest, batch.highest, batch.keys_sql) == (1, 3, None)
    assert batch.pairs_sql == f"(3,{stamp_us}),(1,{stamp_us + 120000}),(2,{stamp_us - 26_000_000})"


def test_epoch_microseconds_of_every_time_type() -> None:
    stamp_us = 1704450326 * 1_000_000
    aware = pa.array([STAMP.replace(tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    assert epoch_microseconds(aware).to_pylist() == [stamp_us]  # type: ignore[union-attr]
    assert epoch_microseconds(pa.array([STAMP], pa.timestamp("s"))).to_pylist() == [stamp_us]  # type: ignore[union-attr]
    assert epoch_microseconds(pa.array([date(2024, 1, 5)], pa.date32())).to_pylist() == [
        1704412800 * 1_000_000
    ]  # type: ignore[union-attr]
    before_1970 = pa.array([datetime(1969, 12, 31, 23, 59, 59, 999999)], pa.timestamp("us"))
    assert epoch_microseconds(before_1970).to_pylist() == [-1]  # type: ignore[union-attr]
    assert epoch_microseconds(pa.array([1, 2])) is None
    assert epoch_microseconds(pa.array([STAMP, None], pa.timestamp("us"))) is None
    assert epoch_microseconds(pa.array([1], pa.timestamp("ns"))) is None  # finer than MySQL keeps


def test_largest_unsigned_key_is_written_whole() -> None:
    top = 2**64 - 1
    batch = integer_key_batch(pa.array([top - 1, top], pa.uint64()), pa.array([STAMP] * 2, pa.timestamp("s")))
    assert batch is not None and batch.highest == top
    assert batch.pairs_sql == f"({top - 1},1704450326000000),({top},1704450326000000)"


def test_sparse_keys_are_listed_for_lookups() -> None:
    times = pa.array([STAMP] * 2, pa.timestamp("us"))
    sparse = integer_key_batch(pa.array([7, 1]), times)  # 7 values for 2 rows: over 3x
    assert sparse is not None and sparse.keys_sql == "7,1"
    assert (sparse.lowest, sparse.highest) == (1, 7)
    assert sparse.pairs_sql == "(7,1704450326000000),(1,1704450326000000)"
    dense = integer_key_batch(pa.array([1, 6]), times)  # 6: within 3x
    assert dense is not None and dense.keys_sql is None
    wider = integer_key_batch(pa.array([1, 7]), times, span_factor=4)
    assert wider is not None and wider.keys_sql is None


def test_batches_that_keep_the_placeholder_form() -> None:
    times = pa.array([STAMP] * 2, pa.timestamp("us"))
    assert integer_key_batch(pa.array(["a", "b"]), times) is None
    assert integer_key_batch(pa.array([1, None]), times) is None
    assert integer_key_batch(pa.array([], pa.int64()), pa.array([], pa.timestamp("us"))) is None
    assert integer_key_batch(pa.array([1, 2]), pa.array(["x", "y"])) is None
    assert integer_key_batch(pa.array([1, 2]), pa.array([STAMP, None], pa.timestamp("us"))) is None


def test_key_tuples() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    assert key_tuples(table, ["a", "b"]) == [(1, "x"), (2, "y")]
    assert key_tuples(table, ["b"]) == [("x",), ("y",)]
