"""Test helpers: seed realistic tables in MariaDB, build configs, and account for every row."""

from __future__ import annotations

import io
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.config import ProjectConfig, TableConfig, parse_config
from etl_assets.lib.layout import is_queryable
from etl_assets.lib.manifest import Manifest
from etl_assets.lib.windows import Window
from etl_assets.resources import arrow_reader
from etl_assets.resources.store import ObjectStore

VISITS_DDL = """
CREATE TABLE `visits` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `patient_id` INT NOT NULL,
  `status` ENUM('scheduled','completed','cancelled') NOT NULL,
  `amount` DECIMAL(12,2) NULL,
  `notes` VARCHAR(255) NULL,
  `payload` JSON NULL,
  `is_paid` TINYINT(1) NOT NULL DEFAULT 0,
  `created_at` DATETIME NOT NULL,
  `updated_at` DATETIME(6) NULL,
  PRIMARY KEY (`id`),
  KEY `idx_updated_at` (`updated_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


def month_start(year: int, month: int) -> datetime:
    """First instant of a month, naive (MySQL DATETIME)."""
    return datetime(year, month, 1)


def seed_visits(
    url: str,
    *,
    months: Iterable[tuple[int, int]],
    rows_per_month: int,
    null_time_rows: int = 0,
    seed: int = 7,
    boundary_rows: bool = True,
) -> int:
    """Create and fill `visits`; returns the number of rows inserted.

    Each month gets `rows_per_month` rows spread over the month; with `boundary_rows`, the first row
    of each month is stamped exactly at midnight on the 1st (the half-open window's edge).
    """
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    total = 0
    with engine.begin() as conn:
        conn.exec_driver_sql(VISITS_DDL)
        rows: list[dict[str, Any]] = []
        for year, month in months:
            start = month_start(year, month)
            end = month_start(year + (month == 12), 1 if month == 12 else month + 1)
            span = (end - start).total_seconds()
            for index in range(rows_per_month):
                offset = 0.0 if (boundary_rows and index == 0) else rng.uniform(1, span - 1)
                stamp = start + timedelta(seconds=offset)
                rows.append(_visit(rng, stamp))
        for _ in range(null_time_rows):
            rows.append({**_visit(rng, datetime(2020, 1, 1)), "updated_at": None})
        for chunk in range(0, len(rows), 5000):
            conn.execute(
                sa.text(
                    "INSERT INTO visits (patient_id, status, amount, notes, payload, is_paid, created_at, updated_at) "
                    "VALUES (:patient_id, :status, :amount, :notes, :payload, :is_paid, :created_at, :updated_at)"
                ),
                rows[chunk : chunk + 5000],
            )
        total = len(rows)
    engine.dispose()
    return total


def _visit(rng: random.Random, stamp: datetime) -> dict[str, Any]:
    return {
        "patient_id": rng.randint(1, 50_000),
        "status": rng.choice(["scheduled", "completed", "cancelled"]),
        "amount": f"{rng.randint(0, 99999)}.{rng.randint(0, 99):02d}",
        "notes": rng.choice([None, "follow-up in 2 weeks", "patient reports 😀 relief", "ok"]),
        "payload": '{"bp": [120, 80], "source": "ehr"}',
        "is_paid": rng.randint(0, 1),
        "created_at": stamp - timedelta(days=1),
        "updated_at": stamp,
    }


def config_for(
    *,
    source_url: str,
    archive_url: str | None = None,
    warehouse_url: str | None = None,
    warehouse_schema: str = "replica",
    tables: str,
    extra: str = "",
    path: str = "test-config.yaml",
) -> ProjectConfig:
    """A config from YAML snippets (tables is the YAML list under `tables:`)."""
    text = f"source:\n  url: '{source_url}'\n"
    if archive_url:
        text += f"archive:\n  url: '{archive_url}'\n"
    if warehouse_url:
        text += f"warehouse:\n  url: '{warehouse_url}'\n  schema: {warehouse_schema}\n"
    text += extra + "tables:\n" + tables
    return parse_config(text, source=path)


def execute_sql(url: str, statement: str, params: Any = None) -> None:
    """Run one statement in its own transaction on a short-lived engine."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params or {})
    finally:
        engine.dispose()


def source_keys(url: str, table: str = "visits", key: str = "id") -> set[Any]:
    """Primary keys currently in the source table."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        keys = {row[0] for row in conn.execute(sa.text(f"SELECT `{key}` FROM `{table}`"))}
    engine.dispose()
    return keys


def archived_keys(store: ObjectStore, table: str = "visits", key: str = "id") -> list[Any]:
    """Primary keys in the queryable view (every .parquet outside `_`/`.` segments), duplicates kept."""
    keys: list[Any] = []
    for object_key in store.list(table):
        if is_queryable(object_key):
            data = pq.read_table(io.BytesIO(store.get_bytes(object_key)), columns=[key])
            keys.extend(data.column(key).to_pylist())
    return keys


def committed(store: ObjectStore, table: str = "visits") -> list[Manifest]:
    """Every committed manifest of the table."""
    return [
        Manifest.from_json(store.get_bytes(k))
        for k in store.list(table)
        if k.endswith(".manifest.json") and "/_staging/" not in k
    ]


def replica_ids(pg_url: str, schema: str, table: str = "visits") -> set[int]:
    """The `id`s a PostgreSQL replica table holds."""
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        ids = {int(r[0]) for r in conn.execute(sa.text(f'SELECT id FROM "{schema}"."{table}"'))}
    engine.dispose()
    return ids


def replicate(source_url: str, warehouse_url: str, schema: str, table: TableConfig, window: Window,
              run_id: str = "r") -> Any:  # fmt: skip
    """Run one replica load of `table` over `window` (ReplicaJob); returns its report."""
    from etl_assets.engine.replica import ReplicaJob
    from etl_assets.resources.source import SourceClient
    from etl_assets.resources.warehouse import WarehouseClient

    source, warehouse = SourceClient(source_url), WarehouseClient(url=warehouse_url, schema=schema)
    try:
        return ReplicaJob(source=source, warehouse=warehouse, table=table, source_table=source.reflect(table.name),
                          window=window, run_id=run_id, log=lambda _message: None).run()  # fmt: skip
    finally:
        warehouse.close()
        source.dispose()


def utc_now() -> datetime:
    """The real clock, UTC."""
    return datetime.now(UTC)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def month_keys(url: str, window: Window) -> set[int]:
    """Keys of the `visits` rows whose time falls in `window`."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id FROM visits WHERE updated_at >= :s AND updated_at < :e"),
            {"s": window.start.replace(tzinfo=None), "e": window.end.replace(tzinfo=None)},
        )
        keys = {r[0] for r in rows}
    engine.dispose()
    return keys


def record_slice_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every query the fast reader sends (`arrow_reader.read_slice`), appended as it is sent."""
    queries: list[str] = []
    real_read_slice = arrow_reader.read_slice

    def recording_read_slice(url: str, query: str) -> pa.Table:
        queries.append(query)
        return real_read_slice(url, query)

    monkeypatch.setattr(arrow_reader, "read_slice", recording_read_slice)
    return queries


def wait_for(condition: Callable[[], object], timeout: float) -> bool:
    """Poll `condition` until it is true or `timeout` seconds passed; whether it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def slice_readers() -> set[threading.Thread]:
    """The threads that read slices, or start a month's read early."""
    return {t for t in threading.enumerate() if t.name.startswith(("etl-slice-reader", "etl-read-ahead"))}


def wrap(target: Any, method: str, before: Callable[..., None]) -> None:
    """Call `before(*args)` ahead of every call of `target.method` (on this instance only)."""
    original = getattr(target, method)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(target, method, wrapped)


def materialization_metadata(result: dg.ExecuteInProcessResult, key: str) -> Mapping[str, Any]:
    """The metadata of the one materialization of `key` (`archive/visits`) in `result`."""
    asset_key = dg.AssetKey.from_user_string(key)
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == asset_key]
    return event.step_materialization_data.materialization.metadata
