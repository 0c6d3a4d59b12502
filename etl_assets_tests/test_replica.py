"""The replica end to end: MariaDB -> PostgreSQL (Redshift's stand-in) and DuckDB, window by window.

Each test seeds a small table in its own MariaDB database, runs `ReplicaJob` (or the `replica/<t>`
asset through Dagster) and compares the replica's exact contents with the source. The insert modes,
idempotent retries, all-or-nothing loads, the late-row lookback, composite keys, schema quoting and
added columns run on both warehouses; the single-run backfill, bounded memory and the
materialization metadata run on PostgreSQL.
"""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_assets.config import TableConfig, TableReplicaConfig
from etl_assets.definitions import build_definitions
from etl_assets.engine.replica import OversizePolicy, ReplicaError, ReplicaJob, ReplicaReport
from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.sql import qualified
from etl_assets.lib.windows import Window
from etl_assets.resources import arrow_reader
from etl_assets.resources import warehouse as warehouse_module
from etl_assets.resources.source import SourceClient
from etl_assets.resources.warehouse import ReplicaKeys, WarehouseClient, WarehouseError
from etl_assets_tests.support import config_for, materialization_metadata

pytestmark = pytest.mark.integration

DAY = datetime(2024, 3, 1)
ONE_DAY = timedelta(days=1)

ORDERS_DDL = """
CREATE TABLE `{name}` (
  `id` INT NOT NULL,
  `status` VARCHAR(20) NOT NULL,
  `amount` DECIMAL(12,2) NULL,
  `note` VARCHAR(100) NULL,
  `is_paid` TINYINT(1) NOT NULL DEFAULT 0,
  `updated_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`id`),
  KEY `idx_updated_at` (`updated_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
ORDER_COLUMNS = ("id", "status", "amount", "note", "is_paid", "updated_at")


@dataclass
class Rig:
    """One MariaDB database and one warehouse schema, and the few moves every test makes."""

    source_url: str
    warehouse_url: str
    schema: str
    tmp_path: Path

    @property
    def dialect(self) -> str:
        return "duckdb" if self.warehouse_url.startswith("duckdb") else "postgresql"

    # -- source -------------------------------------------------------------------------------------

    def execute(self, statement: str, params: Any = None) -> None:
        engine = sa.create_engine(self.source_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement), params or {})
        finally:
            engine.dispose()

    def orders(self, name: str = "orders") -> None:
        self.execute(ORDERS_DDL.format(name=name))

    def insert(self, rows: list[dict[str, Any]], name: str = "orders") -> None:
        full = [{"amount": None, "note": None, "is_paid": 0, "status": "new", **row} for row in rows]
        self.execute(
            f"INSERT INTO `{name}` (id, status, amount, note, is_paid, updated_at) "
            "VALUES (:id, :status, :amount, :note, :is_paid, :updated_at)",
            full,
        )

    def source_rows(
        self, name: str = "orders", columns: tuple[str, ...] = ORDER_COLUMNS
    ) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(self.source_url)
        try:
            with engine.connect() as conn:
                cols = ", ".join(f"`{c}`" for c in columns)
                return [tuple(r) for r in conn.execute(sa.text(f"SELECT {cols} FROM `{name}` ORDER BY 1, 2"))]
        finally:
            engine.dispose()

    # -- replica ------------------------------------------------------------------------------------

    def config(self, name: str = "orders", **replica: Any) -> TableConfig:
        settings = {"start": "2024-01-01", **replica}
        config = config_for(
            source_url=self.source_url,
            warehouse_url=self.warehouse_url,
            warehouse_schema=json.dumps(self.schema),
            tables=f"  - name: {name}\n    replica: {json.dumps(settings)}\n",
            path=str(self.tmp_path / "etl_assets.yaml"),
        )
        return config.tables[0]

    def job(
        self,
        start: datetime,
        end: datetime | None = None,
        *,
        name: str = "orders",
        run_id: str = "run-1",
        source: SourceClient | None = None,
        warehouse_url: str | None = None,
        **replica: Any,
    ) -> ReplicaReport:
        """Load the window `[start, end)` (default one day) with `replica` settings; returns the report."""
        table = self.config(name, **replica)
        source = source or SourceClient(self.source_url)
        warehouse = WarehouseClient(url=warehouse_url or self.warehouse_url, schema=self.schema)
        try:
            return ReplicaJob(
                source=source,
                warehouse=warehouse,
                table=table,
                source_table=source.reflect(name),
                window=Window(start, end or start + ONE_DAY),
                run_id=run_id,
                log=lambda _message: None,
            ).run()
        finally:
            source.dispose()
            warehouse.close()

    def query(self, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        warehouse = WarehouseClient(url=self.warehouse_url, schema=self.schema)
        try:
            return warehouse.query(text, params)
        finally:
            warehouse.close()

    def replica_rows(
        self, name: str = "orders", columns: tuple[str, ...] = ORDER_COLUMNS
    ) -> list[tuple[Any, ...]]:
        cols = ", ".join(f'"{c}"' for c in columns)
        return self.query(f"SELECT {cols} FROM {qualified(self.schema, name, 'duckdb')} ORDER BY 1, 2")

    def replica_columns(self, name: str = "orders") -> dict[str, str]:
        warehouse = WarehouseClient(url=self.warehouse_url, schema=self.schema)
        try:
            return warehouse.columns(name)
        finally:
            warehouse.close()

    def watermark(self, name: str = "orders") -> datetime | None:
        warehouse = WarehouseClient(url=self.warehouse_url, schema=self.schema)
        try:
            return warehouse.last_load(name)[0]
        finally:
            warehouse.close()


def _drop_pg_schema(pg_url: str, schema: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()


@pytest.fixture(params=["postgresql", "duckdb"])
def rig(request: pytest.FixtureRequest, mysql_url: str, tmp_path: Path) -> Iterator[Rig]:
    """A source database and a warehouse schema, on PostgreSQL and on a DuckDB file."""
    schema = f"etl_r_{uuid.uuid4().hex[:10]}"
    if request.param == "duckdb":
        yield Rig(mysql_url, f"duckdb:///{tmp_path}/w.duckdb", schema, tmp_path)
        return
    pg_url = request.getfixturevalue("pg_server_url")
    try:
        yield Rig(mysql_url, pg_url, schema, tmp_path)
    finally:
        _drop_pg_schema(pg_url, schema)


@pytest.fixture
def pg_rig(mysql_url: str, pg_server_url: str, pg_schema: str, tmp_path: Path) -> Rig:
    """The PostgreSQL rig alone, for what needs Dagster, psycopg or memory measurement."""
    return Rig(mysql_url, pg_server_url, pg_schema, tmp_path)


def at(day: datetime, hours: float) -> datetime:
    return day + timedelta(hours=hours)


# -- insert modes ----------------------------------------------------------------------------------


def test_overwrite_updates_changed_rows_inserts_new_ones_and_retries_never_duplicate(rig: Rig) -> None:
    rig.orders()
    rig.insert([{"id": i, "amount": f"{i}.50", "updated_at": at(DAY, i)} for i in range(1, 6)])
    first = rig.job(DAY)
    assert first.created_table
    assert (first.load.rows_staged, first.load.rows_inserted, first.load.rows_replaced) == (5, 5, 0)

    next_day = DAY + ONE_DAY
    rig.execute(
        "UPDATE orders SET status = 'shipped', note = 'two 😀', updated_at = :t WHERE id IN (2, 3)",
        {"t": at(next_day, 1)},
    )
    rig.insert(
        [{"id": 6, "updated_at": at(next_day, 2)}, {"id": 7, "note": "", "updated_at": at(next_day, 3)}]
    )
    second = rig.job(next_day)
    assert not second.created_table
    assert (second.load.rows_staged, second.load.rows_inserted, second.load.rows_replaced) == (4, 2, 2)
    assert rig.replica_rows() == rig.source_rows()
    assert second.watermark_before == at(DAY, 5).replace(tzinfo=UTC)
    assert second.load.watermark == at(next_day, 3).replace(tzinfo=UTC)

    # Retries (same window, new run ids) replace what they read and never duplicate it.
    for attempt in range(2):
        retry = rig.job(next_day, run_id=f"retry-{attempt}")
        assert (retry.load.rows_inserted, retry.load.rows_replaced) == (0, 4)
    assert rig.replica_rows() == rig.source_rows()


@pytest.mark.parametrize("mode", ["overwrite_existing", "keep_existing"])
def test_first_copy_into_an_empty_postgresql_table_skips_staging(pg_rig: Rig, mode: str) -> None:
    pg_rig.orders()
    pg_rig.insert([{"id": i, "updated_at": at(DAY, i)} for i in range(1, 6)])
    first = pg_rig.job(DAY, insert_mode=mode)
    assert first.load.copied_directly and (first.load.rows_inserted, first.load.rows_replaced) == (5, 0)
    assert pg_rig.replica_rows() == pg_rig.source_rows()
    ledger = qualified(pg_rig.schema, warehouse_module.LEDGER_TABLE, "postgresql")
    assert pg_rig.query(f"SELECT rows_loaded FROM {ledger}") == [(5,)]
    pg_rig.execute("UPDATE orders SET status = 'shipped' WHERE id = 2")
    second = pg_rig.job(DAY, insert_mode=mode, run_id="run-2")
    assert not second.load.copied_directly, "a table with rows is merged through staging"
    if mode == "overwrite_existing":
        assert pg_rig.replica_rows() == pg_rig.source_rows()


def test_a_key_met_twice_in_a_direct_first_copy_loads_again_through_staging(
    pg_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row updated while the first copy reads the table comes twice: the newest copy wins, once."""
    pg_rig.orders()
    # keys 10 apart are too sparse for key ranges: the window is read in hourly time slices
    pg_rig.insert([{"id": i * 10, "updated_at": DAY + timedelta(minutes=4 * i)} for i in range(1, 301)])
    real_read_slice = arrow_reader.read_slice
    reads = {"n": 0}

    def read_then_move_a_row(url: str, query: str) -> pa.Table:
        result = real_read_slice(url, query)
        reads["n"] += 1
        if reads["n"] == 1:
            # Another application updates the row the first slice has just read into a later slice.
            pg_rig.execute(
                "UPDATE orders SET status = 'late', updated_at = :t WHERE id = 10", {"t": at(DAY, 23)}
            )
        return result

    monkeypatch.setattr(arrow_reader, "read_slice", read_then_move_a_row)
    messages: list[str] = []
    table = pg_rig.config(chunk_rows=100)
    source = SourceClient(pg_rig.source_url, reader="arrow")
    warehouse = WarehouseClient(url=pg_rig.warehouse_url, schema=pg_rig.schema)
    try:
        report = ReplicaJob(source=source, warehouse=warehouse, table=table, source_table=source.reflect("orders"),
                            window=Window(DAY, DAY + ONE_DAY), run_id="run-1", log=messages.append).run()  # fmt: skip
    finally:
        source.dispose()
        warehouse.close()
    assert any("met a key twice" in m and "through the staging table" in m for m in messages)
    assert reads["n"] > 3, "read in several slices, twice: once straight into the table, once through staging"
    assert not report.load.copied_directly and report.load.rows_inserted == 300
    assert pg_rig.replica_rows() == pg_rig.source_rows()
    assert [row[1] for row in pg_rig.replica_rows() if row[0] == 10] == ["late"]


def test_keep_existing_leaves_existing_rows_untouched(rig: Rig) -> None:
    rig.orders()
    rig.insert([{"id": i, "status": "new", "updated_at": at(DAY, i)} for i in range(1, 4)])
    before = rig.source_rows()
    assert rig.job(DAY, insert_mode="keep_existing").load.rows_inserted == 3

    rig.execute(
        "UPDATE orders SET status = 'changed', updated_at = :t WHERE id IN (1, 2)", {"t": at(DAY, 10)}
    )
    rig.insert([{"id": 4, "updated_at": at(DAY, 11)}])
    report = rig.job(DAY, insert_mode="keep_existing")
    assert (report.load.rows_staged, report.load.rows_inserted, report.load.rows_replaced) == (4, 1, 0)
    source_row_4 = [r for r in rig.source_rows() if r[0] == 4]
    assert rig.replica_rows() == before + source_row_4, "rows 1-3 keep the values first loaded"
    assert rig.job(DAY, insert_mode="keep_existing").load.rows_inserted == 0


def test_truncate_replaces_the_replica_with_the_current_source_table(rig: Rig) -> None:
    rig.orders()
    rig.insert([{"id": i, "updated_at": at(DAY, i)} for i in range(1, 4)])
    assert rig.job(DAY, insert_mode="truncate").load.rows_inserted == 3

    rig.execute("DELETE FROM orders WHERE id = 2")
    rig.execute("UPDATE orders SET status = 'moved', updated_at = '2019-05-05 05:05:05' WHERE id = 3")
    rig.insert([{"id": 4, "updated_at": datetime(2031, 1, 1)}])
    report = rig.job(DAY, insert_mode="truncate")
    assert report.read_window is None, "truncate reads the whole table, not the window"
    assert (report.load.rows_staged, report.load.rows_deleted, report.load.rows_inserted) == (3, 3, 3)
    assert rig.replica_rows() == rig.source_rows()
    assert [r[0] for r in rig.replica_rows()] == [1, 3, 4]


def test_append_adds_rows_once_and_a_retried_window_appends_nothing(rig: Rig) -> None:
    rig.orders()
    rig.insert([{"id": i, "updated_at": at(DAY, i)} for i in range(1, 4)])
    first = rig.job(DAY, insert_mode="append")
    assert (first.load.rows_staged, first.load.rows_inserted) == (3, 3)
    assert first.read_window == first.window, "append re-reads no lookback"

    retry = rig.job(DAY, insert_mode="append", run_id="run-2")
    assert retry.load.rows_staged == 0 and "appends nothing" in retry.message
    assert len(rig.replica_rows()) == 3

    # A new version of row 1 lands in the next window: append keeps both versions.
    rig.execute("UPDATE orders SET status = 'v2', updated_at = :t WHERE id = 1", {"t": at(DAY + ONE_DAY, 1)})
    assert rig.job(DAY + ONE_DAY, insert_mode="append").load.rows_inserted == 1
    versions = [r[1] for r in rig.replica_rows() if r[0] == 1]
    assert sorted(versions) == ["new", "v2"]

    # A range appended in one run, then one of its partitions re-run alone: nothing is appended twice.
    rig.insert(
        [
            {"id": 10, "updated_at": at(DAY + 2 * ONE_DAY, 1)},
            {"id": 11, "updated_at": at(DAY + 3 * ONE_DAY, 1)},
        ]
    )
    assert rig.job(DAY + 2 * ONE_DAY, DAY + 4 * ONE_DAY, insert_mode="append").load.rows_inserted == 2
    again = rig.job(DAY + 3 * ONE_DAY, insert_mode="append", run_id="run-3")
    assert again.load.rows_staged == 0
    assert sorted(r[0] for r in rig.replica_rows()) == [1, 1, 2, 3, 10, 11]


# -- all or nothing --------------------------------------------------------------------------------


def _load_then_break(rig: Rig, bad: dict[str, Any], **settings: Any) -> list[tuple[Any, ...]]:
    """300 rows loaded; then every row changed and 50 added, the newest (read last) with `bad` values."""
    rig.orders()
    rig.insert(
        [{"id": i, "note": "first", "is_paid": i % 2, "updated_at": at(DAY, i / 100)} for i in range(1, 301)]
    )
    rig.job(DAY, chunk_rows=100, **settings)
    loaded = rig.replica_rows()
    assert len(loaded) == 300
    rig.execute("UPDATE orders SET note = 'second', updated_at = updated_at + INTERVAL 1 MINUTE")
    rig.insert([{"id": i, "note": "second", "updated_at": at(DAY, 4 + i / 100)} for i in range(301, 351)])
    if bad:
        assignments = ", ".join(f"`{k}` = :{k}" for k in bad)
        rig.execute(
            f"UPDATE orders SET {assignments}, updated_at = :t WHERE id = 350", {**bad, "t": at(DAY, 23)}
        )
    return loaded


@pytest.mark.parametrize(
    ("bad", "settings", "message"),
    [
        pytest.param(
            {"is_paid": 5}, {"boolean_columns": ["is_paid"]}, r"'is_paid'.*boolean_columns", id="boolean-is-5"
        ),
        pytest.param(
            {"note": "NUL \x00 inside"}, {}, r"'note' holds a NUL character \(row \{'id': 350\}\)", id="nul"
        ),
    ],
)
def test_a_load_that_fails_midway_leaves_the_replica_unchanged(
    rig: Rig, bad: dict[str, Any], settings: dict[str, Any], message: str
) -> None:
    if "note" in bad and rig.dialect == "duckdb":
        pytest.skip("DuckDB VARCHAR holds NUL characters; only PostgreSQL rejects them")
    loaded = _load_then_break(rig, bad, **settings)
    if settings.get("boolean_columns"):  # tinyint(1) listed as boolean loads as BOOLEAN
        assert rig.replica_columns()["is_paid"].lower() == "boolean"
        assert [r[4] for r in loaded[:2]] == [True, False]
    watermark = rig.watermark()
    with pytest.raises(WarehouseError, match=message) as failure:
        rig.job(DAY, chunk_rows=100, run_id="run-2", **settings)
    assert "rolled back (nothing committed)" in str(failure.value)
    assert rig.replica_rows() == loaded, "the rows staged before the failure were not merged"
    assert rig.watermark() == watermark, "no ledger row for the failed load"


class _KillingSource(SourceClient):
    """A source whose stream calls `kill` after the first batch went to the warehouse."""

    def __init__(self, url: str, kill: Callable[[], None]) -> None:
        super().__init__(url)
        self.kill = kill

    def stream_window(self, *args: Any, **kwargs: Any) -> Any:
        batches, converter = super().stream_window(*args, **kwargs)

        def killing() -> Iterator[pa.RecordBatch]:
            for index, batch in enumerate(batches):
                if index == 1:
                    self.kill()
                yield batch

        return killing(), converter


def test_a_killed_warehouse_connection_leaves_the_replica_unchanged(pg_rig: Rig) -> None:
    loaded = _load_then_break(pg_rig, {})
    watermark = pg_rig.watermark()
    application = f"etl_kill_{uuid.uuid4().hex[:8]}"
    tagged_url = (
        sa.make_url(pg_rig.warehouse_url)
        .update_query_dict({"application_name": application})
        .render_as_string(hide_password=False)
    )

    def kill() -> None:
        admin = sa.create_engine(pg_rig.warehouse_url)
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a"),
                {"a": application},
            ).all()
        admin.dispose()
        assert killed and all(row[0] for row in killed), "the load's connection, mid-COPY"

    source = _KillingSource(pg_rig.source_url, kill)
    with pytest.raises(WarehouseError, match="rolled back"):
        pg_rig.job(DAY, chunk_rows=100, run_id="run-2", source=source, warehouse_url=tagged_url)
    assert pg_rig.replica_rows() == loaded
    assert pg_rig.watermark() == watermark
    # The next run loads everything.
    assert pg_rig.job(DAY, chunk_rows=100, run_id="run-3").load.rows_staged == 350
    assert pg_rig.replica_rows() == pg_rig.source_rows()


# -- windows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lag", "picked_up"), [("15 minutes", True), ("0 minutes", False)])
def test_late_row_is_picked_up_by_the_next_partition_because_of_lag(
    rig: Rig, lag: str, picked_up: bool
) -> None:
    rig.orders()
    rig.insert([{"id": 1, "updated_at": at(DAY, 12)}])
    rig.job(DAY, lag=lag)
    next_day = DAY + ONE_DAY
    # Committed after DAY was loaded, stamped 10 minutes before DAY's end.
    rig.insert(
        [{"id": 2, "updated_at": next_day - timedelta(minutes=10)}, {"id": 3, "updated_at": at(next_day, 8)}]
    )
    report = rig.job(next_day, lag=lag)
    assert report.read_window is not None
    assert report.read_window.start == (
        next_day - (timedelta(minutes=15) if picked_up else timedelta())
    ).replace(tzinfo=UTC)
    expected = [1, 2, 3] if picked_up else [1, 3]
    assert [r[0] for r in rig.replica_rows()] == expected
    assert report.load.rows_staged == len(expected) - 1


# -- keys, schema and columns ----------------------------------------------------------------------

LINE_ITEMS_DDL = """
CREATE TABLE line_items (
  order_id INT NOT NULL, line_no SMALLINT NOT NULL, sku VARCHAR(20) NOT NULL, qty INT NOT NULL,
  updated_at DATETIME(6) NOT NULL, PRIMARY KEY (order_id, line_no)
)"""
LINE_COLUMNS = ("order_id", "line_no", "sku", "qty", "updated_at")


def _primary_key(rig: Rig, table: str) -> list[str]:
    p = "?" if rig.dialect == "duckdb" else "%s"
    rows = rig.query(
        "SELECT k.column_name FROM information_schema.table_constraints c JOIN information_schema.key_column_usage k "
        "ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema AND k.table_name = c.table_name "
        f"WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = {p} AND c.table_name = {p} "
        "ORDER BY k.ordinal_position",
        (rig.schema, table),
    )
    return [str(r[0]) for r in rows]


def test_composite_primary_key_is_kept_whole(rig: Rig) -> None:
    rig.execute(LINE_ITEMS_DDL)
    rig.execute(
        "INSERT INTO line_items VALUES (1, 1, 'a', 1, :t), (1, 2, 'b', 2, :t), (2, 1, 'c', 3, :t)",
        {"t": at(DAY, 1)},
    )
    assert rig.job(DAY, name="line_items").load.rows_inserted == 3
    assert _primary_key(rig, "line_items") == ["order_id", "line_no"]

    rig.execute(
        "UPDATE line_items SET qty = 20, updated_at = :t WHERE order_id = 1 AND line_no = 2",
        {"t": at(DAY, 5)},
    )
    report = rig.job(DAY, name="line_items", run_id="run-2")
    assert (report.load.rows_inserted, report.load.rows_replaced) == (0, 3)
    assert rig.replica_rows("line_items", LINE_COLUMNS) == rig.source_rows("line_items", LINE_COLUMNS)
    assert [r[3] for r in rig.replica_rows("line_items", LINE_COLUMNS)] == [1, 20, 3], (
        "(1,1) shares order_id 1, untouched"
    )

    client = WarehouseClient(url=rig.warehouse_url, schema=rig.schema)
    try:
        guard = ReplicaKeys(client, "line_items", ["order_id", "line_no"], "updated_at")
        keys = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 1)]
        # The archive's view of each row: (1, 2) as the replica has it, (1, 1) older than the replica's
        # copy (as an aware UTC value), (2, 1) once as loaded and once newer (updated after the load).
        times = [at(DAY, 0).replace(tzinfo=UTC), at(DAY, 5), at(DAY, 1), at(DAY, 1), at(DAY, 1.5)]
        held = [guard.holds([key], [time]) for key, time in zip(keys, times, strict=True)]
    finally:
        client.close()
    assert held == [{(1, 1)}, {(1, 2)}, set(), {(2, 1)}, set()], (
        "held: the same or a newer version; not held: missing, or only an older version"
    )


def test_the_replica_guard_compares_a_timestamp_time_column_in_utc(rig: Rig) -> None:
    """A MySQL TIMESTAMP time column lands in the replica as TIMESTAMPTZ (aware values); the archive
    reads it as UTC. The guard must compare them as instants, to the microsecond."""
    rig.execute(
        "CREATE TABLE events (id INT NOT NULL PRIMARY KEY, updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
    )
    stamp = at(DAY, 1.5).replace(tzinfo=UTC)
    rig.execute(
        "INSERT INTO events VALUES (1, CONVERT_TZ(:t, '+00:00', @@SESSION.time_zone))",
        {"t": stamp.replace(tzinfo=None)},
    )
    assert rig.job(DAY, name="events").load.rows_inserted == 1
    client = WarehouseClient(url=rig.warehouse_url, schema=rig.schema)
    try:
        guard = ReplicaKeys(client, "events", ["id"], "updated_at")
        micro = timedelta(microseconds=1)
        held = [guard.holds([(1,)], [archived]) for archived in (stamp, stamp - micro, stamp + micro)]
    finally:
        client.close()
    assert held == [{(1,)}, {(1,)}, set()], (
        "same instant and older archived copies are held; a newer one is not"
    )


def test_target_schema_is_quoted_exactly_and_the_table_lands_there(rig: Rig) -> None:
    schema = f"Reporting Data {uuid.uuid4().hex[:8]}"
    name = f"Orders_{uuid.uuid4().hex[:6]}"
    quoted = Rig(rig.source_url, rig.warehouse_url, schema, rig.tmp_path)
    quoted.orders(name)
    quoted.insert([{"id": 1, "updated_at": at(DAY, 1)}], name=name)
    try:
        assert quoted.job(DAY, name=name).load.rows_inserted == 1
        p = "?" if rig.dialect == "duckdb" else "%s"
        placed = quoted.query(
            f"SELECT table_schema FROM information_schema.tables WHERE table_name = {p}", (name,)
        )
        assert placed == [(schema,)], "exactly that schema (not public, not lower-cased, not one dotted name)"
        assert quoted.replica_rows(name) == quoted.source_rows(name)
    finally:
        if rig.dialect == "postgresql":
            _drop_pg_schema(rig.warehouse_url, schema)


def test_a_column_the_source_gains_is_added_to_the_replica_and_loaded(rig: Rig) -> None:
    rig.orders()
    rig.insert([{"id": i, "updated_at": at(DAY, i)} for i in range(1, 4)])
    rig.job(DAY)
    # Added in the middle of the source table; the replica can only add it at its end.
    rig.execute("ALTER TABLE orders ADD COLUMN channel VARCHAR(10) NULL AFTER status")
    rig.execute(
        "UPDATE orders SET channel = 'web', updated_at = :t WHERE id IN (1, 2)", {"t": at(DAY + ONE_DAY, 1)}
    )
    report = rig.job(DAY + ONE_DAY)
    assert report.load.rows_replaced == 2
    assert list(rig.replica_columns())[-1] == "channel"
    columns = ("id", "status", "channel", "amount", "note", "updated_at")
    assert rig.replica_rows(columns=columns) == rig.source_rows(columns=columns)
    assert [r[2] for r in rig.replica_rows(columns=columns)] == ["web", "web", None]


# -- Dagster: single-run backfill, bounded memory, metadata ----------------------------------------


def _materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    key = dg.AssetKey(["replica", "orders"])
    job = defs.resolve_implicit_job_def_def_for_assets([key])
    assert job is not None
    return job.execute_in_process(asset_selection=[key], instance=instance, raise_on_error=False, **kwargs)


ROWS_SMALL, ROWS_LARGE = 10_000, 100_000
# Ten rows a minute: the read plans hour slices from a per-hour row count, which grows with the hours
# a window spans (a few hundred bytes an hour), so the rows are packed densely enough for the rows,
# not the hours, to be what the two loads differ in.
SEED_STEP_SECONDS = 6
# Holding the extra 90,000 rows would cost several MiB even as Arrow columns, and holding only their
# keys ~700 KiB; a steady load's peak varies by ~100 KiB between runs (allocator and statement-cache
# noise): the bound sits between.
GROWTH_ALLOWED_BYTES = 512 << 10


def _seed_spread(rig: Rig, rows: int, start: datetime, step_seconds: int) -> None:
    """`rows` orders from `start`, one every `step_seconds`, made by MariaDB itself (sequence engine)."""
    rig.orders()
    rig.execute(
        "INSERT INTO orders (id, status, amount, note, is_paid, updated_at) "
        "SELECT seq, ELT(1 + seq % 3, 'new', 'paid', 'void'), seq / 100, IF(seq % 5 = 0, NULL, CONCAT('n-', seq)), "
        f"seq % 2, :start + INTERVAL (seq * {step_seconds}) SECOND FROM seq_1_to_{rows}",
        {"start": start},
    )


def test_three_year_backfill_is_one_run_with_a_materialization_per_partition(pg_rig: Rig) -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=3 * 365)
    last = today - ONE_DAY
    days = (last - start).days + 1
    _seed_spread(pg_rig, 30_000, datetime.combine(start, datetime.min.time()), (days * 86_400 - 60) // 30_000)
    config = config_for(
        source_url=pg_rig.source_url,
        warehouse_url=pg_rig.warehouse_url,
        warehouse_schema=pg_rig.schema,
        tables=f"  - name: orders\n    replica: {{start: {start.isoformat()}, chunk_rows: 5000}}\n",
        path=str(pg_rig.tmp_path / "etl_assets.yaml"),
    )
    # In-memory storage: the point is one run and ~1,100 events, not SQLite's commit per event.
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(
            build_definitions(config),
            instance,
            tags={
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": last.isoformat(),
            },
        )
        assert result.success, result.get_step_failure_events()
        assert len(instance.get_runs()) == 1
    events = result.get_asset_materialization_events()
    assert len(events) == days >= 1095
    assert {e.partition for e in events} == {(start + timedelta(days=d)).isoformat() for d in range(days)}
    metadata = events[0].materialization.metadata
    assert metadata["rows_loaded"].value == 30_000
    assert metadata["dagster/row_count"].value == 30_000
    assert [r[0] for r in pg_rig.replica_rows(columns=("id", "status"))] == list(range(1, 30_001))


def test_memory_does_not_grow_with_the_row_count(pg_rig: Rig) -> None:
    _seed_spread(pg_rig, ROWS_LARGE, DAY, SEED_STEP_SECONDS)

    def peak(rows: int, schema: str) -> int:
        """Peak bytes the load allocated: Python objects (tracemalloc) plus Arrow buffers (a proxy pool)."""
        rig = Rig(pg_rig.source_url, pg_rig.warehouse_url, schema, pg_rig.tmp_path)
        previous, pool = pa.default_memory_pool(), pa.proxy_memory_pool(pa.default_memory_pool())
        pa.set_memory_pool(pool)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            end = DAY + timedelta(seconds=rows * SEED_STEP_SECONDS + SEED_STEP_SECONDS // 2)
            report = rig.job(DAY, end, lag="0 minutes", chunk_rows=500)
        finally:
            pa.set_memory_pool(previous)
        assert report.load.rows_staged == rows
        return tracemalloc.get_traced_memory()[1] - before + pool.max_memory()

    schemas = [f"{pg_rig.schema}_{n}" for n in ("warm", "small", "large")]
    tracemalloc.start()
    try:
        peak(500, schemas[0])  # warm-up: imports, compiled statements, type loaders
        small = peak(ROWS_SMALL, schemas[1])
        large = peak(ROWS_LARGE, schemas[2])
    finally:
        tracemalloc.stop()
        for schema in schemas:
            _drop_pg_schema(pg_rig.warehouse_url, schema)
    assert large - small < GROWTH_ALLOWED_BYTES, (
        f"peak {large:,} B for {ROWS_LARGE:,} rows vs {small:,} B for {ROWS_SMALL:,} rows"
    )


def test_materialization_metadata(pg_rig: Rig) -> None:
    pg_rig.orders()
    pg_rig.insert([{"id": i, "amount": "1.25", "updated_at": at(DAY, i / 2)} for i in range(1, 21)])
    pg_rig.insert([{"id": i, "updated_at": at(DAY + ONE_DAY, (i - 20) / 2)} for i in range(21, 31)])
    config = config_for(
        source_url=pg_rig.source_url,
        warehouse_url=pg_rig.warehouse_url,
        warehouse_schema=pg_rig.schema,
        tables="  - name: orders\n    replica: {start: 2024-01-01}\n",
        path=str(pg_rig.tmp_path / "etl_assets.yaml"),
    )
    defs = build_definitions(config)
    with dg.DagsterInstance.ephemeral() as instance:
        first = _materialize(defs, instance, partition_key=DAY.date().isoformat())
        assert first.success, first.get_step_failure_events()
        pg_rig.execute(
            "UPDATE orders SET status = 'paid', updated_at = :t WHERE id <= 5", {"t": at(DAY + ONE_DAY, 6)}
        )
        second = _materialize(defs, instance, partition_key=(DAY + ONE_DAY).date().isoformat())
        assert second.success, second.get_step_failure_events()
    one = materialization_metadata(first, "replica/orders")
    two = materialization_metadata(second, "replica/orders")

    assert one["rows_loaded"].value == one["rows_inserted"].value == one["dagster/row_count"].value == 20
    assert one["rows_replaced"].value == 0
    assert one["bytes_staged"].value > 20 * 20
    assert one["seconds"].value > 0 and one["rows_per_second"].value > 0
    assert one["watermark_before"].value == "none"
    assert one["watermark_after"].value == at(DAY, 10).replace(tzinfo=UTC).isoformat()
    assert one["zero_dates_nulled"].value == 0 and one["oversize_values"].value == 0
    schema = one["dagster/column_schema"].value
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", "integer"),
        ("status", "character varying(20)"),
        ("amount", "numeric(12,2)"),
        ("note", "character varying(100)"),
        ("is_paid", "smallint"),
        ("updated_at", "timestamp without time zone"),
    ]

    assert (two["rows_loaded"].value, two["rows_inserted"].value, two["rows_replaced"].value) == (15, 10, 5)
    assert two["dagster/row_count"].value == 30
    assert two["watermark_before"].value == one["watermark_after"].value
    assert two["watermark_after"].value == at(DAY + ONE_DAY, 6).replace(tzinfo=UTC).isoformat()
    assert two["read_window"].value == "[2024-03-01T23:45, 2024-03-03T00:00)"


# -- oversize values (Redshift byte limits), no database -------------------------------------------

OVERSIZE_TABLE = SourceTable(
    name="notes",
    columns=(
        SourceColumn("id", "int", "int(11)", nullable=False),
        SourceColumn("body", "text", "text"),
        SourceColumn("code", "varchar", "varchar(2)", char_max_length=2),
        SourceColumn("blob", "varbinary", "varbinary(4)", char_max_length=4),
    ),
    primary_key=("id",),
)
EMOJI = "\U0001f600"  # 4 bytes in UTF-8


def _oversize_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "id": pa.array([1, 42, 7], pa.int32()),
            "body": pa.array(["short", "a" + EMOJI * 16_384, None], pa.string()),  # 65,537 bytes in row 42
            "code": pa.array(["ok", EMOJI * 2, "é"], pa.string()),  # VARCHAR(8) on Redshift: 8 bytes fit
            "blob": pa.array([b"\x00\x01\x02\x03\x04", b"", None], pa.binary()),  # 5 bytes in row 1
        }
    )


def _policy(mode: str, dialect: str = "redshift") -> OversizePolicy:
    return OversizePolicy(
        OVERSIZE_TABLE, TableConfig(name="notes", replica=TableReplicaConfig(oversize=mode)), dialect
    )


def test_oversize_fail_names_column_key_and_size() -> None:
    assert TableReplicaConfig().oversize == "fail"
    with pytest.raises(ReplicaError) as failure:
        _policy("fail").apply(_oversize_batch())
    text = str(failure.value)
    assert "'body'" in text and "{'id': 42}" in text and "65,537 bytes" in text and "65,535" in text


def test_oversize_truncate_keeps_valid_utf8_within_the_limit_and_counts() -> None:
    policy = _policy("truncate")
    out = policy.apply(_oversize_batch())
    body = out.column("body").to_pylist()
    assert body[0] == "short" and body[2] is None
    encoded = body[1].encode("utf-8")
    assert len(encoded) <= 65_535 and encoded.decode("utf-8") == "a" + EMOJI * 16_383
    assert out.column("code").to_pylist() == ["ok", EMOJI * 2, "é"]
    assert out.column("blob").to_pylist() == [b"\x00\x01\x02\x03", b"", None]
    assert policy.count == 2


def test_oversize_null_replaces_and_counts() -> None:
    policy = _policy("null")
    out = policy.apply(_oversize_batch())
    assert out.column("body").to_pylist() == ["short", None, None]
    assert out.column("blob").to_pylist() == [None, b"", None]
    assert policy.count == 2


@pytest.mark.parametrize("dialect", ["postgresql", "duckdb"])
def test_oversize_limits_apply_to_redshift_only(dialect: str) -> None:
    batch = _oversize_batch()
    policy = _policy("fail", dialect)
    assert policy.apply(batch).equals(batch) and policy.count == 0


def test_redshift_parquet_columns_follow_the_replica_order() -> None:
    batch = pa.RecordBatch.from_pydict({"id": [1], "channel": ["web"], "status": ["new"]})
    ordered = warehouse_module._in_column_order(batch, ["id", "status", "channel"], "s.orders")
    assert ordered.schema.names == ["id", "status", "channel"]
    with pytest.raises(WarehouseError, match="lacks"):
        warehouse_module._in_column_order(batch, ["id", "status"], "s.orders")


def test_zero_date_columns_accept_null_in_the_replica_except_keys() -> None:
    table = SourceTable(
        name="legacy",
        columns=(
            SourceColumn("day", "date", "date", nullable=False),
            SourceColumn("born", "date", "date", nullable=False),
            SourceColumn("seen", "datetime", "datetime", nullable=False),
            SourceColumn("n", "int", "int(11)", nullable=False),
        ),
        primary_key=("day",),
    )
    shaped = warehouse_module.replica_shape(table)
    assert [c.nullable for c in shaped.columns] == [False, True, True, False]
