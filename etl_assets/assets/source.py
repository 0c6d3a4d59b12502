"""`source/<t>`: the live MySQL tables, observed (never written), and the `source_table_sizes` report.

An observation records the table's column schema (`dagster/column_schema`), its row count and the
newest time-column value, which is also the data version: the UI shows when a table last changed,
and automation can react to it.
"""

from typing import Any

import dagster as dg

from etl_assets.assets.naming import SCHEMA_DRIFT_CHECK, source_key, source_kind, source_pool, table_tags
from etl_assets.assets.per_table import TableFailures
from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.engine.gate import check_drift
from etl_assets.lib.schema import SourceTable
from etl_assets.resources.source import SourceClient, SourceDatabase, SourceError, TableSize

# Tables with fewer rows (by InnoDB's estimate) get an exact COUNT(*) in their observation.
EXACT_ROW_COUNT_BELOW = 1_000_000


def column_schema(table: SourceTable) -> dg.TableSchema:
    """The Dagster TableSchema of a source table (MySQL types, nullability, primary key)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=column.name,
                type=column.column_type,
                constraints=dg.TableColumnConstraints(nullable=column.nullable, unique=False),
                tags={"primary_key": "true"} if column.name in table.primary_key else {},
            )
            for column in table.columns
        ]
    )


def build_source_assets(*, config: ProjectConfig) -> dg.AssetsDefinition:
    """The observable `source/<table>` assets of every table, observed by one step (`per_table.py`).

    Observing a table records its column schema, row count and newest time value, and evaluates its
    `schema_drift` check. A run may select any of the tables (the UI's "Observe" on one asset selects
    one); a table that fails to be observed does not stop the others, and the step then fails naming it.
    """
    specs: dict[dg.AssetKey, tuple[TableConfig, dg.AssetSpec]] = {}
    check_specs: list[dg.AssetCheckSpec] = []
    for table in config.tables:
        spec = dg.AssetSpec(
            key=source_key(table),
            description=table.description
            or f"The live `{table.name}` table in the source database (observed, never written).",
            group_name=config.source.group_name,
            kinds={source_kind(config)},
            owners=table.owners,
            tags=table_tags(config, table),
            metadata={"dagster/table_name": f"{config.source.group_name}.{table.name}"},
        )
        specs[spec.key] = (table, spec)
        check_specs.append(
            dg.AssetCheckSpec(
                SCHEMA_DRIFT_CHECK,
                asset=spec.key,
                description=(
                    f"The live `{table.name}` schema matches the reviewed contract "
                    f"`{config.contract_path(table).name}`; archive and replica runs refuse while it does not."
                ),
            )
        )

    @dg.multi_observable_source_asset(
        specs=[spec for _, spec in specs.values()],
        name="observe_sources",
        description="Observe the source tables: schema, row count, newest time value and schema drift.",
        required_resource_keys={"source"},
        check_specs=check_specs,
        can_subset=True,
    )
    def _observe(context: dg.AssetExecutionContext):
        selected = sorted(context.selected_asset_keys, key=lambda key: key.to_user_string())
        failures = TableFailures(doing="observing the source tables", of_total=len(selected))
        client = context.resources.source.open()
        try:
            for key in selected:
                table = specs[key][0]
                observed = failures.run(
                    f"table '{table.name}'", _observe_table, context, client, config, table
                )
                if observed is not None:
                    yield observed
        finally:
            client.dispose()
        failures.raise_if_any()

    return _observe


def _observe_table(
    context: dg.AssetExecutionContext, client: SourceClient, config: ProjectConfig, table: TableConfig
) -> dg.ObserveResult:
    """One table's observation and its `schema_drift` result."""
    reflected: SourceTable | None = None
    rows, newest, exact = 0, None, True
    try:
        live = client.reflect(table.name, primary_key=table.primary_key)
        reflected = live
        rows = client.estimated_rows(table.name)
        # InnoDB's TABLE_ROWS is an estimate (off by a few rows, or by 10 % and more); below this
        # size an exact COUNT(*) is cheap, so the UI shows the true number.
        exact = rows < EXACT_ROW_COUNT_BELOW
        if exact:
            rows = client.row_count(table.name)
        if live.has_column(table.time_column):
            newest = client.max_time(live, table.time_column)
    except SourceError as exc:
        if client.table_exists(table.name):
            raise
        context.log.error(str(exc))  # the table is gone: schema_drift reports it
    metadata: dict[str, Any] = {"time_column": table.time_column}
    if reflected is not None:
        metadata |= {
            "dagster/column_schema": column_schema(reflected),
            "dagster/row_count": rows,
            "row_count_is_estimate": not exact,
            "primary_key": ", ".join(reflected.primary_key) or "(none)",
            "newest_time_value": dg.MetadataValue.text(newest.isoformat() if newest else "none"),
        }
    return dg.ObserveResult(
        asset_key=source_key(table),
        metadata=metadata,
        data_version=dg.DataVersion(f"{rows}:{newest.isoformat() if newest else ''}"),
        check_results=[drift_check_result(config=config, table=table, live=reflected)],
    )


def drift_check_result(
    *, config: ProjectConfig, table: TableConfig, live: SourceTable | None
) -> dg.AssetCheckResult:
    """The `schema_drift` result for the live table (None when the table is gone)."""
    contract_path = config.contract_path(table)
    diff = check_drift(config=config, table=table, live=live)
    if diff is None:
        return dg.AssetCheckResult(
            asset_key=source_key(table),
            check_name=SCHEMA_DRIFT_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"No schema contract at {contract_path}; run `etl-assets schema snapshot {table.name}` and commit it.",
            metadata={"contract": dg.MetadataValue.path(str(contract_path))},
        )
    blocks = diff.blocks(table.on_drift)
    return dg.AssetCheckResult(
        asset_key=source_key(table),
        check_name=SCHEMA_DRIFT_CHECK,
        passed=not diff.has_drift,
        severity=dg.AssetCheckSeverity.ERROR if blocks or not diff.has_drift else dg.AssetCheckSeverity.WARN,
        description=diff.summary if diff.has_drift else "live schema matches the contract",
        metadata={
            "changes": len(diff.changes) + int(diff.table_missing) + int(diff.primary_key_changed),
            "summary": diff.summary if diff.has_drift else "no drift",
            "classification": diff.classification or "none",
            "blocks_loads": blocks,
            "diff_markdown": dg.MetadataValue.md(diff.to_markdown() if diff.has_drift else "no drift"),
            "diff": dg.MetadataValue.json(diff.to_dict()),
            "contract": dg.MetadataValue.path(str(contract_path)),
        },
    )


def _sizes_markdown(sizes: list[TableSize], candidates: set[str], configured: set[str]) -> str:
    lines = [
        "| table | rows (est.) | data MB | index MB | free MB | total MB | archive |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for size in sizes:
        if size.name in candidates:
            status = (
                "**candidate**: has " + ", ".join(f"`{c}`" for c in size.time_columns[:2]) + ", not archived"
            )
        elif size.name in configured:
            status = "configured"
        else:
            status = ""
        lines.append(
            f"| `{size.name}` | {size.rows:,} | {size.data_bytes / 1e6:,.1f} | {size.index_bytes / 1e6:,.1f} | "
            f"{size.free_bytes / 1e6:,.1f} | {size.total_bytes / 1e6:,.1f} | {status} |"
        )
    return "\n".join(lines)


def build_table_sizes_asset(*, config: ProjectConfig) -> dg.AssetsDefinition:
    """The `source_table_sizes` report: which tables use the most space, and which could be archived."""
    archived = {t.name for t in config.tables if t.archive is not None}
    configured = {t.name for t in config.tables}

    @dg.asset(
        key="source_table_sizes",
        group_name=config.source.group_name,
        kinds={source_kind(config)},
        owners=sorted({o for t in config.tables for o in t.owners}),
        tags={"etl_assets/source": config.source.group_name},
        pool=source_pool(config),
    )
    def source_table_sizes(context: dg.AssetExecutionContext, source: SourceDatabase) -> dg.MaterializeResult:
        """Table and index sizes from information_schema, largest first.

        Tables that have a date/time column but no archive block are marked as archive candidates.
        """
        client = source.open()
        try:
            sizes = client.table_sizes()
        finally:
            client.dispose()
        candidates = {s.name for s in sizes if s.time_columns and s.name not in archived}
        total = sum(s.total_bytes for s in sizes)
        context.log.info(
            f"{len(sizes)} tables, {total / 1e6:,.1f} MB; {len(candidates)} archive candidate(s)"
        )
        return dg.MaterializeResult(
            metadata={
                "sizes": dg.MetadataValue.md(_sizes_markdown(sizes, candidates, configured)),
                "tables": len(sizes),
                "total_bytes": total,
                "data_bytes": sum(s.data_bytes for s in sizes),
                "index_bytes": sum(s.index_bytes for s in sizes),
                "archive_candidates": len(candidates),
                "candidate_tables": dg.MetadataValue.json(sorted(candidates)),
                "largest_table": sizes[0].name if sizes else "",
            }
        )

    return source_table_sizes
