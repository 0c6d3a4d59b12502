"""How one purge batch finds its rows on MySQL: integer keys and times, matched as numbers.

The purge deletes a batch of archived rows only where the time column still holds the archived
value. Sent as `(id, updated_at) IN ((...), ...)` with every value a placeholder, the server plans
one index dive per row and compares every time value as text, and the driver escapes every value;
`make bench` measured ~80k rows/s for it. When a batch's keys are integers (one-column key), the
batch instead names its rows by key and keeps only the listed `(id, time)` pairs, written as
integers:

    DELETE FROM t WHERE id BETWEEN lo AND hi
      AND (id + 0, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', updated_at)) IN ((7,1704450326000000), ...)

When the keys are packed into a short range (the usual case: the purge sorts a part by key, and a
month of an auto-increment table is mostly contiguous ids) that is one range scan of the clustered
index. When they are sparse (the edges of a month, whose ids interleave with the next month's), the
scan would read and lock many rows that are not in the batch, so the statement also lists the keys
(`AND id IN (7, 9, ...)`) and the server looks each one up instead.

`id + 0` keeps the optimizer from turning the pair list into one dive per row, and the time goes
as whole microseconds since 1970, an exact integer for every DATETIME, TIMESTAMP (in the session's
UTC) and DATE, which the server matches far faster than a time written as text. Measured on the
bench table in 5,000-row batches: a dense range ~115-150k rows/s, keys 8x sparse looked up ~105-110k
(the range scan over them ~55-70k), the placeholder form ~80k. The keys and pairs are integers
rendered here from typed Arrow values, never text a user wrote; Arrow holds a timestamp as those very
microseconds, so rendering costs one integer-to-text cast.

Only plain functions of Arrow arrays live here; `SourceClient` runs the statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as _compute

pc: Any = _compute

RANGE_SPAN_FACTOR = 3
"""A batch is one range scan when its keys span at most this many times its row count.

The range scan reads (and, under REPEATABLE READ, locks for the batch's transaction) every row
between the lowest and highest key, listed or not; past this factor the per-key lookups cost less.
"""


@dataclass(frozen=True)
class IntegerKeyBatch:
    """A purge batch of integer keys: its key bounds, the exact `(key, time)` pairs to delete and,
    for sparse keys, the key list the server looks up instead of scanning the range."""

    lowest: int
    highest: int
    pairs_sql: str
    """`(key,micros),(key,micros),...`: integer literals, the time as `epoch_microseconds`."""
    keys_sql: str | None
    """`key,key,...` when the keys are too sparse for one range scan; None for a dense batch."""


def key_tuples(table: pa.Table | pa.RecordBatch, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """The values of `columns`, row by row, as tuples (the form sets of keys are kept in)."""
    return list(zip(*(table.column(name).to_pylist() for name in columns), strict=True))


EPOCH_MICROSECONDS_SQL = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column})"
"""The time column as whole microseconds since 1970 (its own zone; the purge's session is UTC)."""


def epoch_microseconds(times: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """Time values as the integers `EPOCH_MICROSECONDS_SQL` gives for them; None for other types.

    Timestamps (naive, or aware: Arrow holds them as UTC) and dates; None when a value is NULL or
    finer than a microsecond, which MySQL cannot store.
    """
    if isinstance(times, pa.ChunkedArray):
        times = times.combine_chunks()
    if times.null_count:
        return None
    if pa.types.is_date(times.type):
        times = times.cast(pa.timestamp("us"))
    if not pa.types.is_timestamp(times.type):
        return None
    try:
        # Arrow keeps aware timestamps as UTC instants, so the zone needs no conversion here.
        return times.cast(pa.timestamp("us", tz=times.type.tz)).cast(pa.int64())
    except pa.ArrowInvalid:
        return None


def _joined(values: pa.Array, separator: str) -> str:
    """The values of a string array joined into one Python string."""
    return pc.binary_join(
        pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values), separator
    )[0].as_py()


def integer_key_batch(
    keys: pa.Array | pa.ChunkedArray,
    times: pa.Array | pa.ChunkedArray,
    *,
    span_factor: int = RANGE_SPAN_FACTOR,
) -> IntegerKeyBatch | None:
    """The integer form of a batch, or None when it does not apply.

    It applies when the keys are integers (one-column key) without NULLs and the times are
    timestamps or dates without NULLs. Keys whose range holds more than `span_factor` times as many
    values as the batch has rows are listed for lookups (`IntegerKeyBatch.keys_sql`).

    Args:
        keys: the batch's primary-key values.
        times: the archived time-column values, row for row.
        span_factor: the longest range scanned, in multiples of the batch's row count.
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if len(keys) == 0 or keys.null_count or not pa.types.is_integer(keys.type):
        return None
    bounds = pc.min_max(keys)
    lowest, highest = int(bounds["min"].as_py()), int(bounds["max"].as_py())
    micros = epoch_microseconds(times)
    if micros is None:
        return None
    key_text = pc.cast(keys, pa.string())
    pairs = pc.binary_join_element_wise(key_text, pc.cast(micros, pa.string()), ",")
    sparse = highest - lowest + 1 > span_factor * len(keys)
    return IntegerKeyBatch(
        lowest=lowest,
        highest=highest,
        pairs_sql="(" + _joined(pairs, "),(") + ")",
        keys_sql=_joined(key_text, ",") if sparse else None,
    )
