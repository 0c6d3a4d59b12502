"""`etl-assets` against real MariaDB, the local S3 endpoint and PostgreSQL: in-process and as the console script.

Each test writes its own config file in tmp_path (fresh database, bucket and schema). Commands run through
`etl_assets.cli.main` (captured with capsys) and, where the exit code matters to a shell or a CI pipeline,
as a real subprocess of the installed `etl-assets` script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
import sqlglot

from etl_assets.cli import main
from etl_assets.config import CONFIG_ENV_VAR, load_config
from etl_assets.engine.archive import ArchiveJob
from etl_assets.lib.contract import SchemaContract, read_contract
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import open_store
from etl_assets.resources.warehouse import ReplicaKeys, WarehouseClient
from etl_assets_tests.support import replicate, seed_visits

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).with_name("etl-assets")
ROWS_PER_MONTH = 240
EXTRA_JANUARY = 13  # January gets more rows than its neighbours, so a count in the wrong row shows
NULL_ROWS = 3
JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
ALL_ROWS = "SELECT * FROM visits ORDER BY id"
JANUARY_ROWS = (
    "SELECT * FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01' ORDER BY id"
)


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every command gets --config explicitly; nothing from the caller's environment or directory leaks in."""
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def project(
    tmp_path: Path, mysql_url: str, s3_bucket: str, pg_server_url: str, pg_schema: str
) -> dict[str, Any]:
    """Seeded `visits` (Dec 2022 - Feb 2023), a config file pointing at it, the bucket and the PG schema."""
    seed_visits(mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=ROWS_PER_MONTH,
                null_time_rows=NULL_ROWS)  # fmt: skip
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO visits (patient_id, status, amount, notes, payload, is_paid, created_at, updated_at) "
                "SELECT patient_id, status, amount, notes, payload, is_paid, created_at, "
                "       updated_at + INTERVAL 1 SECOND FROM visits "
                "WHERE updated_at > '2023-01-02' AND updated_at < '2023-01-30' ORDER BY id LIMIT :n"
            ),
            {"n": EXTRA_JANUARY},
        )
    engine.dispose()
    config = tmp_path / "etl_assets.yaml"
    config.write_text(
        f"""\
source:
  url: '{mysql_url}'
archive:
  url: 's3://{s3_bucket}/archive'
  region: us-east-1
warehouse:
  url: '{pg_server_url}'
  schema: {pg_schema}
tables:
  - name: visits
    archive: {{retention: 1 year, batch_size: 250, part_rows: 1000}}
    replica: {{partition: daily, boolean_columns: [is_paid]}}
""",
        encoding="utf-8",
    )
    return {"config": config, "url": mysql_url, "bucket": s3_bucket, "schema": pg_schema, "dir": tmp_path}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a real process (it inherits AWS_ENDPOINT_URL and friends)."""
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV_VAR}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def rows(url: str, query: str = ALL_ROWS) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        result = [tuple(r) for r in conn.execute(sa.text(query))]
    engine.dispose()
    return result


def bucket_keys(bucket: str) -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]  # fmt: skip


def month_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        result = conn.execute(
            sa.text(
                "SELECT DATE_FORMAT(updated_at, '%Y-%m-01'), COUNT(*) FROM visits "
                "WHERE updated_at IS NOT NULL GROUP BY 1 ORDER BY 1"
            )
        )
        counts = {str(k): int(n) for k, n in result}
    engine.dispose()
    return counts


# -- help ------------------------------------------------------------------------------------------------


HELP = {
    ("demo",): ["embedded", "SQLite", "DuckDB", "--reset", "start over"],
    ("plan",): ["eligible", "archived and purged", "nothing is", "written"],
    ("restore",): ["back into the source", "already present", "PARTITION".lower(), "2024-01-01"],
    ("schema",): ["snapshot", "diff", "contract"],
    ("schema", "snapshot"): ["live", "contract", "git diff"],
    ("schema", "diff"): ["drift", "1 drift", "0 no drift", "CI"],
    ("ddl",): ["CREATE TABLE", "replica", "--dialect", "redshift"],
}


def test_help_says_what_every_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    top = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for command in ("demo", "plan", "restore", "schema", "ddl", "--config", "--verbose"):
        assert command in top
    assert "dry run" in top and "exits 1 on drift" in top

    for command, phrases in HELP.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for phrase in phrases:
            assert phrase in text, (
                f"`etl-assets {' '.join(command)} --help` should mention {phrase!r}:\n{text}"
            )
        assert "--verbose" in text and "--config" in text, "global options also work after the command"


def test_console_script_is_installed_and_runs(tmp_path: Path) -> None:
    assert SCRIPT.exists(), f"{SCRIPT} missing: `pip install -e .` installs the etl-assets console script"
    done = script("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: etl-assets")
    bad = script("no-such-command", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# -- plan ------------------------------------------------------------------------------------------------


def test_plan_prints_exact_counts_per_eligible_partition_and_touches_nothing(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url, config = project["url"], str(project["config"])
    expected = month_counts(url)
    assert expected == {"2022-12-01": 240, "2023-01-01": 253, "2023-02-01": 240}
    before = rows(url)

    code, out, err = cli(capsys, "--config", config, "plan")
    assert code == 0, err
    lines = out.splitlines()
    partition_lines = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  20")}
    # The table has a replica, not loaded yet: the purge would keep every row (replica first).
    assert partition_lines == {k: [f"{n:,}", "0", "0", "0"] for k, n in expected.items()}
    total = sum(expected.values())
    assert f"  total{'':<8}{total:>12,}{0:>13,}" in out
    assert "to purge counts only rows the replica can hold" in out
    assert f"{NULL_ROWS} row(s) have NULL updated_at and are never archived" in out
    assert "visits: retention 1 year, purge on" in out

    # Same through the console script, for one table; --verbose after the command is accepted.
    done = script("--config", config, "plan", "visits", "--verbose", cwd=project["dir"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == out

    assert rows(url) == before, "plan changed the source"
    assert bucket_keys(project["bucket"]) == [], "plan wrote to the archive"


def test_plan_counts_to_purge_only_rows_the_replica_holds(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(project["config"])
    replicate(project["url"], config.warehouse.url, project["schema"], config.table("visits"), JAN_2023)  # type: ignore[union-attr]
    expected = month_counts(project["url"])
    code, out, err = cli(capsys, "--config", str(project["config"]), "plan")
    assert code == 0, err
    partition_lines = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  20")
    }
    january = expected["2023-01-01"]
    assert partition_lines["2023-01-01"] == [f"{january:,}", f"{january:,}", "0", f"{january:,}"]
    assert partition_lines["2022-12-01"][1] == "0" and partition_lines["2023-02-01"][1] == "0"
    # What plan promised is what the archive purges.
    assert archive_january(project, guarded=True) == january


def test_plan_after_archive_shows_what_is_left(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    archive_january(project)
    code, out, _ = cli(capsys, "--config", str(project["config"]), "plan")
    assert code == 0
    assert "2023-01-01" not in out, "an archived and purged month has nothing left to archive"
    assert "  2022-12-01" in out and "  2023-02-01" in out


# -- schema ----------------------------------------------------------------------------------------------


def test_schema_snapshot_writes_a_contract_that_round_trips(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "--config", str(project["config"]), "schema", "snapshot", "visits")
    assert code == 0, err
    path = project["dir"] / "schemas" / "visits.json"
    assert f"wrote {path} (9 columns, primary key id)" in out
    contract = read_contract(path)
    assert contract is not None
    assert (
        contract.table == "visits"
        and contract.primary_key == ("id",)
        and contract.time_column == "updated_at"
    )
    assert contract.column_names == [
        "id", "patient_id", "status", "amount", "notes", "payload", "is_paid", "created_at", "updated_at",
    ]  # fmt: skip
    assert contract.oldest_row == "2022-12-01"
    # Round trip: parse -> serialize gives the very bytes on disk; parse again gives an equal contract.
    text = path.read_text(encoding="utf-8")
    assert contract.to_json() + "\n" == text
    assert SchemaContract.from_json(contract.to_json(), path=str(path)) == contract
    client = SourceClient(project["url"])
    live = client.reflect("visits")
    client.dispose()
    assert contract.to_table().columns == live.columns
    json.loads(text)  # plain JSON, reviewable in a PR

    # Snapshot of every table (no argument) rewrites the same file identically.
    code, _, _ = cli(capsys, "--config", str(project["config"]), "schema", "snapshot")
    assert code == 0 and path.read_text(encoding="utf-8") == text


def test_schema_diff_exits_0_without_drift_and_1_after_a_column_is_added(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(project["config"])
    code, out, _ = cli(capsys, "--config", config, "schema", "diff")
    assert code == 1 and "no contract" in out and "etl-assets schema snapshot visits" in out

    assert cli(capsys, "--config", config, "schema", "snapshot")[0] == 0
    code, out, err = cli(capsys, "--config", config, "schema", "diff", "visits")
    assert (code, out.strip()) == (0, "visits: no drift"), err

    engine = sa.create_engine(project["url"])
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE visits ADD COLUMN x INT")
    engine.dispose()

    code, out, err = cli(capsys, "--config", config, "schema", "diff")
    assert code == 1, err
    assert "visits: DRIFT (additive; blocks loads): 1 column: added `x` (additive)" in out
    assert "| `x` | added |" in out and "additive" in out

    # What a CI pipeline of the schema-owning application sees: the exit code of the real command.
    done = script("--config", config, "schema", "diff", cwd=project["dir"])
    assert done.returncode == 1, done.stderr
    assert "added `x`" in done.stdout and done.stderr == ""


# -- ddl -------------------------------------------------------------------------------------------------


def test_ddl_prints_redshift_create_table_for_review(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    schema = project["schema"]
    code, out, err = cli(capsys, "--config", str(project["config"]), "ddl", "visits", "--dialect", "redshift")
    assert code == 0, err
    assert f'CREATE TABLE IF NOT EXISTS "{schema}"."visits" (' in out
    assert f'"{schema}.visits"' not in out
    assert '"id" DECIMAL(20,0) NOT NULL' in out, "BIGINT UNSIGNED needs 20 digits"
    assert '"notes" VARCHAR(1020)' in out, "varchar(255) utf8mb4 is up to 1,020 bytes in Redshift"
    assert '"is_paid" BOOLEAN' in out, "boolean_columns from the table's replica settings apply"
    statements = [s for s in sqlglot.parse(out, read="redshift") if s is not None]
    assert len(statements) == 2
    created = statements[1]
    assert isinstance(created, sqlglot.exp.Create)
    table = created.find(sqlglot.exp.Table)
    assert table is not None and (table.db, table.name) == (schema, "visits")

    # The default dialect is the configured warehouse's (PostgreSQL here).
    code, out, _ = cli(capsys, "--config", str(project["config"]), "ddl", "visits")
    assert code == 0 and '"notes" VARCHAR(255)' in out and '"payload" JSONB' in out
    sqlglot.parse(out, read="postgres")


# -- restore ---------------------------------------------------------------------------------------------


def archive_january(project: dict[str, Any], *, guarded: bool = False) -> int:
    """Archive (and purge) January 2023 with the engine, as `archive/visits` would (with the replica
    guard if `guarded`); returns rows moved."""
    config = load_config(project["config"])
    table = config.table("visits")
    client = SourceClient(project["url"])
    warehouse = WarehouseClient(url=config.warehouse.url, schema=project["schema"])  # type: ignore[union-attr]
    try:
        report = ArchiveJob(
            source=client,
            store=open_store(f"s3://{project['bucket']}/archive", region="us-east-1"),
            table=table,
            source_table=client.reflect(table.name, primary_key=table.primary_key),
            partition_key="2023-01-01",
            window=JAN_2023,
            run_id=uuid.uuid4().hex,
            now=datetime.now(UTC),
            log=lambda message: None,
            replica_guard=ReplicaKeys(warehouse, "visits", ["id"], "updated_at") if guarded else None,
        ).run()
    finally:
        warehouse.close()
        client.dispose()
    return report.rows_purged


def test_restore_puts_archived_rows_back_identically_and_skips_them_the_second_time(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url, config = project["url"], str(project["config"])
    everything, january = rows(url), rows(url, JANUARY_ROWS)
    assert len(january) == ROWS_PER_MONTH + EXTRA_JANUARY
    assert archive_january(project) == len(january)
    assert rows(url, JANUARY_ROWS) == []

    code, out, err = cli(capsys, "--config", config, "restore", "visits", "2023-01-01")
    assert code == 0, err
    assert (
        f"restored {len(january)} row(s) of visits 2023-01-01 from 1 part(s); 0 were already present" in out
    )
    assert rows(url, JANUARY_ROWS) == january, "the round trip archive -> restore yields identical rows"
    assert rows(url) == everything

    done = script("--config", config, "restore", "visits", "2023-01-01", cwd=project["dir"])
    assert done.returncode == 0, done.stderr
    assert (
        f"restored 0 row(s) of visits 2023-01-01 from 1 part(s); {len(january)} were already present"
        in done.stdout
    )
    assert rows(url) == everything


def test_restore_of_a_month_never_archived_is_a_clear_error(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "--config", str(project["config"]), "restore", "visits", "2023-02-01")
    assert code == 2 and out == ""
    assert err.splitlines()[0] == (
        "error: no committed archive for table 'visits' partition 2023-02-01; nothing to restore"
    )
    assert err.splitlines()[1].startswith("hint: ") and "etl-assets plan visits" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("partition", "message", "hint"),
    [
        ("2023-01-15", "error: partition 2023-01-15 is not the first of a month", "hint: use 2023-01-01"),
        (
            "2023-13-01",
            "error: partition '2023-13-01' is not a date",
            "hint: use the partition key, e.g. 2024-01-01",
        ),
        (
            "january",
            "error: partition 'january' is not a date",
            "hint: use the partition key, e.g. 2024-01-01",
        ),
    ],
)
def test_restore_rejects_a_partition_that_is_not_a_month_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], partition: str, message: str, hint: str
) -> None:
    # Checked before anything connects: the servers in this config do not exist.
    config = tmp_path / "etl_assets.yaml"
    config.write_text(
        "source: {url: 'mysql+pymysql://nobody@127.0.0.1:1/none'}\narchive: {url: 's3://nowhere-bucket/a'}\n"
        "tables:\n  - {name: visits, archive: {retention: 1 year}}\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "--config", str(config), "restore", "visits", partition)
    assert (code, out, err.splitlines()) == (2, "", [message, hint])


# -- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["plan", "nope"], ["restore", "nope", "2023-01-01"], ["ddl", "nope"],
                                     ["schema", "diff", "nope"], ["schema", "snapshot", "nope"]])  # fmt: skip
def test_unknown_table_is_one_line_naming_it_and_the_configured_tables(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = str(project["config"])
    code, out, err = cli(capsys, "--config", config, *command)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0] == f"error: no table named 'nope' in {config}; configured tables: visits"
    assert lines[1].startswith("hint: ") and "configured table names" in lines[1]
    assert "Traceback" not in err

    code, _, err = cli(capsys, "--config", config, "--verbose", *command)
    assert code == 2
    assert err.startswith(lines[0] + "\n" + lines[1] + "\n")
    assert "Traceback (most recent call last)" in err and "CliError" in err


def test_unknown_table_through_the_console_script(project: dict[str, Any]) -> None:
    done = script("--config", str(project["config"]), "plan", "nope", cwd=project["dir"])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[0].startswith("error: no table named 'nope'")
    assert "Traceback" not in done.stderr
    verbose = script("--config", str(project["config"]), "plan", "nope", "--verbose", cwd=project["dir"])
    assert verbose.returncode == 2 and "Traceback (most recent call last)" in verbose.stderr


def test_missing_environment_variable_names_file_key_and_variable_never_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hunter2-not-for-your-eyes"
    monkeypatch.setenv("ETL_TEST_CLI_PASSWORD", secret)
    monkeypatch.delenv("ETL_TEST_CLI_DATABASE", raising=False)
    config = tmp_path / "etl_assets.yaml"
    config.write_text(
        "source:\n  url: 'mysql+pymysql://etl:${ETL_TEST_CLI_PASSWORD}@127.0.0.1:3306/${ETL_TEST_CLI_DATABASE}'\n"
        "archive: {url: 's3://some-bucket/archive'}\n"
        "tables:\n  - {name: visits, archive: {retention: 1 year}}\n",
        encoding="utf-8",
    )
    for command in (["plan"], ["schema", "diff"], ["ddl", "visits"], ["restore", "visits", "2023-01-01"]):
        code, out, err = cli(capsys, "--config", str(config), *command)
        assert code == 2, command
        first = err.splitlines()[0]
        assert first.startswith(
            f"error: {config}: source.url: environment variable ETL_TEST_CLI_DATABASE is not set"
        )
        assert "hint: " in err
        assert secret not in out + err
        assert "Traceback" not in err


def test_a_config_that_does_not_exist_is_an_error_not_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    code, out, err = cli(capsys, "--config", str(missing), "plan")
    assert code == 2 and out == ""
    assert err.splitlines()[0] == f"error: {missing}: cannot read the config file (No such file or directory)"
    assert os.environ.get(CONFIG_ENV_VAR) is None, "--config must not leak into the environment"


def test_driver_errors_are_cut_to_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "etl_assets.yaml"
    config.write_text(
        "source: {url: 'mysql+pymysql://etl:wrong-password@127.0.0.1:1/none'}\ntables:\n  - {name: visits}\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "--config", str(config), "schema", "snapshot")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("error: OperationalError: ") and "Connection refused" in lines[0]
    assert lines[1].startswith("hint: check that the database") and "--verbose" in lines[1]
    assert "wrong-password" not in err


def test_a_configured_table_missing_from_the_source_is_named_without_python_noise(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = project["dir"] / "ghost.yaml"
    text = project["config"].read_text(encoding="utf-8")
    config.write_text(text.replace("tables:\n", "tables:\n  - name: ghost\n    archive: {retention: 1 year}\n"),
                      encoding="utf-8")  # fmt: skip
    code, out, err = cli(capsys, "--config", str(config), "plan", "ghost")
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith("error: table 'ghost' does not exist in source database"), err
    assert "SourceError" not in err and "Traceback" not in err
