"""The source database: MySQL/MariaDB through SQLAlchemy + PyMySQL (SQLite for the embedded demo).

`SourceDatabase` is the Dagster resource (configuration only); `SourceClient` holds the engine and
does the I/O: reflection from information_schema, streaming reads with a server-side cursor, the
per-table run lock, bounded delete batches and the load throttle. Every statement is built with
SQLAlchemy constructs, so table and column names are always quoted by the dialect.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql as mysql_dialect

from etl_assets.config import ReaderChoice, resolve_setting
from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.windows import Window, key_slices, pack_slices

if TYPE_CHECKING:
    # The Arrow side (pyarrow, numpy) is imported by the methods that read or delete rows: the code
    # location imports this module for `SourceDatabase` and loads without it (test_definitions.py).
    import pyarrow as pa

    from etl_assets.lib.convert import RowsToArrow
    from etl_assets.resources.arrow_reader import SliceSql, ZeroDateCounter

    ZeroDateCounts = RowsToArrow | ZeroDateCounter
    """What a read reports besides its rows: zero dates nulled per column (`invalid_by_column`)."""

_INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}

KEY_RANGE_SPAN_FACTOR = 3
"""The archive reads a window by key ranges when its keys span at most this many times its rows.

Past it, the scans would read more rows outside the window than the per-row lookups of the time
index cost (a clustered range scan reads rows ~2-4x cheaper than a lookup each, `make bench`).
"""

OVERSIZED_HOUR_FACTOR = 4
"""connectorx holds a slice whole: a window with an hour of more than this many times chunk_rows rows
(time slices are whole hours) is streamed through the server-side cursor instead."""


class SourceError(RuntimeError):
    """The source refused or failed an operation; the message says which table and what to do."""


class LockBusyError(SourceError):
    """Another run holds the lock for this table."""


class LockLostError(SourceError):
    """The run's named lock was released behind its back (connection killed, server restarted)."""


_SQLITE_TYPE = re.compile(
    r"^\s*(?P<base>[A-Za-z ]+?)\s*(\((?P<args>[^)]*)\))?\s*(?P<unsigned>unsigned)?\s*$", re.I
)
_SQLITE_ALIASES = {"integer": "bigint", "int": "int", "real": "double", "numeric": "decimal", "boolean": "tinyint",
                   "string": "varchar", "": "text", "float": "double", "double precision": "double"}  # fmt: skip


@dataclass(frozen=True)
class TableSize:
    """One row of the "what uses the most space" report."""

    name: str
    rows: int
    data_bytes: int
    index_bytes: int
    free_bytes: int
    time_columns: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        """Data plus indexes."""
        return self.data_bytes + self.index_bytes


@dataclass(frozen=True)
class WindowStats:
    """Rows in a window and, for a one-column integer key, the key range they fall in."""

    rows: int
    lowest_key: int | None = None
    highest_key: int | None = None


@dataclass
class PurgeOutcome:
    """What one delete batch did."""

    deleted: int
    changed: list[tuple[Any, ...]]
    missing: int
    seconds: float


class SourceClient:
    """Connections and statements against one source database."""

    def __init__(self, url: str, *, reader: ReaderChoice = "auto", replicas: Sequence[str] = ()) -> None:
        self.reader = reader
        self.reader_note = ""
        # Read replicas whose lag throttles the purge (`source.replicas`); None when there are none.
        self.replicas: ReplicaSet | None = ReplicaSet(replicas) if replicas else None
        self._held_locks: dict[tuple[str, str], tuple[sa.Connection, str] | None] = {}
        # A lock's connection is checked from whichever thread deletes (a backfill purges in a helper
        # thread); an SQLAlchemy connection is not safe to use from two threads at once.
        self._lock_connection_guard = threading.Lock()
        # The fast reader's zero-date counter of each table's latest window (`stream_window`).
        self._date_counters: dict[str, ZeroDateCounter] = {}
        try:
            self.url = sa.make_url(url)
        except sa_exc.ArgumentError:
            raise SourceError(
                "source.url is not a SQLAlchemy URL; use mysql+pymysql://user:password@host:3306/database"
            ) from None
        backend = self.url.get_backend_name()
        if backend in ("mysql", "mariadb"):
            self.dialect = "mysql"
            # The session runs in UTC so TIMESTAMP columns come back unshifted, and in utf8mb4 so
            # 4-byte characters survive.
            self.engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args={"init_command": "SET time_zone = '+00:00'", "charset": "utf8mb4"},
            )
        elif backend == "sqlite":
            self.dialect = "sqlite"
            self.engine = sa.create_engine(self.url, connect_args={"timeout": 30})
            sa_event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            raise SourceError(
                f"source.url uses '{backend}', which etl-assets cannot read yet; use mysql+pymysql:// (or sqlite:// "
                "for the demo)"
            )
        self._tables: dict[tuple[str, tuple[str, ...]], sa.Table] = {}
        self._throttle_gates: dict[tuple[int | None, float | None], ThrottleGate] = {}

    # -- identity ------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """Host, port and database without credentials, for metadata and manifests."""
        if self.dialect == "sqlite":
            return f"sqlite:{Path(self.url.database or '').name}"
        return f"{self.url.host}:{self.url.port or 3306}/{self.url.database}"

    @property
    def database(self) -> str:
        """The database (schema) name."""
        return self.url.database or ""

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
        if self.replicas is not None:
            self.replicas.dispose()

    # -- reflection ----------------------------------------------------------------------------------------

    def table_exists(self, name: str) -> bool:
        """True when the table exists in the source."""
        return sa.inspect(self.engine).has_table(name)

    def reflect(self, name: str, *, primary_key: Sequence[str] | None = None) -> SourceTable:
        """The table as the source describes it (information_schema on MySQL).

        Raises:
            SourceError: the table does not exist.
        """
        table = self._reflect_mysql(name) if self.dialect == "mysql" else self._reflect_sqlite(name)
        if primary_key:
            for column in primary_key:
                table.column(column)
            table = SourceTable(
                name=table.name,
                columns=table.columns,
                primary_key=tuple(primary_key),
                schema=table.schema,
                indexed_columns=table.indexed_columns,
            )
        return table

    def _reflect_mysql(self, name: str) -> SourceTable:
        columns_sql = sa.text(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, CHARACTER_MAXIMUM_LENGTH, "
            "NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME, EXTRA "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t "
            "ORDER BY ORDINAL_POSITION"
        )
        index_sql = sa.text(
            "SELECT INDEX_NAME, COLUMN_NAME, SEQ_IN_INDEX FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t ORDER BY INDEX_NAME, SEQ_IN_INDEX"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(columns_sql, {"t": name}).all()
            if not rows:
                raise SourceError(
                    f"table '{name}' does not exist in source database '{self.database}'; check tables[].name "
                    "or create the table"
                )
            indexes = conn.execute(index_sql, {"t": name}).all()
            json_columns = self._mariadb_json_columns(conn, name)
        columns = []
        for row in rows:
            data_type = str(row[1]).lower()
            if data_type == "longtext" and row[0] in json_columns:
                data_type = "json"
            columns.append(
                SourceColumn(
                    name=row[0],
                    data_type=data_type,
                    column_type=str(row[2]).lower()
                    if data_type not in ("enum", "set")
                    else _lower_type(str(row[2])),
                    nullable=row[3] == "YES",
                    default=None if row[4] is None else str(row[4]),
                    char_max_length=None if row[5] is None else int(row[5]),
                    numeric_precision=None if row[6] is None else int(row[6]),
                    numeric_scale=None if row[7] is None else int(row[7]),
                    datetime_precision=None if row[8] is None else int(row[8]),
                    charset=row[9],
                    extra=str(row[10] or "").lower(),
                )
            )
        primary = tuple(r[1] for r in indexes if r[0] == "PRIMARY")
        indexed = tuple(dict.fromkeys(r[1] for r in indexes if int(r[2]) == 1))
        return SourceTable(name=name, columns=tuple(columns), primary_key=primary, schema=self.database,
                           indexed_columns=indexed)  # fmt: skip

    @staticmethod
    def _mariadb_json_columns(conn: sa.Connection, name: str) -> set[str]:
        # MariaDB stores JSON as LONGTEXT plus CHECK (json_valid(`col`)); MySQL 8 reports `json` itself.
        try:
            clauses = conn.execute(
                sa.text(
                    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                    "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                ),
                {"t": name},
            ).scalars()
        except sa_exc.DBAPIError:
            return set()
        found: set[str] = set()
        for clause in clauses:
            match = re.match(r"^\s*json_valid\(`((?:[^`]|``)+)`\)\s*$", str(clause), re.I)
            if match:
                found.add(match.group(1).replace("``", "`"))
        return found

    def _reflect_sqlite(self, name: str) -> SourceTable:
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(name):
            raise SourceError(
                f"table '{name}' does not exist in the demo database; run `etl-assets demo` to create it"
            )
        columns = []
        with self.engine.connect() as conn:
            info = conn.exec_driver_sql(f"PRAGMA table_info({_sqlite_quote(name)})").all()
        for _, col_name, declared, notnull, default, pk in info:
            columns.append(_sqlite_column(col_name, str(declared or ""), bool(notnull) or bool(pk), default))
        # PRAGMA table_info's pk column is the key position (1-based), 0 for non-key columns.
        primary = tuple(row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5]))
        indexed = [ix["column_names"][0] for ix in inspector.get_indexes(name) if ix["column_names"]]
        return SourceTable(
            name=name,
            columns=tuple(columns),
            primary_key=primary,
            schema=None,
            indexed_columns=tuple(str(c) for c in dict.fromkeys([*primary[:1], *indexed]) if c),
        )

    def table_sizes(self) -> list[TableSize]:
        """Tables with rows, data, index and free bytes, largest first (information_schema estimates)."""
        if self.dialect == "mysql":
            sizes_sql = sa.text(
                "SELECT TABLE_NAME, COALESCE(TABLE_ROWS, 0), COALESCE(DATA_LENGTH, 0), COALESCE(INDEX_LENGTH, 0), "
                "COALESCE(DATA_FREE, 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_TYPE = 'BASE TABLE'"
            )
            time_sql = sa.text(
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                "AND DATA_TYPE IN ('datetime', 'timestamp', 'date') ORDER BY ORDINAL_POSITION"
            )
            with self.engine.connect() as conn:
                raw = conn.execute(sizes_sql).all()
                time_columns: dict[str, list[str]] = {}
                for table, column in conn.execute(time_sql).all():
                    time_columns.setdefault(table, []).append(column)
            sizes = [
                TableSize(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), tuple(time_columns.get(r[0], ())))
                for r in raw
            ]
        else:
            sizes = []
            for name in sa.inspect(self.engine).get_table_names():
                table = self._reflect_sqlite(name)
                with self.engine.connect() as conn:
                    rows = conn.execute(
                        sa.select(sa.func.count()).select_from(self._table(name, []))
                    ).scalar_one()
                    data, index = self._sqlite_bytes(conn, name)
                times = tuple(
                    c.name for c in table.columns if c.data_type in ("datetime", "timestamp", "date")
                )
                sizes.append(TableSize(name, int(rows), data, index, 0, times))
        return sorted(sizes, key=lambda s: (-s.total_bytes, -s.rows, s.name))

    @staticmethod
    def _sqlite_bytes(conn: sa.Connection, name: str) -> tuple[int, int]:
        try:
            rows = conn.exec_driver_sql(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name = ? OR name IN "
                "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?) GROUP BY name",
                (name, name),
            ).all()
        except sa_exc.DBAPIError:
            return 0, 0
        data = sum(int(size) for obj, size in rows if obj == name)
        return data, sum(int(size) for obj, size in rows if obj != name)

    # -- statements ----------------------------------------------------------------------------------------

    def _table(self, name: str, columns: Sequence[str]) -> sa.Table:
        key = (name, tuple(columns))
        if key not in self._tables:
            self._tables[key] = sa.Table(name, sa.MetaData(), *(sa.Column(c) for c in columns))
        return self._tables[key]

    def _bound(self, column: SourceColumn | None, moment: datetime) -> Any:
        naive = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
        if self.dialect == "sqlite":
            # The demo stores times as ISO text; whole-second bounds compare correctly as text.
            return (
                naive.date().isoformat()
                if column and column.data_type == "date"
                else f"{naive:%Y-%m-%d %H:%M:%S}"
            )
        return naive.date() if column and column.data_type == "date" else naive

    def _window_filter(self, table: sa.Table, source: SourceTable, time_column: str, window: Window) -> Any:
        column = source.column(time_column)
        tc = table.c[time_column]
        return sa.and_(tc >= self._bound(column, window.start), tc < self._bound(column, window.end))

    def count_window(self, source: SourceTable, time_column: str, window: Window) -> int:
        """Rows whose time column falls in `window` (an index range count)."""
        table = self._table(source.name, [time_column])
        stmt = (
            sa.select(sa.func.count())
            .select_from(table)
            .where(self._window_filter(table, source, time_column, window))
        )
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def window_stats(self, source: SourceTable, time_column: str, window: Window) -> WindowStats:
        """Rows in `window` and, for a one-column integer key, their lowest and highest key.

        One index-only pass over the window on the time column's index, which carries the primary
        key; the archive plans its reads from it (`stream_window`).
        """
        if not _integer_key(source):
            return WindowStats(rows=self.count_window(source, time_column, window))
        table = self._table(source.name, [time_column, source.primary_key[0]])
        key = table.c[source.primary_key[0]]
        stats = sa.select(sa.func.count(), sa.func.min(key), sa.func.max(key)).where(
            self._window_filter(table, source, time_column, window)
        )
        with self.engine.connect() as conn:
            count, lowest, highest = conn.execute(stats).one()
        if not count:
            return WindowStats(rows=0)
        return WindowStats(rows=int(count), lowest_key=int(lowest), highest_key=int(highest))

    def count_null_time(self, source: SourceTable, time_column: str) -> int:
        """Rows whose time column is NULL: never archived, always reported."""
        table = self._table(source.name, [time_column])
        stmt = sa.select(sa.func.count()).select_from(table).where(table.c[time_column].is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def time_range(self, source: SourceTable, time_column: str) -> tuple[datetime | None, datetime | None]:
        """Oldest and newest time-column values (two index lookups on an indexed column)."""
        from etl_assets.lib.convert import converter_for

        table = self._table(source.name, [time_column])
        tc = table.c[time_column]
        convert = converter_for(source.column(time_column))
        with self.engine.connect() as conn:
            oldest = conn.execute(sa.select(sa.func.min(tc))).scalar()
            newest = conn.execute(sa.select(sa.func.max(tc))).scalar()
        values, _ = convert([oldest, newest])
        return tuple(_as_datetime(v) for v in values)  # type: ignore[return-value]

    def max_time(self, source: SourceTable, time_column: str) -> datetime | None:
        """Newest time-column value: the cheap "anything new?" probe used by sensors."""
        from etl_assets.lib.convert import converter_for

        table = self._table(source.name, [time_column])
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(table.c[time_column]))).scalar()
        converted, _ = converter_for(source.column(time_column))([value])
        return _as_datetime(converted[0])

    def max_time_values(self, probes: Sequence[tuple[str, str]]) -> list[datetime | None]:
        """Newest time value of each `(table, time column)`, all in one statement.

        One `SELECT MAX(...) UNION ALL SELECT MAX(...) ...`: each branch is answered from the end of
        the column's index ("Select tables optimized away"), so a sensor tick costs one round trip
        whatever the number of tables.
        """
        if not probes:
            return []
        branches = []
        for index, (name, time_column) in enumerate(probes):
            table = self._table(name, [time_column])
            branches.append(
                sa.select(sa.literal(index).label("probe"), sa.func.max(table.c[time_column]).label("newest"))
            )
        stmt = branches[0] if len(branches) == 1 else sa.union_all(*branches)
        with self.engine.connect() as conn:
            rows: list[tuple[Any, ...]] = [tuple(row) for row in conn.execute(stmt)]
        found = {int(row[0]): row[1] for row in rows}
        values: list[datetime | None] = []
        for index in range(len(probes)):
            value = found.get(index)
            if isinstance(value, (str, bytes)):
                text = value.decode() if isinstance(value, bytes) else value
                try:
                    value = datetime.fromisoformat(text)
                except ValueError:
                    value = None
            values.append(_as_datetime(value))
        return values

    def estimated_rows(self, name: str) -> int:
        """Row count that costs nothing: information_schema's estimate on MySQL, COUNT(*) on SQLite."""
        if self.dialect != "mysql":
            return self.row_count(name)
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.text(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                ),
                {"t": name},
            ).scalar()
        return int(value or 0)

    def row_count(self, name: str) -> int:
        """Exact row count."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self._table(name, []))).scalar_one()
            )

    def stream_window(
        self,
        source: SourceTable,
        *,
        schema: pa.Schema,
        time_column: str,
        window: Window,
        chunk_rows: int,
        stats: WindowStats | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> tuple[Generator[pa.RecordBatch, None, None], ZeroDateCounts]:
        """Rows of `window` as Arrow batches of at most `chunk_rows`.

        `stats` (from `window_stats`, if the caller has them already) saves the reader's own pass.
        `on_read`, where the fast reader serves the source, is called once every row of the window
        has been read from the server, before the last ones are handed over.

        On MySQL the fast reader (connectorx) reads the window in time slices of at most `chunk_rows`
        rows; otherwise (SQLite, `source.reader: pymysql`, URL options connectorx cannot honour) one
        query streams through a server-side cursor. Either way memory stays bounded by `chunk_rows`
        whatever the window holds. Returns the iterator and a counter of zero dates turned into NULL;
        `reader_note` then says which reader ran.
        """
        from etl_assets.resources.arrow_reader import ZeroDateCounter, stream_slices

        table = self._table(source.name, source.column_names)
        fast_url = self._fast_reader_url()
        queries = (
            self._slice_queries(source, table, time_column, window, chunk_rows, stats)
            if fast_url is not None
            else None
        )
        if fast_url is not None and queries is not None:
            # A table that held a zero date in one window likely holds more: its later windows read
            # guarded dates from the start instead of failing a slice first (arrow_reader.py).
            earlier = self._date_counters.get(source.name)
            counter = ZeroDateCounter(guarded_dates=earlier is not None and earlier.guarded_dates)
            self._date_counters[source.name] = counter
            batches = stream_slices(fast_url, queries, source.columns, schema, counter, chunk_rows, on_read)
            return batches, counter
        return self._stream(
            source, schema, chunk_rows, self._window_filter(table, source, time_column, window)
        )

    def _fast_reader_url(self) -> str | None:
        """connectorx's URL when the fast reader serves this source, else None (PyMySQL reads)."""
        from etl_assets.resources.arrow_reader import ArrowReaderUnavailable, connectorx_url

        if self.dialect != "mysql" or self.reader == "pymysql":
            self.reader_note = "PyMySQL (streaming cursor)"
            return None
        try:
            url = connectorx_url(self.url)
        except ArrowReaderUnavailable as exc:
            if self.reader == "arrow":
                raise SourceError(
                    f"source.reader is 'arrow' but {exc}; install connectorx or set source.reader: auto"
                ) from None
            self.reader_note = f"PyMySQL (streaming cursor): {exc}"
            return None
        self.reader_note = "Arrow (connectorx, time slices)"
        return url

    def _slice_queries(
        self,
        source: SourceTable,
        table: sa.Table,
        time_column: str,
        window: Window,
        chunk_rows: int,
        stats: WindowStats | None,
    ) -> Iterator[SliceSql] | None:
        """One SELECT per slice of the window of at most `chunk_rows` rows, as literal SQL for connectorx.

        Two plans, both reading every row of the window exactly once:

        - Key ranges, when the key is one integer column and the window's rows are packed into a key
          range at most `KEY_RANGE_SPAN_FACTOR` times their count (an auto-increment table archived by
          month). Each slice is `chunk_rows` consecutive key values, read as a range scan of the
          clustered index filtered by the window: sequential reads instead of one primary-key lookup
          per row from the time index. `make bench`, 12 months of 42k rows: 2.2x the rows/s.
        - Time slices otherwise: whole hours, packed from an index-only count per hour of the window.

        A window whose rows (by `stats`) fit in `chunk_rows` is one SELECT either way.

        None when the time plan would hold one hour of more than `OVERSIZED_HOUR_FACTOR` x `chunk_rows`
        rows (a bulk UPDATE stamps many rows with one time): connectorx reads a slice whole, so such
        a window is streamed through the server-side cursor instead, which bounds memory by `chunk_rows`.

        The plan is made now; each SELECT is rendered only when the reader gets to it (in the form it
        asks for: plain or guarded date columns), so a long window holds its slice bounds, not its
        SQL. Only our own bounds are rendered as literals; identifiers are quoted by SQLAlchemy's
        MySQL dialect.
        """
        from etl_assets.resources.arrow_reader import select_expressions

        # qmark: the pymysql dialect would double every % in identifiers for its own paramstyle.
        literal_dialect = mysql_dialect.dialect(paramstyle="qmark")
        window_filter = self._window_filter(table, source, time_column, window)

        def render(stmt: Any) -> str:
            return str(stmt.compile(dialect=literal_dialect, compile_kwargs={"literal_binds": True}))

        # Only a one-column integer key can be read by key ranges; for any other the time slices'
        # per-hour count is the one planning pass.
        key_ranges = (
            _key_range_plan(stats or self.window_stats(source, time_column, window), chunk_rows)
            if _integer_key(source)
            else None
        )

        def selects(hint: bool) -> dict[bool, Any]:
            """The window's SELECT with guarded (True) and plain (False) date columns."""
            forms = {}
            for guard in (True, False):
                stmt = sa.select(*select_expressions(table, source.columns, guard_dates=guard))
                if hint:
                    stmt = stmt.with_hint(table, "FORCE INDEX (PRIMARY)", dialect_name="mysql")
                forms[guard] = stmt.where(window_filter)
            return forms

        if key_ranges is not None:
            self.reader_note = "Arrow (connectorx, key ranges)"
            key = table.c[source.primary_key[0]]
            by_key = selects(hint=True)
            return (
                partial(_render_slice, render, by_key, key.between(low, high)) for low, high in key_ranges
            )
        base = selects(hint=False)
        if stats is not None and stats.rows <= chunk_rows:
            pieces = [window]  # the window's rows fit in one read: no per-hour count needed
        else:
            tc = table.c[time_column]
            hour = sa.func.date_format(tc, "%Y-%m-%d %H:00:00")
            counts_sql = sa.select(hour, sa.func.count()).where(window_filter).group_by(hour)
            with self.engine.connect() as conn:
                counts = [(datetime.fromisoformat(str(h)), int(n)) for h, n in conn.execute(counts_sql)]
            packed = pack_slices(window, counts, chunk_rows)
            del counts
            largest = max((rows for _, rows in packed), default=0)
            if largest > OVERSIZED_HOUR_FACTOR * chunk_rows:
                self.reader_note = (
                    f"PyMySQL (streaming cursor): one hour of the window holds {largest:,} rows, more than "
                    f"{OVERSIZED_HOUR_FACTOR} x chunk_rows ({chunk_rows:,}) can read at once"
                )
                return None
            pieces = [piece for piece, _ in packed]
        return (
            partial(_render_slice, render, base, self._window_filter(table, source, time_column, piece))
            for piece in pieces
        )

    def stream_all(
        self, source: SourceTable, *, schema: pa.Schema, chunk_rows: int
    ) -> tuple[Generator[pa.RecordBatch, None, None], RowsToArrow]:
        """Every row of the table as Arrow batches (server-side cursor, bounded memory)."""
        return self._stream(source, schema, chunk_rows, None)

    def _selectable(self, table: sa.Table, column: SourceColumn) -> Any:
        # MySQL sends FLOAT as text with 6 significant digits; adding a DOUBLE zero makes the server
        # send the stored single-precision value exactly (1.0000001 would otherwise come back as 1.0).
        if self.dialect == "mysql" and column.data_type == "float":
            return (table.c[column.name] + sa.literal_column("0E0")).label(column.name)
        return table.c[column.name]

    def _stream(
        self, source: SourceTable, schema: pa.Schema, chunk_rows: int, where: Any
    ) -> tuple[Generator[pa.RecordBatch, None, None], RowsToArrow]:
        from etl_assets.lib.convert import RowsToArrow

        names = source.column_names
        table = self._table(source.name, names)
        stmt = sa.select(*(self._selectable(table, column) for column in source.columns))
        if where is not None:
            stmt = stmt.where(where)
        converter = RowsToArrow(source.columns, schema)

        def batches() -> Generator[pa.RecordBatch, None, None]:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(stmt)
                try:
                    while rows := result.fetchmany(chunk_rows):
                        yield converter.convert(rows)
                except GeneratorExit:
                    # Abandoned mid-stream (a failed upload or load): drop the connection instead of
                    # reading the rest of a possibly huge result just to release it.
                    conn.invalidate()
                    raise
                finally:
                    if not conn.invalidated:
                        result.close()

        return batches(), converter

    # -- locking -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, table: str, purpose: str, *, timeout_seconds: float = 0) -> Iterator[None]:
        """Hold the lock `<purpose>` for `table` for the duration of the block.

        MySQL: a named lock (GET_LOCK) on a dedicated connection; it dies with the connection, so a
        killed run never leaves a stale lock. SQLite: an exclusive flock on a file beside the database.

        Raises:
            LockBusyError: another run holds it and `timeout_seconds` passed.
        """
        lock_name = f"etl_assets:{purpose}:{self.database}.{table}"
        if len(lock_name) > 64:
            lock_name = "etl_assets:" + hashlib.sha256(lock_name.encode()).hexdigest()[:40]
        busy = (
            f"another run is already doing '{purpose}' for table '{table}' (lock {lock_name}); this run waited "
            f"{timeout_seconds:g}s. Let that run finish, or check the Dagster UI for a stuck run"
        )
        if self.dialect == "mysql":
            with self.engine.connect() as conn:
                got = conn.execute(
                    sa.text("SELECT GET_LOCK(:n, :t)"), {"n": lock_name, "t": timeout_seconds}
                ).scalar()
                conn.commit()
                if got != 1:
                    raise LockBusyError(busy)
                self._held_locks[(table, purpose)] = (conn, lock_name)
                try:
                    yield
                finally:
                    self._held_locks.pop((table, purpose), None)
                    # A connection that died (KILL, restart) already lost the lock; using it again could
                    # only reconnect, or raise PendingRollbackError over the error that is unwinding.
                    if not conn.invalidated:
                        with contextlib.suppress(sa_exc.SQLAlchemyError):
                            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": lock_name})
            return
        path = Path(f"{self.url.database}.{hashlib.sha256(lock_name.encode()).hexdigest()[:16]}.lock")
        with path.open("a") as handle:
            deadline = time.monotonic() + timeout_seconds
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusyError(busy) from None
                    time.sleep(0.2)
            self._held_locks[(table, purpose)] = None  # an flock cannot be taken away from us
            try:
                yield
            finally:
                self._held_locks.pop((table, purpose), None)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def assert_lock_held(self, table: str, purpose: str) -> None:
        """Raise `LockLostError` unless the lock `<purpose>` for `table` (see `lock`) is still ours.

        A MySQL named lock dies with its connection, silently: after a DBA's `KILL`, a server restart
        or a dropped connection another run can take it, and two runs would delete from the table at
        once. So callers check before every delete. The check runs on the lock's own connection and
        never reconnects: a new connection would not hold the lock.

        Raises:
            LockLostError: the lock was released (the message says why and what to do).
        """
        key = (table, purpose)
        if key not in self._held_locks:
            raise LockLostError(f"table '{table}': this run does not hold its '{purpose}' lock")
        held = self._held_locks[key]
        if held is None:
            return
        conn, lock_name = held
        problem = "its connection was closed"
        with self._lock_connection_guard:
            if not conn.invalidated:
                try:
                    owner = conn.execute(
                        sa.text("SELECT IS_USED_LOCK(:n) = CONNECTION_ID()"), {"n": lock_name}
                    ).scalar()
                    conn.commit()
                    if owner == 1:
                        return
                    problem = "the server no longer gives it to this run's connection"
                except sa_exc.DBAPIError as exc:
                    problem = f"its connection failed ({describe_error(exc)})"
        raise LockLostError(
            f"table '{table}': this run lost its '{purpose}' lock ({lock_name}): {problem}. The connection "
            "holding a MySQL named lock was killed (KILL), the server restarted, or the network dropped it"
        )

    # -- purge ---------------------------------------------------------------------------------------------

    def throttle_gate(
        self, *, max_threads_running: int | None, max_replica_lag_seconds: float | None
    ) -> ThrottleGate:
        """The throttle for these limits, shared by every purge through this client: a backfill's
        months are purged one after another, most of them in less time than the gate's recheck."""
        key = (max_threads_running, max_replica_lag_seconds)
        if key not in self._throttle_gates:
            self._throttle_gates[key] = ThrottleGate(
                self, max_threads_running=max_threads_running, max_replica_lag_seconds=max_replica_lag_seconds
            )
        return self._throttle_gates[key]

    def threads_running(self) -> int | None:
        """MySQL `Threads_running` (None for SQLite)."""
        if self.dialect != "mysql":
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Threads_running'")).first()
        return int(row[1]) if row else None

    def _key_filter(
        self, table: sa.Table, primary_key: Sequence[str], keys: Sequence[tuple[Any, ...]]
    ) -> Any:
        if len(primary_key) == 1:
            return table.c[primary_key[0]].in_([k[0] for k in keys])
        # OR of ANDs rather than a row-constructor IN: both MySQL and MariaDB plan it as PK range lookups.
        return sa.or_(
            *(sa.and_(*(table.c[c] == v for c, v in zip(primary_key, k, strict=True))) for k in keys)
        )

    def delete_unchanged(
        self,
        source: SourceTable,
        *,
        primary_key: Sequence[str],
        time_column: str,
        rows: pa.Table,
    ) -> PurgeOutcome:
        """Delete the archived `rows` whose time column still holds the archived value; one transaction.

        Args:
            source: the source table.
            primary_key: its key columns.
            time_column: the column whose archived value a row must still hold to be deleted.
            rows: the batch as archived: the key columns and the time column, one row per key.

        A row updated since it was read keeps its new time value and stays in the source. MySQL does
        it in one statement (`_delete_unchanged_mysql`); SQLite (the demo) reads the rows inside the
        transaction, compares them in Python with the archived values and deletes the unchanged ones.
        """
        from etl_assets.lib.convert import converter_for
        from etl_assets.lib.purge import key_tuples

        if self.dialect == "mysql":
            return self._delete_unchanged_mysql(
                source, primary_key=primary_key, time_column=time_column, rows=rows
            )
        started = time.monotonic()
        table = self._table(source.name, [*primary_key, time_column])
        keys = key_tuples(rows, primary_key)
        expected = dict(zip(keys, rows.column(time_column).to_pylist(), strict=True))
        convert = converter_for(source.column(time_column))
        select = sa.select(*(table.c[c] for c in primary_key), table.c[time_column]).where(
            self._key_filter(table, primary_key, keys)
        )
        with self.engine.begin() as conn:
            conn.exec_driver_sql("SELECT 1")  # opens SQLite's transaction before reading
            found = conn.execute(select).all()
            times, _ = convert([row[-1] for row in found])
            unchanged: list[tuple[Any, ...]] = []
            changed: list[tuple[Any, ...]] = []
            for row, current in zip(found, times, strict=True):
                key = tuple(row[:-1])
                (unchanged if _same_time(current, expected.get(key)) else changed).append(key)
            if unchanged:
                deleted = conn.execute(
                    sa.delete(table).where(self._key_filter(table, primary_key, unchanged))
                ).rowcount
                if deleted != len(unchanged):
                    raise SourceError(
                        f"table '{source.name}': expected to delete {len(unchanged)} locked rows but deleted {deleted}; "
                        "the transaction was rolled back"
                    )
        return PurgeOutcome(len(unchanged), changed, len(keys) - len(found), time.monotonic() - started)

    def _delete_unchanged_mysql(
        self,
        source: SourceTable,
        *,
        primary_key: Sequence[str],
        time_column: str,
        rows: pa.Table,
    ) -> PurgeOutcome:
        """`delete_unchanged` on MySQL: one `DELETE` per batch that matches key and time together.

        The server matches key and archived time value together, so an updated row simply does not
        match and stays. Only when fewer rows were deleted than asked does a second statement (in
        the same transaction) find which keys are still there: those changed since extraction; the
        rest were already gone.

        Two forms, same rows deleted. A batch of integer keys names its rows by key (one scan of a
        short key range, or a list of keys to look up when they are sparse) and keeps only the listed
        `(key, time)` pairs, compared as integers (`lib/purge.py` explains and measures it). Any other
        batch is `(key..., time) IN ((...), ...)` with every value a placeholder, which MariaDB and
        MySQL plan as point ranges on an index holding both columns (the time column's index carries
        the primary key). Identifiers are quoted by the dialect.
        """
        from etl_assets.lib.purge import EPOCH_MICROSECONDS_SQL, integer_key_batch, key_tuples

        started = time.monotonic()
        count = rows.num_rows
        # The PyMySQL dialect's quoting already doubles a % in a name (the driver formats the statement
        # with %s placeholders, and does so even without parameters); doubling it again broke the
        # purge of any table or column whose name holds a % (test_purge_statement.py).
        quote = self.engine.dialect.identifier_preparer.quote
        table = quote(source.name)
        key_columns = [quote(c) for c in primary_key]
        time_sql = quote(time_column)
        integer_batch = (
            integer_key_batch(rows.column(primary_key[0]), rows.column(time_column))
            if len(primary_key) == 1
            else None
        )
        changed: list[tuple[Any, ...]] = []
        with self.engine.begin() as conn:
            if integer_batch is not None:
                key = key_columns[0]
                # The bounds go as parameters so the driver formats the statement (and un-doubles a %
                # in a name) exactly as in the other form; the keys and pairs are integers.
                lookups = f"AND {key} IN ({integer_batch.keys_sql}) " if integer_batch.keys_sql else ""
                delete_sql = (
                    f"DELETE FROM {table} WHERE {key} BETWEEN %s AND %s {lookups}"
                    f"AND ({key} + 0, {EPOCH_MICROSECONDS_SQL.format(column=time_sql)}) IN ({integer_batch.pairs_sql})"
                )
                deleted = int(
                    conn.exec_driver_sql(delete_sql, (integer_batch.lowest, integer_batch.highest)).rowcount
                )
            else:
                one_row = "(" + ", ".join(["%s"] * (len(key_columns) + 1)) + ")"
                delete_sql = (
                    f"DELETE FROM {table} WHERE ({', '.join(key_columns)}, {time_sql}) IN "
                    f"({', '.join([one_row] * count)})"
                )
                times = rows.column(time_column).to_pylist()
                values = tuple(
                    v
                    for key_values, when in zip(key_tuples(rows, primary_key), times, strict=True)
                    for v in (*key_values, _naive_utc(when))
                )
                deleted = int(conn.exec_driver_sql(delete_sql, values).rowcount)
            if deleted < count:
                keys = key_tuples(rows, primary_key)
                if len(key_columns) == 1:
                    where = f"{key_columns[0]} IN ({', '.join(['%s'] * count)})"
                else:
                    one_key = "(" + " AND ".join(f"{c} = %s" for c in key_columns) + ")"
                    where = " OR ".join([one_key] * count)
                changed = [
                    tuple(row)
                    for row in conn.exec_driver_sql(
                        f"SELECT {', '.join(key_columns)} FROM {table} WHERE {where} FOR UPDATE",
                        tuple(v for key_values in keys for v in key_values),
                    )
                ]
        return PurgeOutcome(deleted, changed, count - deleted - len(changed), time.monotonic() - started)

    def existing_keys(
        self, name: str, primary_key: Sequence[str], keys: Sequence[tuple[Any, ...]]
    ) -> set[tuple[Any, ...]]:
        """Which of `keys` are present in the source table."""
        table = self._table(name, list(primary_key))
        stmt = sa.select(*(table.c[c] for c in primary_key)).where(self._key_filter(table, primary_key, keys))
        with self.engine.connect() as conn:
            return {tuple(row) for row in conn.execute(stmt)}

    def insert_rows(
        self, name: str, columns: Sequence[str], rows: Sequence[dict[str, Any]], *, zero_dates: bool = False
    ) -> int:
        """Insert rows in one transaction (used by restore); returns the count inserted.

        With `zero_dates`, MySQL's NO_ZERO_DATE and NO_ZERO_IN_DATE are lifted for the transaction, so
        zero dates the table held before they were archived go back even under MySQL 8's defaults."""
        if not rows:
            return 0
        table = self._table(name, list(columns))
        with self.engine.begin() as conn:
            previous = None
            if zero_dates and self.dialect == "mysql":
                previous = str(conn.execute(sa.text("SELECT @@SESSION.sql_mode")).scalar_one())
                lifted = [m for m in previous.split(",") if m not in ("NO_ZERO_DATE", "NO_ZERO_IN_DATE")]
                conn.execute(sa.text("SET SESSION sql_mode = :mode"), {"mode": ",".join(lifted)})
            try:
                conn.execute(sa.insert(table), list(rows))
            finally:
                if previous is not None and not conn.invalidated:
                    # The connection goes back to the pool: it must not keep the lifted mode.
                    conn.execute(sa.text("SET SESSION sql_mode = :mode"), {"mode": previous})
        return len(rows)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the purge; NORMAL syncs at checkpoints, not every delete batch
    # (the demo's SQLite is a stand-in: MySQL's durability settings are the server's business).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)  # noqa: DTZ001 - DATETIME is naive by design
    return None


def _render_slice(render: Callable[[Any], str], forms: dict[bool, Any], where: Any, guard_dates: bool) -> str:
    """A slice's SELECT (`SliceSql`): the window's statement in the asked form, narrowed by `where`."""
    return render(forms[guard_dates].where(where))


def _integer_key(source: SourceTable) -> bool:
    return len(source.primary_key) == 1 and source.column(source.primary_key[0]).data_type in _INTEGER_TYPES


def _key_range_plan(stats: WindowStats, chunk_rows: int) -> list[tuple[int, int]] | None:
    """Key ranges of at most `chunk_rows` values covering the window's rows, or None (use time slices).

    A key range holds at most as many rows as key values, so every slice is bounded by `chunk_rows`
    however the rows fall; a window of at most `chunk_rows` rows is one range over all its keys.
    """
    if stats.rows == 0:
        return []
    if stats.lowest_key is None or stats.highest_key is None:
        return None  # stats without a key range (not a one-column integer key): time slices
    if stats.highest_key - stats.lowest_key + 1 > KEY_RANGE_SPAN_FACTOR * stats.rows:
        return None
    if stats.rows <= chunk_rows:
        # The window's rows fit in one read: one scan of its whole key range (filtered by the window,
        # so it holds at most those rows) instead of a query per `chunk_rows` key values. A month of
        # 42k rows spread over 75k ids was two queries; `make bench`: the extraction ~10 % faster.
        return [(stats.lowest_key, stats.highest_key)]
    return key_slices(stats.lowest_key, stats.highest_key, chunk_rows)


def _naive_utc(value: Any) -> Any:
    """A time value as the UTC session compares it: aware datetimes become naive UTC."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _same_time(current: Any, archived: Any) -> bool:
    """True when the time column still holds the value that was archived (both normalised to naive UTC)."""

    def norm(value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    return current is not None and norm(current) == norm(archived)


def _lower_type(column_type: str) -> str:
    # Lowercase the type keyword but keep ENUM/SET labels exactly as declared.
    head, sep, rest = column_type.partition("(")
    return head.lower() + sep + rest


def _sqlite_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_column(name: str, declared: str, not_null: bool, default: Any) -> SourceColumn:
    match = _SQLITE_TYPE.match(declared) or _SQLITE_TYPE.match("text")
    assert match is not None
    base = match.group("base").strip().lower()
    data_type = _SQLITE_ALIASES.get(base, base)
    args = [int(a) for a in re.findall(r"\d+", match.group("args") or "")]
    unsigned = " unsigned" if match.group("unsigned") else ""
    column_type = f"{data_type}({','.join(map(str, args))}){unsigned}" if args else f"{data_type}{unsigned}"
    return SourceColumn(
        name=name,
        data_type=data_type,
        column_type=column_type,
        nullable=not not_null,
        default=None if default is None else str(default),
        char_max_length=args[0] if args and data_type in ("varchar", "char", "binary", "varbinary") else None,
        numeric_precision=args[0] if args and data_type == "decimal" else None,
        numeric_scale=(args[1] if len(args) > 1 else 0) if data_type == "decimal" else None,
    )


# Sensor ticks run in threads of one long-lived daemon process; their clients are shared there.
_SHARED_CLIENTS: dict[tuple[Any, ...], SourceClient] = {}
_SHARED_CLIENTS_LOCK = threading.Lock()


class SourceDatabase(dg.ConfigurableResource):
    """The MySQL database that is archived and replicated (SQLite for the embedded demo).

    Example:
        ```python
        SourceDatabase(url="mysql+pymysql://etl:${DB_PASSWORD}@clinic.abc.rds.amazonaws.com:3306/clinic")
        ```
    """

    url: str = Field(description="SQLAlchemy URL; ${VAR} templates are resolved when a run starts")
    replicas: list[str] = Field(
        default_factory=list,
        description="URLs of read replicas whose lag throttles the purge; ${VAR} resolved when a run starts",
    )
    config_file: str = Field(default="", description="Config file the URL came from, for error messages")
    reader: ReaderChoice = Field(
        default="auto", description="Archive extraction reader: auto, arrow or pymysql"
    )

    def open_shared(self) -> SourceClient:
        """A client kept for the life of the process, for frequent small probes (the sensor).

        A new engine costs a connection and its set-up queries (version, sql_mode, ...; ~80 ms with
        TLS to RDS) on every tick; a kept one sends just the probe. Never dispose it.
        """
        replicas = tuple(self.replicas)
        cache_key = (self.config_file, self.url, self.reader, replicas)
        with _SHARED_CLIENTS_LOCK:
            client = _SHARED_CLIENTS.get(cache_key)
            if client is None:
                client = _SHARED_CLIENTS[cache_key] = self.open()
        return client

    def open(self) -> SourceClient:
        """Resolve the URL and create the engine (connections open lazily)."""
        replicas = [
            resolve_setting(self.config_file, f"source.replicas[{index}]", url)
            for index, url in enumerate(self.replicas)
        ]
        return SourceClient(
            resolve_setting(self.config_file, "source.url", self.url), reader=self.reader, replicas=replicas
        )


def describe_error(exc: sa_exc.DBAPIError) -> str:
    """The driver's error code and message, without the SQL statement or its parameters.

    SQLAlchemy's own message quotes the statement and its bound values (primary keys, time values),
    which do not belong in run logs and alerts.
    """
    orig = exc.orig
    return f"{type(orig).__name__}: {orig}" if orig is not None else type(exc).__name__


def mysql_error_code(exc: sa_exc.DBAPIError) -> int | None:
    """MySQL's numeric error code (1205, 2013, ...) of a PyMySQL error, if any."""
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


LOCK_CONFLICT_CODES = {
    1205: "a lock wait timeout (innodb_lock_wait_timeout)",
    1213: "a deadlock",
}
"""MySQL errors after which InnoDB has rolled back the statement or transaction and a retry is safe."""


@dataclass(frozen=True)
class ReplicaLag:
    """How far one replica is behind its primary.

    Attributes:
        replica: the replica's URL with the password hidden.
        seconds: `Seconds_Behind_Source`/`_Master` (the worst channel); None when unknown.
        unknown_because: why `seconds` is None: replication stopped or broken, or no connection.
    """

    replica: str
    seconds: float | None
    unknown_because: str = ""


class ReplicaSet:
    """The source's read replicas (`source.replicas`), asked how far behind they are.

    MySQL 8.0.22+ answers `SHOW REPLICA STATUS` (`Seconds_Behind_Source`), older MySQL `SHOW SLAVE
    STATUS`, MariaDB `SHOW ALL SLAVES STATUS` (one row per replication channel; `Seconds_Behind_Master`).
    The user needs `REPLICATION CLIENT` (MySQL) or `SLAVE MONITOR` (MariaDB 10.5+) on each replica.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        self._replicas: list[tuple[str, sa.Engine]] = []
        for index, url in enumerate(urls):
            try:
                parsed = sa.make_url(url)
            except sa_exc.ArgumentError:
                raise SourceError(
                    f"source.replicas[{index}] is not a SQLAlchemy URL; use "
                    "mysql+pymysql://user:${REPLICA_PASSWORD}@replica-host:3306/database"
                ) from None
            shown = parsed.render_as_string(hide_password=True)
            if parsed.get_backend_name() not in ("mysql", "mariadb"):
                raise SourceError(
                    f"source.replicas[{index}] ({shown}) is not a MySQL/MariaDB URL; replica lag is read with "
                    "SHOW REPLICA STATUS, so list the source's MySQL read replicas there"
                )
            # Short timeouts: an unreachable replica must not stall the throttle's once-a-second check.
            engine = sa.create_engine(
                parsed,
                pool_pre_ping=True,
                pool_size=1,
                connect_args={"connect_timeout": 5, "read_timeout": 10, "write_timeout": 10},
            )
            self._replicas.append((shown, engine))

    def __len__(self) -> int:
        return len(self._replicas)

    def dispose(self) -> None:
        """Close the replicas' pooled connections."""
        for _, engine in self._replicas:
            engine.dispose()

    def lags(self) -> list[ReplicaLag]:
        """The lag of every replica, in `source.replicas` order.

        A replica that cannot be reached is reported with unknown lag (it may be restarting), so the
        purge waits for it rather than failing.

        Raises:
            SourceError: a replica refuses the login or the status query (privileges), or is not
                replicating from anything: configuration mistakes that waiting would not fix.
        """
        return [self._lag(index, shown, engine) for index, (shown, engine) in enumerate(self._replicas)]

    def _lag(self, index: int, shown: str, engine: sa.Engine) -> ReplicaLag:
        try:
            with engine.connect() as conn:
                rows = _replication_status(conn)
        except sa_exc.DBAPIError as exc:
            if mysql_error_code(exc) in (1044, 1045, 1227):
                raise SourceError(
                    f"source.replicas[{index}] ({shown}) refused to report replication status "
                    f"({describe_error(exc)}); GRANT REPLICATION CLIENT ON *.* (MySQL) or SLAVE MONITOR ON *.* "
                    "(MariaDB 10.5+) to that user"
                ) from None
            return ReplicaLag(shown, None, f"it cannot be reached ({describe_error(exc)})")
        if not rows:
            raise SourceError(
                f"source.replicas[{index}] ({shown}) is not replicating from anything (its replica status is "
                "empty); point source.replicas at the source's read replicas, or remove this entry"
            )
        worst: float | None = 0.0
        because = ""
        for row in rows:
            seconds = _first(row, "Seconds_Behind_Source", "Seconds_Behind_Master")
            if seconds is None:
                channel = row.get("Connection_name") or row.get("Channel_Name") or ""
                io = _first(row, "Replica_IO_Running", "Slave_IO_Running")
                sql = _first(row, "Replica_SQL_Running", "Slave_SQL_Running")
                worst = None
                because = (
                    f"its replication{f' channel {channel!r}' if channel else ''} is stopped or broken "
                    f"(IO thread running: {io}, SQL thread running: {sql}; Seconds_Behind is NULL)"
                )
                break
            worst = max(worst or 0.0, float(seconds))
        return ReplicaLag(shown, worst, because)


def _replication_status(conn: sa.Connection) -> list[dict[str, Any]]:
    version = str(conn.execute(sa.text("SELECT VERSION()")).scalar() or "")
    # MariaDB: ALL SLAVES covers multi-source replication. MySQL 8.0.22+ renamed the statement; older
    # servers answer the new one with a syntax error (1064), and then get the old one.
    statements = (
        ["SHOW ALL SLAVES STATUS"]
        if "mariadb" in version.lower()
        else ["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"]
    )
    for statement in statements:
        try:
            return [dict(row._mapping) for row in conn.exec_driver_sql(statement)]
        except sa_exc.ProgrammingError as exc:
            if statement == statements[-1] or mysql_error_code(exc) != 1064:
                raise
            conn.rollback()
    return []


def _first(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def _wait_reason(
    client: SourceClient, max_threads_running: int | None, max_replica_lag_seconds: float | None
) -> tuple[str, str] | None:
    """Why the next delete batch must wait, as (kind, message); None when it may go."""
    if max_threads_running:
        running = client.threads_running()
        if running is not None and running > max_threads_running:
            return "threads", (
                f"throttling: Threads_running={running} > {max_threads_running}; waiting before the next delete batch"
            )
    if max_replica_lag_seconds and client.replicas is not None:
        for lag in client.replicas.lags():
            if lag.seconds is None:
                return f"unknown:{lag.replica}", (
                    f"throttling: replica {lag.replica} cannot say how far behind it is: {lag.unknown_because}. "
                    "Unknown lag counts as too far behind, so deletes wait (start its replication, or remove "
                    "it from source.replicas)"
                )
            if lag.seconds > max_replica_lag_seconds:
                return f"behind:{lag.replica}", (
                    f"throttling: replica {lag.replica} is {lag.seconds:g}s behind "
                    f"(max_replica_lag_seconds={max_replica_lag_seconds:g}); waiting before the next delete batch"
                )
    return None


class ThrottleGate:
    """`throttle` before each delete batch, asked again only once `recheck_seconds` have passed
    since the source was last found idle. Get one with `SourceClient.throttle_gate`.

    A check is a round trip (`SHOW GLOBAL STATUS`, plus one per replica for lag); before every batch
    it was 10 % of the purge thread's time in py-spy (5,000-row batches take ~50 ms). The source's
    load is still looked at twice a second while deleting, and every second while waiting.
    """

    def __init__(
        self,
        client: SourceClient,
        *,
        max_threads_running: int | None,
        max_replica_lag_seconds: float | None,
        recheck_seconds: float = 0.5,
    ) -> None:
        self.client = client
        self.max_threads_running = max_threads_running
        self.max_replica_lag_seconds = max_replica_lag_seconds
        self.recheck_seconds = recheck_seconds
        self._idle_until = float("-inf")

    def passes(self, deadline: float | None, log: Callable[[str], None]) -> bool:
        """True when the next batch may go (after waiting, if the source is busy); False when the
        deadline passed while waiting."""
        if time.monotonic() < self._idle_until:
            return True
        went = throttle(
            self.client,
            max_threads_running=self.max_threads_running,
            max_replica_lag_seconds=self.max_replica_lag_seconds,
            deadline=deadline,
            log=log,
        )
        if went:
            self._idle_until = time.monotonic() + self.recheck_seconds
        return went


def throttle(
    client: SourceClient,
    *,
    max_threads_running: int | None,
    deadline: float | None,
    log: Callable[[str], None],
    max_replica_lag_seconds: float | None = None,
) -> bool:
    """Wait while the source is busy or a replica is too far behind; False when the deadline passed.

    Busy: `Threads_running` above `max_threads_running`. Too far behind: a replica of
    `client.replicas` lags more than `max_replica_lag_seconds`, or cannot say (replication stopped,
    `Seconds_Behind_*` NULL, or the replica unreachable), which counts as too far, as in pt-archiver.
    Each reason is logged when it starts and every minute while it lasts, and the resume is logged,
    so the run log shows why the purge stood still.
    """
    if not max_threads_running and not (max_replica_lag_seconds and client.replicas is not None):
        return True
    started = time.monotonic()
    announced: str | None = None
    announced_at = 0.0
    while True:
        reason = _wait_reason(client, max_threads_running, max_replica_lag_seconds)
        now = time.monotonic()
        if reason is None:
            if announced is not None:
                log(f"throttling: resuming deletes after waiting {now - started:.1f}s")
            return True
        kind, message = reason
        if kind != announced or now - announced_at >= 60:
            log(message)
            announced, announced_at = kind, now
        if deadline is not None and now >= deadline:
            log(
                "throttling: the run's max_run_seconds passed while waiting; the remaining rows stay in the source"
            )
            return False
        time.sleep(1.0)
