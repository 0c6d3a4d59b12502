"""Manifests: the archive's ledger, one JSON document per partition run, stored beside the parts.

A staging manifest moves through states as the run goes:

    extracted -> verified -> committed

`verified` is the point of no return: every part was read back from the store and matched what was
read from MySQL, so a later run may roll this run forward (purge, then commit) instead of redoing it.
A staging manifest that never reached `verified` is debris and is discarded by the next run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

State = Literal["extracted", "verified", "committed"]
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PartInfo:
    """One Parquet part."""

    key: str
    rows: int
    bytes: int
    pk_digest: str
    sha256: str = ""
    min_pk: Any = None
    max_pk: Any = None


@dataclass(frozen=True)
class Manifest:
    """What one run archived for one partition."""

    table: str
    partition: str
    run_id: str
    window_start: str
    window_end: str
    time_column: str
    primary_key: list[str]
    state: State
    parts: list[PartInfo] = field(default_factory=list)
    rows: int = 0
    pk_digest: str = "0:0000000000000000:0000000000000000"
    columns: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # Key hashes read twice by a sliced extraction (a row updated between two slice queries): the
    # purge leaves those rows in the source and the commit leaves them out of the archive.
    repeated_key_hashes: list[int] = field(default_factory=list)
    created_at: str = ""
    committed_at: str = ""
    version: int = FORMAT_VERSION

    def with_state(self, state: State, **changes: Any) -> Manifest:
        """A copy in another state."""
        return replace(self, state=state, **changes)

    def to_json(self) -> bytes:
        """Serialized form (stable key order, UTF-8)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse a manifest.

        Raises:
            ValueError: the document is not a manifest this version understands.
        """
        try:
            raw = json.loads(data)
            parts = [PartInfo(**part) for part in raw.pop("parts", [])]
            return cls(parts=parts, **raw)
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a valid etl-assets manifest: {exc}") from None
