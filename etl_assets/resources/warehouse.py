"""The reporting warehouse: Redshift (product), PostgreSQL (its local stand-in) and DuckDB (embedded).

All three share the type map, the DDL and the staging-table + merge SQL from `lib/`; only the bulk
load into the staging table differs:

- Redshift: Parquet parts are uploaded to the S3 staging prefix, `COPY ... FORMAT AS PARQUET`
  loads them into a temporary table, and the staged files are removed after the merge.
- PostgreSQL: `COPY ... FROM STDIN` streams CSV made from the Arrow batches.
- DuckDB: the Arrow batches are inserted directly.

A load is one transaction: staging, merge and the load-ledger row commit together or not at all,
so a retried load never leaves duplicates or half a merge behind.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy import exc as sa_exc

from etl_assets.config import resolve_setting
from etl_assets.lib import sql
from etl_assets.lib.schema import SourceTable
from etl_assets.lib.typemap import Dialect, warehouse_types
from etl_assets.resources.store import ObjectStore, open_store

if TYPE_CHECKING:
    # The Arrow side is imported by the functions that convert or write batches: the code location
    # imports this module for `WarehouseResource` and loads without pyarrow (test_definitions.py).
    import pyarrow as pa


def _compute() -> Any:
    """pyarrow.compute; its functions are generated when it loads, and its stubs do not declare them."""
    import pyarrow.compute

    return pyarrow.compute


LEDGER_TABLE = "_etl_assets_loads"


class FirstCopyKeyRepeated(RuntimeError):
    """A first copy straight into the empty target met a key twice; nothing was committed.

    The caller loads again through staging, whose merge keeps the newest row per key.
    """


class WarehouseError(RuntimeError):
    """The warehouse refused a statement or a load; the message names the table and the fix."""


@dataclass
class LoadResult:
    """What one load did."""

    rows_staged: int = 0
    rows_inserted: int = 0
    rows_replaced: int = 0
    rows_deleted: int = 0
    bytes_staged: int = 0
    seconds: float = 0.0
    watermark: datetime | None = None
    skipped_reason: str = ""
    copied_directly: bool = False


def dialect_of(url: str) -> Dialect:
    """The warehouse dialect of a resolved URL."""
    if url.startswith("duckdb"):
        return "duckdb"
    if url.startswith("postgresql"):
        return "postgresql"
    if url.startswith("redshift"):
        return "redshift"
    raise WarehouseError(
        f"unsupported warehouse URL scheme '{url.split(':', 1)[0]}'; use redshift+redshift_connector://, "
        "postgresql+psycopg:// or duckdb:///path.duckdb"
    )


# MySQL date and time types that can hold zero dates ('0000-00-00', '2024-00-12').
_ZERO_DATE_TYPES = frozenset({"date", "datetime", "timestamp"})


def replica_shape(source_table: SourceTable) -> SourceTable:
    """The table as its replica declares it: date and time columns outside the key accept NULL.

    Zero dates, which no warehouse can hold, are loaded as NULL (and counted); legacy schemas keep
    them mostly in NOT NULL columns with a `'0000-00-00'` default, so those columns must be nullable
    in the replica or the load would fail on them.
    """
    key = set(source_table.primary_key)
    columns = tuple(
        replace(column, nullable=True)
        if column.data_type in _ZERO_DATE_TYPES and not column.nullable and column.name not in key
        else column
        for column in source_table.columns
    )
    return replace(source_table, columns=columns)


def _ledger_ddl(schema: str, dialect: Dialect) -> str:
    target = sql.qualified(schema, LEDGER_TABLE, dialect)
    text = "VARCHAR(65535)" if dialect == "redshift" else "VARCHAR"
    stamp = "TIMESTAMPTZ"
    return (
        f"CREATE TABLE IF NOT EXISTS {target} (table_name {text} NOT NULL, window_start {stamp}, window_end {stamp}, "
        f"run_id {text} NOT NULL, insert_mode {text} NOT NULL, rows_loaded BIGINT NOT NULL, watermark {stamp}, "
        f"loaded_at {stamp} NOT NULL)"
    )


def _max_time(batch: pa.RecordBatch, column: str) -> datetime | None:
    values = batch.column(column)
    if values.null_count == len(values):
        return None
    found = _compute().max(values).as_py()
    if isinstance(found, datetime):
        return found if found.tzinfo else found.replace(tzinfo=UTC)
    if found is not None:
        return datetime(found.year, found.month, found.day, tzinfo=UTC)
    return None


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Make a batch writable as PostgreSQL CSV: intervals and bytea need text forms."""
    import pyarrow as pa

    pc = _compute()
    arrays = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_duration(field.type):
            micros = pc.cast(column.cast(pa.int64()), pa.string())
            column = pc.binary_join_element_wise(micros, pa.scalar(" microseconds"), "")
        elif pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            column = pa.array(
                [None if v is None else "\\x" + v.hex() for v in column.to_pylist()], pa.string()
            )
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _in_column_order(batch: pa.RecordBatch, order: Sequence[str], target: str) -> pa.RecordBatch:
    """`batch` with its columns in the replica's order (Redshift COPY from Parquet matches by position)."""
    if batch.schema.names == list(order):
        return batch
    missing = [name for name in order if name not in batch.schema.names]
    extra = [name for name in batch.schema.names if name not in order]
    if missing or extra:
        raise WarehouseError(
            f"{target} has columns {missing} the source rows lack and lacks {extra}; COPY from Parquet needs the "
            "same columns on both sides. Let the drift check and `on_drift` settle the schema first"
        )
    return batch.select(list(order))


def _redshift_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Cast unsigned integers up one size: Redshift has no unsigned types (see the type map)."""
    import pyarrow as pa

    casts = {
        pa.uint8(): pa.int16(),
        pa.uint16(): pa.int32(),
        pa.uint32(): pa.int64(),
        pa.uint64(): pa.decimal128(20, 0),
    }
    arrays = [
        column.cast(casts[field.type]) if field.type in casts else column
        for field, column in zip(batch.schema, batch.columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


@dataclass
class _Transaction:
    """An open warehouse transaction: `execute(sql) -> rowcount` and the driver connection for bulk loads."""

    execute: Callable[[str], int]
    raw: Any


class WarehouseClient:
    """Statements and loads against one warehouse schema."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        staging: ObjectStore | None = None,
        staging_url: str = "",
        iam_role: str = "",
        region: str | None = None,
    ) -> None:
        self.dialect: Dialect = dialect_of(url)
        self.schema = schema
        self.staging = staging
        self.staging_url = staging_url.rstrip("/")
        self.iam_role = iam_role
        self.region = region
        self.url = url
        self._duck: Any = None
        if self.dialect == "duckdb":
            self.engine = None
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)

    # -- sessions --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Transaction]:
        """One transaction; commits when the block ends, rolls back on any exception."""
        if self.dialect == "duckdb":
            con = self._duckdb()
            con.execute("BEGIN TRANSACTION")
            try:
                yield _Transaction(lambda text: _duck_rowcount(con.execute(text)), con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return
        assert self.engine is not None
        with self.engine.begin() as conn:
            # COPY needs the driver's own connection; it is the same session, so the same transaction.
            yield _Transaction(
                lambda text: conn.exec_driver_sql(self._driver_text(text)).rowcount,
                conn.connection.driver_connection,
            )

    def _driver_text(self, text: str) -> str:
        """`text` as the driver must receive it: psycopg and redshift_connector format every statement
        with %s placeholders, even one sent without parameters, so a % in a quoted column name
        (`"50% off"`) is doubled to stay a %."""
        assert self.engine is not None
        return text.replace("%", "%%") if self.engine.dialect.paramstyle in ("format", "pyformat") else text

    def _param_identifier(self, name: str) -> str:
        """A quoted identifier for a statement that also carries %s placeholders (see `_driver_text`)."""
        quoted = sql.quote_identifier(name, self.dialect)
        return self._driver_text(quoted) if self.engine is not None else quoted

    def _duckdb(self) -> Any:
        import duckdb

        if self._duck is None:
            path = self.url.split("duckdb:///", 1)[-1] or ":memory:"
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + 120
            while True:
                try:
                    self._duck = duckdb.connect(path)
                    break
                except duckdb.IOException as exc:  # another process holds the file; runs take turns
                    if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                        raise WarehouseError(f"cannot open the DuckDB warehouse {path}: {exc}") from None
                    time.sleep(0.5)
        return self._duck

    def close(self) -> None:
        """Close connections."""
        if self._duck is not None:
            self._duck.close()
            self._duck = None
        if self.engine is not None:
            self.engine.dispose()

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement and return all rows."""
        if self.dialect == "duckdb":
            return [tuple(r) for r in self._duckdb().execute(text, list(params)).fetchall()]
        assert self.engine is not None
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(text, tuple(params)).all()]

    def _param(self) -> str:
        return "?" if self.dialect == "duckdb" else "%s"

    # -- DDL -------------------------------------------------------------------------------------------

    def table_exists(self, table: str) -> bool:
        """True when `schema.table` exists."""
        rows = self.query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = "
            f"{self._param()} AND table_name = {self._param()}",
            (self.schema, table),
        )
        return bool(rows)

    def columns(self, table: str) -> dict[str, str]:
        """The replica's actual columns and their types as the warehouse reports them."""
        if self.dialect == "duckdb":
            rows = self.query(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
                "AND table_name = ? ORDER BY ordinal_position",
                (self.schema, table),
            )
            return {str(n): str(t) for n, t in rows}
        rows = self.query(
            "SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.schema, table),
        )
        out: dict[str, str] = {}
        for name, data_type, length, precision, scale in rows:
            kind = str(data_type)
            if length is not None and kind in ("character varying", "character"):
                kind = f"{kind}({length})"
            elif kind == "numeric" and precision is not None:
                kind = f"numeric({precision},{scale or 0})"
            out[str(name)] = kind
        return out

    def ensure_table(
        self, source_table: SourceTable, *, target: str, settings: Any, time_column: str
    ) -> bool:
        """Create the schema, the replica table and the load ledger if missing; True when the table was created."""
        existed = self.table_exists(target)
        source_table = replica_shape(source_table)
        if settings.insert_mode == "append":
            # Append keeps every version of a row, so the replica must not declare the key unique.
            source_table = replace(source_table, primary_key=())
        ddl = sql.create_table_sql(
            source_table,
            schema=self.schema,
            target_name=target,
            dialect=self.dialect,
            boolean_columns=settings.boolean_columns,
            column_types=settings.column_types,
            distkey=settings.distkey,
            sortkey=settings.sortkey,
            time_column=time_column if source_table.has_column(time_column) else None,
        )
        with self._transaction() as tx:
            tx.execute(sql.create_schema_sql(self.schema, self.dialect))
            tx.execute(ddl)
            tx.execute(_ledger_ddl(self.schema, self.dialect))
        return not existed

    def add_columns(self, table: str, statements: Iterable[str]) -> None:
        """Run `ALTER TABLE ... ADD COLUMN` statements (drift policy `evolve`) in one transaction."""
        with self._transaction() as tx:
            for statement in statements:
                tx.execute(statement)

    # -- reads -----------------------------------------------------------------------------------------

    def key_times(
        self, table: str, primary_key: Sequence[str], time_column: str, keys: Sequence[tuple[Any, ...]]
    ) -> dict[tuple[Any, ...], Any]:
        """The time column's value of each of `keys` the replica holds (one query per call; callers batch)."""
        if not keys:
            return {}
        target = sql.qualified(self.schema, table, self.dialect)
        cols = ", ".join(self._param_identifier(c) for c in primary_key)
        placeholder = self._param()
        if len(primary_key) == 1:
            marks = ", ".join(placeholder for _ in keys)
            where = f"{cols} IN ({marks})"
            params: list[Any] = [_bindable(k[0]) for k in keys]
        else:
            one = (
                "(" + " AND ".join(f"{self._param_identifier(c)} = {placeholder}" for c in primary_key) + ")"
            )
            where = " OR ".join(one for _ in keys)
            params = [_bindable(v) for k in keys for v in k]
        rows = self.query(
            f"SELECT {cols}, MAX({self._param_identifier(time_column)}) FROM {target} WHERE {where} GROUP BY {cols}",
            params,
        )
        # MAX: a replica that does not enforce its key (Redshift, append mode) may hold a key twice.
        return {tuple(_normalise_key(v) for v in row[:-1]): row[-1] for row in rows}

    def count_rows(self, table: str, time_column: str | None = None, start: datetime | None = None,
                   end: datetime | None = None) -> int:  # fmt: skip
        """Rows in the replica, optionally with the time column in `[start, end)`."""
        target = sql.qualified(self.schema, table, self.dialect)
        if time_column is None or start is None or end is None:
            return int(self.query(f"SELECT COUNT(*) FROM {target}")[0][0])
        tc = sql.quote_identifier(time_column, self.dialect)
        p = self._param()
        return int(self.query(f"SELECT COUNT(*) FROM {target} WHERE {tc} >= {p} AND {tc} < {p}",
                              (_naive(start), _naive(end)))[0][0])  # fmt: skip

    def last_load(self, table: str) -> tuple[datetime | None, datetime | None]:
        """(watermark, loaded_at) of the newest ledger row for `table`."""
        if not self.table_exists(LEDGER_TABLE):
            return None, None
        ledger = sql.qualified(self.schema, LEDGER_TABLE, self.dialect)
        p = self._param()
        rows = self.query(
            f"SELECT MAX(watermark), MAX(loaded_at) FROM {ledger} WHERE table_name = {p}", (table,)
        )
        watermark, loaded_at = rows[0] if rows else (None, None)
        return _aware(watermark), _aware(loaded_at)

    def already_loaded(self, table: str, start: datetime | None, end: datetime | None) -> bool:
        """True when a committed append load covered this window (append idempotency).

        Covered, not only equal: after a single-run backfill appended a range, re-running one of its
        partitions is a retry of rows already appended, not new rows.
        """
        if not self.table_exists(LEDGER_TABLE):
            return False
        ledger = sql.qualified(self.schema, LEDGER_TABLE, self.dialect)
        p = self._param()
        rows = self.query(
            f"SELECT COUNT(*) FROM {ledger} WHERE table_name = {p} AND insert_mode = 'append' "
            f"AND window_start <= {p} AND window_end >= {p}",
            (table, start, end),
        )
        return bool(rows and rows[0][0])

    # -- load ------------------------------------------------------------------------------------------

    def load(
        self,
        *,
        table: str,
        source_table: SourceTable,
        batches: Iterable[pa.RecordBatch],
        insert_mode: str,
        time_column: str | None,
        window: tuple[datetime | None, datetime | None],
        run_id: str,
        log: Callable[[str], None],
        direct_first_copy: bool = True,
    ) -> LoadResult:
        """Stage `batches` and merge them into `schema.table` in one transaction.

        A first copy into an empty PostgreSQL target (modes that match by key) skips the staging table:
        COPY goes straight into the target, whose primary key refuses a key met twice. The merge
        would write every row a second time (and sort them all to keep one per key), which made the
        first copy of 2M rows cost ~1.6x a plain COPY (`make bench`). Redshift does not enforce keys,
        so it always stages.

        Raises:
            FirstCopyKeyRepeated: the direct copy met a key twice (a row read twice); nothing was
                committed, load again with `direct_first_copy=False`.
            WarehouseError: naming the table and what the warehouse said; nothing was committed.
        """
        started = time.monotonic()
        result = LoadResult()
        staging = sql.staging_table_name(table)
        columns = source_table.column_names
        merge = sql.merge_sql(
            schema=self.schema,
            table=table,
            staging=staging,
            columns=columns,
            primary_key=list(source_table.primary_key),
            insert_mode=insert_mode,  # type: ignore[arg-type]
            dialect=self.dialect,
            dedupe_order_by=[time_column] if time_column else [],
        )
        create_stage = sql.create_staging_sql(
            staging=staging, schema=self.schema, table=table, dialect=self.dialect
        )
        staged_keys: list[str] = []
        target = sql.qualified(self.schema, table, self.dialect)
        direct = False
        try:
            with self._transaction() as tx:
                direct = (
                    direct_first_copy
                    and self.dialect == "postgresql"
                    and insert_mode in ("overwrite_existing", "keep_existing")
                    and bool(source_table.primary_key)
                    and tx.execute(f"SELECT 1 FROM {target} LIMIT 1") == 0
                )
                if direct:
                    self._copy_postgres(tx, target, columns, batches, result, _tracker(result, time_column))
                    result.rows_inserted = result.rows_staged
                    result.copied_directly = True
                else:
                    tx.execute(create_stage)
                    self._fill_stage(
                        tx,
                        table,
                        staging,
                        source_table,
                        batches,
                        result,
                        staged_keys,
                        run_id,
                        time_column,
                        log,
                    )
                    counts = [tx.execute(statement) for statement in merge]
                    if len(counts) == 2:
                        if insert_mode == "truncate":
                            result.rows_deleted = max(counts[0], 0)
                        else:
                            result.rows_replaced = max(counts[0], 0)
                    result.rows_inserted = max(counts[-1], 0) - result.rows_replaced
                    if self.dialect != "postgresql":
                        tx.execute(sql.drop_staging_sql(staging=staging, dialect=self.dialect))
                tx.execute(self._ledger_insert(table, window, run_id, insert_mode, result))
        except (sa_exc.DBAPIError, Exception) as exc:
            if isinstance(exc, WarehouseError):
                raise
            if direct and getattr(getattr(exc, "orig", exc), "sqlstate", None) == _UNIQUE_VIOLATION:
                raise FirstCopyKeyRepeated(
                    f"the first copy into the empty {self.schema}.{table} met a key twice (a row read twice, "
                    f"updated while the table was read): {str(exc).splitlines()[0]}"
                ) from exc
            lost = ""
            if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
                lost = (
                    "the connection to the warehouse was lost mid-load (server restarted or network failure); "
                    "re-run the load, a retry never duplicates rows. "
                )
            raise WarehouseError(
                f"loading {self.schema}.{table} failed and was rolled back (nothing committed): {lost}"
                f"{getattr(exc, 'orig', exc)}"
            ) from exc
        finally:
            if staged_keys and self.staging is not None:
                self.staging.delete(staged_keys)
        result.seconds = time.monotonic() - started
        return result

    def _ledger_insert(
        self,
        table: str,
        window: tuple[datetime | None, datetime | None],
        run_id: str,
        mode: str,
        result: LoadResult,
    ) -> str:
        ledger = sql.qualified(self.schema, LEDGER_TABLE, self.dialect)

        def stamp(value: datetime | None) -> str:
            return "NULL" if value is None else sql.quote_literal(value.astimezone(UTC).isoformat())

        return (
            f"INSERT INTO {ledger} (table_name, window_start, window_end, run_id, insert_mode, rows_loaded, watermark, "
            f"loaded_at) VALUES ({sql.quote_literal(table)}, {stamp(window[0])}, {stamp(window[1])}, "
            f"{sql.quote_literal(run_id)}, {sql.quote_literal(mode)}, {int(result.rows_staged)}, "
            f"{stamp(result.watermark)}, {stamp(datetime.now(UTC))})"
        )

    def _fill_stage(
        self,
        tx: _Transaction,
        table: str,
        staging: str,
        source_table: SourceTable,
        batches: Iterable[pa.RecordBatch],
        result: LoadResult,
        staged_keys: list[str],
        run_id: str,
        time_column: str | None,
        log: Callable[[str], None],
    ) -> None:
        columns = source_table.column_names
        track = _tracker(result, time_column)

        if self.dialect == "duckdb":
            con = tx.raw
            stage = sql.quote_identifier(staging, "duckdb")
            column_list = ", ".join(sql.quote_identifier(c, "duckdb") for c in columns)
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                con.register("etl_assets_batch", batch)
                # By name: after an added column the replica's column order can differ from the source's.
                con.execute(f"INSERT INTO {stage} ({column_list}) SELECT {column_list} FROM etl_assets_batch")
                # Not in a `finally`: after a failed INSERT the transaction is aborted, unregister would fail
                # too and hide the real error; the view goes with the connection or the next register.
                con.unregister("etl_assets_batch")
                result.bytes_staged += batch.nbytes
                track(batch)
            return
        if self.dialect == "postgresql":
            self._copy_postgres(
                tx, sql.quote_identifier(staging, "postgresql"), columns, batches, result, track
            )
            return
        self._copy_redshift(
            tx, table, staging, source_table, batches, result, staged_keys, run_id, track, log
        )

    def _copy_postgres(
        self,
        tx: _Transaction,
        relation: str,
        columns: list[str],
        batches: Iterable[pa.RecordBatch],
        result: LoadResult,
        track: Callable[[pa.RecordBatch], None],
    ) -> None:
        """COPY the batches as CSV into `relation` (a quoted table name: the staging table, or the target)."""
        import pyarrow.csv as pa_csv

        column_list = ", ".join(sql.quote_identifier(c, "postgresql") for c in columns)
        copy_sql = f"COPY {relation} ({column_list}) FROM STDIN (FORMAT csv)"
        with tx.raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                buffer = io.BytesIO()
                pa_csv.write_csv(_csv_ready(batch), buffer, pa_csv.WriteOptions(include_header=False))
                data = buffer.getvalue()
                copy.write(data)
                result.bytes_staged += len(data)
                track(batch)

    def _copy_redshift(
        self,
        tx: _Transaction,
        table: str,
        staging: str,
        source_table: SourceTable,
        batches: Iterable[pa.RecordBatch],
        result: LoadResult,
        staged_keys: list[str],
        run_id: str,
        track: Callable[[pa.RecordBatch], None],
        log: Callable[[str], None],
    ) -> None:
        if self.staging is None or not self.staging_url:
            raise WarehouseError(
                "a Redshift load needs warehouse.staging_url (s3://bucket/prefix) to COPY from"
            )
        import pyarrow as pa
        import pyarrow.parquet as pq

        prefix = f"{staging}/{run_id}"
        # COPY from Parquet fills the staging table (LIKE the replica) by column position, and a column
        # added to the replica later sits at its end, wherever the source has it.
        order = list(self.columns(table))
        with tempfile.TemporaryDirectory(prefix="etl-stage-") as tmp:
            for index, batch in enumerate(batches):
                if batch.num_rows == 0:
                    continue
                ready = _redshift_ready(_in_column_order(batch, order, f"{self.schema}.{table}"))
                path = Path(tmp) / f"part-{index}.parquet"
                pq.write_table(pa.Table.from_batches([ready]), path, compression="zstd")
                key = f"{prefix}/part-{index:05d}.parquet"
                # Listed before the upload: a failed upload (or its size check) may still leave the object.
                staged_keys.append(key)
                stored = self.staging.put_file(key, path, lock=False)
                result.bytes_staged += stored.size
                track(batch)
                path.unlink()
        if not staged_keys:
            return
        has_json = any(c.is_json for c in source_table.columns)
        log(f"staged {len(staged_keys)} Parquet file(s) under {self.staging_url}/{prefix}/; running COPY")
        copy = sql.redshift_copy_sql(
            staging_table=staging,
            s3_prefix_or_manifest=f"{self.staging_url}/{prefix}/",
            iam_role=self.iam_role,
            region=self.region,
            serialize_to_json=has_json,
        )
        tx.execute(copy)


_UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE for a duplicate key


def _tracker(result: LoadResult, time_column: str | None) -> Callable[[pa.RecordBatch], None]:
    """A callback counting each loaded batch's rows into `result` and raising its watermark."""

    def track(batch: pa.RecordBatch) -> None:
        result.rows_staged += batch.num_rows
        if time_column:
            newest = _max_time(batch, time_column)
            if newest is not None and (result.watermark is None or newest > result.watermark):
                result.watermark = newest

    return track


def _duck_rowcount(cursor: Any) -> int:
    try:
        row = cursor.fetchone()
    except Exception:  # noqa: BLE001 - statements without a result set
        return -1
    return int(row[0]) if row and isinstance(row[0], int) else -1


def _bindable(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _normalise_key(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


class ReplicaKeys:
    """`ReplicaGuard` for the archive: which archived rows the replica already holds, as archived.

    A key alone is not enough: a row whose replica copy is older than the archived version (updated
    after the replica's last load) would leave the source, and the replica would keep the old
    version for good. So the replica's time value must be the archived one or newer.
    """

    def __init__(
        self, client: WarehouseClient, table: str, primary_key: Sequence[str], time_column: str
    ) -> None:
        self.client = client
        self.table = table
        self.primary_key = list(primary_key)
        self.time_column = time_column

    def holds(self, keys: Sequence[tuple[Any, ...]], times: Sequence[Any]) -> set[tuple[Any, ...]]:
        """The keys whose replica row has `times`' value or a newer one (none while the table is missing).

        Raises:
            WarehouseError: the replica's time column holds values that cannot be compared with the archived ones.
        """
        if not self.client.table_exists(self.table):
            return set()
        found: dict[tuple[Any, ...], Any] = {}
        for start in range(0, len(keys), 1000):
            found |= self.client.key_times(
                self.table, self.primary_key, self.time_column, keys[start : start + 1000]
            )
        held: set[tuple[Any, ...]] = set()
        for key, archived in zip(keys, times, strict=True):
            replica = found.get(tuple(_normalise_key(v) for v in key), _MISSING)
            if replica is _MISSING or replica is None:
                continue
            try:
                if _comparable_time(replica) >= _comparable_time(archived):
                    held.add(key)
            except TypeError:
                raise WarehouseError(
                    f"replica table '{self.table}': its {self.time_column} value {replica!r} cannot be compared with "
                    f"the archived {archived!r}, so the archive cannot tell whether the replica holds the row; map "
                    f"{self.time_column} to a date or timestamp type in the replica (tables[].replica.column_types)"
                ) from None
        return held


_MISSING = object()


def _comparable_time(value: Any) -> Any:
    """A time value as a naive UTC datetime (dates at midnight), so replica and archive compare."""
    if isinstance(value, datetime):
        return _naive(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).replace(tzinfo=None)
    return value


class WarehouseResource(dg.ConfigurableResource):
    """The replica's warehouse: Redshift, PostgreSQL or DuckDB, chosen by the URL scheme.

    Example:
        ```python
        WarehouseResource(url="${WAREHOUSE_URL}", schema="staging", staging_url="s3://${ARCHIVE_BUCKET}/staging",
                          iam_role="${REDSHIFT_COPY_ROLE_ARN:-}")
        ```
    """

    url: str = Field(default="", description="Warehouse URL (template); empty when no table has a replica")
    schema_name: str = Field(default="public", description="Target schema, created if missing")
    staging_url: str = Field(default="", description="Redshift only: s3:// prefix that COPY reads from")
    iam_role: str = Field(default="", description="Redshift only: IAM role ARN for COPY (template)")
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}", description="AWS region (template)")
    config_file: str = Field(default="", description="Config file the settings came from, for error messages")

    def open(self) -> WarehouseClient:
        """Resolve templates and create the client (connections open lazily)."""
        if not self.url:
            raise WarehouseError("no warehouse is configured; add warehouse: {url: ...} to the config")
        url = resolve_setting(self.config_file, "warehouse.url", self.url)
        region = resolve_setting(self.config_file, "warehouse.region", self.region) or "us-east-1"
        staging_url = resolve_setting(self.config_file, "warehouse.staging_url", self.staging_url)
        staging = open_store(staging_url, region=region) if staging_url else None
        return WarehouseClient(
            url=url,
            schema=self.schema_name,
            staging=staging,
            staging_url=staging_url,
            iam_role=resolve_setting(self.config_file, "warehouse.iam_role", self.iam_role),
            region=region,
        )

    def replica_guard(self, *, config: Any, table: Any, source_table: SourceTable) -> ReplicaKeys:
        """The guard that keeps the archive from purging rows the replica does not hold yet."""
        return ReplicaKeys(self.open(), table.asset_name, source_table.primary_key, table.time_column)


def mapped_types(source_table: SourceTable, dialect: Dialect, settings: Any) -> dict[str, str]:
    """The warehouse types the type map gives the table with its replica settings."""
    return warehouse_types(
        source_table, dialect, boolean_columns=settings.boolean_columns, column_types=settings.column_types
    )
