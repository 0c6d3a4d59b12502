"""Every type decision in one place: MySQL column -> Arrow/Parquet (archive) and -> warehouse SQL (replica).

Two maps with different goals:

* **Archive (Arrow/Parquet)** must be lossless: a restored row must equal the source row. So
  unsigned integers keep their unsigned Arrow type, `DECIMAL(65,30)` becomes `decimal256`, MySQL
  `TIME` (an interval up to +-838:59:59, not a time of day) becomes a duration, and `tinyint(1)` stays
  an integer because MySQL lets it hold -128..127.
* **Replica (warehouse DDL)** must hold every source value in a type analysts can query. The
  Redshift rules are the ones the AWS Data Pipeline script got wrong (see
  `/work/shared/notes/peers-and-type-mapping.md`): Redshift VARCHAR lengths are *bytes* (a
  utf8mb4 character takes up to 4), its CHAR is single-byte only, its widest DECIMAL is 38 digits,
  and BIGINT UNSIGNED needs DECIMAL(20,0).

The tables below are the map; the functions only pick a row and fill in widths. Nothing here opens a
connection or imports Dagster.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, cast, get_args

from etl_assets.lib.schema import SourceColumn, SourceTable

if TYPE_CHECKING:
    import pyarrow as pa

Dialect = Literal["redshift", "postgresql", "duckdb"]
"""Warehouse SQL dialects the replica supports."""

DIALECTS: tuple[Dialect, ...] = get_args(Dialect)

REDSHIFT_VARCHAR_MAX_BYTES = 65535
REDSHIFT_VARBYTE_MAX_BYTES = 1_024_000
REDSHIFT_DECIMAL_MAX_PRECISION = 38
DUCKDB_DECIMAL_MAX_PRECISION = 38
ARROW_DECIMAL128_MAX_PRECISION = 38
POSTGRES_VARCHAR_MAX_CHARS = 10_485_760
# utf8mb4 needs up to 4 bytes per character; we size for the worst case whatever the column's charset
# (latin1/cp1252 text also grows when re-encoded as UTF-8), so a column never needs re-sizing when
# only its charset changes.
MAX_UTF8_BYTES_PER_CHAR = 4


class UnsupportedTypeError(ValueError):
    """A source column whose type cannot be archived or replicated as configured.

    The message names the column, its MySQL type and the fix (a `column_types` override for the
    replica, or excluding the column).
    """


# --------------------------------------------------------------------------------------------------
# The map. One row per MySQL type (information_schema DATA_TYPE); columns are the three dialects.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PerDialect:
    """The warehouse type for one source type, per dialect."""

    redshift: str
    postgresql: str
    duckdb: str

    def for_dialect(self, dialect: Dialect) -> str:
        return getattr(self, dialect)


# Integers by (data_type, unsigned). Redshift and PostgreSQL have no unsigned types, so each unsigned
# type moves up one size; BIGINT UNSIGNED needs 20 digits (VARCHAR, the DP choice, breaks numeric
# order and joins; DECIMAL(18,0) overflows). DuckDB has exact native unsigned types.
_INTEGERS: dict[tuple[str, bool], _PerDialect] = {
    ("tinyint", False): _PerDialect("SMALLINT", "SMALLINT", "TINYINT"),
    ("tinyint", True): _PerDialect("SMALLINT", "SMALLINT", "UTINYINT"),
    ("smallint", False): _PerDialect("SMALLINT", "SMALLINT", "SMALLINT"),
    ("smallint", True): _PerDialect("INTEGER", "INTEGER", "USMALLINT"),
    ("mediumint", False): _PerDialect("INTEGER", "INTEGER", "INTEGER"),
    ("mediumint", True): _PerDialect("INTEGER", "INTEGER", "UINTEGER"),
    ("int", False): _PerDialect("INTEGER", "INTEGER", "INTEGER"),
    ("int", True): _PerDialect("BIGINT", "BIGINT", "UINTEGER"),
    ("bigint", False): _PerDialect("BIGINT", "BIGINT", "BIGINT"),
    ("bigint", True): _PerDialect("DECIMAL(20,0)", "NUMERIC(20,0)", "UBIGINT"),
}

# Types whose warehouse type does not depend on a width.
_FIXED: dict[str, _PerDialect] = {
    "float": _PerDialect("REAL", "REAL", "FLOAT"),
    "double": _PerDialect("DOUBLE PRECISION", "DOUBLE PRECISION", "DOUBLE"),
    "date": _PerDialect("DATE", "DATE", "DATE"),
    # DATETIME has no zone: it stays a naive TIMESTAMP (the source zone belongs in metadata).
    "datetime": _PerDialect("TIMESTAMP", "TIMESTAMP", "TIMESTAMP"),
    # MySQL TIMESTAMP is stored as UTC (we extract with time_zone '+00:00'), so keep the instant.
    "timestamp": _PerDialect("TIMESTAMPTZ", "TIMESTAMPTZ", "TIMESTAMPTZ"),
    # MySQL TIME is an interval (-838:59:59..838:59:59), not a time of day; a text or integer column
    # would lose ordering or readability, an interval round-trips exactly.
    "time": _PerDialect("INTERVAL DAY TO SECOND", "INTERVAL", "INTERVAL"),
    "year": _PerDialect("SMALLINT", "SMALLINT", "SMALLINT"),
    "json": _PerDialect("SUPER", "JSONB", "JSON"),
    # Bare TEXT on Redshift would be VARCHAR(256); every TEXT size gets the widest VARCHAR so that a
    # TINYTEXT -> TEXT change needs no DDL. Longer values are the loader's job (redshift_byte_limit).
    "tinytext": _PerDialect(f"VARCHAR({REDSHIFT_VARCHAR_MAX_BYTES})", "TEXT", "VARCHAR"),
    "text": _PerDialect(f"VARCHAR({REDSHIFT_VARCHAR_MAX_BYTES})", "TEXT", "VARCHAR"),
    "mediumtext": _PerDialect(f"VARCHAR({REDSHIFT_VARCHAR_MAX_BYTES})", "TEXT", "VARCHAR"),
    "longtext": _PerDialect(f"VARCHAR({REDSHIFT_VARCHAR_MAX_BYTES})", "TEXT", "VARCHAR"),
    # TINYBLOB/BLOB hold at most 65,535 bytes, so VARBYTE(65535) holds all of them (same slack as the
    # TEXT rule). MEDIUM/LONGBLOB (16 MB / 4 GB) get Redshift's maximum VARBYTE; bigger values are
    # rejected by the loader rather than declaring a width Redshift refuses.
    "tinyblob": _PerDialect(f"VARBYTE({REDSHIFT_VARCHAR_MAX_BYTES})", "BYTEA", "BLOB"),
    "blob": _PerDialect(f"VARBYTE({REDSHIFT_VARCHAR_MAX_BYTES})", "BYTEA", "BLOB"),
    "mediumblob": _PerDialect(f"VARBYTE({REDSHIFT_VARBYTE_MAX_BYTES})", "BYTEA", "BLOB"),
    "longblob": _PerDialect(f"VARBYTE({REDSHIFT_VARBYTE_MAX_BYTES})", "BYTEA", "BLOB"),
}

_STRING_TYPES = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"}
)
_BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})


@functools.cache
def _arrow_types() -> tuple[dict[tuple[str, bool], pa.DataType], dict[str, pa.DataType]]:
    """(integer types by (MySQL type, unsigned), the other fixed types by MySQL type).

    Built on first use: the code location imports this module for the warehouse map and loads
    without pyarrow (`etl_assets.definitions`).
    """
    import pyarrow as pa

    # Exact: unsigned stays unsigned, MEDIUMINT (24 bits) needs 32.
    integers = {
        ("tinyint", False): pa.int8(),
        ("tinyint", True): pa.uint8(),
        ("smallint", False): pa.int16(),
        ("smallint", True): pa.uint16(),
        ("mediumint", False): pa.int32(),
        ("mediumint", True): pa.uint32(),
        ("int", False): pa.int32(),
        ("int", True): pa.uint32(),
        ("bigint", False): pa.int64(),
        ("bigint", True): pa.uint64(),
    }
    fixed = {
        "float": pa.float32(),
        "double": pa.float64(),
        # BIT(n) arrives as big-endian bytes (lib/convert.py makes them ints); up to 64 bits fit uint64.
        "bit": pa.uint64(),
        "date": pa.date32(),
        "datetime": pa.timestamp("us"),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "time": pa.duration("us"),
        "year": pa.int16(),
        **dict.fromkeys(_STRING_TYPES, pa.string()),
        **dict.fromkeys(_BINARY_TYPES, pa.binary()),
    }
    return integers, fixed


# Spellings information_schema never uses but hand-written SourceColumns (tests, SQLite demo) might.
_ALIASES = {
    "integer": "int",
    "numeric": "decimal",
    "dec": "decimal",
    "fixed": "decimal",
    "double precision": "double",
}


def _data_type(column: SourceColumn) -> str:
    data_type = column.data_type.strip().lower()
    return _ALIASES.get(data_type, data_type)


def check_dialect(dialect: str) -> Dialect:
    """`dialect` itself when it is a supported warehouse dialect.

    Raises:
        ValueError: naming the supported dialects.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"unknown warehouse dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    return cast(Dialect, dialect)


def _type_args(column: SourceColumn) -> tuple[int, ...]:
    """The numbers in COLUMN_TYPE's parentheses, e.g. (10, 2) for `decimal(10,2) unsigned`."""
    match = re.match(r"^\s*[a-z ]+\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", column.column_type.lower())
    if not match:
        return ()
    return tuple(int(group) for group in match.groups() if group is not None)


def _precision_scale(column: SourceColumn) -> tuple[int, int]:
    """DECIMAL precision and scale; MySQL's default for a bare DECIMAL is (10, 0)."""
    if column.numeric_precision is not None:
        return column.numeric_precision, column.numeric_scale or 0
    args = _type_args(column)
    if args:
        return args[0], args[1] if len(args) > 1 else 0
    return 10, 0


def _char_length(column: SourceColumn) -> int | None:
    """Declared length in characters of CHAR/VARCHAR (bytes for BINARY/VARBINARY); None if unknown."""
    if column.char_max_length is not None:
        return column.char_max_length
    args = _type_args(column)
    return args[0] if args else None


def _bit_width(column: SourceColumn) -> int:
    if column.numeric_precision is not None:
        return column.numeric_precision
    args = _type_args(column)
    return args[0] if args else 1  # MySQL: BIT means BIT(1)


def _label_chars(column: SourceColumn) -> int:
    """Longest value of an ENUM (longest label) or SET (all labels joined by commas), in characters."""
    labels = column.enum_labels
    if not labels:
        # COLUMN_TYPE could not be parsed: information_schema's CHARACTER_MAXIMUM_LENGTH is the same number.
        return column.char_max_length or REDSHIFT_VARCHAR_MAX_BYTES
    if _data_type(column) == "enum":
        return max(len(label) for label in labels)
    return sum(len(label) for label in labels) + len(labels) - 1


def _unsupported(column: SourceColumn, what: str, *, archive: bool) -> UnsupportedTypeError:
    # The archive has no override: its Parquet type must hold the value exactly, so the only fix
    # there is leaving the column out. The replica can take a configured warehouse type instead.
    fix = (
        "exclude the column from the table"
        if archive
        else f"set replica.column_types: {{{column.name}: <warehouse type>}}, or exclude the column from the table"
    )
    return UnsupportedTypeError(
        f"column '{column.name}' has MySQL type '{column.column_type}', which {what}; {fix}"
    )


# --------------------------------------------------------------------------------------------------
# Archive: Arrow / Parquet
# --------------------------------------------------------------------------------------------------


def arrow_type(column: SourceColumn) -> pa.DataType:
    """The Arrow type that archives every value of `column` losslessly.

    Args:
        column: the reflected source column.

    Returns:
        The Arrow (and so Parquet) type: e.g. `uint64` for BIGINT UNSIGNED, `decimal256(65, 30)` for
        DECIMAL(65,30), `duration('us')` for TIME, `timestamp('us', tz='UTC')` for TIMESTAMP.

    Raises:
        UnsupportedTypeError: for types with no lossless mapping (spatial types, MariaDB UUID/INET, ...).
    """
    import pyarrow as pa

    integers, fixed_types = _arrow_types()
    data_type = _data_type(column)
    integer = integers.get((data_type, column.unsigned))
    if integer is not None:
        return integer
    if data_type == "decimal":
        precision, scale = _precision_scale(column)
        if precision <= ARROW_DECIMAL128_MAX_PRECISION:
            return pa.decimal128(precision, scale)
        return pa.decimal256(precision, scale)
    if data_type == "bit" and _bit_width(column) > 64:
        raise _unsupported(column, "is wider than MySQL's BIT(64) limit", archive=True)
    fixed = fixed_types.get(data_type)
    if fixed is None:
        raise _unsupported(column, "etl-assets cannot archive losslessly", archive=True)
    return fixed


ZERO_DATE_TYPES = frozenset({"date", "datetime", "timestamp"})
"""MySQL types that can hold zero dates (`0000-00-00`), which no other system can represent."""


def arrow_schema(table: SourceTable) -> pa.Schema:
    """The archive schema of `table`: one field per column, in table order.

    Each field carries the source nullability (date types outside the primary key always nullable:
    zero dates become NULL) and metadata `{b"mysql_type": COLUMN_TYPE}` so a
    Parquet file says what it was archived from (e.g. `tinyint(1)` vs `tinyint(4)`).

    Args:
        table: the reflected source table.

    Raises:
        UnsupportedTypeError: naming the table and the column that cannot be archived.
    """
    import pyarrow as pa

    fields = []
    for column in table.columns:
        try:
            data_type = arrow_type(column)
        except UnsupportedTypeError as error:
            raise UnsupportedTypeError(f"table '{table.name}': {error}") from error
        fields.append(
            pa.field(
                column.name,
                data_type,
                # A NOT NULL date column can still hold zero dates, which are archived as NULL; not a
                # key column: a key with a NULL could never be deleted, so the archive refuses it.
                nullable=column.nullable
                or (column.data_type in ZERO_DATE_TYPES and column.name not in table.primary_key),
                metadata={b"mysql_type": column.column_type.encode()},
            )
        )
    return pa.schema(fields)


# Columns with few distinct values by their type. Parquet's dictionary pays off only for these: on
# ids, timestamps and free text it is built, overflows and falls back to plain pages, which cost
# 40 % more writing time and gave larger files (500k `make bench` rows: 0.69 s / 34 MB against
# 0.41 s / 30 MB with dictionaries for the ENUM column only).
_DICTIONARY_TYPES = ("enum", "set", "tinyint", "year", "bit")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The archive columns worth Parquet dictionary encoding: ENUM, SET, TINYINT, YEAR, BIT.

    Reads the `mysql_type` metadata `arrow_schema` puts on each field.
    """
    names = []
    for schema_field in schema:
        mysql_type = (schema_field.metadata or {}).get(b"mysql_type", b"").decode().lower()
        if mysql_type.startswith(_DICTIONARY_TYPES):
            names.append(schema_field.name)
    return names


# --------------------------------------------------------------------------------------------------
# Replica: warehouse DDL types
# --------------------------------------------------------------------------------------------------


def warehouse_type(
    column: SourceColumn,
    dialect: Dialect,
    *,
    boolean: bool = False,
    override: str | None = None,
) -> str:
    """The warehouse column type for `column`.

    Args:
        column: the reflected source column.
        dialect: `redshift`, `postgresql` or `duckdb`.
        boolean: load a TINYINT (normally `tinyint(1)`) as BOOLEAN. Only when configured: MySQL
            lets `tinyint(1)` hold -128..127, so the default SMALLINT never loses data.
        override: a `replica.column_types` entry (validated by the config); returned as is.

    Returns:
        SQL type text such as `VARCHAR(1020)`, `DECIMAL(20,0)` or `SUPER`.

    Raises:
        UnsupportedTypeError: the type has no faithful warehouse type (e.g. DECIMAL(65,30) on
            Redshift, whose DECIMAL stops at 38 digits, or a spatial type); the message gives the fix.
        ValueError: `boolean` is set on a column that is not a TINYINT, or the dialect is unknown.
    """
    dialect = check_dialect(dialect)
    if override is not None:
        return override.strip()
    data_type = _data_type(column)
    if boolean:
        if data_type != "tinyint":
            raise ValueError(
                f"replica.boolean_columns lists '{column.name}', but it is '{column.column_type}'; "
                "only TINYINT columns (usually tinyint(1)) can load as BOOLEAN: remove it from boolean_columns"
            )
        return "BOOLEAN"

    integer = _INTEGERS.get((data_type, column.unsigned))
    if integer is not None:
        return integer.for_dialect(dialect)
    fixed = _FIXED.get(data_type)
    if fixed is not None:
        return fixed.for_dialect(dialect)
    if data_type == "decimal":
        return _decimal_type(column, dialect)
    if data_type == "bit":
        return _bit_type(column, dialect)
    if data_type in ("char", "varchar"):
        length = _char_length(column)
        if length is None:  # no declared length (hand-written column): treat as TEXT
            return _FIXED["text"].for_dialect(dialect)
        return _string_type(length, dialect)
    if data_type in ("enum", "set"):
        return _string_type(_label_chars(column), dialect)
    if data_type in ("binary", "varbinary"):
        length = _char_length(column)
        if length is None:
            return _FIXED["blob"].for_dialect(dialect)
        return _PerDialect(
            f"VARBYTE({min(max(length, 1), REDSHIFT_VARBYTE_MAX_BYTES)})", "BYTEA", "BLOB"
        ).for_dialect(dialect)
    raise _unsupported(column, f"etl-assets has no {dialect} type for", archive=False)


def _string_type(chars: int, dialect: Dialect) -> str:
    """VARCHAR wide enough for `chars` characters: bytes on Redshift, characters on PostgreSQL."""
    chars = max(chars, 1)  # CHAR(0) and VARCHAR(0) exist in MySQL; VARCHAR(0) does not elsewhere
    if dialect == "redshift":
        return f"VARCHAR({min(chars * MAX_UTF8_BYTES_PER_CHAR, REDSHIFT_VARCHAR_MAX_BYTES)})"
    if dialect == "postgresql":
        return f"VARCHAR({chars})" if chars <= POSTGRES_VARCHAR_MAX_CHARS else "TEXT"
    return "VARCHAR"  # DuckDB ignores declared lengths


def _decimal_type(column: SourceColumn, dialect: Dialect) -> str:
    precision, scale = _precision_scale(column)
    if dialect == "postgresql":  # NUMERIC goes to 1000 digits: every MySQL DECIMAL fits exactly
        return f"NUMERIC({precision},{scale})"
    limit = REDSHIFT_DECIMAL_MAX_PRECISION if dialect == "redshift" else DUCKDB_DECIMAL_MAX_PRECISION
    if precision > limit:
        # Suggest the DECIMAL that keeps the most integer digits: extra fraction digits are rounded
        # by the warehouse, extra integer digits fail the load.
        fitted_scale = max(0, min(scale, limit - (precision - scale)))
        raise UnsupportedTypeError(
            f"column '{column.name}' is '{column.column_type}' but {dialect} DECIMAL holds at most "
            f"{limit} digits; set replica.column_types: {{{column.name}: DECIMAL({limit},{fitted_scale})}} "
            f"(or another DECIMAL(38,s)) if every value fits it, or {{{column.name}: VARCHAR({precision + 2})}} "
            "to keep the exact digits as text, or exclude the column"
        )
    return f"DECIMAL({precision},{scale})"


def _bit_type(column: SourceColumn, dialect: Dialect) -> str:
    width = _bit_width(column)
    if width > 64:
        raise _unsupported(column, "is wider than MySQL's BIT(64) limit", archive=False)
    if dialect == "duckdb":
        return "UBIGINT"
    if width <= 63:
        return "BIGINT"
    return "DECIMAL(20,0)" if dialect == "redshift" else "NUMERIC(20,0)"


def warehouse_types(
    table: SourceTable,
    dialect: Dialect,
    *,
    boolean_columns: Iterable[str] = (),
    column_types: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Warehouse types of every column of `table`, in table order, with the table's replica settings.

    Args:
        table: the reflected source table.
        dialect: `redshift`, `postgresql` or `duckdb`.
        boolean_columns: `replica.boolean_columns`.
        column_types: `replica.column_types`.

    Returns:
        `{column name: SQL type}`.

    Raises:
        ValueError: a setting names a column the table does not have (message lists its columns).
        UnsupportedTypeError: a column cannot be mapped; the message names table, column and fix.
    """
    booleans = set(boolean_columns)
    overrides = dict(column_types or {})
    for setting, names in (("boolean_columns", booleans), ("column_types", overrides)):
        unknown = sorted(name for name in names if not table.has_column(name))
        if unknown:
            raise ValueError(
                f"replica.{setting} of table '{table.name}' names {', '.join(repr(n) for n in unknown)}, "
                f"which the table does not have; its columns are: {', '.join(table.column_names)}"
            )
    types: dict[str, str] = {}
    for column in table.columns:
        try:
            types[column.name] = warehouse_type(
                column,
                dialect,
                boolean=column.name in booleans,
                override=overrides.get(column.name),
            )
        except ValueError as error:
            raise type(error)(f"table '{table.name}': {error}") from error
    return types


def redshift_byte_limit(column: SourceColumn, *, override: str | None = None) -> int | None:
    """How many bytes a value of `column` may have in its Redshift column.

    Loaders compare each UTF-8 encoded string (or binary value) against this before COPY, so an
    oversize value is rejected, truncated or nulled as configured instead of failing the whole COPY
    with error 1204.

    Args:
        column: the reflected source column.
        override: the column's `replica.column_types` entry, if any.

    Returns:
        The VARCHAR/VARBYTE width in bytes, or None when the Redshift type has no byte width
        (numbers, dates, SUPER, ...).
    """
    sql_type = warehouse_type(column, "redshift", override=override)
    match = re.fullmatch(
        r"\s*(?:VARCHAR|CHARACTER VARYING|NVARCHAR|TEXT|CHAR|CHARACTER|NCHAR|BPCHAR|VARBYTE|VARBINARY|BINARY VARYING)"
        r"\s*\(\s*(\d+)\s*\)\s*",
        sql_type,
        flags=re.IGNORECASE,
    )
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------------
# Widening: can an existing replica column take the values of a changed source column?
# --------------------------------------------------------------------------------------------------

INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "UTINYINT": (0, 2**8 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "USMALLINT": (0, 2**16 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "UBIGINT": (0, 2**64 - 1),
    "HUGEINT": (-(2**127), 2**127 - 1),
    "UHUGEINT": (0, 2**128 - 1),
}
"""Value range of every warehouse integer type, by upper-case type name (shared with drift checks)."""
_FLOAT_RANK = {"REAL": 1, "FLOAT": 1, "FLOAT4": 1, "DOUBLE PRECISION": 2, "DOUBLE": 2, "FLOAT8": 2}
_TEXT_NAMES = {"VARCHAR", "CHARACTER VARYING", "CHAR", "CHARACTER", "TEXT", "BPCHAR", "NVARCHAR", "STRING"}
_BYTES_NAMES = {"VARBYTE", "VARBINARY", "BYTEA", "BLOB", "BINARY VARYING"}


@dataclass(frozen=True)
class _Capacity:
    """What a warehouse type can hold, for the `covers` comparison."""

    kind: Literal["exact", "float", "text", "bytes", "other"]
    low: Fraction = Fraction(0)
    high: Fraction = Fraction(0)
    scale: int = 0
    size: int | None = None  # text/bytes width (None = unbounded); float rank
    name: str = ""

    def covers(self, other: _Capacity) -> bool:
        if self.kind != other.kind:
            return False
        if self.kind == "exact":
            return self.low <= other.low and self.high >= other.high and self.scale >= other.scale
        if self.kind in ("text", "bytes"):
            return self.size is None or (other.size is not None and self.size >= other.size)
        if self.kind == "float":
            return (self.size or 0) >= (other.size or 0)
        return self.name == other.name


def _capacity(sql_type: str) -> _Capacity:
    normalized = " ".join(sql_type.upper().split())
    match = re.fullmatch(r"([A-Z0-9 ]+?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?", normalized)
    if not match:
        return _Capacity("other", name=normalized)
    name, first, second = match.group(1), match.group(2), match.group(3)
    if name in INTEGER_RANGES:
        low, high = INTEGER_RANGES[name]
        return _Capacity("exact", Fraction(low), Fraction(high))
    if name in ("DECIMAL", "NUMERIC") and first is not None:
        precision, scale = int(first), int(second or 0)
        largest = Fraction(10**precision - 1, 10**scale)
        return _Capacity("exact", -largest, largest, scale)
    if name in _FLOAT_RANK:
        return _Capacity("float", size=_FLOAT_RANK[name])
    if name in _TEXT_NAMES:
        return _Capacity("text", size=int(first) if first is not None and name != "TEXT" else None)
    if name in _BYTES_NAMES:
        return _Capacity("bytes", size=int(first) if first is not None else None)
    return _Capacity("other", name=normalized)


def widening_fits(
    old: SourceColumn,
    new: SourceColumn,
    dialect: Dialect,
    *,
    boolean: bool = False,
    override: str | None = None,
) -> bool:
    """True when the replica column generated for `old` can already hold every value of `new`.

    Compares the warehouse types the map generates for both (so the answer follows the dialect's
    units): on Redshift `varchar(255)` -> `varchar(300)` is False (VARCHAR(1020) < 1200 bytes) and
    `int` -> `bigint` is False, while `int unsigned` -> `bigint` is True (both BIGINT) and
    `text` -> `mediumtext` is True (both VARCHAR(65535), the widest Redshift has; oversize values
    are the loader's business). Nullability is not considered here.

    Args:
        old: the column as the replica was built from (the contract).
        new: the column as the source has it now.
        dialect: the warehouse dialect.
        boolean: the column is in `replica.boolean_columns`.
        override: the column's `replica.column_types` entry; with one, both sides map to it.

    Returns:
        False also when `new` has no warehouse type at all (UnsupportedTypeError), since no
        replica column can hold it.
    """
    old_type = warehouse_type(old, dialect, boolean=boolean, override=override)
    try:
        new_type = warehouse_type(new, dialect, boolean=boolean, override=override)
    except ValueError:
        return False
    if " ".join(old_type.upper().split()) == " ".join(new_type.upper().split()):
        return True
    return _capacity(old_type).covers(_capacity(new_type))
