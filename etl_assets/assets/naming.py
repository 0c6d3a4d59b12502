"""One place that owns asset keys, groups, kinds, tags and partitions for a table.

Assets of a table are `source/<t>`, `archive/<t>` and `replica/<t>`; every asset of one source
database shares that database's group. Partition definitions are computed from config only (and from
the committed schema contract's oldest-row month), never by querying the source at load time.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import dagster as dg

from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.lib.windows import months_held_back

DEFAULT_START = date(2000, 1, 1)
SCHEMA_DRIFT_CHECK = "schema_drift"
ARCHIVE_VERIFIED_CHECK = "archive_verified"
REPLICA_ROW_COUNT_CHECK = "replica_row_count"
REPLICA_SCHEMA_CHECK = "replica_schema"
REPLICA_FRESHNESS_CHECK = "replica_freshness"


def source_pool(config: ProjectConfig) -> str:
    """The Dagster concurrency pool of every step that reads the source: one per source database.

    The instance's `concurrency.pools.default_limit` then caps the steps reading one database at
    once across every run and code location (a backfill queues instead of flooding RDS), while
    another source's steps do not wait for them."""
    return f"etl_source_{config.source.group_name}"


def source_key(table: TableConfig) -> dg.AssetKey:
    """`source/<table>`."""
    return dg.AssetKey(["source", table.asset_name])


def archive_key(table: TableConfig) -> dg.AssetKey:
    """`archive/<table>`."""
    return dg.AssetKey(["archive", table.asset_name])


def replica_key(table: TableConfig) -> dg.AssetKey:
    """`replica/<table>`."""
    return dg.AssetKey(["replica", table.asset_name])


def table_tags(config: ProjectConfig, table: TableConfig) -> dict[str, str]:
    """Tags that let people filter the graph by table and database."""
    return {"etl_assets/table": table.asset_name, "etl_assets/source": config.source.group_name}


def derived_spec(
    config: ProjectConfig,
    table: TableConfig,
    *,
    key: dg.AssetKey,
    kinds: set[str],
    description: str,
    metadata: dict[str, object],
) -> dg.AssetSpec:
    """The spec of an asset made from `source/<table>` (its archive or replica): group, owners, tags."""
    return dg.AssetSpec(
        key=key,
        deps=[source_key(table)],
        group_name=config.source.group_name,
        kinds=kinds,
        owners=table.owners,
        tags=table_tags(config, table),
        description=description,
        metadata=metadata,
    )


def source_kind(config: ProjectConfig) -> str:
    """`mysql` or `sqlite`, from the source URL (templated URLs are assumed MySQL, the product)."""
    return "sqlite" if config.source.url.startswith("sqlite") else "mysql"


def warehouse_kind(config: ProjectConfig) -> str:
    """`redshift`, `postgres` or `duckdb`."""
    url = config.warehouse.url if config.warehouse else ""
    if url.startswith("duckdb"):
        return "duckdb"
    if url.startswith("postgresql"):
        return "postgres"
    return "redshift"


def store_kind(config: ProjectConfig) -> str:
    """`s3` or `file`."""
    return "s3" if config.archive is not None and config.archive.is_s3 else "file"


def contract_oldest(config: ProjectConfig, table: TableConfig) -> date | None:
    """The oldest row's date recorded in the committed schema contract, if any."""
    path = config.contract_path(table)
    try:
        oldest = json.loads(path.read_text(encoding="utf-8")).get("oldest_row")
    except (OSError, ValueError):
        return None
    try:
        return date.fromisoformat(str(oldest)[:10]) if oldest else None
    except ValueError:
        return None


def archive_partitions(config: ProjectConfig, table: TableConfig) -> dg.MonthlyPartitionsDefinition:
    """Monthly partitions from `archive.start` (or the contract's oldest row) to the last month retention allows.

    A negative end offset keeps months inside the retention period out of the partition list: as many
    months as the retention can reach back on any day (`months_held_back`), so the newest listed month
    (what the monthly schedule requests) is always eligible. The run itself re-checks eligibility
    against the clock.
    """
    assert table.archive is not None
    start = table.archive.start_date or contract_oldest(config, table) or DEFAULT_START
    offset = -months_held_back(table.archive.retention_period)
    return dg.MonthlyPartitionsDefinition(start_date=start.replace(day=1).isoformat(), end_offset=offset)


def replica_partitions(config: ProjectConfig, table: TableConfig) -> dg.TimeWindowPartitionsDefinition:
    """Daily (hourly, monthly) partitions up to and including the current, still-filling one."""
    assert table.replica is not None
    start = table.replica.start or contract_oldest(config, table) or DEFAULT_START
    if table.replica.partition == "hourly":
        return dg.HourlyPartitionsDefinition(start_date=f"{start:%Y-%m-%d}-00:00", end_offset=1)
    if table.replica.partition == "monthly":
        return dg.MonthlyPartitionsDefinition(start_date=start.replace(day=1).isoformat(), end_offset=1)
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1)


@dataclass(frozen=True)
class TableGroup:
    """Tables whose archive (or replica) assets share one partitions definition.

    Each group is one step (a multi-asset, `step`) and one asset job (`job`): Dagster builds and
    snapshots every node and job when a code location loads: with a node per table a 200-table
    config validated in ~4.0 s, with a node per group in ~3.2 s (`make bench`, graph_200_tables).
    """

    kind: str  # "archive" or "replica"
    partitioning: str  # "since_2021_01_keep_12m", "daily_since_2024_01_01"
    partitions: dg.TimeWindowPartitionsDefinition
    tables: tuple[TableConfig, ...]

    @property
    def job(self) -> str:
        """The asset job's name: `archive_since_2021_01_keep_12m`."""
        return f"{self.kind}_{self.partitioning}"

    @property
    def step(self) -> str:
        """The step's (op's) name, unique beside the job's: `archive__since_2021_01_keep_12m`."""
        return f"{self.kind}__{self.partitioning}"

    def listed(self, most: int = 5) -> str:
        """ "`a`, `b` and 3 more table(s)", for descriptions."""
        names = [f"`{t.name}`" for t in self.tables[:most]]
        more = len(self.tables) - most
        return ", ".join(names) + (f" and {more} more table(s)" if more > 0 else "")


def archive_groups(config: ProjectConfig) -> list[TableGroup]:
    """The archived tables grouped by partitioning: `archive_since_2021_01_keep_12m` holds the tables
    archived monthly from January 2021 with a 12-month retention."""

    def name(table: TableConfig, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        assert table.archive is not None
        return f"since_{partitions.start:%Y_%m}_keep_{months_held_back(table.archive.retention_period)}m"

    archived = [t for t in config.tables if t.archive is not None]
    return _grouped("archive", archived, partitions_of=lambda t: archive_partitions(config, t), name_of=name)


def replica_groups(config: ProjectConfig) -> list[TableGroup]:
    """The replicated tables grouped by partitioning: `replica_daily_since_2024_01_01` holds the tables
    replicated by day from that date."""

    def name(table: TableConfig, partitions: dg.TimeWindowPartitionsDefinition) -> str:
        assert table.replica is not None
        unit = table.replica.partition
        shape = {"hourly": "%Y_%m_%d", "daily": "%Y_%m_%d", "monthly": "%Y_%m"}[unit]
        return f"{unit}_since_{partitions.start.strftime(shape)}"

    replicated = [t for t in config.tables if t.replica is not None]
    return _grouped(
        "replica", replicated, partitions_of=lambda t: replica_partitions(config, t), name_of=name
    )


def _grouped(
    kind: str,
    tables: list[TableConfig],
    *,
    partitions_of: Callable[[TableConfig], dg.TimeWindowPartitionsDefinition],
    name_of: Callable[[TableConfig, dg.TimeWindowPartitionsDefinition], str],
) -> list[TableGroup]:
    groups: dict[str, tuple[dg.TimeWindowPartitionsDefinition, list[TableConfig]]] = {}
    for table in tables:
        partitions = partitions_of(table)
        groups.setdefault(name_of(table, partitions), (partitions, []))[1].append(table)
    return [
        TableGroup(kind, name, partitions, tuple(members)) for name, (partitions, members) in groups.items()
    ]
