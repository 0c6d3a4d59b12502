"""Schema drift: the live source table against its contract, and the replica against the contract.

Two comparisons feed the `schema_drift` check:

* `diff_schema(contract, live)`: what changed in MySQL since the contract was reviewed. Each change
  is classified in MySQL's terms (what values the column can hold now versus then) and, for retyped
  columns, checked against the replica through the type map (`replica_fits`): a change may widen
  the source column yet still fit the replica column generated from the contract, or not.
* `diff_replica(expected, actual)`: the replica's actual columns (from the warehouse's
  information_schema) against the types the contract's DDL would produce, after
  `normalize_sql_type` has mapped each dialect's spellings to one.

Classifications, from "let it through" to "stop":

* `additive`: a new column that existing writers and readers can ignore (NULLable, with a default,
  auto_increment or generated). Only this is what `on_drift: evolve` lets through.
* `widening`: the column holds every value it could before, and maybe more (INT -> BIGINT,
  VARCHAR(255) -> VARCHAR(300), DATETIME -> DATETIME(6), NOT NULL -> NULL).
* `narrowing`: some values the contract allowed no longer fit (BIGINT -> INT, INT -> INT UNSIGNED,
  NULL -> NOT NULL, a dropped default).
* `breaking`: a dropped column, a different kind of type (VARCHAR -> INT, DATETIME -> VARCHAR), a
  primary key change, a NOT NULL column added without a default, a table that disappeared.

Only what the archive and the replica depend on is drift: names, types, nullability, a default that
went away and the primary key. A changed charset (the replica sizes every string for 4-byte UTF-8),
EXTRA, a default changed to another value, a new default or an integer display width (MySQL 8.0.19
stopped reporting them) are not; re-snapshot to record them. A lost index on the time column is a
warning, not drift: it slows the archive down but changes no data.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Literal

from etl_assets.lib.contract import SchemaContract
from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.typemap import INTEGER_RANGES, Dialect, check_dialect, warehouse_type, widening_fits

ChangeKind = Literal["added", "dropped", "retyped", "nullability", "default", "missing", "extra"]
"""What changed about a column.

`added`/`dropped`/`retyped`/`nullability`/`default` compare the live source with the contract;
`missing`/`extra` (and `retyped`) compare the replica with the contract's DDL. A rename is reported
as `dropped` + `added`, with a hint in both changes' notes (see `SchemaDiff.rename_hints`).
"""

Classification = Literal["additive", "widening", "narrowing", "breaking"]

_SEVERITY: dict[str, int] = {"additive": 0, "widening": 1, "narrowing": 2, "breaking": 3}


@dataclass(frozen=True)
class ColumnChange:
    """One change to one column.

    Attributes:
        column: the column name (the live name for added columns).
        kind: what changed.
        before: the contract's side (type, `NULL`/`NOT NULL`, default, a column description), or
            None when the column did not exist there.
        after: the live (or replica) side, or None when the column no longer exists there.
        classification: additive, widening, narrowing or breaking (see the module docstring).
        replica_fits: for a retyped column, whether the replica column generated from the contract
            holds every value of the new type; None when that does not apply or is unknown (no
            replica dialect, a type the warehouse cannot hold).
        note: why it was classified so, or what to do; empty when obvious.
    """

    column: str
    kind: ChangeKind
    before: str | None
    after: str | None
    classification: Classification
    replica_fits: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class SchemaDiff:
    """The live source table against its contract.

    Attributes:
        table: the table name.
        changes: column changes: contract columns in contract order, then added columns in live order.
        primary_key_before: the contract's primary key.
        primary_key_after: the live primary key (empty when the table is missing).
        table_missing: the table no longer exists in the source.
        rename_hints: `(dropped, added)` pairs that look like renames: same column type, same position.
        warnings: things worth knowing that are not drift (a lost index on the time column).
    """

    table: str
    changes: tuple[ColumnChange, ...] = ()
    primary_key_before: tuple[str, ...] = ()
    primary_key_after: tuple[str, ...] = ()
    table_missing: bool = False
    rename_hints: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def primary_key_changed(self) -> bool:
        """The live primary key differs from the contract's (columns or their order)."""
        return not self.table_missing and self.primary_key_before != self.primary_key_after

    @property
    def has_drift(self) -> bool:
        """Anything the `schema_drift` check fails on."""
        return self.table_missing or self.primary_key_changed or bool(self.changes)

    @property
    def additive_only(self) -> bool:
        """There is drift, and all of it is added columns that are NULLable or have a default.

        That is what a table with `on_drift: evolve` lets through. False when there is no drift, so
        `additive_only` never describes a table that has nothing to let through.
        """
        return (
            self.has_drift
            and not self.table_missing
            and not self.primary_key_changed
            and all(change.kind == "added" and change.classification == "additive" for change in self.changes)
        )

    @property
    def classification(self) -> Classification | None:
        """The most severe classification of the drift, or None when there is none."""
        if self.table_missing or self.primary_key_changed:
            return "breaking"
        if not self.changes:
            return None
        return max((change.classification for change in self.changes), key=_SEVERITY.__getitem__)

    def blocks(self, on_drift: str) -> bool:
        """Whether the table's loads must stop under its `on_drift` policy.

        Args:
            on_drift: `block` (any drift stops them) or `evolve` (additive-only drift lets them run).

        Raises:
            ValueError: an unknown policy.
        """
        if on_drift not in ("block", "evolve"):
            raise ValueError(f"unknown on_drift policy {on_drift!r}; expected 'block' or 'evolve'")
        return self.has_drift and not (on_drift == "evolve" and self.additive_only)

    @property
    def summary(self) -> str:
        """One line for alert subjects and logs.

        For example `2 columns: added `x` (additive); retyped `y` varchar(255)->varchar(300)
        (widening, does not fit replica)`. Parts are separated by semicolons because types such as
        decimal(10,2) contain commas.
        """
        if self.table_missing:
            return f"table {_code(self.table)} no longer exists in the source (breaking)"
        if not self.has_drift:
            return "no drift"
        parts = [_summary_part(change) for change in self.changes]
        if self.primary_key_changed:
            parts.append(
                f"primary key {_key_text(self.primary_key_before)}->{_key_text(self.primary_key_after)} (breaking)"
            )
        parts.extend(f"possibly renamed {_code(old)} -> {_code(new)}" for old, new in self.rename_hints)
        columns = len({change.column for change in self.changes})
        if not columns:
            return "; ".join(parts)
        return f"{columns} column{'s' if columns != 1 else ''}: " + "; ".join(parts)

    def to_markdown(self) -> str:
        """The diff as Markdown, for the check's metadata.

        A column-by-column table (column | change | contract | live | classification | replica |
        note), then rename hints and warnings as a list.
        """
        if self.table_missing:
            return f"Table {_code(self.table)} no longer exists in the source (breaking)."
        if not self.has_drift:
            lines = [f"No drift: the live schema of {_code(self.table)} matches its contract."]
        else:
            rows = [_row(change) for change in self.changes]
            if self.primary_key_changed:
                rows.append(
                    (
                        "(primary key)",
                        "primary key",
                        _key_text(self.primary_key_before),
                        _key_text(self.primary_key_after),
                        "breaking",
                        "",
                        "",
                    )
                )
            lines = _markdown_table(
                ("column", "change", "contract", "live", "classification", "replica", "note"), rows
            )
        extra = [f"- possibly renamed {_code(old)} -> {_code(new)}" for old, new in self.rename_hints]
        extra += [f"- warning: {warning}" for warning in self.warnings]
        if extra:
            lines += ["", *extra]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for check metadata and alert bodies."""
        return {
            "table": self.table,
            "has_drift": self.has_drift,
            "classification": self.classification,
            "additive_only": self.additive_only,
            "table_missing": self.table_missing,
            "summary": self.summary,
            "primary_key": {"before": list(self.primary_key_before), "after": list(self.primary_key_after)},
            "changes": [change.to_dict() for change in self.changes],
            "rename_hints": [list(pair) for pair in self.rename_hints],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class ReplicaDiff:
    """The replica's actual columns against the contract's DDL.

    Attributes:
        changes: `missing` (in the DDL, not in the replica), `retyped` and `extra` (in the replica
            only) columns, in the DDL's column order, extra columns last.
    """

    changes: tuple[ColumnChange, ...] = ()

    @property
    def has_drift(self) -> bool:
        """The replica differs from what the contract's DDL would create."""
        return bool(self.changes)

    @property
    def summary(self) -> str:
        """One line, e.g. "replica: missing `x` (breaking); extra `y` (additive)"."""
        if not self.changes:
            return "replica matches the contract"
        return "replica: " + "; ".join(_summary_part(change) for change in self.changes)

    def to_markdown(self) -> str:
        """Markdown table: column | change | contract DDL | replica | classification | fits | note."""
        if not self.changes:
            return "No drift: the replica's columns match the contract's DDL."
        rows = [_row(change) for change in self.changes]
        return "\n".join(
            _markdown_table(
                ("column", "change", "contract DDL", "replica", "classification", "fits", "note"), rows
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "has_drift": self.has_drift,
            "summary": self.summary,
            "changes": [change.to_dict() for change in self.changes],
        }


# --------------------------------------------------------------------------------------------------
# Source vs contract
# --------------------------------------------------------------------------------------------------


def diff_schema(
    contract: SchemaContract,
    live: SourceTable | None,
    *,
    dialect: str | None = "redshift",
    boolean_columns: Collection[str] = (),
    column_types: Mapping[str, str] | None = None,
) -> SchemaDiff:
    """Compare a live source table with its contract.

    Args:
        contract: the committed contract.
        live: the table as reflected now, or None when it no longer exists.
        dialect: the replica's warehouse dialect, for `replica_fits`; None when the table has no
            replica (then `replica_fits` is always None).
        boolean_columns: the table's `replica.boolean_columns` (they change the replica's types).
        column_types: the table's `replica.column_types` overrides.

    Returns:
        The diff; `has_drift` is False when nothing the archive or replica depends on changed.

    Raises:
        ValueError: an unknown dialect.
    """
    checked = check_dialect(dialect) if dialect is not None else None
    if live is None:
        return SchemaDiff(
            table=contract.table, primary_key_before=tuple(contract.primary_key), table_missing=True
        )
    replica = _ReplicaContext(checked, frozenset(boolean_columns), dict(column_types or {}))
    live_by_name = {column.name: column for column in live.columns}
    contract_names = set(contract.column_names)

    dropped = [
        (index, column) for index, column in enumerate(contract.columns) if column.name not in live_by_name
    ]
    added = [
        (index, column) for index, column in enumerate(live.columns) if column.name not in contract_names
    ]
    hints = _rename_hints(dropped, added)
    hint_of: dict[str, str] = {}
    for old, new in hints:
        hint_of[old] = hint_of[new] = f"possibly renamed {_code(old)} -> {_code(new)}"

    changes: list[ColumnChange] = []
    for column in contract.columns:
        now = live_by_name.get(column.name)
        if now is None:
            changes.append(_dropped(column, contract, hint_of.get(column.name, "")))
        else:
            changes.extend(_column_changes(column, now, contract, replica))
    changes.extend(_added(column, hint_of.get(column.name, "")) for _, column in added)

    warnings: list[str] = []
    if (
        contract.time_column_indexed
        and contract.time_column in live_by_name
        and contract.time_column not in live.indexed_columns
    ):
        warnings.append(
            f"time column {_code(contract.time_column)} is no longer indexed: every archive window "
            "and incremental load now scans the whole table"
        )
    return SchemaDiff(
        table=contract.table,
        changes=tuple(changes),
        primary_key_before=tuple(contract.primary_key),
        primary_key_after=tuple(live.primary_key),
        rename_hints=tuple(hints),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class _ReplicaContext:
    dialect: Dialect | None
    booleans: frozenset[str]
    overrides: dict[str, str]

    def fits(self, old: SourceColumn, new: SourceColumn) -> tuple[bool | None, str]:
        """Whether the replica column generated for `old` holds `new`, and a note saying why."""
        if self.dialect is None:
            return None, ""
        options: dict[str, Any] = {
            "boolean": old.name in self.booleans,
            "override": self.overrides.get(old.name),
        }
        try:
            old_type = warehouse_type(old, self.dialect, **options)
        except ValueError:
            # The contract's own column has no warehouse type, so there is no replica column to judge.
            return None, f"the contract's type has no {self.dialect} type"
        fits = widening_fits(old, new, self.dialect, **options)
        if fits:
            return True, f"the {self.dialect} column {old_type} holds it"
        try:
            new_type = warehouse_type(new, self.dialect, **options)
        except ValueError as error:  # the message says what to configure
            return False, f"no {self.dialect} type for the new type: {error}"
        return False, f"the {self.dialect} column is {old_type}; the new type needs {new_type}"


def _describe(column: SourceColumn) -> str:
    """`varchar(255) NOT NULL DEFAULT 'x'`: a column as one cell of text."""
    text = f"{column.column_type} {'NULL' if column.nullable else 'NOT NULL'}"
    default = _default(column)
    return f"{text} DEFAULT {default}" if default is not None else text


def _default(column: SourceColumn) -> str | None:
    # MariaDB reports "no default" on a NULLable column as the text NULL (a string default is quoted
    # there: 'NULL'); MySQL reports None. Both mean the same.
    if column.default is None or column.default.strip().upper() == "NULL":
        return None
    return column.default


def _fills_itself(column: SourceColumn) -> bool:
    """The column gets a value without one in the INSERT: auto_increment or generated."""
    extra = column.extra.lower()
    return "auto_increment" in extra or "generated" in extra


def _added(column: SourceColumn, hint: str) -> ColumnChange:
    if column.nullable or _default(column) is not None or _fills_itself(column):
        return ColumnChange(column.name, "added", None, _describe(column), "additive", note=hint)
    # Breaking rather than additive: MySQL filled the existing rows with its implicit default
    # (0, '', a zero date), which neither the replica (the column starts NULL there) nor earlier
    # archive partitions have, and writers that do not know the column can no longer insert.
    note = (
        "NOT NULL without a default: existing rows got MySQL's implicit default, which the replica "
        "and earlier archive partitions do not have"
    )
    return ColumnChange(
        column.name, "added", None, _describe(column), "breaking", note="; ".join(filter(None, [note, hint]))
    )


def _dropped(column: SourceColumn, contract: SchemaContract, hint: str) -> ColumnChange:
    notes = []
    if column.name == contract.time_column:
        notes.append("the time column: archive windows and incremental loads need it")
    if column.name in contract.primary_key:
        notes.append("part of the primary key")
    notes.append(hint)
    return ColumnChange(
        column.name, "dropped", _describe(column), None, "breaking", note="; ".join(filter(None, notes))
    )


def _column_changes(
    old: SourceColumn, new: SourceColumn, contract: SchemaContract, replica: _ReplicaContext
) -> list[ColumnChange]:
    changes: list[ColumnChange] = []
    if _type_signature(old) != _type_signature(new):
        classification, why = _classify_retype(old, new)
        fits, fit_note = replica.fits(old, new)
        changes.append(
            ColumnChange(
                old.name,
                "retyped",
                old.column_type,
                new.column_type,
                classification,
                replica_fits=fits,
                note="; ".join(filter(None, [why, fit_note])),
            )
        )
    if old.nullable != new.nullable:
        before, after = ("NULL", "NOT NULL") if old.nullable else ("NOT NULL", "NULL")
        if old.nullable:
            classification, note = (
                "narrowing",
                "the source no longer accepts NULL; replicated and archived rows may still hold it",
            )
        elif old.name in contract.primary_key:
            classification, note = "breaking", "a primary key column cannot hold NULL"
        else:
            classification, note = "widening", "the replica column must accept NULL"
        changes.append(ColumnChange(old.name, "nullability", before, after, classification, note=note))
    old_default, new_default = _default(old), _default(new)
    if old_default is not None and new_default is None:
        # Narrowing: no value is lost, but the promise "a row written without this column gets the
        # default" is gone; such rows now hold NULL (or fail to insert when the column is NOT NULL).
        changes.append(
            ColumnChange(
                old.name,
                "default",
                old_default,
                None,
                "narrowing",
                note="default dropped: rows written without this column now get NULL or fail",
            )
        )
    return changes


def _rename_hints(
    dropped: list[tuple[int, SourceColumn]], added: list[tuple[int, SourceColumn]]
) -> list[tuple[str, str]]:
    """Dropped/added pairs at the same position with the same column type."""
    added_at = dict(added)
    hints = []
    for index, old in dropped:
        new = added_at.get(index)
        if new is not None and _type_signature(old) == _type_signature(new):
            hints.append((old.name, new.name))
    return hints


# --------------------------------------------------------------------------------------------------
# MySQL type shapes: what values a column type can hold, to tell widening from narrowing
# --------------------------------------------------------------------------------------------------

_ALIASES = {
    "integer": "int",
    "numeric": "decimal",
    "dec": "decimal",
    "fixed": "decimal",
    "double precision": "double",
    "real": "double",  # MySQL REAL is DOUBLE unless REAL_AS_FLOAT is set
    "bool": "tinyint",
    "boolean": "tinyint",
}
_INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "bigint": 64}
_TEXT_BYTES = {"tinytext": 255, "text": 65535, "mediumtext": 16_777_215, "longtext": 4_294_967_295}
_BLOB_BYTES = {"tinyblob": 255, "blob": 65535, "mediumblob": 16_777_215, "longblob": 4_294_967_295}
_FSP_TYPES = ("datetime", "timestamp", "time")
# Bytes per character (MySQL's maxlen) of the charsets one meets; unknown ones count as 4, the most.
_CHARSET_BYTES = {
    "utf8mb4": 4,
    "utf8mb3": 3,
    "utf8": 3,
    "ucs2": 2,
    "utf16": 4,
    "utf16le": 4,
    "utf32": 4,
    "latin1": 1,
    "latin2": 1,
    "ascii": 1,
    "binary": 1,
    "cp1250": 1,
    "cp1251": 1,
    "cp1252": 1,
    "big5": 2,
    "gbk": 2,
    "gb2312": 2,
    "gb18030": 4,
    "sjis": 2,
    "cp932": 2,
    "ujis": 3,
    "eucjpms": 3,
    "euckr": 2,
}


@dataclass(frozen=True)
class _Shape:
    """The values a MySQL column type can hold, coarse enough to compare two types.

    `family` groups types whose values are the same kind of thing: `exact` (integers, DECIMAL,
    BIT), `float`, `text` (CHAR, VARCHAR, TEXT, ENUM, SET), `bytes`, `datetime`, `timestamp`,
    `time`, `date`, `year`, `json`; anything else is `other:<data_type>` and compares only equal.
    """

    family: str
    low: Fraction = Fraction(0)  # exact: smallest and largest value, digits after the point
    high: Fraction = Fraction(0)
    scale: int = 0
    size: int = 0  # float: 1 single / 2 double; bytes: length; temporal: fractional digits
    chars: int = 0  # text: longest value in characters and in bytes
    octets: int = 0
    labels: frozenset[str] | None = None  # ENUM/SET: the allowed labels (None: any string)
    is_set: bool = False

    def holds(self, other: _Shape) -> bool:
        """Every value of `other` is a value of this type (same family assumed)."""
        if self.family == "exact":
            return self.low <= other.low and self.high >= other.high and self.scale >= other.scale
        if self.family == "text":
            if self.chars < other.chars or self.octets < other.octets:
                return False
            if self.labels is None:
                return True
            if other.labels is None or (other.is_set and not self.is_set):
                return False
            return other.labels <= self.labels
        if self.family.startswith("other:"):
            return False
        return self.size >= other.size


def _data_type(column: SourceColumn) -> str:
    data_type = column.data_type.strip().lower()
    return _ALIASES.get(data_type, data_type)


def _type_args(column: SourceColumn) -> tuple[int, ...]:
    match = re.match(r"^\s*[a-z ]+\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", column.column_type.lower())
    return tuple(int(group) for group in match.groups() if group is not None) if match else ()


def _type_signature(column: SourceColumn) -> tuple[str, ...]:
    """What identifies a column's type for drift: equal signatures mean "not retyped".

    Integer display widths and ZEROFILL only change how the mysql client prints values (MySQL
    8.0.19 stopped reporting widths), so `int(11)` and `int` are the same type. ENUM/SET compare by
    their labels, which may contain any character, so whitespace in them is kept as is.
    """
    data_type = _data_type(column)
    if column.is_json:  # MariaDB reports JSON's COLUMN_TYPE as longtext
        return ("json",)
    if data_type in ("enum", "set"):
        return (data_type, *column.enum_labels)
    text = " ".join(column.column_type.lower().split())
    text = re.sub(r"\s*\(\s*", "(", text)
    text = re.sub(r"\s*,\s*", ",", text)
    text = re.sub(r"\s*\)", ")", text)
    text = text.replace(" zerofill", "")
    if data_type in _INT_BITS:
        text = re.sub(r"^[a-z]+(\(\d+\))?", data_type, text)
    if data_type in _FSP_TYPES:
        text = text.replace("(0)", "")  # DATETIME(0) is DATETIME
    return (text,)


def _shape(column: SourceColumn) -> _Shape:
    data_type = _data_type(column)
    args = _type_args(column)
    if column.is_json:
        return _Shape("json")
    if data_type in _INT_BITS:
        bits = _INT_BITS[data_type]
        if column.unsigned:
            return _Shape("exact", Fraction(0), Fraction(2**bits - 1))
        return _Shape("exact", Fraction(-(2 ** (bits - 1))), Fraction(2 ** (bits - 1) - 1))
    if data_type == "decimal":
        if column.numeric_precision is not None:
            precision, scale = column.numeric_precision, column.numeric_scale or 0
        elif args:
            precision, scale = args[0], args[1] if len(args) > 1 else 0
        else:
            precision, scale = 10, 0  # MySQL's bare DECIMAL
        largest = Fraction(10**precision - 1, 10**scale)
        return _Shape("exact", Fraction(0) if column.unsigned else -largest, largest, scale)
    if data_type == "bit":
        width = column.numeric_precision or (args[0] if args else 1)
        return _Shape("exact", Fraction(0), Fraction(2**width - 1))
    if data_type in ("float", "double"):
        return _Shape("float", size=1 if data_type == "float" else 2)
    per_char = _CHARSET_BYTES.get((column.charset or "").lower(), 4)
    if data_type in ("char", "varchar"):
        length = column.char_max_length if column.char_max_length is not None else (args[0] if args else 0)
        return _Shape("text", chars=length, octets=length * per_char)
    if data_type in _TEXT_BYTES:
        # TEXT types are limited in bytes; single-byte characters are the most that fit.
        return _Shape("text", chars=_TEXT_BYTES[data_type], octets=_TEXT_BYTES[data_type])
    if data_type in ("enum", "set"):
        labels = column.enum_labels
        longest = ",".join(labels) if data_type == "set" else max(labels, key=len, default="")
        return _Shape(
            "text",
            chars=len(longest),
            octets=len(longest.encode("utf-8")),
            labels=frozenset(labels),
            is_set=data_type == "set",
        )
    if data_type in ("binary", "varbinary"):
        length = column.char_max_length if column.char_max_length is not None else (args[0] if args else 0)
        return _Shape("bytes", size=length)
    if data_type in _BLOB_BYTES:
        return _Shape("bytes", size=_BLOB_BYTES[data_type])
    if data_type in _FSP_TYPES:
        fsp = column.datetime_precision if column.datetime_precision is not None else (args[0] if args else 0)
        return _Shape(data_type, size=fsp)
    if data_type in ("date", "year"):
        return _Shape(data_type)
    return _Shape(f"other:{data_type}")


def _classify_retype(old: SourceColumn, new: SourceColumn) -> tuple[Classification, str]:
    """Classification of a type change, and a note when the reason is not obvious."""
    before, after = _shape(old), _shape(new)
    if before.family != after.family:
        return "breaking", f"different kind of type ({before.family} -> {after.family})"
    if before.family.startswith("other:"):
        return "breaking", "etl-assets cannot compare these types"
    if after.holds(before):
        return "widening", ""
    return "narrowing", "some values the contract allowed do not fit the new type"


# --------------------------------------------------------------------------------------------------
# Replica vs contract DDL
# --------------------------------------------------------------------------------------------------

# Spellings of one type across PostgreSQL, Redshift and DuckDB (information_schema and DDL),
# mapped to one canonical spelling. Keys are lowercase with single spaces and no arguments.
_SQL_ALIASES = {
    "character varying": "varchar",
    "nvarchar": "varchar",
    "varchar": "varchar",
    "string": "varchar",  # DuckDB
    "character": "char",
    "nchar": "char",
    "bpchar": "char",
    "char": "char",
    "int2": "smallint",
    "short": "smallint",
    "int": "integer",
    "int4": "integer",
    "signed": "integer",
    "int8": "bigint",
    "long": "bigint",
    "int1": "tinyint",
    "numeric": "decimal",
    "float4": "real",
    "float8": "double precision",
    "double": "double precision",
    "bool": "boolean",
    "logical": "boolean",
    "timestamp without time zone": "timestamp",
    "datetime": "timestamp",  # DuckDB
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
    "time with time zone": "timetz",
    "binary varying": "varbyte",
    "varbinary": "varbyte",
    "blob": "bytea",  # DuckDB BLOB and PostgreSQL BYTEA are both unbounded bytes
    "binary": "bytea",
}
_SQL_NAME = re.compile(r"([a-z_][a-z0-9_]*(?: [a-z_][a-z0-9_]*)*?)(?:\(([^()]*)\))?((?: [a-z_][a-z0-9_]*)*)")


def normalize_sql_type(text: str, *, dialect: str | None = None) -> str:
    """One spelling for a warehouse type, so that equal types compare equal.

    `character varying(1020)` and `VARCHAR(1020)` both become `varchar(1020)`; `numeric(20, 0)` and
    `DECIMAL(20,0)` become `decimal(20,0)`; `timestamp without time zone` becomes `timestamp`,
    `timestamp with time zone` and `TIMESTAMPTZ` become `timestamptz`; `int4`/`int` become
    `integer`, `int8` `bigint`, `float8`/`DOUBLE` `double precision`, `bool` `boolean`. Types it
    does not know (`super`, `jsonb`, `interval day to second`, `ubigint`) are only lowercased with
    single spaces.

    Args:
        text: the type as written in DDL or reported by information_schema.
        dialect: needed for bare `FLOAT`, which is 4 bytes in DuckDB but 8 in PostgreSQL and
            Redshift (None reads it as DuckDB does: PostgreSQL and Redshift never report a bare
            `float`), and for Redshift's `TEXT`, which is `VARCHAR(256)` there.

    Returns:
        The canonical spelling, lowercase.
    """
    compact = " ".join(text.strip().lower().split())
    compact = re.sub(r"\s*\(\s*", "(", compact)
    compact = re.sub(r"\s*,\s*", ",", compact)
    compact = re.sub(r"\s*\)", ")", compact)
    match = _SQL_NAME.fullmatch(compact)
    if not match:
        return compact
    name = f"{match.group(1)}{match.group(3)}"
    args = match.group(2)
    if name == "float" and args is not None:
        # SQL FLOAT(p): up to 24 binary digits is single precision, more is double.
        return "real" if args.isdigit() and int(args) <= 24 else "double precision"
    if name == "float":
        return "double precision" if dialect in ("postgresql", "redshift") else "real"
    if match.group(3) and args is not None:
        # `timestamp(3) without time zone`: the qualifier names the type, the argument stays on it.
        name = _SQL_ALIASES.get(name, name)
        return f"{name}({args})"
    canonical = _SQL_ALIASES.get(name, name)
    if canonical == "decimal" and args is not None and "," not in args:
        args = f"{args},0"  # NUMERIC(p) is NUMERIC(p,0)
    if canonical == "char" and args is None and name in ("character", "char"):
        args = "1"  # a bare CHAR is CHAR(1)
    if dialect == "redshift" and canonical in ("text", "varchar") and args is None:
        # Redshift has no unbounded text: TEXT and a bare VARCHAR are VARCHAR(256).
        canonical, args = "varchar", "256"
    return f"{canonical}({args})" if args is not None else canonical


_WAREHOUSE_INT_RANGES = {name.lower(): bounds for name, bounds in INTEGER_RANGES.items()}


def _warehouse_shape(normalized: str) -> _Shape:
    """The values a normalized warehouse type holds (family `other:<type>` when unknown)."""
    match = re.fullmatch(r"([a-z ]+?)(?:\((\d+)(?:,(\d+))?\))?", normalized)
    if not match:
        return _Shape(f"other:{normalized}")
    name, first, second = match.group(1), match.group(2), match.group(3)
    if name in _WAREHOUSE_INT_RANGES:
        low, high = _WAREHOUSE_INT_RANGES[name]
        return _Shape("exact", Fraction(low), Fraction(high))
    if name == "decimal" and first is not None:
        precision, scale = int(first), int(second or 0)
        largest = Fraction(10**precision - 1, 10**scale)
        return _Shape("exact", -largest, largest, scale)
    if name in ("real", "double precision"):
        return _Shape("float", size=1 if name == "real" else 2)
    unbounded = 2**63  # TEXT, BYTEA, VARCHAR without a length: wider than any declared length
    if name in ("varchar", "char", "text"):
        size = int(first) if first is not None else unbounded
        return _Shape("text", chars=size, octets=size)
    if name in ("varbyte", "bytea"):
        return _Shape("bytes", size=int(first) if first is not None else unbounded)
    return _Shape(f"other:{normalized}")


def diff_replica(
    expected: Mapping[str, str], actual: Mapping[str, str], *, dialect: str | None = None
) -> ReplicaDiff:
    """Compare the replica's columns with the ones the contract's DDL would create.

    Names match exactly, else case-insensitively: Redshift folds unquoted (and, by default, quoted)
    identifiers to lowercase, so a source column `CreatedAt` is `createdat` there.

    Args:
        expected: column name -> type from the contract (e.g. `typemap.warehouse_types` of
            `contract.to_table()` with the table's replica settings), in DDL order.
        actual: column name -> type as the warehouse reports it, with widths: PostgreSQL's and
            Redshift's `format_type(atttypid, atttypmod)` (`character varying(1020)`,
            `numeric(20,0)`), DuckDB's information_schema `data_type` (`DECIMAL(20,0)`).
        dialect: the warehouse dialect (see `normalize_sql_type`).

    Returns:
        `missing` (breaking: loads name every column), `retyped` (widening and fits when the replica
        column holds every value of the DDL type, narrowing when it holds fewer, breaking when it is
        another kind of type) and `extra` columns (additive: loads leave them NULL).
    """
    lowered: dict[str, list[str]] = {}
    for name in actual:
        lowered.setdefault(name.lower(), []).append(name)
    changes: list[ColumnChange] = []
    found: list[tuple[str, str, str]] = []
    missing: list[str] = []
    claimed: set[str] = set()
    for name in expected:
        if name in actual:
            found.append((name, name, expected[name]))
            continue
        candidates = [
            other for other in lowered.get(name.lower(), []) if other not in expected and other not in claimed
        ]
        if len(candidates) == 1:
            found.append((name, candidates[0], expected[name]))
            claimed.add(candidates[0])
        else:
            missing.append(name)
    found_names = {actual_name for _, actual_name, _ in found}
    for name, actual_name, expected_type in found:
        want = normalize_sql_type(expected_type, dialect=dialect)
        have = normalize_sql_type(actual[actual_name], dialect=dialect)
        if want == have:
            continue
        want_shape, have_shape = _warehouse_shape(want), _warehouse_shape(have)
        if want_shape.family == have_shape.family and have_shape.holds(want_shape):
            classification, fits, note = "widening", True, "the replica column is wider than the DDL's"
        elif want_shape.family == have_shape.family and want_shape.holds(have_shape):
            classification, fits, note = "narrowing", False, "the replica column is too narrow"
        else:
            classification, fits, note = "breaking", False, "the replica column is another kind of type"
        changes.append(ColumnChange(name, "retyped", want, have, classification, fits, note))
    changes.extend(
        ColumnChange(
            name,
            "missing",
            normalize_sql_type(expected[name], dialect=dialect),
            None,
            "breaking",
            None,
            "the replica has no such column",
        )
        for name in missing
    )
    changes.extend(
        ColumnChange(
            name,
            "extra",
            None,
            normalize_sql_type(actual[name], dialect=dialect),
            "additive",
            None,
            "not in the contract: loads leave it NULL",
        )
        for name in actual
        if name not in found_names
    )
    order = {name: index for index, name in enumerate(expected)}
    changes.sort(key=lambda change: (change.kind == "extra", order.get(change.column, 0)))
    return ReplicaDiff(changes=tuple(changes))


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def _code(text: str) -> str:
    """Markdown code span; names may contain backticks."""
    if "`" in text:
        return f"`` {text} ``"
    return f"`{text}`"


def _key_text(key: tuple[str, ...]) -> str:
    return f"({', '.join(key)})"


def _summary_part(change: ColumnChange) -> str:
    name = _code(change.column)
    if change.kind == "retyped":
        what = f"retyped {name} {change.before}->{change.after}"
    elif change.kind == "nullability":
        what = f"nullability {name} {change.before}->{change.after}"
    elif change.kind == "default":
        what = f"dropped default {change.before} of {name}"
    else:
        what = f"{change.kind} {name}"
    tags: list[str] = [change.classification]
    if change.replica_fits is not None:
        tags.append("fits replica" if change.replica_fits else "does not fit replica")
    return f"{what} ({', '.join(tags)})"


def _row(change: ColumnChange) -> tuple[str, ...]:
    fits = {True: "fits", False: "does not fit", None: ""}[change.replica_fits]
    return (
        _code(change.column),
        change.kind,
        change.before if change.before is not None else "",
        change.after if change.after is not None else "",
        change.classification,
        fits,
        change.note,
    )


def _cell(text: str) -> str:
    # A pipe ends a cell and a newline ends the row, even inside code spans (GFM unescapes `\|` there).
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines
