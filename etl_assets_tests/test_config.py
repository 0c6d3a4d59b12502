"""The config contract (design.md section 3): lookup order, defaults, templates and error messages.

Every invalid configuration must fail when the file is read, with one line per problem that names the
file, the key as written in the YAML (`tables[1].archive.retention`) and what would be valid.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_assets.config import (
    CONFIG_ENV_VAR,
    DEMO_CONFIG_PATH,
    LOCAL_CONFIG_NAME,
    ConfigError,
    ProjectConfig,
    check_identifier,
    find_config_path,
    load_config,
    parse_config,
    resolve_value,
)

# The example from design.md section 3, verbatim.
DESIGN_EXAMPLE = """\
source:
  url: ${SOURCE_DATABASE_URL}          # mysql+pymysql://user:pass@host:3306/clinic
archive:
  url: s3://${ARCHIVE_BUCKET}/archive  # or a local path
  kms_key_id: ${ARCHIVE_KMS_KEY_ID:-}  # SSE-KMS when set, else SSE-S3 (AES256); never unencrypted
  object_lock: {mode: GOVERNANCE, days: 2557}   # optional WORM retention per object
warehouse:
  url: ${WAREHOUSE_URL}                # redshift+redshift_connector://..., postgresql+psycopg://..., duckdb:///...
  schema: staging                      # target schema; created if missing, quoted correctly
  staging_url: s3://${ARCHIVE_BUCKET}/staging   # Redshift only: where COPY reads from
  iam_role: ${REDSHIFT_COPY_ROLE_ARN:-}          # Redshift only
alerts:
  sns_topic_arn: ${ALERTS_SNS_TOPIC_ARN:-}       # empty: alerts go to the log only
defaults:                              # apply to every table unless the table overrides them
  time_column: updated_at
tables:
  - name: visits
    primary_key: [id]                  # default: reflected from the source
    archive: {retention: 6 months, start: 2019-01, purge: true, batch_size: 5000, max_threads_running: 50}
    replica: {partition: daily, start: 2019-01-01, insert_mode: overwrite_existing}
  - name: audit_log
    archive: {retention: 1 year}
"""

WITH_DEFAULTS = """\
source: {url: "mysql+pymysql://etl:${DB_PASSWORD}@db.internal:3306/clinic"}
archive: {url: s3://clinic-archive/archive}
warehouse: {url: "postgresql+psycopg://etl:${PG_PASSWORD}@pg:5432/reporting", schema: reporting}
defaults:
  time_column: modified_at
  owners: [team:data-platform]
  on_drift: evolve
  archive: {retention: 1 year, batch_size: 1000, purge: false}
  replica: {lag: 30 minutes, insert_mode: keep_existing}
tables:
  - name: visits
    time_column: updated_at
    owners: [dba@example.com]
    archive: {batch_size: 5000}
    replica: {}
  - name: audit_log
    archive: {retention: 7 years}
  - name: patients
"""


def _write(tmp_path: Path, text: str, name: str = "etl_assets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _base() -> dict[str, Any]:
    return yaml.safe_load(DESIGN_EXAMPLE)


# --- valid configurations ------------------------------------------------------------------------


def test_design_example_parses_and_keeps_templates(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_EXAMPLE)
    config = load_config(path)

    assert config.path == str(path)
    assert config.source.url == "${SOURCE_DATABASE_URL}"
    assert config.source.group_name == "source"
    assert config.archive is not None
    assert config.archive.url == "s3://${ARCHIVE_BUCKET}/archive"
    assert config.archive.is_s3
    assert config.archive.kms_key_id == "${ARCHIVE_KMS_KEY_ID:-}"
    assert config.archive.object_lock is not None
    assert (config.archive.object_lock.mode, config.archive.object_lock.days) == ("GOVERNANCE", 2557)
    assert config.warehouse is not None
    assert config.warehouse.schema_name == "staging"
    assert config.warehouse.staging_url == "s3://${ARCHIVE_BUCKET}/staging"
    assert config.alerts.sns_topic_arn == "${ALERTS_SNS_TOPIC_ARN:-}"

    visits = config.table("visits")
    assert visits.primary_key == ["id"]
    assert visits.time_column == "updated_at"
    assert visits.archive is not None
    assert visits.archive.retention_period.amount == 6
    assert visits.archive.retention_period.unit == "months"
    assert visits.archive.start_date == date(2019, 1, 1)
    assert (visits.archive.purge, visits.archive.batch_size, visits.archive.max_threads_running) == (
        True,
        5000,
        50,
    )
    assert visits.replica is not None
    assert (visits.replica.partition, visits.replica.insert_mode) == ("daily", "overwrite_existing")
    assert visits.replica.start == date(2019, 1, 1)
    assert str(visits.replica.lag_period) == "15 minutes"
    assert str(visits.replica.freshness_period) == "1 day"

    audit = config.table("audit_log")
    assert audit.primary_key is None  # reflected from the source at run time
    assert audit.archive is not None
    assert str(audit.archive.retention_period) == "1 year"
    assert audit.archive.start is None
    assert audit.replica is None


def test_defaults_apply_and_table_settings_win() -> None:
    config = parse_config(WITH_DEFAULTS, source="defaults.yaml")
    visits, audit, patients = config.tables

    # top-level defaults
    assert visits.time_column == "updated_at"  # overridden
    assert audit.time_column == "modified_at"  # inherited
    assert visits.owners == ["dba@example.com"]
    assert audit.owners == ["team:data-platform"]
    assert audit.on_drift == "evolve"

    # defaults.archive: inherited key by key, the table's own keys win
    assert visits.archive is not None
    assert visits.archive.batch_size == 5000
    assert visits.archive.retention == "1 year"
    assert visits.archive.purge is False
    assert audit.archive is not None
    assert audit.archive.retention == "7 years"
    assert audit.archive.batch_size == 1000

    # defaults.replica applies to a table with a replica block, even an empty one
    assert visits.replica is not None
    assert visits.replica.lag == "30 minutes"
    assert visits.replica.insert_mode == "keep_existing"
    assert audit.replica is None

    # the block is what turns archiving / replication on: no block, no defaults
    assert patients.archive is None
    assert patients.replica is None
    assert patients.time_column == "modified_at"


def test_archive_block_left_empty_takes_every_default() -> None:
    text = WITH_DEFAULTS.replace("  - name: patients\n", "  - name: patients\n    archive:\n")
    patients = parse_config(text, source="f.yaml").table("patients")
    assert patients.archive is not None
    assert (patients.archive.retention, patients.archive.batch_size) == ("1 year", 1000)


def test_group_name_comes_from_the_database_in_the_url() -> None:
    config = parse_config(WITH_DEFAULTS, source="f.yaml")
    assert config.source.group_name == "clinic"
    # a URL without a database never turns user, password or host into a name
    text = WITH_DEFAULTS.replace("@db.internal:3306/clinic", "@db.internal:3306")
    assert parse_config(text, source="f.yaml").source.group_name == "source"
    literal = WITH_DEFAULTS.replace("etl:${DB_PASSWORD}@db.internal:3306/clinic", "etl:hunter2@db.internal")
    assert parse_config(literal, source="f.yaml").source.group_name == "source"


def test_asset_name_is_ascii_for_dagster() -> None:
    text = DESIGN_EXAMPLE.replace("name: audit_log", "name: audit log")
    config = parse_config(text, source="f.yaml")
    assert config.tables[1].asset_name == "audit_log"
    assert config.table("audit_log") is config.table("audit log")


def test_the_bundled_demo_config_validates() -> None:
    config = load_config(DEMO_CONFIG_PATH)
    assert [table.name for table in config.tables] == ["visits", "audit_log", "patients"]
    assert config.source.group_name == "clinic"
    assert config.warehouse is not None
    assert config.warehouse.schema_name == "reporting"
    assert config.archive is not None
    assert not config.archive.is_s3


def test_the_demo_keeps_its_files_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ETL_ASSETS_DEMO_DIR", raising=False)
    config = load_config(DEMO_CONFIG_PATH)
    assert config.contract_path(config.table("visits")) == tmp_path / ".demo" / "schemas" / "visits.json"


def test_values_stay_templates_so_no_secret_is_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATABASE_URL", "mysql+pymysql://etl:hunter2@db:3306/clinic")
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE))
    assert "hunter2" not in config.model_dump_json()
    assert "hunter2" not in repr(config)
    assert resolve_value(config, "source.url", config.source.url).endswith("hunter2@db:3306/clinic")


def test_contract_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DESIGN_EXAMPLE.replace("defaults:", "schemas_dir: ${SCHEMAS_DIR:-contracts}\ndefaults:", 1)
    config = load_config(_write(tmp_path, text))
    monkeypatch.delenv("SCHEMAS_DIR", raising=False)
    assert config.contract_path(config.table("visits")) == tmp_path / "contracts" / "visits.json"
    monkeypatch.setenv("SCHEMAS_DIR", "/srv/schemas")
    assert config.contract_path(config.table("visits")) == Path("/srv/schemas/visits.json")


def test_unknown_table_names_the_configured_ones(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE))
    with pytest.raises(ConfigError, match=r"no table named 'visit'; configured tables: visits, audit_log"):
        config.table("visit")


# --- lookup order ---------------------------------------------------------------------------------


@pytest.fixture
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    return monkeypatch


def test_lookup_uses_the_environment_variable_first(
    tmp_path: Path, no_config_env: pytest.MonkeyPatch
) -> None:
    explicit = _write(tmp_path, WITH_DEFAULTS, name="production.yaml")
    _write(tmp_path, DESIGN_EXAMPLE)  # ./etl_assets.yaml exists too, and loses
    no_config_env.chdir(tmp_path)
    no_config_env.setenv(CONFIG_ENV_VAR, str(explicit))
    assert find_config_path() == explicit
    assert load_config().path == str(explicit)


def test_lookup_then_uses_etl_assets_yaml_in_the_working_directory(
    tmp_path: Path, no_config_env: pytest.MonkeyPatch
) -> None:
    local = _write(tmp_path, WITH_DEFAULTS, name=LOCAL_CONFIG_NAME)
    no_config_env.chdir(tmp_path)
    assert find_config_path().resolve() == local.resolve()
    assert load_config().table("patients").time_column == "modified_at"


def test_lookup_falls_back_to_the_bundled_demo(tmp_path: Path, no_config_env: pytest.MonkeyPatch) -> None:
    no_config_env.chdir(tmp_path)
    assert find_config_path() == DEMO_CONFIG_PATH
    assert load_config().path == str(DEMO_CONFIG_PATH)


def test_an_empty_environment_variable_counts_as_unset(
    tmp_path: Path, no_config_env: pytest.MonkeyPatch
) -> None:
    no_config_env.chdir(tmp_path)
    no_config_env.setenv(CONFIG_ENV_VAR, "")
    assert find_config_path() == DEMO_CONFIG_PATH


def test_lookup_refuses_a_missing_file_named_by_the_variable(
    tmp_path: Path, no_config_env: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.yaml"
    no_config_env.setenv(CONFIG_ENV_VAR, str(missing))
    with pytest.raises(ConfigError) as caught:
        find_config_path()
    assert f"{CONFIG_ENV_VAR}={missing}: no such file" in str(caught.value)
    assert "point it at your etl_assets.yaml" in str(caught.value)


def test_load_config_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the config file"):
        load_config(tmp_path / "nope.yaml")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("source: {url: 'caf\xe9'}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text .*save the config file as UTF-8"):
        load_config(latin1)


# --- invalid configurations -----------------------------------------------------------------------

Change = str | Callable[[dict[str, Any]], Any]


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        node: Any = config
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return change


def _delete(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        node: Any = config
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return change


def _redshift_without_staging(config: dict[str, Any]) -> None:
    config["warehouse"]["url"] = "redshift+redshift_connector://etl:${REDSHIFT_PASSWORD}@rs:5439/dw"
    del config["warehouse"]["staging_url"]


def _defaults_block(block: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["defaults"][block] = values

    return change


def _append_table(table: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda config: config["tables"].append(table)


IDENTIFIER_HINT = "quotes, backticks, semicolons and dots are never accepted"
RETENTION_HINT = "write it as '<whole number> <days|weeks|months|years>', e.g. '6 months'"
INSERT_MODES = "use 'overwrite_existing', 'keep_existing', 'truncate' or 'append'"

# (id, change: YAML text or a mutation of the design example, key as shown, fragment of the fix)
INVALID: list[tuple[str, Change, str, str]] = [
    (
        "unknown top-level key",
        _set("colour", value="blue"),
        "colour",
        "valid keys: alerts, archive, defaults",
    ),
    (
        "typo in a table key",
        _set("tables", 1, "archive", "retension", value="1 year"),
        "tables[1].archive.retension",
        "did you mean 'retention'?",
    ),
    (
        "typo in primary_key",
        _set("tables", 0, "primary_keys", value=["id"]),
        "tables[0].primary_keys",
        "did you mean 'primary_key'?",
    ),
    ("missing table name", _delete("tables", 1, "name"), "tables[1].name", "e.g. name: visits"),
    (
        "table name without value",
        _set("tables", 1, "name", value=None),
        "tables[1].name",
        "e.g. name: visits",
    ),
    ("duplicate table", _append_table({"name": "visits"}), "tables[2].name", "keep one entry per table"),
    (
        "tables clash as assets",
        _append_table({"name": "audit log"}),
        "tables[2].name",
        "configure each table once",
    ),
    ("quote in table name", _set("tables", 1, "name", value="audit'log"), "tables[1].name", IDENTIFIER_HINT),
    (
        "injection as table name",
        _set("tables", 0, "name", value="visits; DROP TABLE x"),
        "tables[0].name",
        IDENTIFIER_HINT,
    ),
    (
        "backtick in primary key",
        _set("tables", 0, "primary_key", value=["id", "`id`"]),
        "tables[0].primary_key[1]",
        IDENTIFIER_HINT,
    ),
    (
        "dot in time column",
        _set("tables", 0, "time_column", value="v.updated_at"),
        "tables[0].time_column",
        IDENTIFIER_HINT,
    ),
    (
        "semicolon in schema",
        _set("warehouse", "schema", value="staging; DROP SCHEMA public"),
        "warehouse.schema",
        IDENTIFIER_HINT,
    ),
    (
        "injection in sortkey",
        _set("tables", 0, "replica", "sortkey", value=["updated_at", "id) --"]),
        "tables[0].replica.sortkey[1]",
        IDENTIFIER_HINT,
    ),
    (
        "SQL injection in column_types",
        _set("tables", 0, "replica", "column_types", value={"notes": "TEXT); DROP TABLE visits; --"}),
        "tables[0].replica.column_types.notes",
        "e.g. VARCHAR(512) or DECIMAL(38,10)",
    ),
    (
        "retention 0",
        _set("tables", 1, "archive", "retention", value="0 months"),
        "tables[1].archive.retention",
        RETENTION_HINT,
    ),
    (
        "retention -1 month",
        _set("tables", 1, "archive", "retention", value="-1 month"),
        "tables[1].archive.retention",
        RETENTION_HINT,
    ),
    (
        "retention 6 parsecs",
        _set("tables", 1, "archive", "retention", value="6 parsecs"),
        "tables[1].archive.retention",
        RETENTION_HINT,
    ),
    (
        "retention in minutes",
        _set("tables", 1, "archive", "retention", value="90 minutes"),
        "tables[1].archive.retention",
        RETENTION_HINT,
    ),
    (
        "retention of 200 years",
        _set("tables", 1, "archive", "retention", value="200 years"),
        "tables[1].archive.retention",
        "use at most '100 years'",
    ),
    (
        "missing retention",
        _delete("tables", 1, "archive", "retention"),
        "tables[1].archive.retention",
        "retention: 6 months",
    ),
    (
        "bad insert mode",
        _set("tables", 0, "replica", "insert_mode", value="upsert"),
        "tables[0].replica.insert_mode",
        INSERT_MODES,
    ),
    (
        "bad partition",
        _set("tables", 0, "replica", "partition", value="weekly"),
        "tables[0].replica.partition",
        "use 'daily', 'hourly' or 'monthly'",
    ),
    (
        "batch_size 0",
        _set("tables", 0, "archive", "batch_size", value=0),
        "tables[0].archive.batch_size",
        "from 1 to 100000",
    ),
    (
        "batch_size not a number",
        _set("tables", 0, "archive", "batch_size", value="lots"),
        "tables[0].archive.batch_size",
        "use a whole number from 1 to 100000",
    ),
    (
        "purge not a boolean",
        _set("tables", 1, "archive", "purge", value="maybe"),
        "tables[1].archive.purge",
        "use true or false",
    ),
    (
        "owner not team or email",
        _set("tables", 0, "owners", value=["bob"]),
        "tables[0].owners[0]",
        "team:data-platform",
    ),
    (
        "empty primary key",
        _set("tables", 0, "primary_key", value=[]),
        "tables[0].primary_key",
        "list at least one column",
    ),
    (
        "archive start not YYYY-MM",
        _set("tables", 0, "archive", "start", value="2019-13"),
        "tables[0].archive.start",
        "YYYY-MM, e.g. 2019-01",
    ),
    (
        "archive start a day",
        _set("tables", 0, "archive", "start", value=date(2019, 1, 15)),
        "tables[0].archive.start",
        "write the month as YYYY-MM",
    ),
    (
        "replica start a month",
        _set("tables", 0, "replica", "start", value="2019-01"),
        "tables[0].replica.start",
        "YYYY-MM-DD",
    ),
    (
        "lag in months",
        _set("tables", 0, "replica", "lag", value="2 months"),
        "tables[0].replica.lag",
        "'<whole number> <minutes|hours|days>'",
    ),
    (
        "bad source URL scheme",
        _set("source", "url", value="mysq://etl:${DB_PASSWORD}@db/clinic"),
        "source.url",
        "use mysql+pymysql://",
    ),
    (
        "bad warehouse URL scheme",
        _set("warehouse", "url", value="snowflake://acct/db"),
        "warehouse.url",
        "duckdb:///path.duckdb",
    ),
    (
        "bad archive URL scheme",
        _set("archive", "url", value="gs://bucket/archive"),
        "archive.url",
        "use s3://bucket/prefix",
    ),
    (
        "s3 URL without a bucket",
        _set("archive", "url", value="s3:///archive"),
        "archive.url",
        "use s3://bucket/prefix",
    ),
    (
        "invalid bucket name",
        _set("archive", "url", value="s3://My_Bucket/archive"),
        "archive.url",
        "3-63 lowercase letters, digits, '.' or '-'",
    ),
    (
        "object_lock.days without a mode",
        _set("archive", "object_lock", value={"days": 2557}),
        "archive.object_lock.mode",
        "GOVERNANCE (testable, privileged users can bypass) or COMPLIANCE",
    ),
    (
        "object_lock mode in lower case",
        _set("archive", "object_lock", value={"mode": "governance", "days": 2557}),
        "archive.object_lock.mode",
        "use 'GOVERNANCE' or 'COMPLIANCE'",
    ),
    (
        "object_lock on a local directory",
        _set("archive", "url", value="/var/lib/archive"),
        "archive.object_lock",
        "use url: s3://bucket/prefix or remove object_lock",
    ),
    (
        "Redshift without staging_url",
        _redshift_without_staging,
        "warehouse.staging_url",
        "set staging_url: s3://bucket/staging",
    ),
    (
        "unknown key in defaults.archive",
        _defaults_block("archive", batchsize=1000),
        "defaults.archive.batchsize",
        "did you mean 'batch_size'?",
    ),
    (
        "invalid value inherited from defaults",
        _defaults_block("archive", batch_size=0),
        "defaults.archive.batch_size",
        "use a whole number from 1 to 100000",
    ),
    (
        "invalid default every table overrides",
        _defaults_block("archive", retention="forever"),
        "defaults.archive.retention",
        RETENTION_HINT,
    ),
    (
        "invalid defaults.replica value",
        _defaults_block("replica", insert_mode="merge"),
        "defaults.replica.insert_mode",
        INSERT_MODES,
    ),
    (
        "bad defaults.time_column",
        _set("defaults", "time_column", value="updated;at"),
        "defaults.time_column",
        IDENTIFIER_HINT,
    ),
    (
        "unclosed ${",
        _set("source", "url", value="mysql+pymysql://etl:${DB_PASSWORD@db:3306/clinic"),
        "source.url",
        "close it with '}'",
    ),
    (
        "bad variable name",
        _set("archive", "kms_key_id", value="${1KEY}"),
        "archive.kms_key_id",
        "use ${NAME} or ${NAME:-default}",
    ),
    (
        "table archive without a top-level archive store",
        _delete("archive"),
        "tables[0].archive",
        "add archive: {url: s3://bucket/prefix}",
    ),
    (
        "table replica without a warehouse",
        _delete("warehouse"),
        "tables[0].replica",
        "add warehouse: {url: ...}",
    ),
    ("no tables", _set("tables", value=[]), "tables", "add at least one"),
    ("table not a mapping", _set("tables", value=["visits"]), "tables[0]", "with keys archive, contract"),
    ("missing source", _delete("source"), "source", "add source: {url: mysql+pymysql://"),
    (
        "SNS topic not an ARN",
        _set("alerts", "sns_topic_arn", value="alerts"),
        "alerts.sns_topic_arn",
        "arn:aws:sns:<region>",
    ),
    ("file not a mapping", "- source\n- tables\n", "(top level)", "start it with source: {url: ...}"),
    ("empty file", "", "(top level)", "start it with source: {url: ...}"),
    (
        "YAML syntax error",
        "source:\n  url: sqlite:///x.db\ntables: [\n",
        "line 4, column 1",
        "check the indentation",
    ),
    (
        "key given twice on one line",
        DESIGN_EXAMPLE.replace("{mode: GOVERNANCE, days: 2557}", "{mode: GOVERNANCE, days: 2557, days: 1}"),
        "archive.object_lock.days",
        "given twice in one mapping (line 6)",
    ),
    (
        "key given twice",
        DESIGN_EXAMPLE.replace(
            "    archive: {retention: 1 year}", "    archive: {retention: 1 year}\n    archive: {}"
        ),
        "tables[1].archive",
        "given twice in one mapping (lines 22 and 23); YAML would silently keep the last, so keep one",
    ),
]


@pytest.mark.parametrize(("change", "key", "hint"), [pytest.param(*case[1:], id=case[0]) for case in INVALID])
def test_invalid_config_names_file_key_and_fix(tmp_path: Path, change: Change, key: str, hint: str) -> None:
    if isinstance(change, str):
        text = change
    else:
        config = copy.deepcopy(_base())
        change(config)
        text = yaml.safe_dump(config, sort_keys=False)
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert f"{path}: {key}: " in message, message
    assert hint in message, message
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), line


def test_there_are_at_least_thirty_invalid_cases() -> None:
    assert len(INVALID) >= 30


def test_injection_in_a_table_name_is_refused_at_validation() -> None:
    text = DESIGN_EXAMPLE.replace("name: audit_log", "name: 'visits; DROP TABLE x'")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="f.yaml")
    assert str(caught.value).startswith("f.yaml: tables[1].name: 'visits; DROP TABLE x' is not an acceptable")


def test_every_problem_is_listed_once_one_line_each() -> None:
    config = _base()
    config["defaults"]["archive"] = {"batch_size": 0}  # inherited by both tables
    config["tables"][1]["archive"]["retention"] = "forever"
    config["warehouse"]["schema"] = "a;b"
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(config), source="f.yaml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 3, lines
    assert [line.split(": ")[1] for line in lines] == [
        "warehouse.schema",
        "defaults.archive.batch_size",
        "tables[1].archive.retention",
    ]


def test_a_literal_password_is_not_repeated_in_errors() -> None:
    text = DESIGN_EXAMPLE.replace("${SOURCE_DATABASE_URL}", "mysq://etl:hunter2@db:3306/clinic")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="f.yaml")
    assert "source.url" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_schema_is_the_yaml_key_for_the_warehouse_schema() -> None:
    config = _base()
    config["warehouse"]["shema"] = config["warehouse"].pop("schema")
    with pytest.raises(
        ConfigError, match=r"f\.yaml: warehouse\.shema: unknown key 'shema'; did you mean 'schema'\?"
    ):
        parse_config(yaml.safe_dump(config), source="f.yaml")


# --- variables resolved at run time ---------------------------------------------------------------


@pytest.fixture
def design_config(tmp_path: Path) -> ProjectConfig:
    return load_config(_write(tmp_path, DESIGN_EXAMPLE))


def test_resolve_value_names_file_key_and_variable(
    design_config: ProjectConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARCHIVE_BUCKET", raising=False)
    assert design_config.archive is not None
    with pytest.raises(ConfigError) as caught:
        resolve_value(design_config, "archive.url", design_config.archive.url)
    assert str(caught.value) == (
        f"{design_config.path}: archive.url: environment variable ARCHIVE_BUCKET is not set; "
        "export ARCHIVE_BUCKET=... or give a default with ${ARCHIVE_BUCKET:-...}"
    )


def test_resolve_value_uses_the_environment_and_defaults(
    design_config: ProjectConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVE_BUCKET", "clinic-archive")
    monkeypatch.delenv("ARCHIVE_KMS_KEY_ID", raising=False)
    archive = design_config.archive
    assert archive is not None
    assert resolve_value(design_config, "archive.url", archive.url) == "s3://clinic-archive/archive"
    assert resolve_value(design_config, "archive.kms_key_id", archive.kms_key_id) == ""
    assert resolve_value(design_config, "archive.region", "${NO_SUCH_REGION_VAR:-eu-west-1}") == "eu-west-1"


def test_resolve_value_never_shows_another_variable(
    design_config: ProjectConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_USER_SECRET", "hunter2")
    monkeypatch.delenv("DB_HOST_MISSING", raising=False)
    with pytest.raises(ConfigError) as caught:
        resolve_value(design_config, "source.url", "mysql+pymysql://${DB_USER_SECRET}@${DB_HOST_MISSING}/db")
    assert "DB_HOST_MISSING" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_resolve_value_names_file_and_key_for_a_malformed_template(design_config: ProjectConfig) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_value(design_config, "warehouse.iam_role", "${ROLE")
    assert str(caught.value).startswith(
        f"{design_config.path}: warehouse.iam_role: '${{ROLE' has an unclosed"
    )


# --- identifiers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["visits", "audit_log", "Visits2024", "order items", "tbl-x", "prix_é", "t$1"]
)
def test_check_identifier_accepts_plain_names(name: str) -> None:
    assert check_identifier(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1st",
        "a'b",
        'a"b',
        "a`b",
        "a;b",
        "a.b",
        "visits\n",
        " visits",
        "a\x00b",
        "x" * 65,
        "visits; DROP TABLE x",
    ],
)
def test_check_identifier_refuses_injection_material(name: str) -> None:
    with pytest.raises(ValueError, match="is not an acceptable table name; use letters"):
        check_identifier(name, "table name")
