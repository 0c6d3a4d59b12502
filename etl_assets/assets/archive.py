"""`archive/<t>`: monthly partitions of old rows, moved to encrypted Parquet and purged from the source.

Materializing one partition does the whole job (extract, stage, verify, purge, commit; see
`engine/archive.py`). A range of partitions runs in one run (single-run backfill policy), so a first
archive of years of history is one process, not hundreds of runs; on MySQL each month is purged
while the next one is extracted (`ArchiveBackfill`). Tables archived alike (same start and retention)
share one step, which runs the tables a run selects one after another (`assets/per_table.py`).
"""

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from etl_assets.assets.naming import (
    ARCHIVE_VERIFIED_CHECK,
    TableGroup,
    archive_key,
    derived_spec,
    source_kind,
    source_pool,
    store_kind,
)
from etl_assets.assets.per_table import each_table
from etl_assets.config import ProjectConfig, TableConfig, utcnow
from etl_assets.engine.gate import DriftBlockedError, ensure_no_drift
from etl_assets.lib.layout import PartitionLayout
from etl_assets.lib.windows import Window, month_window
from etl_assets.resources.source import SourceDatabase, SourceError
from etl_assets.resources.store import ArchiveStore, ObjectStore, StoreError
from etl_assets.resources.warehouse import WarehouseError, WarehouseResource

if TYPE_CHECKING:
    from etl_assets.engine.archive import ArchiveReport


def _month_windows(context: dg.AssetExecutionContext) -> list[tuple[str, Window]]:
    return [(key, month_window(key)) for key in context.partition_keys]


def _metadata(reports: "list[ArchiveReport]", seconds: float) -> dict[str, Any]:
    first, last = reports[0], reports[-1]
    extracted = sum(r.rows_extracted for r in reports)
    parts = [url for r in reports for url in r.parts]
    metadata: dict[str, Any] = {
        "dagster/row_count": sum(r.committed_rows_in_partition for r in reports),
        "rows_extracted": extracted,
        "rows_committed": sum(r.rows_committed for r in reports),
        "rows_purged": sum(r.rows_purged for r in reports),
        "rows_kept_changed_since_read": sum(r.rows_kept_changed for r in reports),
        "rows_kept_not_in_replica": sum(r.rows_kept_not_in_replica for r in reports),
        "rows_kept_max_run_time": sum(r.rows_kept_deadline for r in reports),
        "rows_already_archived": sum(r.rows_already_archived for r in reports),
        "rows_kept_archived_differently": sum(r.rows_kept_archived_differently for r in reports),
        "rows_null_time_column": last.null_time_rows,
        "zero_dates_nulled": sum(r.zero_dates_nulled for r in reports),
        "bytes_written": sum(r.bytes_written for r in reports),
        "parts": len(parts),
        "seconds": round(seconds, 3),
        "rows_per_second": round(extracted / seconds, 1) if seconds else 0.0,
        "longest_delete_transaction_seconds": round(max(r.longest_delete_seconds for r in reports), 4),
        "window": f"[{first.window.start:%Y-%m-%d}, {last.window.end:%Y-%m-%d})",
        "recovered_runs": dg.MetadataValue.json([run for r in reports for run in r.recovered_runs]),
    }
    if len(reports) == 1 and reports[0].manifest:
        metadata["manifest"] = dg.MetadataValue.path(reports[0].manifest)
    if parts:
        metadata["objects"] = dg.MetadataValue.md("\n".join(f"- `{url}`" for url in parts[:50]))
        if parts[0].startswith("s3://"):
            metadata["first_object"] = dg.MetadataValue.url(parts[0])
    if len(reports) > 1:
        rows = [
            "| partition | extracted | committed | purged | kept | seconds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows += [
            f"| {r.partition} | {r.rows_extracted:,} | {r.rows_committed:,} | {r.rows_purged:,} | "
            f"{r.rows_kept_changed + r.rows_kept_not_in_replica + r.rows_kept_deadline + r.rows_kept_archived_differently:,}"
            f" | {r.seconds:.2f} |"
            for r in reports
        ]
        metadata["partitions"] = dg.MetadataValue.md("\n".join(rows))
    return metadata


def build_archive_assets(*, config: ProjectConfig, groups: list[TableGroup]) -> list[dg.AssetsDefinition]:
    """The `archive/<table>` assets: one step per group of tables archived alike (`naming.archive_groups`).

    Each asset keeps its own description, kinds, owners, tags and `archive_verified` check; a run
    materializes the tables it selects (a schedule's run: one) one after another in the step.
    """
    return [_archive_group(config=config, group=group) for group in groups]


def _archive_spec(config: ProjectConfig, table: TableConfig) -> dg.AssetSpec:
    assert table.archive is not None
    assert config.archive is not None
    settings = table.archive
    purge_text = (
        "then deletes them from the source"
        if settings.purge
        else "and leaves the source untouched (purge: false)"
    )
    return derived_spec(
        config,
        table,
        key=archive_key(table),
        kinds={source_kind(config), store_kind(config), "parquet"},
        description=(
            f"Rows of `{table.name}` whose `{table.time_column}` is older than {settings.retention}, archived "
            f"month by month as encrypted zstd Parquet under `{config.archive.url}`. Each run verifies every "
            f"part by reading it back {purge_text}, in batches of {settings.batch_size:,}."
        ),
        metadata={"retention": settings.retention, "purge": settings.purge, "time_column": table.time_column},
    )


def _archive_group(*, config: ProjectConfig, group: TableGroup) -> dg.AssetsDefinition:
    tables = {archive_key(table): table for table in group.tables}

    @dg.multi_asset(
        name=group.step,
        specs=[_archive_spec(config, table) for table in group.tables],
        check_specs=[
            dg.AssetCheckSpec(
                ARCHIVE_VERIFIED_CHECK,
                asset=key,
                description=(
                    "After the run, each archived month's committed objects are listed again and checked "
                    "against their manifests: every listed part present with its size and SHA-256, row "
                    "counts and key digests adding up, no unlisted part in the queryable folder."
                ),
            )
            for key in tables
        ],
        partitions_def=group.partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        pool=source_pool(config),
        description=f"Archive the selected months of {group.listed()}, one table after another.",
    )
    def _archive(
        context: dg.AssetExecutionContext,
        source: SourceDatabase,
        archive_store: ArchiveStore,
        warehouse: WarehouseResource,
    ) -> Iterator[dg.MaterializeResult]:
        yield from each_table(
            tables,
            context.selected_asset_keys,
            lambda table: _archive_table(context, config, table, source, archive_store, warehouse),
            doing="archiving",
        )

    return _archive


def _archive_table(
    context: dg.AssetExecutionContext,
    config: ProjectConfig,
    table: TableConfig,
    source: SourceDatabase,
    archive_store: ArchiveStore,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Archive the run's months of one table; its materialization, and its check's result if selected."""
    # Imported by the run, not when the code location loads: the engine brings pyarrow and numpy.
    from etl_assets.engine.archive import ArchiveBackfill, ArchiveError, ArchiveJob, ArchiveReport, LogRelay
    from etl_assets.resources.memory import release_freed_memory, use_trimmable_allocators

    started = time.monotonic()
    if allocator_warning := use_trimmable_allocators():
        context.log.warning(allocator_warning)
    client = source.open()
    guard = None
    try:
        source_table = client.reflect(table.name, primary_key=table.primary_key)
        ensure_no_drift(config=config, table=table, live=source_table, what="archive")
        store = archive_store.open()
        guard = (
            warehouse.replica_guard(config=config, table=table, source_table=source_table)
            if table.replica
            else None
        )
        # Lines go to the event log from a writer thread; extraction and purge only queue them.
        with LogRelay(context.log.info) as log:
            jobs = [
                ArchiveJob(
                    source=client,
                    store=store,
                    table=table,
                    source_table=source_table,
                    partition_key=key,
                    window=window,
                    run_id=context.run.run_id,
                    now=utcnow(),
                    log=log,
                    replica_guard=guard,
                    lock_timeout_seconds=config.source.lock_timeout_seconds,
                )
                for key, window in _month_windows(context)
            ]

            def month_done(report: ArchiveReport) -> None:
                log(
                    f"archive {table.name} partition {report.partition} window {report.window.label()}: "
                    f"{report.rows_committed:,} rows committed, {report.rows_purged:,} purged in {report.seconds:.1f}s"
                    + (f"; {report.message}" if report.message else "")
                )
                # A backfill's partitions run one after another in this process: hand what the last
                # one freed back to the OS, or RSS creeps up with every month (see memory.py).
                release_freed_memory()

            reports = ArchiveBackfill(jobs=jobs, on_month_done=month_done).run()
    except (ArchiveError, DriftBlockedError, SourceError, WarehouseError) as exc:
        # SourceError: lock busy, a replica misconfigured; each message says which table and the fix.
        raise dg.Failure(description=str(exc)) from None
    finally:
        client.dispose()
        if guard is not None:
            guard.client.close()  # a DuckDB replica stays locked while a client holds it open
    key = archive_key(table)
    check = dg.AssetCheckKey(key, ARCHIVE_VERIFIED_CHECK)
    return dg.MaterializeResult(
        asset_key=key,
        metadata=_metadata(reports, seconds=time.monotonic() - started),
        check_results=[archive_verified_result(key, store, reports)]
        if check in context.selected_asset_check_keys
        else [],
    )


def archive_verified_result(
    key: dg.AssetKey, store: ObjectStore, reports: "list[ArchiveReport]"
) -> dg.AssetCheckResult:
    """The `archive_verified` check of a finished run: each month's committed archive, listed again.

    For every month of the run the committed manifests are read back and checked against the objects
    in the store (`check_committed_partition`: every listed part present with the listed size and
    SHA-256, row counts and key digests adding up, no unlisted part in the queryable folder), and
    their rows against the rows the run counted as committed in the month. It fails, naming each
    disagreement, when an object changed, vanished or appeared after the run committed it.
    """
    from etl_assets.engine.archive import ArchiveError, check_committed_partition, committed_manifests

    problems: list[str] = []
    rows = parts = 0
    for report in reports:
        layout = PartitionLayout(prefix="", table=report.table, month=report.window.start)
        # Any error is a failed check, not a failed step: the rows already left the source, so the
        # materialization and its metadata must be recorded whatever the re-check finds.
        try:
            manifests = committed_manifests(store, report.table, report.window.start)
        except (StoreError, ValueError) as exc:
            problems.append(
                f"table '{report.table}' partition {report.partition}: the committed manifests cannot be read: {exc}"
            )
            continue
        try:
            check_committed_partition(store, layout, manifests, table=report.table)
        except (ArchiveError, StoreError) as exc:
            problems.append(str(exc))
        listed = sum(m.rows for m in manifests)
        rows += listed
        parts += sum(len(m.parts) for m in manifests)
        if listed != report.committed_rows_in_partition:
            problems.append(
                f"table '{report.table}' partition {report.partition}: the run counted "
                f"{report.committed_rows_in_partition:,} committed rows, its committed manifests list {listed:,}"
            )
    checked = {
        "partitions_checked": len(reports),
        "rows_checked": rows,
        "parts_checked": parts,
        "rows_committed_by_this_run": sum(r.rows_committed for r in reports),
    }
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=ARCHIVE_VERIFIED_CHECK,
        passed=not problems,
        metadata=checked,
        description="; ".join(problems)
        or (
            f"Listed again after the run: {parts:,} committed part(s) of {len(reports)} month(s), {rows:,} rows, "
            "agree with their manifests (size, SHA-256, row count, key digest; no unlisted part)."
        ),
    )
