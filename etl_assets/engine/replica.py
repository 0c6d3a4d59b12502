"""Load one window of a table into the warehouse replica. No Dagster here.

The window is the partition (or range of partitions in a single-run backfill) widened back by the
table's `lag`, so rows committed late with an older time value are still picked up; overwriting by
primary key makes re-reading them harmless. Rows stream from a server-side cursor through Arrow
batches into the warehouse's staging table, so memory follows the chunk size, not the table.

Insert modes (AWS Data Pipeline's names): `overwrite_existing` upserts, `keep_existing` only adds new
keys, `append` adds every row once per window (a ledger row makes a retried window a no-op, and no
lookback is re-read), `truncate` replaces the replica with the whole current source table.
The replica never deletes rows that vanished from the source, so the archive's purge never reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as _compute

from etl_assets.config import TableConfig
from etl_assets.lib.schema import SourceTable
from etl_assets.lib.sql import add_column_sql
from etl_assets.lib.typemap import arrow_schema, redshift_byte_limit
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.warehouse import FirstCopyKeyRepeated, LoadResult, WarehouseClient

if TYPE_CHECKING:
    from etl_assets.resources.source import ZeroDateCounts

# pyarrow.compute's functions are generated when the module loads; its stubs do not declare them.
pc: Any = _compute

Log = Callable[[str], None]


class ReplicaError(RuntimeError):
    """The load refused or failed; nothing was committed to the replica."""


@dataclass
class ReplicaReport:
    """What a replica load did; becomes the materialization's metadata."""

    table: str
    window: Window | None
    read_window: Window | None
    insert_mode: str
    created_table: bool = False
    load: LoadResult = field(default_factory=LoadResult)
    watermark_before: datetime | None = None
    oversize_values: int = 0
    zero_dates_nulled: int = 0
    seconds: float = 0.0
    message: str = ""

    @property
    def rows_per_second(self) -> float:
        """Rows staged per second of the whole load."""
        return self.load.rows_staged / self.seconds if self.seconds else 0.0


class OversizePolicy:
    """Applies `replica.oversize` to strings and binaries wider than their warehouse column."""

    def __init__(self, source_table: SourceTable, table: TableConfig, dialect: str) -> None:
        assert table.replica is not None
        self.mode = table.replica.oversize
        self.table = table
        self.primary_key = list(source_table.primary_key)
        self.limits: dict[str, int] = {}
        if dialect == "redshift":
            for column in source_table.columns:
                limit = redshift_byte_limit(column, override=table.replica.column_types.get(column.name))
                if limit is not None:
                    self.limits[column.name] = limit
        self.count = 0

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with oversize values handled, or ReplicaError in `fail` mode."""
        if not self.limits:
            return batch
        arrays = list(batch.columns)
        for name, limit in self.limits.items():
            index = batch.schema.get_field_index(name)
            column = arrays[index]
            lengths = (
                pc.binary_length(column)
                if pa.types.is_binary(column.type)
                else pc.binary_length(column.cast(pa.binary()))
            )
            too_long = pc.fill_null(pc.greater(lengths, limit), False)
            bad = pc.sum(too_long).as_py() or 0
            if not bad:
                continue
            if self.mode == "fail":
                position = pc.index(too_long, True).as_py()
                key = {k: batch.column(k)[position].as_py() for k in self.primary_key}
                size = lengths[position].as_py()
                raise ReplicaError(
                    f"table '{self.table.name}' column '{name}': a value of {size:,} bytes (row {key}) does not fit the "
                    f"warehouse column ({limit:,} bytes). Set replica.oversize to 'truncate' or 'null' for this table, "
                    f"or give the column a wider type in replica.column_types; nothing was loaded"
                )
            self.count += bad
            if self.mode == "null":
                arrays[index] = pc.if_else(too_long, pa.scalar(None, column.type), column)
            else:
                arrays[index] = pa.array(
                    [
                        _truncate(v, limit) if flag else v
                        for v, flag in zip(column.to_pylist(), too_long.to_pylist(), strict=True)
                    ],
                    column.type,
                )
        return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def _truncate(value: str | bytes | None, limit: int) -> str | bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value[:limit]
    # Cut at a character boundary so the UTF-8 stays valid.
    return value.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _refuse_nul(batch: pa.RecordBatch, primary_key: list[str], table: str) -> pa.RecordBatch:
    """`batch` itself, or ReplicaError naming the column and row of a string with a NUL character.

    MySQL strings may hold NUL; PostgreSQL text cannot, and its COPY error names neither column nor key.
    """
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not pa.types.is_string(column.type):
            continue
        has_nul = pc.fill_null(pc.match_substring(column, "\x00"), False)
        if pc.any(has_nul).as_py():
            position = pc.index(has_nul, True).as_py()
            key = {k: batch.column(k)[position].as_py() for k in primary_key}
            raise ReplicaError(
                f"table '{table}' column '{name}' holds a NUL character (row {key}), which PostgreSQL text "
                "cannot store; remove it in the source or exclude the column; nothing was loaded"
            )
    return batch


def _boolean_cast(batch: pa.RecordBatch, booleans: list[str], table: str) -> pa.RecordBatch:
    if not booleans:
        return batch
    arrays = list(batch.columns)
    fields = list(batch.schema)
    for name in booleans:
        index = batch.schema.get_field_index(name)
        column = arrays[index]
        outside = (
            pc.sum(pc.fill_null(pc.invert(pc.is_in(column, pa.array([0, 1], column.type))), False)).as_py()
            or 0
        )
        if outside:
            raise ReplicaError(
                f"table '{table}' column '{name}' is listed in replica.boolean_columns but holds {outside} value(s) "
                "other than 0 and 1; loading it as BOOLEAN would lose them. Remove it from boolean_columns"
            )
        arrays[index] = column.cast(pa.bool_())
        fields[index] = fields[index].with_type(pa.bool_())
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


class ReplicaJob:
    """Load one window (or, for `truncate`, the whole table) of one table into the replica."""

    def __init__(
        self,
        *,
        source: SourceClient,
        warehouse: WarehouseClient,
        table: TableConfig,
        source_table: SourceTable,
        window: Window,
        run_id: str,
        log: Log,
        lock_timeout_seconds: float = 0,
    ) -> None:
        if table.replica is None:
            raise ReplicaError(f"table '{table.name}' has no replica block in the config")
        self.source = source
        self.warehouse = warehouse
        self.table = table
        self.settings = table.replica
        self.source_table = source_table
        self.window = window
        self.run_id = run_id
        self.log = log
        self.lock_timeout_seconds = lock_timeout_seconds
        mode = self.settings.insert_mode
        if mode in ("overwrite_existing", "keep_existing") and not source_table.primary_key:
            raise ReplicaError(
                f"table '{table.name}' has no primary key, which insert_mode {mode} needs to match rows; set "
                "tables[].primary_key in the config, or use insert_mode append or truncate"
            )
        if mode != "truncate" and not source_table.has_column(table.time_column):
            raise ReplicaError(
                f"table '{table.name}' has no column '{table.time_column}' to load incrementally by; set "
                f"tables[].time_column (its columns: {', '.join(source_table.column_names)}) or use insert_mode truncate"
            )

    def read_window(self) -> Window | None:
        """What is read from the source: the window widened by `lag` (none for append, all for truncate)."""
        mode = self.settings.insert_mode
        if mode == "truncate":
            return None
        if mode == "append":
            return self.window
        return self.window.widen_back(
            timedelta(seconds=self.settings.lag_period.as_timedelta().total_seconds())
        )

    def run(self) -> ReplicaReport:
        """Do the load and return the report."""
        started = time.monotonic()
        read_window = self.read_window()
        report = ReplicaReport(
            table=self.table.name,
            window=self.window,
            read_window=read_window,
            insert_mode=self.settings.insert_mode,
        )
        target = self.table.asset_name
        with self.source.lock(self.table.name, "replica", timeout_seconds=self.lock_timeout_seconds):
            report.created_table = self.warehouse.ensure_table(
                self.source_table, target=target, settings=self.settings, time_column=self.table.time_column
            )
            if not report.created_table:
                self._add_missing_columns(target)
            report.watermark_before, _ = self.warehouse.last_load(target)
            if self.settings.insert_mode == "append" and self.warehouse.already_loaded(
                target, self.window.start, self.window.end
            ):
                report.message = f"window {self.window.label()} is covered by an earlier append load; a retry appends nothing"
                report.seconds = time.monotonic() - started
                return report
            what = "the whole table" if read_window is None else read_window.label()
            self.log(
                f"loading {what} of '{self.table.name}' into {self.warehouse.schema}.{target} ({self.settings.insert_mode})"
            )
            try:
                report.load, oversize, converter = self._load(target, read_window, direct_first_copy=True)
            except FirstCopyKeyRepeated as exc:
                # Rare: a row updated while the table was read came twice. Nothing was committed; the
                # staging merge keeps its newest copy, at the price of reading the source again.
                self.log(
                    f"{exc}; loading again through the staging table, which keeps the newest row per key"
                )
                report.load, oversize, converter = self._load(target, read_window, direct_first_copy=False)
            report.oversize_values = oversize.count
            report.zero_dates_nulled = converter.invalid_dates
        report.seconds = time.monotonic() - started
        load = report.load
        self.log(
            f"loaded {load.rows_staged:,} rows ({load.rows_inserted:,} new, {load.rows_replaced:,} replaced) in "
            f"{report.seconds:.2f}s ({report.rows_per_second:,.0f} rows/s); watermark {load.watermark}"
        )
        return report

    def _load(
        self, target: str, read_window: Window | None, *, direct_first_copy: bool
    ) -> tuple[LoadResult, OversizePolicy, ZeroDateCounts]:
        """Read the window from the source and load it (`WarehouseClient.load`)."""
        batches, converter = self._batches(read_window)
        oversize = OversizePolicy(self.source_table, self.table, self.warehouse.dialect)
        booleans = list(self.settings.boolean_columns)
        primary_key = list(self.source_table.primary_key)
        refuse_nul = self.warehouse.dialect == "postgresql"

        def prepared() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                if refuse_nul:
                    batch = _refuse_nul(batch, primary_key, self.table.name)
                yield _boolean_cast(oversize.apply(batch), booleans, self.table.name)

        try:
            load = self.warehouse.load(
                table=target,
                source_table=self.source_table,
                batches=prepared(),
                insert_mode=self.settings.insert_mode,
                time_column=self.table.time_column
                if self.source_table.has_column(self.table.time_column)
                else None,
                window=(self.window.start, self.window.end),
                run_id=self.run_id,
                log=self.log,
                direct_first_copy=direct_first_copy,
            )
        finally:
            # A failed load stops reading mid-stream. Close the source cursor now, not whenever the
            # generator is collected (the exception's traceback keeps it alive), so its connection,
            # open transaction and table metadata lock are released and DDL on the source is not blocked.
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        return load, oversize, converter

    def _add_missing_columns(self, target: str) -> None:
        # Runs only after the drift gate passed: either the contract itself has these columns or the
        # table's on_drift: evolve policy let additive columns through.
        present = set(self.warehouse.columns(target))
        missing = [c for c in self.source_table.columns if c.name not in present]
        if not missing:
            return
        assert self.settings is not None
        statements = [
            add_column_sql(
                self.warehouse.schema,
                target,
                column,
                self.warehouse.dialect,
                boolean=column.name in self.settings.boolean_columns,
                override=self.settings.column_types.get(column.name),
            )
            for column in missing
        ]
        self.log(f"adding column(s) {', '.join(c.name for c in missing)} to {self.warehouse.schema}.{target}")
        self.warehouse.add_columns(target, statements)

    def _batches(
        self, read_window: Window | None
    ) -> tuple[Generator[pa.RecordBatch, None, None], ZeroDateCounts]:
        schema = arrow_schema(self.source_table)
        if read_window is None:
            return self.source.stream_all(
                self.source_table, schema=schema, chunk_rows=self.settings.chunk_rows
            )
        return self.source.stream_window(
            self.source_table,
            schema=schema,
            time_column=self.table.time_column,
            window=read_window,
            chunk_rows=self.settings.chunk_rows,
        )
