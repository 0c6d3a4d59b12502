"""The archive against real MariaDB and the local S3 endpoint: one test per invariant (design.md §5)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveError, ArchiveJob, _ranges_apart, restore_partition
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import open_store
from etl_assets_tests.support import (
    archived_keys,
    committed,
    config_for,
    month_keys,
    seed_visits,
    source_keys,
    wrap,
)

pytestmark = pytest.mark.integration

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
TABLES = """
  - name: visits
    archive: {retention: 1 year, batch_size: 250, part_rows: 1000, chunk_rows: 500, max_threads_running: 500}
"""


def make_job(url: str, store: Any, *, window: Window = JAN_2023, tables: str = TABLES, guard: Any = None,
             log: Any = None, now: datetime | None = None) -> ArchiveJob:  # fmt: skip
    config = config_for(source_url=url, archive_url="s3://unused/archive", tables=tables)
    table = config.tables[0]
    client = SourceClient(url)
    return ArchiveJob(
        source=client,
        store=store,
        table=table,
        source_table=client.reflect(table.name, primary_key=table.primary_key),
        partition_key=f"{window.start:%Y-%m-%d}",
        window=window,
        run_id=uuid.uuid4().hex,
        now=now or datetime.now(UTC),
        log=log or (lambda message: None),
        replica_guard=guard,
    )


def insert_late_january_row(url: str) -> int:
    """A row inserted after January was archived, stamped in January (a new, highest key); its id."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO visits (patient_id, status, amount, notes, payload, is_paid, created_at, updated_at) "
                "VALUES (1, 'completed', 1.00, 'late', '{}', 0, '2023-01-14', '2023-01-15 08:00:00')"
            )
        )
        new_key = conn.execute(sa.text("SELECT MAX(id) FROM visits")).scalar_one()
    engine.dispose()
    return int(new_key)


@pytest.fixture
def seeded(mysql_url: str) -> dict[str, Any]:
    total = seed_visits(
        mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=2500, null_time_rows=7
    )
    return {"url": mysql_url, "total": total, "keys": source_keys(mysql_url)}


@pytest.fixture
def store(s3_bucket: str) -> Any:
    return open_store(f"s3://{s3_bucket}/archive", region="us-east-1")


def test_archive_moves_exactly_the_window_and_accounts_for_every_row(
    seeded: dict[str, Any], store: Any
) -> None:
    url = seeded["url"]
    january = month_keys(url, JAN_2023)
    report = make_job(url, store).run()

    remaining = source_keys(url)
    archived = archived_keys(store)
    assert sorted(archived) == sorted(january), "the archive holds exactly January's rows, each once"
    assert remaining.isdisjoint(archived)
    assert remaining | set(archived) == seeded["keys"]
    assert report.rows_extracted == report.rows_purged == report.rows_committed == len(january)
    assert report.null_time_rows == 7
    assert len(report.parts) == 3, "2,500 rows in parts of at most 1,000 rows"
    manifests = committed(store)
    assert len(manifests) == 1
    assert manifests[0].rows == len(january) and manifests[0].window_start.startswith("2023-01-01")
    assert not [k for k in store.list("visits") if "/_staging/" in k], "staging is cleaned up"


def test_boundary_row_at_midnight_lands_in_exactly_one_partition(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        midnight_feb = conn.execute(
            sa.text("SELECT id FROM visits WHERE updated_at = '2023-02-01 00:00:00'")
        ).scalar_one()
    engine.dispose()
    make_job(url, store).run()
    assert midnight_feb in source_keys(url), "2023-02-01 00:00 belongs to February, not January"
    feb = Window(datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 3, 1, tzinfo=UTC))
    make_job(url, store, window=feb).run()
    archived = archived_keys(store)
    assert archived.count(midnight_feb) == 1


def test_window_inside_retention_is_refused_before_touching_anything(
    seeded: dict[str, Any], store: Any
) -> None:
    url = seeded["url"]
    job = make_job(url, store, now=datetime(2023, 6, 15, tzinfo=UTC))
    with pytest.raises(ArchiveError, match=r"not eligible yet.*retention 1 year.*newest partition"):
        job.run()
    assert source_keys(url) == seeded["keys"]
    assert store.list("visits") == []


def test_rows_with_null_time_are_never_archived(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        nulls = {r[0] for r in conn.execute(sa.text("SELECT id FROM visits WHERE updated_at IS NULL"))}
    engine.dispose()
    for window in (JAN_2023, Window(datetime(2022, 12, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC))):
        make_job(url, store, window=window).run()
    assert nulls <= source_keys(url)
    assert nulls.isdisjoint(archived_keys(store))


def test_row_updated_after_extraction_stays_in_source_and_out_of_the_archive(
    seeded: dict[str, Any], store: Any
) -> None:
    url = seeded["url"]
    victim = min(month_keys(url, JAN_2023))
    engine = sa.create_engine(url)

    def on_log(message: str) -> None:
        # Between verification and purge: the application updates one archived row.
        if message.startswith("verified"):
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE visits SET notes = 'late edit', updated_at = '2023-01-20 10:00:00' WHERE id = :i"
                    ),
                    {"i": victim},
                )

    report = make_job(url, store, log=on_log).run()
    engine.dispose()
    assert victim in source_keys(url), "the updated row keeps its new version in the source"
    assert victim not in archived_keys(store), "its stale copy is not published"
    assert report.rows_kept_changed == 1
    assert report.rows_committed == report.rows_purged == report.rows_extracted - 1


def test_replica_guard_keeps_rows_the_replica_does_not_hold(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    january = sorted(month_keys(url, JAN_2023))
    held = set(january[: len(january) // 2])

    class HalfReplica:
        def holds(self, keys: list[tuple[Any, ...]], times: list[Any]) -> set[tuple[Any, ...]]:
            return {k for k in keys if k[0] in held}

    report = make_job(url, store, guard=HalfReplica()).run()
    assert set(archived_keys(store)) == held
    assert set(january) - held <= source_keys(url)
    assert report.rows_kept_not_in_replica == len(january) - len(held)


def test_rerun_of_a_finished_partition_changes_nothing(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    make_job(url, store).run()
    before = {k: store.head(k) for k in store.list("visits")}
    report = make_job(url, store).run()
    after = {k: store.head(k) for k in store.list("visits")}
    assert report.rows_extracted == 0 and report.message == "no rows to archive in this window"
    assert before.keys() == after.keys()
    assert all(before[k].size == after[k].size for k in before)
    assert report.committed_rows_in_partition == 2500


def test_every_object_is_encrypted_and_locked_when_configured(mysql_url: str, locked_bucket: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=300)
    kms = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    store = open_store(f"s3://{locked_bucket}/a", kms_key_id=kms, lock_mode="GOVERNANCE", lock_days=2557,
                       region="us-east-1")  # fmt: skip
    make_job(mysql_url, store).run()
    keys = store.list("visits")
    assert keys
    s3 = boto3.client("s3", region_name="us-east-1")
    for key in keys:
        head = s3.head_object(Bucket=locked_bucket, Key=f"a/{key}")
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"].year >= datetime.now(UTC).year + 6
    version = s3.head_object(Bucket=locked_bucket, Key=f"a/{keys[0]}")["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        s3.delete_object(Bucket=locked_bucket, Key=f"a/{keys[0]}", VersionId=version)


def test_without_kms_key_objects_use_sse_s3(seeded: dict[str, Any], store: Any, s3_bucket: str) -> None:
    make_job(seeded["url"], store).run()
    s3 = boto3.client("s3", region_name="us-east-1")
    for key in store.list("visits"):
        assert s3.head_object(Bucket=s3_bucket, Key=f"archive/{key}")["ServerSideEncryption"] == "AES256"


def test_purge_false_archives_without_deleting_and_never_twice(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    tables = TABLES.replace("part_rows: 1000", "part_rows: 1000, purge: false")
    make_job(url, store, tables=tables).run()
    second = make_job(url, store, tables=tables).run()
    assert source_keys(url) == seeded["keys"]
    assert sorted(archived_keys(store)) == sorted(month_keys(url, JAN_2023))
    assert "purge is off" in second.message


def test_restore_puts_rows_back_identically(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    engine = sa.create_engine(url)
    select = sa.text(
        "SELECT * FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01' ORDER BY id"
    )
    with engine.connect() as conn:
        original = [tuple(r) for r in conn.execute(select)]
    make_job(url, store).run()
    client = SourceClient(url)
    table = client.reflect("visits")
    report = restore_partition(source=client, store=store, source_table=table, table="visits",
                               month=JAN_2023.start, log=lambda m: None)  # fmt: skip
    again = restore_partition(source=client, store=store, source_table=table, table="visits",
                              month=JAN_2023.start, log=lambda m: None)  # fmt: skip
    with engine.connect() as conn:
        restored = [tuple(r) for r in conn.execute(select)]
    engine.dispose()
    assert restored == original
    assert report.rows_restored == len(original) and report.rows_already_present == 0
    assert again.rows_restored == 0 and again.rows_already_present == len(original)


@pytest.mark.parametrize("purge", [True, False])
def test_archiving_restored_rows_again_never_archives_a_key_twice(
    seeded: dict[str, Any], store: Any, purge: bool
) -> None:
    """Restored rows are in the source and in the archive at once; a re-run of their partition must
    put neither them nor another version of their keys into the queryable view a second time."""
    url = seeded["url"]
    tables = TABLES if purge else TABLES.replace("part_rows: 1000", "part_rows: 1000, purge: false")
    january = month_keys(url, JAN_2023)
    make_job(url, store).run()  # archived and purged
    client = SourceClient(url)
    restore_partition(source=client, store=store, source_table=client.reflect("visits"), table="visits",
                      month=JAN_2023.start, log=lambda m: None)  # fmt: skip
    client.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        # One restored row changed inside January; one row new in January.
        moved = conn.execute(
            sa.text(
                "SELECT MIN(id) FROM visits WHERE updated_at >= '2023-01-01' AND updated_at < '2023-02-01'"
            )
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE visits SET updated_at = '2023-01-31 12:00:00.5' WHERE id = :id"), {"id": moved}
        )
    engine.dispose()
    new_key = insert_late_january_row(url)
    if not purge:
        # With the purge off, the first run's archive stands: the re-run must not add to it.
        make_job(url, store, tables=tables).run()
        assert sorted(archived_keys(store)) == sorted(january)
        return
    log: list[str] = []
    report = make_job(url, store, log=log.append).run()

    archived = archived_keys(store)
    assert len(archived) == len(set(archived)), "no key twice in the queryable archive"
    assert set(archived) == set(january) | {new_key}
    assert source_keys(url) & set(january) == {moved}, "the changed row stays; its archived version differs"
    assert report.rows_already_archived == len(january) - 1
    assert report.rows_kept_archived_differently == 1
    assert report.rows_committed == 1, "only the new row is archived again"
    assert any("another updated_at value" in line for line in log)
    assert any("read 3 of its part(s) whose keys meet this run's" in line for line in log)
    manifests = sorted(committed(store), key=lambda m: m.rows)
    assert [m.rows for m in manifests] == [1, len(january)]
    assert manifests[0].counts["already_archived"] == len(january) - 1


def test_a_rerun_reads_only_the_committed_parts_whose_keys_meet_its_own(
    seeded: dict[str, Any], store: Any
) -> None:
    """A late row of January (a new, higher key) is archived by a re-run without downloading the
    month's committed parts (their key ranges lie below it); a restored row makes them be read."""
    url = seeded["url"]
    make_job(url, store).run()
    insert_late_january_row(url)
    log: list[str] = []
    report = make_job(url, store, log=log.append).run()
    assert report.rows_committed == 1 and report.rows_already_archived == 0
    assert not [line for line in log if "is archived already" in line], "no committed part was read"
    archived = archived_keys(store)
    assert len(archived) == len(set(archived)) == 2501


def test_a_run_aborts_the_unfinished_uploads_a_killed_run_left(
    seeded: dict[str, Any], store: Any, s3_bucket: str
) -> None:
    """A run killed mid multipart upload leaves an upload S3 keeps (and bills) until it is aborted;
    the next run of the table aborts every one under the table's folder, staging and committed."""
    s3 = boto3.client("s3", region_name="us-east-1")
    left = [
        "archive/visits/_staging/year=2022/month=12/deadrun-0.parquet",
        "archive/visits/year=2023/month=01/deadrun-1.parquet",
    ]
    for key in [*left, "archive/visits_other/_staging/year=2023/month=01/live-0.parquet"]:
        upload = s3.create_multipart_upload(Bucket=s3_bucket, Key=key, ServerSideEncryption="AES256")
        s3.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)
    log: list[str] = []
    january = month_keys(seeded["url"], JAN_2023)
    make_job(seeded["url"], store, log=log.append).run()
    remaining = [u["Key"] for u in s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert remaining == ["archive/visits_other/_staging/year=2023/month=01/live-0.parquet"], (
        "another table's uploads are not this run's to abort"
    )
    assert "aborted 2 unfinished upload(s) that a killed run left under visits/" in log
    assert sorted(archived_keys(store)) == sorted(january)


def test_parts_of_wide_rows_are_bounded_by_bytes(seeded: dict[str, Any], store: Any, s3_bucket: str) -> None:
    """part_rows alone would make 3 parts of 1,000 wide rows; part_mb closes a part after the chunk
    (chunk_rows 500) that takes it past 0.2 MiB."""
    url = seeded["url"]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        # ~1 KB of incompressible text per row: ~0.25 MiB of Parquet per 500-row chunk.
        conn.execute(sa.text("ALTER TABLE visits MODIFY notes TEXT"))
        conn.execute(sa.text("UPDATE visits SET notes = CONCAT(" + ", ".join(
            f"SHA2(CONCAT('{salt}', id), 512)" for salt in "abcdefgh") + ")"))  # fmt: skip
    engine.dispose()
    january = month_keys(url, JAN_2023)
    report = make_job(
        url, store, tables=TABLES.replace("part_rows: 1000", "part_rows: 1000, part_mb: 0.2")
    ).run()
    assert sorted(archived_keys(store)) == sorted(january)
    s3 = boto3.client("s3", region_name="us-east-1")
    sizes = [s3.head_object(Bucket=s3_bucket, Key=url_.split(f"{s3_bucket}/", 1)[1])["ContentLength"]
             for url_ in report.parts]  # fmt: skip
    assert len(sizes) == 5, f"one 500-row chunk per part, each past 0.2 MiB: {sizes}"
    assert max(sizes) < 0.2 * 1024 * 1024 + 400_000, "at most one chunk past the bound"


def test_verification_failure_stops_before_any_delete(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]

    def corrupt(message: str) -> None:
        if message.startswith("extracted"):
            for key in store.list("visits"):
                if key.endswith("-1.parquet"):
                    store.put_bytes(key, b"PAR1 not really parquet", lock=False)

    with pytest.raises(ArchiveError, match="cannot be read back as Parquet"):
        make_job(url, store, log=corrupt).run()
    assert source_keys(url) == seeded["keys"]
    assert archived_keys(store) == []


def test_the_purge_reads_the_bytes_verification_read_back(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    downloads: list[str] = []
    wrap(store, "download", lambda key, path: downloads.append(key))
    report = make_job(url, store).run()
    assert report.rows_purged == report.rows_extracted == 2500
    staged = [key for key in downloads if "/_staging/" in key]
    assert len(staged) == 3 and len(set(staged)) == 3, "each of the 3 parts downloaded once, by verify"
    assert source_keys(url) == seeded["keys"] - set(archived_keys(store))


def test_a_verified_copy_changed_before_the_purge_stops_it_before_any_delete(
    seeded: dict[str, Any], store: Any
) -> None:
    url = seeded["url"]
    job = make_job(url, store)

    def tamper(manifest: Any) -> None:
        # The local copy the purge will read loses a row (a disk fault, another process): the purge
        # re-checks count and key digest of what it reads and refuses.
        path = next(iter(job._verified_copies.values()))
        pq.write_table(pq.read_table(path).slice(1), path)

    wrap(job, "finish", tamper)
    with pytest.raises(ArchiveError, match="does not match what was extracted"):
        job.run()
    assert source_keys(url) == seeded["keys"], "not one row deleted"
    # The staging in the store is intact and verified: a rerun downloads it and rolls it forward.
    rerun = make_job(url, store).run()
    assert rerun.recovered_runs == [job.run_id]
    archived = archived_keys(store)
    assert len(archived) == len(set(archived)) == 2500
    assert source_keys(url) == seeded["keys"] - set(archived)


THROTTLED = """
  - name: visits
    archive: {retention: 1 year, batch_size: 100, part_rows: 1000, chunk_rows: 500, max_threads_running: 1}
"""


def test_purge_waits_while_threads_running_is_above_the_limit(seeded: dict[str, Any], store: Any) -> None:
    url = seeded["url"]
    admin = sa.create_engine(url)
    busy = admin.connect()
    busy_id = busy.connection.dbapi_connection.thread_id()  # type: ignore[union-attr]
    # A second running statement: Threads_running is 2 (it and the status query) > 1 until it ends.

    def run_busy_statement() -> None:
        with contextlib.suppress(sa.exc.OperationalError):  # MariaDB reports the KILL QUERY below
            busy.execute(sa.text("SELECT SLEEP(60)")).all()

    sleeper = threading.Thread(target=run_busy_statement, daemon=True)
    sleeper.start()
    log: list[str] = []
    left_when_waiting: list[int] = []

    def watch(message: str) -> None:
        log.append(message)
        if message.startswith("throttling: Threads_running=") and not left_when_waiting:
            left_when_waiting.append(len(source_keys(url)))
            with admin.connect() as conn:
                conn.execute(sa.text(f"KILL QUERY {int(busy_id)}"))  # the load goes away

    try:
        report = make_job(url, store, tables=THROTTLED, log=watch).run()
    finally:
        sleeper.join(10)
        busy.close()
        admin.dispose()
    assert left_when_waiting == [len(seeded["keys"])], "nothing deleted while the source was busy"
    assert "> 1; waiting before the next delete batch" in next(
        m for m in log if m.startswith("throttling: T")
    )
    assert any(m.startswith("throttling: resuming deletes after waiting") for m in log)
    assert report.rows_purged == report.rows_extracted == 2500


@pytest.mark.parametrize(
    ("key_type", "first", "second", "apart"),
    [
        (pa.int64(), (1, 9), (10, 20), True),
        (pa.int64(), (1, 10), (10, 20), False),
        (pa.string(), ("a", "b"), ("c", "d"), True),
        # Bounds of these keys come back from the manifest's JSON as text, whose order is not the
        # key's ("10" < "9"): never judged apart, so the committed part is read.
        (pa.decimal128(20, 0), ("10", "10"), ("9", "9"), False),
        (pa.binary(), ("b'\\x01'", "b'\\x02'"), ("b'\\x10'", "b'\\x11'"), False),
        (pa.int64(), (1, 9), (None, None), False),
        (pa.int64(), (1, 9), ("10", "20"), False),
    ],
)
def test_only_integer_and_string_key_ranges_are_judged_apart(
    key_type: pa.DataType, first: tuple[Any, Any], second: tuple[Any, Any], apart: bool
) -> None:
    assert _ranges_apart(key_type, first, second) is apart
