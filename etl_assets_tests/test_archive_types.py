"""Every MySQL type, at its edges, survives archive -> Parquet -> restore exactly (design.md §5).

One MariaDB table holds one column per type (signed/unsigned integer extremes, DECIMAL(65,30) with
35 integer digits, BIT(64) all ones, 4-byte UTF-8 at the declared length, a ~1 MB LONGTEXT, bytes
with NUL, ENUM/SET labels with a quote, MariaDB JSON, DATE/DATETIME/TIMESTAMP/TIME/YEAR extremes,
a `tinyint(1)` holding 5) and a row of NULLs. The test archives the partition, reads the committed
Parquet back through the store and compares every value with the Python value it must be, then
restores the partition and compares the MariaDB rows with the rows read before archiving.

Zero dates (`0000-00-00`) cannot exist in Parquet: they become NULL, are counted in
`ArchiveReport.zero_dates_nulled`, and so come back from a restore as NULL.

FLOAT needs care: MariaDB sends it as text with 6 significant digits, so the extract selects it as
`col + 0E0`; `test_float_keeps_every_bit` pins that.
"""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveJob, ArchiveReport, restore_partition
from etl_assets.lib.convert import RowsToArrow
from etl_assets.lib.layout import is_queryable
from etl_assets.lib.schema import SourceColumn
from etl_assets.lib.typemap import arrow_type
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets_tests.support import committed, config_for

pytestmark = pytest.mark.integration

TABLE = "alltypes"
JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
TABLES = """
  - name: alltypes
    archive: {retention: 1 year, batch_size: 2, part_rows: 1000, chunk_rows: 100, max_threads_running: 500}
"""

DDL = """
CREATE TABLE `alltypes` (
  `id` BIGINT UNSIGNED NOT NULL,
  `updated_at` DATETIME(6) NOT NULL,
  `ti` TINYINT NULL, `ti_u` TINYINT UNSIGNED NULL,
  `si` SMALLINT NULL, `si_u` SMALLINT UNSIGNED NULL,
  `mi` MEDIUMINT NULL, `mi_u` MEDIUMINT UNSIGNED NULL,
  `i` INT NULL, `i_u` INT UNSIGNED NULL,
  `bi` BIGINT NULL, `bi_u` BIGINT UNSIGNED NULL,
  `flag` TINYINT(1) NULL,
  `dec65` DECIMAL(65,30) NULL, `dec38` DECIMAL(38,10) NULL, `dec12` DECIMAL(12,2) NULL,
  `f` FLOAT NULL, `d` DOUBLE NULL,
  `bit1` BIT(1) NULL, `bit64` BIT(64) NULL,
  `ch` CHAR(10) NULL, `vc` VARCHAR(100) NULL,
  `tt` TINYTEXT NULL, `tx` TEXT NULL, `mt` MEDIUMTEXT NULL, `lt` LONGTEXT NULL,
  `bn` BINARY(8) NULL, `vb` VARBINARY(64) NULL,
  `tb` TINYBLOB NULL, `bl` BLOB NULL, `mb` MEDIUMBLOB NULL, `lb` LONGBLOB NULL,
  `en` ENUM('scheduled','it''s','z') NULL, `st` SET('a','it''s','say "hi"') NULL,
  `js` JSON NULL,
  `dt` DATE NULL, `dtm` DATETIME(6) NULL, `dt0` DATETIME NULL,
  `ts` TIMESTAMP(6) NULL DEFAULT NULL,
  `tm` TIME(6) NULL, `yr` YEAR NULL,
  PRIMARY KEY (`id`),
  KEY `idx_updated_at` (`updated_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""

EMOJI = "\U0001f600"  # 4 bytes in UTF-8
BIG_TEXT = ("Ünïcødé 😀 line\n" * 70_000)[:1_048_576]  # 1 Mi characters, ~1.5 MB of UTF-8
ALL_BYTES = bytes(range(256))
# Built from text: arithmetic (even unary minus) would round them to the context's 28 digits.
MAX_DEC65, MIN_DEC65 = Decimal("9" * 35 + "." + "9" * 30), Decimal("-" + "9" * 35 + "." + "9" * 30)
MAX_DEC38, MIN_DEC38 = Decimal("9" * 28 + "." + "9" * 10), Decimal("-" + "9" * 28 + "." + "9" * 10)


def f32(value: float) -> float:
    """The value a MySQL FLOAT (IEEE single) column stores for `value`."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def td(text: str) -> timedelta:
    """A MySQL TIME literal ('-838:59:59.000000') as the timedelta it means."""
    negative = text.startswith("-")
    hours, minutes, seconds = text.lstrip("-").split(":")
    value = timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds))
    return -value if negative else value


# Rows inserted with strict sql_mode through a session whose time_zone is +05:00 (TIMESTAMP literals
# are local to that session; the archive must hold the UTC instant).
ROW_MAX: dict[str, Any] = {
    "id": 1, "updated_at": datetime(2023, 1, 1, 0, 0, 0),  # the window's first instant
    "ti": 127, "ti_u": 255, "si": 32767, "si_u": 65535, "mi": 8388607, "mi_u": 16777215,
    "i": 2147483647, "i_u": 4294967295, "bi": 9223372036854775807, "bi_u": 18446744073709551615,
    "flag": 5,
    "dec65": MAX_DEC65, "dec38": MAX_DEC38, "dec12": Decimal("9999999999.99"),
    "f": 3.4028234663852886e38, "d": 1.7976931348623157e308,
    "bit1": 1, "bit64": 2**64 - 1,
    "ch": EMOJI * 10, "vc": EMOJI * 100,
    "tt": EMOJI * 63 + "abc", "tx": "tëxt " * 1000, "mt": "médium\t" * 5000, "lt": BIG_TEXT,
    "bn": b"\x00\xff\x00\x01\x02\x03\x04\x05", "vb": b"\x00" + ALL_BYTES[:62] + b"\x00",
    "tb": b"\x00\xfe\xff\x80", "bl": ALL_BYTES * 4, "mb": ALL_BYTES * 1000, "lb": b"\x00" * 7 + ALL_BYTES,
    "en": "it's", "st": 'a,it\'s,say "hi"',
    "js": '{"k": [1, 2.5, "\\u00e9\\ud83d\\ude00", null, true], "nested": {"a": "it\'s"}}',
    "dt": date(9999, 12, 31), "dtm": datetime(9999, 12, 31, 23, 59, 59, 999999), "dt0": datetime(2023, 1, 2, 3, 4, 5),
    "ts": "2038-01-19 08:14:07.999999",  # +05:00 local = 2038-01-19 03:14:07.999999 UTC (TIMESTAMP max)
    "tm": "838:59:59", "yr": 2155,
}  # fmt: skip
ROW_MIN: dict[str, Any] = {
    "id": 2, "updated_at": datetime(2023, 1, 31, 23, 59, 59, 999999),  # the window's last microsecond
    "ti": -128, "ti_u": 0, "si": -32768, "si_u": 0, "mi": -8388608, "mi_u": 0,
    "i": -2147483648, "i_u": 0, "bi": -9223372036854775808, "bi_u": 0,
    "flag": -128,
    "dec65": MIN_DEC65, "dec38": MIN_DEC38, "dec12": Decimal("-9999999999.99"),
    "f": -1.17549435e-38, "d": -2.2250738585072014e-308,
    "bit1": 0, "bit64": 0,
    "ch": "", "vc": "",
    "tt": "", "tx": "", "mt": "", "lt": "",
    "bn": b"", "vb": b"", "tb": b"", "bl": b"", "mb": b"", "lb": b"",
    "en": "scheduled", "st": "",
    "js": "[]",
    "dt": date(1000, 1, 1), "dtm": datetime(1000, 1, 1, 0, 0, 0, 0), "dt0": datetime(1000, 1, 1),
    "ts": "1970-01-01 05:00:01",  # +05:00 local = 1970-01-01 00:00:01 UTC (TIMESTAMP min)
    "tm": "-838:59:59.000000", "yr": 1901,
}  # fmt: skip
ROW_TYPICAL: dict[str, Any] = {
    "id": 3, "updated_at": datetime(2023, 1, 15, 12, 30, 0, 123456),
    "ti": 1, "ti_u": 1, "si": -2, "si_u": 2, "mi": 3, "mi_u": 4, "i": -5, "i_u": 6, "bi": -7, "bi_u": 9223372036854775808,
    "flag": 1,
    "dec65": Decimal("-0.000000000000000000000000000001"), "dec38": Decimal("0.0000000001"), "dec12": Decimal("0.01"),
    "f": 1.0000001, "d": 0.1 + 0.2,
    "bit1": 1, "bit64": 0x8000000000000001,
    "ch": "a  b", "vc": "trailing space ", "tt": "x", "tx": "y", "mt": "z", "lt": '{"not": "json"}',
    "bn": b"ab", "vb": b"\xff", "tb": b"\x00", "bl": b"\x00\x00", "mb": b"m", "lb": b"l",
    "en": "z", "st": 'say "hi"',
    "js": '"just a string"',
    "dt": date(2024, 2, 29), "dtm": datetime(2023, 1, 15, 12, 30, 0, 1), "dt0": datetime(2023, 1, 15, 12, 30),
    "ts": "2023-01-15 10:00:00.123456",  # +05:00 local = 05:00:00.123456 UTC
    "tm": "-00:00:01.500000", "yr": 2023,
}  # fmt: skip
NULL_ROW_ID = 4
ZERO_ROW_ID = 5
OUTSIDE_ROW_ID = 6  # February: stays in the source

COLUMNS = list(ROW_MAX)
NULLABLE = [c for c in COLUMNS if c not in ("id", "updated_at")]

# What the committed Parquet must hold, per column, for the rows above.
EXPECTED_ARROW_TYPES = {
    "id": pa.uint64(), "updated_at": pa.timestamp("us"),
    "ti": pa.int8(), "ti_u": pa.uint8(), "si": pa.int16(), "si_u": pa.uint16(), "mi": pa.int32(),
    "mi_u": pa.uint32(), "i": pa.int32(), "i_u": pa.uint32(), "bi": pa.int64(), "bi_u": pa.uint64(),
    "flag": pa.int8(),
    "dec65": pa.decimal256(65, 30), "dec38": pa.decimal128(38, 10), "dec12": pa.decimal128(12, 2),
    "f": pa.float32(), "d": pa.float64(), "bit1": pa.uint64(), "bit64": pa.uint64(),
    **dict.fromkeys(["ch", "vc", "tt", "tx", "mt", "lt", "en", "st", "js"], pa.string()),
    **dict.fromkeys(["bn", "vb", "tb", "bl", "mb", "lb"], pa.binary()),
    "dt": pa.date32(), "dtm": pa.timestamp("us"), "dt0": pa.timestamp("us"),
    "ts": pa.timestamp("us", tz="UTC"), "tm": pa.duration("us"), "yr": pa.int16(),
}  # fmt: skip


def expected_parquet(row: dict[str, Any], *, ts_utc: datetime | None) -> dict[str, Any]:
    """The Python value each column must have when read back from the Parquet part."""
    out = dict(row)
    out["f"] = f32(row["f"])
    out["ts"] = ts_utc
    out["tm"] = td(row["tm"])
    if out["bn"] is not None:
        out["bn"] = out["bn"].ljust(8, b"\x00")  # BINARY(n) is right-padded with NUL bytes
    return out


EXPECTED = {
    1: expected_parquet(ROW_MAX, ts_utc=datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC)),
    2: expected_parquet(ROW_MIN, ts_utc=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
    3: expected_parquet(ROW_TYPICAL, ts_utc=datetime(2023, 1, 15, 5, 0, 0, 123456, tzinfo=UTC)),
    NULL_ROW_ID: {"id": NULL_ROW_ID, "updated_at": datetime(2023, 1, 20), **dict.fromkeys(NULLABLE)},
    # Zero dates are NULL in Parquet (and counted); the zero row's other columns are NULL too.
    ZERO_ROW_ID: {"id": ZERO_ROW_ID, "updated_at": datetime(2023, 1, 21), **dict.fromkeys(NULLABLE)},
}


def _insert(conn: sa.Connection, row: dict[str, Any]) -> None:
    # TIMESTAMP and TIME values are text literals: the session time zone (not the driver) interprets them.
    names = list(row)
    conn.execute(
        sa.text(
            f"INSERT INTO `{TABLE}` ({', '.join(f'`{n}`' for n in names)}) VALUES ({', '.join(f':{n}' for n in names)})"
        ),
        row,
    )


def seed(url: str) -> None:
    engine = sa.create_engine(url, connect_args={"charset": "utf8mb4"})
    with engine.begin() as conn:
        conn.exec_driver_sql(DDL)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET time_zone = '+05:00'")
        conn.exec_driver_sql(
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO'"
        )
        for row in (ROW_MAX, ROW_MIN, ROW_TYPICAL):
            _insert(conn, row)
        _insert(conn, {"id": NULL_ROW_ID, "updated_at": datetime(2023, 1, 20)})
        _insert(conn, {"id": OUTSIDE_ROW_ID, "updated_at": datetime(2023, 2, 1), "i": 6})
    with engine.begin() as conn:
        # Zero dates only exist where the session allows them (MariaDB's default does; MySQL 8's not).
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(
            f"INSERT INTO `{TABLE}` (id, updated_at, dt, dt0) "
            f"VALUES ({ZERO_ROW_ID}, '2023-01-21 00:00:00', '0000-00-00', '0000-00-00 00:00:00')"
        )
        assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM `{TABLE}`").scalar_one() == 6
        assert conn.exec_driver_sql("SHOW COUNT(*) WARNINGS").scalar_one() == 0
    engine.dispose()


def utc_engine(url: str) -> sa.Engine:
    return sa.create_engine(
        url, connect_args={"init_command": "SET time_zone = '+00:00'", "charset": "utf8mb4"}
    )


def fetch_rows(url: str) -> list[tuple[Any, ...]]:
    """Every row of the table in id order, as the driver returns it (UTC session).

    FLOAT is read as `f + 0E0` (a DOUBLE holding the exact single-precision value): MariaDB's text
    protocol prints FLOAT with 6 significant digits, so a plain `SELECT f` would compare rounded values.
    """
    engine = utc_engine(url)
    select = ", ".join("`f` + 0E0 AS `f`" if name == "f" else f"`{name}`" for name in COLUMNS)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(f"SELECT {select} FROM `{TABLE}` ORDER BY id")]
    engine.dispose()
    return rows


def read_committed(store: ObjectStore) -> pa.Table:
    """Every row in the queryable view of the table (committed parts only)."""
    parts = [
        pq.read_table(io.BytesIO(store.get_bytes(key))) for key in store.list(TABLE) if is_queryable(key)
    ]
    assert parts, "nothing was committed"
    return pa.concat_tables(parts).sort_by("id")


@pytest.fixture(params=["arrow", "pymysql"])
def archived(request: pytest.FixtureRequest, mysql_url: str, s3_bucket: str) -> Iterator[dict[str, Any]]:
    """The table archived by each reader: both must produce the same exact values."""
    seed(mysql_url)
    original = fetch_rows(mysql_url)
    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    config = config_for(source_url=mysql_url, archive_url=f"s3://{s3_bucket}/archive", tables=TABLES)
    client = SourceClient(mysql_url, reader=request.param)
    source_table = client.reflect(TABLE)
    job = ArchiveJob(
        source=client,
        store=store,
        table=config.tables[0],
        source_table=source_table,
        partition_key="2023-01-01",
        window=JAN_2023,
        run_id=uuid.uuid4().hex,
        now=datetime.now(UTC),
        log=lambda message: None,
    )
    report = job.run()
    assert client.reader_note.lower().startswith(request.param), client.reader_note
    yield {"url": mysql_url, "store": store, "client": client, "table": source_table, "report": report,
           "original": original}  # fmt: skip
    client.dispose()


def test_reflection_reports_every_type_as_mariadb_declares_it(archived: dict[str, Any]) -> None:
    table = archived["table"]
    assert table.column("js").data_type == "json", (
        "MariaDB JSON is LONGTEXT + json_valid; must reflect as json"
    )
    assert table.column("lt").data_type == "longtext", "a plain LONGTEXT is not JSON"
    assert table.column("flag").column_type == "tinyint(1)"
    assert table.column("st").enum_labels == ["a", "it's", 'say "hi"']
    assert table.column("en").enum_labels == ["scheduled", "it's", "z"]
    assert table.primary_key == ("id",)
    with archived["client"].engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar_one() == "+00:00"


def test_every_value_is_archived_exactly(archived: dict[str, Any]) -> None:
    report: ArchiveReport = archived["report"]
    store = archived["store"]
    assert report.rows_extracted == report.rows_purged == report.rows_committed == 5
    assert report.zero_dates_nulled == 2, "'0000-00-00' (DATE) and '0000-00-00 00:00:00' (DATETIME)"
    manifests = committed(store, TABLE)
    assert len(manifests) == 1 and manifests[0].counts["zero_dates_nulled"] == 2

    data = read_committed(store)
    assert data.column_names == COLUMNS
    for name, kind in EXPECTED_ARROW_TYPES.items():
        field = data.schema.field(name)
        assert field.type == kind, f"{name}: {field.type} != {kind}"
    assert data.schema.field("flag").metadata[b"mysql_type"] == b"tinyint(1)"

    rows = {row["id"]: row for row in data.to_pylist()}
    assert sorted(rows) == sorted(EXPECTED), "exactly the January rows; February's row stays"
    mismatches = []
    for row_id, expected in EXPECTED.items():
        actual = rows[row_id]
        for name in COLUMNS:
            want, got = expected[name], actual[name]
            # type() as well as ==: 5 must not come back as True, Decimal not as float, bytes not as str.
            if got != want or type(got) is not type(want):
                mismatches.append(f"row {row_id} column {name}: {_short(got)} != expected {_short(want)}")
    assert not mismatches, "\n".join(mismatches)
    assert rows[3]["ts"].utcoffset() == timedelta(0)
    assert len(rows[1]["lt"]) == 1_048_576


def test_restore_puts_back_exactly_the_rows_read_before_archiving(archived: dict[str, Any]) -> None:
    url, client = archived["url"], archived["client"]
    original = archived["original"]
    assert [r[0] for r in fetch_rows(url)] == [OUTSIDE_ROW_ID], "only February's row is left in the source"

    report = restore_partition(source=client, store=archived["store"], source_table=archived["table"], table=TABLE,
                               month=JAN_2023.start, log=lambda message: None)  # fmt: skip
    assert report.rows_restored == 5 and report.rows_already_present == 0

    # Zero dates come back as NULL: Parquet (and every warehouse) has no '0000-00-00'; the archive
    # nulled them and counted them, so the restored row differs from the original exactly there.
    dt, dt0 = COLUMNS.index("dt"), COLUMNS.index("dt0")
    expected = []
    for row in original:
        if row[0] == ZERO_ROW_ID:
            assert row[dt] == "0000-00-00" and row[dt0] == "0000-00-00 00:00:00", (
                "pymysql gives zero dates as text"
            )
            row = tuple(None if i in (dt, dt0) else value for i, value in enumerate(row))
        expected.append(row)
    restored = fetch_rows(url)
    mismatches = [
        f"row {want[0]} column {COLUMNS[i]}: {_short(got[i])} != original {_short(want[i])}"
        for want, got in zip(expected, restored, strict=True)
        for i in range(len(COLUMNS))
        if got[i] != want[i] or type(got[i]) is not type(want[i])
    ]
    assert len(restored) == len(expected)
    assert not mismatches, "\n".join(mismatches)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}... ({len(value)} long)"


def test_float_keeps_every_bit(archived: dict[str, Any]) -> None:
    rows = {row["id"]: row for row in read_committed(archived["store"]).to_pylist()}
    archived_floats = {row_id: rows[row_id]["f"] for row_id in EXPECTED}
    assert archived_floats == {row_id: row["f"] for row_id, row in EXPECTED.items()}

    restore_partition(source=archived["client"], store=archived["store"], source_table=archived["table"],
                      table=TABLE, month=JAN_2023.start, log=lambda message: None)  # fmt: skip
    f = COLUMNS.index("f")
    assert [r[f] for r in fetch_rows(archived["url"])] == [r[f] for r in archived["original"]]


def test_decimal_text_and_float_values_convert_at_full_precision() -> None:
    """Drivers that hand DECIMAL over as text or float (SQLite) keep all 65 digits (lib/convert.py)."""
    columns = [
        SourceColumn(name="dec65", data_type="decimal", column_type="decimal(65,30)", numeric_precision=65,
                     numeric_scale=30),
        SourceColumn(name="dec12", data_type="decimal", column_type="decimal(12,2)", numeric_precision=12,
                     numeric_scale=2),
    ]  # fmt: skip
    schema = pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])
    converter = RowsToArrow(columns, schema)
    batch = converter.convert([(str(MAX_DEC65), "1.005"), (0.1, -1.005), (str(MIN_DEC65), 7)])
    assert batch.column("dec65").to_pylist() == [MAX_DEC65, Decimal("0.1"), MIN_DEC65]
    assert batch.column("dec12").to_pylist() == [Decimal("1.01"), Decimal("-1.01"), Decimal("7")], (
        "half up, as MySQL"
    )
    with pytest.raises(ValueError, match=r"column 'dec65' \(decimal\(65,30\)\)"):
        converter.convert([("not a number", 1)])
    with pytest.raises(ValueError, match=r"column 'dec12'.*decimal128\(12, 2\)"):
        converter.convert([(1, "12345678901.5")])
