"""Schedules: monthly archive per table, and the 15-minute drift and replica checks.

The archive schedules start STOPPED: a team turns one on after reviewing `etl-assets plan` for the
table, because from then on rows leave the production database every month without a person
watching. The checks schedule runs by default; it only reads information_schema and counts.
"""

from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_assets.assets.naming import archive_key, replica_key, replica_partitions, source_key
from etl_assets.config import ProjectConfig

CHECKS_JOB = "source_and_replica_checks"
CHECKS_SCHEDULE = "checks_every_15_minutes"


def build_archive_jobs_and_schedules(
    *, config: ProjectConfig
) -> tuple[list[UnresolvedAssetJobDefinition], list[Any]]:
    """One partitioned job and one monthly schedule per archived table."""
    jobs: list[UnresolvedAssetJobDefinition] = []
    schedules: list[Any] = []  # build_schedule_from_partitioned_job returns an unresolved schedule
    for table in config.tables:
        if table.archive is None:
            continue
        job = dg.define_asset_job(
            f"archive_{table.asset_name}",
            selection=dg.AssetSelection.assets(archive_key(table)),
            description=f"Archive newly eligible months of {table.name} (retention {table.archive.retention}).",
            tags={"etl_assets/table": table.asset_name},
        )
        jobs.append(job)
        schedules.append(
            dg.build_schedule_from_partitioned_job(
                job,
                day_of_month=2,
                hour_of_day=3,
                default_status=dg.DefaultScheduleStatus.STOPPED,
                description=f"On the 2nd of each month, archive the month {table.name} became eligible for. "
                "Stopped by default: review `etl-assets plan` first, then turn it on.",
            )
        )
    return jobs, schedules


def build_checks_job_and_schedule(
    *, config: ProjectConfig
) -> tuple[UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """Observe every source (schema_drift runs with each observation) and run the replica checks."""
    selection = dg.AssetSelection.assets(*(source_key(t) for t in config.tables))
    replicated = [replica_key(t) for t in config.tables if t.replica is not None]
    if replicated:
        selection = selection | dg.AssetSelection.checks_for_assets(*replicated)
    job = dg.define_asset_job(
        CHECKS_JOB,
        selection=selection,
        description="Cheap information_schema and count queries: schema drift, replica schema, counts, freshness.",
    )
    schedule = dg.ScheduleDefinition(
        name=CHECKS_SCHEDULE,
        job=job,
        cron_schedule="*/15 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 15 minutes: schema drift on each source table and the replica checks.",
    )
    return job, schedule


def build_replica_fallback_schedules(
    *, config: ProjectConfig, jobs: list[UnresolvedAssetJobDefinition]
) -> list[dg.ScheduleDefinition]:
    """Hourly loads of each replica's current partition: the fallback when sensors cannot run.

    Stopped by default; `replica_new_rows` already starts loads when rows arrive. The same job runs
    from the sensor, this schedule, the UI or the CLI: scheduled and on-demand are one pipeline.
    """
    by_name = {job.name: job for job in jobs}
    schedules: list[dg.ScheduleDefinition] = []
    for table in config.tables:
        if table.replica is None:
            continue
        partitions = replica_partitions(config, table)
        job = by_name[f"replica_{table.asset_name}"]

        def _current(context: dg.ScheduleEvaluationContext, partitions: dg.TimeWindowPartitionsDefinition = partitions,
                     name: str = table.asset_name) -> dg.RunRequest | dg.SkipReason:  # fmt: skip
            moment = context.scheduled_execution_time
            if moment.timestamp() < partitions.start.timestamp():
                return dg.SkipReason("no partition exists yet")
            key = partitions.get_partition_key_for_timestamp(moment.timestamp())
            return dg.RunRequest(run_key=f"{name}:{key}:{moment:%Y%m%d%H%M}", partition_key=key,
                                 tags={"etl_assets/trigger": "replica_fallback_schedule"})  # fmt: skip

        schedules.append(
            dg.ScheduleDefinition(
                name=f"replica_{table.asset_name}_hourly",
                cron_schedule="5 * * * *",
                job=job,
                execution_fn=_current,
                default_status=dg.DefaultScheduleStatus.STOPPED,
                description=f"Hourly load of the current {table.replica.partition} partition of {table.name} "
                "(fallback for the replica_new_rows sensor).",
            )
        )
    return schedules
