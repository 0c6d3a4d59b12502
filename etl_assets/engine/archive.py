"""The archive of one monthly partition: extract, stage, verify, purge, commit. No Dagster here.

The order of operations is what makes it safe to delete production rows:

1. **Lock** the table (MySQL named lock) so two runs never interleave.
2. **Recover**: a staging manifest left `verified` by a crashed run is rolled forward (purge, then
   commit); anything staged but never verified is discarded. Nothing in the queryable view is touched.
3. **Extract** the half-open window with a server-side cursor into zstd Parquet parts under
   `_staging/` (invisible to Athena/Spark/DuckDB), recording row counts and a primary-key digest.
4. **Verify**: download every part, count rows and digest the keys; any mismatch, missing object or
   store error stops the run before a single delete. Only then is the staging manifest written, as
   `verified`.
5. **Purge** (unless `purge: false`): per part, read the keys and time values back from the store
   (re-checking the digest), then delete in bounded batches, each its own short transaction, only the
   rows whose time column still holds the archived value and (when the table has a replica) that the
   replica already holds. Throttled on `Threads_running`, optional pause, optional deadline.
6. **Commit**: publish into the queryable folder exactly the rows that left the source (a part whose
   rows all left is copied server-side; otherwise rewritten without the kept rows and verified), write
   the committed manifest, then remove staging.

After a crash anywhere, re-running converges: every row ends in exactly one of the source or the
queryable archive, and a committed partition is never overwritten or emptied.

`ArchiveJob` is one month; `ArchiveBackfill` runs a range of months under one lock and, on MySQL,
purges and commits each month in a helper thread while the next month is extracted and verified.
"""

from __future__ import annotations

import contextlib
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as _compute
import pyarrow.parquet as pq
from sqlalchemy import exc as sa_exc

from etl_assets.config import TableConfig
from etl_assets.lib.digest import PkDigest, digest_of_hashes, pk_digest, pk_hashes, repeated_hashes
from etl_assets.lib.layout import PartitionLayout, is_queryable
from etl_assets.lib.manifest import Manifest, PartInfo
from etl_assets.lib.purge import key_tuples
from etl_assets.lib.schema import SourceTable
from etl_assets.lib.typemap import ZERO_DATE_TYPES, arrow_schema, dictionary_columns
from etl_assets.lib.windows import Window, check_archive_eligible
from etl_assets.resources.source import (
    LOCK_CONFLICT_CODES,
    LockLostError,
    PurgeOutcome,
    SourceClient,
    describe_error,
    mysql_error_code,
)
from etl_assets.resources.store import ObjectStore, StoreError

if TYPE_CHECKING:
    from etl_assets.resources.source import ZeroDateCounts

# pyarrow.compute's functions are generated when the module loads; its stubs do not declare them.
pc: Any = _compute

Log = Callable[[str], None]

# A delete batch that hits a lock wait timeout or deadlock is tried this often before the run stops.
_LOCK_CONFLICT_ATTEMPTS = 3


class ArchiveError(RuntimeError):
    """The archive stopped before deleting anything it could not prove was archived."""


class PurgeStopped(ArchiveError):
    """A purge was asked to stop (`ArchiveJob.stop_purging`) because its run is ending."""


class ReplicaGuard(Protocol):
    """Tells which archived rows the warehouse replica already holds (invariant: replica first)."""

    def holds(self, keys: Sequence[tuple[Any, ...]], times: Sequence[Any]) -> set[tuple[Any, ...]]:
        """The subset of `keys` whose replica row has the archived time value (`times`) or a newer one."""
        ...


@dataclass
class ArchiveReport:
    """What a partition run did; becomes the materialization's metadata."""

    table: str
    partition: str
    window: Window
    run_id: str
    rows_extracted: int = 0
    rows_purged: int = 0
    rows_committed: int = 0
    rows_kept_changed: int = 0
    rows_kept_not_in_replica: int = 0
    rows_kept_deadline: int = 0
    # Rows the partition's committed archive already holds (put back by `restore`, or re-inserted):
    # the same version is purged without being archived twice; another version stays in the source.
    rows_already_archived: int = 0
    rows_kept_archived_differently: int = 0
    null_time_rows: int = 0
    zero_dates_nulled: int = 0
    bytes_written: int = 0
    parts: list[str] = field(default_factory=list)
    manifest: str = ""
    recovered_runs: list[str] = field(default_factory=list)
    discarded_staging: int = 0
    extract_seconds: float = 0.0
    verify_seconds: float = 0.0
    purge_seconds: float = 0.0
    commit_seconds: float = 0.0
    longest_delete_seconds: float = 0.0
    seconds: float = 0.0
    committed_rows_in_partition: int = 0
    message: str = ""

    @property
    def rows_per_second(self) -> float:
        """Rows extracted per second of the whole run."""
        return self.rows_extracted / self.seconds if self.seconds else 0.0


class Progress:
    """Logs rows done, rate and ETA at most every few seconds."""

    def __init__(self, log: Log, what: str, total: int | None, every_seconds: float = 5.0) -> None:
        self.log, self.what, self.total, self.every = log, what, total, every_seconds
        self.started = time.monotonic()
        self.last = self.started
        self.done = 0

    def add(self, rows: int) -> None:
        """Count `rows` more and log if it is time."""
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log(self.line())

    def line(self) -> str:
        """The current progress line."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,} rows ({rate:,.0f} rows/s"
        if self.total:
            remaining = max(self.total - self.done, 0)
            eta = remaining / rate if rate else 0
            text += f", {100 * self.done / self.total:.0f}% of {self.total:,}, ETA {eta:.0f}s"
        return text + ")"


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How every archive part is written: zstd, statistics, a CRC per page, dictionaries where they pay.

    The page CRCs let every read (verify, purge, commit, restore) notice a damaged page even where
    the object carries no S3 checksum; dictionaries only for columns of few values (`dictionary_columns`).
    """
    return {
        "compression": "zstd",
        "write_statistics": True,
        "write_page_checksum": True,
        "use_dictionary": dictionary_columns(schema),
    }


def _key_range(parts: Sequence[PartInfo]) -> tuple[Any, Any] | None:
    """Lowest and highest key of `parts` from their manifest bounds; None when a part has none."""
    lows, highs = [p.min_pk for p in parts], [p.max_pk for p in parts]
    if not parts or None in lows or None in highs:
        return None
    try:
        return min(lows), max(highs)
    except TypeError:  # bounds of mixed types: no range to compare with
        return None


def _ranges_apart(key_type: pa.DataType, first: tuple[Any, Any], second: tuple[Any, Any]) -> bool:
    """True when two inclusive key ranges certainly share no key (unknown or incomparable: False).

    Only integer and string keys: their manifest bounds come back from JSON as the same Python
    values pyarrow's min/max gave (code point order for strings: one total order, so a key in both
    sets lies inside both ranges). Other keys (DECIMAL, BINARY, dates) are written to JSON as text,
    whose order is not the key's, so they are never judged apart."""
    if pa.types.is_integer(key_type):
        python_type: type = int
    elif pa.types.is_string(key_type) or pa.types.is_large_string(key_type):
        python_type = str
    else:
        return False
    values = (*first, *second)
    if not all(isinstance(v, python_type) and not isinstance(v, bool) for v in values):
        return False
    return bool(first[1] < second[0] or second[1] < first[0])


def _key_bounds(column: pa.Array | pa.ChunkedArray) -> tuple[Any, Any]:
    """Lowest and highest value of a one-column key, as Python values (a manifest's min_pk/max_pk)."""
    bounds = pc.min_max(column)
    return bounds["min"].as_py(), bounds["max"].as_py()


def _split_at_part_ends(
    batches: Iterable[pa.RecordBatch], part_rows: int, rows_in_part: Callable[[], int]
) -> Iterator[pa.RecordBatch]:
    """The non-empty batches, cut where the current part reaches `part_rows` rows."""
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            room = max(part_rows - rows_in_part(), 1)
            piece = batch.slice(offset, room)
            offset += piece.num_rows
            yield piece


@dataclass(frozen=True)
class _OpenRead:
    """A month's read once started: its row count, its batches (the first slice already in flight)."""

    rows: int
    batches: Generator[pa.RecordBatch, None, None]
    converter: ZeroDateCounts | None  # None when the window has no rows
    reader: str  # `SourceClient.reader_note` for this read (the next month's read may change it)


def _close_read(started: Future[_OpenRead]) -> None:
    if not started.cancelled() and started.exception() is None:
        started.result().batches.close()


class _ArchivedVersions:
    """Keys and time values of a partition's committed archive, to tell rows it already holds.

    A row is in the source and in the committed archive at once after `restore` put it back (or an
    application re-inserted its key). Archiving it again would put its key into the queryable view
    twice; so a re-run purges the rows whose archived version is the same (key and time value) without
    committing them again, and keeps in the source those whose key is archived with another time value.
    Matching is exact: 64-bit key hashes only preselect the rows whose tuples are compared.
    """

    def __init__(self, table: pa.Table, primary_key: list[str], time_column: str) -> None:
        self.table = table
        self.primary_key = primary_key
        self.time_column = time_column
        self.hashes = pk_hashes([table.column(n) for n in primary_key])

    def split(self, rows: pa.Table) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
        """Keys of `rows` archived with the same time value, and keys archived with another one."""
        hashes = pk_hashes([rows.column(n) for n in self.primary_key])
        hit = np.isin(hashes, self.hashes)
        if not hit.any():
            return set(), set()
        candidates = rows.filter(pa.array(hit))
        archived = self.table.filter(pa.array(np.isin(self.hashes, hashes[hit])))
        versions: dict[tuple[Any, ...], set[Any]] = {}
        for key, value in zip(
            key_tuples(archived, self.primary_key), archived.column(self.time_column).to_pylist(), strict=True
        ):
            versions.setdefault(key, set()).add(value)
        same: set[tuple[Any, ...]] = set()
        other: set[tuple[Any, ...]] = set()
        for key, value in zip(
            key_tuples(candidates, self.primary_key),
            candidates.column(self.time_column).to_pylist(),
            strict=True,
        ):
            if key in versions:
                (same if value in versions[key] else other).add(key)
        return same, other


class ArchiveJob:
    """Archive one monthly partition of one table."""

    def __init__(
        self,
        *,
        source: SourceClient,
        store: ObjectStore,
        table: TableConfig,
        source_table: SourceTable,
        partition_key: str,
        window: Window,
        run_id: str,
        now: datetime,
        log: Log,
        replica_guard: ReplicaGuard | None = None,
        lock_timeout_seconds: float = 0,
    ) -> None:
        if table.archive is None:
            raise ArchiveError(f"table '{table.name}' has no archive block in the config")
        if not source_table.primary_key:
            raise ArchiveError(
                f"table '{table.name}' has no primary key in the source; the archive deletes rows by key, so set "
                f"tables[].primary_key in the config to a unique, NOT NULL column list"
            )
        self.source = source
        self.store = store
        self.table = table
        self.settings = table.archive
        self.source_table = source_table
        self.primary_key = list(source_table.primary_key)
        self.time_column = table.time_column
        self.partition_key = partition_key
        self.window = window
        self.run_id = run_id
        self.now = now
        self.log = log
        self.replica_guard = replica_guard
        self.lock_timeout_seconds = lock_timeout_seconds
        self.layout = PartitionLayout(prefix="", table=table.name, month=window.start)
        self.schema = arrow_schema(source_table)
        self.report = ArchiveReport(table=table.name, partition=partition_key, window=window, run_id=run_id)
        source_table.column(
            self.time_column
        )  # fails early, naming the columns, when the time column is wrong
        self._phase = "taking the table lock"
        self._started = time.monotonic()
        self._stop = threading.Event()  # set by stop_purging, from another thread
        # The bytes `_verify` read back, kept on local disk (at most one month's parts) for the purge.
        self._verified_dir: tempfile.TemporaryDirectory[str] | None = None
        self._verified_copies: dict[str, Path] = {}
        # Rows in the committed folder when `extract_and_verify` listed it, and `report.rows_committed` then.
        self._committed_rows_listed: tuple[int, int] | None = None
        # This month's read, started early by `read_ahead`; `_extract` uses it or starts its own.
        self._ahead: Future[_OpenRead] | None = None
        # Called once every row of the window is read (a backfill starts the next month's read then,
        # while this month writes, uploads and verifies its last rows).
        self.on_rows_read: Callable[[], None] | None = None

    # -- entry point ---------------------------------------------------------------------------------------

    def run(self) -> ArchiveReport:
        """Do the whole partition; raises before any delete when anything cannot be proven."""
        return ArchiveBackfill(jobs=[self]).run()[0]

    # -- the steps, for `run` and `ArchiveBackfill` (each under the table lock, in this order) ------------

    def check_eligible(self) -> None:
        """Raise `ArchiveError` when the retention does not allow archiving this month yet."""
        try:
            check_archive_eligible(self.window, self.settings.retention_period, self.now)
        except ValueError as exc:
            raise ArchiveError(f"table '{self.table.name}': {exc}") from None

    def extract_and_verify(self) -> Manifest | None:
        """Recover this month, extract it into staging and verify it; the verified manifest, or None
        when there is nothing to purge and commit (no rows, or already archived with purge off).

        The partition's `ArchiveReport.seconds` count from here to `count_final`."""
        self._started = time.monotonic()
        self._phase = "recovery of earlier runs"
        self._recover()
        # One listing serves both: no other run writes here (the table lock), and this run's purge
        # thread commits other months meanwhile.
        listed = self.store.list(self.layout.folder)
        committed = self._committed_manifests(listed)
        self._committed_rows_listed = (sum(m.rows for m in committed), self.report.rows_committed)
        # Before extracting, so a tampered or damaged partition is reported, never added to.
        check_committed_partition(
            self.store, self.layout, committed, table=self.table.name, folder_keys=listed
        )
        if not self.settings.purge and committed:
            self.drop_read_ahead()
            self.report.message = (
                f"partition {self.partition_key} is already archived by run(s) "
                f"{', '.join(m.run_id for m in committed)} and purge is off; nothing to do"
            )
            return None
        self._phase = "extraction"
        staged = self._extract()
        if staged is None:
            self.report.message = self.report.message or "no rows to archive in this window"
            return None
        return self._verify(staged)

    def read_ahead(self) -> None:
        """Start reading this month now, in a helper thread: its row count, then its first slice.

        A backfill calls it once the month before has read its last slice (while that month writes,
        uploads and verifies its last rows), so this month does not start by waiting for its first.
        Safe because the backfill has rolled every verified staging of the table forward
        (`recover_months_in_order`) and holds the table lock: only this run deletes from the table
        until it ends, and a roll-forward of this month's staging (`_recover`) drops a read started
        before it. A failure of the early read is not raised: the month reads again when its turn
        comes and reports its own error.
        """
        if self._ahead is not None or self.source.dialect != "mysql":
            return
        starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-read-ahead")
        self._ahead = starter.submit(self._open_read)
        starter.shutdown(wait=False)  # the thread ends once the read is started

    def drop_read_ahead(self) -> None:
        """Drop a read started by `read_ahead` (the month reads again, or not at all)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.add_done_callback(_close_read)  # now, or when the helper thread has started it

    def count_final(self) -> None:
        """Fill in the report's closing counts and the partition's wall time."""
        self._phase = "the final counts"
        self.report.null_time_rows = self.source.count_null_time(self.source_table, self.time_column)
        if self._committed_rows_listed is None:
            self.report.committed_rows_in_partition = sum(m.rows for m in self._committed_manifests())
        else:
            # What the folder held when this month listed it, plus what this month committed since:
            # saves reading every manifest again (no other run writes here, see extract_and_verify).
            listed_rows, committed_before = self._committed_rows_listed
            self.report.committed_rows_in_partition = (
                listed_rows + self.report.rows_committed - committed_before
            )
        self.report.seconds = time.monotonic() - self._started

    def stop_purging(self) -> None:
        """Ask a purge running in another thread to stop before its next delete batch; the rows left
        stay in verified staging, which the next run rolls forward."""
        self._stop.set()

    @contextlib.contextmanager
    def source_failures_explained(self) -> Iterator[None]:
        """Turn a failing source (restart, KILL, lost lock) into an error that names the table and says
        what to do. SQLAlchemy's own message would quote the statement with its bound primary keys."""
        where = f"table '{self.table.name}' partition {self.partition_key}"
        safe = (
            "Nothing was lost: a row leaves the source only after its copy was verified in the store, and "
            "the next run rolls forward what this run verified (or discards what it did not)"
        )
        try:
            yield
        except LockLostError as exc:
            lost = str(exc).removeprefix(f"table '{self.table.name}': ")
            raise ArchiveError(
                f"{where}: {lost}. The run stopped before its next delete, so that two runs never delete from "
                f"the table at once. {safe}. Re-run the partition"
            ) from None
        except sa_exc.DBAPIError as exc:
            raise ArchiveError(
                f"{where}: the source database failed during {self._phase} ({describe_error(exc)}). {safe}. "
                "Re-run the partition once the database answers again"
            ) from None

    # -- recovery ------------------------------------------------------------------------------------------

    def _staging_manifests(self) -> list[tuple[str, Manifest | None]]:
        found: list[tuple[str, Manifest | None]] = []
        keys = self.store.list(self.layout.staging_folder)
        run_ids = {r for r in (PartitionLayout.run_id_of_manifest(k) for k in keys) if r is not None}
        part_runs = {k.rsplit("/", 1)[-1].rsplit("-", 1)[0] for k in keys if k.endswith(".parquet")}
        for run_id in sorted(run_ids | part_runs):
            key = self.layout.manifest_key(run_id, staging=True)
            manifest = Manifest.from_json(self.store.get_bytes(key)) if run_id in run_ids else None
            found.append((run_id, manifest))
        return found

    def _committed_manifests(self, listed: Sequence[str] | None = None) -> list[Manifest]:
        """The partition's committed manifests, from `listed` (the folder's listing) if given."""
        manifests = []
        for key in self.store.list(self.layout.folder) if listed is None else listed:
            if key.startswith(self.layout.staging_folder):
                continue
            if PartitionLayout.run_id_of_manifest(key) is not None:
                manifests.append(Manifest.from_json(self.store.get_bytes(key)))
        return [m for m in manifests if m.state == "committed"]

    def recover_months_in_order(self) -> None:
        """Roll forward the verified staging of every month of the table, oldest month first, this
        month's in its place, before this month extracts.

        A crashed run's verified staging may hold a row that has since moved into another month. If
        that other month were archived first, the row would be deleted there, and the later roll-
        forward could not tell "missing because my crashed run deleted it" from "missing because it
        moved and was archived elsewhere": it would publish the stale copy too. Finishing every
        verified staging of the table first (under the table lock this run holds) makes the moved row
        count as changed, so it stays in MySQL and is archived once, by the month it now belongs to.

        When two months hold such a row (a backfill killed while purging month k with month k+1
        already verified: the row moved from k to k+1 between the two extractions), the stale copy is
        the one extracted first, and a backfill extracts in month order: so the months are finished
        oldest first, including this run's own month, which may be k while k+1 is later in the range.
        """
        self._phase = "recovery of earlier runs"
        self._abort_unfinished_uploads()
        own = self.layout.month
        months = {
            month
            for key in self.store.list(self.layout.table_staging_root + "/")
            if key.endswith(".manifest.json") and (month := PartitionLayout.month_of_key(key)) is not None
        }
        for month in sorted(months | {own}):
            if month == own:
                self._recover()
                continue
            other_layout = PartitionLayout(prefix="", table=self.table.name, month=month)
            verified = [
                Manifest.from_json(self.store.get_bytes(key))
                for key in self.store.list(other_layout.staging_folder)
                if PartitionLayout.run_id_of_manifest(key) is not None
            ]
            verified = [m for m in verified if m.state == "verified"]
            if not verified:
                continue
            manifest = verified[0]
            other = ArchiveJob(
                source=self.source,
                store=self.store,
                table=self.table,
                source_table=self.source_table,
                partition_key=manifest.partition,
                window=Window(
                    datetime.fromisoformat(manifest.window_start), datetime.fromisoformat(manifest.window_end)
                ),
                run_id=self.run_id,
                now=self.now,
                log=self.log,
                replica_guard=self.replica_guard,
            )
            self.log(
                f"partition {manifest.partition} has verified staging from a crashed run; finishing it first"
            )
            other._recover()
            self.report.recovered_runs.extend(
                f"{manifest.partition}:{r}" for r in other.report.recovered_runs
            )

    def _abort_unfinished_uploads(self) -> None:
        """Abort the uploads a killed run left unfinished anywhere under the table's folder.

        Called before any upload of this run, under the table lock: no other upload can be in flight
        there. An unfinished multipart upload never shows in the queryable view, but its parts are
        stored (and billed) until aborted. A failure here only leaves them for the next run."""
        try:
            aborted = self.store.abort_unfinished_uploads(self.layout.table_root)
        except StoreError as exc:
            self.log(
                f"unfinished uploads of earlier runs could not be aborted ({exc}); the next run tries again"
            )
            return
        if aborted:
            self.log(
                f"aborted {aborted} unfinished upload(s) that a killed run left under {self.layout.table_root}/"
            )

    def _recover(self) -> None:
        staged = self._staging_manifests()
        if not staged:
            return  # nothing to recover: the committed folder need not be read
        committed_runs = {m.run_id for m in self._committed_manifests()}
        for run_id, manifest in staged:
            if run_id in committed_runs:
                self.log(f"run {run_id} committed but did not clean up its staging; removing it")
                self._remove_staging(run_id)
            elif manifest is not None and manifest.state == "verified":
                self.log(
                    f"rolling forward run {run_id}: its {manifest.rows:,} rows were verified in the store"
                )
                self.report.recovered_runs.append(run_id)
                # It purges rows of this window: a read of the window started before it may hold them.
                self.drop_read_ahead()
                self.finish(manifest)
            else:
                self.log(f"discarding unverified staging of run {run_id} (nothing was deleted by it)")
                self.report.discarded_staging += 1
                self._remove_staging(run_id)

    def _remove_staging(self, run_id: str) -> None:
        keys = [
            k
            for k in self.store.list(self.layout.staging_folder)
            if k.rsplit("/", 1)[-1].startswith(f"{run_id}-")
            or k.rsplit("/", 1)[-1] == f"{run_id}.manifest.json"
        ]
        undeleted = self.store.delete(keys)
        if undeleted:
            # Under a bucket-default Object Lock staging may be undeletable; it stays outside the queryable view.
            self.log(
                f"{len(undeleted)} staging object(s) could not be removed (retention?); they are never queried"
            )

    # -- extract -------------------------------------------------------------------------------------------

    def _manifest(
        self, state: Any, parts: list[PartInfo], digest: PkDigest, repeated: list[int] | None = None
    ) -> Manifest:
        return Manifest(
            table=self.table.name,
            partition=self.partition_key,
            run_id=self.run_id,
            window_start=self.window.start.isoformat(),
            window_end=self.window.end.isoformat(),
            time_column=self.time_column,
            primary_key=self.primary_key,
            state=state,
            parts=parts,
            rows=digest.count,
            pk_digest=str(digest),
            columns=[c.to_dict() for c in self.source_table.columns],
            source={"database": self.source.label, "table": self.table.name},
            created_at=self.now.isoformat(),
            repeated_key_hashes=repeated or [],
        )

    def _open_read(self) -> _OpenRead:
        stats = self.source.window_stats(self.source_table, self.time_column, self.window)
        if stats.rows == 0:
            batches: Generator[pa.RecordBatch, None, None] = (b for b in ())
            converter: ZeroDateCounts | None = None
        else:
            batches, converter = self.source.stream_window(
                self.source_table,
                schema=self.schema,
                time_column=self.time_column,
                window=self.window,
                chunk_rows=self.settings.chunk_rows,
                stats=stats,
                on_read=self._rows_read,
            )
        return _OpenRead(stats.rows, batches, converter, self.source.reader_note)

    def _rows_read(self) -> None:
        hook, self.on_rows_read = self.on_rows_read, None
        if hook is not None:
            hook()

    def _extract(self) -> Manifest | None:
        started = time.monotonic()
        ahead, self._ahead = self._ahead, None
        opened: _OpenRead | None = None
        if ahead is not None:
            with contextlib.suppress(Exception):  # read again below, raising in this month's step
                opened = ahead.result()
        if opened is None:
            opened = self._open_read()
        expected, batches, converter = opened.rows, opened.batches, opened.converter
        if expected == 0 or converter is None:
            return None
        self.log(f"extracting ~{expected:,} rows of '{self.table.name}' in {self.window.label()}")
        progress = Progress(self.log, "extracted", expected)
        parts: list[PartInfo] = []
        total = PkDigest()
        seen_hashes: list[np.ndarray] = []  # 8 bytes per row, to find keys read twice
        with tempfile.TemporaryDirectory(prefix="etl-archive-") as tmp:
            writer: pq.ParquetWriter | None = None
            part_rows = 0
            part_digest = PkDigest()
            part_bounds: list[Any] = [None, None]
            path = Path(tmp) / "part.parquet"
            part_bytes = self.settings.part_mb * 1024 * 1024

            def current_part_rows() -> int:
                return part_rows

            def close_part() -> None:
                nonlocal writer, part_rows, part_digest, part_bounds
                if writer is None:
                    return
                writer.close()
                key = self.layout.part_key(self.run_id, len(parts), staging=True)
                stored = self.store.put_file(key, path, lock=False)
                parts.append(PartInfo(key=key, rows=part_rows, bytes=stored.size, pk_digest=str(part_digest),
                                      sha256=stored.sha256, min_pk=part_bounds[0], max_pk=part_bounds[1]))  # fmt: skip
                self.report.bytes_written += stored.size
                writer, part_rows, part_digest, part_bounds = None, 0, PkDigest(), [None, None]

            # closing(): a failed upload must end the server-side SELECT now, not at garbage collection,
            # or its metadata lock blocks DDL on the source table.
            with contextlib.closing(batches):
                for batch in _split_at_part_ends(batches, self.settings.part_rows, current_part_rows):
                    if writer is None:
                        writer = pq.ParquetWriter(path, self.schema, **parquet_options(self.schema))
                    try:
                        writer.write_batch(batch)
                    except pa.ArrowInvalid as exc:
                        raise ArchiveError(
                            f"table '{self.table.name}' partition {self.partition_key}: rows cannot be written "
                            f"as Parquet ({exc}). A NULL here is a zero date (0000-00-00) in a primary-key "
                            "column: such rows could not be deleted by key, so the month is not archived; "
                            "fix those values in MySQL. Nothing was deleted"
                        ) from None
                    hashes = pk_hashes([batch.column(n) for n in self.primary_key])
                    seen_hashes.append(hashes)
                    digest = digest_of_hashes(hashes)
                    part_digest, total = part_digest + digest, total + digest
                    part_rows += batch.num_rows
                    if len(self.primary_key) == 1:
                        low, high = _key_bounds(batch.column(self.primary_key[0]))
                        part_bounds = [
                            low if part_bounds[0] is None else min(part_bounds[0], low),
                            high if part_bounds[1] is None else max(part_bounds[1], high),
                        ]
                    progress.add(batch.num_rows)
                    # Rows bound a part of narrow rows, bytes one of wide rows (a BLOB or LONGTEXT table).
                    if part_rows >= self.settings.part_rows or path.stat().st_size >= part_bytes:
                        close_part()
            self._rows_read()  # if the reader did not call it already
            close_part()
        self.report.zero_dates_nulled += converter.invalid_dates
        self.report.rows_extracted += total.count
        self.report.extract_seconds += time.monotonic() - started
        if total.count == 0:
            return None
        self.log(
            progress.line() + f"; staged {len(parts)} part(s), {self.report.bytes_written:,} bytes; "
            f"reader: {opened.reader}"
        )
        repeated = repeated_hashes(seen_hashes)
        if repeated:
            self.log(
                f"{len(repeated)} key(s) were read twice (updated while the window was read in slices); "
                "those rows stay in the source and are archived by a later run"
            )
        # Kept in memory only: the store gets the manifest once it is verified. Staged parts without a
        # verified manifest are discarded by the next run whatever they hold (`_recover` finds them by
        # their run id), so writing the unverified state would only cost a PUT per month (~8 % of
        # the extraction's time in `make bench`).
        return self._manifest("extracted", parts, total, repeated)

    # -- verify --------------------------------------------------------------------------------------------

    def _read_part(self, key: str, columns: list[str], tmp: Path, *, keep: bool = False) -> pa.Table:
        """Read a part's `columns`: from the copy `_verify` kept of it (used once), else from the store.

        With `keep`, the downloaded file stays in `tmp` as the part's verified copy."""
        kept = self._verified_copies.pop(key, None)
        local = kept or tmp / key.rsplit("/", 1)[-1]
        if kept is None:
            self.store.download(key, local)
        try:
            return pq.read_table(local, columns=columns, page_checksum_verification=True)
        except (pa.ArrowInvalid, OSError) as exc:
            keep = False
            raise ArchiveError(f"part {self.store.url(key)} cannot be read back as Parquet: {exc}") from None
        finally:
            if keep:
                self._verified_copies[key] = local
            else:
                local.unlink(missing_ok=True)

    def _discard_verified_copies(self) -> None:
        self._verified_copies.clear()
        if self._verified_dir is not None:
            self._verified_dir.cleanup()
            self._verified_dir = None

    def _check_part(self, part: PartInfo, table: pa.Table) -> None:
        digest = pk_digest([table.column(n) for n in self.primary_key])
        if table.num_rows != part.rows or str(digest) != part.pk_digest:
            raise ArchiveError(
                f"part {self.store.url(part.key)} does not match what was extracted: {table.num_rows:,} rows "
                f"(expected {part.rows:,}), key digest {digest} (expected {part.pk_digest}); nothing was deleted"
            )

    def _verify(self, manifest: Manifest) -> Manifest:
        """Read every part back from the store and match it with what was extracted.

        The files read back stay on local disk until the purge has read them: it deletes by the keys
        and time values of the very bytes verified here, re-checking count and key digest, without
        downloading each part a second time (a quarter of the purge's time in py-spy, 48 months of
        400k rows). A run that rolls forward another run's staging downloads its parts.
        """
        started = time.monotonic()
        self._discard_verified_copies()
        self._verified_dir = tempfile.TemporaryDirectory(prefix="etl-verified-")
        folder = Path(self._verified_dir.name)
        for part in manifest.parts:
            try:
                table = self._read_part(part.key, self.primary_key, folder, keep=True)
            except StoreError as exc:
                raise ArchiveError(f"verification failed, nothing was deleted: {exc}") from None
            self._check_part(part, table)
        verified = manifest.with_state("verified")
        self.store.put_bytes(
            self.layout.manifest_key(manifest.run_id, staging=True), verified.to_json(), lock=False
        )
        self.report.verify_seconds += time.monotonic() - started
        self.log(
            f"verified {len(manifest.parts)} part(s), {manifest.rows:,} rows, key digest {manifest.pk_digest}"
        )
        return verified

    # -- purge + commit ------------------------------------------------------------------------------------

    def finish(self, manifest: Manifest) -> None:
        """Purge what was verified (unless purge is off), then commit it."""
        kept: dict[str, set[tuple[Any, ...]]] = {}
        try:
            archived = self._archived_versions(manifest)
            if self.settings.purge:
                kept = self._purge(manifest, archived)
            elif manifest.repeated_key_hashes or archived is not None:
                # Without a purge the rows read twice, or archived already, still must not enter the
                # archive twice.
                with tempfile.TemporaryDirectory(prefix="etl-keep-") as tmp:
                    for part in manifest.parts:
                        table = self._read_part(part.key, [*self.primary_key, self.time_column], Path(tmp))
                        self._check_part(part, table)
                        already, other_version = self._split_archived(archived, table)
                        kept[part.key] = self._keep_repeated(manifest, table) | already | other_version
        finally:
            self._discard_verified_copies()
        self._commit(manifest, kept)

    def _archived_versions(self, staged: Manifest) -> _ArchivedVersions | None:
        """Keys and time values of the partition's committed archive (other runs'), or None if empty.

        Only committed parts whose key range (manifest min_pk/max_pk) meets the staged keys' range are
        read: a re-run that takes the rows an earlier run left in MySQL (changed, not in the replica,
        max_run_seconds) mostly reads none. Each part read is checked against its manifest."""
        manifests = [m for m in self._committed_manifests() if m.run_id != staged.run_id]
        staged_range = _key_range(staged.parts) if len(self.primary_key) == 1 else None
        key_type = self.schema.field(self.primary_key[0]).type
        candidates = [
            part
            for manifest in manifests
            for part in manifest.parts
            if staged_range is None or not _ranges_apart(key_type, staged_range, (part.min_pk, part.max_pk))
        ]
        if not candidates:
            return None
        columns = [*self.primary_key, self.time_column]
        wanted = pa.schema([self.schema.field(n) for n in columns])
        tables: list[pa.Table] = []
        with tempfile.TemporaryDirectory(prefix="etl-archived-") as tmp:
            for part in candidates:
                try:
                    table = self._read_part(part.key, columns, Path(tmp))
                except StoreError as exc:
                    raise ArchiveError(
                        f"table '{self.table.name}' partition {self.partition_key}: the committed archive "
                        f"cannot be read to leave out rows it already holds: {exc}; nothing more was deleted, "
                        "re-run once the store answers"
                    ) from None
                self._check_part(part, table)
                try:
                    tables.append(table.select(columns).cast(wanted))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                    raise ArchiveError(
                        f"table '{self.table.name}' partition {self.partition_key}: committed part "
                        f"{self.store.url(part.key)} holds {', '.join(columns)} as types that cannot be compared "
                        f"with today's columns ({exc}); nothing more was deleted"
                    ) from None
        self.log(
            f"partition {self.partition_key} is archived already by run(s) {', '.join(m.run_id for m in manifests)}: "
            f"read {len(candidates)} of its part(s) whose keys meet this run's; rows it holds are purged "
            "without being archived twice"
        )
        return _ArchivedVersions(pa.concat_tables(tables), self.primary_key, self.time_column)

    def _split_archived(
        self, archived: _ArchivedVersions | None, table: pa.Table
    ) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
        """Keys of `table` the committed archive holds with the same time value, and with another one
        (`_ArchivedVersions.split`), counted in the report; neither is ever committed again."""
        if archived is None:
            return set(), set()
        already, other_version = archived.split(table)
        if other_version:
            self.log(
                f"{len(other_version):,} row(s) have keys the partition's archive holds with another "
                f"{self.time_column} value; they stay in the source (restore them, or delete them by hand)"
            )
        self.report.rows_already_archived += len(already)
        self.report.rows_kept_archived_differently += len(other_version)
        return already, other_version

    def _purge(
        self, manifest: Manifest, archived: _ArchivedVersions | None
    ) -> dict[str, set[tuple[Any, ...]]]:
        started = time.monotonic()
        deadline = started + self.settings.max_run_seconds if self.settings.max_run_seconds else None
        kept: dict[str, set[tuple[Any, ...]]] = {}
        progress = Progress(self.log, "purged", manifest.rows)
        gate = self.source.throttle_gate(
            max_threads_running=self.settings.max_threads_running,
            max_replica_lag_seconds=self.settings.max_replica_lag_seconds,
        )
        stopped = False
        with tempfile.TemporaryDirectory(prefix="etl-purge-") as tmp:
            for part in manifest.parts:
                # Re-read from the store: the purge trusts only what it can read back itself.
                table = self._read_part(part.key, [*self.primary_key, self.time_column], Path(tmp))
                self._check_part(part, table)
                part_kept = self._keep_repeated(manifest, table)
                # Archived already with the same time value: deleted below, never committed again.
                # Archived with another time value: stays in the source (kept), never committed again.
                already, other_version = self._split_archived(archived, table)
                part_kept |= other_version
                if part_kept:
                    table = table.filter(
                        pa.array([key not in part_kept for key in key_tuples(table, self.primary_key)])
                    )
                # In key order each batch is one short key range, which the delete can scan instead of
                # looking every row up (lib/purge.py); the batches still hold only this part's keys.
                table = table.sort_by([(name, "ascending") for name in self.primary_key])
                for start in range(0, table.num_rows, self.settings.batch_size):
                    if self._stop.is_set():
                        raise PurgeStopped(
                            f"table '{self.table.name}' partition {self.partition_key}: the purge stopped "
                            f"after {self.report.rows_purged:,} rows because the run is ending; the rest are in "
                            "verified staging, which the next run rolls forward"
                        )
                    batch = table.slice(start, self.settings.batch_size)
                    if stopped or (deadline is not None and time.monotonic() >= deadline):
                        if not stopped:
                            self.log(
                                f"max_run_seconds={self.settings.max_run_seconds:g} reached; the rest stays"
                            )
                        stopped = True
                        part_kept.update(key_tuples(batch, self.primary_key))
                        self.report.rows_kept_deadline += batch.num_rows
                        continue
                    if not gate.passes(deadline, self.log):
                        stopped = True
                        part_kept.update(key_tuples(batch, self.primary_key))
                        self.report.rows_kept_deadline += batch.num_rows
                        continue
                    eligible = batch
                    if self.replica_guard is not None:
                        batch_keys = key_tuples(batch, self.primary_key)
                        in_replica = self.replica_guard.holds(
                            batch_keys, batch.column(self.time_column).to_pylist()
                        )
                        present = [k in in_replica for k in batch_keys]
                        missing = [k for k, hit in zip(batch_keys, present, strict=True) if not hit]
                        if missing:
                            part_kept.update(missing)
                            self.report.rows_kept_not_in_replica += len(missing)
                            eligible = batch.filter(pa.array(present))
                    if eligible.num_rows:
                        outcome = self._delete_batch(eligible)
                        self.report.rows_purged += outcome.deleted
                        self.report.rows_kept_changed += len(outcome.changed)
                        self.report.longest_delete_seconds = max(
                            self.report.longest_delete_seconds, outcome.seconds
                        )
                        part_kept.update(outcome.changed)
                    progress.add(batch.num_rows)
                    if self.settings.pause_seconds:
                        time.sleep(self.settings.pause_seconds)
                kept[part.key] = part_kept | already
        self.report.purge_seconds += time.monotonic() - started
        self.log(
            progress.line()
            + f"; deleted {self.report.rows_purged:,}, kept {self.report.rows_kept_changed:,} changed since read, "
            f"{self.report.rows_kept_not_in_replica:,} not yet in the replica as archived; longest delete transaction "
            f"{self.report.longest_delete_seconds:.3f}s"
        )
        return kept

    def _keep_repeated(self, manifest: Manifest, table: pa.Table) -> set[tuple[Any, ...]]:
        """Keys of `table` that the extraction read twice: never purged, left out of the commit."""
        if not manifest.repeated_key_hashes:
            return set()
        hashes = pk_hashes([table.column(n) for n in self.primary_key])
        repeated = np.isin(hashes, np.array(manifest.repeated_key_hashes, dtype=np.uint64))
        keys = {key for key, hit in zip(key_tuples(table, self.primary_key), repeated, strict=True) if hit}
        self.report.rows_kept_changed += int(repeated.sum())
        return keys

    def _delete_batch(self, rows: pa.Table) -> PurgeOutcome:
        """Delete one batch (`SourceClient.delete_unchanged`), only while this run holds the table lock.

        A lock wait timeout or deadlock means another transaction holds some of these rows; InnoDB
        rolled the batch back, so it is retried a few times (the holder is usually a short application
        transaction) before the run stops with an error that says so.

        Raises:
            LockLostError: the table lock is gone (see `SourceClient.assert_lock_held`).
            ArchiveError: the batch kept hitting lock conflicts.
        """
        self._phase = "the purge"
        attempt = 1
        while True:
            self.source.assert_lock_held(self.table.name, "archive")
            try:
                return self.source.delete_unchanged(
                    self.source_table,
                    primary_key=self.primary_key,
                    time_column=self.time_column,
                    rows=rows,
                )
            except sa_exc.DBAPIError as exc:
                what = LOCK_CONFLICT_CODES.get(mysql_error_code(exc) or 0)
                if what is None:
                    raise
                if attempt >= _LOCK_CONFLICT_ATTEMPTS:
                    raise ArchiveError(
                        f"table '{self.table.name}' partition {self.partition_key}: a delete batch of "
                        f"{rows.num_rows:,} rows failed {attempt} times with {what}: another transaction keeps "
                        "some of these rows locked (see information_schema.INNODB_TRX). Each attempt was rolled "
                        "back. Nothing was lost: rows deleted before it are in verified staging parts, which the "
                        "next run commits. Re-run the partition once that transaction has ended"
                    ) from None
                self.log(
                    f"a delete batch of {rows.num_rows:,} rows hit {what}: another transaction holds some of "
                    f"them. The batch was rolled back; retrying ({attempt}/{_LOCK_CONFLICT_ATTEMPTS - 1})"
                )
                time.sleep(attempt)  # back off 1 s, 2 s: give the other transaction time to end
                attempt += 1

    def _commit(self, manifest: Manifest, kept: dict[str, set[tuple[Any, ...]]]) -> None:
        # Publishing is the last step that must not interleave with another run of the table (which
        # could be rolling this very run forward); deletes check the lock the same way.
        self.source.assert_lock_held(self.table.name, "archive")
        started = time.monotonic()
        committed_parts: list[PartInfo] = []
        total = PkDigest()
        with tempfile.TemporaryDirectory(prefix="etl-commit-") as tmp:
            for index, part in enumerate(manifest.parts):
                final_key = self.layout.part_key(manifest.run_id, index, staging=False)
                keep = kept.get(part.key, set())
                if not keep:
                    stored = self.store.copy(part.key, final_key, lock=True)
                    if stored.size != part.bytes:
                        raise ArchiveError(
                            f"copy of {self.store.url(part.key)} to {self.store.url(final_key)} has {stored.size} "
                            f"bytes, expected {part.bytes}; re-run to retry the commit (the rows are safe in staging)"
                        )
                    info = PartInfo(key=final_key, rows=part.rows, bytes=stored.size, pk_digest=part.pk_digest,
                                    sha256=stored.sha256, min_pk=part.min_pk, max_pk=part.max_pk)  # fmt: skip
                else:
                    info_or_none = self._rewrite_without(part, final_key, keep, Path(tmp))
                    if info_or_none is None:
                        continue
                    info = info_or_none
                committed_parts.append(info)
                total = total + PkDigest.parse(info.pk_digest)
        final = manifest.with_state(
            "committed",
            parts=committed_parts,
            rows=total.count,
            pk_digest=str(total),
            committed_at=self.now.isoformat(),
            counts={
                "extracted": manifest.rows,
                "purged_by_this_run": self.report.rows_purged,
                "kept_changed": self.report.rows_kept_changed,
                "kept_not_in_replica": self.report.rows_kept_not_in_replica,
                "kept_deadline": self.report.rows_kept_deadline,
                "already_archived": self.report.rows_already_archived,
                "kept_archived_differently": self.report.rows_kept_archived_differently,
                "zero_dates_nulled": self.report.zero_dates_nulled,
            },
        )
        manifest_key = self.layout.manifest_key(manifest.run_id, staging=False)
        if committed_parts:
            self.store.put_bytes(manifest_key, final.to_json(), lock=True)
            self.report.manifest = self.store.url(manifest_key)
            self.report.parts.extend(self.store.url(p.key) for p in committed_parts)
        self.report.rows_committed += total.count
        self._remove_staging(manifest.run_id)
        self.report.commit_seconds += time.monotonic() - started
        self.log(f"committed {total.count:,} rows in {len(committed_parts)} part(s) of run {manifest.run_id}")

    def _rewrite_without(
        self, part: PartInfo, final_key: str, keep: set[tuple[Any, ...]], tmp: Path
    ) -> PartInfo | None:
        local = tmp / "source.parquet"
        self.store.download(part.key, local)
        table = pq.read_table(local, page_checksum_verification=True)
        self._check_part(part, table)
        mask = [key not in keep for key in key_tuples(table, self.primary_key)]
        filtered = table.filter(pa.array(mask, type=pa.bool_()))
        if filtered.num_rows == 0:
            return None
        out = tmp / "filtered.parquet"
        pq.write_table(filtered, out, **parquet_options(filtered.schema))
        digest = pk_digest([filtered.column(n) for n in self.primary_key])
        stored = self.store.put_file(final_key, out, lock=True)
        check = self._read_part(final_key, self.primary_key, tmp)
        low, high = (
            _key_bounds(filtered.column(self.primary_key[0])) if len(self.primary_key) == 1 else (None, None)
        )
        info = PartInfo(key=final_key, rows=filtered.num_rows, bytes=stored.size, pk_digest=str(digest),
                        sha256=stored.sha256, min_pk=low, max_pk=high)  # fmt: skip
        self._check_part(info, check)
        return info


class LogRelay:
    """A log callable that any thread may call: one writer thread writes every line, in call order,
    the lines of up to `gather_seconds` together as one multi-line event.

    A line in Dagster's event log is a database insert, ~8-9 ms of the run's CPU each (`make bench`:
    a 48-month backfill logs ~250 lines, 2.3 s of the writer thread's time in a 8 s run, taken from
    the two cores the extraction shares with the server). Inside `with LogRelay(context.log.info) as
    log:` the threads that extract and purge only queue a line; the writer thread waits up to
    `gather_seconds` after the first line of a batch for more and writes them as one event, so the
    event log is still written by one thread, in order, with each line at most that much late and a
    backfill's ~5 lines per month in a handful of events. Leaving the block (or `flush`) writes what
    is gathered at once and waits until every queued line is written (at most `drain_seconds`), so
    the step's log is complete before its result. Outside the block a call writes at once.

    If the sink fails, later lines are dropped and leaving the block raises its error, unless the
    block itself raised (that error is the one that explains the run).
    """

    def __init__(self, log: Log, *, drain_seconds: float = 30.0, gather_seconds: float = 1.0) -> None:
        self._log = log
        self._drain_seconds = drain_seconds
        self._gather_seconds = gather_seconds
        self._lines: queue.SimpleQueue[str | object | None] = queue.SimpleQueue()
        self._progress = threading.Condition()
        self._queued = 0
        self._written = 0
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None

    def __enter__(self) -> LogRelay:
        self._writer = threading.Thread(target=self._write_lines, name="etl-log-writer", daemon=True)
        self._writer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        writer, self._writer = self._writer, None
        drained = self.flush(timeout=self._drain_seconds)
        self._lines.put(None)
        if writer is not None and drained:
            writer.join(self._drain_seconds)
        if exc_type is None and self._error is not None:
            raise self._error

    def __call__(self, message: str) -> None:
        if self._writer is None:
            self._log(message)
            return
        with self._progress:
            self._queued += 1
        self._lines.put(message)

    def flush(self, timeout: float | None = None) -> bool:
        """Write the lines queued so far now and wait until they are written; False if `timeout`
        passed first."""
        with self._progress:
            target = self._queued
            self._lines.put(_WRITE_NOW)
            return self._progress.wait_for(lambda: self._written >= target, timeout)

    def _write_lines(self) -> None:
        gathered: list[str] = []
        deadline = 0.0
        while True:
            try:
                item = self._lines.get(timeout=max(deadline - time.monotonic(), 0) if gathered else None)
            except queue.Empty:
                item = _WRITE_NOW  # the batch's time is up
            if isinstance(item, str):
                if not gathered:
                    deadline = time.monotonic() + self._gather_seconds
                gathered.append(item)
                continue
            if gathered:
                self._write("\n".join(gathered), len(gathered))
                gathered = []
            if item is None:
                return

    def _write(self, message: str, lines: int) -> None:
        if self._error is None:
            try:
                self._log(message)
            except BaseException as exc:  # noqa: BLE001 - raised in the thread that leaves the block
                self._error = exc
        with self._progress:
            self._written += lines
            self._progress.notify_all()


_WRITE_NOW = object()
"""Queued by `LogRelay.flush` (and when a batch's time is up): write what is gathered now."""


class ArchiveBackfill:
    """Archive several months of one table in one run, purging each month while the next one is
    extracted.

    Extraction is mostly the client's work (reading, Parquet, upload) and the purge mostly the
    server's (the deletes), so on MySQL the two overlap: month k+1 is extracted and verified in the
    calling thread while month k is purged and committed in one helper thread. Each month keeps its
    own order (verify before delete, commit after purge) and purges run one at a time, in month
    order, all under the one table lock the backfill holds. A crash anywhere leaves at most two
    months in staging, each in a state a single-month run can leave too (verified and partly
    purged; being extracted or verified), and the next run finishes them in month order, like any
    crashed run (`ArchiveJob.recover_months_in_order`). On SQLite (the demo) the months run one after
    another: it has one writer and its readers would block the deletes.

    Args:
        jobs: one `ArchiveJob` per month, in month order, all of one table on one source client.
        on_month_done: called in the calling thread with each month's report, in month order.
    """

    def __init__(
        self,
        *,
        jobs: Sequence[ArchiveJob],
        on_month_done: Callable[[ArchiveReport], None] | None = None,
    ) -> None:
        if not jobs:
            raise ValueError("a backfill needs at least one month")
        self.jobs = list(jobs)
        self.on_month_done = on_month_done
        first = self.jobs[0]
        self.overlap = len(self.jobs) > 1 and first.source.dialect == "mysql"
        self.reports: list[ArchiveReport] = []

    def run(self) -> list[ArchiveReport]:
        """Archive every month; raises at the first month that fails (earlier months stay done)."""
        for job in self.jobs:
            job.check_eligible()  # refuse the whole range before touching anything
        first = self.jobs[0]
        with (
            first.source_failures_explained(),
            first.source.lock(first.table.name, "archive", timeout_seconds=first.lock_timeout_seconds),
        ):
            first.recover_months_in_order()
            if self.overlap:
                for job, following in zip(self.jobs, self.jobs[1:], strict=False):
                    job.on_rows_read = following.read_ahead
                try:
                    self._run_overlapped()
                finally:
                    for job in self.jobs:
                        job.drop_read_ahead()
            else:
                for job in self.jobs:
                    with job.source_failures_explained():
                        verified = job.extract_and_verify()
                        if verified is not None:
                            job.finish(verified)
                        job.count_final()
                    self._done(job)
        return self.reports

    def _run_overlapped(self) -> None:
        pending: tuple[ArchiveJob, Future[None]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-purge") as purger:
            try:
                for job in self.jobs:
                    with job.source_failures_explained():
                        verified = job.extract_and_verify()
                    self._wait(pending)
                    pending = None
                    if verified is None:
                        with job.source_failures_explained():
                            job.count_final()
                        self._done(job)
                    else:
                        pending = (job, purger.submit(self._purge_and_commit, job, verified))
                self._wait(pending)
                pending = None
            except BaseException:
                # The run is failing (or being terminated): the month being purged stops at its next
                # batch and stays in verified staging; its error, if any, is secondary to this one.
                if pending is not None:
                    pending[0].stop_purging()
                    with contextlib.suppress(BaseException):
                        self._wait(pending)
                raise

    @staticmethod
    def _purge_and_commit(job: ArchiveJob, verified: Manifest) -> None:
        with job.source_failures_explained():
            job.finish(verified)
            job.count_final()

    def _wait(self, pending: tuple[ArchiveJob, Future[None]] | None) -> None:
        if pending is None:
            return
        job, future = pending
        future.result()
        self._done(job)

    def _done(self, job: ArchiveJob) -> None:
        self.reports.append(job.report)
        if self.on_month_done is not None:
            self.on_month_done(job.report)


def committed_manifests(store: ObjectStore, table: str, month: datetime) -> list[Manifest]:
    """Committed manifests of one partition, oldest first."""
    layout = PartitionLayout(prefix="", table=table, month=month)
    manifests = [
        Manifest.from_json(store.get_bytes(key))
        for key in store.list(layout.folder)
        if not key.startswith(layout.staging_folder) and PartitionLayout.run_id_of_manifest(key)
    ]
    return sorted((m for m in manifests if m.state == "committed"), key=lambda m: m.committed_at)


def check_committed_partition(
    store: ObjectStore,
    layout: PartitionLayout,
    manifests: Sequence[Manifest],
    *,
    table: str,
    folder_keys: Sequence[str] | None = None,
) -> None:
    """Check that a committed partition's objects agree with its manifests, without reading Parquet.

    Each manifest's row count and key digest must be the sums of its parts'; every listed part must
    exist with the listed size (and SHA-256, where the store reports one); no `.parquet` object may sit
    in the partition's queryable folder unlisted (query engines would read it, restore would not).
    `folder_keys` is the folder's listing where the caller has it; otherwise it is listed here.

    Raises:
        ArchiveError: naming the partition, every disagreement found and what to do.
    """
    problems: list[str] = []
    listed: set[str] = set()
    for manifest in manifests:
        total = PkDigest()
        for part in manifest.parts:
            listed.add(part.key)
            total = total + PkDigest.parse(part.pk_digest)
            stored = store.head(part.key)
            if stored is None:
                problems.append(f"part {store.url(part.key)} of run {manifest.run_id} is missing")
            elif stored.size != part.bytes:
                problems.append(
                    f"part {store.url(part.key)} has {stored.size:,} bytes, its manifest says {part.bytes:,}"
                )
            elif stored.sha256 and part.sha256 and stored.sha256 != part.sha256:
                problems.append(f"part {store.url(part.key)} has another SHA-256 than its manifest records")
        if sum(p.rows for p in manifest.parts) != manifest.rows or total.count != manifest.rows:
            problems.append(
                f"manifest {manifest.run_id} says {manifest.rows:,} rows, its parts list "
                f"{sum(p.rows for p in manifest.parts):,}"
            )
        elif str(total) != manifest.pk_digest:
            problems.append(
                f"manifest {manifest.run_id} has key digest {manifest.pk_digest}, its parts add up to {total}"
            )
    unlisted = [
        k
        for k in (store.list(layout.folder) if folder_keys is None else folder_keys)
        if is_queryable(k) and not k.startswith(layout.staging_folder) and k not in listed
    ]
    problems += [f"{store.url(k)} is in the queryable folder but in no committed manifest" for k in unlisted]
    if problems:
        raise ArchiveError(
            f"table '{table}' partition {layout.month:%Y-%m-%d}: the committed archive does not match its "
            f"manifest(s): {'; '.join(problems)}. Nothing was read, inserted or deleted. Objects in the "
            "archive changed after they were committed: restore the originals from their S3 versions (or "
            "Object Lock copies) and re-run; an unlisted part left by an interrupted commit is finished by "
            "re-running the archive of this partition"
        )


def _max_packet(source: SourceClient) -> int | None:
    """The MySQL server's max_allowed_packet (what a new session gets), or None for other sources."""
    if source.dialect != "mysql":
        return None
    with source.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT @@global.max_allowed_packet").scalar() or 0) or None


# Bytes the INSERT adds around a row's values (statement text, quotes, separators); generous.
_INSERT_OVERHEAD = 64 * 1024
_ESCAPED = (b"\\", b"'", b'"', b"\0", b"\n", b"\r", b"\x1a")


def _statement_bytes(value: Any) -> int:
    """Bytes `value` takes in an INSERT sent by PyMySQL: text escaped, binary as a hex literal (2x)."""
    if isinstance(value, bytes):
        return 2 * len(value) + 12
    if isinstance(value, str):
        encoded = value.encode("utf-8")
        return len(encoded) + sum(encoded.count(c) for c in _ESCAPED) + 2
    return 32


def _check_row_sizes(
    data: pa.Table, *, table: str, partition: str, primary_key: list[str], limit: int
) -> None:
    """ArchiveError when a row cannot be inserted because it exceeds the server's max_allowed_packet."""
    budget = limit - _INSERT_OVERHEAD
    kinds = (pa.types.is_string, pa.types.is_binary, pa.types.is_large_string, pa.types.is_large_binary)
    widths = [
        pc.fill_null(pc.binary_length(data.column(field.name)), 0).cast(pa.int64())
        for field in data.schema
        if any(kind(field.type) for kind in kinds)
    ]
    if not widths:
        return
    raw = widths[0]
    for width in widths[1:]:
        raw = pc.add(raw, width)
    # Only rows near the limit are measured exactly (escaping or hex at most doubles a value).
    for position in pc.indices_nonzero(pc.greater(pc.add(pc.multiply(raw, 2), 64), budget)).to_pylist():
        row = data.slice(position, 1).to_pylist()[0]
        sizes = {name: _statement_bytes(value) for name, value in row.items()}
        size = sum(sizes.values())
        if size > budget:
            widest = max(sizes, key=lambda name: sizes[name])
            key = {k: row[k] for k in primary_key}
            need = 1 << (size + _INSERT_OVERHEAD).bit_length()
            raise ArchiveError(
                f"table '{table}' partition {partition}: row {key} needs an INSERT of about {size:,} bytes (column "
                f"'{widest}' alone {sizes[widest]:,}), more than the source server's max_allowed_packet "
                f"({limit:,}). Raise max_allowed_packet to at least {need:,} (SET GLOBAL max_allowed_packet = "
                f"{need}; on RDS/Aurora in the DB parameter group) and re-run restore; nothing was restored"
            )


@dataclass
class RestoreReport:
    """What `restore` did."""

    parts: int = 0
    rows_in_archive: int = 0
    rows_restored: int = 0
    rows_already_present: int = 0


def restore_partition(
    *,
    source: SourceClient,
    store: ObjectStore,
    source_table: SourceTable,
    table: str,
    month: datetime,
    log: Log,
    batch_size: int = 5000,
    lock_timeout_seconds: float = 0,
) -> RestoreReport:
    """Put archived rows of a partition back into the source, skipping keys already present.

    Every part is checked against its manifest (row count and key digest) before anything is inserted,
    so a corrupted or truncated part is reported instead of half-restored.

    A row restored unchanged leaves the source again, without a second copy, when its partition is
    archived again (`_ArchivedVersions`).

    Raises:
        ArchiveError: no committed archive for the partition, or a part does not match its manifest.
        LockBusyError: an archive run of the table holds its lock longer than `lock_timeout_seconds`.
    """
    # Under the archive's table lock, the manifests read inside it: an archive run of the table must
    # not purge or commit meanwhile, and one that finished while restore waited is restored too.
    with (
        source.lock(table, "archive", timeout_seconds=lock_timeout_seconds),
        tempfile.TemporaryDirectory(prefix="etl-restore-") as tmp,
    ):
        manifests = committed_manifests(store, table, month)
        if not manifests:
            raise ArchiveError(
                f"no committed archive for table '{table}' partition {month:%Y-%m-%d}; nothing to restore"
            )
        primary_key = list(source_table.primary_key or manifests[0].primary_key)
        check_committed_partition(
            store, PartitionLayout(prefix="", table=table, month=month), manifests, table=table
        )
        packet_limit = _max_packet(source)
        report = RestoreReport()
        # Every part is checked before anything is inserted; the checked files wait on local disk, so
        # memory holds one part at a time, not the partition.
        checked: list[Path] = []
        for manifest in manifests:
            for part in manifest.parts:
                local = Path(tmp) / f"{len(checked)}.parquet"
                try:
                    store.download(part.key, local)
                    data = pq.read_table(local, page_checksum_verification=True)
                except StoreError as exc:
                    raise ArchiveError(
                        f"part {store.url(part.key)} cannot be read: {exc}; nothing was restored"
                    ) from None
                except (pa.ArrowInvalid, OSError) as exc:
                    raise ArchiveError(
                        f"part {store.url(part.key)} is not readable Parquet: {exc}; nothing was restored"
                    ) from None
                digest = pk_digest([data.column(n) for n in primary_key])
                if data.num_rows != part.rows or str(digest) != part.pk_digest:
                    raise ArchiveError(
                        f"part {store.url(part.key)} does not match manifest {manifest.run_id}: {data.num_rows} rows, "
                        f"digest {digest} (expected {part.rows} rows, {part.pk_digest}); nothing was restored"
                    )
                if packet_limit:
                    _check_row_sizes(data, table=table, partition=f"{month:%Y-%m-%d}", primary_key=primary_key,
                                     limit=packet_limit)  # fmt: skip
                del data
                checked.append(local)
        # The archive holds a zero date of a NOT NULL column as NULL: it goes back as the zero date.
        zero_dates = {
            c.name: "0000-00-00" if c.data_type == "date" else "0000-00-00 00:00:00"
            for c in source_table.columns
            if not c.nullable and c.data_type in ZERO_DATE_TYPES
        }
        for local in checked:
            with contextlib.closing(pq.ParquetFile(local, page_checksum_verification=True)) as parquet:
                report.parts += 1
                report.rows_in_archive += parquet.metadata.num_rows
                columns = [n for n in parquet.schema_arrow.names if source_table.has_column(n)]
                for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                    rows = [_to_source_values(row, zero_dates) for row in batch.to_pylist()]
                    keys = [tuple(row[c] for c in primary_key) for row in rows]
                    present = source.existing_keys(source_table.name, primary_key, keys)
                    missing = [row for row, key in zip(rows, keys, strict=True) if key not in present]
                    report.rows_restored += source.insert_rows(
                        source_table.name, columns, missing, zero_dates=bool(zero_dates)
                    )
                    report.rows_already_present += len(rows) - len(missing)
            log(
                f"restored {report.rows_restored:,} rows so far ({report.rows_already_present:,} already present)"
            )
    return report


def _to_source_values(row: dict[str, Any], zero_dates: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if value is None and name in zero_dates:
            value = zero_dates[name]
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)  # the session runs in UTC
        out[name] = value
    return out


def plan_partitions(
    *,
    source: SourceClient,
    source_table: SourceTable,
    time_column: str,
    windows: Iterable[tuple[str, Window]],
) -> list[tuple[str, int]]:
    """Rows each partition would archive (and purge): index range counts only, nothing is touched."""
    return [(key, source.count_window(source_table, time_column, window)) for key, window in windows]
