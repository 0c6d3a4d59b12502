"""SQL text for the replica: quoting, DDL, staging, the merge per insert mode, Redshift COPY.

Redshift statements are parsed with sqlglot's Redshift dialect (no Redshift runs locally; sqlglot
is lenient, so the tests also inspect the parsed tree). The PostgreSQL and DuckDB statements are
executed: every insert mode loads a staging table, then the same load is retried, and a load that
dies before commit leaves the target untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import duckdb
import psycopg
import pytest
import sqlalchemy as sa
import sqlglot
from sqlglot import exp

from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.sql import (
    INSERT_MODES,
    add_column_sql,
    create_schema_sql,
    create_staging_sql,
    create_table_sql,
    drop_staging_sql,
    merge_sql,
    qualified,
    quote_identifier,
    quote_literal,
    redshift_copy_sql,
    staging_table_name,
)
from etl_assets.lib.typemap import Dialect, UnsupportedTypeError, warehouse_type
from etl_assets_tests.test_typemap import CASES, dynamic

ROLE = "arn:aws:iam::123456789012:role/redshift-copy"


def column(name: str, column_type: str, *, nullable: bool = True, length: int | None = None) -> SourceColumn:
    data_type = column_type.split("(")[0].split(" ")[0]
    return SourceColumn(name, data_type, column_type, nullable=nullable, char_max_length=length)


VISITS = SourceTable(
    name="visits",
    columns=(
        column("clinic", "int(11)", nullable=False),
        column("id", "bigint(20) unsigned", nullable=False),
        column("patient", "varchar(255)", length=255),
        column("paid", "tinyint(1)"),
        column("doc", "json"),
        column("updated_at", "timestamp", nullable=False),
    ),
    primary_key=("clinic", "id"),
)


def parse_redshift(sql: str) -> exp.Expr:
    """Parse one Redshift statement; fails the test on a syntax error or on more than one statement."""
    statements = sqlglot.parse(sql, read="redshift")
    assert len(statements) == 1, sql
    statement = statements[0]
    assert statement is not None
    return statement


# ------------------------------------------------------------------------------------------ quoting


def test_qualified_is_two_identifiers() -> None:
    assert qualified("staging", "visits") == '"staging"."visits"'
    assert qualified("staging", "visits", "postgresql") == '"staging"."visits"'
    assert qualified("staging", "visits", "duckdb") == '"staging"."visits"'


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ('say "hi"', '"say ""hi"""'),
        ("visit log", '"visit log"'),
        ("pacientes_ñ_診療", '"pacientes_ñ_診療"'),
        ("select", '"select"'),
        ("Visits", '"Visits"'),
        ('x"; DROP TABLE t; --', '"x""; DROP TABLE t; --"'),
        ("a.b", '"a.b"'),
        ("50% off", '"50% off"'),  # SQLAlchemy's default preparer would write "50%% off"
    ],
)
def test_identifiers_are_always_quoted_with_embedded_quotes_doubled(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted
    assert qualified(name, name) == f"{quoted}.{quoted}"
    # The parser sees exactly one table whose schema and name are the original strings.
    table = parse_redshift(f"SELECT 1 FROM {qualified(name, name)}").find(exp.Table)
    assert table is not None and table.name == name and table.db == name


@pytest.mark.parametrize(
    ("name", "dialect", "message"),
    [
        ("", "redshift", "empty"),
        ("a\x00b", "postgresql", "NUL"),
        ("x" * 64, "postgresql", "63"),
        ("é" * 64, "redshift", "127"),
        ("x", "oracle", "unknown warehouse dialect"),
    ],
)
def test_bad_identifiers_are_refused(name: str, dialect: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quote_identifier(name, dialect)  # type: ignore[arg-type]


def test_long_identifiers_are_fine_where_the_warehouse_keeps_them() -> None:
    assert quote_identifier("x" * 64, "redshift") == '"' + "x" * 64 + '"'
    assert quote_identifier("x" * 300, "duckdb") == '"' + "x" * 300 + '"'


def test_quote_literal() -> None:
    assert quote_literal("it's") == "'it''s'"
    for bad in ("a\\b", "line\nbreak", "tab\t"):
        with pytest.raises(ValueError, match="backslash or control"):
            quote_literal(bad)


def test_create_schema_sql() -> None:
    assert create_schema_sql("staging") == 'CREATE SCHEMA IF NOT EXISTS "staging"'
    assert create_schema_sql('my "s"', "postgresql") == 'CREATE SCHEMA IF NOT EXISTS "my ""s"""'
    assert isinstance(parse_redshift(create_schema_sql("staging")), exp.Create)


# ------------------------------------------------------------------------------------ CREATE TABLE


def test_redshift_create_table_types_keys_and_layout() -> None:
    sql = create_table_sql(
        VISITS,
        schema="staging",
        target_name="visits",
        dialect="redshift",
        boolean_columns=["paid"],
        time_column="updated_at",
    )
    tree = parse_redshift(sql)
    assert isinstance(tree, exp.Create) and tree.args.get("exists") is True
    table = tree.find(exp.Table)
    assert table is not None and (table.db, table.name) == ("staging", "visits")

    definitions = {c.name: c for c in tree.find_all(exp.ColumnDef)}
    assert list(definitions) == VISITS.column_names
    expected = {
        "clinic": "INTEGER",
        "id": "DECIMAL(20,0)",
        "patient": "VARCHAR(1020)",
        "paid": "BOOLEAN",
        "doc": "SUPER",
        "updated_at": "TIMESTAMPTZ",
    }
    for name, sql_type in expected.items():
        assert definitions[name].args["kind"] == exp.DataType.build(sql_type, dialect="redshift"), name
    not_null = {
        name
        for name, definition in definitions.items()
        if any(isinstance(c.kind, exp.NotNullColumnConstraint) for c in definition.constraints)
    }
    assert not_null == {"clinic", "id", "updated_at"}

    primary_key = tree.find(exp.PrimaryKey)
    assert primary_key is not None
    assert [e.name for e in primary_key.expressions] == ["clinic", "id"]  # the whole composite key
    dist_style = tree.find(exp.DistStyleProperty)
    dist_key = tree.find(exp.DistKeyProperty)
    sort_key = tree.find(exp.SortKeyProperty)
    assert dist_style is not None and dist_style.name == "KEY"
    assert dist_key is not None and dist_key.this.name == "clinic"
    assert sort_key is not None and sort_key.args.get("compound") is True
    assert [e.name for e in sort_key.this] == ["updated_at"]
    assert "COMMENT" not in sql.upper()


def test_redshift_configured_distkey_and_sortkey() -> None:
    sql = create_table_sql(
        VISITS,
        schema="staging",
        target_name="visits",
        dialect="redshift",
        distkey="patient",
        sortkey=["clinic", "updated_at"],
        time_column="updated_at",
    )
    tree = parse_redshift(sql)
    dist_key = tree.find(exp.DistKeyProperty)
    sort_key = tree.find(exp.SortKeyProperty)
    assert dist_key is not None and dist_key.this.name == "patient"
    assert sort_key is not None and [e.name for e in sort_key.this] == ["clinic", "updated_at"]


def test_redshift_without_key_or_time_column_leaves_distribution_to_redshift() -> None:
    table = SourceTable("events", (column("payload", "text"), column("at", "datetime")))
    sql = create_table_sql(table, schema="staging", target_name="events", dialect="redshift")
    tree = parse_redshift(sql)
    assert tree.find(exp.PrimaryKey) is None
    assert tree.find(exp.DistKeyProperty) is None and tree.find(exp.SortKeyProperty) is None


@pytest.mark.parametrize("dialect", ["postgresql", "duckdb"])
def test_other_dialects_get_no_redshift_clauses(dialect: Dialect) -> None:
    sql = create_table_sql(
        VISITS, schema="staging", target_name="visits", dialect=dialect, time_column="updated_at"
    )
    assert "DIST" not in sql and "SORTKEY" not in sql
    assert 'PRIMARY KEY ("clinic", "id")' in sql


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"distkey": "nope"}, r"distkey of table 'visits' names 'nope'.*clinic, id, patient"),
        ({"sortkey": ["updated_at", "nope"]}, r"sortkey of table 'visits' names 'nope'"),
        ({"time_column": "modified"}, r"time_column of table 'visits' names 'modified'"),
        ({"boolean_columns": ["nope"]}, r"boolean_columns of table 'visits'.*'nope'"),
        ({"column_types": {"nope": "INT"}}, r"column_types of table 'visits'.*'nope'"),
        ({"distkey": "doc"}, r"distkey of table 'visits' is 'doc', a SUPER column"),
        ({"sortkey": ["doc"]}, r"sortkey of table 'visits' is 'doc', a SUPER column"),
        ({"boolean_columns": ["patient"]}, r"table 'visits'.*boolean_columns lists 'patient'"),
    ],
)
def test_create_table_refuses_bad_settings_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_table_sql(VISITS, schema="staging", target_name="visits", dialect="redshift", **settings)


def test_create_table_refuses_a_decimal_redshift_cannot_hold_and_takes_the_override() -> None:
    table = SourceTable(
        "ledger",
        (
            column("id", "int(11)", nullable=False),
            SourceColumn("amount", "decimal", "decimal(65,30)", numeric_precision=65, numeric_scale=30),
        ),
        primary_key=("id",),
    )
    with pytest.raises(UnsupportedTypeError, match=r"table 'ledger': column 'amount'.*column_types"):
        create_table_sql(table, schema="s", target_name="ledger", dialect="redshift")
    sql = create_table_sql(
        table, schema="s", target_name="ledger", dialect="redshift", column_types={"amount": "DECIMAL(38,10)"}
    )
    assert '"amount" DECIMAL(38,10)' in sql
    parse_redshift(sql)


@pytest.mark.parametrize("dialect", ["redshift", "duckdb"])
def test_names_that_differ_only_by_case_are_refused_where_case_is_folded(dialect: Dialect) -> None:
    table = SourceTable("t", (column("userId", "int(11)"), column("userid", "int(11)")))
    with pytest.raises(ValueError, match=r"'userId' and 'userid'.*ignores case"):
        create_table_sql(table, schema="s", target_name="t", dialect=dialect)
    assert '"userId" INTEGER' in create_table_sql(table, schema="s", target_name="t", dialect="postgresql")


# --------------------------------------------------------------------------------- staging + COPY


def test_staging_sql_per_dialect() -> None:
    assert create_staging_sql(
        staging="stage_visits", schema="staging", table="visits", dialect="redshift"
    ) == ('CREATE TEMP TABLE "stage_visits" (LIKE "staging"."visits")')
    assert create_staging_sql(
        staging="stage_visits", schema="staging", table="visits", dialect="postgresql"
    ) == ('CREATE TEMP TABLE "stage_visits" (LIKE "staging"."visits" INCLUDING DEFAULTS) ON COMMIT DROP')
    assert create_staging_sql(staging="stage_visits", schema="staging", table="visits", dialect="duckdb") == (
        'CREATE OR REPLACE TEMP TABLE "stage_visits" AS SELECT * FROM "staging"."visits" LIMIT 0'
    )
    tree = parse_redshift(create_staging_sql(staging="stage_v", schema="s", table="v", dialect="redshift"))
    assert isinstance(tree, exp.Create)
    assert drop_staging_sql(staging="stage_v", dialect="redshift") == 'DROP TABLE IF EXISTS "stage_v"'


def test_staging_table_name_fits_postgresql_and_stays_unique() -> None:
    assert staging_table_name("visits") == "stage_visits"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    stage_a, stage_b = staging_table_name(long_a), staging_table_name(long_b)
    assert stage_a != stage_b
    assert len(stage_a.encode()) <= 63 and len(stage_b.encode()) <= 63
    assert len(staging_table_name("é" * 40).encode()) <= 63
    quote_identifier(staging_table_name("é" * 40), "postgresql")


def test_redshift_copy_sql() -> None:
    sql = redshift_copy_sql(
        staging_table="stage_visits",
        s3_prefix_or_manifest="s3://etl-bucket/staging/visits/run-1/",
        iam_role=ROLE,
    )
    assert sql == (
        'COPY "stage_visits"\n'
        "FROM 's3://etl-bucket/staging/visits/run-1/'\n"
        "IAM_ROLE 'arn:aws:iam::123456789012:role/redshift-copy'\n"
        "FORMAT AS PARQUET"
    )
    tree = parse_redshift(sql)
    assert isinstance(tree, exp.Copy)
    credentials = tree.args["credentials"]
    assert credentials.args["iam_role"].this == ROLE


def _copy_words(tree: exp.Expr) -> set[str]:
    """Every keyword among a parsed COPY's parameters (sqlglot pairs bare flags with the next word)."""
    words = set()
    for parameter in tree.args.get("params", []):
        words.add(parameter.this.name.upper())
        if isinstance(parameter.expression, exp.Var):
            words.add(parameter.expression.name.upper())
    return words


def test_redshift_copy_with_json_manifest_region_and_quote_in_url() -> None:
    sql = redshift_copy_sql(
        staging_table="stage_visits",
        s3_prefix_or_manifest="s3://etl-bucket/staging/it's/load.manifest",
        iam_role=ROLE,
        region="eu-west-1",
        manifest=True,
        serialize_to_json=True,
    )
    assert "FROM 's3://etl-bucket/staging/it''s/load.manifest'" in sql
    tree = parse_redshift(sql)
    assert [f.this for f in tree.args["files"]] == ["s3://etl-bucket/staging/it's/load.manifest"]
    assert {"FORMAT", "PARQUET", "SERIALIZETOJSON", "MANIFEST", "REGION"} <= _copy_words(tree)
    plain = parse_redshift(
        redshift_copy_sql(staging_table="s", s3_prefix_or_manifest="s3://etl-bucket/p/", iam_role=ROLE)
    )
    assert not {"SERIALIZETOJSON", "MANIFEST", "REGION"} & _copy_words(plain)


@pytest.mark.parametrize(
    "role",
    [
        "default",
        "arn:aws:iam::123456789012:role/a,arn:aws:iam::210987654321:role/b",
        "arn:aws-cn:iam::123456789012:role/path/name+x=y,z.w@q-r_s",
    ],
)
def test_redshift_copy_accepts_default_chained_and_partition_roles(role: str) -> None:
    sql = redshift_copy_sql(staging_table="s", s3_prefix_or_manifest="s3://etl-bucket/p", iam_role=role)
    assert (f"IAM_ROLE {role}" if role == "default" else f"IAM_ROLE '{role}'") in sql


@pytest.mark.parametrize(
    ("url", "role", "region", "message"),
    [
        ("https://etl-bucket.s3.amazonaws.com/p", ROLE, None, "not an S3 URL"),
        ("s3://", ROLE, None, "not an S3 URL"),
        ("s3://Etl_Bucket/p", ROLE, None, "not an S3 URL"),
        ("s3://etl-bucket/a\\b", ROLE, None, "backslash"),
        ("s3://etl-bucket/p", "arn:aws:iam::1234:role/x", None, "not an IAM role ARN"),
        ("s3://etl-bucket/p", "arn:aws:iam::123456789012:user/x", None, "not an IAM role ARN"),
        ("s3://etl-bucket/p", "x' CREDENTIALS 'y", None, "not an IAM role ARN"),
        ("s3://etl-bucket/p", ROLE, "us-east-1'; DROP TABLE t; --", "not an AWS region"),
    ],
)
def test_redshift_copy_refuses_bad_input(url: str, role: str, region: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        redshift_copy_sql(staging_table="s", s3_prefix_or_manifest=url, iam_role=role, region=region)


# ------------------------------------------------------------------------------------- ADD COLUMN


def test_add_column_sql() -> None:
    note = column("note ñ", "varchar(100)", length=100, nullable=False)
    redshift = add_column_sql("staging", "visits", note, "redshift")
    assert redshift == 'ALTER TABLE "staging"."visits" ADD COLUMN "note ñ" VARCHAR(400)'
    tree = parse_redshift(redshift)
    assert isinstance(tree, exp.Alter)
    assert add_column_sql("staging", "visits", note, "postgresql") == (
        'ALTER TABLE "staging"."visits" ADD COLUMN IF NOT EXISTS "note ñ" VARCHAR(100)'
    )
    flag = column("flag", "tinyint(1)")
    assert add_column_sql("s", "t", flag, "duckdb", boolean=True).endswith('"flag" BOOLEAN')
    assert add_column_sql("s", "t", flag, "redshift", override="INTEGER").endswith('"flag" INTEGER')


# ------------------------------------------------------------------------------------ merge (text)


@pytest.mark.parametrize("mode", INSERT_MODES)
def test_every_redshift_merge_statement_parses(mode: str) -> None:
    statements = merge_sql(
        schema="staging",
        table="visits",
        staging="stage_visits",
        columns=VISITS.column_names,
        primary_key=VISITS.primary_key,
        insert_mode=mode,  # type: ignore[arg-type]
        dialect="redshift",
        dedupe_order_by=["updated_at"],
    )
    trees = [parse_redshift(statement) for statement in statements]
    assert isinstance(trees[-1], exp.Insert)
    if len(trees) == 2:
        assert isinstance(trees[0], exp.Delete)
    assert not any("TRUNCATE" in statement.upper() for statement in statements)


def test_overwrite_matches_on_every_key_column() -> None:
    delete, _ = merge_sql(
        schema="staging",
        table="visits",
        staging="stage_visits",
        columns=VISITS.column_names,
        primary_key=VISITS.primary_key,
        insert_mode="overwrite_existing",
        dialect="redshift",
    )
    where = parse_redshift(delete).args["where"]
    pairs = {(eq.left.sql(), eq.right.sql()) for eq in where.find_all(exp.EQ)}
    assert pairs == {
        ('"visits"."clinic"', '"stage_visits"."clinic"'),
        ('"visits"."id"', '"stage_visits"."id"'),
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"insert_mode": "upsert"}, "unknown insert_mode 'upsert'"),
        ({"insert_mode": "overwrite_existing", "primary_key": []}, "has none; set the table's primary_key"),
        ({"insert_mode": "keep_existing", "primary_key": []}, "has none"),
        ({"primary_key": ["nope"]}, "not among the merged columns"),
        ({"dedupe_order_by": ["nope"]}, "not among the merged columns"),
        ({"columns": []}, "no columns"),
        ({"columns": ["id", "id"], "primary_key": ["id"]}, "repeat"),
        ({"columns": ["id", "__etl_row_number"], "primary_key": ["id"]}, "reserved"),
        ({"staging": "visits"}, "must not be named like the target"),
    ],
)
def test_merge_sql_refuses_bad_arguments(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "schema": "staging",
        "table": "visits",
        "staging": "stage_visits",
        "columns": ["id", "note"],
        "primary_key": ["id"],
        "insert_mode": "overwrite_existing",
        "dialect": "redshift",
    } | changes
    with pytest.raises(ValueError, match=message):
        merge_sql(**arguments)


# ------------------------------------------------------------------------- executed: PG and DuckDB


class Warehouse:
    """The little a test needs from a warehouse connection; one implementation per engine."""

    dialect: Dialect
    schema: str

    def execute(self, sql: str) -> int:
        """Run one statement; return the rows it changed (DML) or -1."""
        raise NotImplementedError

    def insert(self, relation: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert `rows` with bound parameters into `relation` (an already quoted name)."""
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield


class PostgresWarehouse(Warehouse):
    def __init__(self, connection: psycopg.Connection[Any], schema: str) -> None:
        self.connection, self.schema, self.dialect = connection, schema, "postgresql"

    def execute(self, sql: str) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(dynamic(sql))  # no parameters: a '%' in an identifier stays literal
            return cursor.rowcount

    def insert(self, relation: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        names = ", ".join(quote_identifier(c, "postgresql") for c in columns)
        placeholders = ", ".join(["%s"] * len(columns))
        # With parameters psycopg reads '%' as a placeholder, so literal ones in names are doubled.
        sql = f"INSERT INTO {relation} ({names})".replace("%", "%%") + f" VALUES ({placeholders})"
        with self.connection.cursor() as cursor:
            cursor.executemany(dynamic(sql), rows)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(dynamic(sql))
            return cursor.fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.connection.transaction():
            yield


class DuckDBWarehouse(Warehouse):
    def __init__(self, connection: duckdb.DuckDBPyConnection, schema: str) -> None:
        self.connection, self.schema, self.dialect = connection, schema, "duckdb"

    def execute(self, sql: str) -> int:
        result = self.connection.execute(sql)
        if sql.lstrip().upper().startswith(("INSERT", "DELETE", "UPDATE")):
            row = result.fetchone()
            return int(row[0]) if row else 0
        return -1

    def insert(self, relation: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        names = ", ".join(quote_identifier(c, "duckdb") for c in columns)
        placeholders = ", ".join(["?"] * len(columns))
        self.connection.executemany(f"INSERT INTO {relation} ({names}) VALUES ({placeholders})", list(rows))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.connection.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.integration)])
def warehouse(request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """A DuckDB (in memory) or PostgreSQL (fresh schema, dropped afterwards) warehouse."""
    if request.param == "duckdb":
        connection = duckdb.connect()
        yield DuckDBWarehouse(connection, "replica")
        connection.close()
        return
    server_url: str = request.getfixturevalue("pg_server_url")
    schema: str = request.getfixturevalue("pg_schema")  # drops the schema afterwards
    url = sa.make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as connection:
        yield PostgresWarehouse(connection, schema)


class SimulatedCrash(Exception):
    """Raised inside a load's transaction to prove nothing of it survives."""


def load(
    warehouse: Warehouse,
    table: SourceTable,
    rows: Sequence[tuple[Any, ...]],
    mode: str,
    *,
    crash_before_commit: bool = False,
) -> list[int]:
    """Stage `rows` and merge them the way the replica loader does: one transaction."""
    staging = staging_table_name(table.name)
    statements = merge_sql(
        schema=warehouse.schema,
        table=table.name,
        staging=staging,
        columns=table.column_names,
        primary_key=table.primary_key,
        insert_mode=mode,  # type: ignore[arg-type]
        dialect=warehouse.dialect,
        dedupe_order_by=["updated_at"],
    )
    counts: list[int] = []
    try:
        with warehouse.transaction():
            warehouse.execute(
                create_staging_sql(
                    staging=staging, schema=warehouse.schema, table=table.name, dialect=warehouse.dialect
                )
            )
            warehouse.insert(quote_identifier(staging, warehouse.dialect), table.column_names, rows)
            counts = [warehouse.execute(statement) for statement in statements]
            if crash_before_commit:
                raise SimulatedCrash
            if warehouse.dialect != "postgresql":  # PostgreSQL drops it at commit (ON COMMIT DROP)
                warehouse.execute(drop_staging_sql(staging=staging, dialect=warehouse.dialect))
    except SimulatedCrash:
        pass
    return counts


def contents(warehouse: Warehouse, table: SourceTable) -> list[tuple[Any, ...]]:
    names = ", ".join(quote_identifier(c, warehouse.dialect) for c in table.column_names)
    rows = warehouse.query(
        f"SELECT {names} FROM {qualified(warehouse.schema, table.name, warehouse.dialect)}"
    )
    return sorted(tuple(int(v) if isinstance(v, Decimal) else v for v in row) for row in rows)


def create(warehouse: Warehouse, table: SourceTable, *, declare_primary_key: bool = True) -> None:
    warehouse.execute(create_schema_sql(warehouse.schema, warehouse.dialect))
    ddl_table = table if declare_primary_key else SourceTable(table.name, table.columns)
    warehouse.execute(
        create_table_sql(
            ddl_table,
            schema=warehouse.schema,
            target_name=table.name,
            dialect=warehouse.dialect,
            time_column="updated_at",
        )
    )
    # Running the DDL again is harmless (IF NOT EXISTS), as a re-run of the asset would do.
    warehouse.execute(
        create_table_sql(
            ddl_table, schema=warehouse.schema, target_name=table.name, dialect=warehouse.dialect
        )
    )


T0 = datetime(2024, 1, 1, 8, 0)
T1 = datetime(2024, 1, 2, 9, 30)

# A composite key whose first column repeats: matching on the first key column alone (the AWS Data
# Pipeline script's bug) would replace or skip the wrong rows.
LEDGER = SourceTable(
    name="ledger",
    columns=(
        column("clinic", "int(11)", nullable=False),
        column("id", "bigint(20)", nullable=False),
        column("note", "varchar(20)", length=20),
        column("updated_at", "datetime", nullable=False),
    ),
    primary_key=("clinic", "id"),
)
A0, B0 = (1, 1, "a0", T0), (1, 2, "b0", T0)
B1, C_OLD, C1 = (1, 2, "b1", T1), (2, 1, "c-old", T0), (2, 1, "c1", T1)
STAGED = [C_OLD, B1, C1]  # C twice: the newer version must win

EXPECTED: dict[str, tuple[list[tuple[Any, ...]], list[int], list[int]]] = {
    # mode: (rows after the load and after its retry, counts of the load, counts of the retry)
    "overwrite_existing": ([A0, B1, C1], [1, 2], [2, 2]),
    "keep_existing": ([A0, B0, C1], [1], [0]),
    "truncate": ([B1, C1], [2, 2], [2, 2]),
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_idempotent_modes_load_exactly_and_never_duplicate_on_retry(warehouse: Warehouse, mode: str) -> None:
    create(warehouse, LEDGER)
    _seed(warehouse, [A0, B0])
    expected_rows, first_counts, retry_counts = EXPECTED[mode]

    assert load(warehouse, LEDGER, STAGED, mode, crash_before_commit=True) != []
    assert contents(warehouse, LEDGER) == sorted([A0, B0]), (
        "a load that died before commit changed the target"
    )

    assert load(warehouse, LEDGER, STAGED, mode) == first_counts
    assert contents(warehouse, LEDGER) == sorted(expected_rows)

    assert load(warehouse, LEDGER, STAGED, mode) == retry_counts
    assert contents(warehouse, LEDGER) == sorted(expected_rows)


def test_append_adds_everything_and_a_retry_appends_again(warehouse: Warehouse) -> None:
    # append has no key to match on, so the table is created without a PRIMARY KEY (Redshift does not
    # enforce one, PostgreSQL and DuckDB would reject the duplicates append is documented to produce).
    create(warehouse, LEDGER, declare_primary_key=False)
    _seed(warehouse, [A0, B0])
    assert load(warehouse, LEDGER, STAGED, "append", crash_before_commit=True) == [3]
    assert contents(warehouse, LEDGER) == sorted([A0, B0])
    assert load(warehouse, LEDGER, STAGED, "append") == [3]
    assert contents(warehouse, LEDGER) == sorted([A0, B0, *STAGED])
    assert load(warehouse, LEDGER, STAGED, "append") == [3]
    assert contents(warehouse, LEDGER) == sorted([A0, B0, *STAGED, *STAGED])


def _seed(warehouse: Warehouse, rows: list[tuple[Any, ...]]) -> None:
    """Rows already in the replica before a load."""
    warehouse.insert(qualified(warehouse.schema, LEDGER.name, warehouse.dialect), LEDGER.column_names, rows)


ODD = SourceTable(
    name='Visits "2024" ñ%',
    columns=(
        column("clinic id", "int(11)", nullable=False),
        column('Note "x"', "varchar(20)", length=20),
        column("k%é", "varchar(5)", length=5, nullable=False),
        column("updated_at", "datetime", nullable=False),
    ),
    primary_key=("clinic id", "k%é"),
)


def test_odd_names_survive_ddl_and_merge(warehouse: Warehouse) -> None:
    create(warehouse, ODD)
    rows = [(1, 'say "hi"', "ñ", T0), (2, "it's", "%s", T0)]
    assert load(warehouse, ODD, rows, "overwrite_existing") == [0, 2]
    updated = [(1, "bye", "ñ", T1)]
    assert load(warehouse, ODD, updated, "overwrite_existing") == [1, 1]
    assert contents(warehouse, ODD) == sorted([(1, "bye", "ñ", T1), (2, "it's", "%s", T0)])
    names = warehouse.query(
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = {quote_literal(warehouse.schema)} AND table_name = {quote_literal(ODD.name)} "
        "ORDER BY ordinal_position"
    )
    assert [name for (name,) in names] == ODD.column_names


def test_add_column_is_nullable_and_repeatable(warehouse: Warehouse) -> None:
    create(warehouse, LEDGER)
    _seed(warehouse, [A0])
    added = column("visit type", "enum('in','out')", nullable=False)
    for _ in range(2):  # IF NOT EXISTS: a repeated evolve is harmless
        warehouse.execute(add_column_sql(warehouse.schema, LEDGER.name, added, warehouse.dialect))
    rows = warehouse.query(
        "SELECT column_name, is_nullable FROM information_schema.columns "
        f"WHERE table_schema = {quote_literal(warehouse.schema)} AND table_name = 'ledger' "
        "AND column_name = 'visit type'"
    )
    assert rows == [("visit type", "YES")]
    wider = SourceTable(LEDGER.name, (*LEDGER.columns, added), LEDGER.primary_key)
    assert load(warehouse, wider, [(1, 1, "a1", T1, "in")], "overwrite_existing") == [1, 1]
    assert contents(warehouse, wider) == [(1, 1, "a1", T1, "in")]


def test_every_mysql_type_creates_a_replica_column(warehouse: Warehouse) -> None:
    named = [
        (SourceColumn(**{**case.column.to_dict(), "name": f"c{i}"}), case) for i, case in enumerate(CASES)
    ]
    table = SourceTable("everything", tuple(c for c, case in named if getattr(case, warehouse.dialect)))
    warehouse.execute(create_schema_sql(warehouse.schema, warehouse.dialect))
    warehouse.execute(
        create_table_sql(table, schema=warehouse.schema, target_name="everything", dialect=warehouse.dialect)
    )
    created = warehouse.query(
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = {quote_literal(warehouse.schema)} AND table_name = 'everything'"
    )
    assert sorted(name for (name,) in created) == sorted(table.column_names)


def test_every_mysql_type_has_parseable_redshift_ddl() -> None:
    columns = tuple(
        SourceColumn(**{**case.column.to_dict(), "name": f"c{i}"})
        for i, case in enumerate(CASES)
        if case.redshift
    )
    sql = create_table_sql(
        SourceTable("everything", columns), schema="s", target_name="everything", dialect="redshift"
    )
    parsed = {d.name: d.args["kind"] for d in parse_redshift(sql).find_all(exp.ColumnDef)}
    assert list(parsed) == [c.name for c in columns]
    for c in columns:
        assert parsed[c.name] == exp.DataType.build(warehouse_type(c, "redshift"), dialect="redshift"), (
            c.column_type
        )
