"""`replica_new_rows`: start replica loads when the source has rows newer than the last tick saw.

Each tick asks each replicated table one question, `SELECT MAX(time_column)` (an index lookup), and
requests a run for every replica partition between the previous newest value (minus the table's
lag) and the new one. Run keys are deterministic (`table:partition:newest`), so a repeated tick never
starts a duplicate run, and the cursor records the newest value per table.
"""

import json
from datetime import datetime

import dagster as dg

from etl_assets.assets.naming import replica_key
from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.jobs import TableJobs, table_run_tags
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


def _requests(table: TableConfig, job_name: str, keys: list[str], newest: datetime) -> list[dg.RunRequest]:
    # The job is shared by the tables partitioned alike; the selection makes the run this table's.
    selection = [replica_key(table)]
    tags = table_run_tags(table) | {"etl_assets/trigger": SENSOR_NAME}
    if len(keys) > MAX_PARTITIONS_PER_TICK:
        # After a long pause: one single-run backfill over the range, not hundreds of runs.
        range_tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        return [
            dg.RunRequest(
                run_key=f"{table.asset_name}:{keys[0]}...{keys[-1]}:{newest.isoformat()}",
                job_name=job_name,
                asset_selection=selection,
                tags=tags | range_tags,
            )
        ]
    return [
        dg.RunRequest(
            run_key=f"{table.asset_name}:{key}:{newest.isoformat()}",
            job_name=job_name,
            asset_selection=selection,
            partition_key=key,
            tags=tags,
        )
        for key in keys
    ]


def build_new_rows_sensor(*, config: ProjectConfig, jobs: TableJobs) -> dg.SensorDefinition | None:
    """One sensor for every replicated table (None when no table has a replica)."""
    tables = [t for t in config.tables if t.replica is not None]
    if not tables:
        return None
    groups = {t.asset_name: jobs.replica[t.name] for t in tables}

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=jobs.jobs(replica_only=True),
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
            group = groups[table.asset_name]
            keys = changed_partition_keys(table, group.partitions, since=since, newest=newest)
            requests.extend(_requests(table, group.job.name, keys, newest))
            cursor[table.asset_name] = newest.isoformat()
        if not requests:
            context.update_cursor(json.dumps(cursor, sort_keys=True))
            return dg.SkipReason("no new rows since the last tick")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return _sensor
