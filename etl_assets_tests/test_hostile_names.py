"""Hostile names end to end: a table and columns named with spaces, quotes, backticks, semicolons,
Unicode and reserved words are quoted everywhere (MariaDB -> S3 archive -> PostgreSQL replica), and
injection attempts in config are refused before anything runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from etl_assets.config import ConfigError
from etl_assets.engine.archive import ArchiveJob
from etl_assets.engine.replica import ReplicaJob
from etl_assets.lib.layout import table_segment
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import open_store
from etl_assets.resources.warehouse import WarehouseClient
from etl_assets_tests.reliability import current
from etl_assets_tests.support import archived_keys, config_for

pytestmark = pytest.mark.integration

TABLE = "order Détails"
COLUMNS = ["select", 'we"ird', "back`tick", "semi;colon DROP TABLE x", "ünïcödé ✓", "50% off"]


def _q(name: str) -> str:
    """A MySQL identifier for driver SQL (PyMySQL formats even parameterless statements: % doubled)."""
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


@pytest.fixture
def hostile(mysql_url: str) -> str:
    engine = sa.create_engine(mysql_url)
    columns = ", ".join(f"{_q(c)} VARCHAR(40) NULL" for c in COLUMNS)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {_q(TABLE)} (`id` INT NOT NULL PRIMARY KEY, {columns}, `updated_at` DATETIME NOT NULL, "
            f"KEY `ix` (`updated_at`)) DEFAULT CHARSET=utf8mb4"
        )
        for i in range(1, 101):
            values = ", ".join(f"'{c[:3]}-{i}'" if "'" not in c else "NULL" for c in COLUMNS).replace(
                "%", "%%"
            )
            conn.exec_driver_sql(
                f"INSERT INTO {_q(TABLE)} VALUES ({i}, {values}, '2023-01-{1 + i % 28:02d} 10:00:00')"
            )
    engine.dispose()
    return mysql_url


def test_hostile_names_round_trip_through_archive_and_replica(
    hostile: str, s3_bucket: str, pg_server_url: str, pg_schema: str
) -> None:
    config = config_for(
        source_url=hostile,
        archive_url=f"s3://{s3_bucket}/archive",
        warehouse_url=pg_server_url,
        warehouse_schema=pg_schema,
        tables=f"  - name: {TABLE}\n    archive: {{retention: 1 year}}\n    replica: {{start: 2023-01-01}}\n",
    )
    table = config.tables[0]
    client = SourceClient(hostile)
    source_table = client.reflect(TABLE)
    assert source_table.column_names == ["id", *COLUMNS, "updated_at"]
    window = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))

    warehouse = WarehouseClient(url=pg_server_url, schema=pg_schema)
    ReplicaJob(source=client, warehouse=warehouse, table=table, source_table=source_table, window=window,
               run_id="r1", log=lambda m: None).run()  # fmt: skip
    engine = sa.create_engine(pg_server_url)
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.text(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = :s AND table_name = :t "
            "ORDER BY ordinal_position"), {"s": pg_schema, "t": table.asset_name})]  # fmt: skip
        replica_rows = conn.execute(
            sa.text(f'SELECT COUNT(*) FROM "{pg_schema}"."{table.asset_name}"')
        ).scalar_one()
    engine.dispose()
    assert names == ["id", *COLUMNS, "updated_at"]
    assert replica_rows == 100

    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    report = ArchiveJob(source=client, store=store, table=table, source_table=source_table,
                        partition_key="2023-01-01", window=window, run_id=uuid.uuid4().hex,
                        now=datetime.now(UTC), log=lambda m: None,
                        replica_guard=None).run()  # fmt: skip
    assert report.rows_purged == 100
    archived = archived_keys(store, table=table_segment(TABLE))
    current().checked(rows=100, lost=len(set(range(1, 101)) - set(archived)) - client.row_count(TABLE))
    assert sorted(archived) == list(range(1, 101))
    assert client.row_count(TABLE) == 0
    warehouse.close()
    client.dispose()


@pytest.mark.parametrize(
    "name", ["visits; DROP TABLE x", "visits`", 'vis"its', "vis'its", "a.b", "\x00visits"]
)
def test_injection_attempts_in_config_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"tables\[0\]\.name"):
        config_for(source_url="sqlite:///x.db", tables=f"  - name: {name!r}\n")
