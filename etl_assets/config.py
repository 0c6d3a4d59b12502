"""The one YAML file that configures etl-assets: find it, validate it, and apply defaults per table.

Lookup order: `$ETL_ASSETS_CONFIG`, then `./etl_assets.yaml`, then the bundled demo config.
`${VAR}` / `${VAR:-default}` references stay unresolved here; resources resolve them when a run
needs the value (`resolve_value`, built on `lib/envvars.py`), so nothing secret reaches the UI.

Every error is one line per problem: `<file>: <key>: <what is wrong>; <what would be valid>`, with the
key written as in the file (`tables[1].archive.retention`). A value a table inherits from `defaults`
is reported at its `defaults.` key, because that is where it has to be fixed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

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
_IDENTIFIER = re.compile(r"[^\W\d][\w$ -]{0,63}")
_IDENTIFIER_HINT = (
    "use letters, digits, '_', '$', '-' or spaces (at most 64 characters, not starting with a digit); "
    "quotes, backticks, semicolons and dots are never accepted"
)
WAREHOUSE_SCHEMES = ("redshift+redshift_connector", "redshift+psycopg2", "postgresql+psycopg", "duckdb")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SOURCE_URL_HINT = "use mysql+pymysql://user:${DB_PASSWORD}@host:3306/database or sqlite:///path.db"
_WAREHOUSE_URL_HINT = (
    "use redshift+redshift_connector://user:${PASSWORD}@host:5439/db, "
    "postgresql+psycopg://user:${PASSWORD}@host:5432/db or duckdb:///path.duckdb"
)
_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}")
# A longer lookback would re-read most of a table on every load, and dates far out overflow.
_MAX_DURATION_DAYS = 366


class ConfigError(Exception):
    """The configuration file is missing or invalid; the message says where and how to fix it."""


def check_identifier(value: str, what: str = "name") -> str:
    """Validate a table, column or schema name from config (raises ValueError with the fix)."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value) or value != value.strip():
        raise ValueError(f"{value!r} is not an acceptable {what}; {_IDENTIFIER_HINT}")
    return value


class _KeyedErrors(ValueError):
    """Problems found in one value, each at a key below it (`column_types.notes`, `owners[1]`).

    Locations are relative to where pydantic reports the error; at the top level (the cross checks
    of `ProjectConfig`) that is the file itself, so they are absolute there.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _check_each(values: list[str], check: Callable[[str], object]) -> None:
    """Run `check` on every item; report failures at `[index]`."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, value in enumerate(values):
        try:
            check(value)
        except ValueError as exc:
            problems.append(((index,), str(exc)))
    if problems:
        raise _KeyedErrors(problems)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_template_syntax(value: str) -> str:
    try:
        envvars.check_template(value)
    except envvars.TemplateError as exc:
        raise ValueError(str(exc)) from None
    return value


def _scheme(value: str) -> str | None:
    """The URL scheme when it is literal text (not behind a `${...}`), else None."""
    prefix = envvars.static_prefix(value)
    return prefix.split("://", 1)[0] if "://" in prefix else None


ReaderChoice = Literal["auto", "arrow", "pymysql"]
"""Which reader archive extraction uses (`source.reader`)."""


class SourceConfig(_Model):
    """The MySQL database that is archived and replicated."""

    url: str = Field(description="SQLAlchemy URL, e.g. mysql+pymysql://user:${DB_PASSWORD}@host:3306/clinic")
    name: str | None = Field(
        default=None, description="Name of the source database in the UI (asset group); default from the URL"
    )
    lock_timeout_seconds: float = Field(
        default=0, ge=0, description="How long a run waits for the table lock"
    )
    replicas: list[str] = Field(
        default_factory=list,
        description=(
            "URLs of the source's read replicas, e.g. mysql+pymysql://monitor:${MONITOR_PASSWORD}@replica1:3306/clinic; "
            "the purge waits while any of them lags more than archive.max_replica_lag_seconds"
        ),
    )
    reader: ReaderChoice = Field(
        default="auto",
        description=(
            "How archive extraction reads MySQL: 'arrow' (connectorx, ~5x faster, in time slices), "
            "'pymysql' (one streaming query), or 'auto' (arrow unless the URL needs PyMySQL)"
        ),
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _check_template_syntax(value)
        scheme = _scheme(value)
        if scheme is not None:
            if not _is_sqlalchemy_dialect(scheme):
                raise ValueError(
                    f"'{scheme}' is not a SQLAlchemy URL scheme (dialect+driver); {_SOURCE_URL_HINT}"
                )
        elif not envvars.is_template(value):
            shown = envvars.redact(value) if value else ""
            raise ValueError(f"'{shown}' is not a database URL; {_SOURCE_URL_HINT}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, "source name")

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: list[str]) -> list[str]:
        _check_each(value, _check_replica_url)
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for index, url in enumerate(value):
            if url in value[:index]:
                problems.append(
                    ((index,), f"the same replica as replicas[{value.index(url)}]; list each replica once")
                )
        if problems:
            raise _KeyedErrors(problems)
        return value

    @property
    def group_name(self) -> str:
        """Asset group for this source: the configured name, else the database in the URL."""
        if self.name:
            return _group_safe(self.name)
        if "://" not in self.url:
            return "source"
        # The database is the last path segment after the host; user, password and host never
        # become part of a name shown in the UI.
        location = self.url.split("://", 1)[1].split("?", 1)[0]
        if "/" not in location:
            return "source"
        tail = location.rsplit("/", 1)[-1]
        if not tail or "${" in tail or "}" in tail:
            return "source"
        return _group_safe(Path(tail).stem or tail)


_REPLICA_URL_HINT = "use mysql+pymysql://user:${REPLICA_PASSWORD}@replica-host:3306/database"


def _check_replica_url(value: str) -> str:
    # Lag is read with SHOW REPLICA/SLAVE STATUS, so only MySQL/MariaDB URLs make sense here. The
    # message shows the URL redacted: a replica URL often carries a literal monitoring password.
    _check_template_syntax(value)
    scheme = _scheme(value)
    if scheme is None and not envvars.is_template(value):
        shown = envvars.redact(value) if value else ""
        raise ValueError(f"'{shown}' is not a database URL; {_REPLICA_URL_HINT}")
    if scheme is not None and (
        scheme.split("+", 1)[0] not in ("mysql", "mariadb") or not _is_sqlalchemy_dialect(scheme)
    ):
        raise ValueError(
            f"'{scheme}' is not a MySQL/MariaDB URL scheme, and replica lag is read from MySQL; {_REPLICA_URL_HINT}"
        )
    return value


def _is_sqlalchemy_dialect(scheme: str) -> bool:
    # Imported here: loading the config must not pay for SQLAlchemy unless a literal URL needs it.
    from sqlalchemy.dialects import registry

    try:
        registry.load(scheme.replace("+", "."))
    except Exception:  # noqa: BLE001 - NoSuchModuleError, or a third-party plugin failing to import
        return False
    return True


def _group_safe(name: str) -> str:
    # Dagster group and asset names allow only ASCII letters, digits and `_`.
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"db_{cleaned}"


class ObjectLockConfig(_Model):
    """S3 Object Lock retention written on every archived object (WORM)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        description="GOVERNANCE (privileged bypass) or COMPLIANCE"
    )
    days: int = Field(gt=0, le=36500, description="Retention per object in days (HIPAA: 2557 = 7 years)")


class ArchiveStoreConfig(_Model):
    """Where archived Parquet lives: `s3://bucket/prefix` or a local directory."""

    url: str
    kms_key_id: str = Field(default="", description="SSE-KMS key; empty means SSE-S3 (AES256)")
    object_lock: ObjectLockConfig | None = None
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _check_template_syntax(value)
        _check_store_url(value, what="archive")
        return value

    @field_validator("kms_key_id", "region")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template_syntax(value)

    @model_validator(mode="after")
    def _lock_needs_s3(self) -> ArchiveStoreConfig:
        # A URL that starts with a variable may still be s3://; anything else literal is a directory.
        if self.object_lock is not None and not self.is_s3 and not self.url.startswith("${"):
            raise _KeyedErrors(
                [
                    (
                        ("object_lock",),
                        f"S3 Object Lock needs an S3 archive, but url '{self.url}' is not on S3; "
                        "use url: s3://bucket/prefix or remove object_lock",
                    )
                ]
            )
        return self

    @property
    def is_s3(self) -> bool:
        """True for an S3 URL, False for a local directory."""
        return self.url.startswith("s3://")


def _check_store_url(value: str, *, what: str) -> None:
    if not value:
        raise ValueError(f"the {what} URL is empty; use s3://bucket/prefix or a local directory")
    scheme = _scheme(value)
    if scheme is not None and scheme not in ("s3", "file"):
        raise ValueError(
            f"unsupported {what} URL scheme '{scheme}'; use s3://bucket/prefix or a local directory"
        )
    if scheme == "s3":
        bucket = value[5:].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"'{value}' names no bucket; use s3://bucket/prefix")
        if "${" not in bucket and not _BUCKET.fullmatch(bucket):
            raise ValueError(
                f"'{bucket}' is not a valid S3 bucket name; use 3-63 lowercase letters, digits, '.' or '-', "
                "starting and ending with a letter or digit"
            )


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
        scheme = _scheme(value)
        if scheme is None and not envvars.is_template(value):
            raise ValueError(f"'{envvars.redact(value)}' is not a warehouse URL; {_WAREHOUSE_URL_HINT}")
        if scheme is not None and scheme not in WAREHOUSE_SCHEMES:
            raise ValueError(f"unsupported warehouse URL scheme '{scheme}'; {_WAREHOUSE_URL_HINT}")
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

    @field_validator("iam_role", "region")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template_syntax(value)

    @property
    def schema_name(self) -> str:
        """The target schema (the YAML key is `schema`)."""
        return self.schema_

    @property
    def is_redshift(self) -> bool:
        """True when the URL (as far as it is literal) names a Redshift dialect."""
        return (_scheme(self.url) or "").startswith("redshift")


class AlertsConfig(_Model):
    """Where failures and failed checks are published."""

    sns_topic_arn: str = Field(default="", description="Empty: alerts go to the log only")
    ui_url: str = Field(
        default="${DAGSTER_UI_URL:-http://127.0.0.1:3000}", description="Base URL for run links"
    )
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}")

    @field_validator("sns_topic_arn", "ui_url", "region")
    @classmethod
    def _templates(cls, value: str) -> str:
        return _check_template_syntax(value)

    @field_validator("sns_topic_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if value and not envvars.is_template(value) and not _SNS_ARN.fullmatch(value):
            raise ValueError(
                f"'{value}' is not an SNS topic ARN; use arn:aws:sns:<region>:<account>:<topic>, "
                "or leave it empty to send alerts to the log only"
            )
        return value


_RETENTION_UNITS = ("days", "weeks", "months", "years")
_LAG_UNITS = ("minutes", "hours", "days")


def _check_retention(value: Any) -> Any:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return value  # pydantic reports the wrong type
    text = str(value)
    period = parse_period(text, allowed=_RETENTION_UNITS, what="retention")
    days = {"days": 1, "weeks": 7}.get(period.unit)
    months = {"months": 1, "years": 12}.get(period.unit)
    if (days and period.amount * days > 36600) or (months and period.amount * months > 1200):
        raise ValueError(f"'{text}' is longer than 100 years; use at most '100 years'")
    return text


def _check_duration(value: Any) -> Any:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return value
    text = str(value)
    period = parse_period(text, allowed=_LAG_UNITS, what="duration", allow_zero=True)
    if period.as_timedelta().days > _MAX_DURATION_DAYS:
        raise ValueError(f"'{text}' is longer than a year; use at most '{_MAX_DURATION_DAYS} days'")
    return text


def _check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not re.fullmatch(r"team:[\w.-]+|[^@\s]+@[^@\s]+\.[^@\s]+", owner):
        raise ValueError(
            f"owner {owner!r} is neither 'team:<name>' nor an email address; use e.g. team:data-platform"
        )
    return owner


class TableArchiveConfig(_Model):
    """How one table is archived: which rows, how fast, and whether the source is purged."""

    retention: str = Field(description="Keep rows this long in MySQL, e.g. '6 months', '7 years'")
    start: str | None = Field(
        default=None, description="First month to archive, YYYY-MM (default: oldest row)"
    )
    purge: bool = Field(default=True, description="Delete archived rows from the source")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="Rows per delete transaction")
    pause_seconds: float = Field(default=0.0, ge=0, le=60, description="Sleep between delete batches")
    max_run_seconds: float | None = Field(default=None, gt=0, description="Stop purging after this long")
    max_threads_running: int | None = Field(
        default=50, ge=1, description="Pause deletes while MySQL Threads_running exceeds this"
    )
    max_replica_lag_seconds: float | None = Field(
        default=10,
        gt=0,
        le=86400,
        description=(
            "Pause deletes while any of source.replicas is further behind than this, or not replicating; "
            "null ignores lag"
        ),
    )
    chunk_rows: int = Field(default=50_000, ge=100, le=1_000_000, description="Rows fetched per chunk")
    part_rows: int = Field(default=1_000_000, ge=1000, description="Rows per Parquet part at most")
    part_mb: float = Field(
        default=512,
        gt=0,
        # The commit copies a part with one CopyObject, which S3 limits to 5 GiB.
        le=4096,
        description="MiB per Parquet part (at most 4096): a part is closed once it reaches this size "
        "(checked after each chunk_rows chunk is written, so a part can pass it by one chunk); bounds "
        "parts of wide rows",
    )

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> Any:
        return _check_retention(value)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if isinstance(value, date):  # YAML reads 2019-01-01 as a date
            if value.day != 1:
                raise ValueError(
                    f"'{value}' is a day, not a month; write the month as YYYY-MM, e.g. {value:%Y-%m}"
                )
            return f"{value:%Y-%m}"
        if isinstance(value, str) and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value.strip()):
            raise ValueError(f"'{value}' is not a month; write it as YYYY-MM, e.g. 2019-01")
        return value

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

    partition: Literal["daily", "hourly", "monthly"] = Field(
        default="daily",
        description="Partition size: daily (default), hourly for busy tables, monthly for small ones",
    )
    start: date | None = Field(default=None, description="First partition (default: day of the oldest row)")
    insert_mode: Literal["overwrite_existing", "keep_existing", "truncate", "append"] = "overwrite_existing"
    lag: str = Field(default="15 minutes", description="Lookback re-read by every load for late commits")
    chunk_rows: int = Field(default=50_000, ge=100, le=1_000_000)
    distkey: str | None = Field(
        default=None, description="Redshift DISTKEY column (default: first PK column)"
    )
    sortkey: list[str] | None = Field(
        default=None, description="Redshift SORTKEY columns (default: time column)"
    )
    boolean_columns: list[str] = Field(
        default_factory=list, description="tinyint(1) columns loaded as BOOLEAN"
    )
    column_types: dict[str, str] = Field(
        default_factory=dict, description="Per-column warehouse type override"
    )
    oversize: Literal["fail", "truncate", "null"] = Field(
        default="fail", description="Values the warehouse cannot hold: fail the run, truncate, or NULL"
    )
    freshness: str = Field(
        default="1 day", description="Warn when the replica's watermark is older than this"
    )

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            raise ValueError(f"'{value}' is not a date; write it as YYYY-MM-DD, e.g. 2019-01-01")
        return value

    @field_validator("lag", "freshness", mode="before")
    @classmethod
    def _lag(cls, value: Any) -> Any:
        return _check_duration(value)

    @field_validator("distkey")
    @classmethod
    def _distkey(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, "column name")

    @field_validator("sortkey", "boolean_columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        _check_each(value or [], lambda name: check_identifier(name, "column name"))
        return value

    @field_validator("column_types")
    @classmethod
    def _column_types(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name, sql_type in value.items():
            try:
                check_identifier(name, "column name")
            except ValueError as exc:
                problems.append(((name,), str(exc)))
                continue
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 _]*(\(\s*\d+(\s*,\s*\d+)?\s*\))?", sql_type):
                problems.append(
                    (
                        (name,),
                        f"{sql_type!r} is not a plain SQL type; use a type name with an optional size, "
                        "e.g. VARCHAR(512) or DECIMAL(38,10)",
                    )
                )
        if problems:
            raise _KeyedErrors(problems)
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
    contract: str | None = Field(
        default=None, description="Schema contract path (default schemas/<name>.json)"
    )

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
                raise ValueError(
                    "primary_key is empty; list at least one column, or leave it out to reflect it"
                )
            _check_each(value, lambda column: check_identifier(column, "column name"))
            if len(set(value)) != len(value):
                raise ValueError(f"primary_key {value} repeats a column; list each column once")
        return value

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        _check_each(value, _check_owner)
        return value

    @field_validator("contract")
    @classmethod
    def _contract(cls, value: str | None) -> str | None:
        return None if value is None else _check_template_syntax(value)

    @property
    def asset_name(self) -> str:
        """The table name as used in asset keys (`archive/<asset_name>`): ASCII letters, digits, `_`."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name)


class DefaultsConfig(_Model):
    """Settings every table inherits unless it overrides them."""

    time_column: str = "updated_at"
    owners: list[str] = Field(default_factory=list)
    on_drift: Literal["block", "evolve"] = "block"
    archive: dict[str, Any] = Field(default_factory=dict)
    replica: dict[str, Any] = Field(default_factory=dict)

    @field_validator("time_column")
    @classmethod
    def _time_column(cls, value: str) -> str:
        return check_identifier(value, "column name")

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        _check_each(value, _check_owner)
        return value

    @field_validator("archive")
    @classmethod
    def _archive(cls, value: dict[str, Any]) -> dict[str, Any]:
        # `retention` may be left to each table; a placeholder lets the other keys be checked alone.
        _check_partial(value, TableArchiveConfig, placeholders={"retention": "1 year"})
        return value

    @field_validator("replica")
    @classmethod
    def _replica(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_partial(value, TableReplicaConfig, placeholders={})
        return value


def _check_partial(value: dict[str, Any], model: type[BaseModel], *, placeholders: dict[str, Any]) -> None:
    """Validate the keys of a defaults block on their own, so a bad default is reported even when
    every table overrides it."""
    try:
        model.model_validate({**placeholders, **value})
    except ValidationError as exc:
        raise _KeyedErrors(
            [problem for error in exc.errors() for problem in _problems(error, root=model)]
        ) from None


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
    schemas_dir: str = Field(
        default="schemas", description="Where schema contracts live (relative to this file)"
    )
    path: str = Field(default="", description="The file this was read from (set by the loader)")

    @field_validator("schemas_dir")
    @classmethod
    def _schemas_dir(cls, value: str) -> str:
        return _check_template_syntax(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> ProjectConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(self.tables):
            key = table.asset_name.lower()
            if key in seen:
                other = self.tables[seen[key]]
                if other.name == table.name:
                    message = f"table '{table.name}' is listed twice (also tables[{seen[key]}]); keep one entry per table"
                else:
                    message = (
                        f"table '{table.name}' and tables[{seen[key]}] '{other.name}' would both be asset "
                        f"'{other.asset_name}' (names that differ only in case, or in characters other than "
                        "letters, digits and '_', clash); configure each table once"
                    )
                problems.append((("tables", index, "name"), message))
            else:
                seen[key] = index
            if table.archive is not None and self.archive is None:
                problems.append(
                    (
                        ("tables", index, "archive"),
                        f"table '{table.name}' has an archive block but the file has no top-level 'archive:' store; "
                        "add archive: {url: s3://bucket/prefix} or remove the table's archive block",
                    )
                )
            if (
                table.archive is not None
                and "max_replica_lag_seconds" in table.archive.model_fields_set
                and table.archive.max_replica_lag_seconds is not None
                and not self.source.replicas
            ):
                # Without replicas the limit would silently do nothing; say so where it was written.
                problems.append(
                    (
                        ("tables", index, "archive", "max_replica_lag_seconds"),
                        f"table '{table.name}' limits replica lag but source.replicas lists no replica to "
                        "measure it on; add source.replicas: [mysql+pymysql://user:${REPLICA_PASSWORD}@host:3306/db] "
                        "or remove max_replica_lag_seconds",
                    )
                )
            if table.replica is not None and self.warehouse is None:
                problems.append(
                    (
                        ("tables", index, "replica"),
                        f"table '{table.name}' has a replica block but the file has no top-level 'warehouse:'; "
                        "add warehouse: {url: ...} or remove the table's replica block",
                    )
                )
        if self.warehouse is not None and self.warehouse.is_redshift:
            staging_scheme = _scheme(self.warehouse.staging_url)
            if not self.warehouse.staging_url:
                problems.append(
                    (
                        ("warehouse", "staging_url"),
                        "a Redshift warehouse loads with COPY from S3; set staging_url: s3://bucket/staging",
                    )
                )
            elif staging_scheme != "s3" and not self.warehouse.staging_url.startswith("${"):
                problems.append(
                    (
                        ("warehouse", "staging_url"),
                        f"'{self.warehouse.staging_url}' is not on S3, and Redshift COPY reads only from S3; "
                        "use staging_url: s3://bucket/staging",
                    )
                )
        if problems:
            raise _KeyedErrors(problems)
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
        """Directory relative paths in this file are resolved against.

        The file's own directory; for the bundled demo config the current directory, because the
        demo keeps everything under `./.demo` and the installed package may be read-only.
        """
        if not self.path or Path(self.path).resolve() == DEMO_CONFIG_PATH.resolve():
            return Path.cwd()
        return Path(self.path).parent

    def contract_path(self, table: TableConfig) -> Path:
        """Where the schema contract of `table` lives.

        Raises:
            ConfigError: a variable in `schemas_dir` or the table's `contract` is not set.
        """
        if table.contract:
            index = next((i for i, t in enumerate(self.tables) if t is table), None)
            key = f"tables[{index}].contract" if index is not None else f"tables[{table.name}].contract"
            raw = resolve_value(self, key, table.contract)
        else:
            raw = str(Path(resolve_value(self, "schemas_dir", self.schemas_dir)) / f"{table.asset_name}.json")
        path = Path(raw)
        return path if path.is_absolute() else self.base_dir / path


def resolve_setting(config_file: str, key: str, value: str) -> str:
    """Resolve the `${VAR}` / `${VAR:-default}` references in `value`, read from `config_file` at `key`.

    Resources call this when a run needs the value; the result must not be logged or shown.

    Raises:
        ConfigError: `<file>: <key>: environment variable X is not set; export X=... or give a
            default with ${X:-...}` (names the unset variable, never a value).
    """
    try:
        return envvars.resolve(value)
    except envvars.TemplateError as exc:
        fix = ""
        if exc.variable:
            name = exc.variable
            fix = f"; export {name}=... or give a default with ${{{name}:-...}}"
        raise ConfigError(f"{config_file or '(config)'}: {key}: {exc}{fix}") from None


def resolve_value(config: ProjectConfig, key: str, value: str) -> str:
    """`resolve_setting` for a value of a loaded config."""
    return resolve_setting(config.path, key, value)


def find_config_path(cwd: Path | None = None) -> Path:
    """`$ETL_ASSETS_CONFIG`, else `./etl_assets.yaml`, else the bundled demo config."""
    explicit = os.environ.get(CONFIG_ENV_VAR)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            problem = "is a directory, not a file" if path.is_dir() else "no such file"
            raise ConfigError(
                f"{CONFIG_ENV_VAR}={explicit}: {problem}; point it at your etl_assets.yaml "
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
        raise ConfigError(f"{config_path}: cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{config_path}: not UTF-8 text (byte {exc.start}); save the config file as UTF-8"
        ) from None
    return parse_config(text, source=str(config_path))


def parse_config(text: str, *, source: str) -> ProjectConfig:
    """Validate YAML text as a config; `source` names it in error messages."""
    raw = _load_yaml(text, source=source)
    if not isinstance(raw, dict):
        got = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(
            f"{source}: (top level): the file is {got}, not a mapping; start it with "
            "source: {url: ...} and tables: [...] (see the bundled demo config)"
        )
    raw, inherited = _apply_defaults(raw)
    raw["path"] = source
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source=source, inherited=inherited)) from None


def _load_yaml(text: str, *, source: str) -> Any:
    """`yaml.safe_load`, but a key given twice in one mapping is an error (YAML keeps the last silently)."""
    # libyaml's parser when PyYAML was built with it: a 200-table file parses ~5x faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, (), source=source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source}: {where}: not valid YAML: {problem}; check the indentation and quoting there"
        ) from None
    finally:
        loader.dispose()


def _check_duplicate_keys(
    node: yaml.Node, loc: tuple[str | int, ...], *, source: str, visited: set[int] | None = None
) -> None:
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias: checked where its anchor is (and may refer to itself)
        return
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, (*loc, index), source=source, visited=visited)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            key = (key_node.tag, key_node.value)
            if key in seen:
                lines = f"line {line}" if seen[key] == line else f"lines {seen[key]} and {line}"
                raise ConfigError(
                    f"{source}: {_format_loc((*loc, key_node.value))}: given twice in one mapping "
                    f"({lines}); YAML would silently keep the last, so keep one"
                )
            seen[key] = line
            _check_duplicate_keys(value_node, (*loc, key_node.value), source=source, visited=visited)


def _apply_defaults(raw: dict[str, Any]) -> tuple[dict[str, Any], set[tuple[int, str, str]]]:
    """Merge `defaults` into each table; remember which keys were inherited for error locations.

    A table gets the `archive` / `replica` defaults only when it has that block (even an empty one):
    the block is what turns archiving or replication on for the table.
    """
    defaults = raw.get("defaults") or {}
    tables = raw.get("tables")
    inherited: set[tuple[int, str, str]] = set()
    if not isinstance(defaults, dict) or not isinstance(tables, list):
        return dict(raw), inherited
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
            if not isinstance(base, dict) or block not in merged:
                continue
            own = merged[block]
            if own is None:
                own = {}
            if isinstance(own, dict):
                inherited.update((index, block, str(key)) for key in base if key not in own)
                merged[block] = {**base, **own}
        merged_tables.append(merged)
    return {**raw, "tables": merged_tables}, inherited


def _format_loc(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _format_errors(exc: ValidationError, *, source: str, inherited: set[tuple[int, str, str]]) -> str:
    lines: list[str] = []
    for error in exc.errors():
        for loc, message in _problems(error, root=ProjectConfig):
            line = f"{source}: {_format_loc(_remap_inherited(loc, inherited))}: {message}"
            if line not in lines:  # an inherited default fails once per table; say it once
                lines.append(line)
    return "\n".join(lines)


def _problems(error: Any, *, root: type[BaseModel]) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, message) pairs for one pydantic error, locations as written in the YAML."""
    loc = tuple(part for part in error["loc"] if part not in ("function-after", "function-before"))
    located = error.get("ctx", {}).get("error")
    if isinstance(located, _KeyedErrors):
        return [((*loc, *relative), message) for relative, message in located.problems]
    return [(loc, _message(error, loc, root=root))]


def _remap_inherited(loc: tuple[Any, ...], inherited: set[tuple[int, str, str]]) -> tuple[Any, ...]:
    """`tables[i].<key>...` becomes `defaults.<key>...` when table i inherited that key."""
    if len(loc) >= 3 and loc[0] == "tables" and isinstance(loc[1], int):
        index, key = loc[1], str(loc[2])
        if (index, key, "") in inherited:
            return ("defaults", *loc[2:])
        if len(loc) > 3 and (index, key, str(loc[3])) in inherited:
            return ("defaults", *loc[2:])
    return loc


def _message(error: Any, loc: tuple[Any, ...], *, root: type[BaseModel]) -> str:
    kind = error["type"]
    value = error.get("input")
    key = str(loc[-1]) if loc else ""
    parent = _model_at(root, loc[:-1])
    text = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text[:1].lower() + text[1:]
    if kind == "extra_forbidden":
        valid = sorted(_yaml_keys(parent)) if parent else []
        return _unknown_key_message(key, valid)
    if kind == "missing":
        return f"missing required key '{key}'; {_required_hint(parent, key)}"
    if value is None and kind.endswith("_type"):
        return f"has no value; {_required_hint(parent, key)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{value!r} is not allowed; use {expected}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        model = _model_at(root, loc)
        keys = f"with keys {', '.join(sorted(_yaml_keys(model)))}" if model else "of names to values"
        target = f"{key}: {{...}}" if key and not isinstance(loc[-1], int) else "it as {...}"
        return f"{value!r} is not a mapping; write {target} {keys}"
    if kind == "list_type":
        return f"{value!r} is not a list; write it as [a, b] or one '- item' per line"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{value!r} is not a whole number; {_range_hint(parent, key)}"
    if kind in ("float_parsing", "float_type"):
        return f"{value!r} is not a number; {_range_hint(parent, key)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{value!r} is not a yes/no value; use true or false"
    if kind == "string_type":
        return f"{value!r} is not text; write a quoted string, e.g. {key}: 'text'"
    if kind.startswith(("greater_than", "less_than")):
        return f"{value!r} is out of range; {_range_hint(parent, key)}"
    if kind == "too_short" and loc == ("tables",):
        return "no tables are listed; add at least one, e.g. tables: [{name: visits, archive: {retention: 6 months}}]"
    if kind == "too_short":
        return f"{value!r} is empty; {text}"
    if kind.startswith(("date", "datetime")):
        return f"{value!r} is not a valid date ({text}); write it as YYYY-MM-DD, e.g. 2019-01-01"
    return text


def _range_hint(model: type[BaseModel] | None, key: str) -> str:
    """`use a whole number from 1 to 100000`, from the field's type and bounds."""
    field = _field(model, key) if model else None
    whole = field is not None and int in (field.annotation, *get_args(field.annotation))
    low: Any = None
    high: Any = None
    low_strict = high_strict = False
    for item in field.metadata if field else []:  # annotated_types Ge / Gt / Le / Lt
        if getattr(item, "ge", None) is not None:
            low = item.ge
        elif getattr(item, "gt", None) is not None:
            low, low_strict = item.gt, True
        elif getattr(item, "le", None) is not None:
            high = item.le
        elif getattr(item, "lt", None) is not None:
            high, high_strict = item.lt, True
    noun = "a whole number" if whole else "a number"
    if whole and low_strict and low is not None:
        low, low_strict = low + 1, False
    if whole and high_strict and high is not None:
        high, high_strict = high - 1, False
    if low is not None and high is not None and not (low_strict or high_strict):
        return f"use {noun} from {low} to {high}"
    parts = []
    if low is not None:
        parts.append(f"{'greater than' if low_strict else 'at least'} {low}")
    if high is not None:
        parts.append(f"{'less than' if high_strict else 'at most'} {high}")
    return f"use {noun}" + (f" {' and '.join(parts)}" if parts else "")


def _required_hint(model: type[BaseModel] | None, key: str) -> str:
    hint = _REQUIRED_HINTS.get((model, key)) if model else None
    if hint:
        return hint
    field = _field(model, key) if model else None
    if field is not None and field.description:
        return f"add {key}: <{field.description[0].lower()}{field.description[1:]}>"
    return f"add {key}: <value>"


_REQUIRED_HINTS: dict[tuple[type[BaseModel] | None, str], str] = {
    (ProjectConfig, "source"): "add source: {url: mysql+pymysql://user:${DB_PASSWORD}@host:3306/database}",
    (ProjectConfig, "tables"): "add tables: [{name: visits, archive: {retention: 6 months}}]",
    (SourceConfig, "url"): f"add url: a SQLAlchemy URL; {_SOURCE_URL_HINT}",
    (ArchiveStoreConfig, "url"): "add url: s3://bucket/prefix or a local directory",
    (WarehouseConfig, "url"): f"add url: a warehouse URL; {_WAREHOUSE_URL_HINT}",
    (ObjectLockConfig, "mode"): (
        "object_lock needs a mode: GOVERNANCE (testable, privileged users can bypass) "
        "or COMPLIANCE (nobody can shorten it)"
    ),
    (ObjectLockConfig, "days"): "add days: <retention per object in days>, e.g. days: 2557 (7 years)",
    (TableConfig, "name"): "add name: <the source table's name>, e.g. name: visits",
    (TableArchiveConfig, "retention"): (
        "add retention: <how long rows stay in the source>, e.g. retention: 6 months "
        "(here or in defaults.archive)"
    ),
}


def _field(model: type[BaseModel] | None, key: str) -> Any:
    if model is None:
        return None
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` (list indexes are skipped), if any."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is DefaultsConfig and part in _DEFAULT_BLOCKS:
            model = _DEFAULT_BLOCKS[part]
            continue
        field = _field(model, str(part))
        if field is None:
            return None
        model = _submodel(field.annotation)
    return model


# `defaults.archive` / `defaults.replica` are plain mappings holding a table block's keys.
_DEFAULT_BLOCKS: dict[str, type[BaseModel]] = {"archive": TableArchiveConfig, "replica": TableReplicaConfig}


def _yaml_keys(model: type[BaseModel]) -> set[str]:
    keys = {field.alias or name for name, field in model.model_fields.items()}
    return keys - {"path"}


def utcnow() -> datetime:
    """Current time in UTC (one place, so tests and runs agree on the clock)."""
    return datetime.now(UTC)
