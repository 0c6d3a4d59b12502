"""`etl-assets demo`: the whole product on the embedded default, through Dagster, in about a minute.

1. creates the clinic database (SQLite) if it is not there, and snapshots the schema contracts;
2. observes the sources (with the drift check) and reports table sizes;
3. backfills the replica (DuckDB) in one run per table, then archives every eligible month in one run
   per table (to a local folder), then runs the replica checks. Tables without a replica have nothing
   to wait for: they are archived in a second process while the replica loads;
4. prints a summary per table, then drifts `visits` on purpose: the check fails, the load is refused,
   and the alert that would go to SNS is printed; the column is dropped again so a re-run is clean.

Runs are recorded in `$DAGSTER_HOME` (default `<demo dir>/dagster_home`), so the UI shows them.
A second run only does what is new; `--reset` deletes the demo directory and starts over.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shlex
import shutil
import sqlite3
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy import event as sa_event

from etl_assets.assets.naming import archive_key, replica_key, source_key
from etl_assets.config import (
    CONFIG_ENV_VAR,
    DEMO_CONFIG_PATH,
    ProjectConfig,
    TableConfig,
    load_config,
    utcnow,
)
from etl_assets.schedules import CHECKS_JOB

DEMO_DIR_VAR = "ETL_ASSETS_DEMO_DIR"
_INSTANCE_YAML = """\
# Written by `etl-assets demo`: a local SQLite instance for the demo's run history.
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 2
"""


class DemoError(Exception):
    """A reason the demo cannot start; `etl-assets` prints it as one line plus the hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def demo_dir() -> Path:
    """Where the demo keeps its database, archive, warehouse and Dagster history."""
    return Path(os.environ.get(DEMO_DIR_VAR, ".demo")).resolve()


_STARTED = time.monotonic()


def _say(message: str = "") -> None:
    text = message.lstrip("\n")
    for _ in range(len(message) - len(text)):
        print(flush=True)
    print(f"[{time.monotonic() - _STARTED:5.1f}s] {text}" if text else "", flush=True)


def _quiet() -> None:
    """The terminal gets the demo's narration only: run logs are in the instance, for the UI.

    Warnings (Dagster's beta/preview notices, library deprecations) are for developers of this
    package, not for someone watching the demo; `python -W ...` / PYTHONWARNINGS still win.
    """
    if not sys.warnoptions:
        warnings.simplefilter("ignore")


# -- the demo's Dagster history: fast and disposable --------------------------------------------------------

_HISTORY_DIRS: list[str] = []


def _no_fsync_for_history(dbapi_connection: Any, _record: Any) -> None:
    if not _HISTORY_DIRS or not isinstance(dbapi_connection, sqlite3.Connection):
        return
    try:
        files = [str(row[2] or "") for row in dbapi_connection.execute("PRAGMA database_list")]
    except sqlite3.Error:
        return
    if any(f.startswith(prefix) for f in files for prefix in _HISTORY_DIRS):
        dbapi_connection.execute("PRAGMA synchronous=OFF")


def _fast_history(home: Path) -> None:
    """Skip fsync on the SQLite files of the demo's Dagster instance (and only those).

    Dagster's SQLite storage writes every event in its own transaction on a new connection; a range
    run of 1,096 daily partitions stores several thousand events, and on a VM disk their fsyncs were
    a third of the demo's wall time. The demo's history is disposable (`--reset`), and SQLite stays
    consistent when the process dies; only an OS crash could lose the last events.
    """
    _HISTORY_DIRS[:] = [str(home) + os.sep]
    if not sa_event.contains(sa.engine.Engine, "connect", _no_fsync_for_history):
        sa_event.listen(sa.engine.Engine, "connect", _no_fsync_for_history)


def _prepare(reset: bool) -> tuple[Path, dg.DagsterInstance]:
    root = demo_dir()
    home = Path(os.environ.get("DAGSTER_HOME") or root / "dagster_home").resolve()
    if reset and not home.is_relative_to(root):
        raise DemoError(
            f"DAGSTER_HOME={home} is outside the demo directory {root}: --reset would delete the demo's data "
            "but not its run history there, and the new demo would then skip every month as already archived",
            f"unset DAGSTER_HOME (the demo then keeps its history in {root / 'dagster_home'}), "
            "or delete that instance yourself before --reset",
        )
    if reset and root.exists():
        shutil.rmtree(root)
        _say(f"removed {root}")
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(_INSTANCE_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ[DEMO_DIR_VAR] = str(root)
    os.environ[CONFIG_ENV_VAR] = str(DEMO_CONFIG_PATH)
    if home.is_relative_to(
        root
    ):  # the demo's own history; an instance named by DAGSTER_HOME keeps its fsyncs
        _fast_history(home)
    return root, dg.DagsterInstance.get()


# Run logs are kept in the instance for the UI; the terminal only shows warnings and the narration.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# A single-run backfill then records one "planned" event for its whole range instead of one per
# partition (1,096 for three years of daily replica partitions); Dagster reads this at run creation.
_SUBSET_PLANNED_EVENTS = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[dg.AssetKey], *,
         partition_range: tuple[str, str] | None = None, partition: str | None = None,
         run_config: dict | None = None) -> dg.ExecuteInProcessResult:  # fmt: skip
    job = defs.resolve_implicit_job_def_def_for_assets(selection)
    assert job is not None
    tags = {"etl_assets/demo": "true"}
    planned: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if partition_range:
        tags |= {"dagster/asset_partition_range_start": partition_range[0],
                 "dagster/asset_partition_range_end": partition_range[1]}  # fmt: skip
        planned = _env(_SUBSET_PLANNED_EVENTS, "true")
    with planned:
        return job.execute_in_process(instance=instance, asset_selection=selection, raise_on_error=False,
                                      tags=tags, partition_key=partition, run_config=run_config or _QUIET)  # fmt: skip


def _missing_range(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey,
                   always_last: bool) -> tuple[tuple[str, str] | None, bool]:  # fmt: skip
    """The span of partitions to run, and whether any of them is new (not just the reloaded last one)."""
    partitions = defs.resolve_assets_def(key).partitions_def
    assert partitions is not None
    keys = partitions.get_partition_keys()
    done = instance.get_materialized_partitions(key)
    missing = [k for k in keys if k not in done]
    new = bool(missing)
    if always_last and keys and keys[-1] not in missing:
        missing.append(keys[-1])  # the current day keeps filling: reload it on every run
    if not missing:
        return None, False
    return (missing[0], missing[-1]), new


def _snapshot(config: ProjectConfig) -> bool:
    """Write the contracts that are missing (`etl-assets schema snapshot`); False when that failed."""
    from etl_assets.cli import main as cli_main

    missing = [t.name for t in config.tables if not config.contract_path(t).exists()]
    if not missing:
        return True
    _say(f"snapshotting the schema contracts of {', '.join(missing)} (etl-assets schema snapshot) ...")
    for name in missing:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):  # errors still go to stderr
            code = cli_main(["--config", str(DEMO_CONFIG_PATH), "schema", "snapshot", name])
        if code:
            return False
        for line in output.getvalue().splitlines():
            if line.startswith("wrote "):
                _say(f"  {line}")
    return True


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])


def _metadata_max(result: dg.ExecuteInProcessResult, name: str) -> dict[str, int]:
    # A single-run range records one materialization per partition, each with the run's totals.
    totals: dict[str, int] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if name not in materialization.metadata:
            continue
        table = materialization.asset_key.path[-1]
        totals[table] = max(totals.get(table, 0), int(materialization.metadata[name].value))  # type: ignore[arg-type]
    return totals


def _failure_message(event: dg.DagsterEvent) -> str:
    """What a failed step says: the `dg.Failure` description, else the error's first line."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    if data.error is not None and data.error.message.strip():
        return data.error.message.strip().splitlines()[0]
    return "see the run log in the UI"


def _report_failures(result: dg.ExecuteInProcessResult, what: str, failures: list[str]) -> None:
    if result.success:
        return
    failures.append(what)
    for event in result.get_step_failure_events():
        _say(f"  {what} failed: {_failure_message(event)}")


def _archive_table(defs: dg.Definitions, instance: dg.DagsterInstance, table: TableConfig,
                   failures: list[str], *, note: str = "") -> tuple[dict[str, int], bool]:  # fmt: skip
    """Archive every eligible month of `table` not archived yet, in one run; (rows purged, ran)."""
    key = archive_key(table)
    span, _ = _missing_range(defs, instance, key, always_last=False)
    if not span:
        return {}, False
    _say(f"archive/{table.asset_name}: archiving months {span[0]} .. {span[1]} in one run{note} ...")
    result = _run(defs, instance, [key], partition_range=span)
    _report_failures(result, f"archive/{table.asset_name}", failures)
    purged = _metadata_max(result, "rows_purged")
    if result.success:
        _say(
            f"archive/{table.asset_name}: done, {purged.get(table.asset_name, 0):,} rows archived and purged"
        )
    return purged, True


def _archive_in_second_process(names: list[str], started: float) -> tuple[dict[str, int], list[str], bool]:
    """Entry point of the second process: archive tables that have no replica to wait for."""
    global _STARTED
    _STARTED = started  # the monotonic clock is shared by processes: one timeline in the narration
    _quiet()
    home = Path(os.environ["DAGSTER_HOME"])
    if home.is_relative_to(demo_dir()):
        _fast_history(home)
    from etl_assets.definitions import build_definitions

    config = load_config(DEMO_CONFIG_PATH)
    defs = build_definitions(config)
    instance = dg.DagsterInstance.get()
    purged: dict[str, int] = {}
    failures: list[str] = []
    ran = False
    for name in names:
        table_purged, table_ran = _archive_table(defs, instance, config.table(name), failures,
                                                 note=", in a second process")  # fmt: skip
        purged |= table_purged
        ran = ran or table_ran
    return purged, failures, ran


def run_demo(*, reset: bool = False) -> int:
    """Run the demo; returns the process exit code.

    Raises:
        DemoError: the demo cannot start (printed by `etl-assets` as one line plus a hint).
    """
    global _STARTED
    _STARTED = time.monotonic()
    with warnings.catch_warnings():
        _quiet()
        return _run_demo(reset)


def _run_demo(reset: bool) -> int:
    started = _STARTED
    root, instance = _prepare(reset)
    database = root / "clinic.sqlite"
    if not database.exists():
        from etl_assets.demo.data import create_clinic

        _say("creating the demo clinic database (SQLite, three years of visits and audit log) ...")
        counts = create_clinic(database, now=utcnow().replace(tzinfo=None))
        _say("  " + ", ".join(f"{name}: {rows:,} rows" for name, rows in counts.items()))
    config = load_config(DEMO_CONFIG_PATH)
    if not _snapshot(config):
        _say("FAILED: could not snapshot the schema contracts (the error is above)")
        return 1
    before = {t.name: _count(database, t.name) for t in config.tables}

    # Definitions are built after the snapshot: partitions start at the contract's oldest row.
    from etl_assets.definitions import build_definitions

    defs = build_definitions(config)
    failures: list[str] = []

    _say("observing the sources (schema drift check) and measuring table sizes ...")
    observed = _run(
        defs, instance, [source_key(t) for t in config.tables] + [dg.AssetKey("source_table_sizes")]
    )
    _report_failures(observed, "observation", failures)

    # Archive tables without a replica in a second process while this one loads the replica: their
    # purge waits for nothing, and two cores finish the first run in about half the time.
    independent = [t for t in config.tables if t.archive is not None and t.replica is None]
    pending = [t.name for t in independent if _missing_range(defs, instance, archive_key(t), False)[0]]
    pool = future = None
    if pending:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        future = pool.submit(_archive_in_second_process, pending, _STARTED)

    did_something = False
    purged: dict[str, int] = {}
    try:
        for table in config.tables:
            if table.replica is None:
                continue
            key = replica_key(table)
            span, new = _missing_range(defs, instance, key, always_last=True)
            if span:
                if new:
                    _say(
                        f"replica/{table.asset_name}: loading partitions {span[0]} .. {span[1]} in one run ..."
                    )
                else:
                    _say(f"replica/{table.asset_name}: reloading the current partition {span[1]} ...")
                result = _run(defs, instance, [key], partition_range=span)
                did_something = did_something or new
                _report_failures(result, f"replica/{table.asset_name}", failures)
        for table in config.tables:
            if table.archive is not None and table.replica is not None:
                table_purged, ran = _archive_table(defs, instance, table, failures)
                purged |= table_purged
                did_something = did_something or ran
        if future is not None:
            try:
                child_purged, child_failures, ran = future.result()
            except Exception as exc:  # noqa: BLE001 - report the second process's crash, then go on
                _say(f"  archive of {', '.join(pending)} failed in the second process: {exc}")
                failures.append(f"archive/{', '.join(pending)}")
            else:
                purged |= child_purged
                failures += child_failures
                did_something = did_something or ran
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    _say("running the checks (schema drift, replica schema, row counts, freshness) ...")
    checks = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance, raise_on_error=False,
                                                                 run_config=_QUIET, tags={"etl_assets/demo": "true"})  # fmt: skip
    _report_failures(checks, "checks", failures)

    _summary(config, defs, instance, root, before, purged)
    if not did_something:
        _say(
            "nothing new to do: every eligible month is archived and the replica is current (today reloaded)"
        )
    _drift_showcase(config, defs, instance, database)
    elapsed = time.monotonic() - started
    _say(f"\ndone in {elapsed:.0f}s. Open the Dagster UI with the demo's run history:")
    for command in _ui_commands(root):
        print(f"  {command}", flush=True)
    if failures:
        _say(f"FAILED: {', '.join(failures)} (see the run logs in the UI)")
        return 1
    return 0


def _ui_commands(root: Path) -> list[str]:
    """How to open the UI on this demo's history, from any directory (and `make dev` in the repository)."""
    home = Path(os.environ["DAGSTER_HOME"])
    dagster = Path(sys.executable).with_name("dagster")
    env = " ".join(
        f"{name}={shlex.quote(str(value))}"
        for name, value in (("DAGSTER_HOME", home), (DEMO_DIR_VAR, root), (CONFIG_ENV_VAR, DEMO_CONFIG_PATH))
    )
    command = f"{env} {shlex.quote(str(dagster)) if dagster.exists() else 'dagster'} dev -m etl_assets.definitions -h 127.0.0.1 -p 3000"
    cwd = Path.cwd()
    in_repo = (cwd / "Makefile").is_file() and (cwd / "workspace.yaml").is_file()
    if in_repo and root == (cwd / ".demo").resolve() and home == root / "dagster_home":
        return ["make dev", f"(or: {command})"]
    return [command]


def _summary(config: ProjectConfig, defs: dg.Definitions, instance: dg.DagsterInstance, root: Path,
             before: dict[str, int], purged: dict[str, int]) -> None:  # fmt: skip
    from etl_assets.engine.archive import committed_manifests
    from etl_assets.resources.store import LocalStore

    store = LocalStore(root / "archive")
    now_rows = {t.name: _count(root / "clinic.sqlite", t.name) for t in config.tables}
    archived: dict[str, int] = {}
    for table in config.tables:
        total = 0
        for folder in (root / "archive" / table.name).glob("year=*/month=*"):
            year, month = int(folder.parent.name[5:]), int(folder.name[6:])
            total += sum(
                m.rows for m in committed_manifests(store, table.name, datetime(year, month, 1, tzinfo=UTC))
            )
        archived[table.name] = total
    replica_rows = _replica_counts(root, config)
    passed: dict[str, list[bool]] = {}
    graph = defs.resolve_asset_graph()
    for check_key in graph.asset_check_keys:
        record = instance.get_latest_asset_check_evaluation_record(check_key)
        if record is not None and record.evaluation is not None:
            passed.setdefault(check_key.asset_key.path[-1], []).append(bool(record.evaluation.passed))
    _say("\nsummary:")
    print(
        "| table | rows before | archived (total) | purged (this run) | rows now | in replica | checks passed |",
        flush=True,
    )
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for table in config.tables:
        results = passed.get(table.asset_name, [])
        replica = f"{replica_rows[table.name]:,}" if table.name in replica_rows else "-"
        print(f"| {table.name} | {before[table.name]:,} | {archived[table.name]:,} | {purged.get(table.asset_name, 0):,} | "
              f"{now_rows[table.name]:,} | {replica} | {sum(results)}/{len(results)} |", flush=True)  # fmt: skip
    print(flush=True)
    print(
        f"archive folder: {root / 'archive'} (Hive layout: <table>/year=YYYY/month=MM/*.parquet + manifests)",
        flush=True,
    )
    print(f"warehouse:      {root / 'warehouse.duckdb'} (schema reporting)", flush=True)


def _replica_counts(root: Path, config: ProjectConfig) -> dict[str, int]:
    import duckdb

    counts: dict[str, int] = {}
    path = root / "warehouse.duckdb"
    if not path.exists():
        return counts
    with duckdb.connect(str(path), read_only=True) as con:
        for table in config.tables:
            if table.replica is None:
                continue
            try:
                row = con.execute(f'SELECT COUNT(*) FROM "reporting"."{table.asset_name}"').fetchone()
                counts[table.name] = int(row[0]) if row else 0
            except duckdb.Error:
                counts[table.name] = 0
    return counts


def _drift_showcase(
    config: ProjectConfig, defs: dg.Definitions, instance: dg.DagsterInstance, database: Path
) -> None:
    from etl_assets.lib.alerts import check_failed_alert

    table = config.table("visits")
    _say("\n--- schema drift: someone adds a column to visits upstream ---")
    with sqlite3.connect(database) as conn:
        conn.execute("ALTER TABLE visits ADD COLUMN insurance_code VARCHAR(20)")
    try:
        observed = _run(
            defs, instance, [source_key(table)], run_config=_SILENT
        )  # the failed check is the point
        evaluation = next(e for e in observed.get_asset_check_evaluations() if e.check_name == "schema_drift")
        _say(
            f"check schema_drift on source/visits: {'passed' if evaluation.passed else 'FAILED'}: {evaluation.description}"
        )
        key = replica_key(table)
        partitions = defs.resolve_assets_def(key).partitions_def
        assert partitions is not None
        last = partitions.get_last_partition_key()
        blocked = _run(defs, instance, [key], partition=last, run_config=_SILENT)  # the failure is the point
        failure = next(iter(blocked.get_step_failure_events()), None)
        message = _failure_message(failure) if failure is not None else "the load ran"
        _say(f"replica/visits {last}: {'refused' if not blocked.success else 'ran'}:")
        print(textwrap.indent(textwrap.fill(message, width=100), "    "), flush=True)
        alert = check_failed_alert(
            source_name=config.source.group_name,
            table=table.name,
            asset_key="source/visits",
            check_name="schema_drift",
            description=evaluation.description or "",
            metadata={k: getattr(v, "value", v) for k, v in evaluation.metadata.items()},
            run_id=observed.run_id,
            partition=None,
            ui_url="http://127.0.0.1:3000",
        )
        _say("alert that would be published to SNS (set alerts.sns_topic_arn to send it):")
        print(f"  Subject: {alert.subject}", flush=True)
        print(textwrap.indent(json.dumps(alert.body, indent=2, default=str), "  "), flush=True)
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute("ALTER TABLE visits DROP COLUMN insurance_code")
        recovered = _run(defs, instance, [source_key(table)])
        ok = all(e.passed for e in recovered.get_asset_check_evaluations())
        _say(
            f"column dropped again; schema_drift {'passes' if ok else 'still fails'} (the recovery alert would be sent)"
        )
        if ok:
            # Load the refused partition again (with its checks) so the UI ends where production would.
            key = replica_key(table)
            partitions = defs.resolve_assets_def(key).partitions_def
            assert partitions is not None
            last = partitions.get_last_partition_key()
            reloaded = _run(defs, instance, [key], partition=last)
            _say(f"replica/visits {last}: {'loaded again' if reloaded.success else 'still failing'}")
