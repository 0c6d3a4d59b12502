"""Schedules: monthly archive per table, and the 15-minute drift and replica checks.

The archive schedules start STOPPED: a team turns one on after reviewing `etl-assets plan` for the
table, because from then on rows leave the production database every month without a person
watching. The checks schedule runs by default; it only reads information_schema and counts.
"""

from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_assets.assets.naming import archive_key, replica_key, source_key
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
