"""Turn driver values (PyMySQL or sqlite3) into Arrow columns without losing anything.

PyMySQL hands back Python objects; a few need care before Arrow accepts them exactly:
- zero dates (`0000-00-00`, `2024-00-12`): PyMySQL returns them as *strings*; they become NULL and
  are counted, so the run can report them (Arrow and every warehouse reject them).
- BIT(n) arrives as big-endian bytes; it is stored as an unsigned integer.
- JSON may arrive as text (MySQL, MariaDB) or parsed (other drivers); it is stored as JSON text.
- SQLite (the demo source) stores dates and decimals as text/float; they are parsed back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import pyarrow as pa

from etl_assets.lib.schema import SourceColumn

Converter = Callable[[Sequence[Any]], tuple[Sequence[Any], int]]
"""Takes one column of values; returns the converted values and how many were invalid (nulled)."""

_DATE_TYPES = {"date"}
_DATETIME_TYPES = {"datetime", "timestamp"}


def _passthrough(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    return values, 0


def _parse_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)  # noqa: DTZ001 - DATETIME is naive by design
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None  # zero or otherwise impossible date
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return None


def _convert_datetimes(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    if all(type(v) is datetime or v is None for v in values):
        return values, 0
    out: list[Any] = []
    invalid = 0
    for value in values:
        if value is None:
            out.append(None)
            continue
        parsed = _parse_datetime(value)
        invalid += parsed is None
        out.append(parsed)
    return out, invalid


def _convert_dates(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    out: list[Any] = []
    invalid = 0
    for value in values:
        if value is None or (type(value) is date):
            out.append(value)
            continue
        parsed = _parse_datetime(value)
        invalid += parsed is None
        out.append(parsed.date() if parsed else None)
    return out, invalid


def _parse_time(value: Any) -> timedelta | None:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, time):
        return timedelta(
            hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
        )
    text = value.decode() if isinstance(value, bytes) else str(value)
    negative = text.startswith("-")
    hours, minutes, seconds = text.lstrip("-").split(":")
    delta = timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds))
    return -delta if negative else delta


def _convert_times(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    if all(type(v) is timedelta or v is None for v in values):
        return values, 0
    return [None if v is None else _parse_time(v) for v in values], 0


def _convert_bits(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    return [int.from_bytes(v, "big") if isinstance(v, (bytes, bytearray)) else v for v in values], 0


# MySQL DECIMAL has at most 65 digits; quantizing needs a context that holds them all (the default
# context's 28 digits made quantize raise InvalidOperation for DECIMAL(65,30), even for 0.1). Values
# wider than the column are left for Arrow to reject with the column's name.
_DECIMAL_CONTEXT = Context(prec=100, rounding=ROUND_HALF_UP)  # MySQL rounds DECIMAL half away from zero


def _decimal_converter(scale: int) -> Converter:
    quantum = Decimal(1).scaleb(-scale)

    def convert(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
        if all(type(v) is Decimal or v is None for v in values):
            return values, 0
        # SQLite keeps DECIMAL as REAL or TEXT: go through str() so 0.1 stays 0.1.
        return [
            v
            if v is None or type(v) is Decimal
            else Decimal(str(v)).quantize(quantum, context=_DECIMAL_CONTEXT)
            for v in values
        ], 0

    return convert


def _convert_json(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    return [
        v if v is None or isinstance(v, str) else v.decode() if isinstance(v, bytes) else json.dumps(v)
        for v in values
    ], 0


def _convert_text(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
    if all(type(v) is str or v is None for v in values):
        return values, 0
    return [
        v if v is None or isinstance(v, str) else v.decode() if isinstance(v, bytes) else str(v)
        for v in values
    ], 0


_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}


def converter_for(column: SourceColumn) -> Converter:
    """The converter that makes values of `column` acceptable to its Arrow type."""
    kind = column.data_type
    if kind in _DATETIME_TYPES:
        return _convert_datetimes
    if kind in _DATE_TYPES:
        return _convert_dates
    if kind == "time":
        return _convert_times
    if kind == "bit":
        return _convert_bits
    if kind == "decimal":
        return _decimal_converter(column.numeric_scale or 0)
    if column.is_json:
        return _convert_json
    if kind in _TEXT_TYPES:
        return _convert_text
    return _passthrough


class RowsToArrow:
    """Converts batches of row tuples into Arrow record batches of a fixed schema."""

    def __init__(self, columns: Sequence[SourceColumn], schema: pa.Schema) -> None:
        self.columns = list(columns)
        self.schema = schema
        self.converters = [converter_for(column) for column in self.columns]
        self.invalid_by_column: dict[str, int] = {}

    def convert(self, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        """One record batch from `rows` (tuples in column order)."""
        if not rows:
            return pa.RecordBatch.from_pylist([], schema=self.schema)
        arrays: list[pa.Array] = []
        for index, values in enumerate(zip(*rows, strict=True)):
            try:
                converted, invalid = self.converters[index](values)
            except (ValueError, ArithmeticError) as exc:  # decimal.InvalidOperation is an ArithmeticError
                column = self.columns[index]
                raise ValueError(
                    f"column '{column.name}' ({column.column_type}) has a value that cannot be converted: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if invalid:
                name = self.columns[index].name
                self.invalid_by_column[name] = self.invalid_by_column.get(name, 0) + invalid
            field = self.schema.field(index)
            try:
                arrays.append(pa.array(converted, type=field.type, from_pandas=False))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ValueError(
                    f"column '{field.name}' ({self.columns[index].column_type}) has a value Arrow cannot hold as "
                    f"{field.type}: {exc}"
                ) from None
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    @property
    def invalid_dates(self) -> int:
        """Zero or impossible dates nulled so far, over all columns."""
        return sum(self.invalid_by_column.values())
