"""Shared fixtures: the real local servers, each test in its own database, schema and bucket.

The servers come from `scripts/stack.sh` (which `make test` and CI run first); the URLs arrive in
ETL_TEST_MYSQL_URL / ETL_TEST_PG_URL / ETL_TEST_S3_ENDPOINT. Without ETL_TEST_S3_ENDPOINT an in-process
moto server is started. A server that does not answer fails the tests instead of skipping them, so a
broken stack can never look green.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from etl_assets_tests.reliability import Record, Reliability, activate, is_reliability_file, scenario_name
from etl_assets_tests.reliability import append as append_record

DEFAULT_MYSQL_URL = "mysql+pymysql://etl:etl-test-pass@127.0.0.1:3306/"
DEFAULT_PG_URL = "postgresql+psycopg://etl:etl-test-pass@127.0.0.1:5432/etl_test"


def unique(prefix: str) -> str:
    """A short unique name for a database, schema or bucket."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def mysql_server_url() -> str:
    """URL of the MariaDB/MySQL server without a database."""
    url = os.environ.get("ETL_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa_exc.OperationalError as exc:
        pytest.fail(
            f"MariaDB is not reachable at {engine.url.render_as_string(hide_password=True)}: run `make services` ({exc.orig})"
        )
    finally:
        engine.dispose()
    return url


@pytest.fixture
def mysql_url(mysql_server_url: str) -> Iterator[str]:
    """A fresh, uniquely named MariaDB database for one test, dropped afterwards."""
    name = unique("etl_t")
    admin = sa.create_engine(mysql_server_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    try:
        yield sa.make_url(mysql_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of the PostgreSQL test database."""
    url = os.environ.get("ETL_TEST_PG_URL", DEFAULT_PG_URL)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa_exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable: run `make services` ({exc.orig})")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_schema(pg_server_url: str) -> Iterator[str]:
    """A uniquely named schema name; dropped (if created) afterwards."""
    name = unique("etl_w")
    yield name
    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3/SNS/SQS/KMS endpoint on loopback; AWS_* variables point boto3 at it for the session."""
    endpoint = os.environ.get("ETL_TEST_S3_ENDPOINT")
    server = None
    if not endpoint:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}  # fmt: skip
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if server is not None:
            server.stop()


def _empty_bucket(client, bucket: str) -> None:
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(
                Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"], BypassGovernanceRetention=True
            )


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """A fresh bucket, emptied and removed afterwards."""
    client = boto3.client("s3", region_name="us-east-1")
    name = unique("etl-b").replace("_", "-")
    client.create_bucket(Bucket=name)
    yield name
    _empty_bucket(client, name)
    client.delete_bucket(Bucket=name)


@pytest.fixture
def locked_bucket(s3_endpoint: str) -> Iterator[str]:
    """A fresh bucket with Object Lock enabled (versioned), removed afterwards with governance bypass."""
    client = boto3.client("s3", region_name="us-east-1")
    name = unique("etl-l").replace("_", "-")
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name
    try:
        _empty_bucket(client, name)
        client.delete_bucket(Bucket=name)
    except Exception:  # noqa: BLE001 - COMPLIANCE objects cannot be removed
        pass


# -- reliability scenarios (see reliability.py) ---------------------------------------------------------

_RELIABILITY = pytest.StashKey[Reliability]()
_OUTCOME = pytest.StashKey[str]()
_RECORDS = pytest.StashKey[list[Record]]()


@pytest.fixture(autouse=True)
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    """What this test accounted for: `reliability.checked(rows=..., lost=...)` (see reliability.py)."""
    category, name = scenario_name(request.node.nodeid)
    record = Reliability(category, name)
    request.node.stash[_RELIABILITY] = record
    activate(record)
    try:
        yield record
    finally:
        activate(None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """After a reliability test's last phase, record its scenario line (failed in any phase = FAIL)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.outcome != "passed" and item.stash.get(_OUTCOME, "passed") != "failed":
        item.stash[_OUTCOME] = "xfail" if hasattr(report, "wasxfail") else report.outcome
    if report.when != "teardown":
        return
    record = item.stash.get(_RELIABILITY, None)
    if record is None:
        record = Reliability(*scenario_name(item.nodeid))
    if not (is_reliability_file(item.nodeid) or record.calls):
        return
    line = record.record(item.stash.get(_OUTCOME, "passed"))
    item.config.stash.setdefault(_RECORDS, []).append(line)
    append_record(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line per reliability scenario that ran."""
    records = config.stash.get(_RECORDS, [])
    if records:
        terminalreporter.section("reliability scenarios")
        for record in records:
            terminalreporter.write_line(record.line())
