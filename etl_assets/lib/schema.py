"""The source table as reflected from MySQL `information_schema` (or SQLite for the demo).

These plain dataclasses are what every other module reasons about: the type map, DDL, schema
contracts and drift. They are built from information_schema rows, never from pandas dtypes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceColumn:
    """One column of a source table, in MySQL's own terms.

    Attributes:
        name: column name exactly as in the source (may contain any character).
        data_type: information_schema DATA_TYPE, lowercase (`bigint`, `varchar`, `json`, ...).
            MariaDB reports JSON as `longtext`; `is_json` is then True and data_type is `json`.
        column_type: full COLUMN_TYPE, lowercase (`bigint(20) unsigned`, `enum('a','b')`, `tinyint(1)`).
        nullable: IS_NULLABLE.
        default: COLUMN_DEFAULT as text (None when there is none).
        char_max_length: CHARACTER_MAXIMUM_LENGTH in characters (strings), bytes (binary types).
        numeric_precision: NUMERIC_PRECISION (DECIMAL precision, bit width for BIT).
        numeric_scale: NUMERIC_SCALE.
        datetime_precision: DATETIME_PRECISION (fractional seconds digits).
        charset: CHARACTER_SET_NAME.
        extra: EXTRA (`auto_increment`, `on update current_timestamp()`, ...).
    """

    name: str
    data_type: str
    column_type: str
    nullable: bool = True
    default: str | None = None
    char_max_length: int | None = None
    numeric_precision: int | None = None
    numeric_scale: int | None = None
    datetime_precision: int | None = None
    charset: str | None = None
    extra: str = ""

    @property
    def unsigned(self) -> bool:
        """True for UNSIGNED integer/decimal columns."""
        return " unsigned" in self.column_type

    @property
    def is_json(self) -> bool:
        """True for JSON columns (MySQL `json`, or MariaDB `longtext` checked with json_valid)."""
        return self.data_type == "json"

    @property
    def display_width(self) -> int | None:
        """The `(N)` of integer types, e.g. 1 for `tinyint(1)`; None when absent."""
        match = re.match(r"^\w+\((\d+)\)", self.column_type)
        return int(match.group(1)) if match and self.data_type.endswith("int") else None

    @property
    def enum_labels(self) -> list[str]:
        """Labels of an ENUM or SET column, in declaration order."""
        match = re.match(r"^(enum|set)\((.*)\)$", self.column_type, flags=re.S)
        if not match:
            return []
        return [label.replace("''", "'") for label in re.findall(r"'((?:[^']|'')*)'", match.group(2))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used in schema contracts and metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceColumn:
        """Inverse of `to_dict`, ignoring unknown keys so older contracts still load."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SourceTable:
    """A reflected source table."""

    name: str
    columns: tuple[SourceColumn, ...]
    primary_key: tuple[str, ...] = ()
    schema: str | None = None
    indexed_columns: tuple[str, ...] = field(default=())

    def column(self, name: str) -> SourceColumn:
        """The column called `name`.

        Raises:
            KeyError: naming the table and the columns it has.
        """
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(
            f"table '{self.name}' has no column '{name}'; its columns are: {', '.join(c.name for c in self.columns)}"
        )

    def has_column(self, name: str) -> bool:
        """True when the table has a column called `name`."""
        return any(column.name == name for column in self.columns)

    @property
    def column_names(self) -> list[str]:
        """Column names in table order."""
        return [column.name for column in self.columns]
