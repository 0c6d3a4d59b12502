"""`replica/<t>`: the table kept fresh in the warehouse, one daily (or hourly) partition at a time.

A partition loads the rows whose time column falls in its window (plus the `lag` lookback) and
merges them by primary key in one transaction. The first materialization of all partitions is the
full copy: with the single-run backfill policy a range of partitions is one streaming pass.
"""

from typing import Any

import dagster as dg

from etl_assets.assets.naming import (
    SOURCE_POOL,
    replica_key,
    replica_partitions,
    source_key,
    source_kind,
    table_tags,
    warehouse_kind,
)
from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.engine.gate import DriftBlockedError, ensure_no_drift
from etl_assets.engine.replica import ReplicaError, ReplicaJob, ReplicaReport
from etl_assets.lib.windows import Window, utc
from etl_assets.resources.memory import use_trimmable_allocators
from etl_assets.resources.source import SourceDatabase
from etl_assets.resources.warehouse import WarehouseError, WarehouseResource


def replica_metadata(report: ReplicaReport, replica_rows: int, columns: dict[str, str]) -> dict[str, Any]:
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


def build_replica_asset(*, config: ProjectConfig, table: TableConfig) -> dg.AssetsDefinition:
    """The `replica/<table>` asset (daily or hourly partitions, single-run backfills)."""
    assert table.replica is not None
    assert config.warehouse is not None
    settings = table.replica
    description = (
        f"`{table.name}` replicated into `{config.warehouse.schema_name}.{table.asset_name}` "
        f"({settings.insert_mode}, by `{table.time_column}`, {settings.partition} partitions, lookback {settings.lag}). "
        "Rows purged from the source by the archive stay in the replica."
    )

    @dg.asset(
        key=replica_key(table),
        deps=[source_key(table)],
        partitions_def=replica_partitions(config, table),
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=config.source.group_name,
        kinds={source_kind(config), warehouse_kind(config)},
        owners=table.owners,
        tags=table_tags(config, table),
        description=description,
        pool=SOURCE_POOL,
        metadata={"insert_mode": settings.insert_mode, "lag": settings.lag, "time_column": table.time_column},
    )
    def _replica(
        context: dg.AssetExecutionContext, source: SourceDatabase, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
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
        return dg.MaterializeResult(metadata=replica_metadata(report, replica_rows, columns))

    return _replica
