"""Randomized kill test for the archive: SIGKILL real runs at random moments while a writer keeps
changing the table, then account for every row.

    python -m etl_assets_tests.chaos --cycles 100 --rows 200000     (make chaos)

Needs the local stack (`eval "$(scripts/stack.sh env)"`). Each cycle starts an archive run of a
random eligible month in a subprocess and SIGKILLs it after a random delay (so kills land during
extraction, upload, verification, purge and commit); a writer process meanwhile inserts rows into
eligible months and moves rows' `updated_at`, some within the same month. After every cycle:

- every key is in exactly one place: source or the archive's queryable view (no key in both);
- source keys + archived keys = seeded keys + keys the writer inserted (nothing lost), counting as
  safe the keys of verified staging parts, which a killed run may have purged and the next run of
  that partition publishes;
- no key appears twice in the archive;
- every archived row holds the newest `updated_at` the writer committed for it (a row changed after
  it was read is never published; it stays in the source).

Two tables: `visits` (single primary key) and `visit_items` (composite key). At the end every month
is archived once more without kills and the same accounting must hold.

Then (unless `--no-suite`) the reliability test files run through pytest (S3 fault schedules on the
archive and the replica's staging, MySQL faults, kill points, concurrency, warehouse restarts, hostile
input, secrets; the list is `reliability.CATEGORIES`), each test recording its scenario through the
`reliability` fixture into a results file. The command ends with ONE table of every scenario:
cycles, rows checked, rows lost (must be 0) and result; it exits non-zero if any scenario failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import sqlalchemy as sa

from etl_assets_tests import reliability

MONTHS = [(2023, m) for m in range(1, 13)]
TABLES = {"visits": ["id"], "visit_items": ["visit_id", "line_no"]}
DDL = [
    """CREATE TABLE visits (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, patient_id INT NOT NULL,
       notes VARCHAR(255), amount DECIMAL(12,2), updated_at DATETIME(6) NOT NULL, KEY ix_updated (updated_at))""",
    """CREATE TABLE visit_items (visit_id BIGINT NOT NULL, line_no INT NOT NULL, code VARCHAR(16) NOT NULL,
       updated_at DATETIME(6) NOT NULL, PRIMARY KEY (visit_id, line_no), KEY ix_updated (updated_at))""",
]
CONFIG = """
source:
  url: '{url}'
archive:
  url: 's3://{bucket}/archive'
tables:
  - name: visits
    archive: {{retention: 1 year, batch_size: 500, part_rows: 4000, chunk_rows: 2000, max_threads_running: 1000}}
  - name: visit_items
    archive: {{retention: 1 year, batch_size: 500, part_rows: 4000, chunk_rows: 2000, max_threads_running: 1000}}
"""


def _month_window(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1)
    end = datetime(year + (month == 12), 1 if month == 12 else month + 1, 1)
    return start, end


def seed(url: str, rows: int, rng: random.Random) -> None:
    """Create both tables with `rows` visits and about as many items over 2023."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in DDL:
            conn.exec_driver_sql(statement)
        per_month = rows // len(MONTHS)
        visits, items = [], []
        next_id = 1
        for year, month in MONTHS:
            start, end = _month_window(year, month)
            span = (end - start).total_seconds()
            for index in range(per_month):
                stamp = start + timedelta(seconds=0 if index == 0 else rng.uniform(0, span - 1))
                visits.append(
                    {"id": next_id, "p": rng.randint(1, 9999), "n": "seed", "a": "1.50", "t": stamp}
                )
                items.append({"v": next_id, "l": 1, "c": "A1", "t": stamp})
                next_id += 1
        for chunk in range(0, len(visits), 5000):
            conn.execute(sa.text("INSERT INTO visits (id, patient_id, notes, amount, updated_at) VALUES (:id, :p, :n, :a, :t)"),
                         visits[chunk : chunk + 5000])  # fmt: skip
            conn.execute(
                sa.text("INSERT INTO visit_items VALUES (:v, :l, :c, :t)"), items[chunk : chunk + 5000]
            )
    engine.dispose()


def writer(url: str, log_path: str, seconds: float, seed_value: int) -> None:
    """Insert rows into eligible months and move updated_at of random rows; log every committed change."""
    rng = random.Random(seed_value)
    engine = sa.create_engine(url, connect_args={"init_command": "SET time_zone = '+00:00'"})
    deadline = time.monotonic() + seconds
    with open(log_path, "a", encoding="utf-8") as log, engine.connect() as conn:
        max_id = conn.execute(sa.text("SELECT MAX(id) FROM visits")).scalar() or 0
        conn.commit()
        while time.monotonic() < deadline:
            year, month = rng.choice(MONTHS)
            start, end = _month_window(year, month)
            stamp = start + timedelta(seconds=rng.uniform(0, (end - start).total_seconds() - 1))
            action = rng.random()
            if action < 0.3:
                max_id += 1 + rng.randint(0, 3)  # leave gaps like a busy AUTO_INCREMENT
                conn.execute(sa.text("INSERT INTO visits (id, patient_id, notes, amount, updated_at) VALUES (:i, 1, 'new', 2.5, :t)"),
                             {"i": max_id, "t": stamp})  # fmt: skip
                conn.execute(
                    sa.text("INSERT INTO visit_items VALUES (:i, 1, 'N1', :t)"), {"i": max_id, "t": stamp}
                )
                conn.commit()
                log.write(
                    json.dumps({"op": "insert", "table": "visits", "key": [max_id], "t": stamp.isoformat()})
                    + "\n"
                )
                log.write(
                    json.dumps(
                        {"op": "insert", "table": "visit_items", "key": [max_id, 1], "t": stamp.isoformat()}
                    )
                    + "\n"
                )
            else:
                # An update: half of them keep the row in the same (eligible) month, the rest move it to now.
                target = stamp if action < 0.65 else datetime.now(UTC).replace(tzinfo=None)
                key = rng.randint(1, max_id)
                table = "visits" if action < 0.85 else "visit_items"
                where = "id = :k" if table == "visits" else "visit_id = :k AND line_no = 1"
                changed = conn.execute(sa.text(f"UPDATE {table} SET updated_at = :t WHERE {where}"),
                                       {"t": target, "k": key}).rowcount  # fmt: skip
                conn.commit()
                if changed:
                    pk = [key] if table == "visits" else [key, 1]
                    log.write(
                        json.dumps({"op": "update", "table": table, "key": pk, "t": target.isoformat()})
                        + "\n"
                    )
            log.flush()
            time.sleep(rng.uniform(0.002, 0.02))
    engine.dispose()


def child(url: str, bucket: str, table_name: str, year: int, month: int) -> None:
    """One archive run of one month (the process the parent kills); table `*` and month 0: all of them."""
    from etl_assets.config import parse_config
    from etl_assets.engine.archive import ArchiveJob
    from etl_assets.lib.windows import Window
    from etl_assets.resources.source import SourceClient
    from etl_assets.resources.store import open_store

    config = parse_config(CONFIG.format(url=url, bucket=bucket), source="chaos.yaml")
    client = SourceClient(url)
    store = open_store(f"s3://{bucket}/archive", region="us-east-1")
    tables = list(TABLES) if table_name == "*" else [table_name]
    months = MONTHS if month == 0 else [(year, month)]
    for name in tables:
        table = config.table(name)
        for each_year, each_month in months:
            start, end = _month_window(each_year, each_month)
            ArchiveJob(
                source=client,
                store=store,
                table=table,
                source_table=client.reflect(table.name),
                partition_key=f"{start:%Y-%m-%d}",
                window=Window(start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)),
                run_id=uuid.uuid4().hex,
                now=datetime.now(UTC),
                log=lambda message: print(message, flush=True),
                lock_timeout_seconds=30,
            ).run()


@dataclass
class Tally:
    """Per-scenario counts for the final table."""

    cycles: int = 0
    kills: int = 0
    rows_checked: int = 0
    rows_lost: int = 0
    problems: list[str] = field(default_factory=list)


def _source_rows(url: str, table: str, pk: list[str]) -> dict[tuple[Any, ...], datetime]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {', '.join(pk)}, updated_at FROM {table}")).all()
    engine.dispose()
    return {tuple(int(v) for v in row[:-1]): row[-1] for row in rows}


def _archived_rows(bucket: str, table: str, pk: list[str]) -> list[tuple[tuple[Any, ...], datetime]]:
    client = boto3.client("s3", region_name="us-east-1")
    found: list[tuple[tuple[Any, ...], datetime]] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"archive/{table}/"):
        for item in page.get("Contents", []):
            key = item["Key"]
            segments = key.split("/")
            if not key.endswith(".parquet") or any(s.startswith(("_", ".")) for s in segments[:-1]):
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            data = pq.read_table(io.BytesIO(body), columns=[*pk, "updated_at"]).to_pylist()
            found.extend((tuple(int(r[c]) for c in pk), r["updated_at"]) for r in data)
    return found


def _verified_staged_keys(bucket: str, table: str, pk: list[str]) -> set[tuple[Any, ...]]:
    """Keys in the parts of verified staging manifests: rows a killed run may already have deleted, which
    the next run of that partition rolls forward into the archive (design.md section 5, invariant 4)."""
    client = boto3.client("s3", region_name="us-east-1")
    found: set[tuple[Any, ...]] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"archive/{table}/"):
        for item in page.get("Contents", []):
            if "/_staging/" not in item["Key"] or not item["Key"].endswith(".manifest.json"):
                continue
            manifest = json.loads(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            if manifest.get("state") != "verified":
                continue
            for part in manifest["parts"]:
                body = client.get_object(Bucket=bucket, Key=f"archive/{part['key']}")["Body"].read()
                data = pq.read_table(io.BytesIO(body), columns=pk).to_pylist()
                found.update(tuple(int(r[c]) for c in pk) for r in data)
    return found


def account(
    url: str, bucket: str, log_path: Path, seeded: dict[str, set[tuple[Any, ...]]], tally: Tally
) -> None:
    """Check every invariant listed in the module docstring; record problems in `tally`."""
    inserted: dict[str, set[tuple[Any, ...]]] = {t: set() for t in TABLES}
    latest: dict[str, dict[tuple[Any, ...], str]] = {t: {} for t in TABLES}
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            key = tuple(entry["key"])
            if entry["op"] == "insert":
                inserted[entry["table"]].add(key)
            latest[entry["table"]][key] = entry["t"]
    for table, pk in TABLES.items():
        source = _source_rows(url, table, pk)
        archived = _archived_rows(bucket, table, pk)
        archived_keys = [k for k, _ in archived]
        expected = seeded[table] | inserted[table]
        present = set(source) | set(archived_keys)
        if expected - present:
            present |= _verified_staged_keys(bucket, table, pk)
        lost = expected - present
        tally.rows_checked += len(expected)
        tally.rows_lost += len(lost)
        if lost:
            tally.problems.append(f"{table}: {len(lost)} row(s) lost, e.g. {sorted(lost)[:3]}")
        both = set(source) & set(archived_keys)
        if both:
            tally.problems.append(
                f"{table}: {len(both)} key(s) both in source and archive, e.g. {sorted(both)[:3]}"
            )
        if len(archived_keys) != len(set(archived_keys)):
            tally.problems.append(f"{table}: a key is archived twice")
        stale = [k for k, t in archived if k in latest[table] and t.isoformat() != latest[table][k]]
        if stale:
            tally.problems.append(
                f"{table}: {len(stale)} archived row(s) are not the latest version, e.g. {stale[:3]}"
            )


def run(url: str, bucket: str, *, cycles: int, rows: int, seed_value: int, workdir: Path) -> Tally:
    """The whole randomized scenario; returns its tally."""
    rng = random.Random(seed_value)
    seed(url, rows, rng)
    seeded = {table: set(_source_rows(url, table, pk)) for table, pk in TABLES.items()}
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)
    log_path = workdir / "writer.jsonl"
    env = os.environ.copy()
    module = [sys.executable, "-m", "etl_assets_tests.chaos"]
    tally = Tally()

    def start_child(table: str, year: int, month: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*module, "child", url, bucket, table, str(year), str(month)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    # Calibrate: how long one undisturbed run takes, so kills land anywhere inside a run.
    began = time.monotonic()
    first = start_child("visits", *MONTHS[0])
    first.wait(timeout=600)
    duration = max(time.monotonic() - began, 1.0)
    writer_seconds = duration * cycles * 1.2 + 30
    writer_process = subprocess.Popen([*module, "writer", url, str(log_path), str(writer_seconds), str(seed_value)],
                                      env=env)  # fmt: skip
    try:
        for _ in range(cycles):
            table = rng.choice(list(TABLES))
            year, month = rng.choice(MONTHS)
            process = start_child(table, year, month)
            delay = rng.uniform(0.2, duration * 1.1)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=60)
                tally.kills += 1
            tally.cycles += 1
            account(url, bucket, log_path, seeded, tally)
            if tally.cycles % 10 == 0 or tally.problems:
                print(f"{tally.cycles}/{cycles} kill cycles, {tally.kills} killed, {tally.rows_lost} rows lost",
                      flush=True)  # fmt: skip
    finally:
        writer_process.send_signal(signal.SIGTERM)
        writer_process.wait(timeout=60)
    # Converge: every month of every table archived once more, undisturbed, then the final accounting.
    if start_child("*", 0, 0).wait(timeout=900) != 0:
        tally.problems.append("the final undisturbed runs failed")
    account(url, bucket, log_path, seeded, tally)
    remaining = sum(1 for table, pk in TABLES.items() for _ in _source_rows(url, table, pk))
    moved_to_now = sum(1 for line in log_path.read_text(encoding="utf-8").splitlines() if '"t": "2026' in line
                       or '"t": "2027' in line)  # fmt: skip
    if remaining > moved_to_now:
        tally.problems.append(f"{remaining} row(s) left in the source after the final runs; at most {moved_to_now} "
                              "were moved out of the eligible months by the writer")  # fmt: skip
    return tally


ROOT = Path(__file__).resolve().parent.parent
KILLS = "randomized kills: SIGKILL of archive runs of random months, concurrent writer"


def run_suite(log_path: Path, pytest_args: list[str]) -> int:
    """Run the reliability test files through pytest, recording into `log_path`; returns pytest's status."""
    here = Path(__file__).resolve().parent
    files = [str(here / name) for name in reliability.CATEGORIES if (here / name).exists()]
    env = {**os.environ, reliability.LOG_ENV: str(log_path)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *pytest_args]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def main() -> None:
    """Command line: the scenario (default), or the `writer`/`child` roles it spawns."""
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        writer(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument(
        "--no-suite", action="store_true", help="only the randomized kills, not the test files"
    )
    parser.add_argument(
        "--pytest-args", default="", help="extra pytest arguments for the suite, e.g. '-k faults'"
    )
    args = parser.parse_args()
    server = os.environ.get("ETL_TEST_MYSQL_URL", "mysql+pymysql://etl:etl-test-pass@127.0.0.1:3306/")
    os.environ.setdefault("AWS_ENDPOINT_URL", os.environ.get("ETL_TEST_S3_ENDPOINT", "http://127.0.0.1:5000"))
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        os.environ.setdefault(key, value)
    name = f"etl_chaos_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
    url = sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    workdir = Path(f"/tmp/{name}")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tally = run(
            url,
            name.replace("_", "-"),
            cycles=args.cycles,
            rows=args.rows,
            seed_value=args.seed,
            workdir=workdir,
        )
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    kills = reliability.Record(f"{KILLS} ({tally.kills} killed)", tally.cycles, tally.rows_checked,
                               tally.rows_lost, "FAIL" if tally.problems or tally.rows_lost else "pass")  # fmt: skip
    print(kills.line(), flush=True)
    for problem in tally.problems:
        print(f"PROBLEM: {problem}")
    records = [kills]
    status = 0
    if not args.no_suite:
        log_path = workdir / "reliability.jsonl"
        status = run_suite(log_path, args.pytest_args.split())
        records += reliability.read(log_path)
    print("\n" + reliability.table(records))
    failed = [r for r in records if r.result == "FAIL"]
    print(f"\n{len(records)} scenarios, {sum(r.cycles for r in records):,} cycles, "
          f"{sum(r.rows_checked for r in records):,} rows checked, {sum(r.rows_lost for r in records)} rows lost, "
          f"{len(failed)} failed")  # fmt: skip
    sys.exit(1 if failed or status not in (0, 5) else 0)


if __name__ == "__main__":
    main()
