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

from collections.abc import Callable
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


@dataclass(frozen=True)
class JobGroup:
    """A shared job and the partitions of every asset it runs (each run selects one table's)."""

    job: UnresolvedAssetJobDefinition
    partitions: dg.TimeWindowPartitionsDefinition


@dataclass
class TableJobs:
    """Which job runs each table's archive and replica asset."""

    archive: dict[str, JobGroup] = field(default_factory=dict)
    replica: dict[str, JobGroup] = field(default_factory=dict)

    def jobs(self, *, replica_only: bool = False) -> list[UnresolvedAssetJobDefinition]:
        """Every distinct job, archive jobs first, each once (only the replica jobs if asked)."""
        groups = (
            [*self.replica.values()] if replica_only else [*self.archive.values(), *self.replica.values()]
        )
        return list({group.job.name: group.job for group in groups}.values())


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
    archived = [t for t in config.tables if t.archive is not None]
    replicated = [t for t in config.tables if t.replica is not None]
    return TableJobs(
        archive=_shared_jobs(
            archived,
            partitions_of=lambda t: archive_partitions(config, t),
            name_of=_archive_job_name,
            key_of=archive_key,
            describe=lambda tables: (
                f"Archive months of {_listed(tables)} ({tables[0].archive.retention if tables[0].archive else ''} "
                "retention). Schedules run one table per run; launching the job by hand archives every "
                "selected table of the chosen months."
            ),
        ),
        replica=_shared_jobs(
            replicated,
            partitions_of=lambda t: replica_partitions(config, t),
            name_of=_replica_job_name,
            key_of=replica_key,
            describe=lambda tables: (
                f"Load new rows of {_listed(tables)} into the replica; the sensor runs one table per run."
            ),
        ),
    )


def _shared_jobs(
    tables: list[TableConfig],
    *,
    partitions_of: Callable[[TableConfig], dg.TimeWindowPartitionsDefinition],
    name_of: Callable[[TableConfig, dg.TimeWindowPartitionsDefinition], str],
    key_of: Callable[[TableConfig], dg.AssetKey],
    describe: Callable[[list[TableConfig]], str],
) -> dict[str, JobGroup]:
    """Table name -> its group's job, one asset job per job name (the name says the partitioning)."""
    grouped: dict[str, tuple[dg.TimeWindowPartitionsDefinition, list[TableConfig]]] = {}
    for table in tables:
        partitions = partitions_of(table)
        grouped.setdefault(name_of(table, partitions), (partitions, []))[1].append(table)
    by_table: dict[str, JobGroup] = {}
    for name, (partitions, members) in grouped.items():
        job = dg.define_asset_job(
            name,
            selection=dg.AssetSelection.assets(*(key_of(t) for t in members)),
            description=describe(members),
        )
        for table in members:
            by_table[table.name] = JobGroup(job, partitions)
    return by_table


def table_run_tags(table: TableConfig) -> dict[str, str]:
    """Tags every scheduled or sensor-started run of one table carries (per-table run limit, filters)."""
    return {"etl_assets/table": table.asset_name}


def _listed(tables: list[TableConfig], most: int = 5) -> str:
    names = [f"`{t.name}`" for t in tables[:most]]
    more = len(tables) - most
    return ", ".join(names) + (f" and {more} more table(s)" if more > 0 else "")
