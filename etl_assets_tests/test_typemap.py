"""The type map: every MySQL type, its archive (Arrow/Parquet) type and its warehouse type.

Each source type comes with its extreme values. The archive tests push those values through Arrow
and a Parquet file and expect them back unchanged; the warehouse tests create the mapped column in
DuckDB (in memory) and PostgreSQL (the real local server) and read the extremes back. Redshift cannot
run here, so its types are checked against Redshift's documented ranges and byte widths instead.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, LiteralString, cast

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.sql import create_schema_sql, quote_identifier
from etl_assets.lib.typemap import (
    REDSHIFT_VARCHAR_MAX_BYTES,
    ZERO_DATE_TYPES,
    UnsupportedTypeError,
    arrow_schema,
    arrow_type,
    dictionary_columns,
    redshift_byte_limit,
    warehouse_type,
    warehouse_types,
    widening_fits,
)


def col(
    column_type: str,
    name: str = "c",
    *,
    nullable: bool = True,
    length: int | None = None,
    precision: int | None = None,
    scale: int | None = None,
) -> SourceColumn:
    """A SourceColumn as information_schema would describe `column_type`."""
    data_type = column_type.split("(")[0].split(" ")[0]
    return SourceColumn(
        name=name,
        data_type=data_type,
        column_type=column_type,
        nullable=nullable,
        char_max_length=length,
        numeric_precision=precision,
        numeric_scale=scale,
    )


@dataclass(frozen=True)
class Case:
    """A MySQL column type, its extreme values, and what each target must map it to."""

    column: SourceColumn
    values: list[Any]
    arrow: pa.DataType
    redshift: str | None  # None: no Redshift type (UnsupportedTypeError)
    postgresql: str
    duckdb: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.column.column_type[:40]


DEC_65_30 = "9" * 35 + "." + "9" * 30  # text: Decimal arithmetic would round to 28 digits
EMOJI = "\U0001f600"  # 4 bytes in UTF-8

CASES: list[Case] = [
    Case(col("tinyint(4)"), [-128, 127, 0], pa.int8(), "SMALLINT", "SMALLINT", "TINYINT"),
    Case(col("tinyint(1)"), [-128, 127, 1], pa.int8(), "SMALLINT", "SMALLINT", "TINYINT"),
    Case(col("tinyint(3) unsigned"), [0, 255], pa.uint8(), "SMALLINT", "SMALLINT", "UTINYINT"),
    Case(col("smallint(6)"), [-32768, 32767], pa.int16(), "SMALLINT", "SMALLINT", "SMALLINT"),
    Case(col("smallint(5) unsigned"), [0, 65535], pa.uint16(), "INTEGER", "INTEGER", "USMALLINT"),
    Case(col("mediumint(9)"), [-8388608, 8388607], pa.int32(), "INTEGER", "INTEGER", "INTEGER"),
    Case(col("mediumint(8) unsigned"), [0, 16777215], pa.uint32(), "INTEGER", "INTEGER", "UINTEGER"),
    Case(col("int(11)"), [-(2**31), 2**31 - 1], pa.int32(), "INTEGER", "INTEGER", "INTEGER"),
    Case(col("int(10) unsigned"), [0, 2**32 - 1], pa.uint32(), "BIGINT", "BIGINT", "UINTEGER"),
    Case(col("bigint(20)"), [-(2**63), 2**63 - 1], pa.int64(), "BIGINT", "BIGINT", "BIGINT"),
    Case(
        col("bigint(20) unsigned"), [0, 2**64 - 1], pa.uint64(), "DECIMAL(20,0)", "NUMERIC(20,0)", "UBIGINT"
    ),
    Case(
        col("decimal(10,2)", precision=10, scale=2),
        [Decimal("-99999999.99"), Decimal("99999999.99"), Decimal("0.01")],
        pa.decimal128(10, 2),
        "DECIMAL(10,2)",
        "NUMERIC(10,2)",
        "DECIMAL(10,2)",
    ),
    Case(
        col("decimal(12,4) unsigned", precision=12, scale=4),
        [Decimal("0.0000"), Decimal("99999999.9999")],
        pa.decimal128(12, 4),
        "DECIMAL(12,4)",
        "NUMERIC(12,4)",
        "DECIMAL(12,4)",
    ),
    Case(
        col("decimal(38,0)", precision=38, scale=0),
        [Decimal(-(10**38 - 1)), Decimal(10**38 - 1)],
        pa.decimal128(38, 0),
        "DECIMAL(38,0)",
        "NUMERIC(38,0)",
        "DECIMAL(38,0)",
    ),
    Case(
        col("decimal(65,30)", precision=65, scale=30),
        [Decimal("-" + DEC_65_30), Decimal(DEC_65_30), Decimal("0." + "0" * 29 + "1")],
        pa.decimal256(65, 30),
        None,
        "NUMERIC(65,30)",
        None,
    ),
    Case(
        col("float"),
        [-3.4028234663852886e38, 3.4028234663852886e38, 1.1754943508222875e-38, 0.5],
        pa.float32(),
        "REAL",
        "REAL",
        "FLOAT",
    ),
    Case(
        col("double"),
        [-1.7976931348623157e308, 1.7976931348623157e308, 2.2250738585072014e-308, 0.1],
        pa.float64(),
        "DOUBLE PRECISION",
        "DOUBLE PRECISION",
        "DOUBLE",
    ),
    Case(col("bit(1)", precision=1), [0, 1], pa.uint64(), "BIGINT", "BIGINT", "UBIGINT"),
    Case(col("bit(63)", precision=63), [0, 2**63 - 1], pa.uint64(), "BIGINT", "BIGINT", "UBIGINT"),
    Case(
        col("bit(64)", precision=64), [0, 2**64 - 1], pa.uint64(), "DECIMAL(20,0)", "NUMERIC(20,0)", "UBIGINT"
    ),
    Case(
        col("char(10)", length=10),
        ["", EMOJI * 10, "é" * 10],
        pa.string(),
        "VARCHAR(40)",
        "VARCHAR(10)",
        "VARCHAR",
    ),
    Case(col("char(0)", length=0), [""], pa.string(), "VARCHAR(4)", "VARCHAR(1)", "VARCHAR"),
    Case(
        col("varchar(255)", length=255),
        [EMOJI * 255, "a" * 255, 'it\'s "quoted" \\ ;'],
        pa.string(),
        "VARCHAR(1020)",
        "VARCHAR(255)",
        "VARCHAR",
    ),
    Case(
        col("varchar(20000)", length=20000),
        ["x" * 20000],
        pa.string(),
        "VARCHAR(65535)",
        "VARCHAR(20000)",
        "VARCHAR",
    ),
    Case(col("tinytext", length=255), ["t" * 255], pa.string(), "VARCHAR(65535)", "TEXT", "VARCHAR"),
    Case(col("text", length=65535), ["t" * 65535], pa.string(), "VARCHAR(65535)", "TEXT", "VARCHAR"),
    Case(col("mediumtext", length=16777215), ["m" * 70000], pa.string(), "VARCHAR(65535)", "TEXT", "VARCHAR"),
    Case(
        col("longtext", length=4294967295), [EMOJI * 20000], pa.string(), "VARCHAR(65535)", "TEXT", "VARCHAR"
    ),
    Case(
        col("enum('a','it''s','" + EMOJI + "')"),
        ["a", "it's", EMOJI],
        pa.string(),
        "VARCHAR(16)",
        "VARCHAR(4)",
        "VARCHAR",
    ),
    Case(
        col("enum('" + "L" * 255 + "','b')"),
        ["L" * 255, "b"],
        pa.string(),
        "VARCHAR(1020)",
        "VARCHAR(255)",
        "VARCHAR",
    ),
    Case(
        col("set('read','write','admin')"),
        ["read,write,admin", "", "admin"],
        pa.string(),
        "VARCHAR(64)",
        "VARCHAR(16)",
        "VARCHAR",
    ),
    Case(
        col("json"),
        ['{"a": [1, 2.5, null], "b": "' + EMOJI + '"}', "[]", '"text"'],
        pa.string(),
        "SUPER",
        "JSONB",
        "JSON",
    ),
    Case(
        col("binary(16)", length=16),
        [bytes(16), b"\xff" * 16],
        pa.binary(),
        "VARBYTE(16)",
        "BYTEA",
        "BLOB",
    ),
    Case(
        col("varbinary(255)", length=255),
        [b"", b"\x00\xff" * 127 + b"\x01"],
        pa.binary(),
        "VARBYTE(255)",
        "BYTEA",
        "BLOB",
    ),
    Case(col("tinyblob", length=255), [b"\x00" * 255], pa.binary(), "VARBYTE(65535)", "BYTEA", "BLOB"),
    Case(col("blob", length=65535), [b"\x01" * 65535], pa.binary(), "VARBYTE(65535)", "BYTEA", "BLOB"),
    Case(
        col("mediumblob", length=16777215),
        [b"\x02" * 70000],
        pa.binary(),
        "VARBYTE(1024000)",
        "BYTEA",
        "BLOB",
    ),
    Case(
        col("longblob", length=4294967295), [b"\x03" * 10], pa.binary(), "VARBYTE(1024000)", "BYTEA", "BLOB"
    ),
    Case(col("date"), [date(1000, 1, 1), date(9999, 12, 31)], pa.date32(), "DATE", "DATE", "DATE"),
    Case(
        col("datetime(6)"),
        [datetime(1000, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)],
        pa.timestamp("us"),
        "TIMESTAMP",
        "TIMESTAMP",
        "TIMESTAMP",
    ),
    Case(
        col("timestamp(6)"),
        [datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC)],
        pa.timestamp("us", tz="UTC"),
        "TIMESTAMPTZ",
        "TIMESTAMPTZ",
        "TIMESTAMPTZ",
    ),
    Case(
        col("time(6)"),
        [
            -timedelta(hours=838, minutes=59, seconds=59),
            timedelta(hours=838, minutes=59, seconds=59),
            timedelta(hours=12, minutes=34, seconds=56, microseconds=789012),
        ],
        pa.duration("us"),
        "INTERVAL DAY TO SECOND",
        "INTERVAL",
        "INTERVAL",
    ),
    Case(col("year(4)"), [1901, 2155, 0], pa.int16(), "SMALLINT", "SMALLINT", "SMALLINT"),
]
CASE_IDS = [case.id for case in CASES]


# ------------------------------------------------------------------------------------------ archive


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_arrow_type_holds_the_extremes(case: Case) -> None:
    assert arrow_type(case.column) == case.arrow
    assert pa.array(case.values, type=case.arrow).to_pylist() == case.values


def test_archive_schema_round_trips_every_type_through_parquet() -> None:
    columns = tuple(
        SourceColumn(**{**case.column.to_dict(), "name": f"c{i} {case.id}", "nullable": i % 2 == 0})
        for i, case in enumerate(CASES)
    )
    table = SourceTable(name="everything", columns=columns)
    schema = arrow_schema(table)
    rows = max(len(case.values) for case in CASES)
    # Odd columns are NOT NULL, so pad them by repeating their first value instead of with NULLs.
    data = {
        column.name: case.values + [None if column.nullable else case.values[0]] * (rows - len(case.values))
        for column, case in zip(columns, CASES, strict=True)
    }
    buffer = io.BytesIO()
    pq.write_table(pa.table(data, schema=schema), buffer)
    buffer.seek(0)
    restored = pq.read_table(buffer)

    assert restored.schema.equals(schema, check_metadata=True)
    assert restored.to_pydict() == data
    for column, arrow_field in zip(columns, restored.schema, strict=True):
        assert arrow_field.metadata == {b"mysql_type": column.column_type.encode()}
        # Date types stay nullable whatever the source says: zero dates are archived as NULL.
        assert arrow_field.nullable is (column.nullable or column.data_type in ZERO_DATE_TYPES)


@pytest.mark.parametrize("column_type", ["geometry", "point", "uuid", "inet6", "vector(3)"])
def test_unknown_types_are_refused_naming_column_type_and_fix(column_type: str) -> None:
    column = col(column_type, name="location")
    with pytest.raises(
        UnsupportedTypeError, match=r"'location'.*" + column_type.split("(")[0] + r".*exclude"
    ):
        arrow_type(column)
    with pytest.raises(UnsupportedTypeError, match=r"'location'.*column_types.*exclude"):
        warehouse_type(column, "redshift")
    table = SourceTable(name="clinics", columns=(col("int(11)", "id"), column))
    with pytest.raises(UnsupportedTypeError, match=r"table 'clinics'.*'location'"):
        arrow_schema(table)
    assert issubclass(UnsupportedTypeError, ValueError)


# ---------------------------------------------------------------------------------------- warehouse


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dialect", ["redshift", "postgresql", "duckdb"])
def test_warehouse_type(case: Case, dialect: str) -> None:
    expected = getattr(case, dialect)
    if expected is None:
        with pytest.raises(UnsupportedTypeError):
            warehouse_type(case.column, dialect)  # type: ignore[arg-type]
    else:
        assert warehouse_type(case.column, dialect) == expected  # type: ignore[arg-type]


# Redshift's documented ranges (numeric types page), used independently of the code under test.
REDSHIFT_RANGES = {
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "DECIMAL(20,0)": (-(10**20 - 1), 10**20 - 1),
    "DECIMAL(38,0)": (-(10**38 - 1), 10**38 - 1),
}


@pytest.mark.parametrize("case", [c for c in CASES if c.redshift in REDSHIFT_RANGES], ids=lambda c: c.id)
def test_redshift_integer_types_hold_the_source_extremes(case: Case) -> None:
    assert case.redshift is not None
    low, high = REDSHIFT_RANGES[case.redshift]
    assert all(low <= value <= high for value in case.values)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.column.data_type in ("char", "varchar", "enum", "set", "tinytext", "text")],
    ids=lambda c: c.id,
)
def test_redshift_varchar_bytes_hold_the_longest_utf8mb4_value(case: Case) -> None:
    limit = redshift_byte_limit(case.column)
    assert limit is not None and limit <= REDSHIFT_VARCHAR_MAX_BYTES
    declared = case.column.char_max_length
    if declared is not None and declared * 4 > REDSHIFT_VARCHAR_MAX_BYTES:
        assert limit == REDSHIFT_VARCHAR_MAX_BYTES  # capped; the loader handles longer values
    else:
        for value in case.values:
            assert len(value.encode("utf-8")) <= limit, value[:20]
        if declared:  # the worst case: every character a 4-byte one
            assert len((EMOJI * declared).encode("utf-8")) <= limit


@pytest.mark.parametrize(
    ("column", "limit"),
    [
        (col("varchar(255)", length=255), 1020),
        (col("varchar(20000)", length=20000), 65535),
        (col("text", length=65535), 65535),
        (col("enum('x','yy')"), 8),
        (col("varbinary(100)", length=100), 100),
        (col("longblob", length=4294967295), 1024000),
        (col("int(11)"), None),
        (col("json"), None),
        (col("datetime"), None),
    ],
    ids=lambda v: v.column_type if isinstance(v, SourceColumn) else str(v),
)
def test_redshift_byte_limit(column: SourceColumn, limit: int | None) -> None:
    assert redshift_byte_limit(column) == limit


def test_redshift_byte_limit_follows_an_override() -> None:
    assert redshift_byte_limit(col("text"), override="VARCHAR(512)") == 512
    assert redshift_byte_limit(col("varchar(10)", length=10), override="BIGINT") is None


def test_tinyint1_is_smallint_unless_configured_boolean() -> None:
    flag = col("tinyint(1)", "is_active")
    assert warehouse_type(flag, "redshift") == "SMALLINT"
    for dialect in ("redshift", "postgresql", "duckdb"):
        assert warehouse_type(flag, dialect, boolean=True) == "BOOLEAN"


def test_boolean_is_refused_on_a_non_tinyint_column() -> None:
    with pytest.raises(ValueError, match=r"boolean_columns.*'name'.*varchar\(10\).*TINYINT"):
        warehouse_type(col("varchar(10)", "name", length=10), "redshift", boolean=True)


@pytest.mark.parametrize(("dialect", "limit"), [("redshift", 38), ("duckdb", 38)])
def test_decimal_wider_than_38_is_refused_with_the_fix(dialect: str, limit: int) -> None:
    amount = col("decimal(65,30)", "amount", precision=65, scale=30)
    with pytest.raises(UnsupportedTypeError) as error:
        warehouse_type(amount, dialect)  # type: ignore[arg-type]
    message = str(error.value)
    assert "'amount'" in message and "decimal(65,30)" in message and f"at most {limit} digits" in message
    assert "column_types" in message and f"DECIMAL({limit}," in message and "VARCHAR(67)" in message
    # The suggested DECIMAL keeps all 35 integer digits.
    assert f"DECIMAL({limit},3)" in message
    # ... and the suggested override is then used as is.
    assert warehouse_type(amount, dialect, override="DECIMAL(38,10)") == "DECIMAL(38,10)"  # type: ignore[arg-type]


def test_override_wins_over_the_map() -> None:
    assert warehouse_type(col("json"), "redshift", override=" VARCHAR(65535) ") == "VARCHAR(65535)"
    assert warehouse_type(col("tinyint(1)"), "postgresql", boolean=True, override="SMALLINT") == "SMALLINT"


def test_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match=r"snowflake.*redshift, postgresql, duckdb"):
        warehouse_type(col("int(11)"), "snowflake")  # type: ignore[arg-type]


def test_warehouse_types_applies_table_settings_and_names_unknown_columns() -> None:
    table = SourceTable(
        name="visits",
        columns=(
            col("int(11)", "id"),
            col("tinyint(1)", "paid"),
            col("decimal(65,30)", "amount", precision=65, scale=30),
        ),
    )
    types = warehouse_types(
        table, "redshift", boolean_columns=["paid"], column_types={"amount": "DECIMAL(38,3)"}
    )
    assert types == {"id": "INTEGER", "paid": "BOOLEAN", "amount": "DECIMAL(38,3)"}
    with pytest.raises(ValueError, match=r"boolean_columns of table 'visits'.*'payed'.*id, paid, amount"):
        warehouse_types(
            table, "redshift", boolean_columns=["payed"], column_types={"amount": "DECIMAL(38,3)"}
        )
    with pytest.raises(UnsupportedTypeError, match=r"table 'visits': column 'amount'"):
        warehouse_types(table, "redshift")


# ----------------------------------------------------------------------------------------- widening


@pytest.mark.parametrize(
    ("old", "new", "dialect", "fits"),
    [
        (col("varchar(255)", length=255), col("varchar(300)", length=300), "redshift", False),
        (col("varchar(100)", length=100), col("varchar(200)", length=200), "redshift", False),
        (col("varchar(300)", length=300), col("varchar(255)", length=255), "redshift", True),
        (col("varchar(20000)", length=20000), col("varchar(30000)", length=30000), "redshift", True),
        (col("varchar(100)", length=100), col("varchar(200)", length=200), "postgresql", False),
        (col("varchar(100)", length=100), col("varchar(200)", length=200), "duckdb", True),
        (col("varchar(100)", length=100), col("text"), "redshift", False),
        (col("text"), col("mediumtext"), "redshift", True),
        (col("text"), col("varchar(16383)", length=16383), "redshift", True),
        (col("text"), col("varchar(65535)", length=65535), "postgresql", True),
        (col("enum('a','b')"), col("enum('a','b','c')"), "redshift", True),
        (col("enum('a','b')"), col("enum('a','b','long')"), "redshift", False),
        (col("int(11)"), col("bigint(20)"), "redshift", False),
        (col("int(10) unsigned"), col("bigint(20)"), "redshift", True),
        (col("int(11)"), col("mediumint(8) unsigned"), "redshift", True),
        (col("int(11)"), col("int(10) unsigned"), "redshift", False),
        (col("bigint(20)"), col("bigint(20) unsigned"), "redshift", False),
        (col("bigint(20) unsigned"), col("bigint(20)"), "redshift", True),  # DECIMAL(20,0) holds BIGINT
        (col("bigint(20) unsigned"), col("int(11)"), "redshift", True),
        (col("bigint(20)"), col("bigint(20) unsigned"), "duckdb", False),
        (col("int(10) unsigned"), col("smallint(6)"), "duckdb", False),
        (col("int(10) unsigned"), col("smallint(5) unsigned"), "duckdb", True),
        (
            col("decimal(10,2)", precision=10, scale=2),
            col("decimal(12,2)", precision=12, scale=2),
            "redshift",
            False,
        ),
        (
            col("decimal(12,2)", precision=12, scale=2),
            col("decimal(10,2)", precision=10, scale=2),
            "redshift",
            True,
        ),
        (
            col("decimal(12,2)", precision=12, scale=2),
            col("decimal(11,3)", precision=11, scale=3),
            "redshift",
            False,
        ),
        (col("decimal(20,0)", precision=20, scale=0), col("bigint(20)"), "redshift", True),
        (
            col("decimal(30,2)", precision=30, scale=2),
            col("decimal(65,30)", precision=65, scale=30),
            "redshift",
            False,
        ),
        (col("float"), col("double"), "redshift", False),
        (col("double"), col("float"), "redshift", True),
        (col("double"), col("bigint(20)"), "redshift", False),
        (col("varbinary(10)", length=10), col("varbinary(20)", length=20), "redshift", False),
        (col("blob"), col("varbinary(100)", length=100), "postgresql", True),
        (col("datetime"), col("timestamp"), "redshift", False),
        (col("timestamp"), col("datetime"), "redshift", False),
        (col("json"), col("json"), "redshift", True),
        (col("varchar(10)", length=10), col("int(11)"), "redshift", False),
        (col("int(11)"), col("geometry"), "redshift", False),
    ],
    ids=lambda v: v.column_type if isinstance(v, SourceColumn) else str(v),
)
def test_widening_fits(old: SourceColumn, new: SourceColumn, dialect: str, fits: bool) -> None:
    assert widening_fits(old, new, dialect) is fits  # type: ignore[arg-type]


def test_widening_with_an_override_or_boolean_maps_both_sides_alike() -> None:
    old, new = col("varchar(10)", length=10), col("varchar(5000)", length=5000)
    assert widening_fits(old, new, "redshift") is False
    assert widening_fits(old, new, "redshift", override="VARCHAR(65535)") is True
    assert widening_fits(col("tinyint(1)"), col("tinyint(4)"), "redshift", boolean=True) is True


# ------------------------------------------- the mapped columns really hold the extremes (executed)


def _warehouse_cases(dialect: str) -> list[Case]:
    return [case for case in CASES if getattr(case, dialect) is not None]


def _round_trip(case: Case, readback: list[Any]) -> None:
    """Values read back from a warehouse equal the source values (up to the driver's Python type)."""
    if case.column.data_type == "json":  # JSONB/JSON may re-space the text; compare the documents
        readback = [json.loads(v) if isinstance(v, str) else v for v in readback]
        assert readback == [json.loads(v) for v in case.values]
        return
    readback = [bytes(v) if isinstance(v, memoryview) else v for v in readback]
    if case.column.data_type == "float":  # drivers print FLOAT/REAL in short form: compare as float32
        assert [_float32(v) for v in readback] == [_float32(v) for v in case.values]
        return
    assert readback == case.values


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def test_duckdb_columns_hold_the_source_extremes() -> None:
    connection = duckdb.connect()
    for index, case in enumerate(_warehouse_cases("duckdb")):
        sql_type = warehouse_type(case.column, "duckdb")
        connection.execute(f'CREATE TABLE "t{index}" ("n" INTEGER, "v" {sql_type})')
        connection.executemany(f'INSERT INTO "t{index}" VALUES (?, ?)', list(enumerate(case.values)))
        readback = [
            row[0] for row in connection.execute(f'SELECT "v" FROM "t{index}" ORDER BY "n"').fetchall()
        ]
        _round_trip(case, readback)


def dynamic(sql: str) -> LiteralString:
    """Generated SQL is dynamic by design; psycopg's annotations ask for literal strings."""
    return cast("LiteralString", sql)


@pytest.fixture
def pg(pg_server_url: str, pg_schema: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection whose search_path is a fresh schema (dropped afterwards)."""
    url = sa.make_url(pg_server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(dynamic(create_schema_sql(pg_schema, "postgresql")))
        connection.execute(dynamic(f"SET search_path TO {quote_identifier(pg_schema, 'postgresql')}"))
        yield connection


@pytest.mark.integration
def test_postgresql_columns_hold_the_source_extremes(pg: psycopg.Connection[Any]) -> None:
    for index, case in enumerate(_warehouse_cases("postgresql")):
        sql_type = warehouse_type(case.column, "postgresql")
        pg.execute(dynamic(f'CREATE TABLE "t{index}" ("n" INTEGER, "v" {sql_type})'))
        with pg.cursor() as cursor:
            cursor.executemany(
                dynamic(f'INSERT INTO "t{index}" VALUES (%s, %s)'),
                [(n, v) for n, v in enumerate(case.values)],
            )
            # psycopg decodes JSONB into Python objects; read it as text like every other driver.
            value = '"v"::text' if case.column.is_json else '"v"'
            cursor.execute(dynamic(f'SELECT {value} FROM "t{index}" ORDER BY "n"'))
            _round_trip(case, [row[0] for row in cursor.fetchall()])


def test_dictionary_encoding_only_for_columns_of_few_values() -> None:
    schema = pa.schema(
        [
            pa.field(name, pa.string(), metadata={b"mysql_type": mysql_type.encode()})
            for name, mysql_type in [
                ("id", "bigint(20) unsigned"),
                ("status", "enum('a','b')"),
                ("flags", "set('x','y')"),
                ("is_paid", "tinyint(1)"),
                ("born", "year(4)"),
                ("bits", "bit(3)"),
                ("notes", "varchar(255)"),
                ("at", "datetime"),
            ]
        ]
        + [pa.field("no_metadata", pa.string())]
    )
    assert dictionary_columns(schema) == ["status", "flags", "is_paid", "born", "bits"]
