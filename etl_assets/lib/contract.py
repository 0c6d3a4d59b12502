"""Schema contracts: the reviewed, committed description of what a source table looks like.

One JSON file per table (`schemas/<table>.json` unless the table's `contract` setting says
otherwise), written by `etl-assets schema snapshot` and reviewed in git like code. The
`schema_drift` check compares the live source with it (see `schema_diff`), and the partitions start
at the `oldest_row` it records, so loading definitions never has to query the source.

The file is meant to be read in a pull request: keys sorted, two-space indent, one object per column
in table order, every column attribute written out (also when null) so a change shows up as one
changed line. It holds only what the archive and the replica depend on: the columns in MySQL's own
terms, the primary key, the time column and whether it is indexed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from etl_assets.lib.schema import SourceColumn, SourceTable

FORMAT_VERSION = 1
"""Version of the contract file layout; bump it when a key changes meaning or becomes required."""

# Column attributes, in SourceColumn's order; every one is written, so the files are uniform.
COLUMN_KEYS: tuple[str, ...] = (
    "name",
    "data_type",
    "column_type",
    "nullable",
    "default",
    "char_max_length",
    "numeric_precision",
    "numeric_scale",
    "datetime_precision",
    "charset",
    "extra",
)
_REQUIRED_COLUMN_KEYS = ("name", "data_type", "column_type", "nullable")
_INT_COLUMN_KEYS = ("char_max_length", "numeric_precision", "numeric_scale", "datetime_precision")
_OPTIONAL_TEXT_COLUMN_KEYS = ("default", "charset")

_TOP_KEYS = (
    "columns",
    "format_version",
    "oldest_row",
    "primary_key",
    "table",
    "time_column",
    "time_column_indexed",
)
_REQUIRED_TOP_KEYS = ("columns", "format_version", "primary_key", "table", "time_column")


class ContractError(ValueError):
    """A schema contract that cannot be read, parsed or built.

    The message names the file (or table), says what is wrong and how to fix it.
    """


@dataclass(frozen=True)
class SchemaContract:
    """The committed schema of one source table.

    Attributes:
        table: source table name, as in the config.
        columns: the columns in table order, in MySQL's terms.
        primary_key: primary key column names in key order (empty when the table has none).
        time_column: the column partitions are cut on (archive windows, incremental loads).
        time_column_indexed: an index starts with the time column when the contract was taken;
            without one every archive window is a full table scan.
        oldest_row: ISO date (`YYYY-MM-DD`) of the oldest time-column value when snapshotted, or
            None for an empty table; partitions start at its month.
        format_version: layout version of the file this was read from (FORMAT_VERSION when built).
    """

    table: str
    columns: tuple[SourceColumn, ...]
    primary_key: tuple[str, ...]
    time_column: str
    time_column_indexed: bool = False
    oldest_row: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def column_names(self) -> list[str]:
        """Column names in table order."""
        return [column.name for column in self.columns]

    @property
    def oldest_date(self) -> date | None:
        """`oldest_row` as a date."""
        return date.fromisoformat(self.oldest_row) if self.oldest_row else None

    def column(self, name: str) -> SourceColumn:
        """The column called `name`.

        Raises:
            KeyError: naming the table and the columns the contract has.
        """
        return self.to_table().column(name)

    @classmethod
    def from_table(cls, table: SourceTable, *, time_column: str, oldest_row: date | None) -> SchemaContract:
        """The contract describing a freshly reflected table.

        Args:
            table: the table as reflected from the live source.
            time_column: the table's configured time column.
            oldest_row: the oldest time-column value (a datetime is cut to its date), or None when
                the table has no rows with one.

        Raises:
            ContractError: the table has no column called `time_column`.
        """
        if not table.has_column(time_column):
            raise ContractError(
                f"table '{table.name}' has no time column '{time_column}'; its columns are: "
                f"{', '.join(table.column_names)}; set time_column in the table's config"
            )
        if isinstance(oldest_row, datetime):  # a datetime is a date too; keep only the date
            oldest_row = oldest_row.date()
        return cls(
            table=table.name,
            columns=tuple(table.columns),
            primary_key=tuple(table.primary_key),
            time_column=time_column,
            time_column_indexed=time_column in table.indexed_columns,
            oldest_row=oldest_row.isoformat() if oldest_row is not None else None,
        )

    def to_table(self) -> SourceTable:
        """The contract as a SourceTable (what the type map and DDL take).

        Only the time column's index is recorded, so `indexed_columns` is that column or nothing.
        """
        return SourceTable(
            name=self.table,
            columns=self.columns,
            primary_key=self.primary_key,
            indexed_columns=(self.time_column,) if self.time_column_indexed else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: every top-level key and every column attribute, also when null."""
        return {
            "columns": [{key: getattr(column, key) for key in COLUMN_KEYS} for column in self.columns],
            "format_version": self.format_version,
            "oldest_row": self.oldest_row,
            "primary_key": list(self.primary_key),
            "table": self.table,
            "time_column": self.time_column,
            "time_column_indexed": self.time_column_indexed,
        }

    def to_json(self) -> str:
        """The file's text (without the trailing newline `write_contract` adds).

        Keys are sorted and indented by two spaces so that the same schema always gives the same
        bytes and a change reads as a small diff; non-ASCII names stay readable (no `\\u` escapes).
        """
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, *, path: str) -> SchemaContract:
        """Parse and validate a contract file's text.

        Args:
            text: the file's content.
            path: where it came from; only used in error messages.

        Raises:
            ContractError: naming `path` and what is wrong (invalid JSON, a missing, unknown or
                mistyped key, a duplicate column, a key or time column that is not a column, an
                unreadable date, a newer format version).
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise _error(
                path, f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
            ) from None
        return _parse(raw, path)


def read_contract(path: Path) -> SchemaContract | None:
    """The contract stored at `path`, or None when there is no file.

    Raises:
        ContractError: the file exists but cannot be read or is not a valid contract.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise _error(str(path), "is not UTF-8 text") from None
    except OSError as error:
        raise ContractError(f"schema contract {path}: cannot read it ({error.strerror or error})") from None
    return SchemaContract.from_json(text, path=str(path))


def write_contract(path: Path, contract: SchemaContract) -> None:
    """Write `contract` to `path` atomically, creating missing directories.

    The text goes to a hidden temporary file in the same directory, which then replaces `path` in one
    rename: a reader (or a crash) sees the old file or the new one, never half of one. An existing
    file keeps its permissions; a new one is created readable by everyone (0644), like a file
    checked out from git.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    data = (contract.to_json() + "\n").encode("utf-8")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _error(path: str, what: str, table: str | None = None) -> ContractError:
    command = f"etl-assets schema snapshot {table}" if table else "etl-assets schema snapshot <table>"
    return ContractError(f"schema contract {path}: {what}; fix the file, or re-create it with `{command}`")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_keys(
    data: Mapping[str, Any], *, known: tuple[str, ...], required: tuple[str, ...], where: str
) -> str | None:
    """What is wrong with the keys of `data` (None when nothing)."""
    missing = [key for key in required if key not in data]
    if missing:
        return f"{where} lacks {', '.join(repr(key) for key in missing)}"
    # Unknown keys are rejected rather than ignored: in a hand-edited file they are typos
    # ("nulable"), and ignoring one would silently fall back to a default.
    unknown = sorted(key for key in data if key not in known)
    if unknown:
        return (
            f"{where} has unknown key(s) {', '.join(repr(key) for key in unknown)}; "
            f"known keys are: {', '.join(known)}"
        )
    return None


def _parse_column(raw: Any, where: str) -> SourceColumn | str:
    """The column, or a description of what is wrong with it."""
    if not isinstance(raw, dict):
        return f"{where} must be an object, got {_type_name(raw)}"
    problem = _check_keys(raw, known=COLUMN_KEYS, required=_REQUIRED_COLUMN_KEYS, where=where)
    if problem:
        return problem
    for key in ("name", "data_type", "column_type"):
        if not isinstance(raw[key], str) or not raw[key]:
            return f"{where}.{key} must be a non-empty string, got {json.dumps(raw[key])}"
    if not isinstance(raw["nullable"], bool):
        return f"{where}.nullable must be true or false, got {json.dumps(raw['nullable'])}"
    for key in _OPTIONAL_TEXT_COLUMN_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            return f"{where}.{key} must be a string or null, got {json.dumps(raw[key])}"
    for key in _INT_COLUMN_KEYS:
        value = raw.get(key)
        # bool is an int subclass; `true` is never a length
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"{where}.{key} must be a non-negative integer or null, got {json.dumps(value)}"
    if not isinstance(raw.get("extra", ""), str):
        return f"{where}.extra must be a string, got {json.dumps(raw['extra'])}"
    return SourceColumn.from_dict(raw)


def _parse(raw: Any, path: str) -> SchemaContract:
    if not isinstance(raw, dict):
        raise _error(path, f"must hold a JSON object, got {_type_name(raw)}")
    table = raw.get("table")
    if not isinstance(table, str) or not table:
        table_error = f"'table' must be a non-empty string, got {json.dumps(table)}"
        table = None
    else:
        table_error = None

    def fail(what: str) -> ContractError:
        return _error(path, what, table)

    version = raw.get("format_version")
    # Checked first: a newer file may legitimately have keys this version does not know.
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise fail(
            f"has format_version {version}, written by a newer etl-assets (this one reads up to "
            f"{FORMAT_VERSION}); upgrade etl-assets"
        )
    problem = _check_keys(raw, known=_TOP_KEYS, required=_REQUIRED_TOP_KEYS, where="the file")
    if problem:
        raise fail(problem)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(f"format_version must be a positive integer, got {json.dumps(version)}")
    if table_error:
        raise fail(table_error)

    raw_columns = raw["columns"]
    if not isinstance(raw_columns, list) or not raw_columns:
        raise fail(f"'columns' must be a non-empty list of column objects, got {json.dumps(raw_columns)}")
    columns: list[SourceColumn] = []
    seen: set[str] = set()
    for index, raw_column in enumerate(raw_columns):
        parsed = _parse_column(raw_column, f"columns[{index}]")
        if isinstance(parsed, str):
            raise fail(parsed)
        if parsed.name in seen:
            raise fail(f"columns[{index}] repeats column '{parsed.name}'")
        seen.add(parsed.name)
        columns.append(parsed)
    names = ", ".join(column.name for column in columns)

    primary_key = raw["primary_key"]
    if not isinstance(primary_key, list) or not all(isinstance(name, str) for name in primary_key):
        raise fail(f"'primary_key' must be a list of column names, got {json.dumps(primary_key)}")
    for name in primary_key:
        if name not in seen:
            raise fail(f"primary_key names '{name}', which is not a column; the columns are: {names}")
    if len(set(primary_key)) != len(primary_key):
        raise fail(f"primary_key {json.dumps(primary_key)} repeats a column")

    time_column = raw["time_column"]
    if not isinstance(time_column, str) or time_column not in seen:
        raise fail(f"time_column {json.dumps(time_column)} is not a column; the columns are: {names}")

    indexed = raw.get("time_column_indexed", False)
    if not isinstance(indexed, bool):
        raise fail(f"time_column_indexed must be true or false, got {json.dumps(indexed)}")

    oldest_row = raw.get("oldest_row")
    if oldest_row is not None:
        try:
            if not isinstance(oldest_row, str) or len(oldest_row) != 10:
                raise ValueError(oldest_row)
            date.fromisoformat(oldest_row)
        except ValueError:
            raise fail(
                f"oldest_row must be a date 'YYYY-MM-DD' or null, got {json.dumps(oldest_row)}"
            ) from None

    return SchemaContract(
        table=table or "",
        columns=tuple(columns),
        primary_key=tuple(primary_key),
        time_column=time_column,
        time_column_indexed=indexed,
        oldest_row=oldest_row,
        format_version=version,
    )
