"""Every MySQL type, with its edge values, replicated MariaDB -> PostgreSQL and compared exactly.

One table holds a column of each type; rows hold the extremes (unsigned maxima, DECIMAL(38,10) and
DECIMAL(65,30) at full width, 4-byte UTF-8 at the length limit, NUL bytes, a 255-character ENUM
label, TIME's -838:59:59, zero dates, ...). The `replica/alltypes` asset loads them through Dagster,
and each replica value is compared with the value PyMySQL reads from the source, after the
documented conversions only: unsigned and BIT -> wider integer or NUMERIC, TIME -> interval,
TIMESTAMP -> timestamptz (the same instant), JSON -> jsonb (compared parsed), zero dates -> NULL
(counted in the metadata as `zero_dates_nulled`), FLOAT compared as the float32 it is.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_assets.definitions import build_definitions
from etl_assets_tests.support import config_for, materialization_metadata

pytestmark = pytest.mark.integration

EMOJI = "\U0001f600"  # 4 bytes in UTF-8
LONG_LABEL = "L" * 254 + EMOJI  # 255 characters, the ENUM label maximum
JSON_DOC = '{"a": [1, 2.5, "é😀"], "b": null, "big": 123456789012345678901234567890, "nested": {"x": true}}'
DAY = datetime(2024, 1, 1)

# Column -> (MySQL type, PostgreSQL type the replica must get).
COLUMNS: dict[str, tuple[str, str]] = {
    "ti": ("TINYINT", "smallint"),
    "ti_u": ("TINYINT UNSIGNED", "smallint"),
    "flag": ("TINYINT(1)", "smallint"),
    "si": ("SMALLINT", "smallint"),
    "si_u": ("SMALLINT UNSIGNED", "integer"),
    "mi": ("MEDIUMINT", "integer"),
    "mi_u": ("MEDIUMINT UNSIGNED", "integer"),
    "i": ("INT", "integer"),
    "i_u": ("INT UNSIGNED", "bigint"),
    "bi": ("BIGINT", "bigint"),
    "bi_u": ("BIGINT UNSIGNED", "numeric(20,0)"),
    "d38": ("DECIMAL(38,10)", "numeric(38,10)"),
    "d12": ("DECIMAL(12,2)", "numeric(12,2)"),
    "d65": ("DECIMAL(65,30)", "numeric(65,30)"),
    "f": ("FLOAT", "real"),
    "dbl": ("DOUBLE", "double precision"),
    "b1": ("BIT(1)", "bigint"),
    "b64": ("BIT(64)", "numeric(20,0)"),
    "c10": ("CHAR(10)", "character varying(10)"),
    "vc": ("VARCHAR(255)", "character varying(255)"),
    "tt": ("TINYTEXT", "text"),
    "tx": ("TEXT", "text"),
    "mt": ("MEDIUMTEXT", "text"),
    "lt": ("LONGTEXT", "text"),
    "bn": ("BINARY(4)", "bytea"),
    "vb": ("VARBINARY(16)", "bytea"),
    "tb": ("TINYBLOB", "bytea"),
    "bl": ("BLOB", "bytea"),
    "mb": ("MEDIUMBLOB", "bytea"),
    "lb": ("LONGBLOB", "bytea"),
    "en": (f"ENUM('a', '{LONG_LABEL}', 'it''s')", "character varying(255)"),
    "st": ("SET('x', 'y', 'z')", "character varying(5)"),
    "js": ("JSON", "jsonb"),
    "dt": ("DATE", "date"),
    "dtm": ("DATETIME(6)", "timestamp without time zone"),
    "ts": ("TIMESTAMP(6) NULL", "timestamp with time zone"),
    "tm": ("TIME(6)", "interval"),
    "yr": ("YEAR", "smallint"),
    # Legacy style: NOT NULL with a zero default. Zero dates become NULL, so the replica column is nullable.
    "legacy": ("DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00'", "timestamp without time zone"),
}

ALL_BYTES = bytes(range(256))
MAX_ROW: dict[str, Any] = {
    "ti": 127, "ti_u": 255, "flag": 127, "si": 32767, "si_u": 65535, "mi": 8388607, "mi_u": 16777215,
    "i": 2147483647, "i_u": 4294967295, "bi": 9223372036854775807, "bi_u": 18446744073709551615,
    "d38": Decimal("9999999999999999999999999999.9999999999"), "d12": Decimal("9999999999.99"),
    "d65": Decimal("99999999999999999999999999999999999.999999999999999999999999999999"),
    "f": 3.40282e38, "dbl": 1.7976931348623157e308, "b1": 1, "b64": 2**64 - 1,
    "c10": EMOJI * 10, "vc": EMOJI * 255, "tt": EMOJI * 63 + "abc", "tx": EMOJI * 16383 + "abc",
    "mt": "m" * 70_000 + EMOJI, "lt": "line1\nline2\r\n\"quoted\", comma\\backslash\t" + EMOJI,
    "bn": b"\xff\x00\xff\x00", "vb": b"\x00" * 16, "tb": b"\x00" * 255, "bl": ALL_BYTES * 255 + ALL_BYTES[:255],
    "mb": ALL_BYTES * 300, "lb": b"\x00\x01,\"\n\\",
    "en": LONG_LABEL, "st": "x,y,z", "js": JSON_DOC,
    "dt": date(9999, 12, 31), "dtm": datetime(9999, 12, 31, 23, 59, 59, 999999),
    "ts": datetime(2038, 1, 19, 3, 14, 7, 999999), "tm": "838:59:59", "yr": 2155,
    "legacy": datetime(2024, 2, 29, 12, 0, 0),
}  # fmt: skip
MIN_ROW: dict[str, Any] = {
    "ti": -128, "ti_u": 0, "flag": -128, "si": -32768, "si_u": 0, "mi": -8388608, "mi_u": 0,
    "i": -2147483648, "i_u": 0, "bi": -9223372036854775808, "bi_u": 0,
    "d38": Decimal("-9999999999999999999999999999.9999999999"), "d12": Decimal("-9999999999.99"),
    "d65": Decimal("-99999999999999999999999999999999999.999999999999999999999999999999"),
    "f": -1.17549e-38, "dbl": -2.2250738585072014e-308, "b1": 0, "b64": 2**63,
    "c10": "", "vc": "", "tt": "", "tx": "", "mt": "", "lt": "", "bn": b"\x00\x00\x00\x00", "vb": b"",
    "tb": b"", "bl": b"", "mb": b"", "lb": b"",
    "en": "it's", "st": "", "js": '"just a string"',
    "dt": date(1000, 1, 1), "dtm": datetime(1000, 1, 1, 0, 0, 0), "ts": datetime(1970, 1, 1, 0, 0, 1),
    "tm": "-838:59:59", "yr": 1901, "legacy": datetime(1000, 1, 1),
}  # fmt: skip
MIXED_ROW: dict[str, Any] = {
    "ti": 0, "ti_u": 1, "flag": 1, "si": -1, "si_u": 1, "mi": 0, "mi_u": 1, "i": 0, "i_u": 2147483648,
    "bi": 0, "bi_u": 9223372036854775808, "d38": Decimal("0.0000000001"), "d12": Decimal("0.01"),
    "d65": Decimal("0.000000000000000000000000000001"), "f": 0.1, "dbl": 0.1, "b1": 1, "b64": 1,
    "c10": "é", "vc": "NULL", "tt": "\\N", "tx": "x\n\\.\ny", "mt": " ", "lt": "0",
    "bn": b"\x01\x02\x03\x04", "vb": b"\x5c\x78", "tb": b"\\x00", "bl": b"\x00", "mb": b"\x00", "lb": b"",
    "en": "a", "st": "z", "js": "[]", "dt": date(2024, 2, 29), "dtm": datetime(2024, 1, 1, 0, 0, 0, 1),
    "ts": datetime(2024, 6, 30, 23, 59, 59, 500000), "tm": "-00:00:00.000001", "yr": 0,
    "legacy": datetime(2024, 1, 1),
}  # fmt: skip
# Zero dates are inserted as text with sql_mode=''; each one becomes NULL in the replica.
ZERO_ROW: dict[str, Any] = {
    **dict.fromkeys(COLUMNS),
    "dt": "0000-00-00", "dtm": "0000-00-00 00:00:00", "ts": "0000-00-00 00:00:00", "legacy": "2024-00-12 00:00:00",
    "js": "null", "en": None, "st": None,
}  # fmt: skip
ZERO_DATES = 4
ROWS = {1: MAX_ROW, 2: MIN_ROW, 3: MIXED_ROW, 4: ZERO_ROW}


def _create_and_fill(url: str) -> None:
    columns = ",\n".join(f"  `{name}` {sql_type}" for name, (sql_type, _) in COLUMNS.items())
    names = ["id", *COLUMNS, "updated_at"]
    insert = sa.text(
        f"INSERT INTO alltypes ({', '.join(names)}) VALUES ({', '.join(f':{n}' for n in names)})"
    )
    engine = sa.create_engine(url, connect_args={"init_command": "SET time_zone = '+00:00'"})
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE alltypes (\n  id INT NOT NULL PRIMARY KEY,\n{columns},\n"
            "  updated_at DATETIME(6) NOT NULL\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        for key, row in ROWS.items():
            # Strict mode for the edge values, so none is silently clipped; only the zero dates need ''.
            mode = "" if row is ZERO_ROW else "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE"
            conn.exec_driver_sql(f"SET SESSION sql_mode = '{mode}'")
            conn.execute(insert, {"id": key, **row, "updated_at": DAY + timedelta(hours=key)})
    engine.dispose()


def _read(url: str, query: str, **kwargs: Any) -> dict[int, dict[str, Any]]:
    engine = sa.create_engine(url, **kwargs)
    with engine.connect() as conn:
        result = conn.exec_driver_sql(query)
        names = list(result.keys())
        rows = {int(r[0]): dict(zip(names, r, strict=True)) for r in result}
    engine.dispose()
    return rows


def _expected(column: str, value: Any) -> Any:
    """The source value as PyMySQL returned it, after the replica's documented conversion."""
    if value is None:
        return None
    if column in ("dt", "dtm", "ts", "legacy") and isinstance(value, str):
        return None  # a zero date: NULL in the replica
    if column in ("b1", "b64"):
        return int.from_bytes(value, "big")
    if column == "js":
        return json.loads(value)
    if column == "f":
        return _float32(value)
    if column == "ts":
        return value.replace(tzinfo=UTC)
    return value


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _actual(column: str, value: Any) -> Any:
    """The replica value as psycopg returned it, in the source's terms."""
    if column == "ts" and value is not None:
        return value.astimezone(UTC)
    if column == "f" and value is not None:
        return _float32(value)  # psycopg parses REAL's shortest text as a double
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def test_every_mysql_type_round_trips_into_postgresql_exactly(
    mysql_url: str, pg_server_url: str, pg_schema: str, tmp_path: Path
) -> None:
    _create_and_fill(mysql_url)
    config = config_for(
        source_url=mysql_url,
        warehouse_url=pg_server_url,
        warehouse_schema=pg_schema,
        tables="  - name: alltypes\n    replica: {start: 2024-01-01}\n",
        path=str(tmp_path / "etl_assets.yaml"),
    )
    key = dg.AssetKey(["replica", "alltypes"])
    job = build_definitions(config).resolve_implicit_job_def_def_for_assets([key])
    assert job is not None
    result = job.execute_in_process(
        asset_selection=[key],
        partition_key="2024-01-01",
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, result.get_step_failure_events()
    metadata = materialization_metadata(result, "replica/alltypes")
    assert metadata["rows_loaded"].value == len(ROWS) == metadata["dagster/row_count"].value
    assert metadata["zero_dates_nulled"].value == ZERO_DATES
    column_types = {c.name: c.type for c in metadata["dagster/column_schema"].value.columns}
    assert column_types == {"id": "integer", **{n: t for n, (_, t) in COLUMNS.items()},
                            "updated_at": "timestamp without time zone"}  # fmt: skip

    source = _read(
        mysql_url,
        "SELECT * FROM alltypes ORDER BY id",
        connect_args={"init_command": "SET time_zone = '+00:00'", "charset": "utf8mb4"},
    )
    replica = _read(pg_server_url, f'SELECT * FROM "{pg_schema}"."alltypes" ORDER BY id')
    assert sorted(replica) == sorted(source) == sorted(ROWS)
    mismatches = [
        f"row {key} column {column}: source {source[key][column]!r:.80} -> expected "
        f"{_expected(column, source[key][column])!r:.80}, replica {replica[key][column]!r:.80}"
        for key in ROWS
        for column in ["id", *COLUMNS, "updated_at"]
        if not _same(_expected(column, source[key][column]), _actual(column, replica[key][column]))
    ]
    assert not mismatches, "\n".join(mismatches)

    # The source really holds the edges (so the comparison above is not between two clipped copies).
    assert source[1]["bi_u"] == 2**64 - 1 and source[1]["b64"] == b"\xff" * 8
    assert str(source[1]["d65"]) == str(MAX_ROW["d65"]) and str(source[2]["d38"]) == str(MIN_ROW["d38"])
    assert len(source[1]["tx"].encode()) == 65535 and len(source[1]["tt"].encode()) == 255
    assert source[1]["vc"] == EMOJI * 255 and source[1]["en"] == LONG_LABEL and len(source[1]["bl"]) == 65535
    assert source[2]["tm"] == -timedelta(hours=838, minutes=59, seconds=59)
    assert [source[4][c] for c in ("dt", "dtm", "ts", "legacy")] == [
        "0000-00-00", "0000-00-00 00:00:00.000000", "0000-00-00 00:00:00.000000", "2024-00-12 00:00:00"
    ]  # fmt: skip


def _same(expected: Any, actual: Any) -> bool:
    """Equal, and of the same kind: DECIMALs to the same digits, bytes as bytes, dates as dates."""
    if isinstance(expected, int | Decimal) and not isinstance(expected, bool):
        return (
            isinstance(actual, int | Decimal)
            and expected == actual
            and (not isinstance(expected, Decimal) or str(expected) == str(actual))
        )
    return type(expected) is type(actual) and expected == actual
