"""Object keys of the archive: Hive-style and queryable, with staging kept out of the queryable view.

    <prefix>/<table>/year=YYYY/month=MM/<run_id>-<n>.parquet           committed parts (queryable)
    <prefix>/<table>/year=YYYY/month=MM/<run_id>.manifest.json         committed manifest
    <prefix>/<table>/_staging/year=YYYY/month=MM/<run_id>-<n>.parquet  parts not yet committed
    <prefix>/<table>/_staging/year=YYYY/month=MM/<run_id>.manifest.json

Athena, Hive, Spark and DuckDB skip path segments that start with `_` or `.`, so nothing under
`_staging` is ever visible to a query, and an orphan from a crashed run cannot duplicate rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

STAGING_SEGMENT = "_staging"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(
            f"run id {run_id!r} cannot be used in an object key; use letters, digits, '-' and '_'"
        )
    return run_id


def table_segment(table: str) -> str:
    """Key segment of a table: its name with `/` and other separators made safe."""
    return re.sub(r"[^\w$-]", "_", table)


@dataclass(frozen=True)
class PartitionLayout:
    """Keys of one table's monthly partition."""

    prefix: str
    table: str
    month: datetime

    def _folder(self, *, staging: bool) -> str:
        parts = [p for p in (self.prefix.strip("/"), table_segment(self.table)) if p]
        if staging:
            parts.append(STAGING_SEGMENT)
        parts += [f"year={self.month:%Y}", f"month={self.month:%m}"]
        return "/".join(parts)

    @property
    def folder(self) -> str:
        """Folder of committed parts and manifests."""
        return self._folder(staging=False)

    @property
    def staging_folder(self) -> str:
        """Folder of uncommitted parts and manifests."""
        return self._folder(staging=True)

    def part_key(self, run_id: str, index: int, *, staging: bool) -> str:
        """Key of part `index` (0-based) of run `run_id`."""
        return f"{self._folder(staging=staging)}/{_check_run_id(run_id)}-{index}.parquet"

    def manifest_key(self, run_id: str, *, staging: bool) -> str:
        """Key of the manifest of run `run_id`."""
        return f"{self._folder(staging=staging)}/{_check_run_id(run_id)}.manifest.json"

    @property
    def table_root(self) -> str:
        """Folder holding every month of the table, committed and staging."""
        return "/".join(p for p in (self.prefix.strip("/"), table_segment(self.table)) if p)

    @property
    def table_staging_root(self) -> str:
        """Folder holding the staging of every month of the table."""
        return f"{self.table_root}/{STAGING_SEGMENT}"

    @staticmethod
    def month_of_key(key: str) -> datetime | None:
        """The month a part or manifest key belongs to (from its `year=`/`month=` segments)."""
        match = re.search(r"/year=(\d{4})/month=(\d{2})/", key)
        return datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC) if match else None

    @staticmethod
    def run_id_of_manifest(key: str) -> str | None:
        """The run id in a manifest key, or None if `key` is not a manifest."""
        name = key.rsplit("/", 1)[-1]
        return name[: -len(".manifest.json")] if name.endswith(".manifest.json") else None


def is_queryable(key: str) -> bool:
    """True when query engines would read `key` as data: a .parquet outside `_`/`.` segments."""
    segments = key.split("/")
    return key.endswith(".parquet") and not any(s.startswith(("_", ".")) for s in segments[:-1])
