"""`etl-assets`: the command line. Every command reads the same config file as the Dagster code location.

    etl-assets demo [--reset]            run everything on the embedded demo (SQLite, folder, DuckDB)
    etl-assets plan [TABLE]              rows each eligible archive partition would move (touches nothing)
    etl-assets restore TABLE PARTITION   put archived rows back into the source
    etl-assets schema snapshot [TABLE]   write schemas/<table>.json from the live source
    etl-assets schema diff [TABLE]       print drift; exit code 1 when there is any
    etl-assets ddl TABLE                 print the replica DDL for review

Errors are one line plus a hint and a non-zero exit code; `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from etl_assets.config import CONFIG_ENV_VAR, ConfigError, ProjectConfig, TableConfig, load_config

EXIT_DRIFT = 1
EXIT_ERROR = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line plus a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _config(args: argparse.Namespace) -> ProjectConfig:
    if args.config:
        os.environ[CONFIG_ENV_VAR] = str(Path(args.config).resolve())
    return load_config()


def _tables(config: ProjectConfig, name: str | None, *, need: str | None = None) -> list[TableConfig]:
    tables = [config.table(name)] if name else list(config.tables)
    if need:
        tables = [t for t in tables if getattr(t, need) is not None]
        if not tables:
            raise CliError(
                f"no table{' ' + repr(name) if name else ''} has a '{need}' block in {config.path}",
                f"add {need}: {{...}} to the table in the config",
            )
    return tables


def _source(config: ProjectConfig):
    from etl_assets.resources.settings import resolve_setting
    from etl_assets.resources.source import SourceClient

    return SourceClient(resolve_setting(config.path, "source.url", config.source.url))


def cmd_plan(args: argparse.Namespace) -> int:
    """Rows per eligible archive partition; nothing is written or deleted."""
    from etl_assets.assets.naming import archive_partitions
    from etl_assets.engine.archive import committed_manifests, plan_partitions
    from etl_assets.lib.windows import Window, add_months, utc
    from etl_assets.resources.settings import resolve_setting
    from etl_assets.resources.store import open_store

    config = _config(args)
    client = _source(config)
    store = None
    if config.archive is not None:
        store = open_store(resolve_setting(config.path, "archive.url", config.archive.url),
                           region=resolve_setting(config.path, "archive.region", config.archive.region))  # fmt: skip
    try:
        for table in _tables(config, args.table, need="archive"):
            assert table.archive is not None
            source_table = client.reflect(table.name, primary_key=table.primary_key)
            keys = archive_partitions(config, table).get_partition_keys()
            windows = []
            for key in keys:
                start = utc(datetime.fromisoformat(key))
                windows.append((key, Window(start, add_months(start, 1))))
            counts = [(k, n) for k, n in plan_partitions(source=client, source_table=source_table,
                                                          time_column=table.time_column, windows=windows) if n]  # fmt: skip
            nulls = client.count_null_time(source_table, table.time_column)
            print(f"\n{table.name}: retention {table.archive.retention}, purge {'on' if table.archive.purge else 'off'}, "
                  f"{len(keys)} eligible partition(s)")  # fmt: skip
            if not counts:
                print("  nothing to archive")
            else:
                print(f"  {'partition':<12} {'to archive':>12} {'to purge':>12} {'already archived':>17}")
                for key, rows in counts:
                    done = (
                        sum(
                            m.rows
                            for m in committed_manifests(store, table.name, datetime.fromisoformat(key))
                        )
                        if store
                        else 0
                    )
                    purge = rows if table.archive.purge else 0
                    print(f"  {key:<12} {rows:>12,} {purge:>12,} {done:>17,}")
                total = sum(n for _, n in counts)
                print(f"  {'total':<12} {total:>12,} {total if table.archive.purge else 0:>12,}")
            if nulls:
                print(f"  {nulls:,} row(s) have NULL {table.time_column} and are never archived")
    finally:
        client.dispose()
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Put the archived rows of one partition back into the source."""
    from etl_assets.engine.archive import restore_partition
    from etl_assets.resources.settings import resolve_setting
    from etl_assets.resources.store import open_store

    config = _config(args)
    table = config.table(args.table)
    if config.archive is None:
        raise CliError(f"{config.path} has no archive store", "add archive: {url: ...}")
    try:
        month = datetime.strptime(args.partition, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CliError(
            f"partition {args.partition!r} is not a date", "use the partition key, e.g. 2024-01-01"
        ) from None
    if month.day != 1:
        raise CliError(f"partition {args.partition} is not the first of a month", f"use {month:%Y-%m}-01")
    store = open_store(resolve_setting(config.path, "archive.url", config.archive.url),
                       kms_key_id=resolve_setting(config.path, "archive.kms_key_id", config.archive.kms_key_id),
                       region=resolve_setting(config.path, "archive.region", config.archive.region))  # fmt: skip
    client = _source(config)
    try:
        source_table = client.reflect(table.name, primary_key=table.primary_key)
        report = restore_partition(source=client, store=store, source_table=source_table, table=table.name,
                                   month=month, log=lambda m: print(f"  {m}"))  # fmt: skip
    finally:
        client.dispose()
    print(f"restored {report.rows_restored:,} row(s) of {table.name} {args.partition} from {report.parts} part(s); "
          f"{report.rows_already_present:,} were already present and left alone")  # fmt: skip
    return 0


def cmd_schema_snapshot(args: argparse.Namespace) -> int:
    """Write the schema contract of each table from the live source."""
    from etl_assets.lib.contract import SchemaContract, write_contract

    config = _config(args)
    client = _source(config)
    try:
        for table in _tables(config, args.table):
            live = client.reflect(table.name, primary_key=table.primary_key)
            oldest = None
            if live.has_column(table.time_column):
                oldest, _ = client.time_range(live, table.time_column)
            contract = SchemaContract.from_table(live, time_column=table.time_column,
                                                 oldest_row=oldest.date() if oldest else None)  # fmt: skip
            path = config.contract_path(table)
            write_contract(path, contract)
            print(
                f"wrote {path} ({len(live.columns)} columns, primary key {', '.join(live.primary_key) or 'none'})"
            )
    finally:
        client.dispose()
    print("review the change with `git diff` and commit it; drift checks compare against these files")
    return 0


def cmd_schema_diff(args: argparse.Namespace) -> int:
    """Print drift between each table's contract and the live source; exit 1 on drift."""
    from etl_assets.engine.gate import check_drift
    from etl_assets.resources.source import SourceError

    config = _config(args)
    client = _source(config)
    drift = False
    try:
        for table in _tables(config, args.table):
            try:
                live = client.reflect(table.name, primary_key=table.primary_key)
            except SourceError:
                live = None
            diff = check_drift(config=config, table=table, live=live)
            if diff is None:
                print(
                    f"{table.name}: no contract at {config.contract_path(table)}; run `etl-assets schema snapshot {table.name}`"
                )
                drift = True
                continue
            if not diff.has_drift:
                print(f"{table.name}: no drift")
                continue
            drift = True
            policy = "blocks loads" if diff.blocks(table.on_drift) else "let through by on_drift: evolve"
            print(f"{table.name}: DRIFT ({diff.classification}; {policy}): {diff.summary}")
            print(diff.to_markdown())
    finally:
        client.dispose()
    return EXIT_DRIFT if drift else 0


def cmd_ddl(args: argparse.Namespace) -> int:
    """Print the CREATE TABLE the replica would use."""
    from etl_assets.engine.gate import warehouse_dialect
    from etl_assets.lib.sql import create_schema_sql, create_table_sql

    config = _config(args)
    table = config.table(args.table)
    dialect = args.dialect or warehouse_dialect(config)
    settings = table.replica
    client = _source(config)
    try:
        live = client.reflect(table.name, primary_key=table.primary_key)
    finally:
        client.dispose()
    schema = config.warehouse.schema_name if config.warehouse else "public"
    print(create_schema_sql(schema, dialect) + ";")  # type: ignore[arg-type]
    print(create_table_sql(
        live, schema=schema, target_name=table.asset_name, dialect=dialect,  # type: ignore[arg-type]
        boolean_columns=settings.boolean_columns if settings else (),
        column_types=settings.column_types if settings else None,
        distkey=settings.distkey if settings else None,
        sortkey=settings.sortkey if settings else None,
        time_column=table.time_column if live.has_column(table.time_column) else None,
    ) + ";")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the embedded demo end to end."""
    from etl_assets.demo.run import run_demo

    return run_demo(reset=args.reset)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and `--help`)."""
    parser = argparse.ArgumentParser(
        prog="etl-assets",
        description="Archive old MySQL rows to encrypted S3 Parquet, keep a Redshift replica fresh, and catch "
        "schema drift. Reads the config from --config, $ETL_ASSETS_CONFIG, ./etl_assets.yaml or the bundled demo.",
    )
    parser.add_argument(
        "--config", help="config file (default: $ETL_ASSETS_CONFIG, ./etl_assets.yaml, the demo)"
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the whole pipeline on the embedded demo (no servers needed)")
    demo.add_argument(
        "--reset", action="store_true", help="delete the demo's data and history and start over"
    )
    demo.set_defaults(func=cmd_demo)

    plan = commands.add_parser(
        "plan", help="show rows each eligible archive partition would archive and purge"
    )
    plan.add_argument("table", nargs="?", help="one table (default: every table with an archive block)")
    plan.set_defaults(func=cmd_plan)

    restore = commands.add_parser(
        "restore", help="put archived rows of a partition back (skips rows present)"
    )
    restore.add_argument("table")
    restore.add_argument("partition", help="archive partition key, e.g. 2024-01-01")
    restore.set_defaults(func=cmd_restore)

    schema = commands.add_parser("schema", help="schema contracts: snapshot or diff")
    schema_commands = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    snapshot = schema_commands.add_parser("snapshot", help="write schemas/<table>.json from the live source")
    snapshot.add_argument("table", nargs="?")
    snapshot.set_defaults(func=cmd_schema_snapshot)
    diff = schema_commands.add_parser("diff", help="print drift against the contracts; exit 1 on drift")
    diff.add_argument("table", nargs="?")
    diff.set_defaults(func=cmd_schema_diff)

    ddl = commands.add_parser("ddl", help="print the replica's CREATE TABLE for review")
    ddl.add_argument("table")
    ddl.add_argument(
        "--dialect", choices=["redshift", "postgresql", "duckdb"], help="default: the warehouse's"
    )
    ddl.set_defaults(func=cmd_ddl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `etl-assets` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any error into a readable line
        if isinstance(exc, CliError):
            hint = exc.hint
        elif isinstance(exc, ConfigError):
            hint = "fix the config file named above (README: Configuration)"
        else:
            hint = "re-run with --verbose for the traceback"
        lines = str(exc).splitlines() or [type(exc).__name__]
        prefix = "" if isinstance(exc, (CliError, ConfigError)) else f"{type(exc).__name__}: "
        print(f"error: {prefix}{lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"       {line}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
