"""`replica_new_rows` on a real MariaDB and an ephemeral instance: request, skip, request only what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_assets.definitions import build_definitions
from etl_assets.sensors.new_rows import SENSOR_NAME
from etl_assets_tests.support import config_for, seed_visits

pytestmark = pytest.mark.integration


def tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult | dg.SkipReason:
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                      resources={"source": defs.resources["source"]})  # fmt: skip
    return sensor(context)


def test_first_tick_requests_then_skips_then_requests_only_changed_partitions(mysql_url: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=50)
    newest = datetime(2026, 11, 20, 9, 30)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE visits SET updated_at = :t WHERE id = 1"), {"t": newest})
    config = config_for(source_url=mysql_url, warehouse_url="duckdb:///unused.duckdb",
                        tables="  - name: visits\n    replica: {start: 2026-11-01, lag: 15 minutes}\n")  # fmt: skip
    defs = build_definitions(config)
    instance = dg.DagsterInstance.ephemeral()

    first = tick(defs, instance, None)
    assert isinstance(first, dg.SensorResult)
    assert [r.partition_key for r in first.run_requests] == ["2026-11-20"]
    assert first.run_requests[0].job_name == "replica_visits"
    assert first.run_requests[0].run_key == "visits:2026-11-20:2026-11-20T09:30:00+00:00"

    second = tick(defs, instance, first.cursor)
    assert isinstance(second, dg.SkipReason)

    # Rows arrive two days later; the partition of the previous newest row is reloaded too (lag).
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE visits SET updated_at = :t WHERE id = 2"), {"t": newest + timedelta(days=2)}
        )
    third = tick(defs, instance, first.cursor)
    engine.dispose()
    assert isinstance(third, dg.SensorResult)
    assert [r.partition_key for r in third.run_requests] == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert len({r.run_key for r in third.run_requests}) == 3


def test_a_tick_sends_one_statement_for_every_table_on_a_kept_connection(mysql_url: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=20)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE empty_log (id INT PRIMARY KEY, logged_on DATE, KEY (logged_on))"))
        conn.execute(sa.text("CREATE TABLE day_log (id INT PRIMARY KEY, logged_on DATE, KEY (logged_on))"))
        conn.execute(sa.text("INSERT INTO day_log VALUES (1, '2026-11-03'), (2, '2026-11-05')"))
    engine.dispose()
    tables = """
  - name: visits
    replica: {start: 2023-01-01, partition: monthly}
  - name: empty_log
    time_column: logged_on
    replica: {start: 2026-11-01}
  - name: day_log
    time_column: logged_on
    replica: {start: 2026-11-01}
"""
    config = config_for(source_url=mysql_url, warehouse_url="duckdb:///unused.duckdb", tables=tables)
    defs = build_definitions(config)
    instance = dg.DagsterInstance.ephemeral()
    first = tick(defs, instance, None)
    assert isinstance(first, dg.SensorResult)
    assert {r.job_name for r in first.run_requests} == {"replica_visits", "replica_day_log"}, (
        "the empty table asks nothing"
    )
    assert [r.partition_key for r in first.run_requests if r.job_name == "replica_day_log"] == ["2026-11-05"]

    statements: list[str] = []
    client = defs.resources["source"].open_shared()  # type: ignore[union-attr]
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    sa.event.listen(client.engine, "before_cursor_execute", listener)
    try:
        for _ in range(3):
            assert isinstance(tick(defs, instance, first.cursor), dg.SkipReason)
    finally:
        sa.event.remove(client.engine, "before_cursor_execute", listener)
    assert len(statements) == 3, statements
    assert all(s.count("max(") == 3 and "UNION ALL" in s for s in statements), statements[0]


def test_a_long_pause_becomes_one_range_run(mysql_url: str) -> None:
    seed_visits(mysql_url, months=[(2026, 1), (2026, 10)], rows_per_month=5)
    config = config_for(source_url=mysql_url, warehouse_url="duckdb:///unused.duckdb",
                        tables="  - name: visits\n    replica: {start: 2025-12-01}\n")  # fmt: skip
    defs = build_definitions(config)
    cursor = '{"visits": "2026-01-02T00:00:00+00:00"}'
    result = tick(defs, dg.DagsterInstance.ephemeral(), cursor)
    assert isinstance(result, dg.SensorResult)
    assert len(result.run_requests) == 1
    tags = result.run_requests[0].tags
    assert tags["dagster/asset_partition_range_start"] == "2026-01-01"
    assert tags["dagster/asset_partition_range_end"].startswith("2026-10-")
    assert datetime.fromisoformat(tags["dagster/asset_partition_range_end"]).replace(
        tzinfo=UTC
    ) <= datetime.now(UTC)


def test_replica_fallback_schedule_requests_the_current_partition() -> None:
    config = config_for(source_url="sqlite:///unused.db", warehouse_url="duckdb:///unused.duckdb",
                        tables="  - name: visits\n    replica: {start: 2026-01-01}\n")  # fmt: skip
    defs = build_definitions(config)
    schedule = defs.resolve_schedule_def("replica_visits_hourly")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 28, 8, 5, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    requests = schedule.evaluate_tick(context).run_requests or []
    assert [r.partition_key for r in requests] == ["2026-11-28"]
    early = dg.build_schedule_context(
        scheduled_execution_time=datetime(2025, 6, 1, tzinfo=UTC), repository_def=defs.get_repository_def()
    )
    assert not schedule.evaluate_tick(early).run_requests
