"""The purge's one-statement delete on MariaDB, with a % in a key column's name."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from etl_assets.resources.source import SourceClient
from etl_assets_tests.support import execute_sql

BASE = datetime(2023, 5, 1, 12, 0, 0)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("ddl_key", "primary_key", "key_of"),
    [
        ("PRIMARY KEY (id)", ["id"], lambda i: (i,)),
        ("PRIMARY KEY (`co%de`, id)", ["co%de", "id"], lambda i: (f"c'{i % 2}", i)),
    ],
    ids=["integer-key", "composite-string-key"],
)
def test_delete_unchanged_deletes_exactly_the_rows_whose_time_still_matches(
    mysql_url: str, ddl_key: str, primary_key: list[str], key_of: object
) -> None:
    # A % in the names: PyMySQL formats the statement, so the quoting must keep them literal.
    execute_sql(
        mysql_url,
        "CREATE TABLE `p%urge` (id BIGINT UNSIGNED NOT NULL, `co%de` VARCHAR(10) NOT NULL, "
        f"updated_at DATETIME(6) NOT NULL, {ddl_key}, KEY (updated_at))",
    )
    stamps = {i: BASE + timedelta(seconds=i, microseconds=i) for i in range(1, 11)}
    execute_sql(mysql_url, "INSERT INTO `p%urge` VALUES (:id, :code, :t)",
                [{"id": i, "code": f"c'{i % 2}", "t": t} for i, t in stamps.items()])  # fmt: skip
    client = SourceClient(mysql_url)
    try:
        source = client.reflect("p%urge")
        make_key = key_of  # type: ignore[assignment]
        expected = {make_key(i): stamps[i] for i in range(1, 9)}  # type: ignore[operator]
        expected[make_key(3)] = stamps[3] - timedelta(microseconds=1)  # type: ignore[operator]  # changed since read
        expected[make_key(99)] = BASE  # type: ignore[operator]  # already gone
        outcome = client.delete_unchanged(source, primary_key=primary_key, time_column="updated_at",
                                          expected=expected)  # fmt: skip
        with client.engine.connect() as conn:
            left = sorted(row[0] for row in conn.execute(sa.text("SELECT id FROM `p%urge`")))
    finally:
        client.dispose()
    assert outcome.deleted == 7
    assert outcome.changed == [make_key(3)]  # type: ignore[operator]
    assert outcome.missing == 1
    assert left == [3, 9, 10]
