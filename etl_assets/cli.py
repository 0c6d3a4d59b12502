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
from typing import Any

from etl_assets.config import ConfigError, ProjectConfig, TableConfig, load_config

EXIT_DRIFT = 1
EXIT_ERROR = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line plus a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _config(args: argparse.Namespace) -> ProjectConfig:
    # Read --config directly: setting $ETL_ASSETS_CONFIG here would leak into the caller's process.
    return load_config(Path(args.config).resolve() if args.config else None)


def _table(config: ProjectConfig, name: str) -> TableConfig:
    try:
        return config.table(name)
    except ConfigError:
        names = ", ".join(t.name for t in config.tables)
        raise CliError(
            f"no table named '{name}' in {config.path}; configured tables: {names}",
            "use one of the configured table names (the config's tables: list), or add the table there",
        ) from None


def _tables(config: ProjectConfig, name: str | None, *, need: str | None = None) -> list[TableConfig]:
    tables = [_table(config, name)] if name else list(config.tables)
    if need:
        tables = [t for t in tables if getattr(t, need) is not None]
        if not tables:
            raise CliError(
                f"no table{' ' + repr(name) if name else ''} has a '{need}' block in {config.path}",
                f"add {need}: {{...}} to the table in the config",
            )
    return tables


def _replica_client(config: ProjectConfig):
    """The warehouse client of the config's replica, or None when no warehouse is configured."""
    from etl_assets.definitions import build_resources
    from etl_assets.resources.warehouse import WarehouseResource

    if config.warehouse is None:
        return None
    resource = build_resources(config)["warehouse"]
    assert isinstance(resource, WarehouseResource)
    return resource.open()


def _source(config: ProjectConfig):
    from etl_assets.config import resolve_setting
    from etl_assets.resources.source import SourceClient

    return SourceClient(
        resolve_setting(config.path, "source.url", config.source.url), reader=config.source.reader
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """Rows per eligible archive partition; nothing is written or deleted."""
    from etl_assets.assets.naming import archive_partitions
    from etl_assets.config import resolve_setting
    from etl_assets.engine.archive import committed_manifests, plan_partitions
    from etl_assets.lib.windows import month_window
    from etl_assets.resources.store import open_store

    config = _config(args)
    tables = _tables(config, args.table, need="archive")
    client = _source(config)
    store = None
    if config.archive is not None:
        store = open_store(resolve_setting(config.path, "archive.url", config.archive.url),
                           region=resolve_setting(config.path, "archive.region", config.archive.region))  # fmt: skip
    replica_client = None
    if any(t.replica for t in tables):
        try:
            replica_client = _replica_client(config)
        except Exception as exc:  # noqa: BLE001 - plan stays usable without the warehouse
            # A config error names the missing variable; others show their type only (no URL).
            reason = str(exc) if isinstance(exc, ConfigError) else type(exc).__name__
            print(f"the replica's warehouse cannot be opened ({reason}); to purge ignores the replica guard")
    try:
        for table in tables:
            assert table.archive is not None
            source_table = client.reflect(table.name, primary_key=table.primary_key)
            keys = archive_partitions(config, table).get_partition_keys()
            windows = [(key, month_window(key)) for key in keys]
            counts = [(k, n) for k, n in plan_partitions(source=client, source_table=source_table,
                                                          time_column=table.time_column, windows=windows) if n]  # fmt: skip
            nulls = client.count_null_time(source_table, table.time_column)
            span = f" ({keys[0]} .. {keys[-1]})" if keys else ""
            print(f"\n{table.name}: retention {table.archive.retention}, purge {'on' if table.archive.purge else 'off'}, "
                  f"{len(keys)} eligible partition(s){span}")  # fmt: skip
            # The replica that guards this table's purge, if any (None: no guard, or it cannot be read).
            replica = replica_client if table.replica is not None and table.archive.purge else None
            replica_exists = False
            if replica is not None:
                try:
                    replica_exists = replica.table_exists(table.asset_name)
                except Exception as exc:  # noqa: BLE001 - plan stays usable without the warehouse
                    # e.g. a DuckDB file held by a running load; only the type is shown (no URL).
                    print(
                        f"  the replica cannot be read ({type(exc).__name__}); to purge ignores the replica guard"
                    )
                    replica = None
            if not counts:
                print("  nothing to archive")
            else:
                header = f"  {'partition':<12} {'to archive':>12} {'to purge':>12} {'already archived':>17}"
                print(header + (f" {'in replica':>11}" if replica is not None else ""))
                total = purge_total = 0
                for key, rows in counts:
                    done = 0
                    if store is not None:
                        done = sum(
                            m.rows
                            for m in committed_manifests(store, table.name, datetime.fromisoformat(key))
                        )
                    if not table.archive.purge and done:
                        rows = 0  # archived once already; with purge off the archive never runs it again
                    total += rows
                    purge = rows if table.archive.purge else 0
                    extra = ""
                    if replica is not None:
                        # The purge keeps rows the replica does not hold yet: at most the rows the replica
                        # holds in the month beyond those archived already (the replica keeps those).
                        window = month_window(key)
                        held = (
                            replica.count_rows(table.asset_name, table.time_column, window.start, window.end)
                            if replica_exists
                            else 0
                        )
                        purge = min(purge, max(0, held - done))
                        extra = f" {held:>11,}"
                    purge_total += purge
                    print(f"  {key:<12} {rows:>12,} {purge:>12,} {done:>17,}{extra}")
                print(f"  {'total':<12} {total:>12,} {purge_total:>12,}")
                if replica is not None:
                    print(
                        "  to purge counts only rows the replica can hold: rows it does not hold yet (as archived) "
                        "stay in the source until a later run"
                    )
            if nulls:
                print(f"  {nulls:,} row(s) have NULL {table.time_column} and are never archived")
    finally:
        client.dispose()
        if replica_client is not None:
            replica_client.close()
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Put the archived rows of one partition back into the source."""
    from etl_assets.config import resolve_setting
    from etl_assets.engine.archive import ArchiveError, restore_partition
    from etl_assets.resources.source import LockBusyError
    from etl_assets.resources.store import open_store

    config = _config(args)
    table = _table(config, args.table)
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
                                   month=month, log=lambda m: print(f"  {m}"),
                                   lock_timeout_seconds=config.source.lock_timeout_seconds)  # fmt: skip
    except LockBusyError as exc:
        raise CliError(str(exc), "run restore again once that archive run has finished") from exc
    except ArchiveError as exc:
        hint = (
            f"restore reads a committed archive partition; `etl-assets plan {table.name}` lists the months "
            "still in the source, the Dagster UI the archived ones"
            if str(exc).startswith("no committed archive")
            else "fix what the message names and run restore again; it skips rows already present"
        )
        raise CliError(str(exc), hint) from exc
    finally:
        client.dispose()
    print(f"restored {report.rows_restored:,} row(s) of {table.name} {args.partition} from {report.parts} part(s); "
          f"{report.rows_already_present:,} were already present and left alone")  # fmt: skip
    return 0


def cmd_schema_snapshot(args: argparse.Namespace) -> int:
    """Write the schema contract of each table from the live source."""
    from etl_assets.lib.contract import SchemaContract, write_contract

    config = _config(args)
    tables = _tables(config, args.table)
    client = _source(config)
    try:
        for table in tables:
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
    tables = _tables(config, args.table)
    client = _source(config)
    drift = False
    try:
        for table in tables:
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
    table = _table(config, args.table)
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
    from etl_assets.demo.run import DemoError, run_demo

    if args.config:
        raise CliError(
            "the demo runs on its own bundled config and does not read --config",
            "run `etl-assets demo` without --config; use the other commands with your config",
        )
    try:
        return run_demo(reset=args.reset)
    except DemoError as exc:
        raise CliError(str(exc), exc.hint) from exc


def _common_options(*, top: bool) -> argparse.ArgumentParser:
    """--config and --verbose, accepted before or after the command (`etl-assets plan --verbose`)."""
    common = argparse.ArgumentParser(add_help=False)
    # Sub-commands must not overwrite a value given before the command: their default is "absent".
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    common.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $ETL_ASSETS_CONFIG, else ./etl_assets.yaml, else the bundled demo)",
        **default,
    )
    common.add_argument(
        "--verbose", action="store_true", help="show the traceback when a command fails", **default
    )
    return common


def _command(
    commands: Any, name: str, summary: str, description: str, **kwargs: Any
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        parents=[_common_options(top=False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and `--help`)."""
    parser = argparse.ArgumentParser(
        prog="etl-assets",
        description="Archive old MySQL rows to encrypted S3 Parquet, keep a Redshift replica fresh, and catch "
        "schema drift. Every command reads the same config file as the Dagster code location: --config, "
        "else $ETL_ASSETS_CONFIG, else ./etl_assets.yaml, else the bundled demo.",
        epilog="Errors print one line plus a hint and exit 2; `etl-assets schema diff` exits 1 on drift. "
        "Run `etl-assets COMMAND --help` for the details of a command.",
        parents=[_common_options(top=True)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = _command(
        commands,
        "demo",
        "run the whole pipeline on the embedded demo (no servers needed)",
        "Create an embedded clinic database (SQLite), a local archive folder and a DuckDB warehouse under\n"
        "$ETL_ASSETS_DEMO_DIR (default ./.demo), then run through Dagster the schema snapshot, the replica\n"
        "backfill, the archive of every eligible month and all checks; print a summary per table, then\n"
        "drift one table on purpose to show the failed check, the refused load and the SNS alert.\n"
        "A second run only does what is new. Run history: $DAGSTER_HOME (default <demo dir>/dagster_home).",
    )
    demo.add_argument(
        "--reset", action="store_true", help="delete the demo's data and run history and start over"
    )
    demo.set_defaults(func=cmd_demo)

    plan = _command(
        commands,
        "plan",
        "show rows each eligible archive partition would archive and purge (dry run)",
        "For every eligible archive partition (month older than the table's retention), print how many\n"
        "rows would be archived and purged, and how many are already archived. Reads only: nothing is\n"
        "written, archived or deleted (like pt-archiver --dry-run).",
    )
    plan.add_argument("table", nargs="?", help="one table (default: every table with an archive block)")
    plan.set_defaults(func=cmd_plan)

    restore = _command(
        commands,
        "restore",
        "put the archived rows of one partition back into the source",
        "Read the committed archive of one monthly partition, check every part against its manifest, and\n"
        "insert its rows back into the source table. Rows whose primary key is already present are left\n"
        "alone, so running it twice is safe. Prints how many rows were restored and skipped.",
        epilog="example: etl-assets restore visits 2024-01-01",
    )
    restore.add_argument("table", help="the table, as named in the config")
    restore.add_argument(
        "partition", help="archive partition key: the first day of the month, e.g. 2024-01-01"
    )
    restore.set_defaults(func=cmd_restore)

    schema = _command(
        commands,
        "schema",
        "schema contracts: snapshot the live schema, or diff against it",
        "Schema contracts (schemas/<table>.json, committed with the config) record each source table's\n"
        "columns. Drift checks, the archive and the replica compare the live table with them.",
    )
    schema_commands = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    snapshot = _command(
        schema_commands,
        "snapshot",
        "write schemas/<table>.json from the live source",
        "Read the live schema of each table from the source and write its contract file. Review the change\n"
        "with `git diff` and commit it.",
    )
    snapshot.add_argument("table", nargs="?", help="one table (default: every configured table)")
    snapshot.set_defaults(func=cmd_schema_snapshot)
    diff = _command(
        schema_commands,
        "diff",
        "print drift against the contracts; exit 1 on drift",
        "Compare each table's live schema with its contract and print every change with its\n"
        "classification (additive, breaking, ...). Exit codes: 0 no drift, 1 drift (or no contract yet),\n"
        "2 error. Suitable as a CI step of the application that owns the MySQL schema.",
    )
    diff.add_argument("table", nargs="?", help="one table (default: every configured table)")
    diff.set_defaults(func=cmd_schema_diff)

    ddl = _command(
        commands,
        "ddl",
        "print the replica's CREATE TABLE for review",
        "Print the CREATE SCHEMA and CREATE TABLE statements the replica would use for a table, mapped\n"
        "from its live source schema and the table's replica settings. Executes nothing.",
    )
    ddl.add_argument("table", help="the table, as named in the config")
    ddl.add_argument(
        "--dialect",
        choices=["redshift", "postgresql", "duckdb"],
        help="SQL dialect (default: the configured warehouse's; Redshift without one)",
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
    except BrokenPipeError:  # `etl-assets schema diff | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the one place that turns any error into a readable line
        _print_error(exc)
        if args.verbose:
            traceback.print_exc()
        return EXIT_ERROR


def _print_error(exc: Exception) -> None:
    """`error: <what>` plus `hint: <fix>` on stderr.

    Messages of our own errors (this package's exception types) say what to fix and may list several
    problems (a config file), so they are printed whole; any other exception is cut to its first line,
    after its type (driver errors append the SQL and a link).
    """
    ours = isinstance(exc, (CliError, ConfigError)) or type(exc).__module__.startswith("etl_assets.")
    if isinstance(exc, CliError):
        hint = exc.hint
    elif isinstance(exc, ConfigError):
        hint = "fix the config file named above (README: Configuration)"
    elif type(exc).__module__.startswith(("sqlalchemy", "pymysql", "psycopg")):
        hint = "check that the database in the config's URL is reachable and the credentials are right; --verbose shows the traceback"
    elif type(exc).__module__.startswith(("botocore", "boto3")):
        hint = "check the AWS credentials, region and bucket in the config; --verbose shows the traceback"
    else:
        hint = "re-run with --verbose for the traceback"
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    if not ours:
        lines = [f"{type(exc).__name__}: {lines[0]}"]
    print(f"error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"       {line}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
