"""The purge waits while a read replica lags (issue 3: "and, where the source has replicas, replica lag").

A private MariaDB primary and a replica replicating from it (`private_mariadb.py`) stand in for RDS
and its read replica: the shared test server cannot be made a primary. Lag is made for real, with
`MASTER_DELAY` (numeric lag) and `STOP SLAVE SQL_THREAD` (Seconds_Behind_Master NULL), never faked.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from etl_assets.config import ConfigError, parse_config
from etl_assets.engine.archive import ArchiveJob, ArchiveReport
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient, SourceDatabase, SourceError
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets_tests.conftest import unique
from etl_assets_tests.private_mariadb import PASSWORD, PrivateMariaDB, ServerFarm, replicate
from etl_assets_tests.support import archived_keys, free_port, seed_visits, source_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
ROWS = 600


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PrivateMariaDB, PrivateMariaDB]]:
    """A primary and a replica of it, started once for the module."""
    with ServerFarm() as farm:
        primary = farm.server(server_id=1)
        replica = farm.server(server_id=2)
        replicate(primary=primary, replica=replica)
        yield primary, replica


@pytest.fixture
def setup(servers: tuple[PrivateMariaDB, PrivateMariaDB], s3_bucket: str) -> Iterator[dict[str, Any]]:
    """A seeded database on the primary; afterwards the replica is healthy and caught up again."""
    primary, replica = servers
    name = unique("lag")
    primary.execute(f"CREATE DATABASE `{name}`")
    url = primary.url(name)
    seed_visits(url, months=[(2023, 1)], rows_per_month=ROWS)
    try:
        yield {
            "primary": primary,
            "replica": replica,
            "url": url,
            "replica_url": replica.url(name),
            "original": source_keys(url),
            "store": open_store(f"s3://{s3_bucket}/archive", region="us-east-1"),
        }
    finally:
        replica.execute("STOP SLAVE")
        replica.execute("CHANGE MASTER TO MASTER_DELAY = 0")
        replica.execute("START SLAVE")
        primary.execute(f"DROP DATABASE IF EXISTS `{name}`")
        replica.wait_caught_up(primary)


def make_job(
    setup: dict[str, Any], log: list[str], *, archive: str = "", replicas: list[str] | None = None
) -> ArchiveJob:
    replicas = [setup["replica_url"]] if replicas is None else replicas
    # The config as a user writes it (source.replicas as ${VAR} templates); the client gets the
    # resolved URLs, as SourceDatabase.open() gives them.
    config = parse_config(
        "source:\n  url: '${PM_SOURCE_URL}'\n  replicas: ['${PM_REPLICA_URL}']\n"
        "archive:\n  url: 's3://unused/archive'\ntables:\n  - name: visits\n"
        f"    archive: {{retention: 1 year, batch_size: 250, part_rows: 1000, chunk_rows: 500{archive}}}\n",
        source="test-config.yaml",
    )
    client = SourceClient(setup["url"], replicas=replicas)
    return ArchiveJob(
        source=client,
        store=setup["store"],
        table=config.tables[0],
        source_table=client.reflect("visits"),
        partition_key="2023-01-01",
        window=JAN_2023,
        run_id=uuid.uuid4().hex,
        now=datetime.now(UTC),
        log=log.append,
    )


def assert_complete(setup: dict[str, Any], report: ArchiveReport) -> None:
    store: ObjectStore = setup["store"]
    archived = archived_keys(store)
    assert sorted(archived) == sorted(setup["original"]), "every row archived exactly once"
    assert source_keys(setup["url"]) == set()
    assert report.rows_purged == report.rows_committed == ROWS


def lag_of(replica: PrivateMariaDB) -> int:
    return int(replica.status().get("Seconds_Behind_Master") or 0)


def test_purge_waits_while_the_replica_lags_and_goes_on_when_it_catches_up(setup: dict[str, Any]) -> None:
    primary, replica = setup["primary"], setup["replica"]
    # The replica applies each event a minute late: everything written from here on makes it lag.
    replica.execute("STOP SLAVE")
    replica.execute("CHANGE MASTER TO MASTER_DELAY = 60")
    replica.execute("START SLAVE")
    primary.execute(f"INSERT INTO `{setup['url'].rsplit('/', 1)[1]}`.visits (patient_id, status, created_at, "
                    "updated_at) VALUES (1, 'scheduled', '2024-05-01', '2024-05-01')")  # fmt: skip
    replica.wait_for("the replica to lag 2 s", lambda: lag_of(replica) >= 2)
    original = source_keys(setup["url"])

    log: list[str] = []
    waiting = threading.Event()
    rows_when_waiting: list[int] = []

    def watch(message: str) -> None:
        log.append(message)
        if "s behind (max_replica_lag_seconds=1)" in message and not waiting.is_set():
            rows_when_waiting.append(len(source_keys(setup["url"])))  # runs inside the purge's wait
            waiting.set()

    job = make_job(setup, [], archive=", max_replica_lag_seconds: 1")
    job.log = watch
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(_run(job)), daemon=True)
    runner.start()
    assert waiting.wait(60), f"the purge never waited for the replica:\n{chr(10).join(log)}"
    assert rows_when_waiting == [len(original)], "nothing is deleted while the replica lags"
    assert runner.is_alive(), "the purge is still waiting"

    replica.execute("STOP SLAVE")
    replica.execute("CHANGE MASTER TO MASTER_DELAY = 0")
    replica.execute("START SLAVE")
    runner.join(60)
    assert not runner.is_alive(), "the purge went on once the replica caught up"
    report = outcome[0]
    assert isinstance(report, ArchiveReport), report
    assert any(line.startswith("throttling: resuming deletes after waiting") for line in log)
    assert report.rows_kept_deadline == 0
    assert sorted(archived_keys(setup["store"])) == sorted(k for k in original if k in setup["original"])
    assert source_keys(setup["url"]) == original - setup["original"], "only the new May row stays"
    # The replica is named in the log, never with its password.
    assert any("127.0.0.1" in line and str(replica.port) in line and "***" in line for line in log)
    assert not [line for line in log if PASSWORD in line]


def _run(job: ArchiveJob) -> ArchiveReport | BaseException:
    try:
        return job.run()
    except Exception as exc:  # noqa: BLE001 - handed to the test thread to assert on
        return exc


def test_stopped_replica_with_a_deadline_keeps_the_rows_and_reports_them(setup: dict[str, Any]) -> None:
    replica = setup["replica"]
    replica.execute("STOP SLAVE SQL_THREAD")
    log: list[str] = []
    report = make_job(setup, log, archive=", max_replica_lag_seconds: 30, max_run_seconds: 1.5").run()

    assert report.rows_extracted == ROWS
    assert report.rows_purged == 0 and report.rows_committed == 0
    assert report.rows_kept_deadline == ROWS, "every row stays in the source and is reported as kept"
    assert source_keys(setup["url"]) == setup["original"]
    assert archived_keys(setup["store"]) == [], "nothing that is still in the source is published"
    stopped = [line for line in log if "cannot say how far behind it is" in line]
    assert stopped and "SQL thread running: No" in stopped[0] and "counts as too far behind" in stopped[0]
    assert any("max_run_seconds passed while waiting" in line for line in log)
    assert not [line for line in log if PASSWORD in line]

    replica.execute("START SLAVE SQL_THREAD")
    assert_complete(setup, make_job(setup, []).run())


def test_unreachable_replica_counts_as_too_far_behind(setup: dict[str, Any]) -> None:
    nobody = f"mysql+pymysql://etl:{PASSWORD}@127.0.0.1:{free_port()}/x"
    log: list[str] = []
    report = make_job(setup, log, archive=", max_run_seconds: 1", replicas=[nobody]).run()
    assert report.rows_purged == 0 and report.rows_kept_deadline == ROWS
    assert source_keys(setup["url"]) == setup["original"]
    assert any("cannot be reached" in line and "2003" in line for line in log), log
    assert not [line for line in log if PASSWORD in line]


def test_a_replica_user_without_the_monitor_privilege_fails_before_any_delete(setup: dict[str, Any]) -> None:
    replica = setup["replica"]
    user = unique("nomon")[:30]
    replica.execute(f"CREATE USER `{user}`@'127.0.0.1' IDENTIFIED BY 'x-pass'")
    try:
        url = replica.url(user=user, password="x-pass")
        with pytest.raises(SourceError, match=r"source\.replicas\[0\].*SLAVE MONITOR") as raised:
            make_job(setup, [], replicas=[url]).run()
        assert "x-pass" not in str(raised.value)
    finally:
        replica.execute(f"DROP USER `{user}`@'127.0.0.1'")
    assert source_keys(setup["url"]) == setup["original"]


def test_a_primary_listed_as_replica_is_refused(setup: dict[str, Any]) -> None:
    with pytest.raises(SourceError, match=r"is not replicating from anything"):
        make_job(setup, [], replicas=[setup["url"]]).run()
    assert source_keys(setup["url"]) == setup["original"]


def test_replica_urls_are_resolved_from_the_environment_when_a_run_starts(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    template = setup["replica_url"].replace(PASSWORD, "${PM_REPLICA_PASSWORD}")
    resource = SourceDatabase(url=setup["url"], replicas=[template], config_file="etl.yaml")
    with pytest.raises(ConfigError, match=r"etl\.yaml: source\.replicas\[0\]: .*PM_REPLICA_PASSWORD"):
        resource.open()
    monkeypatch.setenv("PM_REPLICA_PASSWORD", PASSWORD)
    client = resource.open()
    try:
        assert client.replicas is not None
        (lag,) = client.replicas.lags()
        assert lag.seconds is not None and lag.seconds <= 1
        assert PASSWORD not in lag.replica
    finally:
        client.dispose()


# -- configuration (no server needed) -------------------------------------------------------------------


def _config(source_extra: str, archive: str, defaults: str = "") -> str:
    return (
        f"source:\n  url: mysql+pymysql://u:${{P}}@h/db\n{source_extra}archive:\n  url: s3://bucket-x/a\n{defaults}"
        f"tables:\n  - name: visits\n    archive: {{retention: 1 year{archive}}}\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _config("", ", max_replica_lag_seconds: 5"),
            "f.yaml: tables[0].archive.max_replica_lag_seconds: table 'visits' limits replica lag but "
            "source.replicas lists no replica",
        ),
        (
            _config("", "", defaults="defaults:\n  archive: {max_replica_lag_seconds: 5}\n"),
            "f.yaml: defaults.archive.max_replica_lag_seconds: table 'visits' limits replica lag",
        ),
        (
            _config("  replicas: ['postgresql+psycopg://a:topsecret@h/db']\n", ""),
            "f.yaml: source.replicas[0]: 'postgresql+psycopg' is not a MySQL/MariaDB URL scheme",
        ),
        (
            _config("  replicas: ['mysql+pymysql://a@r1/db', 'mysql+pymysql://a@r1/db']\n", ""),
            "f.yaml: source.replicas[1]: the same replica as replicas[0]",
        ),
        (_config("", ", max_replica_lag_seconds: 0"), "max_replica_lag_seconds: 0 is out of range"),
        (
            _config("  replicas: mysql+pymysql://a@r1/db\n", ""),
            "source.replicas: 'mysql+pymysql://a@r1/db' is not a list",
        ),
    ],
    ids=["no-replicas", "no-replicas-default", "not-mysql", "twice", "zero", "not-a-list"],
)
def test_replica_config_errors_name_the_key_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, source="f.yaml")
    assert message in str(raised.value)
    assert "topsecret" not in str(raised.value)


def test_replica_config_is_accepted_and_reaches_the_resource() -> None:
    from etl_assets.definitions import build_resources

    config = parse_config(
        _config(
            "  replicas: ['mysql+pymysql://m:${REPLICA_PASSWORD}@r1:3306/db']\n",
            ", max_replica_lag_seconds: 2.5",
        ),
        source="f.yaml",
    )
    assert config.tables[0].archive is not None and config.tables[0].archive.max_replica_lag_seconds == 2.5
    resource = build_resources(config)["source"]
    assert isinstance(resource, SourceDatabase)
    assert resource.replicas == ["mysql+pymysql://m:${REPLICA_PASSWORD}@r1:3306/db"]
    # Without replicas the default limit is harmless: there is nothing to measure.
    plain = parse_config(_config("", ""), source="f.yaml")
    assert plain.tables[0].archive is not None and plain.tables[0].archive.max_replica_lag_seconds == 10
