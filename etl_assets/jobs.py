"""Jobs: one per partitioning, shared by every table partitioned the same way.

Dagster resolves and snapshots every job when a code location loads, so a job per table made a
200-table config take ~10 s to load (`make bench`, graph_200_tables). Tables whose archive (or
replica) assets have the same partitions definition share one job instead, and schedules and the
sensor pick the table with the run request's `asset_selection`: a run still materializes one table's
asset, and carries its `etl_assets/table` tag, which the per-table run limit in `dagster.yaml` and the
UI's run filters key on. A run launched by hand from a shared job has no such tag; two runs of one
table still never interleave, because each takes the table's lock in the source database.

Names say the partitioning: `archive_since_2021_01_keep_12m` holds the tables archived monthly from
January 2021 with a 12-month retention; `replica_daily_since_2024_01_01` the tables replicated by day
from that date.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_assets.assets.naming import (
    archive_key,
    archive_partitions,
    replica_key,
    replica_partitions,
    retention_months,
)
from etl_assets.config import ProjectConfig, TableConfig


@dataclass
class JobGroup:
    """One job and the tables whose asset it runs (each run selects one of them)."""

    job: UnresolvedAssetJobDefinition
    partitions: dg.TimeWindowPartitionsDefinition
    tables: list[TableConfig] = field(default_factory=list)


@dataclass
class TableJobs:
    """Which job runs each table's archive and replica asset."""

    archive: dict[str, JobGroup] = field(default_factory=dict)
    replica: dict[str, JobGroup] = field(default_factory=dict)

    def jobs(self) -> list[UnresolvedAssetJobDefinition]:
        """Every distinct job, archive jobs first, each once."""
        seen: dict[str, UnresolvedAssetJobDefinition] = {}
        for group in [*self.archive.values(), *self.replica.values()]:
            seen.setdefault(group.job.name, group.job)
        return list(seen.values())


def _archive_job_name(table: TableConfig, partitions: dg.TimeWindowPartitionsDefinition) -> str:
    assert table.archive is not None
    return f"archive_since_{partitions.start:%Y_%m}_keep_{retention_months(table.archive.retention_period)}m"


def _replica_job_name(table: TableConfig, partitions: dg.TimeWindowPartitionsDefinition) -> str:
    assert table.replica is not None
    unit = table.replica.partition
    shape = {"hourly": "%Y_%m_%d", "daily": "%Y_%m_%d", "monthly": "%Y_%m"}[unit]
    return f"replica_{unit}_since_{partitions.start.strftime(shape)}"


def build_table_jobs(*, config: ProjectConfig) -> TableJobs:
    """Group the tables by partitioning and define one asset job per group."""
    archive: dict[str, tuple[dg.TimeWindowPartitionsDefinition, list[TableConfig]]] = {}
    replica: dict[str, tuple[dg.TimeWindowPartitionsDefinition, list[TableConfig]]] = {}
    for table in config.tables:
        if table.archive is not None:
            partitions = archive_partitions(config, table)
            archive.setdefault(_archive_job_name(table, partitions), (partitions, []))[1].append(table)
        if table.replica is not None:
            partitions = replica_partitions(config, table)
            replica.setdefault(_replica_job_name(table, partitions), (partitions, []))[1].append(table)
    result = TableJobs()
    for name, (partitions, tables) in archive.items():
        job = dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(archive_key(t) for t in tables)),
            description=(
                f"Archive months of {_listed(tables)} ({tables[0].archive.retention if tables[0].archive else ''} "
                "retention). Schedules run one table per run; launching the job by hand archives every "
                "selected table of the chosen months."
            ),
        )
        for table in tables:
            result.archive[table.name] = JobGroup(job, partitions, tables)
    for name, (partitions, tables) in replica.items():
        job = dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(replica_key(t) for t in tables)),
            description=f"Load new rows of {_listed(tables)} into the replica; the sensor runs one table per run.",
        )
        for table in tables:
            result.replica[table.name] = JobGroup(job, partitions, tables)
    return result


def table_run_tags(table: TableConfig) -> dict[str, str]:
    """Tags every scheduled or sensor-started run of one table carries (per-table run limit, filters)."""
    return {"etl_assets/table": table.asset_name}


def _listed(tables: list[TableConfig], most: int = 5) -> str:
    names = [f"`{t.name}`" for t in tables[:most]]
    more = len(tables) - most
    return ", ".join(names) + (f" and {more} more table(s)" if more > 0 else "")
