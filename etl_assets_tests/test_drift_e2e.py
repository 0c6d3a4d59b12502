"""Schema drift through Dagster against MariaDB and PostgreSQL: the check fails with a classified
diff, the drifted table's archive and replica refuse while another table keeps loading, and
`on_drift: evolve` lets an added column through to the replica."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_assets.cli import main as cli_main
from etl_assets.definitions import build_definitions
from etl_assets.sensors.alerts import error_text
from etl_assets_tests.support import (
    VISITS_DDL,
    config_for,
    materialization_metadata,
    seed_visits,
    source_keys,
)

pytestmark = pytest.mark.integration


def _run(defs: dg.Definitions, key: list[str], **kwargs: Any) -> dg.ExecuteInProcessResult:
    asset_key = dg.AssetKey(key)
    job = defs.resolve_implicit_job_def_def_for_assets([asset_key])
    assert job is not None
    return job.execute_in_process(asset_selection=[asset_key], raise_on_error=False, **kwargs)


@pytest.fixture
def two_tables(mysql_url: str, pg_server_url: str, pg_schema: str, s3_bucket: str, tmp_path: Any,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # fmt: skip
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=200)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(VISITS_DDL.replace("`visits`", "`orders`"))
        conn.exec_driver_sql("INSERT INTO orders SELECT * FROM visits")
    engine.dispose()
    tables = """
  - name: visits
    archive: {retention: 1 year, start: 2023-01}
    replica: {start: 2023-01-01}
  - name: orders
    on_drift: evolve
    archive: {retention: 1 year, start: 2023-01}
    replica: {start: 2023-01-01}
"""
    path = tmp_path / "etl_assets.yaml"
    path.write_text(
        f"source:\n  url: '{mysql_url}'\narchive:\n  url: 's3://{s3_bucket}/archive'\nwarehouse:\n  url: '{pg_server_url}'\n"
        f"  schema: {pg_schema}\nschemas_dir: {tmp_path / 'schemas'}\ntables:{tables}",
        encoding="utf-8",
    )
    assert cli_main(["--config", str(path), "schema", "snapshot"]) == 0
    config = config_for(source_url=mysql_url, archive_url=f"s3://{s3_bucket}/archive", warehouse_url=pg_server_url,
                        warehouse_schema=pg_schema, tables=tables, extra=f"schemas_dir: {tmp_path / 'schemas'}\n",
                        path=str(path))  # fmt: skip
    return {"config": config, "url": mysql_url, "pg": pg_server_url, "schema": pg_schema}


def _alter(url: str, statement: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


@pytest.mark.parametrize(
    ("statement", "classification"),
    [
        ("ALTER TABLE visits ADD COLUMN insurance VARCHAR(20) NULL", "additive"),
        ("ALTER TABLE visits DROP COLUMN notes", "breaking"),
        ("ALTER TABLE visits MODIFY notes VARCHAR(300) NULL", "widening"),
        ("ALTER TABLE visits MODIFY notes VARCHAR(100) NULL", "narrowing"),
        ("ALTER TABLE visits MODIFY amount VARCHAR(20) NULL", "breaking"),
        ("ALTER TABLE visits CHANGE notes remarks VARCHAR(255) NULL", "breaking"),
    ],
)
def test_each_kind_of_drift_fails_the_check_with_its_classification(
    two_tables: dict[str, Any], statement: str, classification: str
) -> None:
    _alter(two_tables["url"], statement)
    defs = build_definitions(two_tables["config"])
    with dg.instance_for_test() as instance:
        result = _run(defs, ["source", "visits"], instance=instance)
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_drift")
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["classification"].value == classification
    assert "|" in evaluation.metadata["diff_markdown"].value, "a column-by-column Markdown table"


def test_drifted_table_refuses_while_another_table_keeps_loading(two_tables: dict[str, Any]) -> None:
    _alter(two_tables["url"], "ALTER TABLE visits MODIFY notes TEXT NULL")
    defs = build_definitions(two_tables["config"])
    before = source_keys(two_tables["url"])
    with dg.instance_for_test() as instance:
        refused_replica = _run(defs, ["replica", "visits"], instance=instance, partition_key="2023-01-15")
        refused_archive = _run(defs, ["archive", "visits"], instance=instance, partition_key="2023-01-01")
        other = _run(defs, ["replica", "orders"], instance=instance,
                     tags={"dagster/asset_partition_range_start": "2023-01-01",
                           "dagster/asset_partition_range_end": "2023-01-31"})  # fmt: skip
    for refused in (refused_replica, refused_archive):
        assert not refused.success
        message = refused.get_step_failure_events()[0].step_failure_data.error.message  # type: ignore[union-attr]
        assert "refused" in message
        assert "notes" in message
    assert source_keys(two_tables["url"]) == before, "no row was deleted by the refused archive"
    assert other.success
    engine = sa.create_engine(two_tables["pg"])
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": two_tables["schema"]})}  # fmt: skip
    engine.dispose()
    assert "orders" in tables
    assert "visits" not in tables, "nothing was written for the drifted table"


def test_evolve_adds_the_column_to_the_replica_and_keeps_loading(two_tables: dict[str, Any]) -> None:
    defs = build_definitions(two_tables["config"])
    range_tags = {
        "dagster/asset_partition_range_start": "2023-01-01",
        "dagster/asset_partition_range_end": "2023-01-31",
    }
    with dg.instance_for_test() as instance:
        assert _run(defs, ["replica", "orders"], instance=instance, tags=range_tags).success
        _alter(two_tables["url"], "ALTER TABLE orders ADD COLUMN insurance VARCHAR(20) NULL")
        _alter(two_tables["url"], "UPDATE orders SET insurance = 'AOK' WHERE id = 1")
        check = _run(defs, ["source", "orders"], instance=instance)
        evaluation = next(e for e in check.get_asset_check_evaluations() if e.check_name == "schema_drift")
        assert not evaluation.passed, "evolve still reports the drift"
        assert evaluation.severity == dg.AssetCheckSeverity.WARN, "but does not block"
        loaded = _run(defs, ["replica", "orders"], instance=instance, tags=range_tags)
        assert loaded.success, loaded.get_step_failure_events()
        # A breaking change is still refused under evolve.
        _alter(two_tables["url"], "ALTER TABLE orders DROP COLUMN notes")
        refused = _run(defs, ["replica", "orders"], instance=instance, tags=range_tags)
        assert not refused.success
    engine = sa.create_engine(two_tables["pg"])
    with engine.connect() as conn:
        value = conn.execute(
            sa.text(f'SELECT insurance FROM "{two_tables["schema"]}"."orders" WHERE id = 1')
        ).scalar_one()
    engine.dispose()
    assert value == "AOK"


# -- one step for every table: a table that fails does not stop the others ---------------------------------


def test_one_step_observes_every_table_and_a_failing_table_does_not_stop_the_others(
    two_tables: dict[str, Any],
) -> None:
    # A primary key naming a column the table lacks: orders cannot be observed.
    tables = "\n  - name: visits\n  - name: orders\n    primary_key: [no_such_column]\n"
    defs = build_definitions(config_for(source_url=two_tables["url"], tables=tables))
    visits, orders = dg.AssetKey(["source", "visits"]), dg.AssetKey(["source", "orders"])
    assert defs.resolve_assets_def(visits).node_def.name == defs.resolve_assets_def(orders).node_def.name

    job = defs.resolve_implicit_job_def_def_for_assets([visits, orders])
    assert job is not None
    result = job.execute_in_process(asset_selection=[visits, orders], raise_on_error=False)

    assert not result.success
    observed = [e.asset_key for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observed == [visits], "visits is observed although orders failed before it"
    checks = {(e.asset_key, e.check_name) for e in result.get_asset_check_evaluations()}
    assert checks == {(visits, "schema_drift")}
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message, _ = error_text(failure.event_specific_data.error)  # type: ignore[union-attr] - what the alert says
    assert "failed for 1 of 2" in message and "table 'orders'" in message and "no_such_column" in message
    assert "table 'visits'" not in message


def test_one_step_runs_every_replica_check_and_a_failing_check_does_not_stop_the_others(
    two_tables: dict[str, Any],
) -> None:
    config = two_tables["config"]
    config.contract_path(config.table("orders")).write_text("{not json", encoding="utf-8")
    defs = build_definitions(config)
    names = ("replica_row_count", "replica_schema", "replica_freshness")
    selected = [
        dg.AssetCheckKey(dg.AssetKey(["replica", t]), name) for t in ("visits", "orders") for name in names
    ]
    checks_only = dg.define_asset_job("replica_checks_only", selection=dg.AssetSelection.checks(*selected))
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[checks_only])).resolve_job_def(
        "replica_checks_only"
    )

    result = job.execute_in_process(raise_on_error=False)

    assert not result.success
    evaluated = {(e.asset_key.path[-1], e.check_name) for e in result.get_asset_check_evaluations()}
    # Five of the six report (the replicas are not loaded yet: each says so); orders' schema check
    # cannot read its contract, and the step names it.
    assert evaluated == {(t, n) for t in ("visits", "orders") for n in names} - {("orders", "replica_schema")}
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message, _ = error_text(failure.event_specific_data.error)  # type: ignore[union-attr] - what the alert says
    assert "failed for 1 of 6" in message and "check replica_schema of table 'orders'" in message


@pytest.mark.parametrize(
    ("kind", "tags"),
    [
        ("archive", {"dagster/partition": "2023-01-01"}),
        ("replica", {"dagster/asset_partition_range_start": "2023-01-01",
                     "dagster/asset_partition_range_end": "2023-01-31"}),
    ],
)  # fmt: skip
def test_tables_partitioned_alike_share_one_step_and_a_refused_table_does_not_stop_the_other(
    two_tables: dict[str, Any], kind: str, tags: dict[str, str]
) -> None:
    defs = build_definitions(two_tables["config"])
    visits, orders = dg.AssetKey([kind, "visits"]), dg.AssetKey([kind, "orders"])
    assert defs.resolve_assets_def(visits).node_def.name == defs.resolve_assets_def(orders).node_def.name
    # A breaking change: refused even under on_drift: evolve. orders comes first in the step.
    _alter(two_tables["url"], "ALTER TABLE orders DROP COLUMN notes")
    orders_before = source_keys(two_tables["url"], "orders")
    assert len(orders_before) == 200

    job = defs.resolve_implicit_job_def_def_for_assets([visits, orders])
    assert job is not None
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            asset_selection=[orders, visits], instance=instance, tags=tags, raise_on_error=False
        )

    assert not result.success
    materialized = [e.asset_key for e in result.get_asset_materialization_events()]
    assert set(materialized) == {visits}, "visits is done although orders was refused"
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message, _ = error_text(failure.event_specific_data.error)  # type: ignore[union-attr] - what the alert says
    assert "failed for 1 of 2" in message and "table 'orders'" in message and "notes" in message
    assert "table 'visits'" not in message
    assert source_keys(two_tables["url"], "orders") == orders_before, "the refused table is untouched"
    if kind == "archive":
        metadata = materialization_metadata(result, "archive/visits")
        # Not purged: visits' replica is not loaded yet (the archive keeps rows the replica lacks).
        assert metadata["rows_extracted"].value == 200 == metadata["rows_kept_not_in_replica"].value
        [check] = result.get_asset_check_evaluations()
        assert check.asset_key == visits and check.passed
