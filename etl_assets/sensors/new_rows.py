"""`replica_new_rows`: start replica loads when the source has rows newer than the last tick saw.

Each tick asks each replicated table one question, `SELECT MAX(time_column)` (an index lookup), and
requests a run for every replica partition between the previous newest value (minus the table's
lag) and the new one. Run keys are deterministic (`table:partition:newest`), so a repeated tick never
starts a duplicate run, and the cursor records the newest value per table.
"""

import json
from datetime import datetime

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_assets.assets.naming import replica_key, replica_partitions
from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.lib.windows import utc
from etl_assets.resources.source import SourceDatabase

SENSOR_NAME = "replica_new_rows"
MAX_PARTITIONS_PER_TICK = 48


def changed_partition_keys(table: TableConfig, partitions: dg.TimeWindowPartitionsDefinition, *,
                           since: datetime | None, newest: datetime) -> list[str]:  # fmt: skip
    """Partition keys whose window holds rows newer than `since` (minus lag), up to `newest`."""
    assert table.replica is not None
    start = newest if since is None else min(since - table.replica.lag_period.as_timedelta(), newest)
    valid = set(partitions.get_partition_keys())
    keys: list[str] = []
    # Walk the partition windows from the one holding `start` to the one holding `newest`.
    window = partitions.time_window_for_partition_key(
        partitions.get_partition_key_for_timestamp(start.timestamp())
    )
    while window.start <= newest:
        key = partitions.get_partition_key_for_timestamp(window.start.timestamp())
        if key in valid:
            keys.append(key)
        window = partitions.time_window_for_partition_key(
            partitions.get_partition_key_for_timestamp(window.end.timestamp())
        )
    return keys


def replica_job_name(table: TableConfig) -> str:
    """The job the sensor starts for one table (tables may have different partitions)."""
    return f"replica_{table.asset_name}"


def build_replica_jobs(*, config: ProjectConfig) -> list[UnresolvedAssetJobDefinition]:
    """One job per replicated table: the sensor's targets, also handy in the UI's Launchpad."""
    return [
        dg.define_asset_job(
            replica_job_name(table),
            selection=dg.AssetSelection.assets(replica_key(table)),
            description=f"Load new rows of {table.name} into the replica.",
            tags={"etl_assets/table": table.asset_name},
        )
        for table in config.tables
        if table.replica is not None
    ]


def _requests(table: TableConfig, keys: list[str], newest: datetime) -> list[dg.RunRequest]:
    tags = {"etl_assets/table": table.asset_name, "etl_assets/trigger": SENSOR_NAME}
    if len(keys) > MAX_PARTITIONS_PER_TICK:
        # After a long pause: one single-run backfill over the range, not hundreds of runs.
        range_tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        return [
            dg.RunRequest(
                run_key=f"{table.asset_name}:{keys[0]}...{keys[-1]}:{newest.isoformat()}",
                job_name=replica_job_name(table),
                tags=tags | range_tags,
            )
        ]
    return [
        dg.RunRequest(
            run_key=f"{table.asset_name}:{key}:{newest.isoformat()}",
            job_name=replica_job_name(table),
            partition_key=key,
            tags=tags,
        )
        for key in keys
    ]


def build_new_rows_sensor(
    *, config: ProjectConfig, jobs: list[UnresolvedAssetJobDefinition]
) -> dg.SensorDefinition | None:
    """One sensor for every replicated table (None when no table has a replica)."""
    tables = [t for t in config.tables if t.replica is not None]
    if not tables:
        return None
    partitions = {t.asset_name: replica_partitions(config, t) for t in tables}

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=jobs,
        description=(
            "Polls MAX(time column) of every replicated table in one indexed query and loads the partitions "
            "that gained rows."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, source: SourceDatabase
    ) -> dg.SensorResult | dg.SkipReason:
        cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        # One statement per tick for every table, on a connection kept by the daemon process.
        client = source.open_shared()
        newest_values = client.max_time_values([(t.name, t.time_column) for t in tables])
        requests: list[dg.RunRequest] = []
        for table, newest_raw in zip(tables, newest_values, strict=True):
            if newest_raw is None:
                continue
            newest = utc(newest_raw)
            seen = cursor.get(table.asset_name)
            if seen == newest.isoformat():
                continue
            since = datetime.fromisoformat(seen) if seen else None
            keys = changed_partition_keys(table, partitions[table.asset_name], since=since, newest=newest)
            requests.extend(_requests(table, keys, newest))
            cursor[table.asset_name] = newest.isoformat()
        if not requests:
            context.update_cursor(json.dumps(cursor, sort_keys=True))
            return dg.SkipReason("no new rows since the last tick")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return _sensor
