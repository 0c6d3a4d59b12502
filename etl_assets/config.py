"""The one YAML file that configures etl-assets: find it, validate it, and apply defaults per table.

Lookup order: `$ETL_ASSETS_CONFIG`, then `./etl_assets.yaml`, then the bundled demo config.
`${VAR}` / `${VAR:-default}` references stay unresolved here; resources resolve them when a run
needs the value (see `lib/envvars.py`), so nothing secret reaches the UI.

Every error names the file, the key (`tables[1].archive.retention`) and what would be valid.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from etl_assets.lib import envvars
from etl_assets.lib.windows import Period, parse_period

CONFIG_ENV_VAR = "ETL_ASSETS_CONFIG"
LOCAL_CONFIG_NAME = "etl_assets.yaml"
DEMO_CONFIG_PATH = Path(__file__).parent / "demo" / "etl_assets.yaml"

# Names we accept for tables, columns and schemas in config. Unicode letters, digits, `_`, `$`,
# spaces and `-` are fine (SQLAlchemy quotes them); quotes, backticks, semicolons, dots and control
# characters never are: no legitimate MySQL name needs them and they are how injection starts.
_IDENTIFIER = re.compile(r"^[^\W\d][\w$ -]{0,63}$")
_IDENTIFIER_HINT = (
    "use letters, digits, '_', '$', '-' or spaces (at most 64 characters, not starting with a digit); "
    "quotes, backticks, semicolons and dots are never accepted"
)
WAREHOUSE_SCHEMES = ("redshift+redshift_connector", "redshift+psycopg2", "postgresql+psycopg", "duckdb")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(Exception):
    """The configuration file is missing or invalid; the message says where and how to fix it."""


def check_identifier(value: str, what: str = "name") -> str:
    """Validate a table, column or schema name from config (raises ValueError with the fix)."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or value != value.strip():
        raise ValueError(f"{value!r} is not an acceptable {what}; {_IDENTIFIER_HINT}")
    return value


Identifier = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_template_syntax(value: str) -> str:
    try:
        envvars.check_template(value)
    except envvars.TemplateError as exc:
        raise ValueError(str(exc)) from None
    return value


class SourceConfig(_Model):
    """The MySQL database that is archived and replicated."""

    url: str = Field(description="SQLAlchemy URL, e.g. mysql+pymysql://user:${DB_PASSWORD}@host:3306/clinic")
    name: str | None = Field(
        default=None, description="Name of the source database in the UI (asset group); default from the URL"
    )
    lock_timeout_seconds: float = Field(default=0, ge=0, description="How long a run waits for the table lock")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _check_template_syntax(value)
        prefix = envvars.static_prefix(value)
        if "://" in prefix and not re.match(r"^[a-z][a-z0-9+]*://", prefix):
            raise ValueError(
                f"'{prefix.split('://')[0]}' is not a SQLAlchemy URL scheme; "
                "use mysql+pymysql://user:password@host:3306/database or sqlite:///path.db"
            )
        if not envvars.is_template(value) and "://" not in value:
            raise ValueError(
                f"'{value}' is not a database URL; use mysql+pymysql://user:password@host:3306/database "
                "or sqlite:///path.db"
            )
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, "source name")

    @property
    def group_name(self) -> str:
        """Asset group for this source: the configured name, else the database in the URL."""
        if self.name:
            return _group_safe(self.name)
        literal = envvars.static_prefix(self.url)
        tail = literal.rsplit("/", 1)[-1].split("?")[0] if "://" in literal else ""
        tail = Path(tail).stem if tail else ""
        return _group_safe(tail) if tail and literal == self.url else "source"


def _group_safe(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"db_{cleaned}"


class ObjectLockConfig(_Model):
    """S3 Object Lock retention written on every archived object (WORM)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(description="GOVERNANCE (privileged bypass) or COMPLIANCE")
    days: int = Field(gt=0, le=36500, description="Retention per object in days (HIPAA: 2557 = 7 years)")


class ArchiveStoreConfig(_Model):
    """Where archived Parquet lives: `s3://bucket/prefix` or a local directory."""

    url: str
    kms_key_id: str = Field(default="", description="SSE-KMS key; empty means SSE-S3 (AES256)")
    object_lock: ObjectLockConfig | None = None
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}")

    @model_validator(mode="before")
    @classmethod
    def _lock_needs_mode(cls, data: Any) -> Any:
        lock = data.get("object_lock") if isinstance(data, dict) else None
        if isinstance(lock, dict) and "days" in lock and "mode" not in lock:
            raise ValueError(
                "object_lock.days needs object_lock.mode; set mode: GOVERNANCE (testable, privileged bypass) "
                "or mode: COMPLIANCE (nobody can shorten it)"
            )
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _check_template_syntax(value)
        _check_store_url(value, what="archive")
        return value

    @property
    def is_s3(self) -> bool:
        """True for an S3 URL, False for a local directory."""
        return self.url.startswith("s3://")


def _check_store_url(value: str, *, what: str) -> None:
    prefix = envvars.static_prefix(value)
    if "://" in prefix and not prefix.startswith(("s3://", "file://")):
        raise ValueError(
            f"unsupported {what} URL scheme '{prefix.split('://')[0]}'; use s3://bucket/prefix or a local directory"
        )
    if value.startswith("s3://") and not envvars.is_template(value):
        bucket = value[5:].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"'{value}' names no bucket; use s3://bucket/prefix")
        if not _BUCKET.match(bucket):
            raise ValueError(
                f"'{bucket}' is not a valid S3 bucket name; use 3-63 lowercase letters, digits, '.' or '-'"
            )
    elif value.startswith("s3://") and value[5:].startswith("/"):
        raise ValueError(f"'{value}' names no bucket; use s3://bucket/prefix")


class WarehouseConfig(_Model):
    """The reporting replica: Redshift, PostgreSQL (its local stand-in) or DuckDB (embedded)."""

    url: str
    schema_: str = Field(default="public", alias="schema", description="Target schema; created if missing")
    staging_url: str = Field(default="", description="Redshift only: s3:// prefix COPY reads from")
    iam_role: str = Field(default="", description="Redshift only: IAM role ARN for COPY")
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, str_strip_whitespace=True)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _check_template_syntax(value)
        prefix = envvars.static_prefix(value)
        if "://" in prefix or not envvars.is_template(value):
            scheme = prefix.split("://")[0] if "://" in prefix else value
            if scheme not in WAREHOUSE_SCHEMES:
                raise ValueError(
                    f"unsupported warehouse URL scheme '{scheme}'; use redshift+redshift_connector://..., "
                    "postgresql+psycopg://... or duckdb:///path.duckdb"
                )
        return value

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        return check_identifier(value, "schema name")

    @field_validator("staging_url")
    @classmethod
    def _staging(cls, value: str) -> str:
        if value:
            _check_template_syntax(value)
            _check_store_url(value, what="staging")
        return value

    @property
    def schema_name(self) -> str:
        """The target schema (the YAML key is `schema`)."""
        return self.schema_


class AlertsConfig(_Model):
    """Where failures and failed checks are published."""

    sns_topic_arn: str = Field(default="", description="Empty: alerts go to the log only")
    ui_url: str = Field(default="${DAGSTER_UI_URL:-http://127.0.0.1:3000}", description="Base URL for run links")
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}")

    @field_validator("sns_topic_arn", "ui_url")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template_syntax(value)


def _period_validator(*, allowed: tuple[Any, ...], what: str, allow_zero: bool = False):  # noqa: ANN202
    def validate(value: Any) -> str:
        parse_period(str(value), allowed=allowed, what=what, allow_zero=allow_zero)
        return str(value)

    return validate


_RETENTION_UNITS = ("days", "weeks", "months", "years")
_LAG_UNITS = ("minutes", "hours", "days")


class TableArchiveConfig(_Model):
    """How one table is archived: which rows, how fast, and whether the source is purged."""

    retention: str = Field(description="Keep rows this long in MySQL, e.g. '6 months', '7 years'")
    start: str | None = Field(default=None, description="First month to archive, YYYY-MM (default: oldest row)")
    purge: bool = Field(default=True, description="Delete archived rows from the source")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="Rows per delete transaction")
    pause_seconds: float = Field(default=0.0, ge=0, le=60, description="Sleep between delete batches")
    max_run_seconds: float | None = Field(default=None, gt=0, description="Stop purging after this long")
    max_threads_running: int | None = Field(
        default=50, ge=1, description="Pause deletes while MySQL Threads_running exceeds this"
    )
    max_replica_lag_seconds: float | None = Field(
        default=None, gt=0, description="Pause deletes while a MySQL replica lags more than this"
    )
    chunk_rows: int = Field(default=50_000, ge=100, le=1_000_000, description="Rows fetched per chunk")
    part_rows: int = Field(default=1_000_000, ge=1000, description="Rows per Parquet part at most")

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> str:
        text = str(value)
        period = parse_period(text, allowed=_RETENTION_UNITS, what="retention")
        if period.unit in ("days", "weeks") and period.amount * (7 if period.unit == "weeks" else 1) > 36600:
            raise ValueError(f"'{text}' is longer than 100 years; use at most '100 years'")
        if period.unit in ("months", "years") and period.amount * (12 if period.unit == "years" else 1) > 1200:
            raise ValueError(f"'{text}' is longer than 100 years; use at most '100 years'")
        return text

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, date):
            return f"{value:%Y-%m}"
        text = str(value)
        if not re.match(r"^\d{4}-(0[1-9]|1[0-2])$", text):
            raise ValueError(f"'{text}' is not a month; write it as YYYY-MM, e.g. 2019-01")
        return text

    @cached_property
    def retention_period(self) -> Period:
        """`retention` parsed."""
        return parse_period(self.retention, allowed=_RETENTION_UNITS, what="retention")

    @property
    def start_date(self) -> date | None:
        """First of the `start` month."""
        if self.start is None:
            return None
        year, month = self.start.split("-")
        return date(int(year), int(month), 1)


class TableReplicaConfig(_Model):
    """How one table is replicated into the warehouse."""

    partition: Literal["daily", "hourly"] = "daily"
    start: date | None = Field(default=None, description="First partition (default: day of the oldest row)")
    insert_mode: Literal["overwrite_existing", "keep_existing", "truncate", "append"] = "overwrite_existing"
    lag: str = Field(default="15 minutes", description="Lookback re-read by every load for late commits")
    chunk_rows: int = Field(default=50_000, ge=100, le=1_000_000)
    distkey: str | None = Field(default=None, description="Redshift DISTKEY column (default: first PK column)")
    sortkey: list[str] | None = Field(default=None, description="Redshift SORTKEY columns (default: time column)")
    boolean_columns: list[str] = Field(default_factory=list, description="tinyint(1) columns loaded as BOOLEAN")
    column_types: dict[str, str] = Field(default_factory=dict, description="Per-column warehouse type override")
    oversize: Literal["fail", "truncate", "null"] = Field(
        default="fail", description="Values the warehouse cannot hold: fail the run, truncate, or NULL"
    )
    freshness: str = Field(default="1 day", description="Warn when the replica's watermark is older than this")

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}$", value):
            raise ValueError(f"'{value}' is not a date; write it as YYYY-MM-DD, e.g. 2019-01-01")
        return value

    @field_validator("lag", "freshness", mode="before")
    @classmethod
    def _lag(cls, value: Any) -> str:
        parse_period(str(value), allowed=_LAG_UNITS, what="duration", allow_zero=True)
        return str(value)

    @field_validator("distkey")
    @classmethod
    def _distkey(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, "column name")

    @field_validator("sortkey", "boolean_columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            check_identifier(name, "column name")
        return value

    @field_validator("column_types")
    @classmethod
    def _column_types(cls, value: dict[str, str]) -> dict[str, str]:
        for name, sql_type in value.items():
            check_identifier(name, "column name")
            if not re.match(r"^[A-Za-z][A-Za-z0-9 _]*(\(\s*\d+(\s*,\s*\d+)?\s*\))?$", sql_type):
                raise ValueError(
                    f"column_types.{name}: {sql_type!r} is not a plain SQL type; use e.g. VARCHAR(512), DECIMAL(38,10)"
                )
        return value

    @property
    def lag_period(self) -> Period:
        """`lag` parsed."""
        return parse_period(self.lag, allowed=_LAG_UNITS, what="duration", allow_zero=True)

    @property
    def freshness_period(self) -> Period:
        """`freshness` parsed."""
        return parse_period(self.freshness, allowed=_LAG_UNITS, what="duration", allow_zero=True)


class TableConfig(_Model):
    """One source table and what happens to it."""

    name: str
    primary_key: list[str] | None = Field(default=None, description="Default: reflected from the source")
    time_column: str = "updated_at"
    description: str = ""
    owners: list[str] = Field(default_factory=list)
    archive: TableArchiveConfig | None = None
    replica: TableReplicaConfig | None = None
    on_drift: Literal["block", "evolve"] = "block"
    contract: str | None = Field(default=None, description="Schema contract path (default schemas/<name>.json)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "table name")

    @field_validator("time_column")
    @classmethod
    def _time_column(cls, value: str) -> str:
        return check_identifier(value, "column name")

    @field_validator("primary_key")
    @classmethod
    def _pk(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("primary_key is empty; list at least one column, or leave it out to reflect it")
            for column in value:
                check_identifier(column, "column name")
            if len(set(value)) != len(value):
                raise ValueError(f"primary_key {value} repeats a column; list each column once")
        return value

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        for owner in value:
            if not re.match(r"^(team:[\w.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$", owner):
                raise ValueError(f"owner {owner!r} is neither 'team:<name>' nor an email address")
        return value

    @property
    def asset_name(self) -> str:
        """The table name as used in asset keys (`archive/<asset_name>`)."""
        return re.sub(r"\W", "_", self.name)


class DefaultsConfig(_Model):
    """Settings every table inherits unless it overrides them."""

    time_column: str = "updated_at"
    owners: list[str] = Field(default_factory=list)
    on_drift: Literal["block", "evolve"] = "block"
    archive: dict[str, Any] = Field(default_factory=dict)
    replica: dict[str, Any] = Field(default_factory=dict)

    @field_validator("archive")
    @classmethod
    def _archive_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_keys(value, TableArchiveConfig)
        return value

    @field_validator("replica")
    @classmethod
    def _replica_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_keys(value, TableReplicaConfig)
        return value


def _check_keys(value: dict[str, Any], model: type[BaseModel]) -> None:
    known = set(model.model_fields)
    for key in value:
        if key not in known:
            raise ValueError(_unknown_key_message(str(key), sorted(known)))


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{key}'; {hint}valid keys: {', '.join(valid)}"


class ProjectConfig(_Model):
    """The whole configuration file."""

    source: SourceConfig
    archive: ArchiveStoreConfig | None = None
    warehouse: WarehouseConfig | None = None
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    tables: list[TableConfig] = Field(min_length=1)
    schemas_dir: str = Field(default="schemas", description="Where schema contracts live (relative to this file)")
    path: str = Field(default="", description="The file this was read from (set by the loader)")

    @model_validator(mode="after")
    def _cross_checks(self) -> ProjectConfig:
        seen: dict[str, int] = {}
        for index, table in enumerate(self.tables):
            key = table.asset_name.lower()
            if key in seen:
                raise _LocatedError(
                    ("tables", index, "name"),
                    f"table '{table.name}' is listed twice (also tables[{seen[key]}]); keep one entry per table",
                )
            seen[key] = index
            if table.archive is not None and self.archive is None:
                raise _LocatedError(
                    ("tables", index, "archive"),
                    f"table '{table.name}' has an archive block but the file has no top-level 'archive:' store; "
                    "add archive: {url: s3://bucket/prefix} or remove the table's archive block",
                )
            if table.replica is not None and self.warehouse is None:
                raise _LocatedError(
                    ("tables", index, "replica"),
                    f"table '{table.name}' has a replica block but the file has no top-level 'warehouse:'; "
                    "add warehouse: {url: ...} or remove the table's replica block",
                )
            if table.replica is not None and table.primary_key is None and table.replica.insert_mode in (
                "overwrite_existing",
                "keep_existing",
            ):
                pass  # the key is reflected at run time; a table without one fails there with the fix
        if (
            self.warehouse is not None
            and envvars.static_prefix(self.warehouse.url).startswith("redshift")
            and not self.warehouse.staging_url
        ):
            raise _LocatedError(
                ("warehouse", "staging_url"),
                "a Redshift warehouse loads with COPY from S3; set staging_url: s3://bucket/staging",
            )
        return self

    def table(self, name: str) -> TableConfig:
        """The table called `name` (by configured name or asset name)."""
        for table in self.tables:
            if name in (table.name, table.asset_name):
                return table
        raise ConfigError(
            f"{self.path}: no table named '{name}'; configured tables: {', '.join(t.name for t in self.tables)}"
        )

    @property
    def base_dir(self) -> Path:
        """Directory relative paths in this file are resolved against."""
        return Path(self.path).parent if self.path else Path.cwd()

    def contract_path(self, table: TableConfig) -> Path:
        """Where the schema contract of `table` lives."""
        raw = table.contract or str(Path(envvars.resolve(self.schemas_dir)) / f"{table.asset_name}.json")
        path = Path(raw)
        return path if path.is_absolute() else self.base_dir / path


class _LocatedError(ValueError):
    """A cross-field error that knows which key it belongs to."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def find_config_path(cwd: Path | None = None) -> Path:
    """`$ETL_ASSETS_CONFIG`, else `./etl_assets.yaml`, else the bundled demo config."""
    explicit = os.environ.get(CONFIG_ENV_VAR)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_ENV_VAR}={explicit}: no such file; point it at your etl_assets.yaml "
                "or unset it to use ./etl_assets.yaml"
            )
        return path
    local = (cwd or Path.cwd()) / LOCAL_CONFIG_NAME
    return local if local.is_file() else DEMO_CONFIG_PATH


def load_config(path: Path | str | None = None) -> ProjectConfig:
    """Read and validate a config file (default: `find_config_path()`).

    Raises:
        ConfigError: naming the file, the key and the fix; every problem found is listed.
    """
    config_path = Path(path) if path is not None else find_config_path()
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read the config file ({exc.strerror})") from None
    return parse_config(text, source=str(config_path))


def parse_config(text: str, *, source: str) -> ProjectConfig:
    """Validate YAML text as a config; `source` names it in error messages."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the file must be a mapping with keys source, tables, ... (got {type(raw).__name__})")
    raw, inherited = _apply_defaults(raw)
    raw["path"] = source
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source=source, inherited=inherited)) from None


def _apply_defaults(raw: dict[str, Any]) -> tuple[dict[str, Any], set[tuple[int, str, str]]]:
    """Merge `defaults` into each table; remember which keys were inherited for error locations."""
    defaults = raw.get("defaults") or {}
    tables = raw.get("tables")
    inherited: set[tuple[int, str, str]] = set()
    if not isinstance(defaults, dict) or not isinstance(tables, list):
        return raw, inherited
    merged_tables: list[Any] = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            merged_tables.append(table)
            continue
        merged = dict(table)
        for key in ("time_column", "owners", "on_drift"):
            if key in defaults and key not in merged:
                merged[key] = defaults[key]
                inherited.add((index, key, ""))
        for block in ("archive", "replica"):
            base = defaults.get(block)
            if isinstance(base, dict) and isinstance(merged.get(block), dict):
                for key in base:
                    if key not in merged[block]:
                        inherited.add((index, block, key))
                merged[block] = {**base, **merged[block]}
            elif isinstance(base, dict) and merged.get(block) is None and block in merged:
                merged[block] = dict(base)
                inherited.update((index, block, key) for key in base)
        merged_tables.append(merged)
    return {**raw, "tables": merged_tables}, inherited


def _format_loc(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + ("schema" if part == "schema_" else part)
    return text or "(top level)"


def _format_errors(exc: ValidationError, *, source: str, inherited: set[tuple[int, str, str]]) -> str:
    lines: list[str] = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if part not in ("function-after", "function-before"))
        located = error.get("ctx", {}).get("error")
        if isinstance(located, _LocatedError):
            loc, message = located.loc, located.message
        else:
            message = _message(error, loc)
        loc = _remap_inherited(loc, inherited)
        lines.append(f"{source}: {_format_loc(loc)}: {message}")
    return "\n".join(lines)


def _remap_inherited(loc: tuple[Any, ...], inherited: set[tuple[int, str, str]]) -> tuple[Any, ...]:
    if len(loc) >= 3 and loc[0] == "tables" and isinstance(loc[1], int):
        index, block = loc[1], str(loc[2])
        key = str(loc[3]) if len(loc) > 3 else ""
        if (index, block, key) in inherited:
            return ("defaults", block, *loc[3:])
    return loc


def _message(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = sorted(_yaml_keys(parent)) if parent else []
        return _unknown_key_message(str(loc[-1]), valid)
    if kind == "missing":
        return f"missing required key '{loc[-1]}'" + _required_hint(str(loc[-1]))
    text = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if kind == "literal_error":
        return f"{error.get('input')!r} is not allowed; {text[0].lower()}{text[1:]}"
    if kind in ("int_parsing", "int_type", "float_parsing", "bool_parsing", "bool_type", "list_type", "dict_type",
                "model_type", "string_type", "model_attributes_type"):  # fmt: skip
        return f"{error.get('input')!r}: {text[0].lower()}{text[1:]}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short"):
        return f"{error.get('input')!r}: {text[0].lower()}{text[1:]}"
    return text


_REQUIRED_HINTS = {
    "url": " (a SQLAlchemy URL, s3://bucket/prefix, or a path, depending on the block)",
    "name": " (the source table's name)",
    "retention": " (how long rows stay in MySQL, e.g. '6 months')",
    "tables": " (a list of tables: - name: visits ...)",
    "source": " (source: {url: mysql+pymysql://...})",
    "mode": " (GOVERNANCE or COMPLIANCE)",
    "days": " (retention in days, e.g. 2557)",
}


def _required_hint(key: str) -> str:
    return _REQUIRED_HINTS.get(key, "")


_MODELS_BY_PATH: dict[tuple[str, ...], type[BaseModel]] = {
    (): ProjectConfig,
    ("source",): SourceConfig,
    ("archive",): ArchiveStoreConfig,
    ("archive", "object_lock"): ObjectLockConfig,
    ("warehouse",): WarehouseConfig,
    ("alerts",): AlertsConfig,
    ("defaults",): DefaultsConfig,
    ("tables",): TableConfig,
    ("tables", "archive"): TableArchiveConfig,
    ("tables", "replica"): TableReplicaConfig,
}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    path = tuple(str(part) for part in loc if not isinstance(part, int))
    return _MODELS_BY_PATH.get(path)


def _yaml_keys(model: type[BaseModel]) -> set[str]:
    keys = {field.alias or name for name, field in model.model_fields.items()}
    return keys - {"path"}


def utcnow() -> datetime:
    """Current time in UTC (one place, so tests and runs agree on the clock)."""
    return datetime.now(UTC)
