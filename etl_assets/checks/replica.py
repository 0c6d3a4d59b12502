"""Checks on `replica/<t>`: row counts against the source, columns against the contract, freshness.

- `replica_row_count`: rows with the time column in the last loaded week, source vs replica. Rows
  the archive purged are older than the table's retention, so a recent window is unaffected by
  them; rows newer than the replica's watermark minus the lag are left out (not loaded yet).
- `replica_schema`: the replica's actual columns and types vs what the contract's DDL would create.
- `replica_freshness`: the newest loaded watermark against `replica.freshness` (WARN when older,
  ERROR when more than twice as old). It replaces Data Pipeline's `onLateAction`.
"""

from datetime import timedelta

import dagster as dg

from etl_assets.assets.naming import (
    REPLICA_FRESHNESS_CHECK,
    REPLICA_ROW_COUNT_CHECK,
    REPLICA_SCHEMA_CHECK,
    replica_key,
)
from etl_assets.config import ProjectConfig, TableConfig, utcnow
from etl_assets.engine.gate import warehouse_dialect
from etl_assets.lib.contract import read_contract
from etl_assets.lib.schema_diff import diff_replica
from etl_assets.lib.typemap import warehouse_types
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceDatabase
from etl_assets.resources.warehouse import WarehouseResource

ROW_COUNT_WINDOW = timedelta(days=7)


def build_replica_checks(*, config: ProjectConfig, table: TableConfig) -> list[dg.AssetChecksDefinition]:
    """The three replica checks of `table`."""
    assert table.replica is not None
    settings = table.replica
    key = replica_key(table)
    target = table.asset_name

    @dg.asset_check(
        asset=key,
        name=REPLICA_ROW_COUNT_CHECK,
        description="Rows in the last loaded week: source and replica must hold the same number.",
        blocking=False,
    )
    def _row_count(source: SourceDatabase, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        wh = warehouse.open()
        client = source.open()
        try:
            if not wh.table_exists(target):
                return dg.AssetCheckResult(
                    passed=False,
                    severity=dg.AssetCheckSeverity.WARN,
                    description="The replica table does not exist yet; materialize it first.",
                )
            watermark, _ = wh.last_load(target)
            if watermark is None:
                return dg.AssetCheckResult(
                    passed=False,
                    severity=dg.AssetCheckSeverity.WARN,
                    description="No load has been recorded yet.",
                )
            end = watermark - settings.lag_period.as_timedelta()
            window = Window(end - ROW_COUNT_WINDOW, end)
            reflected = client.reflect(table.name, primary_key=table.primary_key)
            in_source = client.count_window(reflected, table.time_column, window)
            in_replica = wh.count_rows(target, table.time_column, window.start, window.end)
        finally:
            client.dispose()
            wh.close()
        passed = in_replica >= in_source if settings.insert_mode == "append" else in_replica == in_source
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "source_rows": in_source,
                "replica_rows": in_replica,
                "difference": in_replica - in_source,
                "window": window.label(),
            },
            description=None
            if passed
            else f"source has {in_source:,} rows in {window.label()}, replica {in_replica:,}",
        )

    @dg.asset_check(
        asset=key,
        name=REPLICA_SCHEMA_CHECK,
        description="The replica's columns and types match what the schema contract's DDL creates.",
        blocking=False,
    )
    def _schema(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        contract = read_contract(config.contract_path(table))
        if contract is None:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"No schema contract at {config.contract_path(table)}; run `etl-assets schema snapshot {table.name}`.",
            )
        dialect = warehouse_dialect(config)
        expected = warehouse_types(
            contract.to_table(),
            dialect,  # type: ignore[arg-type]
            boolean_columns=settings.boolean_columns,
            column_types=settings.column_types,
        )
        wh = warehouse.open()
        try:
            actual = wh.columns(target) if wh.table_exists(target) else {}
        finally:
            wh.close()
        if not actual:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="The replica table does not exist yet.",
            )
        diff = diff_replica(expected, actual, dialect=dialect)
        return dg.AssetCheckResult(
            passed=not diff.has_drift,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "changes": len(diff.changes),
                "summary": diff.summary if diff.has_drift else "replica matches the contract",
                "diff": dg.MetadataValue.md(diff.to_markdown())
                if diff.has_drift
                else dg.MetadataValue.md("no drift"),
                "columns": len(actual),
            },
        )

    @dg.asset_check(
        asset=key,
        name=REPLICA_FRESHNESS_CHECK,
        description=f"The newest loaded `{table.time_column}` is at most {settings.freshness} old (WARN), "
        "or twice that (ERROR).",
        blocking=False,
    )
    def _freshness(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        wh = warehouse.open()
        try:
            watermark, loaded_at = wh.last_load(target)
        finally:
            wh.close()
        limit = settings.freshness_period.as_timedelta()
        if watermark is None:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="No load has been recorded yet.",
            )
        age = utcnow() - watermark
        severity = dg.AssetCheckSeverity.ERROR if age > 2 * limit else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(
            passed=age <= limit,
            severity=severity,
            metadata={
                "watermark": dg.MetadataValue.timestamp(watermark),
                "age_minutes": round(age.total_seconds() / 60, 1),
                "limit_minutes": round(limit.total_seconds() / 60, 1),
                "last_load": dg.MetadataValue.timestamp(loaded_at)
                if loaded_at
                else dg.MetadataValue.text("never"),
            },
            description=None if age <= limit else f"the replica is {age} behind (limit {settings.freshness})",
        )

    return [_row_count, _schema, _freshness]
