"""Schedules: monthly archive per table, and the 15-minute drift and replica checks.

The archive schedules start STOPPED: a team turns one on after reviewing `etl-assets plan` for the
table, because from then on rows leave the production database every month without a person
watching. The checks schedule runs by default; it only reads information_schema and counts.
"""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_assets.assets.naming import archive_key, replica_key, source_key
from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.jobs import TableJobs, table_run_tags

CHECKS_JOB = "source_and_replica_checks"
CHECKS_SCHEDULE = "checks_every_15_minutes"


def build_archive_schedules(*, config: ProjectConfig, jobs: TableJobs) -> list[dg.ScheduleDefinition]:
    """One monthly schedule per archived table, each running its table's asset in the shared job."""
    schedules: list[dg.ScheduleDefinition] = []
    for table in config.tables:
        if table.archive is None:
            continue
        group = jobs.archive[table.name]

        def _newest_month(context: dg.ScheduleEvaluationContext, partitions: dg.TimeWindowPartitionsDefinition = group.partitions,
                          table: TableConfig = table) -> dg.RunRequest | dg.SkipReason:  # fmt: skip
            with dg.partition_loading_context(effective_dt=context.scheduled_execution_time):
                key = partitions.get_last_partition_key()
            if key is None:
                return dg.SkipReason(f"no month of {table.name} is past its retention yet")
            return dg.RunRequest(run_key=f"{table.asset_name}:{key}", partition_key=key,
                                 asset_selection=[archive_key(table)],
                                 tags=table_run_tags(table) | {"etl_assets/trigger": "archive_schedule"})  # fmt: skip

        schedules.append(
            dg.ScheduleDefinition(
                name=f"archive_{table.asset_name}_schedule",
                cron_schedule="0 3 2 * *",
                job=group.job,
                execution_fn=_newest_month,
                default_status=dg.DefaultScheduleStatus.STOPPED,
                description=f"On the 2nd of each month, archive the month {table.name} became eligible for. "
                "Stopped by default: review `etl-assets plan` first, then turn it on.",
            )
        )
    return schedules


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
    *, config: ProjectConfig, jobs: TableJobs
) -> list[dg.ScheduleDefinition]:
    """Hourly loads of each replica's current partition: the fallback when sensors cannot run.

    Stopped by default; `replica_new_rows` already starts loads when rows arrive. The same job runs
    from the sensor, this schedule, the UI or the CLI: scheduled and on-demand are one pipeline.
    """
    schedules: list[dg.ScheduleDefinition] = []
    for table in config.tables:
        if table.replica is None:
            continue
        group = jobs.replica[table.name]

        def _current(context: dg.ScheduleEvaluationContext, partitions: dg.TimeWindowPartitionsDefinition = group.partitions,
                     table: TableConfig = table) -> dg.RunRequest | dg.SkipReason:  # fmt: skip
            moment = context.scheduled_execution_time
            if moment.timestamp() < partitions.start.timestamp():
                return dg.SkipReason("no partition exists yet")
            key = partitions.get_partition_key_for_timestamp(moment.timestamp())
            return dg.RunRequest(run_key=f"{table.asset_name}:{key}:{moment:%Y%m%d%H%M}", partition_key=key,
                                 asset_selection=[replica_key(table)],
                                 tags=table_run_tags(table) | {"etl_assets/trigger": "replica_fallback_schedule"})  # fmt: skip

        schedules.append(
            dg.ScheduleDefinition(
                name=f"replica_{table.asset_name}_hourly",
                cron_schedule="5 * * * *",
                job=group.job,
                execution_fn=_current,
                default_status=dg.DefaultScheduleStatus.STOPPED,
                description=f"Hourly load of the current {table.replica.partition} partition of {table.name} "
                "(fallback for the replica_new_rows sensor).",
            )
        )
    return schedules
