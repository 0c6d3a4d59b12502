"""An archive and a replica run of the same table at once, and two archives of one partition at once:
no double delete, no lost row, and every archived row is in the replica."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveJob
from etl_assets.lib.windows import Window
from etl_assets.resources.source import LockBusyError, SourceClient
from etl_assets.resources.store import open_store
from etl_assets.resources.warehouse import ReplicaKeys, WarehouseClient
from etl_assets_tests.reliability import current
from etl_assets_tests.support import (
    archived_keys,
    config_for,
    replica_ids,
    replicate,
    seed_visits,
    source_keys,
)

pytestmark = pytest.mark.integration
JAN = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))


def test_archive_and_replica_of_one_table_at_once(
    mysql_url: str, s3_bucket: str, pg_server_url: str, pg_schema: str
) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=6000)
    original = source_keys(mysql_url)
    config = config_for(source_url=mysql_url, archive_url=f"s3://{s3_bucket}/a", warehouse_url=pg_server_url,
                        warehouse_schema=pg_schema,
                        tables="  - name: visits\n    archive: {retention: 1 year, batch_size: 300, chunk_rows: 500}\n"
                               "    replica: {start: 2023-01-01, chunk_rows: 500}\n")  # fmt: skip
    table = config.tables[0]
    store = open_store(f"s3://{s3_bucket}/a", region="us-east-1")
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            replicate(mysql_url, pg_server_url, pg_schema, table, JAN)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def archive() -> None:
        client = SourceClient(mysql_url)
        warehouse = WarehouseClient(url=pg_server_url, schema=pg_schema)
        try:
            ArchiveJob(source=client, store=store, table=table, source_table=client.reflect("visits"),
                       partition_key="2023-01-01", window=JAN, run_id=uuid.uuid4().hex, now=datetime.now(UTC),
                       log=lambda m: None, replica_guard=ReplicaKeys(warehouse, "visits", ["id"], "updated_at")).run()  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            warehouse.close()
            client.dispose()

    threads = [threading.Thread(target=replica), threading.Thread(target=archive)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    in_source, in_archive = source_keys(mysql_url), archived_keys(store)
    current().checked(rows=len(original), lost=len(original - in_source - set(in_archive)))
    assert len(in_archive) == len(set(in_archive))
    assert in_source.isdisjoint(in_archive)
    assert in_source | set(in_archive) == original
    replica_keys = replica_ids(pg_server_url, pg_schema)
    assert set(in_archive) <= replica_keys, "a row left the source before the replica held it"
    assert replica_keys == original, "the replica holds every row, archived or not"


def test_a_row_updated_after_the_replica_load_stays_until_the_replica_has_that_version(
    mysql_url: str, s3_bucket: str, pg_server_url: str, pg_schema: str
) -> None:
    """The replica holds an older version of a row (updated after its last load, time still in the
    archived month): purging it would leave the replica with that old version for good."""
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=600)
    config = config_for(source_url=mysql_url, archive_url=f"s3://{s3_bucket}/a", warehouse_url=pg_server_url,
                        warehouse_schema=pg_schema,
                        tables="  - name: visits\n    archive: {retention: 1 year, batch_size: 100}\n"
                               "    replica: {start: 2023-01-01, lag: 0 minutes}\n")  # fmt: skip
    table = config.tables[0]
    store = open_store(f"s3://{s3_bucket}/a", region="us-east-1")

    def archive() -> Any:
        client, warehouse = SourceClient(mysql_url), WarehouseClient(url=pg_server_url, schema=pg_schema)
        report = ArchiveJob(source=client, store=store, table=table, source_table=client.reflect("visits"),
                            partition_key="2023-01-01", window=JAN, run_id=uuid.uuid4().hex, now=datetime.now(UTC),
                            log=lambda m: None,
                            replica_guard=ReplicaKeys(warehouse, "visits", ["id"], "updated_at")).run()  # fmt: skip
        warehouse.close()
        client.dispose()
        return report

    replicate(mysql_url, pg_server_url, pg_schema, table, JAN, run_id=uuid.uuid4().hex)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        updated = conn.execute(sa.text("SELECT MIN(id) FROM visits")).scalar_one()
        conn.execute(
            sa.text(
                "UPDATE visits SET notes = 'corrected', updated_at = updated_at + INTERVAL 1 SECOND WHERE id = :id"
            ),
            {"id": updated},
        )
    engine.dispose()

    first = archive()
    assert updated in source_keys(mysql_url), "the replica holds only the older version"
    assert first.rows_kept_not_in_replica == 1 and first.rows_purged == 599
    assert updated not in archived_keys(store)

    # The replica now holds the corrected version: the next run archives it.
    replicate(mysql_url, pg_server_url, pg_schema, table, JAN, run_id=uuid.uuid4().hex)
    second = archive()
    assert second.rows_purged == 1 and source_keys(mysql_url) == set()
    in_archive = archived_keys(store)
    current().checked(rows=600, lost=600 - len(set(in_archive)))
    assert len(in_archive) == len(set(in_archive)) == 600


def test_two_archives_of_one_partition_at_once(mysql_url: str, s3_bucket: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=4000)
    original = source_keys(mysql_url)
    config = config_for(source_url=mysql_url, archive_url=f"s3://{s3_bucket}/a",
                        tables="  - name: visits\n    archive: {retention: 1 year, batch_size: 300}\n")  # fmt: skip
    store = open_store(f"s3://{s3_bucket}/a", region="us-east-1")
    outcomes: list[Any] = []
    barrier = threading.Barrier(2)

    def archive() -> None:
        client = SourceClient(mysql_url)
        barrier.wait()
        try:
            outcomes.append(ArchiveJob(source=client, store=store, table=config.tables[0],
                                       source_table=client.reflect("visits"), partition_key="2023-01-01", window=JAN,
                                       run_id=uuid.uuid4().hex, now=datetime.now(UTC), log=lambda m: None).run())  # fmt: skip
        except LockBusyError as exc:
            outcomes.append(exc)
        finally:
            client.dispose()

    threads = [threading.Thread(target=archive) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    busy = [o for o in outcomes if isinstance(o, LockBusyError)]
    done = [o for o in outcomes if not isinstance(o, LockBusyError)]
    assert len(outcomes) == 2
    assert len(done) >= 1
    assert all("another run is already doing 'archive'" in str(b) for b in busy)
    in_archive = archived_keys(store)
    current().checked(rows=len(original), lost=len(original - set(in_archive) - source_keys(mysql_url)))
    assert sorted(in_archive) == sorted(original), "each row archived exactly once"
    assert source_keys(mysql_url) == set()
