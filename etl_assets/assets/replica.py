"""`replica/<t>`: the table kept fresh in the warehouse, one daily (or hourly) partition at a time.

A partition loads the rows whose time column falls in its window (plus the `lag` lookback) and
merges them by primary key in one transaction. The first materialization of all partitions is the
full copy: with the single-run backfill policy a range of partitions is one streaming pass. Tables
replicated alike (same partitioning and start) share one step, which loads the tables a run selects
one after another (`assets/per_table.py`).
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from etl_assets.assets.naming import (
    TableGroup,
    derived_spec,
    replica_key,
    source_kind,
    source_pool,
    warehouse_kind,
)
from etl_assets.assets.per_table import each_table
from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.engine.gate import DriftBlockedError, ensure_no_drift
from etl_assets.lib.windows import Window, utc
from etl_assets.resources.source import SourceDatabase
from etl_assets.resources.warehouse import WarehouseError, WarehouseResource

if TYPE_CHECKING:
    from etl_assets.engine.replica import ReplicaReport


def replica_metadata(report: "ReplicaReport", replica_rows: int, columns: dict[str, str]) -> dict[str, Any]:
    """Materialization metadata: numbers the UI plots, plus the replica's column schema."""
    load = report.load
    metadata: dict[str, Any] = {
        "dagster/row_count": replica_rows,
        "rows_loaded": load.rows_staged,
        "rows_inserted": load.rows_inserted,
        "rows_replaced": load.rows_replaced,
        "bytes_staged": load.bytes_staged,
        "seconds": round(report.seconds, 3),
        "rows_per_second": round(report.rows_per_second, 1),
        "oversize_values": report.oversize_values,
        "zero_dates_nulled": report.zero_dates_nulled,
        "insert_mode": report.insert_mode,
        "watermark_before": dg.MetadataValue.text(
            report.watermark_before.isoformat() if report.watermark_before else "none"
        ),
        "watermark_after": dg.MetadataValue.text(load.watermark.isoformat() if load.watermark else "none"),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=n, type=t) for n, t in columns.items()]
        ),
    }
    if report.read_window is not None:
        metadata["read_window"] = report.read_window.label()
    if load.watermark is not None:
        metadata["watermark_after_timestamp"] = dg.MetadataValue.timestamp(load.watermark)
    return metadata


def build_replica_assets(*, config: ProjectConfig, groups: list[TableGroup]) -> list[dg.AssetsDefinition]:
    """The `replica/<table>` assets: one step per group of tables replicated alike (`naming.replica_groups`).

    Each asset keeps its own description, kinds, owners and tags; a run loads the tables it selects
    (the sensor's run: one) one after another in the step.
    """
    return [_replica_group(config=config, group=group) for group in groups]


def _replica_spec(config: ProjectConfig, table: TableConfig) -> dg.AssetSpec:
    assert table.replica is not None
    assert config.warehouse is not None
    settings = table.replica
    return derived_spec(
        config,
        table,
        key=replica_key(table),
        kinds={source_kind(config), warehouse_kind(config)},
        description=(
            f"`{table.name}` replicated into `{config.warehouse.schema_name}.{table.asset_name}` "
            f"({settings.insert_mode}, by `{table.time_column}`, {settings.partition} partitions, lookback "
            f"{settings.lag}). Rows purged from the source by the archive stay in the replica."
        ),
        metadata={"insert_mode": settings.insert_mode, "lag": settings.lag, "time_column": table.time_column},
    )


def _replica_group(*, config: ProjectConfig, group: TableGroup) -> dg.AssetsDefinition:
    tables = {replica_key(table): table for table in group.tables}

    @dg.multi_asset(
        name=group.step,
        specs=[_replica_spec(config, table) for table in group.tables],
        partitions_def=group.partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        pool=source_pool(config),
        description=f"Load the selected partitions of {group.listed()} into the replica, one table after another.",
    )
    def _replica(
        context: dg.AssetExecutionContext, source: SourceDatabase, warehouse: WarehouseResource
    ) -> Iterator[dg.MaterializeResult]:
        yield from each_table(
            tables,
            context.selected_asset_keys,
            lambda table: _replica_table(context, config, table, source, warehouse),
            doing="replicating",
        )

    return _replica


def _replica_table(
    context: dg.AssetExecutionContext,
    config: ProjectConfig,
    table: TableConfig,
    source: SourceDatabase,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Load the run's window of one table into the replica; its materialization."""
    # Imported by the run, not when the code location loads: the engine brings pyarrow.
    from etl_assets.engine.replica import ReplicaError, ReplicaJob
    from etl_assets.resources.memory import use_trimmable_allocators

    time_window = context.partition_time_window
    window = Window(utc(time_window.start), utc(time_window.end))
    if allocator_warning := use_trimmable_allocators():
        context.log.warning(allocator_warning)
    client = source.open()
    wh = warehouse.open()
    try:
        source_table = client.reflect(table.name, primary_key=table.primary_key)
        ensure_no_drift(config=config, table=table, live=source_table, what="replica")
        report = ReplicaJob(
            source=client,
            warehouse=wh,
            table=table,
            source_table=source_table,
            window=window,
            run_id=context.run.run_id,
            log=context.log.info,
            lock_timeout_seconds=max(config.source.lock_timeout_seconds, 60),
        ).run()
        if report.message:
            context.log.info(report.message)
        replica_rows = wh.count_rows(table.asset_name)
        columns = wh.columns(table.asset_name)
    except (DriftBlockedError, ReplicaError, WarehouseError) as exc:
        raise dg.Failure(description=str(exc)) from None
    finally:
        client.dispose()
        wh.close()
    return dg.MaterializeResult(
        asset_key=replica_key(table), metadata=replica_metadata(report, replica_rows, columns)
    )
