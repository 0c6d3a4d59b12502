"""What an archive run records, checked against what it really did (MariaDB + the S3 endpoint).

Each run here is real: rows are seeded in MariaDB, archived to S3 (moto) through `ArchiveJob` or
through Dagster (`archive/visits`), and every recorded value is compared with what the test finds in
MySQL and in the bucket itself: the SHA-256 checksums S3 keeps, the Parquet files' compression, the
committed manifest, the materialization metadata, the run log's progress lines, the throttle
options and the `archive_verified` check.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.assets.archive import archive_verified_result
from etl_assets.definitions import build_definitions
from etl_assets.engine.archive import ArchiveError, ArchiveJob, ArchiveReport, restore_partition
from etl_assets.lib.digest import pk_digest
from etl_assets.lib.manifest import Manifest
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets_tests.faults import FaultProxy, Rule
from etl_assets_tests.support import (
    archived_keys,
    committed,
    config_for,
    execute_sql,
    materialization_metadata,
    month_keys,
    replica_ids,
    seed_visits,
    source_keys,
    wrap,
)
from etl_assets_tests.test_archive import make_job as january_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
JANUARY = "archive/visits/year=2023/month=01/"
ARCHIVE = "{retention: 1 year, start: 2022-12, part_rows: 1000, chunk_rows: 500, max_threads_running: 500"
TABLES = f"""
  - name: visits
    archive: {ARCHIVE}, batch_size: 250}}
"""
PROGRESS = r"(?P<what>extracted|purged): (?P<done>[\d,]+) rows \((?P<rate>[\d,]+) rows/s, (?P<pct>\d+)% of (?P<total>[\d,]+), ETA (?P<eta>\d+)s\)"

Client = Any  # boto3's S3 client (untyped)


# -- helpers ------------------------------------------------------------------------------------------------


def make_job(
    url: str, store: ObjectStore, *, tables: str = TABLES, log: Callable[[str], None] | None = None
) -> ArchiveJob:
    """January 2023 of `visits` with this module's settings (test_archive.make_job)."""
    return january_job(url, store, tables=tables, log=log)


def s3_client() -> Client:
    return boto3.client("s3", region_name="us-east-1")


def committed_objects(s3: Client, bucket: str, folder: str = JANUARY) -> dict[str, int]:
    """Key -> size of every object in a committed month folder (staging excluded)."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    return {o["Key"]: int(o["Size"]) for o in listed if "/_staging/" not in o["Key"]}


def body(s3: Client, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def sha256_b64(data: bytes) -> str:
    """SHA-256 the way S3 reports it (`ChecksumSHA256`): base64 of the raw digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def ids_of(data: bytes) -> list[int]:
    return pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist()


def digest_of(ids: list[int]) -> str:
    return str(pk_digest([pa.array(ids, type=pa.uint64())]))


def only(manifests: list[Manifest]) -> Manifest:
    [manifest] = manifests
    return manifest


def update_row(url: str, key: int, stamp: str) -> None:
    execute_sql(
        url, "UPDATE visits SET notes = 'late edit', updated_at = :t WHERE id = :i", {"t": stamp, "i": key}
    )


def run_log_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The lines the step logged (LogRelay gathers lines into multi-line entries)."""
    return [
        line
        for record in instance.all_logs(run_id)
        if record.dagster_event is None
        for line in record.user_message.splitlines()
    ]


class Spy(logging.Handler):
    """Sees every line the run logs, as it is written, and may act on it (a real outside actor)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.reactions: list[tuple[str, Callable[[], None]]] = []
        self.errors: list[BaseException] = []

    def on(self, text: str, action: Callable[[], None]) -> None:
        """Call `action` once, when a logged line first contains `text`."""
        self.reactions.append((text, action))

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for reaction in list(self.reactions):
            if reaction[0] in message:
                self.reactions.remove(reaction)
                try:
                    reaction[1]()
                except Exception as exc:  # noqa: BLE001 - reported by the test, not the run
                    self.errors.append(exc)


def materialize(defs: dg.Definitions, key: str, instance: dg.DagsterInstance, *, spy: Spy | None = None,
                **kwargs: Any) -> dg.ExecuteInProcessResult:  # fmt: skip
    """Materialize `key` in process; with `spy`, a run logger hands it every line as it is logged."""
    run_config: dict[str, Any] = {}
    if spy is not None:

        @dg.logger
        def spy_logger(_: Any) -> logging.Logger:
            logger = logging.Logger("archive-evidence-spy", level=logging.INFO)
            logger.addHandler(spy)
            return logger

        defs = dg.Definitions.merge(defs, dg.Definitions(loggers={"spy": spy_logger}))
        run_config = {"loggers": {"spy": {}}}
    asset_key = dg.AssetKey.from_user_string(key)
    job = defs.resolve_implicit_job_def_def_for_assets([asset_key])
    assert job is not None
    return job.execute_in_process(
        asset_selection=[asset_key], instance=instance, raise_on_error=False, run_config=run_config, **kwargs
    )


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """The errors of the run's failed steps, for assertion messages."""
    return [
        e.step_failure_data.error.to_string() if e.step_failure_data.error else ""
        for e in result.get_step_failure_events()
    ]


def check_evaluation(result: dg.ExecuteInProcessResult) -> Any:
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "archive_verified"
    return evaluation


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
def store(s3_bucket: str) -> ObjectStore:
    return open_store(f"s3://{s3_bucket}/archive", region="us-east-1")


@pytest.fixture
def archived(mysql_url: str, store: ObjectStore) -> dict[str, Any]:
    """January 2023 (2,500 rows, 3 parts) archived and purged for real; December and February beside it."""
    seed_visits(mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=2500, null_time_rows=7)
    original = source_keys(mysql_url)
    january = month_keys(mysql_url, JAN_2023)
    job = make_job(mysql_url, store)
    report = job.run()
    return {"url": mysql_url, "original": original, "january": january, "job": job, "report": report}


# -- (1) what lands in S3: checksums, zstd Parquet, the manifest -----------------------------------------------


def test_every_committed_part_and_manifest_carries_the_sha256_of_its_bytes(
    archived: dict[str, Any], store: ObjectStore, s3_bucket: str
) -> None:
    s3 = s3_client()
    objects = committed_objects(s3, s3_bucket)
    assert sorted(k.rsplit("-", 1)[-1] for k in objects if k.endswith(".parquet")) == [
        "0.parquet", "1.parquet", "2.parquet"
    ]  # fmt: skip
    assert sum(k.endswith(".manifest.json") for k in objects) == 1
    manifest = only(committed(store))
    recorded = {f"archive/{p.key}": p.sha256 for p in manifest.parts}
    for key in objects:
        data = body(s3, s3_bucket, key)
        head = s3.head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
        attributes = s3.get_object_attributes(Bucket=s3_bucket, Key=key, ObjectAttributes=["Checksum"])
        # S3 checked the SHA-256 on receipt and keeps it: it is the one of the bytes stored now.
        assert head["ChecksumSHA256"] == sha256_b64(data), key
        assert attributes["Checksum"]["ChecksumSHA256"] == sha256_b64(data), key
        if key.endswith(".parquet"):
            assert recorded[key] == sha256_b64(data), "the manifest records each part's S3 checksum"
    assert set(recorded) == {k for k in objects if k.endswith(".parquet")}


def test_every_committed_part_is_zstd_parquet(archived: dict[str, Any], s3_bucket: str) -> None:
    s3 = s3_client()
    rows = 0
    parts = [k for k in committed_objects(s3, s3_bucket) if k.endswith(".parquet")]
    assert len(parts) == 3
    for key in parts:
        metadata = pq.ParquetFile(io.BytesIO(body(s3, s3_bucket, key))).metadata
        codecs = {
            metadata.row_group(g).column(c).compression
            for g in range(metadata.num_row_groups)
            for c in range(metadata.num_columns)
        }
        assert codecs == {"ZSTD"}, f"{key}: {codecs}"
        rows += metadata.num_rows
    assert rows == len(archived["january"])


def test_the_committed_manifest_records_what_left_mysql(
    archived: dict[str, Any], store: ObjectStore, s3_bucket: str
) -> None:
    url, job = archived["url"], archived["job"]
    s3 = s3_client()
    manifest = only(committed(store))
    left_mysql = archived["original"] - source_keys(url)
    assert left_mysql == archived["january"]

    assert (manifest.table, manifest.partition, manifest.run_id) == ("visits", "2023-01-01", job.run_id)
    assert (manifest.state, manifest.version) == ("committed", 1)
    assert manifest.window_start == "2023-01-01T00:00:00+00:00"
    assert manifest.window_end == "2023-02-01T00:00:00+00:00"
    assert (manifest.time_column, manifest.primary_key) == ("updated_at", ["id"])
    address = sa.make_url(url)
    assert manifest.source == {"database": f"{address.host}:{address.port or 3306}/{address.database}",
                               "table": "visits"}  # fmt: skip
    assert manifest.created_at == manifest.committed_at == job.now.isoformat()
    assert manifest.repeated_key_hashes == []

    # Rows and key digest: those of the rows that left MySQL, computed here from the keys.
    assert manifest.rows == len(left_mysql) == 2500
    assert manifest.pk_digest == digest_of(sorted(left_mysql))
    counts = {"extracted": 2500, "purged_by_this_run": 2500, "kept_changed": 0, "kept_not_in_replica": 0,
              "kept_deadline": 0, "zero_dates_nulled": 0}  # fmt: skip
    assert {k: manifest.counts.get(k) for k in counts} == counts
    assert sum(v for k, v in manifest.counts.items() if k not in ("extracted", "purged_by_this_run")) == 0

    # Schema: every column of the table, in order, with its MySQL type.
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'visits' ORDER BY ORDINAL_POSITION"
            )
        ).all()
    engine.dispose()
    assert [(c["name"], c["column_type"], c["nullable"]) for c in manifest.columns] == [
        (name, kind, nullable == "YES") for name, kind, nullable in columns
    ]

    # Parts: each as stored, its keys, their digest and bounds, read from the object itself.
    seen: list[int] = []
    for index, part in enumerate(manifest.parts):
        assert part.key == f"visits/year=2023/month=01/{job.run_id}-{index}.parquet"
        data = body(s3, s3_bucket, f"archive/{part.key}")
        ids = ids_of(data)
        assert part.rows == len(ids)
        assert part.bytes == len(data)
        assert part.sha256 == sha256_b64(data)
        assert part.pk_digest == digest_of(ids)
        assert (part.min_pk, part.max_pk) == (min(ids), max(ids))
        seen += ids
    assert [p.rows for p in manifest.parts] == [1000, 1000, 500]
    assert sorted(seen) == sorted(left_mysql), "the parts hold exactly the rows that left MySQL, once"
    assert manifest.parts[0].min_pk == min(left_mysql) and manifest.parts[-1].max_pk == max(left_mysql)


@pytest.fixture
def rewritten(mysql_url: str, store: ObjectStore, s3_bucket: str) -> dict[str, Any]:
    """January archived while the application updates its lowest key between verify and purge: that
    row stays in MySQL, so its part is rewritten without it for the commit."""
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=2500)
    victim = min(month_keys(mysql_url, JAN_2023))

    def on_log(message: str) -> None:
        if message.startswith("verified"):
            update_row(mysql_url, victim, "2023-01-20 10:00:00")

    report = make_job(mysql_url, store, log=on_log).run()
    manifest = only(committed(store))
    data = body(s3_client(), s3_bucket, f"archive/{manifest.parts[0].key}")
    return {"victim": victim, "report": report, "manifest": manifest, "data": data}


def test_a_part_rewritten_without_a_kept_row_is_recorded_like_any_other(rewritten: dict[str, Any]) -> None:
    report: ArchiveReport = rewritten["report"]
    part, data = rewritten["manifest"].parts[0], rewritten["data"]
    ids = ids_of(data)
    assert report.rows_kept_changed == 1 and rewritten["victim"] not in ids
    assert (part.rows, part.bytes, part.sha256, part.pk_digest) == (
        len(ids), len(data), sha256_b64(data), digest_of(ids)
    )  # fmt: skip
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert {metadata.row_group(0).column(c).compression for c in range(metadata.num_columns)} == {"ZSTD"}
    assert rewritten["manifest"].counts["kept_changed"] == 1


def test_a_rewritten_part_keeps_its_key_bounds_in_the_manifest(rewritten: dict[str, Any]) -> None:
    part, ids = rewritten["manifest"].parts[0], ids_of(rewritten["data"])
    assert (part.min_pk, part.max_pk) == (min(ids), max(ids))


def test_zero_dates_in_a_not_null_column_are_nulled_and_counted(mysql_url: str, store: ObjectStore) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=600)
    zero = sorted(month_keys(mysql_url, JAN_2023))[:3]
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        # A legacy table: `created_at` is NOT NULL and holds zero dates.
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.execute(sa.text("UPDATE visits SET created_at = '0000-00-00 00:00:00' WHERE id IN :ids")
                     .bindparams(sa.bindparam("ids", expanding=True)), {"ids": zero})  # fmt: skip
    engine.dispose()
    report = make_job(mysql_url, store).run()
    assert report.zero_dates_nulled == 3 and report.rows_committed == 600
    assert only(committed(store)).counts["zero_dates_nulled"] == 3
    # Restore puts the zero dates back (the column is NOT NULL; NULL is how the archive holds them),
    # even under MySQL 8's default sql_mode, which refuses zero dates (lifted for the restore's inserts).
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        previous = conn.execute(sa.text("SELECT @@GLOBAL.sql_mode")).scalar_one()
        conn.execute(sa.text("SET GLOBAL sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE'"))
    try:
        client = SourceClient(mysql_url)
        restored = restore_partition(source=client, store=store, source_table=client.reflect("visits"),
                                     table="visits", month=JAN_2023.start, log=lambda m: None, batch_size=200)  # fmt: skip
        with client.engine.connect() as conn:
            # The pooled connections went back with the server's mode, not the lifted one.
            assert "NO_ZERO_DATE" in conn.execute(sa.text("SELECT @@SESSION.sql_mode")).scalar_one()
        client.dispose()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("SET GLOBAL sql_mode = :m"), {"m": previous})
    assert restored.rows_restored == 600
    with engine.connect() as conn:
        back = (
            conn.execute(
                sa.text(
                    "SELECT id FROM visits WHERE CAST(created_at AS CHAR) = '0000-00-00 00:00:00' ORDER BY id"
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert back == zero


def test_a_zero_date_in_a_primary_key_column_is_refused_before_any_delete(
    mysql_url: str, store: ObjectStore
) -> None:
    """A key holding a zero date would be archived as NULL and could never be deleted by key: the
    month is refused with the fix, nothing deleted, nothing committed."""
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            "CREATE TABLE visits (day DATE NOT NULL, n INT NOT NULL, updated_at DATETIME(6) NOT NULL, "
            "PRIMARY KEY (day, n), KEY (updated_at))"
        )
        conn.exec_driver_sql(
            "INSERT INTO visits VALUES ('2023-01-05', 1, '2023-01-05 10:00:00'), "
            "('0000-00-00', 2, '2023-01-06 10:00:00')"
        )
    engine.dispose()
    with pytest.raises(
        ArchiveError, match=r"zero date \(0000-00-00\) in a primary-key column.*Nothing was deleted"
    ):
        make_job(mysql_url, store).run()
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM visits")).scalar_one() == 2
    engine.dispose()
    assert committed(store) == []


# -- (2) materialization metadata, progress lines and the check, through Dagster --------------------------------


@pytest.fixture
def through_dagster(mysql_url: str, pg_server_url: str, pg_schema: str, s3_bucket: str) -> dict[str, Any]:
    """December to February 2023 (1,500 rows each) plus 4 rows without a time, and a replica in PostgreSQL."""
    seed_visits(mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=1500, null_time_rows=4)
    return {"url": mysql_url, "pg": pg_server_url, "schema": pg_schema, "bucket": s3_bucket,
            "original": source_keys(mysql_url), "january": month_keys(mysql_url, JAN_2023)}  # fmt: skip


def defs_for(env: dict[str, Any], archive: str, *, replica: bool = False) -> dg.Definitions:
    tables = f"\n  - name: visits\n    archive: {ARCHIVE}, {archive}}}\n"
    if replica:
        tables += "    replica: {start: 2022-12-01, lag: 30 minutes}\n"
    config = config_for(source_url=env["url"], archive_url=f"s3://{env['bucket']}/archive",
                        warehouse_url=env["pg"] if replica else None, warehouse_schema=env["schema"],
                        tables=tables)  # fmt: skip
    return build_definitions(config)


def test_materialization_metadata_progress_lines_and_check_match_the_run(
    through_dagster: dict[str, Any],
) -> None:
    """One January run in which every count is non-zero: half the month is not in the replica yet, one
    row changes between verify and purge, three rows hold zero dates, four have no time at all."""
    env, url = through_dagster, through_dagster["url"]
    january = env["january"]
    # Three rows of late January (not replicated below) get a zero date in created_at, made nullable
    # first (a zero date in a NOT NULL column is test_zero_dates_in_a_not_null_column_are_nulled_and_counted).
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE visits MODIFY created_at DATETIME NULL")
        zero = [r[0] for r in conn.execute(sa.text(
            "SELECT id FROM visits WHERE updated_at >= '2023-01-20' AND updated_at < '2023-02-01' ORDER BY id LIMIT 3"
        ))]  # fmt: skip
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.execute(sa.text("UPDATE visits SET created_at = '0000-00-00 00:00:00' WHERE id IN :ids")
                     .bindparams(sa.bindparam("ids", expanding=True)), {"ids": zero})  # fmt: skip
    engine.dispose()

    # 50-row delete batches with a 0.2 s pause: the purge takes over 6 s, long enough for a progress
    # line mid-purge and for the row change below to land before its batch.
    defs = defs_for(env, "batch_size: 50, pause_seconds: 0.2", replica=True)
    spy = Spy()
    staged: dict[str, int] = {}
    with dg.instance_for_test() as instance:
        loaded = materialize(defs, "replica/visits", instance, tags={
            "dagster/asset_partition_range_start": "2022-12-01", "dagster/asset_partition_range_end": "2023-01-15"})  # fmt: skip
        assert loaded.success, failures(loaded)
        held = replica_ids(env["pg"], env["schema"]) & january
        assert 0 < len(held) < len(january) and not set(zero) & held
        victim = max(held)  # in the last delete batches, seconds after verification

        def after_verify() -> None:
            # The application edits a verified row; the staged parts are in the bucket until the commit.
            update_row(url, victim, "2023-01-25 10:00:00")
            staging = s3_client().list_objects_v2(Bucket=env["bucket"], Prefix="archive/visits/_staging/")
            staged.update(
                {o["Key"]: o["Size"] for o in staging.get("Contents", []) if o["Key"].endswith(".parquet")}
            )

        spy.on("verified ", after_verify)
        started = time.monotonic()
        result = materialize(defs, "archive/visits", instance, spy=spy, partition_key="2023-01-01")
        wall = time.monotonic() - started
        assert result.success, failures(result)
        lines = run_log_lines(instance, result.run_id)
    assert not spy.errors and not spy.reactions, "the row changed and staging was listed during the run"
    metadata = {k: v.value for k, v in materialization_metadata(result, "archive/visits").items()}

    purged = held - {victim}
    s3 = s3_client()
    objects = committed_objects(s3, env["bucket"])
    parts = sorted(k for k in objects if k.endswith(".parquet"))
    [manifest_key] = [k for k in objects if k.endswith(".manifest.json")]
    assert source_keys(url) == env["original"] - purged
    assert sorted(archived_keys(open_store(f"s3://{env['bucket']}/archive", region="us-east-1"))) == sorted(
        purged
    )

    assert metadata["dagster/row_count"] == len(purged)
    assert metadata["rows_extracted"] == len(january) == 1500
    assert metadata["rows_committed"] == metadata["rows_purged"] == len(purged)
    assert metadata["rows_kept_changed_since_read"] == 1
    assert metadata["rows_kept_not_in_replica"] == len(january - held)
    assert metadata["rows_kept_max_run_time"] == 0
    assert metadata["rows_null_time_column"] == 4
    assert metadata["zero_dates_nulled"] == 3
    # bytes_written counts what the run staged (before rows that stayed were left out of the commit).
    assert len(staged) == 2 and metadata["bytes_written"] == sum(staged.values())
    assert metadata["parts"] == len(parts) >= 1
    assert 30 * 0.2 <= metadata["seconds"] <= wall, "30 delete batches, each followed by a 0.2 s pause"
    assert metadata["rows_per_second"] == pytest.approx(1500 / metadata["seconds"], rel=1e-3)
    assert metadata["longest_delete_transaction_seconds"] > 0
    assert metadata["window"] == "[2023-01-01, 2023-02-01)"
    assert metadata["recovered_runs"] == []
    assert metadata["manifest"] == f"s3://{env['bucket']}/{manifest_key}"
    assert metadata["objects"] == "\n".join(f"- `s3://{env['bucket']}/{k}`" for k in parts)
    assert metadata["first_object"] == f"s3://{env['bucket']}/{parts[0]}"
    assert "partitions" not in metadata, "the per-month table is for range runs"

    # Progress: rows, rate and ETA for the extraction and the purge; one purge line while it ran.
    progress = [m.groupdict() for m in map(re.compile(PROGRESS).match, lines) if m]
    finals = {p["what"]: p for p in progress if p["pct"] == "100"}
    assert finals.keys() == {"extracted", "purged"}
    assert all(p["done"] == p["total"] == "1,500" and p["eta"] == "0" for p in finals.values())
    assert int(finals["extracted"]["rate"].replace(",", "")) > 0
    midway = [p for p in progress if p["what"] == "purged" and p["pct"] != "100"]
    assert midway, f"a purge of over 5 s logs a line while it runs: {progress}"
    assert all(int(p["eta"]) > 0 and int(p["done"].replace(",", "")) < 1500 for p in midway)

    evaluation = check_evaluation(result)
    assert evaluation.passed
    checked = {k: v.value for k, v in evaluation.metadata.items()}
    assert (checked["rows_checked"], checked["parts_checked"], checked["partitions_checked"]) == (
        len(purged), len(parts), 1
    )  # fmt: skip


def test_a_range_run_records_the_same_metadata_for_every_month(through_dagster: dict[str, Any]) -> None:
    env = through_dagster
    defs = defs_for(env, "batch_size: 500")
    with dg.instance_for_test() as instance:
        result = materialize(defs, "archive/visits", instance, tags={
            "dagster/asset_partition_range_start": "2022-12-01", "dagster/asset_partition_range_end": "2023-01-01"})  # fmt: skip
        assert result.success, failures(result)
    events = result.get_asset_materialization_events()
    assert sorted(e.partition or "" for e in events) == ["2022-12-01", "2023-01-01"]
    [first, second] = [{k: v.value for k, v in e.materialization.metadata.items()} for e in events]
    assert first == second, "Dagster records the run's metadata once per partition of the range"

    s3 = s3_client()
    objects = {**committed_objects(s3, env["bucket"], JANUARY),
               **committed_objects(s3, env["bucket"], "archive/visits/year=2022/month=12/")}  # fmt: skip
    parts = {k: size for k, size in objects.items() if k.endswith(".parquet")}
    assert first["rows_extracted"] == first["rows_committed"] == first["rows_purged"] == 3000
    assert first["dagster/row_count"] == 3000
    # No row stayed, so each committed part is a server-side copy of its staged part: same bytes.
    assert first["bytes_written"] == sum(parts.values())
    assert first["parts"] == len(parts) == 4
    assert first["window"] == "[2022-12-01, 2023-02-01)"
    assert "manifest" not in first, "one manifest per month: the range run links none"
    table = str(first["partitions"]).splitlines()
    assert table[0] == "| partition | extracted | committed | purged | kept | seconds |"
    months = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[:5] for row in months] == [
        [month, "1,500", "1,500", "1,500", "0"] for month in ("2022-12-01", "2023-01-01")
    ]
    assert all(float(row[5]) > 0 for row in months)
    evaluation = check_evaluation(result)
    assert evaluation.passed
    assert {k: v.value for k, v in evaluation.metadata.items()} == {
        "partitions_checked": 2, "rows_checked": 3000, "parts_checked": 4, "rows_committed_by_this_run": 3000
    }  # fmt: skip


# -- (3) the archive_verified check fails when the committed archive disagrees ------------------------------------


def test_archive_verified_fails_when_a_committed_part_changes_after_the_commit(
    through_dagster: dict[str, Any],
) -> None:
    env = through_dagster
    defs = defs_for(env, "batch_size: 500")
    spy = Spy()
    s3 = s3_client()

    def overwrite_a_part() -> None:
        # Someone replaces a committed part after the run's commit, before its check.
        key = sorted(k for k in committed_objects(s3, env["bucket"]) if k.endswith("-1.parquet"))[0]
        s3.put_object(Bucket=env["bucket"], Key=key, Body=body(s3, env["bucket"], key)[:-100],
                      ChecksumAlgorithm="SHA256")  # fmt: skip

    spy.on("archive visits partition 2023-01-01 window", overwrite_a_part)
    with dg.instance_for_test() as instance:
        result = materialize(defs, "archive/visits", instance, spy=spy, partition_key="2023-01-01")
    assert not spy.errors and not spy.reactions
    assert result.success, "a failed check does not undo the archive: the materialization is recorded"
    assert materialization_metadata(result, "archive/visits")["rows_committed"].value == 1500
    evaluation = check_evaluation(result)
    assert not evaluation.passed
    assert re.search(r"part s3://\S+/visits/year=2023/month=01/[\w-]+-1\.parquet has [\d,]+ bytes, its manifest "
                     r"says [\d,]+", evaluation.description or ""), evaluation.description  # fmt: skip


@pytest.mark.parametrize("tamper", ["part removed", "manifest removed", "unlisted part added"])
def test_archive_verified_names_each_disagreement(
    tamper: str, archived: dict[str, Any], store: ObjectStore, s3_bucket: str
) -> None:
    key = dg.AssetKey(["archive", "visits"])
    report: ArchiveReport = archived["report"]
    passing = archive_verified_result(key, store, [report])
    assert passing.passed
    assert {k: v.value for k, v in passing.metadata.items()}["rows_checked"] == 2500

    s3 = s3_client()
    objects = sorted(committed_objects(s3, s3_bucket))
    part = next(k for k in objects if k.endswith("-0.parquet"))
    if tamper == "part removed":
        s3.delete_object(Bucket=s3_bucket, Key=part)
        expected = r"part s3://\S+-0\.parquet of run [\w-]+ is missing"
    elif tamper == "manifest removed":
        s3.delete_object(Bucket=s3_bucket, Key=next(k for k in objects if k.endswith(".manifest.json")))
        expected = (r"\S+-0\.parquet is in the queryable folder but in no committed manifest.*the run counted "
                    r"2,500 committed rows, its committed manifests list 0")  # fmt: skip
    else:
        s3.copy_object(Bucket=s3_bucket, Key=part.replace("-0.parquet", "-9.parquet"),
                       CopySource={"Bucket": s3_bucket, "Key": part})  # fmt: skip
        expected = r"\S+-9\.parquet is in the queryable folder but in no committed manifest"
    failing = archive_verified_result(key, store, [report])
    assert not failing.passed
    assert re.search(expected, failing.description or ""), failing.description


# -- (4) throttle options: pause between delete batches, maximum run time ------------------------------------------


def test_pause_seconds_sleeps_after_every_delete_batch(mysql_url: str, store: ObjectStore) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=2500)
    tables = TABLES.replace("batch_size: 250", "batch_size: 250, pause_seconds: 0.3")
    job = make_job(mysql_url, store, tables=tables)
    batches: list[float] = []
    wrap(job.source, "delete_unchanged", lambda *args, **kwargs: batches.append(time.monotonic()))
    report = job.run()
    assert report.rows_purged == 2500
    assert len(batches) == 10, "2,500 rows in parts of 1,000 and 500: 4 + 4 + 2 batches of at most 250"
    gaps = [later - earlier for earlier, later in itertools.pairwise(batches)]
    assert min(gaps) >= 0.3, f"each batch starts at least pause_seconds after the one before: {gaps}"
    assert report.purge_seconds >= 10 * 0.3


def test_max_run_seconds_reached_while_deleting_stops_the_purge_and_a_rerun_archives_the_rest_once(
    through_dagster: dict[str, Any],
) -> None:
    env, url = through_dagster, through_dagster["url"]
    january = env["january"]
    # Each deleted row costs 2 ms on the server: a 100-row batch takes 0.2 s, so the 1 s limit passes
    # while deletes run (no Threads_running or replica wait is involved: nothing else is configured).
    execute_sql(
        url, "CREATE TRIGGER slow_delete BEFORE DELETE ON visits FOR EACH ROW SET @slept = SLEEP(0.002)"
    )
    defs = defs_for(env, "batch_size: 100, max_run_seconds: 1")
    with dg.instance_for_test() as instance:
        first = materialize(defs, "archive/visits", instance, partition_key="2023-01-01")
        assert first.success, failures(first)
        lines = run_log_lines(instance, first.run_id)
        metadata = {k: v.value for k, v in materialization_metadata(first, "archive/visits").items()}
        store = open_store(f"s3://{env['bucket']}/archive", region="us-east-1")
        left = january & source_keys(url)
        gone = january - left
        assert "max_run_seconds=1 reached; the rest stays" in lines
        assert not [line for line in lines if "passed while waiting" in line or line.startswith("throttling")]
        assert metadata["longest_delete_transaction_seconds"] >= 0.2
        assert 100 <= len(gone) < len(january) and len(gone) % 100 == 0, "whole batches went, then it stopped"
        assert metadata["rows_purged"] == metadata["rows_committed"] == len(gone)
        assert metadata["rows_kept_max_run_time"] == len(left) == len(january) - len(gone)
        assert sorted(archived_keys(store)) == sorted(gone), "what stayed in MySQL is not in the archive"
        assert only(committed(store)).counts["kept_deadline"] == len(left)
        assert check_evaluation(first).passed

        execute_sql(url, "DROP TRIGGER slow_delete")
        second = materialize(defs, "archive/visits", instance, partition_key="2023-01-01")
        assert second.success, failures(second)
    rerun = {k: v.value for k, v in materialization_metadata(second, "archive/visits").items()}
    assert rerun["rows_extracted"] == rerun["rows_purged"] == rerun["rows_committed"] == len(left)
    assert rerun["rows_kept_max_run_time"] == 0 and rerun["dagster/row_count"] == len(january)
    archived = archived_keys(store)
    assert sorted(archived) == sorted(january), "every January row archived exactly once"
    assert source_keys(url) == env["original"] - january
    assert sorted(m.rows for m in committed(store)) == sorted([len(gone), len(left)])
    assert {k: v.value for k, v in check_evaluation(second).metadata.items()}["rows_checked"] == len(january)


# -- (5) an extraction slowed by S3 logs its progress while it runs ------------------------------------------------


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


def test_a_slow_extraction_logs_rows_rate_and_eta_while_it_runs(
    mysql_url: str, s3_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=2500)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    slow = proxy.add(Rule(method="PUT", key="/_staging/", exclude=".manifest.json", kind="slow", delay=5.5))
    lines: list[str] = []
    report = make_job(
        mysql_url, open_store(f"s3://{s3_bucket}/archive", region="us-east-1"), log=lines.append
    ).run()
    assert slow.hits == 1 and report.rows_committed == 2500
    progress = [m.groupdict() for m in map(re.compile(PROGRESS).match, lines) if m]
    midway = [p for p in progress if p["what"] == "extracted" and p["pct"] != "100"]
    assert midway, f"the first part's upload took 5.5 s, so a line came before the end: {lines}"
    for line in midway:
        done = int(line["done"].replace(",", ""))
        assert line["total"] == "2,500" and 0 < done < 2500 and int(line["pct"]) == round(100 * done / 2500)
        assert int(line["rate"].replace(",", "")) > 0 and int(line["eta"]) > 0
