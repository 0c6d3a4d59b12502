"""`replica_new_rows` on a real MariaDB and an ephemeral instance: request, skip, request only what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_assets.definitions import build_definitions
from etl_assets.lib.windows import add_months, archive_cutoff, check_archive_eligible, month_window
from etl_assets.sensors.new_rows import SENSOR_NAME
from etl_assets_tests.support import config_for, seed_visits

pytestmark = pytest.mark.integration

VISITS_REPLICA = dg.AssetKey(["replica", "visits"])


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
    assert first.run_requests[0].job_name == "replica_daily_since_2026_11_01"
    assert first.run_requests[0].asset_selection == [VISITS_REPLICA]
    assert first.run_requests[0].tags["etl_assets/table"] == "visits"
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
    # empty_log and day_log are partitioned alike and share a job; each request selects its table.
    requested = {(r.job_name, tuple(r.asset_selection or ())) for r in first.run_requests}
    assert requested == {
        ("replica_monthly_since_2023_01", (VISITS_REPLICA,)),
        ("replica_daily_since_2026_11_01", (dg.AssetKey(["replica", "day_log"]),)),
    }, "the empty table asks nothing"
    day_log = [r for r in first.run_requests if r.tags["etl_assets/table"] == "day_log"]
    assert [r.partition_key for r in day_log] == ["2026-11-05"]

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
    assert result.run_requests[0].asset_selection == [VISITS_REPLICA]
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
    assert [r.asset_selection for r in requests] == [[VISITS_REPLICA]]
    early = dg.build_schedule_context(
        scheduled_execution_time=datetime(2025, 6, 1, tzinfo=UTC), repository_def=defs.get_repository_def()
    )
    assert not schedule.evaluate_tick(early).run_requests


def test_archive_schedules_request_their_table_in_the_shared_job() -> None:
    tables = (
        "".join(
            f"  - name: {name}\n    primary_key: [id]\n    archive: {{retention: 1 year, start: '2024-01'}}\n"
            for name in ("visits", "labs", "claims")
        )
        + "  - name: notes\n    primary_key: [id]\n    archive: {retention: 2 years, start: '2024-01'}\n"
    )
    config = config_for(source_url="sqlite:///unused.db", archive_url="unused-archive", tables=tables)
    defs = build_definitions(config)
    repository = defs.get_repository_def()
    jobs = sorted(job.name for job in repository.get_all_jobs() if job.name.startswith("archive_"))
    assert jobs == ["archive_since_2024_01_keep_12m", "archive_since_2024_01_keep_24m"], (
        "tables partitioned alike share one job; another retention is another partitioning"
    )
    shared = repository.get_job("archive_since_2024_01_keep_12m")
    assert {k.path[-1] for k in shared.asset_layer.executable_asset_keys} == {"visits", "labs", "claims"}

    for table, months_back in (("labs", 12), ("notes", 24)):
        schedule = defs.resolve_schedule_def(f"archive_{table}_schedule")
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
        context = dg.build_schedule_context(
            scheduled_execution_time=datetime(2026, 11, 2, 3, 0, tzinfo=UTC), repository_def=repository
        )
        requests = schedule.evaluate_tick(context).run_requests or []
        newest_eligible = (datetime(2026, 11, 1) - timedelta(days=1)).replace(day=1)
        expected = newest_eligible.replace(year=newest_eligible.year - months_back // 12)
        assert [(r.partition_key, r.asset_selection) for r in requests] == [
            (expected.date().isoformat(), [dg.AssetKey(["archive", table])])
        ]
        assert requests[0].tags["etl_assets/table"] == table
        too_early = dg.build_schedule_context(
            scheduled_execution_time=datetime(2024, 6, 2, 3, 0, tzinfo=UTC), repository_def=repository
        )
        assert not schedule.evaluate_tick(too_early).run_requests


@pytest.mark.parametrize("retention", ["1 day", "30 days", "45 days", "6 weeks", "90 days", "1 month"])
def test_the_newest_listed_month_is_eligible_on_every_day_of_two_years(retention: str) -> None:
    """A retention in days reaches back one or two month starts depending on the day: the partition
    list must hold back the larger count, or the schedule requests a month the run refuses."""
    tables = f"  - name: visits\n    primary_key: [id]\n    archive: {{retention: {retention}, start: '2020-01'}}\n"
    config = config_for(source_url="sqlite:///unused.db", archive_url="unused-archive", tables=tables)
    defs = build_definitions(config)
    repository = defs.get_repository_def()
    schedule = defs.resolve_schedule_def("archive_visits_schedule")
    partitions = repository.get_job(schedule.job_name).partitions_def
    assert partitions is not None
    period = config.tables[0].archive.retention_period  # type: ignore[union-attr]
    listed_late = 0
    day = datetime(2027, 1, 1, tzinfo=UTC)
    while day < datetime(2029, 1, 1, tzinfo=UTC):
        for moment in (day, day + timedelta(hours=23, minutes=59)):
            with dg.partition_loading_context(effective_dt=moment):
                newest = partitions.get_last_partition_key()
            assert newest is not None
            check_archive_eligible(month_window(newest), period, moment)  # raises when refused
            if add_months(month_window(newest).end, 1) <= archive_cutoff(period, moment):
                listed_late += 1  # the month after it was eligible already
        day += timedelta(days=1)
    # Held back no more than needed: a retention in whole months lists each month as it becomes eligible.
    if period.unit == "months":
        assert listed_late == 0
    assert listed_late < 2 * 731
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2027, 3, 2, 3, 0, tzinfo=UTC), repository_def=repository
    )
    [request] = schedule.evaluate_tick(context).run_requests or []
    assert request.partition_key is not None
    check_archive_eligible(
        month_window(request.partition_key), period, datetime(2027, 3, 2, 3, 0, tzinfo=UTC)
    )
