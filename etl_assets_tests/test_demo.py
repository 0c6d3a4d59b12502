"""`etl-assets demo` as a user runs it: a real process, no servers, no credentials, in an empty directory.

The first run builds everything and drifts a table on purpose; the second has nothing new to do;
`--reset` starts over. The output is what a person reads, so it is checked for numbers that add up and
for noise (warnings, Dagster DEBUG lines, tracebacks) that must not reach the terminal.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).with_name("etl-assets")
SANITY_SECONDS = 300  # the requirement is 90 s on two idle cores; this machine is shared, so only a guard
SUBJECT = "Subject: [etl-assets] schema drift: clinic.visits (1 column)"


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float
    day: str  # UTC date when the run started: data and partitions are relative to "now"

    def summary(self) -> dict[str, dict[str, str]]:
        """The summary table, per table: rows before, archived, purged, rows now, in replica, checks."""
        names = ["before", "archived", "purged", "now", "replica", "checks"]
        table: dict[str, dict[str, str]] = {}
        for line in self.out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 7 and cells[0] not in ("table",):
                table[cells[0]] = dict(zip(names, cells[1:], strict=True))
        return table


def number(text: str) -> int:
    return int(text.replace(",", ""))


def run_demo(cwd: Path, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "ETL_ASSETS_CONFIG", "ALERTS_SNS_TOPIC_ARN")}  # fmt: skip
    env["ETL_ASSETS_DEMO_DIR"] = str(cwd / ".demo")
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    started = time.monotonic()
    done = subprocess.run([str(SCRIPT), "demo", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started, day)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def first(workdir: Path) -> Run:
    run = run_demo(workdir)
    print(f"\nfirst `etl-assets demo` run: {run.seconds:.1f}s wall (requirement: < 90 s on 2 idle cores)")
    assert run.code == 0, f"stdout:\n{run.out}\nstderr:\n{run.err}"
    return run


@pytest.fixture(scope="module")
def second(workdir: Path, first: Run) -> Run:
    run = run_demo(workdir)
    print(f"\nsecond `etl-assets demo` run: {run.seconds:.1f}s wall")
    assert run.code == 0, f"stdout:\n{run.out}\nstderr:\n{run.err}"
    return run


def test_first_run_finishes_in_reasonable_time(first: Run) -> None:
    assert first.seconds < SANITY_SECONDS
    match = re.search(r"^\[\s*[\d.]+s\] done in (\d+)s\. Open the Dagster UI", first.out, re.MULTILINE)
    assert match, first.out


def test_first_run_summary_numbers_add_up(first: Run, workdir: Path) -> None:
    summary = first.summary()
    assert set(summary) == {"visits", "audit_log", "patients"}, first.out
    visits, audit, patients = summary["visits"], summary["audit_log"], summary["patients"]
    assert number(visits["before"]) == 200_000 and number(audit["before"]) == 500_000
    assert number(patients["before"]) == 5_000
    for name in ("visits", "audit_log"):
        row = summary[name]
        assert number(row["purged"]) > 0, f"{name}: the first run archives every eligible month"
        assert number(row["archived"]) == number(row["purged"]), f"{name}: all archived rows were purged"
        assert number(row["before"]) == number(row["now"]) + number(row["purged"]), name
    assert number(patients["purged"]) == 0 and patients["now"] == patients["before"], (
        "patients is never archived"
    )
    assert number(visits["replica"]) == number(visits["before"]), (
        "the replica holds every visit, archived or not"
    )
    assert number(patients["replica"]) == 5_000 and audit["replica"] == "-"
    for name, row in summary.items():
        passed, total = (int(x) for x in row["checks"].split("/"))
        assert total > 0 and passed == total, f"{name}: checks {row['checks']}"

    with sqlite3.connect(workdir / ".demo" / "clinic.sqlite") as db:
        for name, row in summary.items():
            assert db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0] == number(row["now"])
        oldest_visit = db.execute("SELECT MIN(updated_at) FROM visits").fetchone()[0]
        oldest_audit = db.execute("SELECT MIN(logged_at) FROM audit_log").fetchone()[0]
    # Every month older than the retention (visits 1 year, audit_log 6 months) left the source.
    year, month = int(first.day[:4]), int(first.day[5:7])
    assert oldest_visit >= f"{year - 1}-{month:02d}-01", oldest_visit
    index = year * 12 + month - 1 - 6
    assert oldest_audit >= f"{index // 12}-{index % 12 + 1:02d}-01", oldest_audit


def test_archive_folder_is_hive_partitioned_parquet_with_manifests(first: Run, workdir: Path) -> None:
    archive = workdir / ".demo" / "archive"
    for table in ("visits", "audit_log"):
        parts = sorted(archive.glob(f"{table}/year=*/month=*/*.parquet"))
        manifests = sorted(archive.glob(f"{table}/year=*/month=*/*.manifest.json"))
        assert parts and manifests, f"{table}: nothing archived under {archive}"
        for path in parts + manifests:
            year, month = path.parent.parent.name, path.parent.name
            assert re.fullmatch(r"year=\d{4}", year) and re.fullmatch(r"month=(0[1-9]|1[0-2])", month), path
        assert {p.parent for p in parts} == {m.parent for m in manifests}, "every month has its manifest"
        for manifest in manifests:
            json.loads(manifest.read_text(encoding="utf-8"))
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        assert rows == number(first.summary()[table]["archived"]), f"{table}: Parquet rows = archived total"
    # A Hive-aware reader sees the partition columns.
    glob = str(archive / "visits" / "year=*" / "month=*" / "*.parquet")
    years = duckdb.sql(
        f"SELECT DISTINCT year FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()
    assert years and all(int(y) >= 2000 for (y,) in years)


def test_warehouse_holds_every_visit(first: Run, workdir: Path) -> None:
    with duckdb.connect(str(workdir / ".demo" / "warehouse.duckdb"), read_only=True) as con:
        count, distinct, low, high = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT id), MIN(id), MAX(id) FROM reporting.visits"
        ).fetchone()  # type: ignore[misc]
        patients = con.execute("SELECT COUNT(*) FROM reporting.patients").fetchone()[0]  # type: ignore[index]
    assert (count, distinct, low, high) == (200_000, 200_000, 1, 200_000)
    assert patients == 5_000


def test_first_run_shows_the_drift_the_refused_load_and_the_alert(first: Run) -> None:
    out = first.out
    assert "--- schema drift: someone adds a column to visits upstream ---" in out
    assert re.search(r"check schema_drift on source/visits: FAILED: 1 column: added `insurance_code`", out)
    refused = re.search(r"replica/visits (\d{4}-\d{2}-\d{2}): refused:\n((?:    .*\n)+)", out)
    assert refused, out
    reason = " ".join(refused.group(2).split())
    assert "replica of 'visits' refused" in reason and "Nothing was read, written or deleted" in reason
    assert SUBJECT in out
    body_lines = out.split(SUBJECT + "\n", 1)[1].splitlines()
    end = body_lines.index("  }")
    body = json.loads("\n".join(body_lines[: end + 1]))
    assert body["check"] == "schema_drift" and body["table"] == "visits" and body["passed"] is False
    assert body["diff"]["changes"][0]["column"] == "insurance_code"
    assert "column dropped again; schema_drift passes" in out


def test_first_run_prints_the_command_that_opens_the_ui(first: Run, workdir: Path) -> None:
    home = workdir / ".demo" / "dagster_home"
    assert (home / "dagster.yaml").is_file() and (home / "history").is_dir(), (
        "runs are recorded in DAGSTER_HOME"
    )
    lines = first.out.splitlines()
    command = lines[next(i for i, line in enumerate(lines) if "Open the Dagster UI" in line) + 1].strip()
    assert command.startswith(f"DAGSTER_HOME={home} ETL_ASSETS_DEMO_DIR={workdir / '.demo'} ")
    assert command.endswith("dagster dev -m etl_assets.definitions -h 127.0.0.1 -p 3000")


def test_output_is_readable_without_warnings_debug_lines_or_tracebacks(first: Run) -> None:
    assert first.err == "", f"nothing should reach stderr:\n{first.err}"
    for noise in ("Warning", "DEBUG", "Traceback", " - dagster - ", "STEP_FAILURE", "dagster._core"):
        assert noise not in first.out, f"{noise!r} in the demo output"
    narration = [line for line in first.out.splitlines() if line.startswith("[")]
    assert all(re.match(r"^\[\s*\d+\.\d+s\] ", line) for line in narration), narration


def test_second_run_has_nothing_new_to_do(first: Run, second: Run) -> None:
    if second.day != first.day:
        pytest.skip("the UTC day changed between the runs: a new partition is legitimately new work")
    assert "nothing new to do" in second.out, second.out
    assert "creating the demo clinic database" not in second.out
    assert "archiving months" not in second.out and "loading partitions" not in second.out
    summary, before = second.summary(), first.summary()
    for name, row in summary.items():
        assert number(row["purged"]) == 0, name
        assert row["before"] == row["now"] == before[name]["now"], name
        assert row["archived"] == before[name]["archived"] and row["replica"] == before[name]["replica"], name
        passed, total = (int(x) for x in row["checks"].split("/"))
        assert passed == total, name
    assert second.err == ""
    assert SUBJECT in second.out, "the drift showcase runs every time"


def test_reset_starts_over(workdir: Path, second: Run) -> None:
    database = workdir / ".demo" / "clinic.sqlite"
    marker = workdir / ".demo" / "left-over"
    marker.write_text("x", encoding="utf-8")
    run = run_demo(workdir, "--reset")
    assert run.code == 0, f"stdout:\n{run.out}\nstderr:\n{run.err}"
    assert f"removed {workdir / '.demo'}" in run.out
    assert "creating the demo clinic database" in run.out
    assert not marker.exists()
    assert database.is_file()
    summary = run.summary()
    assert (
        number(summary["visits"]["before"]) == 200_000 and number(summary["audit_log"]["before"]) == 500_000
    )
    assert number(summary["visits"]["purged"]) > 0 and number(summary["audit_log"]["purged"]) > 0
    assert "archiving months" in run.out and "nothing new to do" not in run.out
