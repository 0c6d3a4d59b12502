"""Jobs: one per partitioning, shared by every table partitioned the same way.

Dagster resolves and snapshots every job when a code location loads, so a job per table made a
200-table config take ~10 s to load (`make bench`, graph_200_tables). Tables whose archive (or
replica) assets have the same partitions definition share one job instead, and schedules and the
sensor pick the table with the run request's `asset_selection`: a run still materializes one table's
asset, and carries its `etl_assets/table` tag, which the per-table run limit in `dagster.yaml` and the
UI's run filters key on. A run launched by hand from a shared job has no such tag; two runs of one
table still never interleave, because each takes the table's lock in the source database. Every run
of these jobs, hand-launched ones included, carries `etl_assets/source` (the jobs' run tags), which
the per-source run limit keys on.

Names say the partitioning (`naming.archive_groups`, `replica_groups`): `archive_since_2021_01_keep_12m`
holds the tables archived monthly from January 2021 with a 12-month retention;
`replica_daily_since_2024_01_01` the tables replicated by day from that date. Each group's assets are
also one step of the same name (`assets/archive.py`, `assets/replica.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from etl_assets.assets.naming import TableGroup, archive_key, replica_key
from etl_assets.config import TableConfig

SOURCE_TAG = "etl_assets/source"


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


def build_table_jobs(*, archive: list[TableGroup], replica: list[TableGroup], source_name: str) -> TableJobs:
    """One asset job per group of tables partitioned alike (`naming.archive_groups`, `replica_groups`).

    Every run of these jobs, scheduled, sensor-started or launched by hand, carries the tag
    `etl_assets/source: <source_name>`, which the per-source run limit in `dagster.yaml` keys on.
    """
    return TableJobs(
        archive=_shared_jobs(
            archive,
            source_name=source_name,
            key_of=archive_key,
            describe=lambda group: (
                f"Archive months of {group.listed()} ({group.tables[0].archive.retention if group.tables[0].archive else ''} "
                "retention). Schedules run one table per run; launching the job by hand archives every "
                "selected table of the chosen months."
            ),
        ),
        replica=_shared_jobs(
            replica,
            source_name=source_name,
            key_of=replica_key,
            describe=lambda group: (
                f"Load new rows of {group.listed()} into the replica; the sensor runs one table per run."
            ),
        ),
    )


def _shared_jobs(
    groups: list[TableGroup],
    *,
    source_name: str,
    key_of: Callable[[TableConfig], dg.AssetKey],
    describe: Callable[[TableGroup], str],
) -> dict[str, JobGroup]:
    """Table name -> its group's job (named as the group's step, which runs the selected tables)."""
    by_table: dict[str, JobGroup] = {}
    for group in groups:
        job = dg.define_asset_job(
            group.job,
            selection=dg.AssetSelection.assets(*(key_of(t) for t in group.tables)),
            description=describe(group),
            tags={SOURCE_TAG: source_name},
        )
        for table in group.tables:
            by_table[table.name] = JobGroup(job, group.partitions)
    return by_table


def table_run_tags(table: TableConfig) -> dict[str, str]:
    """Tags every scheduled or sensor-started run of one table carries (per-table run limit, filters)."""
    return {"etl_assets/table": table.asset_name}
