"""Checks on `replica/<t>`: row counts against the source, columns against the contract, freshness.

All of them run in one step (`replica_checks`, see `per_table.py`); each check is its own in the UI.

- `replica_row_count`: rows with the time column in the last loaded week, source vs replica. Rows
  the archive purged are older than the table's retention, so a recent window is unaffected by
  them; rows newer than the replica's watermark minus the lag are left out (not loaded yet).
- `replica_schema`: the replica's actual columns and types vs what the contract's DDL would create.
- `replica_freshness`: the newest loaded watermark against `replica.freshness` (WARN when older,
  ERROR when more than twice as old). It replaces Data Pipeline's `onLateAction`.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg

from etl_assets.assets.naming import (
    REPLICA_FRESHNESS_CHECK,
    REPLICA_ROW_COUNT_CHECK,
    REPLICA_SCHEMA_CHECK,
    replica_key,
)
from etl_assets.assets.per_table import TableFailures
from etl_assets.config import ProjectConfig, TableConfig, TableReplicaConfig, utcnow
from etl_assets.engine.gate import warehouse_dialect
from etl_assets.lib.contract import read_contract
from etl_assets.lib.schema_diff import diff_replica
from etl_assets.lib.typemap import warehouse_types
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient, SourceDatabase
from etl_assets.resources.warehouse import WarehouseClient, WarehouseResource

ROW_COUNT_WINDOW = timedelta(days=7)


def build_replica_checks(*, config: ProjectConfig) -> dg.AssetChecksDefinition | None:
    """The three replica checks of every replicated table, run by one step (`per_table.py`).

    A run may select any of the checks (the UI's "Execute" on one selects one). The step opens one
    warehouse connection (and one source connection when a row count is selected) for all of them;
    a check that fails to run does not stop the others, and the step then fails naming it.
    """
    tables = {replica_key(t): t for t in config.tables if t.replica is not None}
    if not tables:
        return None
    specs = [
        spec
        for key, table in tables.items()
        for spec in (
            dg.AssetCheckSpec(
                REPLICA_ROW_COUNT_CHECK,
                asset=key,
                description="Rows in the last loaded week: source and replica must hold the same number.",
                blocking=False,
            ),
            dg.AssetCheckSpec(
                REPLICA_SCHEMA_CHECK,
                asset=key,
                description="The replica's columns and types match what the schema contract's DDL creates.",
                blocking=False,
            ),
            dg.AssetCheckSpec(
                REPLICA_FRESHNESS_CHECK,
                asset=key,
                description=f"The newest loaded `{table.time_column}` is at most "
                f"{_settings(table).freshness} old (WARN), or twice that (ERROR).",
                blocking=False,
            ),
        )
    ]

    @dg.multi_asset_check(
        specs=specs,
        name="replica_checks",
        description="Row counts against the source, columns against the contract, and freshness of each replica.",
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, source: SourceDatabase, warehouse: WarehouseResource
    ) -> Iterator[dg.AssetCheckResult]:
        selected = sorted(context.selected_asset_check_keys, key=lambda key: key.to_user_string())
        failures = TableFailures(doing="running the replica checks", of_total=len(selected))
        wh = warehouse.open()
        client: SourceClient | None = None
        try:
            for check_key in selected:
                table = tables[check_key.asset_key]
                what = f"check {check_key.name} of table '{table.name}'"
                if check_key.name == REPLICA_ROW_COUNT_CHECK:
                    client = client or source.open()
                    result = failures.run(what, _row_count, table, wh, client)
                elif check_key.name == REPLICA_SCHEMA_CHECK:
                    result = failures.run(what, _schema, config, table, wh)
                else:
                    result = failures.run(what, _freshness, table, wh)
                if result is not None:
                    yield result
        finally:
            if client is not None:
                client.dispose()
            wh.close()
        failures.raise_if_any()

    return _checks


def _row_count(table: TableConfig, wh: WarehouseClient, client: SourceClient) -> dg.AssetCheckResult:
    settings = _settings(table)
    target = table.asset_name
    if not wh.table_exists(target):
        return _not_yet(
            table, REPLICA_ROW_COUNT_CHECK, "The replica table does not exist yet; materialize it first."
        )
    watermark, _ = wh.last_load(target)
    if watermark is None:
        return _not_yet(table, REPLICA_ROW_COUNT_CHECK, "No load has been recorded yet.")
    end = watermark - settings.lag_period.as_timedelta()
    window = Window(end - ROW_COUNT_WINDOW, end)
    reflected = client.reflect(table.name, primary_key=table.primary_key)
    in_source = client.count_window(reflected, table.time_column, window)
    in_replica = wh.count_rows(target, table.time_column, window.start, window.end)
    passed = in_replica >= in_source if settings.insert_mode == "append" else in_replica == in_source
    return _result(
        table,
        REPLICA_ROW_COUNT_CHECK,
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


def _schema(config: ProjectConfig, table: TableConfig, wh: WarehouseClient) -> dg.AssetCheckResult:
    settings = _settings(table)
    contract = read_contract(config.contract_path(table))
    if contract is None:
        return _not_yet(
            table,
            REPLICA_SCHEMA_CHECK,
            f"No schema contract at {config.contract_path(table)}; run `etl-assets schema snapshot {table.name}`.",
        )
    dialect = warehouse_dialect(config)
    expected = warehouse_types(
        contract.to_table(),
        dialect,  # type: ignore[arg-type]
        boolean_columns=settings.boolean_columns,
        column_types=settings.column_types,
    )
    actual = wh.columns(table.asset_name) if wh.table_exists(table.asset_name) else {}
    if not actual:
        return _not_yet(table, REPLICA_SCHEMA_CHECK, "The replica table does not exist yet.")
    diff = diff_replica(expected, actual, dialect=dialect)
    return _result(
        table,
        REPLICA_SCHEMA_CHECK,
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


def _freshness(table: TableConfig, wh: WarehouseClient) -> dg.AssetCheckResult:
    settings = _settings(table)
    watermark, loaded_at = wh.last_load(table.asset_name)
    limit = settings.freshness_period.as_timedelta()
    if watermark is None:
        return _not_yet(table, REPLICA_FRESHNESS_CHECK, "No load has been recorded yet.")
    age = utcnow() - watermark
    severity = dg.AssetCheckSeverity.ERROR if age > 2 * limit else dg.AssetCheckSeverity.WARN
    return _result(
        table,
        REPLICA_FRESHNESS_CHECK,
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


def _settings(table: TableConfig) -> TableReplicaConfig:
    assert table.replica is not None  # only replicated tables have these checks
    return table.replica


def _not_yet(table: TableConfig, check_name: str, description: str) -> dg.AssetCheckResult:
    """A WARN result: there is nothing to check yet (no replica table, no load, no contract)."""
    return _result(
        table, check_name, passed=False, severity=dg.AssetCheckSeverity.WARN, description=description
    )


def _result(table: TableConfig, check_name: str, **fields: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key=replica_key(table), check_name=check_name, **fields)
