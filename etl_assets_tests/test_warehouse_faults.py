"""Warehouse faults during a replica load: the server restarted mid-merge, S3 failing under staging.

Restart: a private PostgreSQL (`private_postgres.py`; the shared :5432 server is never restarted) is
stopped and started while the load's merge is running. The merge is made to block deterministically:
another session holds a row lock on one replica row the merge must replace, and the test waits until
the load's backend is seen waiting on that lock (pg_stat_activity), so the restart lands after the
staging COPY and inside the merge's DELETE. The load must fail clearly, the replica must hold exactly
what it held before (no partial merge, no ledger row), and the retried load must converge with no
duplicate.

Staging: Redshift loads upload Parquet parts to S3 and `COPY` them. No Redshift runs here, so
`RedshiftOnPostgres` runs the product's Redshift load path (Redshift dialect: the uploads, the staging
DDL, the merge, the ledger and the cleanup, every statement as generated) against PostgreSQL, and
carries out the one statement PostgreSQL lacks, `COPY ... FORMAT AS PARQUET`, itself: it reads every
object under the COPY's S3 prefix from the real endpoint, as Redshift would, into the staging table.
The uploads go through the fault proxy (`faults.py`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.config import TableConfig
from etl_assets.engine.replica import ReplicaJob, ReplicaReport
from etl_assets.lib.windows import Window
from etl_assets.resources import warehouse as warehouse_module
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets.resources.warehouse import WarehouseClient, WarehouseError
from etl_assets_tests.faults import FaultProxy, Rule
from etl_assets_tests.private_postgres import PrivatePostgres, wait_for
from etl_assets_tests.reliability import Reliability
from etl_assets_tests.support import config_for, execute_sql

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DAY = datetime(2024, 3, 1)
WINDOW = Window(DAY.replace(tzinfo=None), DAY + timedelta(days=1))
ORDERS_DDL = """
CREATE TABLE orders (
  id INT NOT NULL PRIMARY KEY, note VARCHAR(100) NULL, amount DECIMAL(12,2) NULL,
  updated_at DATETIME(6) NOT NULL, KEY ix_updated (updated_at)
) DEFAULT CHARSET=utf8mb4
"""
ROLE = "arn:aws:iam::123456789012:role/etl-copy"
LOCKED_ID = 150


# -- helpers ------------------------------------------------------------------------------------------------


def _rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(statement))]
    finally:
        engine.dispose()


def seed_orders(url: str) -> None:
    """300 orders on DAY."""
    execute_sql(url, ORDERS_DDL)
    execute_sql(url, "INSERT INTO orders VALUES (:id, 'first', :a, :t)",
             [{"id": i, "a": f"{i}.25", "t": DAY + timedelta(minutes=i)} for i in range(1, 301)])  # fmt: skip


def change_orders(url: str) -> None:
    """Every row changed (so the merge replaces all of them) and 50 new rows."""
    execute_sql(
        url,
        "UPDATE orders SET note = 'second', amount = amount + 1, updated_at = updated_at + INTERVAL 1 SECOND",
    )
    execute_sql(url, "INSERT INTO orders (id, note, amount, updated_at) VALUES (:id, 'second', 1.00, :t)",
             [{"id": i, "t": DAY + timedelta(hours=6, minutes=i)} for i in range(301, 351)])  # fmt: skip


def source_rows(url: str) -> list[tuple[Any, ...]]:
    return _rows(url, "SELECT id, note, amount, updated_at FROM orders ORDER BY id")


def replica_rows(url: str, schema: str) -> list[tuple[Any, ...]]:
    return _rows(url, f'SELECT id, note, amount, updated_at FROM "{schema}".orders ORDER BY id')


def ledger_rows(url: str, schema: str) -> int:
    return int(_rows(url, f'SELECT COUNT(*) FROM "{schema}"._etl_assets_loads')[0][0])


def table_config(
    source_url: str, warehouse_url: str, schema: str, tmp_path: Path, chunk_rows: int = 100
) -> TableConfig:
    config = config_for(source_url=source_url, warehouse_url=warehouse_url, warehouse_schema=schema,
                        tables=f"  - name: orders\n    replica: {{start: 2024-01-01, chunk_rows: {chunk_rows}}}\n",
                        path=str(tmp_path / "etl_assets.yaml"))  # fmt: skip
    return config.tables[0]


def run_load(source_url: str, warehouse: WarehouseClient, table: TableConfig, run_id: str) -> ReplicaReport:
    source = SourceClient(source_url)
    try:
        return ReplicaJob(source=source, warehouse=warehouse, table=table, source_table=source.reflect("orders"),
                          window=WINDOW, run_id=run_id, log=lambda _m: None).run()  # fmt: skip
    finally:
        source.dispose()
        warehouse.close()


def account(reliability: Reliability, source_url: str, warehouse_url: str, schema: str) -> None:
    """The replica equals the source, each key once; recorded for the reliability summary."""
    expected = source_rows(source_url)
    found = replica_rows(warehouse_url, schema)
    keys = [row[0] for row in found]
    reliability.checked(rows=len(expected), lost=len({r[0] for r in expected} - set(keys)))
    assert len(keys) == len(set(keys)), "a key is in the replica twice"
    assert found == expected


# -- the warehouse restarted mid-merge --------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


@pytest.mark.parametrize("mode", ["fast", "immediate"], ids=["clean-restart", "crash-restart"])
def test_warehouse_restarted_mid_merge_leaves_no_partial_merge_and_a_retry_converges(
    mode: Any, private_pg: PrivatePostgres, mysql_url: str, tmp_path: Path, reliability: Reliability
) -> None:
    schema = f"w_{uuid.uuid4().hex[:8]}"
    seed_orders(mysql_url)
    table = table_config(mysql_url, private_pg.url, schema, tmp_path)
    run_load(mysql_url, WarehouseClient(url=private_pg.url, schema=schema), table, "run-1")
    before = replica_rows(private_pg.url, schema)
    assert len(before) == 300
    change_orders(mysql_url)

    application = f"etl_merge_{uuid.uuid4().hex[:8]}"
    tagged = sa.make_url(private_pg.url).update_query_dict({"application_name": application})
    admin = sa.create_engine(private_pg.url)
    locker = admin.connect()
    # The merge replaces every row; this lock makes its DELETE wait on one of them, mid-statement.
    locker.exec_driver_sql(f'SELECT id FROM "{schema}".orders WHERE id = {LOCKED_ID} FOR UPDATE').all()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            run_load(mysql_url, WarehouseClient(url=tagged.render_as_string(hide_password=False), schema=schema),
                     table, "run-2")  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()

    def merge_is_waiting() -> bool:
        with admin.connect() as conn:
            return bool(
                conn.execute(
                    sa.text("SELECT 1 FROM pg_stat_activity WHERE application_name = :a AND wait_event_type = 'Lock' "
                            "AND query LIKE 'DELETE FROM%'"), {"a": application}
                ).first()
            )  # fmt: skip

    try:
        wait_for(merge_is_waiting, timeout=30, what="the load's merge to block on the locked row")
        staged = _rows(private_pg.url, f"SELECT COUNT(*) FROM \"{schema}\".orders WHERE note = 'second'")
        assert staged == [(0,)], "nothing of the merge is visible outside its transaction"
        private_pg.restart(mode)
    finally:
        worker.join(timeout=60)
        with contextlib.suppress(Exception):
            locker.close()
        admin.dispose()
    assert not worker.is_alive()

    assert len(errors) == 1 and isinstance(errors[0], WarehouseError), errors
    message = str(errors[0])
    assert f"loading {schema}.orders failed and was rolled back (nothing committed)" in message
    assert "connection to the warehouse was lost" in message and "re-run" in message
    assert replica_rows(private_pg.url, schema) == before, "no partial merge survived the restart"
    assert ledger_rows(private_pg.url, schema) == 1, "no ledger row for the failed load"

    retried = run_load(mysql_url, WarehouseClient(url=private_pg.url, schema=schema), table, "run-3")
    assert retried.load.rows_staged == 350
    assert ledger_rows(private_pg.url, schema) == 2
    account(reliability, mysql_url, private_pg.url, schema)


# -- S3 faults under Redshift's staging path --------------------------------------------------------------


class RedshiftOnPostgres(WarehouseClient):
    """The product's Redshift load path against PostgreSQL (see the module docstring).

    Every statement runs as generated for Redshift, except `COPY ... FORMAT AS PARQUET`, which this
    class carries out: every object under the COPY's prefix is read from `reader` (the real S3
    endpoint) and copied, by column position as Redshift does, into the named staging table.
    """

    def __init__(self, *, url: str, schema: str, staging: ObjectStore, staging_url: str, reader: Any) -> None:
        super().__init__(url=url, schema=schema, staging=staging, staging_url=staging_url, iam_role=ROLE,
                         region="us-east-1")  # fmt: skip
        self.dialect = "redshift"
        self.reader = reader
        self.copies: list[str] = []

    def ensure_table(self, *args: Any, **kwargs: Any) -> bool:
        # DISTKEY/SORTKEY clauses are Redshift-only DDL; the replica table itself is PostgreSQL's.
        self.dialect = "postgresql"
        try:
            return super().ensure_table(*args, **kwargs)
        finally:
            self.dialect = "redshift"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with super()._transaction() as tx:

            def execute(text: str) -> int:
                if text.startswith("COPY ") and "FORMAT AS PARQUET" in text:
                    self.copies.append(text)
                    return self._copy_from_s3(tx, text)
                return tx.execute(text)

            yield warehouse_module._Transaction(execute, tx.raw)

    def _copy_from_s3(self, tx: Any, text: str) -> int:
        match = re.match(r"COPY (\"[^\"]+\")\nFROM 's3://([^/']+)/([^']*)'", text)
        assert match, text
        stage, bucket, prefix = match.groups()
        listed = self.reader.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        rows = 0
        with tx.raw.cursor() as cursor, cursor.copy(f"COPY {stage} FROM STDIN (FORMAT csv)") as copy:
            for item in listed:
                body = self.reader.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                data = pq.read_table(io.BytesIO(body))
                for batch in data.to_batches():
                    buffer = io.BytesIO()
                    pa_csv.write_csv(warehouse_module._csv_ready(batch), buffer,
                                     pa_csv.WriteOptions(include_header=False))  # fmt: skip
                    copy.write(buffer.getvalue())
                    rows += batch.num_rows
        return rows


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


def staging_store(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch, **sizes: int) -> ObjectStore:
    """The staging store with its boto3 client on `endpoint` (boto3 reads AWS_ENDPOINT_URL when created);
    `sizes` are open_store's multipart settings."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return open_store(f"s3://{bucket}/staging", region="us-east-1", **sizes)


@dataclass
class RedshiftRig:
    """The Redshift load path on the test PostgreSQL schema, staging in the test bucket."""

    bucket: str
    pg_url: str
    schema: str
    monkeypatch: pytest.MonkeyPatch
    reader: Any  # a boto3 S3 client on the real endpoint: what COPY reads, what the test inspects

    def warehouse(self, endpoint: str, **sizes: int) -> RedshiftOnPostgres:
        """A warehouse whose staging uploads go to `endpoint` (the real one, or the fault proxy)."""
        return RedshiftOnPostgres(url=self.pg_url, schema=self.schema, reader=self.reader,
                                  staging_url=f"s3://{self.bucket}/staging",
                                  staging=staging_store(endpoint, self.bucket, self.monkeypatch, **sizes))  # fmt: skip


@pytest.fixture
def redshift(
    s3_endpoint: str, s3_bucket: str, pg_server_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> RedshiftRig:
    reader = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_endpoint)
    return RedshiftRig(s3_bucket, pg_server_url, pg_schema, monkeypatch, reader)


STAGED = "/staging/stage_orders/"
FAULTS = {
    "500-on-second-part-persistent": (Rule(method="PUT", key="part-00001.parquet", kind="internal", times=None), False),
    "head-after-upload-500-persistent": (Rule(method="HEAD", key=STAGED, kind="internal", times=None), False),
    "two-slowdowns-on-a-part": (Rule(method="PUT", key="part-00002.parquet", kind="slowdown", times=2), True),
    "reset-on-a-part": (Rule(method="PUT", key="part-00000.parquet", kind="reset", times=1), True),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(FAULTS))
def test_s3_faults_on_redshift_staging_fail_before_the_target_or_complete(
    fault: str,
    proxy: FaultProxy,
    redshift: RedshiftRig,
    s3_endpoint: str,
    mysql_url: str,
    tmp_path: Path,
    reliability: Reliability,
) -> None:
    reliability.category = "S3 faults (replica staging)"
    template, completes = FAULTS[fault]
    rule = Rule(method=template.method, key=template.key, kind=template.kind, times=template.times)
    pg_server_url, pg_schema, s3_bucket, reader = (
        redshift.pg_url,
        redshift.schema,
        redshift.bucket,
        redshift.reader,
    )
    warehouse = redshift.warehouse
    seed_orders(mysql_url)
    table = table_config(mysql_url, pg_server_url, pg_schema, tmp_path)

    first = warehouse(s3_endpoint)
    run_load(mysql_url, first, table, "run-1")
    assert len(first.copies) == 1
    before = replica_rows(pg_server_url, pg_schema)
    assert len(before) == 300
    change_orders(mysql_url)

    proxy.add(rule)
    faulty = warehouse(proxy.url)
    finished, run_id = faulty, "run-2"
    if completes:
        report = run_load(mysql_url, faulty, table, "run-2")
        assert rule.hits == (rule.times or 0)
        assert report.load.rows_staged == 350 and len(faulty.copies) == 1
    else:
        with pytest.raises(
            WarehouseError, match=r"rolled back \(nothing committed\).*could not (upload|inspect)"
        ):
            run_load(mysql_url, faulty, table, "run-2")
        assert rule.hits >= 7, "the request was retried (1 + 6 attempts) before the load gave up"
        assert faulty.copies == [], "COPY never ran: the load failed before touching the warehouse tables"
        assert replica_rows(pg_server_url, pg_schema) == before
        assert ledger_rows(pg_server_url, pg_schema) == 1
        finished, run_id = warehouse(s3_endpoint), "run-3"
        run_load(mysql_url, finished, table, run_id)
        assert len(finished.copies) == 1
    assert ledger_rows(pg_server_url, pg_schema) == 2
    assert finished.copies[0] == (
        f"COPY \"stage_orders\"\nFROM 's3://{s3_bucket}/staging/stage_orders/{run_id}/'\nIAM_ROLE '{ROLE}'\n"
        "FORMAT AS PARQUET\nREGION 'us-east-1'"
    )
    leftovers = reader.list_objects_v2(Bucket=s3_bucket, Prefix="staging/").get("Contents", [])
    assert leftovers == [], "staged files are removed after the load, failed or not"
    account(reliability, mysql_url, pg_server_url, pg_schema)


# -- multipart uploads of a staged file ---------------------------------------------------------------------
#
# A staged file of 32 MiB or more goes up as a multipart upload. Here the staging store's threshold and
# chunk are S3's 5 MiB minimum, the load stages all 350 orders in one file, and orders 1-300 carry
# 60,000 characters of random text each (within Redshift's VARCHAR(65535)), so part-00000.parquet
# (~14 MB) is uploaded in three chunks: UploadPart is `PUT ...?partNumber=N&uploadId=...`,
# CompleteMultipartUpload `POST ...?uploadId=...`.

MULTIPART = {"multipart_threshold_bytes": 5 << 20, "multipart_chunk_bytes": 5 << 20}
FIRST_FILE = "part-00000.parquet"
UPLOAD_FAILED = r"rolled back \(nothing committed\).*could not upload .*part-00000\.parquet"
MULTIPART_FAULTS = {
    # fault name: (rule, None if the load completes else what its error says)
    "500-on-part-2-persistent": (Rule(method="PUT", key=FIRST_FILE, query="partNumber=2", kind="internal",
                                      times=None), UPLOAD_FAILED + ".*InternalError.*UploadPart"),
    "500-on-complete-persistent": (Rule(method="POST", key=FIRST_FILE, query="uploadId=", kind="internal",
                                        times=None), UPLOAD_FAILED + ".*InternalError.*CompleteMultipartUpload"),
    "reset-on-part-1": (Rule(method="PUT", key=FIRST_FILE, query="partNumber=1", kind="reset", times=1), None),
    "slowdown-on-complete": (Rule(method="POST", key=FIRST_FILE, query="uploadId=", kind="slowdown", times=1),
                             None),
    "short-last-part-once": (Rule(method="PUT", key=FIRST_FILE, query="partNumber=3", kind="short_body", times=1),
                             r"rolled back \(nothing committed\).*part-00000\.parquet has [\d,]+ bytes after its upload"),
}  # fmt: skip


def add_scans(url: str) -> None:
    """A TEXT column with 60,000 characters of random text in orders 1-300."""
    execute_sql(url, "ALTER TABLE orders ADD COLUMN scan TEXT NULL")
    execute_sql(url, "UPDATE orders SET scan = :scan WHERE id = :id",
                [{"id": i, "scan": base64.b64encode(os.urandom(45_000)).decode()} for i in range(1, 301)])  # fmt: skip


def scan_digests(url: str, table: str) -> list[tuple[Any, ...]]:
    return _rows(url, f"SELECT id, md5(scan) FROM {table} WHERE scan IS NOT NULL ORDER BY id")


@pytest.mark.parametrize("fault", list(MULTIPART_FAULTS))
def test_faults_on_a_multipart_staging_upload_fail_before_the_target_or_complete(
    fault: str,
    proxy: FaultProxy,
    redshift: RedshiftRig,
    s3_endpoint: str,
    mysql_url: str,
    tmp_path: Path,
    reliability: Reliability,
) -> None:
    reliability.category = "S3 faults (replica staging)"
    template, error = MULTIPART_FAULTS[fault]
    pg_server_url, pg_schema, s3_bucket, reader = (
        redshift.pg_url,
        redshift.schema,
        redshift.bucket,
        redshift.reader,
    )
    seed_orders(mysql_url)
    add_scans(mysql_url)
    table = table_config(mysql_url, pg_server_url, pg_schema, tmp_path, chunk_rows=1000)

    def warehouse(endpoint: str) -> RedshiftOnPostgres:
        return redshift.warehouse(endpoint, **MULTIPART)

    run_load(mysql_url, warehouse(s3_endpoint), table, "run-1")
    before = replica_rows(pg_server_url, pg_schema)
    change_orders(mysql_url)

    rule = proxy.add(dataclasses.replace(template))
    faulty = warehouse(proxy.url)
    if error is None:
        report = run_load(mysql_url, faulty, table, "run-2")
        assert rule.hits == rule.times
        assert report.load.rows_staged == 350 and len(faulty.copies) == 1
    else:
        with pytest.raises(WarehouseError, match=error):
            run_load(mysql_url, faulty, table, "run-2")
        assert rule.hits == (7 if rule.times is None else rule.times), (
            "retried (1 + 6 attempts) when persistent"
        )
        assert faulty.copies == [], "COPY never ran: the load failed before touching the warehouse tables"
        assert replica_rows(pg_server_url, pg_schema) == before
        assert ledger_rows(pg_server_url, pg_schema) == 1
        run_load(mysql_url, warehouse(s3_endpoint), table, "run-3")
    assert proxy.part_numbers(FIRST_FILE) == {1, 2, 3}, (
        "the staged file went up as a multipart upload of three parts"
    )
    assert reader.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == [], "no upload left open"
    assert reader.list_objects_v2(Bucket=s3_bucket, Prefix="staging/").get("Contents", []) == [], (
        "staged files are removed after the load, failed or not"
    )
    assert ledger_rows(pg_server_url, pg_schema) == 2
    assert scan_digests(pg_server_url, f'"{pg_schema}".orders') == scan_digests(mysql_url, "orders")
    account(reliability, mysql_url, pg_server_url, pg_schema)
