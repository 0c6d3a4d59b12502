"""`etl-assets demo`: the whole product on the embedded default, through Dagster, in about a minute.

1. creates the clinic database (SQLite) if it is not there, and snapshots the schema contracts;
2. observes the sources (with the drift check) and reports table sizes;
3. backfills the replica (DuckDB) in one run per table, then archives every eligible month in one run
   per table (to a local folder), then runs the replica checks;
4. prints a summary per table, then drifts `visits` on purpose: the check fails, the load is refused,
   and the alert that would go to SNS is printed; the column is dropped again so a re-run is clean.

Runs are recorded in `$DAGSTER_HOME` (default `.demo/dagster_home`), so `make dev` shows them.
A second run only does what is new; `--reset` deletes the demo directory and starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from etl_assets.assets.naming import archive_key, replica_key, source_key
from etl_assets.config import CONFIG_ENV_VAR, DEMO_CONFIG_PATH, ProjectConfig, load_config, utcnow
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


def demo_dir() -> Path:
    """Where the demo keeps its database, archive, warehouse and Dagster history."""
    return Path(os.environ.get(DEMO_DIR_VAR, ".demo")).resolve()


_STARTED = time.monotonic()


def _say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.1f}s] {message}", flush=True)


def _prepare(reset: bool) -> tuple[Path, dg.DagsterInstance]:
    root = demo_dir()
    if reset and root.exists():
        shutil.rmtree(root)
        _say(f"removed {root}")
    home = Path(os.environ.get("DAGSTER_HOME") or root / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(_INSTANCE_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ[DEMO_DIR_VAR] = str(root)
    os.environ[CONFIG_ENV_VAR] = str(DEMO_CONFIG_PATH)
    return root, dg.DagsterInstance.get()


# Run logs are kept in the instance for the UI; the terminal only shows warnings and the narration.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[dg.AssetKey], *,
         partition_range: tuple[str, str] | None = None, partition: str | None = None,
         run_config: dict | None = None) -> dg.ExecuteInProcessResult:  # fmt: skip
    job = defs.resolve_implicit_job_def_def_for_assets(selection)
    assert job is not None
    tags = {"etl_assets/demo": "true"}
    if partition_range:
        tags |= {"dagster/asset_partition_range_start": partition_range[0],
                 "dagster/asset_partition_range_end": partition_range[1]}  # fmt: skip
    return job.execute_in_process(instance=instance, asset_selection=selection, raise_on_error=False, tags=tags,
                                  partition_key=partition, run_config=run_config or _QUIET)  # fmt: skip


def _missing_range(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey,
                   always_last: bool) -> tuple[str, str] | None:  # fmt: skip
    partitions = defs.resolve_assets_def(key).partitions_def
    assert partitions is not None
    keys = partitions.get_partition_keys()
    done = instance.get_materialized_partitions(key)
    missing = [k for k in keys if k not in done]
    if always_last and keys and keys[-1] not in missing:
        missing.append(keys[-1])  # the current day keeps filling: reload it on every run
    if not missing:
        return None
    return missing[0], missing[-1]


def _snapshot(config: ProjectConfig) -> None:
    from etl_assets.cli import main as cli_main

    missing = [t.name for t in config.tables if not config.contract_path(t).exists()]
    for name in missing:
        cli_main(["schema", "snapshot", name])


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


def _report_failures(result: dg.ExecuteInProcessResult, what: str, failures: list[str]) -> None:
    if result.success:
        return
    failures.append(what)
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        _say(f"  {what} failed: {error.message.strip().splitlines()[0] if error else 'see the run log'}")


def run_demo(*, reset: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    started = time.monotonic()
    # Run logs go to the Dagster UI; the terminal gets the demo's own narration and warnings.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    root, instance = _prepare(reset)
    database = root / "clinic.sqlite"
    if not database.exists():
        from etl_assets.demo.data import create_clinic

        _say("creating the demo clinic database (SQLite, three years of visits and audit log) ...")
        counts = create_clinic(database, now=utcnow().replace(tzinfo=None))
        _say("  " + ", ".join(f"{name}: {rows:,} rows" for name, rows in counts.items()))
    config = load_config(DEMO_CONFIG_PATH)
    _snapshot(config)
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

    did_something = False
    for table in config.tables:
        if table.replica is None:
            continue
        key = replica_key(table)
        span = _missing_range(defs, instance, key, always_last=True)
        if span:
            _say(f"replica/{table.asset_name}: loading partitions {span[0]} .. {span[1]} in one run ...")
            result = _run(defs, instance, [key], partition_range=span)
            did_something = True
            _report_failures(result, f"replica/{table.asset_name}", failures)
    purged: dict[str, int] = {}
    for table in config.tables:
        if table.archive is None:
            continue
        key = archive_key(table)
        span = _missing_range(defs, instance, key, always_last=False)
        if not span:
            continue
        _say(f"archive/{table.asset_name}: archiving months {span[0]} .. {span[1]} in one run ...")
        result = _run(defs, instance, [key], partition_range=span)
        did_something = True
        _report_failures(result, f"archive/{table.asset_name}", failures)
        purged |= _metadata_max(result, "rows_purged")
    _say("running the checks (schema drift, replica schema, row counts, freshness) ...")
    checks = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance, raise_on_error=False,
                                                                 run_config=_QUIET, tags={"etl_assets/demo": "true"})  # fmt: skip
    _report_failures(checks, "checks", failures)

    _summary(config, defs, instance, root, before, purged, checks)
    if not did_something:
        _say(
            "nothing new to do: every eligible month is archived and the replica is current (today reloaded)"
        )
    _drift_showcase(config, defs, instance, database)
    elapsed = time.monotonic() - started
    _say(f"\ndone in {elapsed:.0f}s. Open the UI with the demo's history:\n  make dev    "
         f"(or: DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml)")  # fmt: skip
    if failures:
        _say(f"FAILED: {', '.join(failures)} (see the run logs in the UI)")
        return 1
    return 0


def _summary(config: ProjectConfig, defs: dg.Definitions, instance: dg.DagsterInstance, root: Path,
             before: dict[str, int], purged: dict[str, int], checks: dg.ExecuteInProcessResult) -> None:  # fmt: skip
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
    del checks
    _say(
        "\n| table | rows before | archived (total) | purged (this run) | rows now | in replica | checks passed |"
    )
    _say("|---|---:|---:|---:|---:|---:|---:|")
    for table in config.tables:
        results = passed.get(table.asset_name, [])
        replica = f"{replica_rows[table.name]:,}" if table.name in replica_rows else "-"
        _say(f"| {table.name} | {before[table.name]:,} | {archived[table.name]:,} | {purged.get(table.asset_name, 0):,} | "
             f"{now_rows[table.name]:,} | {replica} | {sum(results)}/{len(results)} |")  # fmt: skip
    _say(
        f"\narchive folder: {root / 'archive'} (Hive layout: <table>/year=YYYY/month=MM/*.parquet + manifests)"
    )
    _say(f"warehouse:      {root / 'warehouse.duckdb'} (schema reporting)")


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
                counts[table.name] = int(
                    con.execute(f'SELECT COUNT(*) FROM "reporting"."{table.asset_name}"').fetchone()[0]
                )  # type: ignore[index]
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
        observed = _run(defs, instance, [source_key(table)])
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
        message = (
            failure.step_failure_data.error.message.splitlines()[0]
            if failure and failure.step_failure_data.error
            else ""
        )
        _say(f"replica/visits {last}: {'refused' if not blocked.success else 'ran'}: {message[:240]}")
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
        _say(f"  Subject: {alert.subject}")
        _say("  " + json.dumps(alert.body, indent=2, default=str).replace("\n", "\n  "))
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute("ALTER TABLE visits DROP COLUMN insurance_code")
        recovered = _run(defs, instance, [source_key(table)])
        ok = all(e.passed for e in recovered.get_asset_check_evaluations())
        _say(
            f"column dropped again; schema_drift {'passes' if ok else 'still fails'} (the recovery alert would be sent)"
        )
