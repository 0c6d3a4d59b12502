"""Alert sensors: one message per failed run, per newly failing check and per recovered check.

* `alert_on_run_failure` is a run-failure sensor: Dagster's cursor hands it each failed run of this
  code location exactly once; it names the first failed step, its error (redacted), the tables of
  the failed steps' assets (their `etl_assets/table` tag) and the partition.
* `alert_on_failed_checks` polls: Dagster OSS has no asset-check sensor, so each tick reads the latest
  evaluation of every asset check from the instance and compares it with the cursor, which holds
  `{check key: {"id": last evaluation id seen, "failing": bool}}`. Only a change of state is reported
  (passing or never seen -> failing; failing -> passing), so a check that fails on every run gives one
  alert, not one per run or per tick. An evaluation still in progress (PLANNED) is ignored until it
  completes. A fresh cursor (first start, or a reset) reports the checks that are failing right now.

Both run by default. Sending is best effort (`AlertPublisher.publish` never raises), and the cursor
moves on even when SNS refused the message: the alert is in the sensor's log then, and a message is
never sent twice for the same state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from etl_assets.lib.alerts import (
    Alert,
    check_failed_alert,
    check_recovered_alert,
    run_failed_alert,
)
from etl_assets.resources.alerts import AlertPublisher

RUN_FAILURE_SENSOR = "alert_on_run_failure"
FAILED_CHECKS_SENSOR = "alert_on_failed_checks"
CHECK_POLL_SECONDS = 60
TABLE_TAG = "etl_assets/table"
_PARTITION_TAG = "dagster/partition"
_RANGE_START_TAG = "dagster/asset_partition_range_start"
_RANGE_END_TAG = "dagster/asset_partition_range_end"
# Dagster wraps the user's exception in these; the alert reports what the user's code raised.
_WRAPPERS = {dg.DagsterExecutionStepExecutionError.__name__}
# `AssetCheckExecutionRecord.status` values of a completed evaluation (PLANNED means in progress).
_FAILED = "FAILED"
_SUCCEEDED = "SUCCEEDED"
_MAX_CAUSES = 4


def build_alert_sensors(*, source_name: str) -> list[dg.SensorDefinition]:
    """The run-failure sensor and the failed-check poller, both running by default.

    Args:
        source_name: the source database's name (its asset group), shown as `clinic.visits`.
    """

    @dg.run_failure_sensor(
        name=RUN_FAILURE_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=False,
        description="Publishes one alert (SNS, or the log) per failed run: step, error, tables, partition.",
    )
    def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertPublisher) -> None:
        alert = build_run_failure_alert(context, source_name=source_name, ui_url=alerts.ui_base())
        alerts.publish(alert, context.log)
        # Returning None (not a SkipReason) lets Dagster hand over every failed run in one tick.

    @dg.sensor(
        name=FAILED_CHECKS_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=CHECK_POLL_SECONDS,
        description=(
            "Publishes one alert (SNS, or the log) when an asset check starts failing and one when it "
            "passes again."
        ),
    )
    def alert_on_failed_checks(context: dg.SensorEvaluationContext, alerts: AlertPublisher) -> dg.SkipReason:
        return poll_checks(context, alerts, source_name=source_name)

    return [alert_on_run_failure, alert_on_failed_checks]


# --------------------------------------------------------------------------------------------------
# Failed runs
# --------------------------------------------------------------------------------------------------


def build_run_failure_alert(context: dg.RunFailureSensorContext, *, source_name: str, ui_url: str) -> Alert:
    """The alert for the run in `context`: its first failed step and error, tables and partition."""
    run = context.dagster_run
    step_events = [event for event in context.get_step_failure_events() if event.step_key]
    failed_steps = list(dict.fromkeys(str(event.step_key) for event in step_events))
    error_info: Any = None  # dagster's SerializableErrorInfo (not exported)
    if step_events:
        error_info = getattr(step_events[0].event_specific_data, "error", None)
    if error_info is None:
        error_info = getattr(context.failure_event.event_specific_data, "error", None)
    error, error_type = error_text(error_info)
    if not error:
        error = context.failure_event.message or "the run failed without an error message"
    return run_failed_alert(
        job_name=run.job_name,
        run_id=run.run_id,
        step_key=failed_steps[0] if failed_steps else None,
        error=error,
        tables=run_tables(context.repository_def, run, failed_steps, error=error),
        partition=run_partition(run.tags),
        ui_url=ui_url,
        source_name=source_name,
        error_type=error_type,
        failed_steps=failed_steps,
    )


def error_text(info: Any) -> tuple[str, str]:
    """(`Type: message`, with `caused by:` lines for chained errors; the first real error's type).

    Dagster's own wrapper ("Error occurred while executing op ...") is left out when it has a cause,
    and so is every stack trace: the run's page in the UI has them.
    """
    lines: list[str] = []
    error_type = ""
    current = info
    while current is not None and len(lines) < _MAX_CAUSES:
        nested = current.cause or current.context
        if not (current.cls_name in _WRAPPERS and nested is not None):
            lines.append(current.message.strip())
            error_type = error_type or (current.cls_name or "")
        current = nested
    return "\ncaused by: ".join(line for line in lines if line), error_type


def run_partition(tags: Mapping[str, str]) -> str | None:
    """The run's partition, or `start...end` for a single-run backfill of a range."""
    if tags.get(_PARTITION_TAG):
        return tags[_PARTITION_TAG]
    start, end = tags.get(_RANGE_START_TAG), tags.get(_RANGE_END_TAG)
    if start and end:
        return start if start == end else f"{start}...{end}"
    return None


def run_tables(
    repository: dg.RepositoryDefinition | None,
    run: dg.DagsterRun,
    failed_steps: Sequence[str],
    *,
    error: str = "",
) -> list[str]:
    """Tables (`etl_assets/table` tags) of the failed steps' assets that the run selected.

    A step that serves many tables (observing the sources, the replica checks, the archive and replica
    assets of tables partitioned alike) runs only the tables its run selected, and names the tables
    that failed in its `error` (`table 'visits': ...`); then only those are reported."""
    if repository is None:
        return []
    graph = repository.asset_graph
    selected = [*(run.asset_selection or ()), *(key.asset_key for key in run.asset_check_selection or ())]
    keys: list[dg.AssetKey] = []
    # A step key is the node name, `graph.op` inside a graph-backed asset, `op[mapping]` when dynamic.
    nodes = {step.split("[", 1)[0].split(".", 1)[0] for step in failed_steps}
    if nodes:
        for assets_def in graph.assets_defs:
            if assets_def.is_executable and assets_def.node_def.name in nodes:
                step_keys = [*assets_def.keys, *(check_key.asset_key for check_key in assets_def.check_keys)]
                # A run without a selection (a whole job launched by hand) ran every asset of the step.
                keys.extend(key for key in step_keys if not selected or key in selected)
    if not keys:
        keys.extend(selected)
    tables = _tables_of(graph, keys)
    named = [table for table in tables if f"table '{table}'" in error]
    return named or tables


def _tables_of(graph: Any, keys: Iterable[dg.AssetKey]) -> list[str]:
    tables: list[str] = []
    for key in keys:
        table = graph.get(key).tags.get(TABLE_TAG) if graph.has(key) else None
        if table and table not in tables:
            tables.append(table)
    return tables


# --------------------------------------------------------------------------------------------------
# Failed and recovered checks
# --------------------------------------------------------------------------------------------------


def poll_checks(
    context: dg.SensorEvaluationContext, alerts: AlertPublisher, *, source_name: str
) -> dg.SkipReason:
    """One tick of `alert_on_failed_checks`: publish state changes, then move the cursor."""
    repository = context.repository_def
    if repository is None:
        return dg.SkipReason("no repository definition in the sensor context; nothing to watch")
    graph = repository.asset_graph
    previous = load_cursor(context.cursor, log=context.log)
    state: dict[str, dict[str, Any]] = {}
    published: list[str] = []
    failing = 0
    ui_url = alerts.ui_base()
    check_keys = sorted(graph.asset_check_keys, key=lambda key: key.to_user_string())
    for check_key in check_keys:
        name = check_key.to_user_string()
        seen = previous.get(name)
        record = context.instance.get_latest_asset_check_evaluation_record(check_key)
        if record is None:
            continue  # never evaluated, or wiped: a later evaluation starts afresh
        status = record.status.value
        if status not in (_FAILED, _SUCCEEDED):
            # In progress (PLANNED): the completed evaluation reuses this record's id, so keep the
            # last completed state and look again next tick.
            if seen is not None:
                state[name] = seen
                failing += bool(seen.get("failing"))
            continue
        now_failing = status == _FAILED
        state[name] = {"id": record.id, "failing": now_failing}
        failing += now_failing
        change = check_transition(seen, now_failing)
        if change is None:
            continue
        alert = _check_alert(change, graph, record, source_name=source_name, ui_url=ui_url)
        alerts.publish(alert, context.log)
        published.append(alert.subject)
    context.update_cursor(json.dumps(state, sort_keys=True))
    watched = f"{len(check_keys)} check{'s' if len(check_keys) != 1 else ''} watched, {failing} failing"
    if not published:
        return dg.SkipReason(f"no check started failing or recovered ({watched})")
    return dg.SkipReason(
        f"{len(published)} alert{'s' if len(published) != 1 else ''} ({watched}): " + "; ".join(published)
    )


def check_transition(seen: Mapping[str, Any] | None, failing: bool) -> str | None:
    """`failed`, `recovered` or None, from the state the cursor recorded and the latest evaluation.

    Never seen (fresh cursor) and failing: `failed`, once. Never seen and passing: nothing. After that
    only a change of state is reported, so repeated failing (or passing) evaluations stay quiet.
    """
    was_failing = bool(seen.get("failing")) if seen is not None else False
    if failing and not was_failing:
        return "failed"
    if not failing and was_failing:
        return "recovered"
    return None


def load_cursor(cursor: str | None, *, log: Any = None) -> dict[str, dict[str, Any]]:
    """The poller's cursor, or {} for a missing or unreadable one (which re-alerts failing checks once)."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        if log is not None:
            log.warning("the alert cursor is unreadable; starting afresh (failing checks alert once more)")
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def _check_alert(change: str, graph: Any, record: Any, *, source_name: str, ui_url: str) -> Alert:
    evaluation = record.evaluation
    asset_key = record.key.asset_key
    table = (graph.get(asset_key).tags.get(TABLE_TAG) if graph.has(asset_key) else None) or asset_key.path[-1]
    metadata: dict[str, Any] = {}
    description: str | None = None
    severity = "ERROR"
    if isinstance(evaluation, dg.AssetCheckEvaluation):
        metadata = {key: _plain(value) for key, value in evaluation.metadata.items()}
        description = evaluation.description
        severity = evaluation.severity.value
    timestamp = record.event.timestamp if record.event is not None else record.create_timestamp
    builder = check_failed_alert if change == "failed" else check_recovered_alert
    return builder(
        source_name=source_name,
        table=table,
        asset_key=asset_key.to_user_string(),
        check_name=record.key.name,
        description=description,
        metadata=metadata,
        run_id=record.run_id,
        partition=record.partition,
        ui_url=ui_url,
        severity=severity,
        evaluated_at=datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds"),
    )


def _plain(value: Any) -> Any:
    """A metadata value as plain data (JSON metadata as its dict, text as str, numbers as numbers)."""
    raw = getattr(value, "value", value)
    if isinstance(raw, str | int | float | bool | dict | list) or raw is None:
        return raw
    return str(raw)
