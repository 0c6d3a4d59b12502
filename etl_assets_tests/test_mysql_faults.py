"""MySQL faults during an archive run (issue 8, item 3), against a private MariaDB that may be restarted.

Scenarios: the source server restarted mid-extraction and mid-purge, a delete batch that hits a lock
wait timeout (another transaction holds a row lock), and connections killed with `KILL CONNECTION`
(the connection holding the table's named lock, and the connection running a delete batch).

Each run either completes (a retried lock conflict) or fails with an error that names the table and
says to re-run; after the re-run every original row is in exactly one place, the source or the
queryable archive (once), and nothing is lost. The shared server on :3306 is never restarted or
reconfigured: `private_mariadb.py` runs a server of this module's own.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveError, ArchiveJob, ArchiveReport
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets_tests.conftest import unique
from etl_assets_tests.faults import FaultProxy, Rule
from etl_assets_tests.private_mariadb import PASSWORD, PrivateMariaDB, ServerFarm
from etl_assets_tests.reliability import current
from etl_assets_tests.support import archived_keys, config_for, seed_visits, source_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
ROWS_PER_MONTH = 1200  # January: 2 parts (1000 + 200), 12 delete batches of 100


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateMariaDB]:
    """One private MariaDB for the module: tests restart it and change its globals."""
    with ServerFarm() as farm:
        yield farm.server(server_id=1)


@pytest.fixture
def seeded(server: PrivateMariaDB, s3_bucket: str) -> Iterator[dict[str, Any]]:
    """January and February 2023 in a fresh database; January is the partition archived."""
    if not server.running:
        server.start()  # a failed restart test must not take the rest of the module down
    name = unique("flt")
    server.execute(f"CREATE DATABASE `{name}`")
    url = server.url(name)
    seed_visits(url, months=[(2023, 1), (2023, 2)], rows_per_month=ROWS_PER_MONTH)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        january = set(
            conn.execute(
                sa.text(
                    "SELECT id FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01'"
                )
            ).scalars()
        )
    engine.dispose()
    try:
        yield {
            "server": server,
            "database": name,
            "url": url,
            "original": source_keys(url),
            "january": january,
            "bucket": s3_bucket,
            "store": open_store(f"s3://{s3_bucket}/archive", region="us-east-1"),
        }
    finally:
        server.execute("SET GLOBAL innodb_lock_wait_timeout = 50")
        server.execute(f"DROP DATABASE IF EXISTS `{name}`")


def make_job(seeded: dict[str, Any], *, store: ObjectStore | None = None, pause: float = 0,
             log: Callable[[str], None] | None = None) -> ArchiveJob:  # fmt: skip
    tables = (
        "  - name: visits\n"
        f"    archive: {{retention: 1 year, batch_size: 100, part_rows: 1000, chunk_rows: 500, "
        f"pause_seconds: {pause}, max_threads_running: 500}}\n"
    )
    config = config_for(source_url=seeded["url"], archive_url="s3://unused/archive", tables=tables)
    client = SourceClient(seeded["url"])
    return ArchiveJob(
        source=client,
        store=store or seeded["store"],
        table=config.tables[0],
        source_table=client.reflect("visits"),
        partition_key="2023-01-01",
        window=JAN_2023,
        run_id=uuid.uuid4().hex,
        now=datetime.now(UTC),
        log=log or (lambda message: None),
    )


def assert_accounted(seeded: dict[str, Any]) -> None:
    """Every original row is in exactly one place (source, or the queryable archive once); recorded."""
    remaining = source_keys(seeded["url"])
    archived = archived_keys(seeded["store"])
    found = remaining | set(archived)
    current().checked(rows=len(seeded["original"]), lost=len(seeded["original"] - found))
    assert len(archived) == len(set(archived)), "a row is archived twice"
    assert remaining.isdisjoint(archived), "a row is both in the source and in the archive"
    assert found == seeded["original"], f"rows lost: {len(seeded['original'] - found)}"


def rerun_completes(seeded: dict[str, Any]) -> ArchiveReport:
    """A healthy re-run finishes the partition: January archived once and gone, February untouched."""
    report = make_job(seeded).run()
    assert_accounted(seeded)
    assert sorted(archived_keys(seeded["store"])) == sorted(seeded["january"])
    assert source_keys(seeded["url"]) == seeded["original"] - seeded["january"]
    assert not [k for k in seeded["store"].list("visits") if "/_staging/" in k], "staging is cleaned up"
    return report


def assert_clear_failure(error: BaseException) -> None:
    """The message a person reads: which table and partition, that nothing was lost, what to do."""
    text = str(error)
    assert isinstance(error, ArchiveError), f"{type(error).__name__}: {text}"
    assert "table 'visits' partition 2023-01-01" in text
    assert "Nothing was lost" in text and "Re-run the partition" in text
    assert PASSWORD not in text and "[SQL:" not in text, "no credentials, no statement with bound keys"


class Background:
    """An archive run in a thread, so the test can break the server while it runs."""

    def __init__(self, job: ArchiveJob) -> None:
        self.job = job
        self.outcome: ArchiveReport | BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome = self.job.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.outcome = exc

    def result(self, timeout: float = 60) -> ArchiveReport | BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run hangs"
        return self.outcome


def wait_until_purging(seeded: dict[str, Any], run: Background) -> None:
    """Return once the run has deleted its first batch (and is not done)."""
    original = len(seeded["original"])
    seeded["server"].wait_for(
        "the purge to start", lambda: len(source_keys(seeded["url"])) < original or not run.thread.is_alive()
    )
    assert run.thread.is_alive(), f"the run ended before the fault: {run.outcome!r}"


def lock_holder(seeded: dict[str, Any]) -> int:
    """Connection id holding the run's named lock for `visits`."""
    name = f"etl_assets:archive:{seeded['database']}.visits"
    return int(seeded["server"].execute("SELECT IS_USED_LOCK(:n)", {"n": name})[0][0] or 0)


# -- KILL CONNECTION ------------------------------------------------------------------------------------


def test_killed_lock_connection_stops_the_run_before_its_first_delete(seeded: dict[str, Any]) -> None:
    server = seeded["server"]
    killed: list[int] = []

    def log(message: str) -> None:
        if message.startswith("verified ") and not killed:  # verification done, the purge is next
            killed.append(lock_holder(seeded))
            server.execute(f"KILL CONNECTION {killed[0]}")

    job = make_job(seeded, log=log)
    with pytest.raises(ArchiveError) as raised:
        job.run()
    assert killed and killed[0] > 0
    assert_clear_failure(raised.value)
    assert "lost its 'archive' lock" in str(raised.value)
    assert job.report.rows_purged == 0
    assert source_keys(seeded["url"]) == seeded["original"], "not one delete without the lock"
    assert_accounted(seeded)
    assert rerun_completes(seeded).recovered_runs == [job.run_id], "the verified run is rolled forward"


def test_killed_lock_connection_mid_purge_stops_at_the_next_batch(seeded: dict[str, Any]) -> None:
    run = Background(make_job(seeded, pause=0.3))
    wait_until_purging(seeded, run)
    seeded["server"].execute(f"KILL CONNECTION {lock_holder(seeded)}")
    error = run.result()
    assert isinstance(error, BaseException)
    assert_clear_failure(error)
    purged = run.job.report.rows_purged
    assert 0 < purged < ROWS_PER_MONTH, "stopped mid-purge"
    assert len(source_keys(seeded["url"])) == len(seeded["original"]) - purged
    rerun_completes(seeded)


def test_killed_delete_connection_fails_the_run_clearly(seeded: dict[str, Any]) -> None:
    server = seeded["server"]
    server.execute("SET GLOBAL innodb_lock_wait_timeout = 30")
    last = max(seeded["january"])
    holder = sa.create_engine(seeded["url"]).connect()
    try:
        # An application transaction holds the last January row: the batch with it waits, visibly.
        holder.execute(sa.text("SELECT id FROM visits WHERE id = :i FOR UPDATE"), {"i": last})
        run = Background(make_job(seeded))
        # Only the batch waiting for that row lock is killed: a DELETE that has run for half a second (a
        # batch of 100 rows takes milliseconds). Any running DELETE would not do: a fast earlier batch
        # can finish between the poll and the KILL, the pool replaces the dead connection, and the run
        # goes on to wait out the lock (three attempts, past this test's timeout). MariaDB does not list
        # a statement waiting for its first row lock in INNODB_TRX, so the process list's clock decides.
        waiting = server.wait_for(
            "the delete batch to wait for the row lock",
            lambda: server.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :d AND USER = 'etl' "
                "AND INFO LIKE 'DELETE FROM%' AND TIME_MS > 500",
                {"d": seeded["database"]},
            ),
        )
        server.execute(f"KILL CONNECTION {int(waiting[0][0])}")
        error = run.result()
        assert isinstance(error, BaseException)
        assert_clear_failure(error)
        assert "failed during the purge" in str(error)
        assert 0 < run.job.report.rows_purged < ROWS_PER_MONTH
    finally:
        holder.rollback()
        holder.close()
    rerun_completes(seeded)


# -- lock wait timeout on a delete batch ------------------------------------------------------------------


def test_lock_wait_timeout_is_retried_and_the_run_completes(seeded: dict[str, Any]) -> None:
    server = seeded["server"]
    server.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    holder = sa.create_engine(seeded["url"]).connect()
    holder.execute(sa.text("SELECT id FROM visits WHERE id = :i FOR UPDATE"), {"i": max(seeded["january"])})
    log: list[str] = []

    def release_on_retry(message: str) -> None:
        log.append(message)
        if "retrying (1/2)" in message:
            holder.rollback()  # the application transaction ends while the batch backs off

    try:
        report = make_job(seeded, log=release_on_retry).run()
    finally:
        holder.rollback()
        holder.close()
    retries = [line for line in log if "hit a lock wait timeout" in line]
    assert len(retries) == 1 and "rolled back; retrying (1/2)" in retries[0]
    assert report.rows_purged == report.rows_committed == ROWS_PER_MONTH
    assert_accounted(seeded)
    assert source_keys(seeded["url"]) == seeded["original"] - seeded["january"]


def test_lock_wait_timeout_that_persists_fails_clearly_and_a_rerun_completes(seeded: dict[str, Any]) -> None:
    server = seeded["server"]
    server.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    holder = sa.create_engine(seeded["url"]).connect()
    holder.execute(sa.text("SELECT id FROM visits WHERE id = :i FOR UPDATE"), {"i": max(seeded["january"])})
    job = make_job(seeded)
    try:
        with pytest.raises(ArchiveError) as raised:
            job.run()
        assert_clear_failure(raised.value)
        assert "failed 3 times with a lock wait timeout" in str(raised.value)
        assert "INNODB_TRX" in str(raised.value)
        # The batches before the locked row's batch are gone; those rows wait in verified staging.
        assert 0 < job.report.rows_purged < ROWS_PER_MONTH
    finally:
        holder.rollback()
        holder.close()
    assert rerun_completes(seeded).recovered_runs == [job.run_id]


# -- the server restarted ---------------------------------------------------------------------------------


def test_server_restarted_mid_purge_fails_clearly_and_a_rerun_completes(seeded: dict[str, Any]) -> None:
    run = Background(make_job(seeded, pause=0.3))
    wait_until_purging(seeded, run)
    seeded["server"].restart()
    error = run.result()
    assert isinstance(error, BaseException)
    assert_clear_failure(error)
    purged = run.job.report.rows_purged
    assert 0 < purged < ROWS_PER_MONTH
    assert len(source_keys(seeded["url"])) == len(seeded["original"]) - purged, "committed deletes survived"
    assert_accounted_with_staging = rerun_completes(seeded)
    assert assert_accounted_with_staging.recovered_runs == [run.job.run_id]


def test_server_restarted_mid_extraction_fails_before_any_delete_and_a_rerun_completes(
    seeded: dict[str, Any], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(s3_endpoint) as proxy:
        # The first staging part's upload is held for 3 s: the run is mid-extraction (1000 of 1200
        # rows read) while the server restarts under it.
        held = proxy.add(
            Rule(method="PUT", key="/_staging/", exclude=".manifest.json", kind="slow", delay=3.0)
        )
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        slow_store = open_store(f"s3://{seeded['bucket']}/archive", region="us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        run = Background(make_job(seeded, store=slow_store))
        seeded["server"].wait_for(
            "the first part's upload", lambda: held.hits >= 1 or not run.thread.is_alive()
        )
        assert run.thread.is_alive(), f"the run ended before the fault: {run.outcome!r}"
        seeded["server"].restart()
        error = run.result()
    assert isinstance(error, BaseException)
    assert_clear_failure(error)
    # The reader may fail on its broken connection, or read the rest on a new one; either way the
    # lock died with the restart, so no row may leave the source in this run.
    assert run.job.report.rows_purged == 0
    assert source_keys(seeded["url"]) == seeded["original"]
    assert archived_keys(seeded["store"]) == []
    rerun_completes(seeded)
