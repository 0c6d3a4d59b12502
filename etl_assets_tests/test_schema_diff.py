"""Schema drift: every kind of change, its classification, whether the replica absorbs it, and the
texts the check and the alerts show; then the replica-vs-contract comparison."""

from __future__ import annotations

import json
import re

import duckdb
import pytest

from etl_assets.lib.contract import SchemaContract
from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.schema_diff import (
    ColumnChange,
    ReplicaDiff,
    SchemaDiff,
    diff_replica,
    diff_schema,
    normalize_sql_type,
)
from etl_assets.lib.typemap import Dialect, warehouse_types


def col(
    name: str,
    column_type: str,
    *,
    nullable: bool = True,
    default: str | None = None,
    charset: str | None = None,
    extra: str = "",
    data_type: str | None = None,
) -> SourceColumn:
    """A column as information_schema would describe it; widths are read from `column_type`."""
    if data_type is None:
        match = re.match(r"[a-z]+", column_type)
        assert match is not None
        data_type = match.group(0)
    if charset is None and data_type in (
        "char",
        "varchar",
        "tinytext",
        "text",
        "mediumtext",
        "longtext",
        "enum",
        "set",
    ):
        charset = "utf8mb4"
    return SourceColumn(
        name, data_type, column_type, nullable=nullable, default=default, charset=charset, extra=extra
    )


ID = col("id", "bigint unsigned", nullable=False, extra="auto_increment")
UPDATED_AT = col("updated_at", "datetime", nullable=False)


def table(
    *columns: SourceColumn, primary_key: tuple[str, ...] = ("id",), indexed: bool = True
) -> SourceTable:
    return SourceTable(
        "visits", (ID, *columns, UPDATED_AT), primary_key, indexed_columns=("updated_at",) if indexed else ()
    )


def contract(*columns: SourceColumn, primary_key: tuple[str, ...] = ("id",)) -> SchemaContract:
    return SchemaContract.from_table(
        table(*columns, primary_key=primary_key), time_column="updated_at", oldest_row=None
    )


# --------------------------------------------------------------------------------------------------
# Retyped columns: classification in MySQL's terms, replica_fits through the type map
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "dialect", "classification", "fits"),
    [
        # Redshift VARCHAR is bytes: 255 chars -> VARCHAR(1020), 300 chars need 1200.
        ("varchar(255)", "varchar(300)", "redshift", "widening", False),
        ("varchar(100)", "varchar(200)", "redshift", "widening", False),  # 800 bytes > 400
        ("varchar(255)", "varchar(300)", "postgresql", "widening", False),  # VARCHAR(255) chars
        ("varchar(255)", "varchar(300)", "duckdb", "widening", True),  # DuckDB VARCHAR has no length
        ("varchar(300)", "varchar(255)", "redshift", "narrowing", True),
        ("varchar(255)", "text", "redshift", "widening", False),  # VARCHAR(1020) < VARCHAR(65535)
        # 20000 4-byte characters are 80000 bytes, more than TEXT's 65535
        ("varchar(20000)", "text", "redshift", "narrowing", True),
        ("text", "mediumtext", "redshift", "widening", True),  # both VARCHAR(65535)
        ("mediumtext", "text", "redshift", "narrowing", True),
        ("enum('a','b')", "enum('a','b','c')", "redshift", "widening", True),  # VARCHAR(4) both
        ("enum('a','b','c')", "enum('a','b')", "redshift", "narrowing", True),
        ("enum('a','b')", "enum('a','x')", "redshift", "narrowing", True),  # label b is gone
        ("enum('a','b')", "varchar(10)", "redshift", "widening", False),  # VARCHAR(4) < VARCHAR(40)
        ("varchar(10)", "enum('a')", "redshift", "narrowing", True),
        ("set('a','b')", "set('a','b','c')", "redshift", "widening", False),  # 'a,b' -> 'a,b,c'
        ("int", "bigint", "redshift", "widening", False),  # an INTEGER column cannot hold BIGINT
        ("int", "bigint", "duckdb", "widening", False),
        ("int unsigned", "bigint", "redshift", "widening", True),  # both BIGINT
        ("tinyint", "smallint", "redshift", "widening", True),  # both SMALLINT
        ("tinyint", "smallint", "duckdb", "widening", False),  # TINYINT -> SMALLINT
        ("int", "int unsigned", "redshift", "narrowing", False),  # negatives lost; INTEGER -> BIGINT
        ("bigint", "int", "redshift", "narrowing", True),
        ("bigint unsigned", "bigint", "redshift", "narrowing", True),  # DECIMAL(20,0) holds BIGINT
        ("int", "decimal(12,0)", "redshift", "widening", False),  # exact numbers, one family
        ("decimal(10,2)", "decimal(12,2)", "redshift", "widening", False),
        ("decimal(10,2)", "decimal(12,2)", "postgresql", "widening", False),
        ("decimal(10,2)", "decimal(10,4)", "redshift", "narrowing", False),  # 8 -> 6 integer digits
        ("decimal(12,2)", "decimal(10,2)", "redshift", "narrowing", True),
        ("bit(8)", "bit(16)", "redshift", "widening", True),  # both BIGINT
        ("float", "double", "redshift", "widening", False),  # REAL -> DOUBLE PRECISION
        ("double", "float", "redshift", "narrowing", True),
        ("datetime", "datetime(6)", "redshift", "widening", True),  # both TIMESTAMP
        ("datetime(6)", "datetime", "redshift", "narrowing", True),
        ("time", "time(3)", "postgresql", "widening", True),  # both INTERVAL
        ("binary(16)", "varbinary(32)", "redshift", "widening", False),  # VARBYTE(16) -> VARBYTE(32)
        ("binary(16)", "varbinary(32)", "postgresql", "widening", True),  # both BYTEA
        ("varchar(32)", "int", "redshift", "breaking", False),
        ("datetime", "varchar(32)", "redshift", "breaking", False),
        ("date", "datetime", "redshift", "breaking", False),
        ("timestamp", "datetime", "redshift", "breaking", False),  # TIMESTAMPTZ -> TIMESTAMP
        ("json", "longtext", "redshift", "breaking", False),  # SUPER -> VARCHAR(65535)
        ("year", "smallint", "redshift", "breaking", True),  # both SMALLINT
        ("varchar(255)", "varchar(300)", None, "widening", None),  # no replica: nothing to fit
        ("decimal(65,30)", "decimal(65,31)", "redshift", "narrowing", None),  # no Redshift type for either
    ],
)
def test_retyped_column(
    before: str, after: str, dialect: str | None, classification: str, fits: bool | None
) -> None:
    diff = diff_schema(contract(col("c", before)), table(col("c", after)), dialect=dialect)
    assert [
        (c.column, c.kind, c.before, c.after, c.classification, c.replica_fits) for c in diff.changes
    ] == [("c", "retyped", before, after, classification, fits)]
    assert diff.has_drift
    assert not diff.additive_only
    assert diff.classification == classification


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(col("c", "int(11)"), col("c", "int"), id="display-width-gone-in-mysql-8"),
        pytest.param(col("c", "int(10) unsigned zerofill"), col("c", "int unsigned"), id="zerofill"),
        pytest.param(col("c", "tinyint(4)"), col("c", "tinyint(1)"), id="tinyint-width"),
        pytest.param(col("c", "decimal(10, 2)"), col("c", "decimal(10,2)"), id="spacing"),
        pytest.param(col("c", "datetime(0)"), col("c", "datetime"), id="datetime-0"),
        pytest.param(col("c", "json"), col("c", "longtext", data_type="json"), id="mariadb-json-is-longtext"),
        pytest.param(col("c", "varchar(255)", charset="latin1"), col("c", "varchar(255)"), id="charset"),
        pytest.param(col("c", "int", default="0"), col("c", "int", default="1"), id="default-changed"),
        pytest.param(col("c", "int"), col("c", "int", default="1"), id="default-added"),
        pytest.param(
            col("c", "int", default=None), col("c", "int", default="NULL"), id="mariadb-null-default"
        ),
        pytest.param(
            col("c", "timestamp"), col("c", "timestamp", extra="on update current_timestamp()"), id="extra"
        ),
    ],
)
def test_not_drift(before: SourceColumn, after: SourceColumn) -> None:
    diff = diff_schema(contract(before), table(after))
    assert diff == SchemaDiff(table="visits", primary_key_before=("id",), primary_key_after=("id",))
    assert not diff.has_drift
    assert diff.classification is None
    assert diff.summary == "no drift"
    assert diff.to_markdown() == "No drift: the live schema of `visits` matches its contract."


def test_retyped_notes_say_what_the_replica_has_and_needs() -> None:
    diff = diff_schema(
        contract(col("a", "varchar(255)"), col("b", "datetime")),
        table(col("a", "varchar(300)"), col("b", "datetime(6)")),
    )
    assert diff.changes == (
        ColumnChange(
            "a",
            "retyped",
            "varchar(255)",
            "varchar(300)",
            "widening",
            False,
            "the redshift column is VARCHAR(1020); the new type needs VARCHAR(1200)",
        ),
        ColumnChange(
            "b",
            "retyped",
            "datetime",
            "datetime(6)",
            "widening",
            True,
            "the redshift column TIMESTAMP holds it",
        ),
    )


def test_breaking_and_narrowing_retypes_explain_themselves() -> None:
    diff = diff_schema(
        contract(col("a", "varchar(32)"), col("b", "bigint")),
        table(col("a", "int"), col("b", "int")),
        dialect="postgresql",
    )
    assert [change.note for change in diff.changes] == [
        "different kind of type (text -> exact); the postgresql column is VARCHAR(32); the new type needs INTEGER",
        "some values the contract allowed do not fit the new type; the postgresql column BIGINT holds it",
    ]


def test_replica_settings_decide_whether_it_fits() -> None:
    # A column_types override is the replica type for both sides: VARCHAR(2000) holds 300 chars' worth.
    diff = diff_schema(
        contract(col("a", "varchar(255)")),
        table(col("a", "varchar(300)")),
        column_types={"a": "VARCHAR(2000)"},
    )
    assert diff.changes[0].replica_fits is True
    assert diff.changes[0].note == "the redshift column VARCHAR(2000) holds it"
    # A boolean column must stay a TINYINT; the error says what to change.
    diff = diff_schema(
        contract(col("flag", "tinyint(1)")), table(col("flag", "smallint")), boolean_columns={"flag"}
    )
    assert diff.changes[0].classification == "widening"
    assert diff.changes[0].replica_fits is False
    assert diff.changes[0].note.startswith(
        "no redshift type for the new type: replica.boolean_columns lists 'flag', but it is 'smallint'"
    )


def test_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="unknown warehouse dialect 'mysql'"):
        diff_schema(contract(), table(), dialect="mysql")


# --------------------------------------------------------------------------------------------------
# Added, dropped, nullability, default
# --------------------------------------------------------------------------------------------------

NOT_NULL_NOTE = (
    "NOT NULL without a default: existing rows got MySQL's implicit default, which the replica and "
    "earlier archive partitions do not have"
)


@pytest.mark.parametrize(
    ("added", "expected"),
    [
        (col("note", "text"), ColumnChange("note", "added", None, "text NULL", "additive")),
        (
            col("hits", "int", nullable=False, default="0"),
            ColumnChange("hits", "added", None, "int NOT NULL DEFAULT 0", "additive"),
        ),
        (
            col("seq", "int", nullable=False, extra="auto_increment"),
            ColumnChange("seq", "added", None, "int NOT NULL", "additive"),
        ),
        (
            col("total", "int", nullable=False, extra="STORED GENERATED"),
            ColumnChange("total", "added", None, "int NOT NULL", "additive"),
        ),
        (
            col("hits", "int", nullable=False),
            ColumnChange("hits", "added", None, "int NOT NULL", "breaking", note=NOT_NULL_NOTE),
        ),
        (
            col("hits", "int", nullable=False, default="NULL"),  # MariaDB's "no default"
            ColumnChange("hits", "added", None, "int NOT NULL", "breaking", note=NOT_NULL_NOTE),
        ),
    ],
)
def test_added_column(added: SourceColumn, expected: ColumnChange) -> None:
    diff = diff_schema(contract(), table(added))
    assert diff.changes == (expected,)
    assert diff.additive_only is (expected.classification == "additive")


@pytest.mark.parametrize(
    ("dropped", "primary_key", "expected"),
    [
        (
            col("amount", "decimal(10,2)"),
            ("id",),
            ColumnChange("amount", "dropped", "decimal(10,2) NULL", None, "breaking"),
        ),
        (
            col("kind", "varchar(8)", nullable=False, default="'web'"),
            ("id",),
            ColumnChange("kind", "dropped", "varchar(8) NOT NULL DEFAULT 'web'", None, "breaking"),
        ),
        (
            col("shard", "int", nullable=False),
            ("id", "shard"),
            ColumnChange(
                "shard", "dropped", "int NOT NULL", None, "breaking", note="part of the primary key"
            ),
        ),
    ],
)
def test_dropped_column(dropped: SourceColumn, primary_key: tuple[str, ...], expected: ColumnChange) -> None:
    diff = diff_schema(contract(dropped, primary_key=primary_key), table(primary_key=primary_key))
    assert diff.changes == (expected,)
    assert diff.classification == "breaking"


def test_dropped_time_column() -> None:
    live = SourceTable("visits", (ID,), ("id",))
    diff = diff_schema(contract(), live)
    assert diff.changes == (
        ColumnChange(
            "updated_at",
            "dropped",
            "datetime NOT NULL",
            None,
            "breaking",
            note="the time column: archive windows and incremental loads need it",
        ),
    )
    assert diff.warnings == ()  # the dropped column is the news, not its lost index


@pytest.mark.parametrize(
    ("before", "after", "primary_key", "expected"),
    [
        (
            col("c", "int", nullable=False),
            col("c", "int"),
            ("id",),
            ColumnChange(
                "c", "nullability", "NOT NULL", "NULL", "widening", note="the replica column must accept NULL"
            ),
        ),
        (
            col("c", "int", nullable=False),
            col("c", "int"),
            ("id", "c"),
            ColumnChange(
                "c",
                "nullability",
                "NOT NULL",
                "NULL",
                "breaking",
                note="a primary key column cannot hold NULL",
            ),
        ),
        (
            col("c", "int"),
            col("c", "int", nullable=False),
            ("id",),
            ColumnChange(
                "c",
                "nullability",
                "NULL",
                "NOT NULL",
                "narrowing",
                note="the source no longer accepts NULL; replicated and archived rows may still hold it",
            ),
        ),
        (
            col("c", "int", default="0"),
            col("c", "int"),
            ("id",),
            ColumnChange(
                "c",
                "default",
                "0",
                None,
                "narrowing",
                note="default dropped: rows written without this column now get NULL or fail",
            ),
        ),
        (
            col("c", "varchar(8)", default="'web'"),
            col("c", "varchar(8)", default="NULL"),  # MariaDB spells "no default" NULL
            ("id",),
            ColumnChange(
                "c",
                "default",
                "'web'",
                None,
                "narrowing",
                note="default dropped: rows written without this column now get NULL or fail",
            ),
        ),
    ],
)
def test_nullability_and_default(
    before: SourceColumn, after: SourceColumn, primary_key: tuple[str, ...], expected: ColumnChange
) -> None:
    diff = diff_schema(contract(before, primary_key=primary_key), table(after, primary_key=primary_key))
    assert diff.changes == (expected,)
    assert diff.primary_key_changed is False


def test_one_column_with_several_changes_reports_each() -> None:
    diff = diff_schema(
        contract(col("c", "varchar(255)", nullable=False, default="''")), table(col("c", "varchar(300)"))
    )
    assert [(c.kind, c.before, c.after, c.classification) for c in diff.changes] == [
        ("retyped", "varchar(255)", "varchar(300)", "widening"),
        ("nullability", "NOT NULL", "NULL", "widening"),
        ("default", "''", None, "narrowing"),
    ]
    assert diff.classification == "narrowing"
    assert diff.summary == (
        "1 column: retyped `c` varchar(255)->varchar(300) (widening, does not fit replica); "
        "nullability `c` NOT NULL->NULL (widening); dropped default '' of `c` (narrowing)"
    )


# --------------------------------------------------------------------------------------------------
# Renames, primary key, missing table
# --------------------------------------------------------------------------------------------------

HINT = "possibly renamed `amount` -> `amt`"


def test_rename_is_drop_plus_add_with_a_hint() -> None:
    diff = diff_schema(contract(col("amount", "decimal(10,2)")), table(col("amt", "decimal(10,2)")))
    assert diff.changes == (
        ColumnChange("amount", "dropped", "decimal(10,2) NULL", None, "breaking", note=HINT),
        ColumnChange("amt", "added", None, "decimal(10,2) NULL", "additive", note=HINT),
    )
    assert diff.rename_hints == (("amount", "amt"),)
    assert diff.summary == (
        "2 columns: dropped `amount` (breaking); added `amt` (additive); possibly renamed `amount` -> `amt`"
    )
    assert diff.to_markdown().endswith("\n\n- possibly renamed `amount` -> `amt`")
    assert not diff.additive_only


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param((col("amount", "decimal(10,2)"),), (col("amt", "decimal(12,2)"),), id="different-type"),
        pytest.param(
            (col("amount", "decimal(10,2)"), col("x", "int")),
            (col("x", "int"), col("amt", "decimal(10,2)")),
            id="different-position",
        ),
    ],
)
def test_no_rename_hint(before: tuple[SourceColumn, ...], after: tuple[SourceColumn, ...]) -> None:
    diff = diff_schema(contract(*before), table(*after))
    assert diff.rename_hints == ()
    assert [(c.column, c.kind, c.note) for c in diff.changes] == [
        ("amount", "dropped", ""),
        ("amt", "added", ""),
    ]


@pytest.mark.parametrize(
    ("before", "after"),
    [(("id",), ("id", "updated_at")), (("id", "updated_at"), ("updated_at", "id")), (("id",), ())],
)
def test_primary_key_change_is_breaking(before: tuple[str, ...], after: tuple[str, ...]) -> None:
    diff = diff_schema(contract(primary_key=before), table(primary_key=after))
    assert diff.changes == ()
    assert (diff.primary_key_before, diff.primary_key_after) == (before, after)
    assert diff.primary_key_changed
    assert diff.has_drift
    assert diff.classification == "breaking"
    assert not diff.additive_only
    assert diff.summary == f"primary key ({', '.join(before)})->({', '.join(after)}) (breaking)"
    assert diff.to_markdown().splitlines()[-1] == (
        f"| (primary key) | primary key | ({', '.join(before)}) | ({', '.join(after)}) | breaking |  |  |"
    )


def test_missing_table() -> None:
    diff = diff_schema(contract(col("amount", "decimal(10,2)")), None)
    assert diff == SchemaDiff(table="visits", primary_key_before=("id",), table_missing=True)
    assert diff.has_drift
    assert not diff.primary_key_changed
    assert diff.classification == "breaking"
    assert not diff.additive_only
    assert diff.blocks("evolve")
    assert diff.summary == "table `visits` no longer exists in the source (breaking)"
    assert diff.to_markdown() == "Table `visits` no longer exists in the source (breaking)."
    assert diff.to_dict()["table_missing"] is True


# --------------------------------------------------------------------------------------------------
# Policy, warnings, output
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("live", "additive_only", "blocks_block", "blocks_evolve"),
    [
        pytest.param(table(), False, False, False, id="no-drift"),
        pytest.param(table(col("note", "text")), True, True, False, id="added-nullable"),
        pytest.param(
            table(col("note", "text"), col("hits", "int", nullable=False, default="0")),
            True,
            True,
            False,
            id="two-additive",
        ),
        pytest.param(table(col("hits", "int", nullable=False)), False, True, True, id="added-not-null"),
        pytest.param(
            table(col("note", "text"), primary_key=("id", "updated_at")), False, True, True, id="plus-pk"
        ),
    ],
)
def test_additive_only_and_policy(
    live: SourceTable, additive_only: bool, blocks_block: bool, blocks_evolve: bool
) -> None:
    diff = diff_schema(contract(), live)
    assert diff.additive_only is additive_only
    assert diff.blocks("block") is blocks_block
    assert diff.blocks("evolve") is blocks_evolve


def test_additive_plus_widening_blocks_even_evolve() -> None:
    diff = diff_schema(contract(col("c", "int")), table(col("c", "bigint"), col("note", "text")))
    assert not diff.additive_only
    assert diff.blocks("evolve")


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown on_drift policy 'freeze'; expected 'block' or 'evolve'"):
        diff_schema(contract(), table()).blocks("freeze")


def test_lost_time_column_index_is_a_warning_not_drift() -> None:
    diff = diff_schema(contract(), table(indexed=False))
    assert not diff.has_drift
    assert diff.warnings == (
        "time column `updated_at` is no longer indexed: every archive window and incremental load now "
        "scans the whole table",
    )
    assert diff.to_markdown() == (
        "No drift: the live schema of `visits` matches its contract.\n"
        "\n"
        "- warning: time column `updated_at` is no longer indexed: every archive window and incremental "
        "load now scans the whole table"
    )


def test_summary_markdown_and_dict_of_a_mixed_diff() -> None:
    diff = diff_schema(
        contract(
            col("name", "varchar(255)"), col("amount", "decimal(10,2)"), col("hits", "int", nullable=False)
        ),
        table(
            col("name", "varchar(300)"),
            col("amount", "decimal(12,2)"),
            col("hits", "int"),
            col("note", "text"),
            primary_key=("id", "updated_at"),
        ),
    )
    assert diff.summary == (
        "4 columns: retyped `name` varchar(255)->varchar(300) (widening, does not fit replica); "
        "retyped `amount` decimal(10,2)->decimal(12,2) (widening, does not fit replica); "
        "nullability `hits` NOT NULL->NULL (widening); added `note` (additive); "
        "primary key (id)->(id, updated_at) (breaking)"
    )
    assert diff.to_markdown() == "\n".join(
        [
            "| column | change | contract | live | classification | replica | note |",
            "|---|---|---|---|---|---|---|",
            "| `name` | retyped | varchar(255) | varchar(300) | widening | does not fit | "
            "the redshift column is VARCHAR(1020); the new type needs VARCHAR(1200) |",
            "| `amount` | retyped | decimal(10,2) | decimal(12,2) | widening | does not fit | "
            "the redshift column is DECIMAL(10,2); the new type needs DECIMAL(12,2) |",
            "| `hits` | nullability | NOT NULL | NULL | widening |  | the replica column must accept NULL |",
            "| `note` | added |  | text NULL | additive |  |  |",
            "| (primary key) | primary key | (id) | (id, updated_at) | breaking |  |  |",
        ]
    )
    data = diff.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "table": "visits",
        "has_drift": True,
        "classification": "breaking",
        "additive_only": False,
        "table_missing": False,
        "summary": diff.summary,
        "primary_key": {"before": ["id"], "after": ["id", "updated_at"]},
        "changes": [
            {
                "column": "name",
                "kind": "retyped",
                "before": "varchar(255)",
                "after": "varchar(300)",
                "classification": "widening",
                "replica_fits": False,
                "note": "the redshift column is VARCHAR(1020); the new type needs VARCHAR(1200)",
            },
            {
                "column": "amount",
                "kind": "retyped",
                "before": "decimal(10,2)",
                "after": "decimal(12,2)",
                "classification": "widening",
                "replica_fits": False,
                "note": "the redshift column is DECIMAL(10,2); the new type needs DECIMAL(12,2)",
            },
            {
                "column": "hits",
                "kind": "nullability",
                "before": "NOT NULL",
                "after": "NULL",
                "classification": "widening",
                "replica_fits": None,
                "note": "the replica column must accept NULL",
            },
            {
                "column": "note",
                "kind": "added",
                "before": None,
                "after": "text NULL",
                "classification": "additive",
                "replica_fits": None,
                "note": "",
            },
        ],
        "rename_hints": [],
        "warnings": [],
    }


def test_markdown_escapes_pipes_and_backticks_in_names() -> None:
    diff = diff_schema(contract(), table(col("a|b", "text"), col("x`y", "text")))
    rows = diff.to_markdown().splitlines()[2:]
    assert rows == [
        "| `a\\|b` | added |  | text NULL | additive |  |  |",
        "| `` x`y `` | added |  | text NULL | additive |  |  |",
    ]
    assert diff.summary == "2 columns: added `a|b` (additive); added `` x`y `` (additive)"


def test_added_columns_follow_live_order_after_contract_columns() -> None:
    diff = diff_schema(
        contract(col("a", "int")),
        SourceTable(
            "visits",
            (col("z", "text"), ID, col("y", "text"), UPDATED_AT),
            ("id",),
            indexed_columns=("updated_at",),
        ),
    )
    assert [(c.column, c.kind) for c in diff.changes] == [("a", "dropped"), ("z", "added"), ("y", "added")]


# --------------------------------------------------------------------------------------------------
# Replica vs contract DDL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "dialect", "expected"),
    [
        ("character varying(1020)", None, "varchar(1020)"),
        ("VARCHAR(1020)", None, "varchar(1020)"),
        ("  Character   Varying ( 12 ) ", None, "varchar(12)"),
        ("nvarchar(10)", None, "varchar(10)"),
        ("VARCHAR", None, "varchar"),
        ("string", None, "varchar"),
        ("character(10)", None, "char(10)"),
        ("bpchar(10)", None, "char(10)"),
        ("character", None, "char(1)"),
        ("text", None, "text"),
        ("text", "postgresql", "text"),
        ("text", "redshift", "varchar(256)"),
        ("varchar", "redshift", "varchar(256)"),
        ("varchar(10)", "redshift", "varchar(10)"),
        ("numeric(20,0)", None, "decimal(20,0)"),
        ("NUMERIC(20, 0)", None, "decimal(20,0)"),
        ("DECIMAL(20,0)", None, "decimal(20,0)"),
        ("numeric(12)", None, "decimal(12,0)"),
        ("numeric", None, "decimal"),
        ("int2", None, "smallint"),
        ("SMALLINT", None, "smallint"),
        ("int", None, "integer"),
        ("int4", None, "integer"),
        ("INTEGER", None, "integer"),
        ("int8", None, "bigint"),
        ("BIGINT", None, "bigint"),
        ("UBIGINT", None, "ubigint"),
        ("HUGEINT", None, "hugeint"),
        ("float4", None, "real"),
        ("REAL", None, "real"),
        ("FLOAT", "duckdb", "real"),
        ("FLOAT", None, "real"),
        ("float", "postgresql", "double precision"),
        ("float", "redshift", "double precision"),
        ("float(24)", "postgresql", "real"),
        ("float(25)", None, "double precision"),
        ("float8", None, "double precision"),
        ("DOUBLE", None, "double precision"),
        ("double precision", None, "double precision"),
        ("bool", None, "boolean"),
        ("BOOLEAN", None, "boolean"),
        ("timestamp", None, "timestamp"),
        ("timestamp without time zone", None, "timestamp"),
        ("timestamp(3) without time zone", None, "timestamp(3)"),
        ("TIMESTAMPTZ", None, "timestamptz"),
        ("timestamp with time zone", None, "timestamptz"),
        ("TIMESTAMP WITH TIME ZONE", None, "timestamptz"),
        ("time without time zone", None, "time"),
        ("timetz", None, "timetz"),
        ("time with time zone", None, "timetz"),
        ("date", None, "date"),
        ("interval", None, "interval"),
        ("INTERVAL DAY TO SECOND", None, "interval day to second"),
        ("bytea", None, "bytea"),
        ("BLOB", None, "bytea"),
        ("binary varying(65535)", None, "varbyte(65535)"),
        ("VARBYTE(65535)", None, "varbyte(65535)"),
        ("jsonb", None, "jsonb"),
        ("JSON", None, "json"),
        ("SUPER", None, "super"),
        ("integer[]", None, "integer[]"),
    ],
)
def test_normalize_sql_type(text: str, dialect: str | None, expected: str) -> None:
    assert normalize_sql_type(text, dialect=dialect) == expected


@pytest.mark.parametrize(
    ("dialect", "reported"),
    [
        # What format_type() reports on PostgreSQL/Redshift, for the types the contract's DDL declares.
        (
            "redshift",
            {
                "id": "numeric(20,0)",
                "name": "character varying(1020)",
                "amount": "numeric(10,2)",
                "payload": "super",
                "seen_at": "timestamp with time zone",
                "ratio": "double precision",
                "updated_at": "timestamp without time zone",
            },
        ),
        (
            "postgresql",
            {
                "id": "numeric(20,0)",
                "name": "character varying(255)",
                "amount": "numeric(10,2)",
                "payload": "jsonb",
                "seen_at": "timestamp with time zone",
                "ratio": "double precision",
                "updated_at": "timestamp without time zone",
            },
        ),
    ],
)
def test_contract_ddl_matches_what_the_warehouse_reports(dialect: Dialect, reported: dict[str, str]) -> None:
    source = table(
        col("name", "varchar(255)"),
        col("amount", "decimal(10,2)"),
        col("payload", "json"),
        col("seen_at", "timestamp"),
        col("ratio", "double"),
    )
    expected = warehouse_types(source, dialect)
    diff = diff_replica(expected, reported, dialect=dialect)
    assert diff == ReplicaDiff()
    assert not diff.has_drift
    assert diff.summary == "replica matches the contract"
    assert diff.to_markdown() == "No drift: the replica's columns match the contract's DDL."


def test_contract_ddl_matches_a_real_duckdb_table() -> None:
    source = table(
        col("name", "varchar(255)"),
        col("amount", "decimal(10,2)"),
        col("payload", "json"),
        col("seen_at", "timestamp"),
        col("ratio", "float"),
        col("small", "tinyint"),
        col("blob", "blob"),
        col("flag", "bit(1)"),
        col("span", "time"),
    )
    expected = warehouse_types(source, "duckdb")
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE visits ("
        + ", ".join(f'"{name}" {sql_type}' for name, sql_type in expected.items())
        + ")"
    )
    reported = dict(
        connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'visits' "
            "ORDER BY ordinal_position"
        ).fetchall()
    )
    assert reported["seen_at"] == "TIMESTAMP WITH TIME ZONE"  # the spelling normalization must absorb
    assert diff_replica(expected, reported, dialect="duckdb") == ReplicaDiff()


def test_replica_missing_extra_and_retyped_columns() -> None:
    diff = diff_replica(
        {
            "id": "BIGINT",
            "name": "VARCHAR(1200)",
            "amount": "DECIMAL(12,2)",
            "kind": "INTEGER",
            "note": "SUPER",
        },
        {
            "legacy": "character varying(10)",
            "id": "bigint",
            "name": "character varying(1020)",
            "amount": "numeric(18,2)",
            "kind": "character varying(16)",
        },
        dialect="redshift",
    )
    assert diff.changes == (
        ColumnChange(
            "name",
            "retyped",
            "varchar(1200)",
            "varchar(1020)",
            "narrowing",
            False,
            "the replica column is too narrow",
        ),
        ColumnChange(
            "amount",
            "retyped",
            "decimal(12,2)",
            "decimal(18,2)",
            "widening",
            True,
            "the replica column is wider than the DDL's",
        ),
        ColumnChange(
            "kind",
            "retyped",
            "integer",
            "varchar(16)",
            "breaking",
            False,
            "the replica column is another kind of type",
        ),
        ColumnChange("note", "missing", "super", None, "breaking", None, "the replica has no such column"),
        ColumnChange(
            "legacy",
            "extra",
            None,
            "varchar(10)",
            "additive",
            None,
            "not in the contract: loads leave it NULL",
        ),
    )
    assert diff.has_drift
    assert diff.summary == (
        "replica: retyped `name` varchar(1200)->varchar(1020) (narrowing, does not fit replica); "
        "retyped `amount` decimal(12,2)->decimal(18,2) (widening, fits replica); "
        "retyped `kind` integer->varchar(16) (breaking, does not fit replica); "
        "missing `note` (breaking); extra `legacy` (additive)"
    )
    assert diff.to_markdown() == "\n".join(
        [
            "| column | change | contract DDL | replica | classification | fits | note |",
            "|---|---|---|---|---|---|---|",
            "| `name` | retyped | varchar(1200) | varchar(1020) | narrowing | does not fit | the replica column is too narrow |",
            "| `amount` | retyped | decimal(12,2) | decimal(18,2) | widening | fits | the replica column is wider than the DDL's |",
            "| `kind` | retyped | integer | varchar(16) | breaking | does not fit | the replica column is another kind of type |",
            "| `note` | missing | super |  | breaking |  | the replica has no such column |",
            "| `legacy` | extra |  | varchar(10) | additive |  | not in the contract: loads leave it NULL |",
        ]
    )
    data = diff.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["has_drift"] is True
    assert [change["column"] for change in data["changes"]] == ["name", "amount", "kind", "note", "legacy"]


def test_replica_names_match_case_insensitively_when_folded() -> None:
    # Redshift folds identifiers to lowercase: the source's CreatedAt is createdat there.
    diff = diff_replica(
        {"CreatedAt": "TIMESTAMP", "id": "BIGINT"}, {"createdat": "timestamp without time zone", "id": "int8"}
    )
    assert diff == ReplicaDiff()


def test_replica_exact_name_wins_over_a_folded_one() -> None:
    diff = diff_replica({"a": "INTEGER", "A": "INTEGER"}, {"a": "integer"})
    assert [(c.column, c.kind) for c in diff.changes] == [("A", "missing")]


def test_replica_unbounded_text_holds_a_declared_length() -> None:
    diff = diff_replica({"name": "VARCHAR(255)"}, {"name": "text"}, dialect="postgresql")
    assert [(c.kind, c.before, c.after, c.classification, c.replica_fits) for c in diff.changes] == [
        ("retyped", "varchar(255)", "text", "widening", True)
    ]


def test_redshift_text_is_varchar_256() -> None:
    # A `column_types: {note: TEXT}` override on Redshift creates VARCHAR(256), which is what it reports.
    assert (
        diff_replica({"note": "TEXT"}, {"note": "character varying(256)"}, dialect="redshift")
        == ReplicaDiff()
    )
