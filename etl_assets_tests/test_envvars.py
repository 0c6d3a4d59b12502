"""`${VAR}` / `${VAR:-default}` templates (`lib/envvars.py`): resolved at run time, never leaked."""

from __future__ import annotations

import pytest

from etl_assets.lib import envvars
from etl_assets.lib.envvars import TemplateError


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${HOST}", {"HOST": "db.internal"}, "db.internal"),
        (
            "mysql+pymysql://etl:${PW}@${HOST}:3306/clinic",
            {"PW": "s3cr3t", "HOST": "db"},
            "mysql+pymysql://etl:s3cr3t@db:3306/clinic",
        ),
        ("${REGION:-us-east-1}", {}, "us-east-1"),
        ("${REGION:-us-east-1}", {"REGION": "eu-west-1"}, "eu-west-1"),
        ("${REGION:-us-east-1}", {"REGION": ""}, "us-east-1"),  # `:-` also replaces an empty value
        ("${KMS_KEY:-}", {}, ""),
        ("${EMPTY}", {"EMPTY": ""}, ""),  # set but empty, no default: empty
        ("${URL:-http://127.0.0.1:3000}", {}, "http://127.0.0.1:3000"),
        ("plain text", {}, "plain text"),
        ("pa$$word $HOME", {}, "pa$$word $HOME"),  # only ${...} is a reference
        ("s3://${B}/${B}", {"B": "bucket"}, "s3://bucket/bucket"),
    ],
)
def test_resolve(value: str, environ: dict[str, str], expected: str) -> None:
    assert envvars.resolve(value, environ) == expected


def test_resolve_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_TEST_BUCKET", "clinic-archive")
    assert envvars.resolve("s3://${ETL_TEST_BUCKET}/archive") == "s3://clinic-archive/archive"


def test_resolve_names_the_missing_variable_but_no_value() -> None:
    with pytest.raises(TemplateError) as caught:
        envvars.resolve("mysql+pymysql://etl:${PW}@${HOST}/clinic", {"PW": "hunter2"})
    assert str(caught.value) == "environment variable HOST is not set"
    assert caught.value.variable == "HOST"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${1ABC}", "'${1ABC}' is not a valid variable reference; use ${NAME} or ${NAME:-default}"),
        ("${}", "'${}' is not a valid variable reference"),
        ("${A B}", "'${A B}' is not a valid variable reference"),
        ("${A-default}", "'${A-default}' is not a valid variable reference"),
        ("${A:-${B}}", "nests a reference in its default, which is not supported"),
        ("s3://${BUCKET/archive", "has an unclosed '${'; close it with '}'"),
    ],
)
def test_malformed_templates_are_refused(value: str, problem: str) -> None:
    with pytest.raises(TemplateError) as checked:
        envvars.check_template(value)
    assert problem in str(checked.value)
    # resolving never passes a malformed template through as if it were text
    with pytest.raises(TemplateError):
        envvars.resolve(value, {"A": "a", "B": "b", "BUCKET": "x"})


def test_check_template_accepts_well_formed_values() -> None:
    for value in ("", "plain", "${A}", "${A:-}", "${A_1:-x:y/z}", "pre ${A} mid ${B:-b} post"):
        envvars.check_template(value)


def test_is_template_and_variables() -> None:
    assert envvars.is_template("s3://${BUCKET}/archive")
    assert not envvars.is_template("s3://bucket/archive")
    assert not envvars.is_template("$BUCKET")
    assert envvars.variables("mysql://${USER}:${PW:-x}@${HOST}/db") == ["USER", "PW", "HOST"]
    assert envvars.variables("no refs") == []


def test_static_prefix() -> None:
    assert envvars.static_prefix("s3://${BUCKET}/archive") == "s3://"
    assert envvars.static_prefix("${URL}") == ""
    assert envvars.static_prefix("duckdb:///x.duckdb") == "duckdb:///x.duckdb"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mysql+pymysql://etl:hunter2@db:3306/clinic", "mysql+pymysql://etl:***@db:3306/clinic"),
        ("mysql+pymysql://etl:p@ss@db/clinic", "mysql+pymysql://etl:***@db/clinic"),
        ("mysql+pymysql://etl:${DB_PASSWORD}@db/clinic", "mysql+pymysql://etl:${DB_PASSWORD}@db/clinic"),
        ("mysql+pymysql://etl@db/clinic", "mysql+pymysql://etl@db/clinic"),
        ("sqlite:///clinic.db", "sqlite:///clinic.db"),
        (
            "postgresql+psycopg://u:pw@h:5432/db?sslmode=require",
            "postgresql+psycopg://u:***@h:5432/db?sslmode=require",
        ),
    ],
)
def test_redact_hides_literal_passwords_only(value: str, expected: str) -> None:
    assert envvars.redact(value) == expected


def test_unclosed_template_message_hides_a_literal_password() -> None:
    with pytest.raises(TemplateError) as caught:
        envvars.check_template("mysql+pymysql://etl:hunter2@${HOST/clinic")
    assert "hunter2" not in str(caught.value)
