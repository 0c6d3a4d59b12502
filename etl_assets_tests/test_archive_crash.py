"""Kill the archive at every named point, re-run, and account for every row (design.md §5 invariant 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveJob
from etl_assets.lib.layout import is_queryable
from etl_assets.resources.source import LockBusyError, SourceClient
from etl_assets.resources.store import open_store
from etl_assets_tests.crash_child import TABLES, WINDOW
from etl_assets_tests.reliability import current
from etl_assets_tests.support import archived_keys, committed, config_for, seed_visits, source_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
POINTS = ["mid_extract", "before_verify", "after_verify", "mid_purge", "mid_commit", "before_cleanup"]


def run_child_until(point: str, url: str, bucket: str) -> str:
    """Start the child, wait until it parks at `point`, SIGKILL it; returns its output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "etl_assets_tests.crash_child", url, bucket, point],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    lines: list[str] = []
    timer = threading.Timer(120, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(f"PARKED {point}"):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        timer.cancel()
        process.wait(timeout=30)
    output = "".join(lines)
    assert f"PARKED {point}" in output, f"child never reached {point}:\n{output}"
    return output


def rerun(url: str, bucket: str) -> None:
    config = config_for(source_url=url, archive_url=f"s3://{bucket}/archive", tables=TABLES)
    client = SourceClient(url)
    ArchiveJob(
        source=client,
        store=open_store(f"s3://{bucket}/archive", region="us-east-1"),
        table=config.tables[0],
        source_table=client.reflect("visits"),
        partition_key="2023-01-01",
        window=WINDOW,
        run_id=uuid.uuid4().hex,
        now=datetime.now(UTC),
        log=lambda m: None,
    ).run()
    client.dispose()


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_point_then_rerun_loses_and_duplicates_nothing(
    point: str, mysql_url: str, s3_bucket: str
) -> None:
    seed_visits(mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=2400)
    original = source_keys(mysql_url)
    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")

    run_child_until(point, mysql_url, s3_bucket)

    # Right after the kill: nothing is in both places and nothing is published twice.
    source_now, archive_now = source_keys(mysql_url), archived_keys(store)
    assert len(archive_now) == len(set(archive_now))
    assert source_now.isdisjoint(archive_now)
    if point in ("mid_extract", "before_verify", "after_verify"):
        assert source_now == original, "nothing may be deleted before verification finished"

    rerun(mysql_url, s3_bucket)

    source_after, archive_after = source_keys(mysql_url), archived_keys(store)
    current().checked(rows=len(original), lost=len(original - source_after - set(archive_after)))
    assert len(archive_after) == len(set(archive_after)), "a primary key was archived twice"
    assert source_after.isdisjoint(archive_after)
    assert source_after | set(archive_after) == original, "a row was lost"
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        left_in_january = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01'"
            )
        ).scalar_one()
    engine.dispose()
    assert left_in_january == 0
    assert sum(m.rows for m in committed(store)) == len(archive_after)
    assert not [k for k in store.list("visits") if "/_staging/" in k], "staging debris left behind"
    assert all(is_queryable(k) or k.endswith(".manifest.json") for k in store.list("visits"))


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


def test_archive_under_mysql8_strict_sql_mode(mysql_url: str, s3_bucket: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=500)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        previous = conn.execute(sa.text("SELECT @@GLOBAL.sql_mode")).scalar_one()
        # New connections (the archive's) get MySQL 8's default strictness.
        conn.execute(
            sa.text(
                "SET GLOBAL sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ONLY_FULL_GROUP_BY'"
            )
        )
    try:
        rerun(mysql_url, s3_bucket)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("SET GLOBAL sql_mode = :m"), {"m": previous})
        engine.dispose()
    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    assert len(archived_keys(store)) == 500
    assert source_keys(mysql_url) == set()
