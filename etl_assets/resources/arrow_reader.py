"""The fast reader: MySQL rows straight into Arrow with connectorx, one bounded time slice at a time.

PyMySQL parses every value in Python, which caps extraction near 0.1x of what the server can send
(`make bench`). connectorx decodes the binary protocol in Rust into Arrow arrays, close to the
C client's speed, but it has sharp edges this module files off:

- It holds a whole result in memory, so the window is read in slices of at most `chunk_rows` rows
  (hour-grained, planned from an index-only count), each one query.
- It panics on values it cannot decode: zero dates, negative or >24h TIME values, DECIMAL wider
  than its fixed decimal128(38,10). DECIMAL and TIME travel as text and are cast back to the
  archive's exact Arrow type here, so the Parquet schema matches the PyMySQL reader's.
- Zero dates (`0000-00-00`, `2024-00-12`) are rare, and guarding every date column on the server
  (a CASE over YEAR/MONTH/DAYOFMONTH, twice per column, to NULL the value and count it) cost ~30 %
  of the read in `make bench`. So a slice is first read with its date columns as they are; if
  connectorx panics on one, that slice is read again with the guards, and so is every later slice
  of that table on the same client (`SliceSql`). Year-0 dates with a valid month and day decode
  without a panic; they become NULL and are counted here, as both other paths do.
- Its connections know nothing of our session settings: `time_zone` is set to UTC for every query
  so TIMESTAMP columns do not shift.

Rows read in different slices are not one snapshot: a row updated between two slice queries can
be read twice (once per slice). The archive detects keys read twice and leaves those rows in the
source (`ArchiveJob`), so the difference can only make a run archive less, never lose a row.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dt_time
from typing import Any

import pyarrow as pa
import pyarrow.compute as _compute
import sqlalchemy as sa

from etl_assets.lib.convert import converter_for
from etl_assets.lib.schema import SourceColumn
from etl_assets.resources.memory import PeriodicRelease

pc: Any = _compute

# URL query options the fast reader can honour; anything else (TLS files, unix sockets, ...) means the
# PyMySQL reader, which understands every option SQLAlchemy passes through.
_UNDERSTOOD_QUERY = {"charset"}
_DATE_KINDS = {"date", "datetime", "timestamp"}
_ZERO_FLAG = "__etl_zero_"


SliceSql = Callable[[bool], str]
"""Renders one slice's SELECT; the argument says whether date columns are guarded (`select_expressions`)."""

_FIRST_VALID_DATE = date(1, 1, 1)
"""Arrow holds year-0 dates (MySQL can store `0000-01-01`); Python and every warehouse cannot."""


class ArrowReaderUnavailable(RuntimeError):
    """The fast reader cannot serve this source; the message says why (the caller falls back)."""


class UndecodableSlice(RuntimeError):
    """connectorx could not decode a value of the slice (it panicked), e.g. a zero date."""


def connectorx_url(url: sa.URL) -> str:
    """The `mysql://` URL connectorx takes, from a SQLAlchemy MySQL URL.

    Raises:
        ArrowReaderUnavailable: connectorx is not installed, or the URL carries options it cannot honour.
    """
    try:
        import connectorx  # noqa: F401 - optional dependency, probed when a run starts
    except ImportError:
        raise ArrowReaderUnavailable("connectorx is not installed") from None
    unknown = sorted(set(url.query) - _UNDERSTOOD_QUERY)
    if unknown:
        raise ArrowReaderUnavailable(
            f"source.url has option(s) {', '.join(unknown)} that the fast reader does not support"
        )
    if not url.host:
        raise ArrowReaderUnavailable("source.url has no host (unix sockets need the PyMySQL reader)")
    user = urllib.parse.quote(url.username or "", safe="")
    password = urllib.parse.quote(url.password or "", safe="") if url.password else ""
    credentials = f"{user}:{password}@" if password else f"{user}@"
    database = urllib.parse.quote(url.database or "", safe="")
    return f"mysql://{credentials}{url.host}:{url.port or 3306}/{database}"


@dataclass
class ZeroDateCounter:
    """Zero or impossible dates turned into NULL, per column (same interface as `RowsToArrow`)."""

    invalid_by_column: dict[str, int] = field(default_factory=dict)
    slices: int = 0
    guarded_dates: bool = False
    """Whether slices are read with guarded date columns (set once a plain read could not decode)."""
    reread_slices: int = 0
    """Slices read a second time with guarded dates after their plain read failed."""

    def add_invalid(self, column: str, count: int) -> None:
        """Count `count` dates of `column` turned into NULL."""
        if count:
            self.invalid_by_column[column] = self.invalid_by_column.get(column, 0) + count

    @property
    def invalid_dates(self) -> int:
        """Zero dates nulled so far, over all columns."""
        return sum(self.invalid_by_column.values())


def has_date_columns(columns: Sequence[SourceColumn]) -> bool:
    """Whether any column is a DATE, DATETIME or TIMESTAMP (the ones `select_expressions` can guard)."""
    return any(column.data_type in _DATE_KINDS for column in columns)


def select_expressions(
    table: sa.Table, columns: Sequence[SourceColumn], *, guard_dates: bool = True
) -> list[Any]:
    """What to SELECT for each column so that connectorx decodes every value exactly.

    With `guard_dates`, date columns come with a second, flag column counting zero dates (named
    `__etl_zero_<n>`); without, they are selected as they are, and a zero date makes connectorx
    panic (`read_slice` raises `UndecodableSlice`).
    """
    selected: list[Any] = []
    for index, column in enumerate(columns):
        ref = table.c[column.name]
        kind = column.data_type
        if kind in _DATE_KINDS and not guard_dates:
            selected.append(ref)
        elif kind in _DATE_KINDS:
            # MySQL can store 0000-00-00 and 2024-00-12 (non-strict sql_mode); they have no Arrow form.
            zero = sa.or_(sa.func.year(ref) == 0, sa.func.month(ref) == 0, sa.func.dayofmonth(ref) == 0)
            selected.append(sa.case((zero, sa.null()), else_=ref).label(column.name))
            selected.append(sa.case((zero, 1), else_=0).label(f"{_ZERO_FLAG}{index}"))
        elif kind in ("decimal", "time") or column.is_json:
            # DECIMAL(65,30) and TIME outside 00:00..24:00 do not decode; their text form is exact.
            # JSON: MySQL 8 sends a binary JSON type; its text form is what the PyMySQL reader stores.
            selected.append(sa.cast(ref, sa.String).label(column.name))
        elif kind == "bit":
            selected.append((ref + 0).label(column.name))  # BIT(n) as its unsigned integer value
        else:
            selected.append(ref)
    return selected


def to_archive_batch(
    raw: pa.Table, columns: Sequence[SourceColumn], schema: pa.Schema, counter: ZeroDateCounter
) -> pa.RecordBatch:
    """Cast connectorx's result to the archive schema exactly, counting zero dates.

    Raises:
        ValueError: a value does not fit the column's archive type (names the column).
    """
    arrays: list[pa.Array] = []
    for index, column in enumerate(columns):
        target = schema.field(index).type
        values = raw.column(column.name).combine_chunks()
        flag_name = f"{_ZERO_FLAG}{index}"
        if flag_name in raw.column_names:
            counter.add_invalid(column.name, int(pc.sum(raw.column(flag_name)).as_py() or 0))
        elif column.data_type in _DATE_KINDS:
            values = _null_year_zero(values, column.name, counter)
        try:
            if column.data_type == "time":
                converted, _ = converter_for(column)(values.to_pylist())
                arrays.append(pa.array(converted, type=target))
            elif pa.types.is_timestamp(target) and target.tz is not None:
                # The slice ran with time_zone UTC: naive values are UTC instants.
                arrays.append(values.cast(pa.timestamp(target.unit)).cast(target))
            else:
                arrays.append(values.cast(target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError) as exc:
            raise ValueError(
                f"column '{column.name}' ({column.column_type}) has a value Arrow cannot hold as {target}: {exc}"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _null_year_zero(values: pa.Array, name: str, counter: ZeroDateCounter) -> pa.Array:
    """`values` of an unguarded date column with dates before year 1 turned into NULL and counted."""
    if not (pa.types.is_timestamp(values.type) or pa.types.is_date(values.type)) or len(values) == 0:
        return values
    first = (
        _FIRST_VALID_DATE if pa.types.is_date(values.type) else datetime.combine(_FIRST_VALID_DATE, dt_time())
    )
    before = pc.less(values, pa.scalar(first, type=values.type))
    count = int(pc.sum(before).as_py() or 0)
    if not count:
        return values
    counter.add_invalid(name, count)
    return pc.if_else(before, pa.scalar(None, type=values.type), values)


def read_slice(url: str, query: str) -> pa.Table:
    """One query through connectorx, in a UTC session.

    Raises:
        UndecodableSlice: connectorx panicked on a value it cannot decode.
        RuntimeError: the query failed otherwise; the message has no credentials.
    """
    import connectorx

    try:
        result = connectorx.read_sql(
            url, query, return_type="arrow", pre_execution_query=["SET time_zone = '+00:00'"]
        )
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a Rust panic surfaces as pyo3's PanicException (a BaseException)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = sa.make_url(url.replace("mysql://", "mysql+pymysql://", 1)).password
        if password:
            message = message.replace(urllib.parse.quote(password, safe=""), "***").replace(password, "***")
        if type(exc).__name__ == "PanicException":
            raise UndecodableSlice(message) from None
        raise RuntimeError(message) from None
    if isinstance(result, pa.RecordBatchReader):  # pragma: no cover - return_type="arrow" gives a Table
        result = result.read_all()
    return result


def stream_slices(
    url: str,
    queries: Iterable[SliceSql],
    columns: Sequence[SourceColumn],
    schema: pa.Schema,
    counter: ZeroDateCounter,
    chunk_rows: int,
    on_read: Callable[[], None] | None = None,
) -> Generator[pa.RecordBatch, None, None]:
    """Run the slice queries one after the other, yielding archive-schema batches of <= `chunk_rows`.

    The first slice is read from the moment this is called, before the caller asks for a batch (the
    archive starts the next month's read while it finishes the month before). Each next slice is
    read in a helper thread while the caller works on the current one (connectorx lets go of the GIL
    while it reads), so the server sends rows while the caller compresses or loads the ones before:
    at most two slices are in memory at once. Closing the generator drops a read in flight.

    Slices are read with plain date columns until one cannot be decoded; that slice is read again
    with guarded dates, and so is every later one (`counter.guarded_dates`, which the caller may set
    beforehand). Nothing of a failed read is used: the slice's rows come from its second read only.

    `on_read` is called (in the caller's thread) once the last slice has been read from the server,
    before its rows are handed over.
    """
    release = PeriodicRelease()
    remaining = iter(queries)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-slice-reader")
    can_guard = has_date_columns(columns)

    def read(render: SliceSql) -> tuple[SliceSql, Future[pa.Table]]:
        return render, pool.submit(read_slice, url, render(counter.guarded_dates or not can_guard))

    def read_next() -> tuple[SliceSql, Future[pa.Table]] | None:
        render = next(remaining, None)
        return None if render is None else read(render)

    def batches() -> Generator[pa.RecordBatch | None, None, None]:
        try:
            reading = read_next()
            yield None  # primed: the first read is in flight; closing the generator from here shuts the pool
            while reading is not None:
                render, future = reading
                try:
                    table = future.result()
                except UndecodableSlice:
                    if counter.guarded_dates or not can_guard:
                        raise
                    counter.guarded_dates = True
                    counter.reread_slices += 1
                    reading = read(render)
                    continue
                reading = read_next()
                if reading is None and on_read is not None:
                    on_read()
                counter.slices += 1
                batch = to_archive_batch(table, columns, schema, counter)
                del table  # the slice's raw result goes before the next one is read
                for offset in range(0, batch.num_rows, chunk_rows):
                    yield batch.slice(offset, chunk_rows)
                del batch
                # connectorx's threads free into their own malloc arenas; without a trim the freed pages stay
                # mapped and RSS creeps up slice after slice (see memory.py).
                release()
        finally:
            # Abandoned (a failed upload or load) or done: a read in flight finishes in the background and
            # is dropped; nothing waits for it.
            pool.shutdown(wait=False, cancel_futures=True)

    primed = batches()
    next(primed)
    return primed  # type: ignore[return-value] - after the primer it yields only batches
