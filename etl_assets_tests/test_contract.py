"""Schema contracts: the file format, its round trip, and errors that name the file and the problem."""

from __future__ import annotations

import json
import os
import stat
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from etl_assets.lib.contract import (
    FORMAT_VERSION,
    ContractError,
    SchemaContract,
    read_contract,
    write_contract,
)
from etl_assets.lib.schema import SourceColumn, SourceTable

PATH = "schemas/visits.json"

VISITS = SourceTable(
    name="visits",
    columns=(
        SourceColumn("id", "bigint", "bigint(20) unsigned", nullable=False, extra="auto_increment"),
        SourceColumn(
            "städte", "varchar", "varchar(255)", char_max_length=255, charset="utf8mb4", default="''"
        ),
        SourceColumn(
            "amount", "decimal", "decimal(10,2)", numeric_precision=10, numeric_scale=2, default="0.00"
        ),
        SourceColumn("updated_at", "datetime", "datetime(6)", nullable=False, datetime_precision=6),
    ),
    primary_key=("id",),
    indexed_columns=("updated_at",),
)


def contract() -> SchemaContract:
    return SchemaContract.from_table(VISITS, time_column="updated_at", oldest_row=date(2019, 3, 7))


def document(**changes: Any) -> dict[str, Any]:
    """The contract as a dict, with top-level keys replaced (or removed when the value is ...)."""
    data = contract().to_dict()
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


def column_document(**changes: Any) -> dict[str, Any]:
    """The contract with its first column's keys replaced (or removed when the value is ...)."""
    data = contract().to_dict()
    for key, value in changes.items():
        if value is ...:
            data["columns"][0].pop(key)
        else:
            data["columns"][0][key] = value
    return data


def test_from_table_records_key_time_column_index_and_oldest_row() -> None:
    built = contract()
    assert built.table == "visits"
    assert built.columns == VISITS.columns
    assert built.primary_key == ("id",)
    assert built.time_column == "updated_at"
    assert built.time_column_indexed is True
    assert built.oldest_row == "2019-03-07"
    assert built.oldest_date == date(2019, 3, 7)
    assert built.format_version == FORMAT_VERSION == 1


def test_from_table_cuts_a_datetime_to_its_date_and_accepts_no_rows() -> None:
    with_time = SchemaContract.from_table(
        VISITS, time_column="updated_at", oldest_row=datetime(2019, 3, 7, 23, 59)
    )
    assert with_time.oldest_row == "2019-03-07"
    empty = SchemaContract.from_table(VISITS, time_column="updated_at", oldest_row=None)
    assert empty.oldest_row is None
    assert empty.oldest_date is None


def test_from_table_sees_an_unindexed_time_column() -> None:
    table = SourceTable(VISITS.name, VISITS.columns, VISITS.primary_key, indexed_columns=("id",))
    assert (
        SchemaContract.from_table(table, time_column="updated_at", oldest_row=None).time_column_indexed
        is False
    )


def test_from_table_rejects_an_unknown_time_column() -> None:
    with pytest.raises(ContractError) as error:
        SchemaContract.from_table(VISITS, time_column="created_at", oldest_row=None)
    assert str(error.value) == (
        "table 'visits' has no time column 'created_at'; its columns are: id, städte, amount, updated_at; "
        "set time_column in the table's config"
    )


def test_to_table_round_trips_the_reflected_table() -> None:
    assert contract().to_table() == VISITS


def test_json_round_trip() -> None:
    original = contract()
    assert SchemaContract.from_json(original.to_json(), path=PATH) == original


def test_json_is_sorted_indented_and_writes_every_attribute() -> None:
    small = SchemaContract(
        table="t",
        columns=(SourceColumn("id", "int", "int", nullable=False),),
        primary_key=("id",),
        time_column="id",
    )
    assert small.to_json() == (
        "{\n"
        '  "columns": [\n'
        "    {\n"
        '      "char_max_length": null,\n'
        '      "charset": null,\n'
        '      "column_type": "int",\n'
        '      "data_type": "int",\n'
        '      "datetime_precision": null,\n'
        '      "default": null,\n'
        '      "extra": "",\n'
        '      "name": "id",\n'
        '      "nullable": false,\n'
        '      "numeric_precision": null,\n'
        '      "numeric_scale": null\n'
        "    }\n"
        "  ],\n"
        '  "format_version": 1,\n'
        '  "oldest_row": null,\n'
        '  "primary_key": [\n'
        '    "id"\n'
        "  ],\n"
        '  "table": "t",\n'
        '  "time_column": "id",\n'
        '  "time_column_indexed": false\n'
        "}"
    )


def test_json_keeps_non_ascii_names_readable_and_columns_in_table_order() -> None:
    text = contract().to_json()
    assert '"name": "städte"' in text
    assert [column["name"] for column in json.loads(text)["columns"]] == [
        "id",
        "städte",
        "amount",
        "updated_at",
    ]


def test_optional_keys_may_be_left_out() -> None:
    data = document(oldest_row=..., time_column_indexed=...)
    for key in ("default", "char_max_length", "numeric_precision", "numeric_scale", "charset", "extra"):
        data["columns"][1].pop(key)
    parsed = SchemaContract.from_json(json.dumps(data), path=PATH)
    assert parsed.oldest_row is None
    assert parsed.time_column_indexed is False
    assert parsed.columns[1] == SourceColumn("städte", "varchar", "varchar(255)")


def test_empty_primary_key_is_allowed() -> None:
    assert SchemaContract.from_json(json.dumps(document(primary_key=[])), path=PATH).primary_key == ()


FIX = "; fix the file, or re-create it with `etl-assets schema snapshot visits`"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param([1, 2], "must hold a JSON object, got list", id="not-an-object"),
        pytest.param(document(columns=...), "the file lacks 'columns'", id="missing-columns"),
        pytest.param(
            document(time_column=..., primary_key=...),
            "the file lacks 'primary_key', 'time_column'",
            id="missing-two-keys",
        ),
        pytest.param(
            document(primary_keys=["id"]),
            "the file has unknown key(s) 'primary_keys'; known keys are: columns, format_version, "
            "oldest_row, primary_key, table, time_column, time_column_indexed",
            id="unknown-key",
        ),
        pytest.param(
            document(format_version="1"),
            'format_version must be a positive integer, got "1"',
            id="version-text",
        ),
        pytest.param(
            document(format_version=0), "format_version must be a positive integer, got 0", id="version-0"
        ),
        pytest.param(
            document(columns=[]),
            "'columns' must be a non-empty list of column objects, got []",
            id="no-columns",
        ),
        pytest.param(
            document(columns=["id"]), "columns[0] must be an object, got str", id="column-not-object"
        ),
        pytest.param(column_document(name=...), "columns[0] lacks 'name'", id="column-without-name"),
        pytest.param(
            column_document(nullable=...), "columns[0] lacks 'nullable'", id="column-without-nullable"
        ),
        pytest.param(
            column_document(nulable=True),
            "columns[0] has unknown key(s) 'nulable'; known keys are: name, data_type, column_type, nullable, "
            "default, char_max_length, numeric_precision, numeric_scale, datetime_precision, charset, extra",
            id="column-typo",
        ),
        pytest.param(
            column_document(name=""), 'columns[0].name must be a non-empty string, got ""', id="empty-name"
        ),
        pytest.param(
            column_document(data_type=None),
            "columns[0].data_type must be a non-empty string, got null",
            id="null-type",
        ),
        pytest.param(
            column_document(nullable="yes"),
            'columns[0].nullable must be true or false, got "yes"',
            id="nullable-text",
        ),
        pytest.param(
            column_document(default=0),
            "columns[0].default must be a string or null, got 0",
            id="default-number",
        ),
        pytest.param(
            column_document(char_max_length="255"),
            'columns[0].char_max_length must be a non-negative integer or null, got "255"',
            id="length-text",
        ),
        pytest.param(
            column_document(numeric_scale=-1),
            "columns[0].numeric_scale must be a non-negative integer or null, got -1",
            id="negative-scale",
        ),
        pytest.param(
            column_document(datetime_precision=True),
            "columns[0].datetime_precision must be a non-negative integer or null, got true",
            id="precision-bool",
        ),
        pytest.param(
            column_document(extra=None), "columns[0].extra must be a string, got null", id="extra-null"
        ),
        pytest.param(
            document(columns=[*document()["columns"], document()["columns"][1]]),
            "columns[4] repeats column 'städte'",
            id="duplicate-column",
        ),
        pytest.param(
            document(primary_key="id"),
            "'primary_key' must be a list of column names, got \"id\"",
            id="pk-text",
        ),
        pytest.param(
            document(primary_key=["visit_id"]),
            "primary_key names 'visit_id', which is not a column; the columns are: id, städte, amount, updated_at",
            id="pk-unknown-column",
        ),
        pytest.param(
            document(primary_key=["id", "id"]), 'primary_key ["id", "id"] repeats a column', id="pk-repeat"
        ),
        pytest.param(
            document(time_column="created_at"),
            'time_column "created_at" is not a column; the columns are: id, städte, amount, updated_at',
            id="time-column-unknown",
        ),
        pytest.param(
            document(time_column_indexed="yes"),
            'time_column_indexed must be true or false, got "yes"',
            id="indexed-text",
        ),
        pytest.param(
            document(oldest_row="2019-02-30"),
            "oldest_row must be a date 'YYYY-MM-DD' or null, got \"2019-02-30\"",
            id="impossible-date",
        ),
        pytest.param(
            document(oldest_row="2019-03-07T10:00:00"),
            "oldest_row must be a date 'YYYY-MM-DD' or null, got \"2019-03-07T10:00:00\"",
            id="datetime-not-date",
        ),
        pytest.param(
            document(oldest_row=20190307),
            "oldest_row must be a date 'YYYY-MM-DD' or null, got 20190307",
            id="date-number",
        ),
    ],
)
def test_malformed_contract_names_path_and_problem(data: Any, message: str) -> None:
    with pytest.raises(ContractError) as error:
        SchemaContract.from_json(json.dumps(data, ensure_ascii=False), path=PATH)
    fix = FIX if isinstance(data, dict) else FIX.replace("snapshot visits", "snapshot <table>")
    assert str(error.value) == f"schema contract {PATH}: {message}{fix}"


def test_invalid_json_gives_line_and_column() -> None:
    with pytest.raises(ContractError) as error:
        SchemaContract.from_json('{\n  "table": "visits",\n}', path=PATH)
    assert str(error.value) == (
        f"schema contract {PATH}: is not valid JSON (line 3, column 1: Expecting property name enclosed in "
        "double quotes); fix the file, or re-create it with `etl-assets schema snapshot <table>`"
    )


def test_bad_table_name_is_reported_without_it_in_the_hint() -> None:
    with pytest.raises(ContractError) as error:
        SchemaContract.from_json(json.dumps(document(table="")), path=PATH)
    assert str(error.value) == (
        f"schema contract {PATH}: 'table' must be a non-empty string, got \"\"; "
        "fix the file, or re-create it with `etl-assets schema snapshot <table>`"
    )


def test_newer_format_version_asks_for_an_upgrade_even_with_unknown_keys() -> None:
    with pytest.raises(ContractError) as error:
        SchemaContract.from_json(json.dumps(document(format_version=2, checks=[])), path=PATH)
    assert str(error.value) == (
        f"schema contract {PATH}: has format_version 2, written by a newer etl-assets (this one reads up to 1); "
        "upgrade etl-assets; fix the file, or re-create it with `etl-assets schema snapshot visits`"
    )


def test_contract_error_is_a_value_error() -> None:
    assert issubclass(ContractError, ValueError)


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "schemas" / "visits.json"
    write_contract(path, contract())
    text = path.read_text(encoding="utf-8")
    assert text == contract().to_json() + "\n"
    assert read_contract(path) == contract()
    assert os.listdir(path.parent) == ["visits.json"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_replaces_and_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "visits.json"
    path.write_text("old", encoding="utf-8")
    path.chmod(0o640)
    write_contract(path, contract())
    assert read_contract(path) == contract()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["visits.json"]


def test_failed_write_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "visits.json"
    path.write_text("old", encoding="utf-8")

    def broken_replace(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_contract(path, contract())
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["visits.json"]


def test_read_missing_contract_is_none(tmp_path: Path) -> None:
    assert read_contract(tmp_path / "schemas" / "visits.json") is None


def test_read_malformed_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "visits.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ContractError, match=f"^schema contract {path}: must hold a JSON object, got list;"):
        read_contract(path)


def test_read_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "visits.json"
    path.write_bytes(b'{"table": "st\xe4dte"}')
    with pytest.raises(ContractError) as error:
        read_contract(path)
    assert str(error.value) == (
        f"schema contract {path}: is not UTF-8 text; "
        "fix the file, or re-create it with `etl-assets schema snapshot <table>`"
    )


def test_read_directory_is_a_contract_error(tmp_path: Path) -> None:
    path = tmp_path / "visits.json"
    path.mkdir()
    with pytest.raises(ContractError) as error:
        read_contract(path)
    assert str(error.value) == f"schema contract {path}: cannot read it (Is a directory)"
