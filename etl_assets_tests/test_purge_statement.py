"""The purge's one-statement delete on MariaDB: both forms, % in names, every time column type."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_assets.resources.source import SourceClient
from etl_assets_tests.support import execute_sql

BASE = datetime(2023, 5, 1, 12, 0, 0)


def _delete_statements(client: SourceClient) -> list[str]:
    """Every DELETE the client sends from now on (read off SQLAlchemy's cursor events)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("DELETE"):
            seen.append(statement)

    sa.event.listen(client.engine, "before_cursor_execute", record)
    return seen


def _form(statement: str) -> str:
    """Which form a DELETE took: one key range, integer keys looked up, or placeholders."""
    if ") IN ((%s" in statement:
        return "placeholders"
    if re.search(r"`?id`? IN \(\d", statement):
        return "lookups"
    return "range" if "BETWEEN" in statement else "unknown"


@pytest.fixture
def client(mysql_url: str) -> Iterator[SourceClient]:
    client = SourceClient(mysql_url)
    yield client
    client.dispose()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("ddl_key", "primary_key", "key_of", "gone", "form"),
    [
        ("PRIMARY KEY (id)", ["id"], lambda i: (i,), 11, "range"),
        ("PRIMARY KEY (id)", ["id"], lambda i: (i,), 99, "lookups"),
        ("PRIMARY KEY (`co%de`, id)", ["co%de", "id"], lambda i: (f"c'{i % 2}", i), 11, "placeholders"),
    ],
    ids=["integer-key-range", "integer-key-sparse", "composite-string-key"],
)
def test_delete_unchanged_deletes_exactly_the_rows_whose_time_still_matches(
    client: SourceClient,
    mysql_url: str,
    ddl_key: str,
    primary_key: list[str],
    key_of: Callable[[int], tuple[Any, ...]],
    gone: int,
    form: str,
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
    source = client.reflect("p%urge")
    archived = {key_of(i): stamps[i] for i in range(1, 9)}
    archived[key_of(3)] = stamps[3] - timedelta(microseconds=1)  # changed since read
    archived[key_of(gone)] = BASE  # already gone
    rows = pa.table(
        {
            **{name: [key[n] for key in archived] for n, name in enumerate(primary_key)},
            "updated_at": pa.array(list(archived.values()), pa.timestamp("us")),
        }
    )
    statements = _delete_statements(client)
    outcome = client.delete_unchanged(source, primary_key=primary_key, time_column="updated_at", rows=rows)
    with client.engine.connect() as conn:
        left = sorted(row[0] for row in conn.execute(sa.text("SELECT id FROM `p%urge`")))
    assert outcome.deleted == 7
    assert outcome.changed == [key_of(3)]
    assert outcome.missing == 1
    assert left == [3, 9, 10]
    assert len(statements) == 1 and _form(statements[0]) == form


@pytest.mark.integration
@pytest.mark.parametrize(
    ("column_type", "arrow_type", "value_of", "step"),
    [
        ("DATETIME", pa.timestamp("us"), lambda i: BASE + timedelta(minutes=i), timedelta(seconds=1)),
        (
            "DATETIME(2)",
            pa.timestamp("us"),
            lambda i: BASE + timedelta(minutes=i, microseconds=10_000 * i),
            timedelta(microseconds=10_000),
        ),
        (
            "TIMESTAMP(3) NULL",
            pa.timestamp("us", tz="UTC"),
            lambda i: (BASE + timedelta(hours=i, microseconds=1000 * i)).replace(tzinfo=UTC),
            timedelta(microseconds=1000),
        ),
        ("DATE", pa.date32(), lambda i: date(2023, 5, i), timedelta(days=1)),
    ],
)
@pytest.mark.parametrize("form", ["range", "lookups"])
def test_integer_key_delete_compares_every_time_type_exactly(
    client: SourceClient,
    mysql_url: str,
    column_type: str,
    arrow_type: pa.DataType,
    value_of: Callable[[int], Any],
    step: timedelta,
    form: str,
) -> None:
    # A value one step of the column's precision off must keep its row in the source.
    execute_sql(mysql_url, f"CREATE TABLE tk (id BIGINT UNSIGNED PRIMARY KEY, t {column_type}, KEY (t))")
    values = {i: value_of(i) for i in range(1, 21)}
    naive_utc = {i: v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v
                 for i, v in values.items()}  # fmt: skip
    execute_sql(
        mysql_url, "INSERT INTO tk VALUES (:id, :t)", [{"id": i, "t": v} for i, v in naive_utc.items()]
    )
    archived = dict(values)
    archived[7] = values[7] + step
    archived[8] = values[8] - step
    if form == "lookups":
        archived[1000] = values[1]  # a key far away (already gone) makes the batch sparse
    rows = pa.table(
        {"id": pa.array(list(archived), pa.uint64()), "t": pa.array(list(archived.values()), arrow_type)}
    )
    statements = _delete_statements(client)
    outcome = client.delete_unchanged(client.reflect("tk"), primary_key=["id"], time_column="t", rows=rows)
    with client.engine.connect() as conn:
        left = sorted(row[0] for row in conn.execute(sa.text("SELECT id FROM tk")))
    assert _form(statements[0]) == form
    assert (outcome.deleted, sorted(outcome.changed), outcome.missing) == (
        18,
        [(7,), (8,)],
        int(form == "lookups"),
    )
    assert left == [7, 8]


@pytest.mark.integration
def test_key_range_delete_at_the_largest_unsigned_key(client: SourceClient, mysql_url: str) -> None:
    top = 2**64 - 1
    execute_sql(mysql_url, "CREATE TABLE tu (id BIGINT UNSIGNED PRIMARY KEY, t DATETIME NOT NULL)")
    execute_sql(mysql_url, "INSERT INTO tu VALUES (:id, :t)", [{"id": top - i, "t": BASE} for i in range(5)])
    rows = pa.table({"id": pa.array([top - i for i in range(5)], pa.uint64()),
                     "t": pa.array([BASE] * 5, pa.timestamp("us"))})  # fmt: skip
    statements = _delete_statements(client)
    outcome = client.delete_unchanged(client.reflect("tu"), primary_key=["id"], time_column="t", rows=rows)
    assert _form(statements[0]) == "range"
    assert outcome.deleted == 5
