"""Kill the archive at every named point, re-run, and account for every row (design.md §5 invariant 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveBackfill, restore_partition
from etl_assets.lib.layout import is_queryable
from etl_assets.resources.source import LockBusyError, SourceClient
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets_tests.crash_child import (
    BACKFILL_MONTHS,
    TABLES,
    WIDE_TABLES,
    WINDOW,
    month_jobs,
    open_child_store,
)
from etl_assets_tests.reliability import current
from etl_assets_tests.support import archived_keys, committed, seed_visits, source_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
POINTS = ["mid_extract", "before_verify", "after_verify", "mid_purge", "mid_commit", "before_cleanup"]


def run_child_until(point: str, url: str, bucket: str, *extra: str) -> str:
    """Start the child, wait until it parks at `point` (`name@N`: its N-th time), SIGKILL it; returns
    its output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "etl_assets_tests.crash_child", url, bucket, point, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    name = point.partition("@")[0]
    lines: list[str] = []
    timer = threading.Timer(120, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(f"PARKED {name}"):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        timer.cancel()
        process.wait(timeout=30)
    output = "".join(lines)
    assert f"PARKED {name}" in output, f"child never reached {point}:\n{output}"
    return output


def rerun(url: str, bucket: str, *, backfill: bool = False, wide: bool = False) -> None:
    """Run the child's job(s) to the end in this process, with the child's (or its `wide`) settings."""
    client = SourceClient(url)
    store = open_child_store(bucket, wide=wide)
    tables = WIDE_TABLES if wide else TABLES
    if backfill:
        reports = ArchiveBackfill(jobs=month_jobs(client, store, BACKFILL_MONTHS, tables=tables)).run()
        assert [r.partition for r in reports] == [key for key, _ in BACKFILL_MONTHS]
    else:
        month_jobs(client, store, [("2023-01-01", WINDOW)], tables=tables)[0].run()
    client.dispose()


def check_right_after_kill(url: str, store: ObjectStore) -> set[int]:
    """Nothing is in both places and nothing is published twice; returns the keys left in MySQL."""
    source_now, archive_now = source_keys(url), archived_keys(store)
    assert len(archive_now) == len(set(archive_now))
    assert source_now.isdisjoint(archive_now)
    return source_now


def check_every_row_once(original: set[int], url: str, store: ObjectStore) -> tuple[set[int], list[int]]:
    """After the rerun: no row lost, none archived twice, no staging left; returns (source, archive)."""
    source_after, archive_after = source_keys(url), archived_keys(store)
    current().checked(rows=len(original), lost=len(original - source_after - set(archive_after)))
    assert len(archive_after) == len(set(archive_after)), "a primary key was archived twice"
    assert source_after.isdisjoint(archive_after)
    assert source_after | set(archive_after) == original, "a row was lost"
    assert sum(m.rows for m in committed(store)) == len(archive_after)
    assert not [k for k in store.list("visits") if "/_staging/" in k], "staging debris left behind"
    return source_after, archive_after


@pytest.fixture
def three_months(mysql_url: str, s3_bucket: str) -> tuple[set[int], ObjectStore]:
    """December 2022 to February 2023 seeded (2,400 rows each): their keys, and the store to archive to."""
    seed_visits(mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=2400)
    return source_keys(mysql_url), open_store(f"s3://{s3_bucket}/archive", region="us-east-1")


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_point_then_rerun_loses_and_duplicates_nothing(
    point: str, mysql_url: str, s3_bucket: str, three_months: tuple[set[int], ObjectStore]
) -> None:
    original, store = three_months

    run_child_until(point, mysql_url, s3_bucket)

    source_now = check_right_after_kill(mysql_url, store)
    if point in ("mid_extract", "before_verify", "after_verify"):
        assert source_now == original, "nothing may be deleted before verification finished"

    rerun(mysql_url, s3_bucket)

    check_every_row_once(original, mysql_url, store)
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        left_in_january = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01'"
            )
        ).scalar_one()
    engine.dispose()
    assert left_in_january == 0
    assert all(is_queryable(k) or k.endswith(".manifest.json") for k in store.list("visits"))


@pytest.mark.parametrize("point", ["after_verify", "mid_purge"])
def test_kill_while_archiving_restored_rows_again_then_rerun_archives_each_key_once(
    point: str, mysql_url: str, s3_bucket: str, three_months: tuple[set[int], ObjectStore]
) -> None:
    """January archived, then restored: its rows are in MySQL and the archive at once. A re-run killed
    after verifying or mid purge is rolled forward: the restored rows leave MySQL, none is archived twice."""
    original, store = three_months
    rerun(mysql_url, s3_bucket)
    client = SourceClient(mysql_url)
    restore_partition(source=client, store=store, source_table=client.reflect("visits"), table="visits",
                      month=WINDOW.start, log=lambda m: None)  # fmt: skip
    client.dispose()
    assert source_keys(mysql_url) == original

    run_child_until(point, mysql_url, s3_bucket)
    rerun(mysql_url, s3_bucket)

    _, archive_after = check_every_row_once(original, mysql_url, store)
    assert len(archive_after) == 2400 and len(committed(store)) == 1


# A backfill purges month k in a helper thread while month k+1 is extracted: kill it with one month
# mid purge (3rd delete: December; 15th: January, 12 batches a month) or mid commit while the next
# month extracts, and with the next month mid extraction (4th staging part: January's first) while
# December is being purged.
BACKFILL_POINTS = ["mid_purge@3", "mid_purge@15", "mid_commit@2", "mid_extract@4"]


@pytest.mark.parametrize("point", BACKFILL_POINTS)
def test_kill_an_overlapped_backfill_then_rerun_loses_and_duplicates_nothing(
    point: str, mysql_url: str, s3_bucket: str, three_months: tuple[set[int], ObjectStore]
) -> None:
    original, store = three_months

    output = run_child_until(point, mysql_url, s3_bucket, "backfill")

    assert "extracting" in output
    source_now = check_right_after_kill(mysql_url, store)
    if point.startswith(("mid_purge", "mid_commit")):
        assert len(source_now) < len(original), "the child was killed before its first delete"

    rerun(mysql_url, s3_bucket, backfill=True)

    source_after, _ = check_every_row_once(original, mysql_url, store)
    assert source_after == set(), "every row of the three months should have left the source"


@pytest.fixture
def wide_january(mysql_url: str, s3_bucket: str) -> tuple[set[int], ObjectStore]:
    """January 2023 seeded with 3,000 rows of ~2.7 KB of incompressible text each: its one staged part
    (~6 MiB of Parquet) goes up in 5 MiB parts under the child's `wide` settings."""
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=3000)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE visits MODIFY notes TEXT"))
        conn.execute(
            sa.text(
                "UPDATE visits SET notes = CONCAT(TO_BASE64(RANDOM_BYTES(1024)), TO_BASE64(RANDOM_BYTES(1024)))"
            )
        )
    engine.dispose()
    return source_keys(mysql_url), open_store(f"s3://{s3_bucket}/archive", region="us-east-1")


def unfinished_uploads(bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The multipart uploads under `prefix` that were neither completed nor aborted."""
    s3 = boto3.client("s3", region_name="us-east-1")
    return s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def test_kill_mid_multipart_upload_then_rerun_aborts_the_unfinished_upload(
    mysql_url: str, s3_bucket: str, wide_january: tuple[set[int], ObjectStore]
) -> None:
    """A run killed while a staged part goes up in parts leaves an upload that no listing shows but
    S3 keeps (and bills) with its stored parts; the re-run aborts it and archives every row once."""
    original, store = wide_january

    run_child_until("mid_upload", mysql_url, s3_bucket, "wide")

    [left] = unfinished_uploads(s3_bucket, "archive/visits/_staging/")
    assert left["Key"].startswith("archive/visits/_staging/year=2023/month=01/"), left["Key"]
    s3 = boto3.client("s3", region_name="us-east-1")
    assert s3.list_parts(Bucket=s3_bucket, Key=left["Key"], UploadId=left["UploadId"]).get("Parts")
    assert check_right_after_kill(mysql_url, store) == original, "nothing may be deleted mid extract"

    rerun(mysql_url, s3_bucket, wide=True)

    check_every_row_once(original, mysql_url, store)
    assert source_keys(mysql_url) == set()
    assert unfinished_uploads(s3_bucket, "archive/visits/") == [], "the killed run's upload was left"


def test_two_runs_of_one_table_never_interleave(mysql_url: str, s3_bucket: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=200)
    holder = SourceClient(mysql_url)
    with holder.lock("visits", "archive"):
        start = time.monotonic()
        with pytest.raises(LockBusyError, match=r"another run is already doing 'archive' for table 'visits'"):
            rerun(mysql_url, s3_bucket)
        assert time.monotonic() - start < 30
    assert len(source_keys(mysql_url)) == 200, "the refused run deleted nothing"
    rerun(mysql_url, s3_bucket)
    assert source_keys(mysql_url) == set()
    holder.dispose()


def test_killed_run_releases_its_lock(mysql_url: str, s3_bucket: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=1500)
    run_child_until("after_verify", mysql_url, s3_bucket)
    client = SourceClient(mysql_url)
    deadline = time.monotonic() + 20
    while True:
        try:
            with client.lock("visits", "archive"):
                break
        except LockBusyError:
            assert time.monotonic() < deadline, "the killed run's named lock was not released"
            time.sleep(0.5)
    client.dispose()


def test_archive_under_mysql8_strict_sql_mode(
    mysql_url: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement the archive and restore send, under MySQL 8's strictness: ids 4 apart make the
    reader take the time plan (its per-hour GROUP BY meets ONLY_FULL_GROUP_BY), 2,400 rows make it
    several slices, parts and delete batches; restore puts back identical rows."""
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=2400)
    engine = sa.create_engine(mysql_url)
    select = sa.text("SELECT * FROM visits ORDER BY id")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE visits SET id = id * 4 ORDER BY id DESC"))
        original = [tuple(r) for r in conn.execute(select)]
        previous = conn.execute(sa.text("SELECT @@GLOBAL.sql_mode")).scalar_one()
        # New connections (the archive's) get MySQL 8's default strictness.
        conn.execute(
            sa.text(
                "SET GLOBAL sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ONLY_FULL_GROUP_BY'"
            )
        )
    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    notes: list[str] = []
    try:
        client = SourceClient(mysql_url)
        [job] = month_jobs(client, store, [("2023-01-01", WINDOW)])
        job.log = notes.append
        report = job.run()
        assert len(archived_keys(store)) == 2400
        assert source_keys(mysql_url) == set()
        restore_partition(source=client, store=store, source_table=client.reflect("visits"), table="visits",
                          month=WINDOW.start, log=lambda m: None)  # fmt: skip
        client.dispose()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("SET GLOBAL sql_mode = :m"), {"m": previous})
    with engine.connect() as conn:
        restored = [tuple(r) for r in conn.execute(select)]
    engine.dispose()
    current().checked(rows=len(original), lost=len(set(original) - set(restored)))
    assert report.rows_purged == 2400 and len(report.parts) == 3
    assert any("reader: Arrow (connectorx, time slices)" in line for line in notes), notes
    assert restored == original
