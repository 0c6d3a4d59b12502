"""No secret reaches logs, run metadata, manifests, Parquet metadata, the warehouse or alert bodies.

A MariaDB user with a recognisable password (given to the config as `${DB_PASSWORD}`) and a
recognisable AWS secret key run a replica backfill, an archive and a failing run through Dagster; then
every place a secret could leak to is scanned for both values.
"""

from __future__ import annotations

import io
import json
import logging
import uuid

import boto3
import dagster as dg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from etl_assets.definitions import build_definitions
from etl_assets_tests.support import config_for, seed_visits

pytestmark = pytest.mark.integration

PASSWORD = "Pw-recognisable-7f3a9c41"
AWS_SECRET = "aws-secret-recognisable-0b7d1e"


def test_secrets_never_leak(
    mysql_url: str, pg_server_url: str, pg_schema: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=300)
    url = sa.make_url(mysql_url)
    user = f"sec_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(mysql_url)
    with admin.begin() as conn:
        for host in ("127.0.0.1", "localhost"):
            conn.exec_driver_sql(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{PASSWORD}'")
            conn.exec_driver_sql(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'{host}'")
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    templated = f"mysql+pymysql://{user}:${{DB_PASSWORD}}@{url.host}:{url.port}/{url.database}"
    config = config_for(source_url=templated, archive_url=f"s3://{s3_bucket}/archive", warehouse_url=pg_server_url,
                        warehouse_schema=pg_schema, extra="",
                        tables="  - name: visits\n    archive: {retention: 1 year, start: 2023-01}\n"
                               "    replica: {start: 2023-01-01}\n"
                               "  - name: missing_table\n    archive: {retention: 1 year, start: 2023-01}\n")  # fmt: skip
    defs = build_definitions(config)
    haystack: list[str] = []
    caplog.set_level(logging.DEBUG)
    try:
        with dg.instance_for_test() as instance:
            replica = dg.AssetKey(["replica", "visits"])
            archive = dg.AssetKey(["archive", "visits"])
            broken = dg.AssetKey(["archive", "missing_table"])
            runs = [
                defs.resolve_implicit_job_def_def_for_assets([replica]).execute_in_process(  # type: ignore[union-attr]
                    instance=instance, asset_selection=[replica], raise_on_error=False,
                    tags={"dagster/asset_partition_range_start": "2023-01-01",
                          "dagster/asset_partition_range_end": "2023-01-31"}),
                defs.resolve_implicit_job_def_def_for_assets([archive]).execute_in_process(  # type: ignore[union-attr]
                    instance=instance, asset_selection=[archive], partition_key="2023-01-01", raise_on_error=False),
                defs.resolve_implicit_job_def_def_for_assets([broken]).execute_in_process(  # type: ignore[union-attr]
                    instance=instance, asset_selection=[broken], partition_key="2023-01-01", raise_on_error=False),
            ]  # fmt: skip
            assert runs[0].success
            assert runs[1].success
            assert not runs[2].success, "the run against a missing table fails (and is alerted)"
            for run in runs:
                for record in instance.all_logs(run.run_id):
                    haystack.append(record.message or "")
                    haystack.append(
                        json.dumps(record.to_json() if hasattr(record, "to_json") else str(record))
                    )
            # The failure alert, as the run-failure sensor would publish it (no topic: it is logged).
            sensor = defs.resolve_sensor_def("alert_on_run_failure")
            failure = instance.get_run_records(dg.RunsFilter(run_ids=[runs[2].run_id]))[0]
            event = next(e for e in instance.all_logs(runs[2].run_id) if e.dagster_event and
                         e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE).dagster_event  # fmt: skip
            context = dg.build_run_status_sensor_context(
                sensor_name=sensor.name, dagster_event=event, dagster_instance=instance,
                dagster_run=failure.dagster_run, resources={"alerts": defs.resources["alerts"]},  # type: ignore[index]
            ).for_run_failure()  # fmt: skip
            sensor(context)  # type: ignore[operator]
    finally:
        with admin.begin() as conn:
            for host in ("127.0.0.1", "localhost"):
                conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'{host}'")
        admin.dispose()
    haystack.extend(record.getMessage() for record in caplog.records)
    assert any("missing_table" in text for text in haystack), "the failure was logged (the scan saw it)"

    s3 = boto3.client("s3", region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert objects
    for item in objects:
        body = s3.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        if item["Key"].endswith(".parquet"):
            parquet = pq.ParquetFile(io.BytesIO(body))
            haystack.append(json.dumps({k.decode(): v.decode(errors="replace")
                                        for k, v in (parquet.schema_arrow.metadata or {}).items()}))  # fmt: skip
            haystack.append(str(parquet.metadata.to_dict()))
        else:
            haystack.append(body.decode("utf-8", errors="replace"))
    warehouse = sa.create_engine(pg_server_url)
    with warehouse.connect() as conn:
        haystack.extend(
            str(row) for row in conn.execute(sa.text(f'SELECT * FROM "{pg_schema}"."_etl_assets_loads"'))
        )
    warehouse.dispose()

    text = "\n".join(haystack)
    assert PASSWORD not in text, "the database password leaked"
    assert AWS_SECRET not in text, "the AWS secret leaked"
