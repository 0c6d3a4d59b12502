"""The Dagster graph end to end against MariaDB, PostgreSQL and the local S3 endpoint."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_assets.definitions import build_definitions
from etl_assets.resources.store import open_store
from etl_assets_tests.support import (
    archived_keys,
    config_for,
    materialization_metadata,
    replica_ids,
    seed_visits,
    source_keys,
)

pytestmark = pytest.mark.integration

TABLES = """
  - name: visits
    owners: [team:clinic-data]
    archive: {retention: 1 year, start: 2022-12, batch_size: 500, part_rows: 2000}
    replica: {start: 2022-12-01, lag: 30 minutes}
"""


@pytest.fixture
def env(mysql_url: str, pg_server_url: str, pg_schema: str, s3_bucket: str) -> dict[str, Any]:
    total = seed_visits(
        mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=1500, null_time_rows=3
    )
    config = config_for(
        source_url=mysql_url,
        archive_url=f"s3://{s3_bucket}/archive",
        warehouse_url=pg_server_url,
        warehouse_schema=pg_schema,
        tables=TABLES,
    )
    return {"config": config, "defs": build_definitions(config), "url": mysql_url, "total": total,
            "bucket": s3_bucket, "pg": pg_server_url, "schema": pg_schema}  # fmt: skip


def _materialize(defs: dg.Definitions, key: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
    asset_key = dg.AssetKey.from_user_string(key)
    job = defs.resolve_implicit_job_def_def_for_assets([asset_key])
    assert job is not None
    return job.execute_in_process(asset_selection=[asset_key], raise_on_error=False, **kwargs)


def _range(start: str, end: str) -> dict[str, str]:
    """Tags of a single run over a partition range (a backfill with BackfillPolicy.single_run)."""
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def test_replica_backfill_then_archive_keeps_rows_in_replica(env: dict[str, Any]) -> None:
    defs, url = env["defs"], env["url"]
    with dg.instance_for_test() as instance:
        backfill = _materialize(
            defs,
            "replica/visits",
            instance=instance,
            tags=_range("2022-12-01", "2023-02-28"),
        )
        assert backfill.success, backfill.get_step_failure_events()
        events = backfill.get_asset_materialization_events()
        assert len(events) == 90, "one materialization per daily partition of the single run"
        all_timed = source_keys(url) - _null_time_ids(url)
        assert replica_ids(env["pg"], env["schema"]) == all_timed

        archived = _materialize(defs, "archive/visits", instance=instance, partition_key="2023-01-01")
        assert archived.success, archived.get_step_failure_events()
        metadata = materialization_metadata(archived, "archive/visits")
        assert metadata["rows_purged"].value == 1500
        assert metadata["rows_kept_not_in_replica"].value == 0
        checks = archived.get_asset_check_evaluations()
        assert [c.check_name for c in checks] == ["archive_verified"] and checks[0].passed

    store = open_store(f"s3://{env['bucket']}/archive", region="us-east-1")
    in_archive = set(archived_keys(store))
    assert len(in_archive) == 1500
    assert in_archive.isdisjoint(source_keys(url))
    assert in_archive <= replica_ids(env["pg"], env["schema"]), "archive purges never delete from the replica"


def test_archive_refuses_to_purge_rows_missing_from_the_replica(env: dict[str, Any]) -> None:
    with dg.instance_for_test() as instance:
        result = _materialize(env["defs"], "archive/visits", instance=instance, partition_key="2023-01-01")
        assert result.success
        metadata = materialization_metadata(result, "archive/visits")
    assert metadata["rows_purged"].value == 0
    assert metadata["rows_kept_not_in_replica"].value == 1500
    assert source_keys(env["url"]) | _null_time_ids(env["url"]) == source_keys(env["url"])
    assert len(source_keys(env["url"])) == env["total"]


def test_newest_listed_archive_partition_is_eligible(env: dict[str, Any]) -> None:
    defs = env["defs"]
    partitions = defs.resolve_assets_def(dg.AssetKey(["archive", "visits"])).partitions_def
    assert partitions is not None
    newest = partitions.get_last_partition_key()
    assert newest is not None
    with dg.instance_for_test() as instance:
        ok_but_empty = _materialize(defs, "archive/visits", instance=instance, partition_key=newest)
    assert ok_but_empty.success, "the newest listed partition is eligible"


def test_source_observation_and_table_sizes(env: dict[str, Any]) -> None:
    defs = env["defs"]
    with dg.instance_for_test() as instance:
        key = dg.AssetKey(["source", "visits"])
        job = defs.resolve_implicit_job_def_def_for_assets([key])
        assert job is not None
        result = job.execute_in_process(asset_selection=[key], instance=instance)
        assert result.success
        observation = result.get_asset_observation_events()[0].event_specific_data.asset_observation  # type: ignore[union-attr]
        schema = observation.metadata["dagster/column_schema"].value
        assert [c.name for c in schema.columns][:3] == ["id", "patient_id", "status"]
        assert observation.metadata["dagster/row_count"].value == env["total"], (
            "small tables get an exact count"
        )
        assert observation.metadata["row_count_is_estimate"].value is False
        assert observation.tags.get("dagster/data_version", "").startswith(f"{env['total']}:2023-02")

        sizes = _materialize(defs, "source_table_sizes", instance=instance)
        assert sizes.success
        metadata = sizes.asset_materializations_for_node("source_table_sizes")[0].metadata
    assert metadata["tables"].value == 1
    assert metadata["archive_candidates"].value == 0
    assert "`visits`" in metadata["sizes"].value


def test_table_sizes_marks_unarchived_time_tables_as_candidates(env: dict[str, Any]) -> None:
    engine = sa.create_engine(env["url"])
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE audit_log (id INT PRIMARY KEY, happened_at DATETIME)")
        conn.exec_driver_sql("CREATE TABLE settings (name VARCHAR(20) PRIMARY KEY, value TEXT)")
    engine.dispose()
    with dg.instance_for_test() as instance:
        sizes = _materialize(env["defs"], "source_table_sizes", instance=instance)
    metadata = sizes.asset_materializations_for_node("source_table_sizes")[0].metadata
    assert metadata["candidate_tables"].value == ["audit_log"]
    assert "**candidate**" in metadata["sizes"].value


def _null_time_ids(url: str) -> set[int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ids = {int(r[0]) for r in conn.execute(sa.text("SELECT id FROM visits WHERE updated_at IS NULL"))}
    engine.dispose()
    return ids


def test_a_backfill_logs_every_month_in_order_before_the_step_ends(env: dict[str, Any]) -> None:
    # Extraction and purge threads queue their lines; a writer thread puts them in the event log.
    with dg.instance_for_test() as instance:
        result = _materialize(
            env["defs"],
            "archive/visits",
            instance=instance,
            tags=_range("2022-12-01", "2023-01-01"),
        )
        assert result.success, result.get_step_failure_events()
        records = instance.all_logs(result.run_id)
    step_end = next(
        i for i, r in enumerate(records)
        if r.dagster_event and r.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    )  # fmt: skip
    # Lines logged close together are one multi-line event (LogRelay); their order is the lines' order.
    lines = [
        line for r in records[:step_end] if r.dagster_event is None for line in r.user_message.splitlines()
    ]
    summaries = [line for line in lines if line.startswith("archive visits partition")]
    assert [s.split()[3] for s in summaries] == ["2022-12-01", "2023-01-01"]
    for month, summary in zip(["2022-12-01", "2023-01-01"], summaries, strict=True):
        # The month's own lines (extraction, verification, commit) come before its summary.
        before = lines[: lines.index(summary)]
        assert any(line.startswith("extracting ") and month[:7] in line for line in before), month
        assert any(line.startswith("verified ") for line in before), month
    assert not any(r.dagster_event is None for r in records[step_end:]), (
        "every line is in before the step ends"
    )
