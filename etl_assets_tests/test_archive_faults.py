"""The archive against an S3 endpoint that fails: throttling, 5xx, resets, truncated bodies, slowness.

A fault-injecting proxy (`faults.FaultProxy`, loopback only) sits between the archive's S3Store and
the moto server. Each scenario checks invariant 4 and 7 of design.md §5 the way test_archive.py does:
every original row is in exactly one of the source and the queryable archive (no loss, no duplicate),
and no row leaves the source before its copy was verified in the store. Runs that fail are re-run
through the healthy endpoint and must converge.

About attempts: S3Store configures botocore with `retries={"mode": "standard", "max_attempts": 6}`;
in botocore that key counts *retries*, so one request makes at most 7 attempts. Persistent faults
use non-throttling errors (500 InternalError, 503 ServiceUnavailable) because botocore backs off
throttling errors (503 SlowDown) from a 1 s base (up to ~45 s for 6 retries), which would dominate
the file's runtime; SlowDown is covered by a transient fault.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveError, ArchiveJob, ArchiveReport
from etl_assets.lib.layout import is_queryable
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, StoreError, open_store
from etl_assets_tests.faults import FaultProxy, Rule
from etl_assets_tests.reliability import current
from etl_assets_tests.support import archived_keys, committed, config_for, seed_visits, source_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
TABLES = """
  - name: visits
    archive: {retention: 1 year, batch_size: 500, part_rows: 1000, chunk_rows: 500, max_threads_running: 500}
"""
ROWS_PER_MONTH = 2200  # January: 3 parts (1000 + 1000 + 200)
MAX_ATTEMPTS = 7  # 1 + retries["max_attempts"]=6 (see the module docstring)
STAGING_PART = "/_staging/year=2023/month=01/"
COMMITTED_FOLDER = "/visits/year=2023/month=01/"


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


@pytest.fixture
def seeded(mysql_url: str) -> dict[str, Any]:
    seed_visits(mysql_url, months=[(2023, 1), (2023, 2)], rows_per_month=ROWS_PER_MONTH)
    original = source_keys(mysql_url)
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        january = {
            row[0]
            for row in conn.execute(
                sa.text(
                    "SELECT id FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01'"
                )
            )
        }
    engine.dispose()
    assert len(january) == ROWS_PER_MONTH
    return {"url": mysql_url, "original": original, "january": january}


def open_via(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch, **sizes: int) -> ObjectStore:
    """An S3Store whose boto3 client talks to `endpoint` (boto3 reads AWS_ENDPOINT_URL when it is created).

    `sizes` are open_store's multipart settings (`multipart_threshold_bytes`, `multipart_chunk_bytes`).
    """
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # it would take precedence
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return open_store(f"s3://{bucket}/archive", region="us-east-1", **sizes)


@pytest.fixture
def faulty(proxy: FaultProxy, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """The archive's store, through the fault proxy."""
    return open_via(proxy.url, s3_bucket, monkeypatch)


@pytest.fixture
def healthy(s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """The same bucket straight through the real endpoint (for re-runs and for reading what is stored)."""
    return open_via(s3_endpoint, s3_bucket, monkeypatch)


def make_job(url: str, store: ObjectStore, tables: str = TABLES) -> ArchiveJob:
    config = config_for(source_url=url, archive_url="s3://unused/archive", tables=tables)
    table = config.tables[0]
    client = SourceClient(url)
    return ArchiveJob(
        source=client,
        store=store,
        table=table,
        source_table=client.reflect(table.name),
        partition_key="2023-01-01",
        window=JAN_2023,
        run_id=uuid.uuid4().hex,
        now=datetime.now(UTC),
        log=lambda message: None,
    )


def staged_keys(store: ObjectStore) -> list[int]:
    """Primary keys in staging parts (outside the queryable view), duplicates kept."""
    keys: list[int] = []
    for key in store.list("visits"):
        if "/_staging/" in key and key.endswith(".parquet"):
            keys.extend(
                pq.read_table(io.BytesIO(store.get_bytes(key)), columns=["id"]).column("id").to_pylist()
            )
    return keys


def assert_accounted(seeded: dict[str, Any], store: ObjectStore, *, staging_allowed: bool = False) -> None:
    """Every original row is in exactly one place: the source or the queryable archive (or, while a
    verified run waits to be rolled forward, its staging parts), and nowhere twice."""
    remaining = source_keys(seeded["url"])
    archived = archived_keys(store)
    staged = staged_keys(store) if staging_allowed else []
    assert len(archived) == len(set(archived)), "a row is archived twice"
    assert remaining.isdisjoint(archived), "a row is both in the source and in the archive"
    everywhere = [*remaining, *archived, *staged]
    current().checked(rows=len(seeded["original"]), lost=len(seeded["original"] - set(everywhere)))
    assert len(everywhere) == len(set(everywhere)), "a row is in more than one place"
    assert set(everywhere) == seeded["original"], (
        f"rows lost: {len(seeded['original'] - set(everywhere))}, rows invented: {len(set(everywhere) - seeded['original'])}"
    )


def assert_nothing_deleted(seeded: dict[str, Any], store: ObjectStore) -> None:
    assert source_keys(seeded["url"]) == seeded["original"], "a row left the source without a verified copy"
    assert archived_keys(store) == [], "nothing may be published by a run that failed before its purge"
    assert_accounted(seeded, store)


def assert_complete(seeded: dict[str, Any], store: ObjectStore, report: ArchiveReport) -> None:
    """January is archived exactly once and gone from the source; February is untouched."""
    assert_accounted(seeded, store)
    assert sorted(archived_keys(store)) == sorted(seeded["january"])
    assert source_keys(seeded["url"]) == seeded["original"] - seeded["january"]
    assert not [k for k in store.list("visits") if "/_staging/" in k], "staging is cleaned up"
    manifests = committed(store)
    assert sum(m.rows for m in manifests) == len(seeded["january"])
    assert report.committed_rows_in_partition == len(seeded["january"])


def rerun_healthy(seeded: dict[str, Any], healthy: ObjectStore) -> ArchiveReport:
    report = make_job(seeded["url"], healthy).run()
    assert_complete(seeded, healthy, report)
    return report


def rerun_rolls_forward(seeded: dict[str, Any], healthy: ObjectStore, failed: ArchiveJob) -> None:
    """A healthy re-run commits what the failed run purged from its verified staging, reading nothing."""
    report = rerun_healthy(seeded, healthy)
    assert report.recovered_runs == [failed.run_id], "the re-run rolls the verified run forward"
    assert report.rows_committed == ROWS_PER_MONTH and report.rows_extracted == 0


# -- (1) transient throttling on a staging PUT ------------------------------------------------------------


def test_two_slowdowns_on_a_staging_put_are_retried_and_the_archive_completes(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    part = proxy.add(Rule(method="PUT", key=STAGING_PART, exclude=".manifest.json", kind="slowdown", times=2))
    report = make_job(seeded["url"], faulty).run()
    assert part.hits == 2
    first_part = proxy.seen("PUT", "-0.parquet")
    assert [s.fault for s in first_part[:3]] == ["slowdown", "slowdown", ""], "the third attempt got through"
    assert report.rows_extracted == report.rows_purged == report.rows_committed == ROWS_PER_MONTH
    assert_complete(seeded, healthy, report)


# -- (2) persistent 500 on PUT ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Previous unbuffered result was left incomplete")  # the abandoned stream
def test_persistent_500_on_put_fails_the_run_before_any_delete_and_a_rerun_completes(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    puts = proxy.add(Rule(method="PUT", key=STAGING_PART, kind="internal", times=None))
    with pytest.raises(StoreError, match="InternalError"):
        make_job(seeded["url"], faulty).run()
    assert puts.hits == MAX_ATTEMPTS, "the first staging part was tried 1 + 6 times, then the run stopped"
    assert_nothing_deleted(seeded, healthy)
    assert not proxy.seen("DELETE") and not proxy.seen("GET", ".parquet")
    rerun_healthy(seeded, healthy)


def test_a_failed_extract_releases_the_source_table(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore
) -> None:
    proxy.add(Rule(method="PUT", key=STAGING_PART, kind="internal", times=None))
    engine = sa.create_engine(seeded["url"])
    try:
        with pytest.raises(StoreError):
            make_job(seeded["url"], faulty).run()
        with engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION lock_wait_timeout = 2")
            conn.exec_driver_sql("ALTER TABLE visits COMMENT = 'schema change after a failed archive run'")
    finally:
        engine.dispose()


# -- (3) persistent 500 on GET during verification --------------------------------------------------------


def test_persistent_500_on_get_during_verify_fails_before_any_delete_and_a_rerun_completes(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    gets = proxy.add(Rule(method="GET", key=".parquet", kind="internal", times=None))
    job = make_job(seeded["url"], faulty)
    with pytest.raises(ArchiveError, match="verification failed, nothing was deleted"):
        job.run()
    assert gets.hits == MAX_ATTEMPTS
    assert job.report.rows_purged == 0
    assert_nothing_deleted(seeded, healthy)
    report = rerun_healthy(seeded, healthy)
    assert report.discarded_staging == 1, "the unverified staging of the failed run is discarded"
    assert report.recovered_runs == []


# -- (4) one connection reset on GET ----------------------------------------------------------------------


def test_one_connection_reset_on_get_is_retried_and_the_archive_completes(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    reset = proxy.add(Rule(method="GET", key=".parquet", kind="reset", times=1))
    report = make_job(seeded["url"], faulty).run()
    assert reset.hits == 1
    assert report.rows_purged == report.rows_committed == ROWS_PER_MONTH
    assert_complete(seeded, healthy, report)


# -- (5) truncated GET bodies during verification ---------------------------------------------------------


@pytest.mark.parametrize("times", [1, None], ids=["once", "persistent"])
def test_truncated_get_body_during_verify_never_leads_to_a_delete(
    times: int | None, seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    truncated = proxy.add(Rule(method="GET", key=STAGING_PART, exclude=".manifest.json", kind="truncate",
                               times=times))  # fmt: skip
    job = make_job(seeded["url"], faulty)
    if times == 1:
        # s3transfer re-downloads after an incomplete body, so one truncation is invisible to the run.
        report = job.run()
        assert truncated.hits == 1
        assert_complete(seeded, healthy, report)
        return
    # Persistent: the download gives up (s3transfer makes 5 attempts) and verification stops the run.
    with pytest.raises(ArchiveError, match="verification failed, nothing was deleted"):
        job.run()
    assert truncated.hits == 5
    assert_nothing_deleted(seeded, healthy)
    assert rerun_healthy(seeded, healthy).discarded_staging == 1


# -- (6) persistent 503 on the commit after the purge -----------------------------------------------------


def test_persistent_503_during_commit_leaves_rows_in_staging_and_a_rerun_rolls_forward(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    # Every write into the committed (queryable) folder fails: the server-side copy of each part and
    # the committed manifest. Staging writes and all reads work.
    commit = proxy.add(Rule(method="PUT", key=COMMITTED_FOLDER, exclude="/_staging/", kind="unavailable",
                            times=None))  # fmt: skip
    job = make_job(seeded["url"], faulty)
    with pytest.raises(StoreError, match="ServiceUnavailable"):
        job.run()
    copies = proxy.seen("PUT", COMMITTED_FOLDER)
    assert commit.hits == MAX_ATTEMPTS and all(s.fault == "unavailable" for s in copies)
    assert job.report.rows_purged == ROWS_PER_MONTH, "the run failed after its purge"

    # The purged rows now exist only in the verified staging parts: out of the source, out of the view.
    assert source_keys(seeded["url"]) == seeded["original"] - seeded["january"]
    assert archived_keys(healthy) == []
    assert sorted(staged_keys(healthy)) == sorted(seeded["january"])
    assert_accounted(seeded, healthy, staging_allowed=True)

    rerun_rolls_forward(seeded, healthy, job)


# -- (7) slow responses -----------------------------------------------------------------------------------


def test_slow_head_responses_still_complete(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    slow = proxy.add(Rule(method="HEAD", kind="slow", delay=1.0, times=3))
    started = time.monotonic()
    report = make_job(seeded["url"], faulty).run()
    assert slow.hits == 3 and time.monotonic() - started >= 3.0
    assert_complete(seeded, healthy, report)


# -- (7b) throttling on the verification read-back; 5xx on HEAD ------------------------------------------


def test_two_slowdowns_on_the_verification_get_are_retried_and_the_archive_completes(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    # Verification downloads every staged part; the purge deletes from the bytes it read back, so a
    # read-back that S3 throttles is retried before the first delete.
    gets = proxy.add(Rule(method="GET", key=STAGING_PART, exclude=".manifest.json", kind="slowdown", times=2))
    report = make_job(seeded["url"], faulty).run()
    assert gets.hits == 2
    first_part = [s for s in proxy.seen("GET", STAGING_PART) if s.path.endswith("-0.parquet")]
    assert [s.fault for s in first_part[:3]] == ["slowdown", "slowdown", ""], "the third attempt got through"
    assert len({s.path for s in proxy.seen("GET", STAGING_PART) if s.path.endswith(".parquet")}) == 3
    assert report.rows_extracted == report.rows_purged == report.rows_committed == ROWS_PER_MONTH
    assert_complete(seeded, healthy, report)


@pytest.mark.filterwarnings("ignore:Previous unbuffered result was left incomplete")  # the abandoned stream
def test_persistent_500_on_head_after_a_staging_upload_fails_before_any_delete_and_a_rerun_completes(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    # Every upload is checked with a HEAD (its size); a HEAD that keeps failing is never taken for a
    # missing object nor skipped: the run stops before verification, so before any delete.
    heads = proxy.add(Rule(method="HEAD", key=STAGING_PART, kind="internal", times=None))
    job = make_job(seeded["url"], faulty)
    with pytest.raises(
        StoreError, match=r"could not inspect .*_staging/year=2023/month=01/\S+-0\.parquet.*500"
    ):
        job.run()
    assert heads.hits == MAX_ATTEMPTS, "the HEAD after the first part's upload was tried 1 + 6 times"
    assert job.report.rows_purged == 0
    assert not proxy.seen("GET", ".parquet"), "verification never started"
    assert_nothing_deleted(seeded, healthy)
    assert rerun_healthy(seeded, healthy).discarded_staging == 1


def test_persistent_503_on_head_after_the_commits_copy_leaves_rows_in_staging_and_a_rerun_rolls_forward(
    seeded: dict[str, Any], proxy: FaultProxy, faulty: ObjectStore, healthy: ObjectStore
) -> None:
    # The commit copies each part into the queryable folder, then checks the copy with a HEAD. That HEAD
    # fails every time: the run stops after its purge with the first copy published and no manifest.
    heads = proxy.add(Rule(method="HEAD", key=COMMITTED_FOLDER, exclude="/_staging/", kind="unavailable",
                           times=None))  # fmt: skip
    job = make_job(seeded["url"], faulty)
    with pytest.raises(StoreError, match=r"could not inspect .*/visits/year=2023/month=01/\S+-0\.parquet"):
        job.run()
    assert heads.hits == MAX_ATTEMPTS
    assert job.report.rows_purged == ROWS_PER_MONTH, "the run failed after its purge"
    assert committed(healthy) == [], "no committed manifest was written"

    # Every purged row is in the verified staging; the one copied part is in the queryable view once.
    remaining, archived, staged = source_keys(seeded["url"]), archived_keys(healthy), staged_keys(healthy)
    assert remaining == seeded["original"] - seeded["january"]
    assert sorted(staged) == sorted(seeded["january"])
    assert len(archived) == len(set(archived)) == 1000 and set(archived) <= seeded["january"]
    current().checked(rows=len(seeded["original"]), lost=len(seeded["original"] - remaining - set(staged)))

    rerun_rolls_forward(seeded, healthy, job)


def test_the_proxy_listens_on_loopback_only_and_stops(s3_endpoint: str) -> None:
    with FaultProxy(s3_endpoint) as proxy:
        assert proxy.url.startswith("http://127.0.0.1:")
        port = int(proxy.url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the proxy still accepts connections after stop()"


# -- (8) multipart uploads: faults on one part, on the completion -----------------------------------------
#
# Parts of 32 MiB and more go up as multipart uploads (16 MiB chunks). Here the store's threshold and
# chunk are S3's 5 MiB minimum and January's rows carry ~8 KB of incompressible text each, so its one
# staging part (~13 MB) is uploaded in 3 chunks: UploadPart is `PUT ...?partNumber=N&uploadId=...`,
# CompleteMultipartUpload `POST ...?uploadId=...`.

MULTIPART = {"multipart_threshold_bytes": 5 << 20, "multipart_chunk_bytes": 5 << 20}
ONE_PART_TABLES = """
  - name: visits
    archive: {retention: 1 year, batch_size: 500, part_rows: 5000, chunk_rows: 2500, max_threads_running: 500}
"""
PART_2 = "partNumber=2"
UPLOAD_FAILED = r"could not upload .*_staging/year=2023/month=01/"
MULTIPART_FAULTS = {
    # fault name: (rule, None if the first run completes else what its error says)
    "500-on-part-2-persistent": (Rule(method="PUT", key=STAGING_PART, query=PART_2, kind="internal", times=None),
                                 UPLOAD_FAILED + ".*InternalError.*UploadPart"),
    "500-on-complete-persistent": (Rule(method="POST", key=STAGING_PART, query="uploadId=", kind="internal",
                                        times=None), UPLOAD_FAILED + ".*InternalError.*CompleteMultipartUpload"),
    "two-slowdowns-on-part-2": (Rule(method="PUT", key=STAGING_PART, query=PART_2, kind="slowdown", times=2), None),
    "reset-on-part-3": (Rule(method="PUT", key=STAGING_PART, query="partNumber=3", kind="reset", times=1), None),
    "slow-part-1": (Rule(method="PUT", key=STAGING_PART, query="partNumber=1", kind="slow", delay=2.0, times=1),
                    None),
    "503-on-complete-once": (Rule(method="POST", key=STAGING_PART, query="uploadId=", kind="unavailable", times=1),
                             None),
    # Half of a middle part's bytes reach S3: S3 refuses the upload (its checksum no longer matches;
    # the local endpoint finds the part below the 5 MiB minimum).
    "short-part-2-once": (Rule(method="PUT", key=STAGING_PART, query=PART_2, kind="short_body", times=1),
                          UPLOAD_FAILED + ".*(BadDigest|EntityTooSmall|InvalidRequest)"),
    # Half of the last part's bytes reach S3 and it accepts them: the object comes out short, and the
    # size check after the upload refuses it.
    "short-last-part-once": (Rule(method="PUT", key=STAGING_PART, query="partNumber=3", kind="short_body",
                                  times=1), r"has [\d,]+ bytes after its upload of [\d,]+ bytes.*re-run"),
}  # fmt: skip


@pytest.fixture
def seeded_large(seeded: dict[str, Any]) -> dict[str, Any]:
    """`seeded` with ~8 KB of random (incompressible) text in every January row's payload."""
    engine = sa.create_engine(seeded["url"])
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE visits SET payload = JSON_OBJECT('scan', :scan) WHERE id = :id"),
                [
                    {"id": key, "scan": base64.b64encode(os.urandom(6000)).decode()}
                    for key in seeded["january"]
                ],
            )
    finally:
        engine.dispose()
    return seeded


def open_multipart_uploads(endpoint: str, bucket: str) -> list[str]:
    listed = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint).list_multipart_uploads(
        Bucket=bucket
    )
    return [upload["Key"] for upload in listed.get("Uploads", [])]


@pytest.mark.filterwarnings("ignore:Previous unbuffered result was left incomplete")  # the abandoned stream
@pytest.mark.parametrize("fault", list(MULTIPART_FAULTS))
def test_faults_on_multipart_uploads_fail_before_any_delete_or_complete(
    fault: str,
    seeded_large: dict[str, Any],
    proxy: FaultProxy,
    s3_endpoint: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    template, error = MULTIPART_FAULTS[fault]
    rule = proxy.add(dataclasses.replace(template))
    faulty = open_via(proxy.url, s3_bucket, monkeypatch, **MULTIPART)
    job = make_job(seeded_large["url"], faulty, ONE_PART_TABLES)
    healthy = open_via(s3_endpoint, s3_bucket, monkeypatch, **MULTIPART)
    if error is None:
        report = job.run()
        assert rule.hits == rule.times
        assert report.rows_purged == report.rows_committed == ROWS_PER_MONTH
        assert_complete(seeded_large, healthy, report)
    else:
        with pytest.raises(StoreError, match=error):
            job.run()
        assert rule.hits == (MAX_ATTEMPTS if rule.times is None else rule.times)
        assert job.report.rows_purged == 0
        assert_nothing_deleted(seeded_large, healthy)
        assert open_multipart_uploads(s3_endpoint, s3_bucket) == [], (
            "a failed multipart upload is aborted, not left to accumulate hidden, billed parts"
        )
        rerun_healthy(seeded_large, healthy)
    assert proxy.part_numbers(STAGING_PART) == {1, 2, 3}, (
        "the staging part went up as a multipart upload of three parts"
    )
    assert open_multipart_uploads(s3_endpoint, s3_bucket) == []
    # Every archived row carries its whole payload.
    payloads = [len(json.loads(v)["scan"]) for v in _archived_column(healthy, "payload")]
    assert payloads == [8000] * ROWS_PER_MONTH


def _archived_column(store: ObjectStore, column: str) -> list[Any]:
    values: list[Any] = []
    for key in store.list("visits"):
        if is_queryable(key):
            values.extend(
                pq.read_table(io.BytesIO(store.get_bytes(key)), columns=[column]).column(column).to_pylist()
            )
    return values
