"""Alerts: message wording (pure), and the sensors against the local SNS endpoint.

The integration tests subscribe an SQS queue to a fresh SNS topic on the moto server and read back
exactly what a subscriber would get, tick by tick: one message per new failure, one per recovery,
one per failed run, none when SNS is down (and no tick fails because of it).
"""

from __future__ import annotations

import json
import logging
import socket
import string
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import dagster as dg
import pytest

from etl_assets.assets.per_table import TableFailures
from etl_assets.lib.alerts import (
    BODY_MAX_BYTES,
    SUBJECT_MAX,
    check_failed_alert,
    check_recovered_alert,
    redact,
    run_failed_alert,
    safe_subject,
)
from etl_assets.lib.schema_diff import ColumnChange, SchemaDiff
from etl_assets.resources.alerts import AlertPublisher
from etl_assets.sensors.alerts import (
    FAILED_CHECKS_SENSOR,
    RUN_FAILURE_SENSOR,
    build_alert_sensors,
    check_transition,
    load_cursor,
    run_partition,
)

integration = pytest.mark.integration
UI = "http://dagster.example:3000"
SECRET_URL = "mysql+pymysql://u:secret@host/db"
VISITS = dg.AssetKey(["source", "visits"])

# --------------------------------------------------------------------------------------------------
# Pure: wording, redaction, state changes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"could not connect to {SECRET_URL}", "could not connect to mysql+pymysql://u:***@host/db"),
        ("postgresql+psycopg://etl:p@ss/w0rd@db:5432/x", "postgresql+psycopg://etl:***@db:5432/x"),
        ("mysql+pymysql://etl:${DB_PASSWORD}@host/db", "mysql+pymysql://etl:${DB_PASSWORD}@host/db"),
        ("redshift://u:a b@h", "redshift://u:a b@h"),  # a space ends a URL: nothing looks like userinfo
        ("'mysql://a:b@h/d' and 'pg://c:d@e/f'", "'mysql://a:***@h/d' and 'pg://c:***@e/f'"),
        ("host=db password=hunter2 user=etl", "host=db password=*** user=etl"),
        # MySQL says whether a password was sent, not which: nothing to hide.
        (
            "Access denied for user 'etl'@'h' (using password: YES)",
            "Access denied for user 'etl'@'h' (using password: YES)",
        ),
        ("key AKIAIOSFODNN7EXAMPLE leaked", "key *** leaked"),
        ("s3://bucket/prefix/key@2024", "s3://bucket/prefix/key@2024"),
        ("mysql://etl@host/db", "mysql://etl@host/db"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "[etl-assets] schema drift: clinic.visits (2 columns)",
        "[etl-assets] check failed: " + "x" * 300,
        "[etl-assets] schema drift: clïnic.visitś\r\nsecond line\ttab",
        "[etl-assets] schema drift: клиника.таблица",
        "\x00\x1b  leading control characters",
    ],
)
def test_safe_subject_is_what_sns_accepts(text: str) -> None:
    subject = safe_subject(text)
    assert len(subject) <= SUBJECT_MAX < 100
    assert subject.isascii()
    assert not any(ord(c) < 32 or ord(c) == 127 for c in subject)
    assert subject[0].isalnum() or subject[0] in string.punctuation
    if len(text) > 120:
        assert subject.endswith("...")


def test_safe_subject_keeps_letters_of_accented_names() -> None:
    assert (
        safe_subject("[etl-assets] schema drift: clïnic.visitś") == "[etl-assets] schema drift: clinic.visits"
    )


def _drift() -> SchemaDiff:
    return SchemaDiff(
        table="visits",
        changes=(
            ColumnChange("notes", "retyped", "varchar(255)", "text", "widening", replica_fits=False),
            ColumnChange("amount", "dropped", "decimal(12,2) NULL", None, "breaking"),
        ),
        primary_key_before=("id",),
        primary_key_after=("id",),
    )


def _drift_metadata(diff: SchemaDiff) -> dict[str, Any]:
    return {
        "diff": diff.to_dict(),
        "summary": diff.summary,
        "changes": len(diff.changes),
        "diff_markdown": diff.to_markdown(),
    }


def test_schema_drift_alert_subject_and_body() -> None:
    diff = _drift()
    alert = check_failed_alert(
        source_name="clinic",
        table="visits",
        asset_key="source/visits",
        check_name="schema_drift",
        description=diff.summary,
        metadata=_drift_metadata(diff),
        run_id="r-1",
        partition=None,
        ui_url=UI + "/",
    )
    assert alert.kind == "check_failed"
    assert alert.subject == "[etl-assets] schema drift: clinic.visits (2 columns)"
    body = json.loads(alert.message)
    assert body["table"] == "visits"
    assert body["source"] == "clinic"
    assert body["check"] == "schema_drift"
    assert body["diff"] == diff.to_dict()
    assert body["summary"] == diff.summary
    assert body["changes"] == 2
    assert "diff_markdown" not in json.dumps(body["metadata"])
    assert body["run_id"] == "r-1"
    assert body["run_url"] == f"{UI}/runs/r-1"
    assert body["asset_url"] == f"{UI}/assets/source/visits"
    assert body["partition"] == ""


def test_generic_check_and_recovery_subjects() -> None:
    common: dict[str, Any] = {
        "source_name": "clinic",
        "table": "visits",
        "asset_key": "replica/visits",
        "check_name": "replica_row_count",
        "description": "replica has 3 rows fewer",
        "metadata": {"difference": -3, "note": f"compared with {SECRET_URL}"},
        "run_id": "r-2",
        "partition": "2024-01-31",
        "ui_url": UI,
    }
    failed = check_failed_alert(**common)
    assert failed.subject == "[etl-assets] check failed: replica_row_count on replica/visits"
    assert failed.body["metadata"] == {
        "difference": -3,
        "note": "compared with mysql+pymysql://u:***@host/db",
    }
    assert failed.body["partition"] == "2024-01-31"
    recovered = check_recovered_alert(**common)
    assert recovered.kind == "check_recovered"
    assert recovered.subject == "[etl-assets] check recovered: replica_row_count on replica/visits"
    drift = check_recovered_alert(**{**common, "check_name": "schema_drift", "asset_key": "source/visits"})
    assert drift.subject == "[etl-assets] schema drift resolved: clinic.visits"


def test_long_names_keep_subjects_short_and_bodies_bounded() -> None:
    huge = {"diff": {"changes": ["x" * 1000] * 400}, "changes": 400, "summary": "s" * 50_000}
    alert = check_failed_alert(
        source_name="a_very_long_source_database_name",
        table="t" * 64,
        asset_key="source/" + "t" * 64,
        check_name="schema_drift",
        description=None,
        metadata=huge,
        run_id="r",
        partition=None,
        ui_url=UI,
    )
    assert len(alert.subject) <= SUBJECT_MAX
    assert alert.subject.endswith("...")
    assert len(alert.message.encode()) <= BODY_MAX_BYTES
    assert alert.body["asset_url"] and alert.body["run_id"] == "r"


def test_run_failed_alert() -> None:
    alert = run_failed_alert(
        job_name="__ASSET_JOB",
        run_id="r-3",
        step_key="archive__visits",
        error=f"RuntimeError: cannot reach {SECRET_URL}\n",
        tables=["visits"],
        partition="2024-01-01",
        ui_url=UI,
        source_name="clinic",
        error_type="RuntimeError",
    )
    assert alert.subject == "[etl-assets] run failed: archive__visits (clinic.visits; 2024-01-01)"
    assert "secret" not in alert.message
    assert alert.body["error"] == "RuntimeError: cannot reach mysql+pymysql://u:***@host/db"
    assert alert.body["step"] == "archive__visits"
    assert alert.body["run_url"] == f"{UI}/runs/r-3"


@pytest.mark.parametrize(
    ("seen", "failing", "expected"),
    [
        (None, True, "failed"),  # fresh cursor, failing now: alert once
        (None, False, None),
        ({"id": 1, "failing": False}, True, "failed"),
        ({"id": 1, "failing": True}, True, None),  # still failing: quiet
        ({"id": 1, "failing": True}, False, "recovered"),
        ({"id": 1, "failing": False}, False, None),
    ],
)
def test_check_transition(seen: dict[str, Any] | None, failing: bool, expected: str | None) -> None:
    assert check_transition(seen, failing) == expected


def test_unreadable_cursor_starts_afresh() -> None:
    assert load_cursor(None) == {}
    assert load_cursor("not json") == {}
    assert load_cursor("[1, 2]") == {}
    assert load_cursor('{"a": {"id": 1, "failing": true}, "b": 3}') == {"a": {"id": 1, "failing": True}}


def test_run_partition() -> None:
    assert run_partition({"dagster/partition": "2024-01-01"}) == "2024-01-01"
    assert (
        run_partition(
            {
                "dagster/asset_partition_range_start": "2024-01-01",
                "dagster/asset_partition_range_end": "2024-03-01",
            }
        )
        == "2024-01-01...2024-03-01"
    )
    assert run_partition({}) is None


def test_empty_topic_logs_the_alert(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("etl_assets_tests.alerts")
    alert = run_failed_alert(
        job_name="j", run_id="r", step_key=None, error="boom", tables=[], partition=None, ui_url=UI
    )
    with caplog.at_level(logging.INFO, logger=log.name):
        assert AlertPublisher(sns_topic_arn="").publish(alert, log) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert alert.subject in record.getMessage()
    assert '"run_id": "r"' in record.getMessage()


def test_unset_topic_variable_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ETL_TEST_ALERTS_TOPIC", raising=False)
    log = logging.getLogger("etl_assets_tests.alerts")
    alert = run_failed_alert(
        job_name="j", run_id="r", step_key=None, error="x", tables=[], partition=None, ui_url=UI
    )
    publisher = AlertPublisher(sns_topic_arn="${ETL_TEST_ALERTS_TOPIC}", config_file="etl_assets.yaml")
    with caplog.at_level(logging.INFO, logger=log.name):
        assert publisher.publish(alert, log) is None
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "ETL_TEST_ALERTS_TOPIC" in record.getMessage()
    assert "alerts.sns_topic_arn" in record.getMessage()


def test_ui_base() -> None:
    assert AlertPublisher(ui_url="http://ui:3000/").ui_base() == "http://ui:3000"
    assert AlertPublisher(ui_url="${ETL_TEST_UNSET_UI_URL}").ui_base() == "http://127.0.0.1:3000"
    assert AlertPublisher(ui_url="https://u:pw@ui.example").ui_base() == "https://u:***@ui.example"


# --------------------------------------------------------------------------------------------------
# Against the local SNS endpoint
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def sns_queue(s3_endpoint: str) -> Iterator[tuple[str, str]]:
    """A fresh SNS topic with an SQS queue subscribed (envelopes, so Subject is kept); removed afterwards."""
    sns = boto3.client("sns", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    name = f"etl-alerts-{uuid.uuid4().hex[:10]}"
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "false"}
    )
    try:
        yield topic_arn, queue_url
    finally:
        sns.delete_topic(TopicArn=topic_arn)
        sqs.delete_queue(QueueUrl=queue_url)


def received(queue_url: str) -> list[dict[str, Any]]:
    """Every message now in the queue (removed from it): subject, parsed body, attributes, raw text."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not batch:
            return messages
        for item in batch:
            envelope = json.loads(item["Body"])
            messages.append(
                {
                    "subject": envelope.get("Subject"),
                    "body": json.loads(envelope["Message"]),
                    "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                    "raw": item["Body"],
                }
            )
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=item["ReceiptHandle"])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drift_defs(outcome: dict[str, Any], publisher: AlertPublisher) -> tuple[dg.Definitions, list[Any]]:
    """`source/visits` with a `schema_drift` check whose result `outcome` decides."""

    @dg.asset(key=VISITS, tags={"etl_assets/table": "visits"}, group_name="clinic")
    def visits() -> None:
        if outcome.get("asset_raises"):
            raise RuntimeError("the source is unreachable")

    @dg.asset_check(asset=visits, name="schema_drift")
    def schema_drift() -> dg.AssetCheckResult:
        if outcome["passed"]:
            return dg.AssetCheckResult(passed=True, metadata={"changes": 0, "summary": "no drift"})
        diff = _drift()
        return dg.AssetCheckResult(
            passed=False,
            description=diff.summary,
            metadata={
                "diff": dg.MetadataValue.json(diff.to_dict()),
                "summary": diff.summary,
                "changes": len(diff.changes),
                "diff_markdown": dg.MetadataValue.md(diff.to_markdown()),
            },
        )

    defs = dg.Definitions(
        assets=[visits],
        asset_checks=[schema_drift],
        sensors=build_alert_sensors(source_name="clinic"),
        resources={"alerts": publisher},
    )
    return defs, [visits, schema_drift]


class CheckTicks:
    """Evaluate checks and tick the poller on one instance, carrying the cursor like the daemon does."""

    def __init__(self, instance: dg.DagsterInstance, publisher: AlertPublisher) -> None:
        self.instance = instance
        self.publisher = publisher
        self.outcome: dict[str, Any] = {"passed": False}
        self.defs, self.nodes = drift_defs(self.outcome, publisher)
        self.cursor: str | None = None
        self.run_ids: list[str] = []

    def evaluate(self, *, passed: bool, asset_raises: bool = False) -> str:
        self.outcome.update(passed=passed, asset_raises=asset_raises)
        result = dg.materialize(self.nodes, instance=self.instance, raise_on_error=False)
        assert result.success is not asset_raises
        self.run_ids.append(result.run_id)
        return result.run_id

    def tick(self, *, fresh: bool = False) -> str:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=None if fresh else self.cursor,
            definitions=self.defs,
            resources={"alerts": self.publisher},
        )
        data = self.defs.resolve_sensor_def(FAILED_CHECKS_SENSOR).evaluate_tick(context)
        assert not data.run_requests
        self.cursor = data.cursor
        return data.skip_message or ""


@integration
def test_one_alert_per_failure_and_per_recovery(sns_queue: tuple[str, str]) -> None:
    topic_arn, queue_url = sns_queue
    with dg.instance_for_test() as instance:
        ticks = CheckTicks(instance, AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI))

        # Nothing evaluated yet: nothing to say.
        assert "no check started failing" in ticks.tick()
        assert received(queue_url) == []

        first_failure = ticks.evaluate(passed=False)
        assert "1 alert" in ticks.tick()
        [failed] = received(queue_url)
        assert failed["subject"] == "[etl-assets] schema drift: clinic.visits (2 columns)"
        assert len(failed["subject"]) < 100
        body = failed["body"]
        assert body["kind"] == "check_failed"
        assert (body["source"], body["table"], body["asset_key"]) == ("clinic", "visits", "source/visits")
        assert body["check"] == "schema_drift"
        assert body["severity"] == "ERROR"
        assert body["diff"] == _drift().to_dict()
        assert body["summary"] == _drift().summary
        assert body["changes"] == 2
        assert body["partition"] == ""
        assert body["run_id"] == first_failure
        assert body["run_url"] == f"{UI}/runs/{first_failure}"
        assert body["asset_url"] == f"{UI}/assets/source/visits"
        assert failed["attributes"] == {"kind": "check_failed", "table": "visits", "source": "clinic"}
        record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(VISITS, "schema_drift"))
        assert record is not None
        assert json.loads(ticks.cursor or "") == {
            "source/visits:schema_drift": {"id": record.id, "failing": True}
        }

        # The same state again, on later ticks and after another failing evaluation: quiet.
        ticks.tick()
        ticks.evaluate(passed=False)
        assert "no check started failing" in ticks.tick()
        ticks.tick()
        assert received(queue_url) == []

        # A run that fails before the check runs leaves it PLANNED: not a change of state.
        ticks.evaluate(passed=False, asset_raises=True)
        ticks.tick()
        assert received(queue_url) == []

        recovery = ticks.evaluate(passed=True)
        ticks.tick()
        [recovered] = received(queue_url)
        assert recovered["subject"] == "[etl-assets] schema drift resolved: clinic.visits"
        assert recovered["body"]["kind"] == "check_recovered"
        assert recovered["body"]["passed"] is True
        assert recovered["body"]["run_id"] == recovery
        assert recovered["attributes"]["kind"] == "check_recovered"

        ticks.evaluate(passed=True)
        ticks.tick()
        ticks.tick()
        assert received(queue_url) == []

        again = ticks.evaluate(passed=False)
        ticks.tick()
        ticks.tick()
        [failed_again] = received(queue_url)
        assert failed_again["subject"] == "[etl-assets] schema drift: clinic.visits (2 columns)"
        assert failed_again["body"]["run_id"] == again

        # A fresh cursor (sensor reset) reports what is failing now, once.
        ticks.tick(fresh=True)
        ticks.tick()
        [after_reset] = received(queue_url)
        assert after_reset["body"]["kind"] == "check_failed"


@integration
def test_fresh_cursor_with_passing_check_sends_nothing(sns_queue: tuple[str, str]) -> None:
    topic_arn, queue_url = sns_queue
    with dg.instance_for_test() as instance:
        ticks = CheckTicks(instance, AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI))
        ticks.evaluate(passed=True)
        ticks.tick()
        assert received(queue_url) == []
        assert json.loads(ticks.cursor or "")["source/visits:schema_drift"]["failing"] is False


def failing_run_defs(publisher: AlertPublisher) -> tuple[dg.Definitions, dg.AssetsDefinition]:
    @dg.asset(
        key=["archive", "visits"],
        tags={"etl_assets/table": "visits"},
        partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"),
    )
    def archive_visits() -> None:
        raise RuntimeError(f"could not connect to {SECRET_URL}")

    defs = dg.Definitions(
        assets=[archive_visits],
        sensors=build_alert_sensors(source_name="clinic"),
        resources={"alerts": publisher},
    )
    return defs, archive_visits


def run_failure_tick(defs: dg.Definitions, instance: dg.DagsterInstance, publisher: AlertPublisher,
                     cursor: str | None) -> Any:  # fmt: skip
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources={"alerts": publisher}
    )
    return defs.resolve_sensor_def(RUN_FAILURE_SENSOR).evaluate_tick(context)


@integration
def test_run_failure_sends_one_alert_with_the_redacted_error(sns_queue: tuple[str, str]) -> None:
    topic_arn, queue_url = sns_queue
    publisher = AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI)
    defs, archive_visits = failing_run_defs(publisher)
    with dg.instance_for_test() as instance:
        first = run_failure_tick(defs, instance, publisher, None)  # the sensor starts after this point
        result = dg.materialize(
            [archive_visits], instance=instance, partition_key="2024-01-31", raise_on_error=False
        )
        assert not result.success

        data = run_failure_tick(defs, instance, publisher, first.cursor)
        assert [reaction.error for reaction in data.dagster_run_reactions] == [None]
        run_failure_tick(defs, instance, publisher, data.cursor)

        [message] = received(queue_url)
        assert message["subject"] == "[etl-assets] run failed: archive__visits (clinic.visits; 2024-01-31)"
        assert "secret" not in message["raw"]
        body = message["body"]
        assert body["kind"] == "run_failed"
        assert body["error"] == "RuntimeError: could not connect to mysql+pymysql://u:***@host/db"
        assert body["error_type"] == "RuntimeError"
        assert body["step"] == "archive__visits"
        assert body["failed_steps"] == ["archive__visits"]
        assert body["tables"] == ["visits"]
        assert body["table"] == "visits"
        assert body["partition"] == "2024-01-31"
        assert body["run_id"] == result.run_id
        assert body["run_url"] == f"{UI}/runs/{result.run_id}"
        assert message["attributes"] == {"kind": "run_failed", "table": "visits", "source": "clinic"}


def alert_on(
    result: Any, defs: dg.Definitions, instance: dg.DagsterInstance, publisher: AlertPublisher
) -> None:
    """Invoke the run-failure sensor on the failed run of `result`."""
    context = dg.build_run_status_sensor_context(
        sensor_name=RUN_FAILURE_SENSOR,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"alerts": publisher},
        repository_def=defs.get_repository_def(),
    ).for_run_failure()
    defs.resolve_sensor_def(RUN_FAILURE_SENSOR)(context)


@integration
def test_run_failure_sensor_invoked_directly(sns_queue: tuple[str, str]) -> None:
    topic_arn, queue_url = sns_queue
    publisher = AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI)
    defs, archive_visits = failing_run_defs(publisher)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [archive_visits], instance=instance, partition_key="2024-02-01", raise_on_error=False
        )
        alert_on(result, defs, instance, publisher)
        [message] = received(queue_url)
        assert message["body"]["partition"] == "2024-02-01"
        assert "u:***@host" in message["body"]["error"]


@integration
def test_a_step_serving_many_tables_alerts_the_tables_that_failed(sns_queue: tuple[str, str]) -> None:
    topic_arn, queue_url = sns_queue
    publisher = AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI)
    specs = [dg.AssetSpec(["source", name], tags={"etl_assets/table": name}) for name in ("orders", "visits")]

    @dg.multi_observable_source_asset(specs=specs, name="observe_sources")
    def observe_sources() -> Iterator[dg.ObserveResult]:
        failures = TableFailures(doing="observing the source tables", of_total=2)
        failures.run("table 'orders'", lambda: int("not a number"))
        yield dg.ObserveResult(asset_key=specs[1].key)
        failures.raise_if_any()

    defs = dg.Definitions(
        assets=[observe_sources],
        sensors=build_alert_sensors(source_name="clinic"),
        resources={"alerts": publisher},
    )
    with dg.instance_for_test() as instance:
        job = defs.resolve_implicit_job_def_def_for_assets([specs[0].key])
        assert job is not None
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        alert_on(result, defs, instance, publisher)
    [message] = received(queue_url)
    assert message["body"]["tables"] == ["orders"], "visits was observed: only orders failed"
    assert "failed for 1 of 2" in message["body"]["error"] and "table 'orders'" in message["body"]["error"]


@integration
def test_a_run_of_one_table_of_a_shared_step_alerts_that_table_only(sns_queue: tuple[str, str]) -> None:
    topic_arn, queue_url = sns_queue
    publisher = AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI)
    specs = [
        dg.AssetSpec(["archive", name], tags={"etl_assets/table": name}) for name in ("orders", "visits")
    ]

    # As a schedule's run of one table from a step shared by tables archived alike: the error is the
    # table's own and does not name it.
    @dg.multi_asset(specs=specs, name="archive__since_2024_01_keep_12m", can_subset=True)
    def archive_tables() -> Iterator[dg.MaterializeResult]:
        raise dg.Failure(description="the archive refused: the source is locked")
        yield  # a generator, as the real step

    defs = dg.Definitions(
        assets=[archive_tables],
        sensors=build_alert_sensors(source_name="clinic"),
        resources={"alerts": publisher},
    )
    with dg.instance_for_test() as instance:
        job = defs.resolve_implicit_job_def_def_for_assets([specs[1].key])
        assert job is not None
        result = job.execute_in_process(
            instance=instance, asset_selection=[specs[1].key], raise_on_error=False
        )
        alert_on(result, defs, instance, publisher)
    [message] = received(queue_url)
    assert message["body"]["step"] == "archive__since_2024_01_keep_12m"
    assert message["body"]["tables"] == ["visits"], "orders shares the step but was not in the run"


@integration
@pytest.mark.parametrize("outage", ["missing topic", "endpoint unreachable"])
def test_sns_outage_is_logged_and_never_raised(
    outage: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic_arn = "arn:aws:sns:us-east-1:123456789012:etl-alerts-does-not-exist"
    if outage == "endpoint unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    publisher = AlertPublisher(sns_topic_arn=topic_arn, ui_url=UI)
    alert = run_failed_alert(
        job_name="j", run_id="r", step_key="s", error=SECRET_URL, tables=["visits"], partition=None, ui_url=UI
    )
    log = logging.getLogger("etl_assets_tests.alerts")
    with caplog.at_level(logging.INFO, logger=log.name):
        assert publisher.publish(alert, log) is None
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert alert.subject in record.getMessage()
    assert "secret" not in record.getMessage()

    # Neither sensor's tick fails, and the poller's state still moves on (no message storm later).
    with dg.instance_for_test() as instance:
        ticks = CheckTicks(instance, publisher)
        ticks.evaluate(passed=False)
        assert "1 alert" in ticks.tick()
        assert json.loads(ticks.cursor or "")["source/visits:schema_drift"]["failing"] is True

        defs, archive_visits = failing_run_defs(publisher)
        first = run_failure_tick(defs, instance, publisher, None)
        dg.materialize([archive_visits], instance=instance, partition_key="2024-01-31", raise_on_error=False)
        data = run_failure_tick(defs, instance, publisher, first.cursor)
        assert [reaction.error for reaction in data.dagster_run_reactions] == [None]


@integration
def test_empty_topic_sensor_ticks_log_only(s3_endpoint: str) -> None:
    with dg.instance_for_test() as instance:
        ticks = CheckTicks(instance, AlertPublisher(sns_topic_arn="", ui_url=UI))
        ticks.evaluate(passed=False)
        assert "1 alert" in ticks.tick()
        assert "no check started failing" in ticks.tick()


def test_sensors_are_running_by_default() -> None:
    sensors = {s.name: s for s in build_alert_sensors(source_name="clinic")}
    assert set(sensors) == {RUN_FAILURE_SENSOR, FAILED_CHECKS_SENSOR}
    for sensor in sensors.values():
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert "alerts" in sensor.required_resource_keys
    assert sensors[FAILED_CHECKS_SENSOR].minimum_interval_seconds == 60
