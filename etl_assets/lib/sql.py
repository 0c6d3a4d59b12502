"""SQL text for the replica: schema and table DDL, staging tables, the merge, Redshift COPY.

Only text is built here; resources run it. Every identifier goes through `quote_identifier`, which
always double-quotes (Redshift, PostgreSQL and DuckDB share the rule: `"` inside a name is doubled),
so a schema-qualified name is two identifiers, `"staging"."visits"`, never `"staging.visits"` (the
AWS Data Pipeline script's bug that confined it to `public`). String literals go through
`quote_literal`, and the few literals we emit (S3 URL, IAM role, region) are validated first.

The load is "stage, then merge in one transaction": the staging table is a temporary copy of the
target, filled by COPY, then `merge_sql` moves its rows into the target according to `insert_mode`.
Every mode except `append` is idempotent, so a retried load never duplicates rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, get_args

from sqlalchemy.dialects import postgresql

from etl_assets.lib.schema import SourceColumn, SourceTable
from etl_assets.lib.typemap import Dialect, check_dialect, warehouse_type, warehouse_types

InsertMode = Literal["overwrite_existing", "keep_existing", "truncate", "append"]
"""`replica.insert_mode`, AWS Data Pipeline's RedshiftCopyActivity modes."""

INSERT_MODES: tuple[InsertMode, ...] = get_args(InsertMode)

# All three dialects quote like PostgreSQL; its preparer is the reference implementation. It is built
# with a non-percent paramstyle: the default (pyformat) preparer doubles every '%' in a name, which
# is right only for text later run through a driver's %-interpolation, and we hand out final SQL.
_PREPARER = postgresql.dialect(paramstyle="named").identifier_preparer

# Longest identifier each warehouse keeps. PostgreSQL silently truncates longer names (two long
# column names could then collide), so refuse them with a message instead. Redshift: 127 bytes.
_MAX_IDENTIFIER_BYTES: dict[Dialect, int | None] = {"redshift": 127, "postgresql": 63, "duckdb": None}

# Alias of the ROW_NUMBER() column used to keep one staged row per key.
_ROW_NUMBER = "__etl_row_number"

# Redshift's DISTKEY/SORTKEY cannot be SUPER columns.
_NOT_KEYABLE = frozenset({"SUPER"})


def quote_identifier(name: str, dialect: Dialect = "redshift") -> str:
    """`name` as a double-quoted identifier, embedded `"` doubled, whatever characters it has.

    Args:
        name: a schema, table or column name exactly as it should appear in the warehouse.
        dialect: decides the length limit (PostgreSQL 63 bytes, Redshift 127, DuckDB none).

    Raises:
        ValueError: empty name, a NUL character, or longer than the warehouse keeps.
    """
    dialect = check_dialect(dialect)
    if not name:
        raise ValueError("an empty string is not a valid SQL identifier")
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL character, which no warehouse accepts")
    limit = _MAX_IDENTIFIER_BYTES[dialect]
    if limit is not None and len(name.encode("utf-8")) > limit:
        raise ValueError(
            f"identifier {name!r} is {len(name.encode('utf-8'))} bytes; {dialect} keeps only {limit} "
            "and would silently truncate it; rename it in the source or map it to a shorter target name"
        )
    return _PREPARER.quote_identifier(name)


def quote_literal(value: str) -> str:
    """`value` as a SQL string literal: single quotes doubled.

    Raises:
        ValueError: the value has a backslash or a control character. Redshift processes backslash
            escapes inside literals, so doubling quotes alone would not make them safe.
    """
    if "\\" in value or any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{value!r} contains a backslash or control character; refusing to put it in SQL")
    return "'" + value.replace("'", "''") + "'"


def qualified(schema: str, table: str, dialect: Dialect = "redshift") -> str:
    """`"schema"."table"`: two quoted identifiers joined by a dot.

    Args:
        schema: the warehouse schema, e.g. `staging`.
        table: the table name.
        dialect: the warehouse dialect.
    """
    return f"{quote_identifier(schema, dialect)}.{quote_identifier(table, dialect)}"


def _column_list(names: Iterable[str], dialect: Dialect, prefix: str = "") -> str:
    return ", ".join(prefix + quote_identifier(name, dialect) for name in names)


def create_schema_sql(schema: str, dialect: Dialect = "redshift") -> str:
    """`CREATE SCHEMA IF NOT EXISTS "schema"`."""
    return f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema, dialect)}"


def create_table_sql(
    table: SourceTable,
    *,
    schema: str,
    target_name: str,
    dialect: Dialect,
    boolean_columns: Iterable[str] = (),
    column_types: Mapping[str, str] | None = None,
    distkey: str | None = None,
    sortkey: Sequence[str] | None = None,
    time_column: str | None = None,
) -> str:
    """`CREATE TABLE IF NOT EXISTS` for the replica of `table`.

    Columns get the type map's types and `NOT NULL` where the source has it; the whole primary key
    (every column of a composite key) becomes the PRIMARY KEY. On Redshift the table is
    `DISTSTYLE KEY DISTKEY (distkey or first key column)` and `COMPOUND SORTKEY (sortkey or the time
    column)`; without a key or a time column Redshift's AUTO defaults apply. Source defaults and
    column comments are left out: replica values always come from the source, and the DP script's
    COMMENT clauses were what broke its DDL.

    Args:
        table: the reflected source table.
        schema: the warehouse schema.
        target_name: the replica table name (normally the source table's name).
        dialect: `redshift`, `postgresql` or `duckdb`.
        boolean_columns: `replica.boolean_columns` (TINYINT columns loaded as BOOLEAN).
        column_types: `replica.column_types` overrides.
        distkey: `replica.distkey`; default the first primary-key column.
        sortkey: `replica.sortkey`; default `[time_column]`.
        time_column: the table's time column, the default sort key.

    Raises:
        ValueError: a setting names a missing column, two column names collide in a warehouse that
            folds case, a SUPER column is made a Redshift key, or the table has no columns.
        UnsupportedTypeError: a column has no warehouse type; the message names the fix.
    """
    dialect = check_dialect(dialect)
    if not table.columns:
        raise ValueError(f"table '{table.name}' has no columns to replicate")
    _check_case_collisions(table.column_names, dialect, table.name)
    types = warehouse_types(table, dialect, boolean_columns=boolean_columns, column_types=column_types)

    lines = [
        f"    {quote_identifier(column.name, dialect)} {types[column.name]}{'' if column.nullable else ' NOT NULL'}"
        for column in table.columns
    ]
    primary_key = _known_columns(table, table.primary_key, "primary_key")
    if primary_key:
        lines.append(f"    PRIMARY KEY ({_column_list(primary_key, dialect)})")
    sql = (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, target_name, dialect)} (\n"
        + ",\n".join(lines)
        + "\n)"
    )

    # Resolve keys for every dialect so a bad setting fails the same way on the local stand-ins.
    dist = (
        _known_columns(table, [distkey], "distkey")[0]
        if distkey
        else (primary_key[0] if primary_key else None)
    )
    if sortkey:
        sort = _known_columns(table, sortkey, "sortkey")
    elif time_column:
        sort = _known_columns(table, [time_column], "time_column")
    else:
        sort = []
    if dialect != "redshift":
        return sql
    for setting, names in (("distkey", [dist] if dist else []), ("sortkey", sort)):
        for name in names:
            if types[name].upper() in _NOT_KEYABLE:
                raise ValueError(
                    f"replica.{setting} of table '{table.name}' is '{name}', a {types[name]} column; "
                    f"Redshift cannot distribute or sort on {types[name]}: choose another column"
                )
    if dist:
        sql += f"\nDISTSTYLE KEY\nDISTKEY ({quote_identifier(dist, dialect)})"
    if sort:
        sql += f"\nCOMPOUND SORTKEY ({_column_list(sort, dialect)})"
    return sql


def _known_columns(table: SourceTable, names: Iterable[str], setting: str) -> list[str]:
    names = list(names)
    unknown = [name for name in names if not table.has_column(name)]
    if unknown:
        raise ValueError(
            f"{setting} of table '{table.name}' names {', '.join(repr(n) for n in unknown)}, which the "
            f"table does not have; its columns are: {', '.join(table.column_names)}"
        )
    return names


def _check_case_collisions(names: Iterable[str], dialect: Dialect, table_name: str) -> None:
    # Redshift lowercases even quoted identifiers unless enable_case_sensitive_identifier is on, and
    # DuckDB matches identifiers case-insensitively: `userId` and `userid` would be one column.
    if dialect == "postgresql":
        return
    seen: dict[str, str] = {}
    for name in names:
        folded = name.lower()
        if folded in seen:
            raise ValueError(
                f"table '{table_name}' has columns '{seen[folded]}' and '{name}', which are the same name "
                f"in {dialect} (it ignores case); exclude or rename one of them"
            )
        seen[folded] = name


def staging_table_name(target_name: str) -> str:
    """A temporary staging table name for `target_name`: `stage_<name>`, shortened to fit 63 bytes.

    Shortened names end in a digest of the full name so two long targets never share a stage.
    """
    name = f"stage_{target_name}"
    if len(name.encode("utf-8")) <= 63:
        return name
    digest = hashlib.sha256(target_name.encode("utf-8")).hexdigest()[:10]
    prefix = name.encode("utf-8")[:52].decode("utf-8", errors="ignore")
    return f"{prefix}_{digest}"


def create_staging_sql(*, staging: str, schema: str, table: str, dialect: Dialect) -> str:
    """A temporary, empty table with the target's columns, for COPY to fill.

    Redshift: `CREATE TEMP TABLE "stage" (LIKE "s"."t")` (keeps types and dist/sort keys).
    PostgreSQL: `... (LIKE "s"."t" INCLUDING DEFAULTS) ON COMMIT DROP`: create, fill and merge in the
    one load transaction; the table disappears at commit or rollback.
    DuckDB: `CREATE OR REPLACE TEMP TABLE "stage" AS SELECT * FROM "s"."t" LIMIT 0`.
    None of them copies the primary key, so duplicate staged keys cannot fail the COPY; the merge
    keeps one row per key.

    Args:
        staging: the staging table name (see `staging_table_name`).
        schema: the target's schema.
        table: the target table.
        dialect: `redshift`, `postgresql` or `duckdb`.
    """
    dialect = check_dialect(dialect)
    stage = quote_identifier(staging, dialect)
    target = qualified(schema, table, dialect)
    if dialect == "redshift":
        return f"CREATE TEMP TABLE {stage} (LIKE {target})"
    if dialect == "postgresql":
        return f"CREATE TEMP TABLE {stage} (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP"
    return f"CREATE OR REPLACE TEMP TABLE {stage} AS SELECT * FROM {target} LIMIT 0"


def drop_staging_sql(*, staging: str, dialect: Dialect) -> str:
    """`DROP TABLE IF EXISTS "stage"`: Redshift and DuckDB keep temp tables until the session ends."""
    return f"DROP TABLE IF EXISTS {quote_identifier(staging, dialect)}"


def merge_sql(
    *,
    schema: str,
    table: str,
    staging: str,
    columns: Sequence[str],
    primary_key: Sequence[str],
    insert_mode: InsertMode,
    dialect: Dialect,
    dedupe_order_by: Sequence[str] = (),
) -> list[str]:
    """Statements that move the staged rows into the target; run them in ONE transaction.

    * `overwrite_existing` (upsert): `DELETE FROM target USING stage WHERE <all key columns equal>`,
      then insert every staged row.
    * `keep_existing`: insert the staged rows whose key is not in the target (`NOT EXISTS`).
    * `truncate`: `DELETE FROM target` (not TRUNCATE, which commits implicitly on Redshift and would
      expose an empty table if the insert failed), then insert every staged row.
    * `append`: insert every staged row. Not idempotent: a retry after a commit appends again.

    With a primary key, the insert keeps one staged row per key (`ROW_NUMBER() OVER (PARTITION BY key
    ORDER BY dedupe_order_by DESC)`), so a row read twice during extraction cannot be loaded twice:
    Redshift does not enforce primary keys. Keys are NOT NULL, so plain `=` matches them.

    Args:
        schema: the target's schema.
        table: the target table.
        staging: the filled staging table.
        columns: the columns to copy, in order (staging and target both have them).
        primary_key: the key columns (all of them, for a composite key); may be empty for
            `truncate` and `append`.
        insert_mode: see above.
        dialect: `redshift`, `postgresql` or `duckdb`.
        dedupe_order_by: among staged rows with the same key, the one with the highest values of
            these columns wins (normally the time column); otherwise an arbitrary one.

    Returns:
        The statements in order. The last one is always the INSERT; when there are two, the first is
        the DELETE, whose row count is the rows replaced (`overwrite_existing`) or removed
        (`truncate`). Inserted-new = insert count - replaced count.

    Raises:
        ValueError: unknown insert mode, a mode that needs a key without one, key or order columns not
            among `columns`, duplicate columns, or the staging table named like the target.
    """
    dialect = check_dialect(dialect)
    if insert_mode not in INSERT_MODES:
        raise ValueError(f"unknown insert_mode {insert_mode!r}; expected one of {', '.join(INSERT_MODES)}")
    columns, primary_key = list(columns), list(primary_key)
    if not columns:
        raise ValueError(f"no columns to merge into '{schema}.{table}'")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns for '{schema}.{table}' repeat a name: {columns}")
    missing = [name for name in [*primary_key, *dedupe_order_by] if name not in columns]
    if missing:
        raise ValueError(
            f"key/order columns {missing} of '{schema}.{table}' are not among the merged columns {columns}"
        )
    if _ROW_NUMBER in columns:
        raise ValueError(f"column name '{_ROW_NUMBER}' is reserved for the merge; rename the column")
    if staging == table:
        raise ValueError(f"the staging table must not be named like the target '{table}'")
    if insert_mode in ("overwrite_existing", "keep_existing") and not primary_key:
        raise ValueError(
            f"insert_mode {insert_mode} of '{schema}.{table}' matches rows by primary key, and the table has "
            "none; set the table's primary_key in the config, or use insert_mode truncate or append"
        )

    target = qualified(schema, table, dialect)
    # Inside DELETE ... USING the target is referred to by its bare table name (Redshift's DELETE
    # takes no alias); that is unambiguous because the staging table has a different name.
    target_ref = quote_identifier(table, dialect)
    stage = quote_identifier(staging, dialect)
    column_list = _column_list(columns, dialect)

    if insert_mode == "append" or not primary_key:
        source = f"SELECT {column_list} FROM {stage}"
    else:
        order = ", ".join(
            f"{quote_identifier(name, dialect)} DESC NULLS LAST" for name in dedupe_order_by
        ) or _column_list(primary_key, dialect)
        src_columns = _column_list(columns, dialect, prefix='"src".')
        source = (
            f"SELECT {src_columns} FROM ("
            f"SELECT {column_list}, ROW_NUMBER() OVER (PARTITION BY {_column_list(primary_key, dialect)} "
            f"ORDER BY {order}) AS {quote_identifier(_ROW_NUMBER, dialect)} FROM {stage}"
            f') AS "src" WHERE "src".{quote_identifier(_ROW_NUMBER, dialect)} = 1'
        )
    insert = f"INSERT INTO {target} ({column_list}) {source}"

    if insert_mode == "overwrite_existing":
        match = " AND ".join(
            f"{target_ref}.{quote_identifier(name, dialect)} = {stage}.{quote_identifier(name, dialect)}"
            for name in primary_key
        )
        return [f"DELETE FROM {target} USING {stage} WHERE {match}", insert]
    if insert_mode == "keep_existing":
        match = " AND ".join(
            f'"dst".{quote_identifier(name, dialect)} = "src".{quote_identifier(name, dialect)}'
            for name in primary_key
        )
        return [f'{insert} AND NOT EXISTS (SELECT 1 FROM {target} AS "dst" WHERE {match})']
    if insert_mode == "truncate":
        return [f"DELETE FROM {target}", insert]
    return [insert]


_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@/\-]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


def redshift_copy_sql(
    *,
    staging_table: str,
    s3_prefix_or_manifest: str,
    iam_role: str,
    region: str | None = None,
    manifest: bool = False,
    serialize_to_json: bool = False,
) -> str:
    """`COPY "stage" FROM 's3://...' IAM_ROLE '...' FORMAT AS PARQUET` for a Redshift load.

    Parquet columns are matched by position, so the staged files must have the table's columns in
    table order.

    Args:
        staging_table: the temporary staging table (unqualified: temp tables have no schema).
        s3_prefix_or_manifest: `s3://bucket/prefix/` (every object under it is loaded) or, with
            `manifest=True`, the `s3://.../x.manifest` file listing the exact objects.
        iam_role: the role ARN Redshift assumes (`arn:aws:iam::123456789012:role/name`), a chain of
            them separated by commas, or `default` for the cluster's default role.
        region: the bucket's region when it differs from the cluster's.
        manifest: load the objects listed in a manifest instead of a prefix.
        serialize_to_json: add SERIALIZETOJSON; needed when the table has SUPER (JSON) columns.

    Raises:
        ValueError: the URL is not `s3://bucket[/key]`, the role is not an IAM role ARN, or the
            region is not a region name.
    """
    if not _S3_URL.match(s3_prefix_or_manifest):
        raise ValueError(
            f"COPY source {s3_prefix_or_manifest!r} is not an S3 URL; expected s3://bucket/prefix "
            "(warehouse.staging_url)"
        )
    if iam_role == "default":
        role = "default"  # a keyword, not a literal
    else:
        for arn in re.split(r",(?=arn:)", iam_role):
            if not _ROLE_ARN.match(arn):
                raise ValueError(
                    f"warehouse.iam_role {iam_role!r} is not an IAM role ARN; expected "
                    "arn:aws:iam::<12-digit account>:role/<name> (or 'default')"
                )
        role = quote_literal(iam_role)
    parts = [
        f"COPY {quote_identifier(staging_table, 'redshift')}",
        f"FROM {quote_literal(s3_prefix_or_manifest)}",
        f"IAM_ROLE {role}",
        "FORMAT AS PARQUET",
    ]
    if serialize_to_json:
        parts.append("SERIALIZETOJSON")
    if manifest:
        parts.append("MANIFEST")
    if region is not None:
        if not _REGION.match(region):
            raise ValueError(f"region {region!r} is not an AWS region name such as us-east-1")
        parts.append(f"REGION {quote_literal(region)}")
    return "\n".join(parts)


def add_column_sql(
    schema: str,
    table: str,
    column: SourceColumn,
    dialect: Dialect,
    *,
    boolean: bool = False,
    override: str | None = None,
) -> str:
    """`ALTER TABLE "s"."t" ADD COLUMN "c" <type>` for a column the source gained (drift `evolve`).

    The column is always nullable: rows already in the replica have no value for it (and Redshift
    refuses NOT NULL without a DEFAULT). PostgreSQL and DuckDB get `IF NOT EXISTS`, so a repeated
    evolve is harmless; Redshift has no such clause, so check the replica's columns first there.

    Args:
        schema: the replica's schema.
        table: the replica table.
        column: the new source column.
        dialect: `redshift`, `postgresql` or `duckdb`.
        boolean: the column is in `replica.boolean_columns`.
        override: the column's `replica.column_types` entry.

    Raises:
        UnsupportedTypeError: the column has no warehouse type; the message names the fix.
    """
    dialect = check_dialect(dialect)
    sql_type = warehouse_type(column, dialect, boolean=boolean, override=override)
    if_not_exists = "" if dialect == "redshift" else "IF NOT EXISTS "
    return (
        f"ALTER TABLE {qualified(schema, table, dialect)} "
        f"ADD COLUMN {if_not_exists}{quote_identifier(column.name, dialect)} {sql_type}"
    )
