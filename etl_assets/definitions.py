"""The code location: `defs` assembled from the configuration file. No connections are opened here.

`build_definitions(config)` is what tests call with their own configs; `defs` is built from the file
that `ETL_ASSETS_CONFIG`, `./etl_assets.yaml` or the bundled demo config names. Loading imports no
data library (pyarrow, numpy, PyMySQL): the webserver, the daemon and every run's process load this
module, and only the runs that move rows need them (~0.2 s of each load; test_definitions.py).
"""

from __future__ import annotations

import dagster as dg

from etl_assets.assets.archive import build_archive_assets
from etl_assets.assets.naming import archive_groups, replica_groups
from etl_assets.assets.replica import build_replica_assets
from etl_assets.assets.source import build_source_assets, build_table_sizes_asset
from etl_assets.checks.replica import build_replica_checks
from etl_assets.config import ProjectConfig, load_config
from etl_assets.jobs import build_table_jobs
from etl_assets.resources.alerts import AlertPublisher
from etl_assets.resources.source import SourceDatabase
from etl_assets.resources.store import ArchiveStore
from etl_assets.resources.warehouse import WarehouseResource
from etl_assets.schedules import (
    build_archive_schedules,
    build_checks_job_and_schedule,
    build_replica_fallback_schedules,
)
from etl_assets.sensors.alerts import build_alert_sensors
from etl_assets.sensors.new_rows import build_new_rows_sensor


def build_resources(config: ProjectConfig) -> dict[str, dg.ConfigurableResource]:
    """Resources configured from the file; `${VAR}` templates stay unresolved until a run opens them."""
    archive = config.archive
    warehouse = config.warehouse
    return {
        "source": SourceDatabase(
            url=config.source.url,
            replicas=list(config.source.replicas),
            config_file=config.path,
            reader=config.source.reader,
        ),
        "archive_store": ArchiveStore(
            url=archive.url if archive else "",
            kms_key_id=archive.kms_key_id if archive else "",
            object_lock_mode=archive.object_lock.mode if archive and archive.object_lock else None,
            object_lock_days=archive.object_lock.days if archive and archive.object_lock else None,
            region=archive.region if archive else "${AWS_DEFAULT_REGION:-us-east-1}",
            config_file=config.path,
        ),
        "warehouse": WarehouseResource(
            url=warehouse.url if warehouse else "",
            schema_name=warehouse.schema_name if warehouse else "public",
            staging_url=warehouse.staging_url if warehouse else "",
            iam_role=warehouse.iam_role if warehouse else "",
            region=warehouse.region if warehouse else "${AWS_DEFAULT_REGION:-us-east-1}",
            config_file=config.path,
        ),
        "alerts": AlertPublisher(
            sns_topic_arn=config.alerts.sns_topic_arn,
            ui_url=config.alerts.ui_url,
            region=config.alerts.region,
            config_file=config.path,
        ),
    }


def build_definitions(config: ProjectConfig) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor for `config`."""
    # The groups decide both the steps and the jobs; their partitions read the schema contracts.
    archived, replicated = archive_groups(config), replica_groups(config)
    assets: list[dg.AssetsDefinition] = [
        build_table_sizes_asset(config=config),
        build_source_assets(config=config),
        *build_archive_assets(config=config, groups=archived),
        *build_replica_assets(config=config, groups=replicated),
    ]
    checks: list[dg.AssetChecksDefinition] = []
    replica_checks = build_replica_checks(config=config)
    if replica_checks is not None:
        checks.append(replica_checks)
    table_jobs = build_table_jobs(archive=archived, replica=replicated, source_name=config.source.group_name)
    checks_job, checks_schedule = build_checks_job_and_schedule(config=config)
    sensors = [s for s in (build_new_rows_sensor(config=config, jobs=table_jobs),) if s is not None]
    sensors += build_alert_sensors(source_name=config.source.group_name)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[*table_jobs.jobs(), checks_job],
        schedules=[
            *build_archive_schedules(config=config, jobs=table_jobs),
            checks_schedule,
            *build_replica_fallback_schedules(config=config, jobs=table_jobs),
        ],
        sensors=sensors,
        resources=build_resources(config),
    )


defs = build_definitions(load_config())
