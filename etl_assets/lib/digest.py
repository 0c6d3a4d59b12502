"""An order-independent digest of a set of primary keys.

The archive compares what it read from MySQL with what it reads back from the store before it
deletes anything. Parts may be written in any order and rows in any order within them, so the
digest must not depend on order, and it must combine: digest(part 1) + digest(part 2) equals the
digest of both. Each key is hashed to 64 bits; the digest is the row count plus the sum and the xor
of those hashes (two independent aggregates, so a swapped or duplicated row changes at least one).

Integer keys are hashed with a vectorised splitmix64 (numpy); other types with BLAKE2b per value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64, copy=True) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _column_hashes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    if column.null_count:
        raise ValueError("a primary key column contains NULL; primary keys must be NOT NULL")
    kind = column.type
    if pa.types.is_integer(kind):
        # Signed values are reinterpreted as their two's-complement bit pattern: exact and 1:1.
        as_int = column.cast(pa.int64(), safe=False) if pa.types.is_signed_integer(kind) else column
        raw = as_int.to_numpy(zero_copy_only=False)
        return _splitmix64(raw.view(np.uint64) if raw.dtype == np.int64 else raw.astype(np.uint64))
    hashes = np.empty(len(column), dtype=np.uint64)
    for index, value in enumerate(column.to_pylist()):
        data = value if isinstance(value, bytes) else repr(value).encode("utf-8")
        hashes[index] = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return hashes


@dataclass(frozen=True)
class PkDigest:
    """Count plus 64-bit sum and xor of per-key hashes."""

    count: int = 0
    total: int = 0
    xor: int = 0

    def __add__(self, other: PkDigest) -> PkDigest:
        return PkDigest(self.count + other.count, (self.total + other.total) & _MASK, self.xor ^ other.xor)

    def __str__(self) -> str:
        return f"{self.count}:{self.total:016x}:{self.xor:016x}"

    @classmethod
    def parse(cls, text: str) -> PkDigest:
        """Inverse of `str()`."""
        count, total, xor = text.split(":")
        return cls(int(count), int(total, 16), int(xor, 16))


def pk_hashes(columns: Sequence[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One 64-bit hash per key formed by `columns` (one array per primary-key column, equal lengths)."""
    if not columns:
        raise ValueError("no primary-key columns given")
    combined = _column_hashes(columns[0])
    for column in columns[1:]:
        with np.errstate(over="ignore"):
            combined = _splitmix64(combined * np.uint64(31) + _column_hashes(column))
    return combined


def digest_of_hashes(hashes: np.ndarray) -> PkDigest:
    """The digest of keys already hashed by `pk_hashes`."""
    if not len(hashes):
        return PkDigest()
    total = int(hashes.sum(dtype=np.uint64)) & _MASK
    xor = int(np.bitwise_xor.reduce(hashes))
    return PkDigest(len(hashes), total, xor)


def repeated_hashes(hashes: Sequence[np.ndarray]) -> list[int]:
    """Hashes that occur more than once across `hashes` (sorted): keys read twice."""
    if not hashes:
        return []
    values, counts = np.unique(np.concatenate(hashes), return_counts=True)
    return [int(value) for value in values[counts > 1]]


def pk_digest(columns: Sequence[pa.Array | pa.ChunkedArray]) -> PkDigest:
    """Digest of the keys formed by `columns` (one array per primary-key column, equal lengths)."""
    return digest_of_hashes(pk_hashes(columns))
