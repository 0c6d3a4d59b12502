"""The code location loads without I/O, and its graph matches the committed snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from etl_assets.config import DEMO_CONFIG_PATH, load_config
from etl_assets.definitions import build_definitions
from etl_assets_tests.support import config_for

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).parent / "snapshots" / "demo_graph.json"

# An unreachable MySQL host and an S3 bucket that does not exist: loading must not touch either.
PRODUCTION_LIKE = """
source:
  url: mysql+pymysql://etl:${DB_PASSWORD}@10.255.255.1:3306/clinic
archive:
  url: s3://${ARCHIVE_BUCKET}/archive
  kms_key_id: ${ARCHIVE_KMS_KEY_ID:-}
  object_lock: {mode: GOVERNANCE, days: 2557}
warehouse:
  url: ${WAREHOUSE_URL}
  schema: staging
  staging_url: s3://${ARCHIVE_BUCKET}/staging
  iam_role: ${REDSHIFT_COPY_ROLE_ARN:-}
alerts:
  sns_topic_arn: ${ALERTS_SNS_TOPIC_ARN:-}
defaults:
  time_column: updated_at
tables:
  - name: visits
    primary_key: [id]
    archive: {retention: 6 months, start: 2019-01, purge: true, batch_size: 5000, max_threads_running: 50}
    replica: {partition: daily, start: 2019-01-01, insert_mode: overwrite_existing}
  - name: audit_log
    archive: {retention: 1 year}
"""


def graph_summary(defs: dg.Definitions) -> dict[str, object]:
    """Keys, partitions, checks, jobs, sensors and schedules: what the UI shows."""
    graph = defs.resolve_asset_graph()
    repo = defs.get_repository_def()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "partitions": type(partitions).__name__ if partitions else None,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
        }
    return {
        "assets": assets,
        "checks": sorted(k.to_user_string() for k in graph.asset_check_keys),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": sorted(
            (s.name, s.cron_schedule, str(s.default_status.value)) for s in repo.schedule_defs
        ),
        "sensors": sorted((s.name, str(s.default_status.value)) for s in repo.sensor_defs),
    }


def test_demo_definitions_load_and_match_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETL_ASSETS_DEMO_DIR", str(tmp_path))
    defs = build_definitions(load_config(DEMO_CONFIG_PATH))
    dg.Definitions.validate_loadable(defs)
    summary = json.loads(json.dumps(graph_summary(defs)))
    if os.environ.get("ETL_ASSETS_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert summary == expected, (
        "the asset graph changed; rerun with ETL_ASSETS_UPDATE_SNAPSHOTS=1 and review the diff"
    )


def test_production_like_config_loads_without_touching_any_server(tmp_path: Path) -> None:
    path = tmp_path / "etl_assets.yaml"
    path.write_text(PRODUCTION_LIKE, encoding="utf-8")
    defs = build_definitions(load_config(path))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    visits = graph.get(dg.AssetKey(["archive", "visits"]))
    assert visits.partitions_def is not None
    assert visits.partitions_def.get_first_partition_key() == "2019-01-01"
    assert visits.kinds == {"mysql", "s3", "parquet"}
    assert graph.get(dg.AssetKey(["replica", "visits"])).kinds == {"mysql", "redshift"}
    # Nothing secret reaches the UI: resources show templates, not values.
    resources = defs.resources or {}
    shown = json.dumps({k: getattr(v, "url", "") for k, v in resources.items()})
    assert "${DB_PASSWORD}" in shown


def test_module_exposes_defs_and_imports_without_io(tmp_path: Path) -> None:
    config = tmp_path / "etl_assets.yaml"
    config.write_text(PRODUCTION_LIKE, encoding="utf-8")
    code = "import etl_assets.definitions as d, dagster as dg; assert isinstance(d.defs, dg.Definitions); print('ok')"
    env = {**os.environ, "ETL_ASSETS_CONFIG": str(config)}
    env.pop("DB_PASSWORD", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_code_location_loads_without_the_data_libraries(tmp_path: Path) -> None:
    # pyarrow, numpy and PyMySQL cost ~0.2 s of every load (the webserver, the daemon, each run's
    # process, `dagster definitions validate`); only the runs that move rows need them.
    config = tmp_path / "etl_assets.yaml"
    config.write_text(PRODUCTION_LIKE, encoding="utf-8")
    code = (
        "import sys, etl_assets.definitions\n"
        "print(sorted(m for m in ('pyarrow', 'numpy', 'pymysql', 'pandas', 'boto3') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "ETL_ASSETS_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("which", ["demo", "production"])
def test_dagster_definitions_validate_cli(which: str, tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    if which == "production":
        config = tmp_path / "etl_assets.yaml"
        config.write_text(PRODUCTION_LIKE, encoding="utf-8")
        env["ETL_ASSETS_CONFIG"] = str(config)
    else:
        env.pop("ETL_ASSETS_CONFIG", None)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=ROOT if which == "demo" else tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_replica_with_append_and_archive_config_builds() -> None:
    config = config_for(
        source_url="sqlite:///x.db",
        archive_url="/tmp/archive",
        warehouse_url="duckdb:///w.duckdb",
        tables="""
  - name: events
    replica: {insert_mode: append, partition: hourly, start: 2026-11-01}
""",
    )
    defs = build_definitions(config)
    partitions = defs.resolve_asset_graph().get(dg.AssetKey(["replica", "events"])).partitions_def
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    assert partitions.get_first_partition_key() == "2026-11-01-00:00"


def test_every_step_that_reads_the_source_is_in_that_source_s_pool(tmp_path: Path) -> None:
    """The instance's pool limit caps the steps reading one database, across runs and code
    locations; a second source (another code location) has its own pool."""
    path = tmp_path / "etl_assets.yaml"
    path.write_text(PRODUCTION_LIKE, encoding="utf-8")
    config = load_config(path)
    defs = build_definitions(config)
    pools = {
        key.to_user_string(): defs.resolve_assets_def(key).op.pool
        for key in (dg.AssetKey(["archive", "visits"]), dg.AssetKey(["replica", "visits"]),
                    dg.AssetKey("source_table_sizes"))
    }  # fmt: skip
    assert set(pools.values()) == {f"etl_source_{config.source.group_name}"}, pools
    other = PRODUCTION_LIKE.replace("source:\n", "source:\n  name: billing\n", 1)
    assert other != PRODUCTION_LIKE
    path.write_text(other, encoding="utf-8")
    billing = build_definitions(load_config(path))
    assert billing.resolve_assets_def(dg.AssetKey(["archive", "visits"])).op.pool == "etl_source_billing"
