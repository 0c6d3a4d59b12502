"""The production instance file (deploy/dagster.yaml) passes Dagster's own config validation."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ENV = {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_USER": "dagster",
       "DAGSTER_PG_PASSWORD": "not-a-secret", "DAGSTER_LOG_BUCKET": "logs"}  # fmt: skip


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def test_production_instance_config_is_valid() -> None:
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert set(config) >= {"storage", "compute_logs", "run_launcher", "concurrency"}
    for section in ("compute_logs", "run_launcher"):
        module = importlib.import_module(config[section]["module"])
        assert hasattr(module, config[section]["class"]), f"{section} class is not importable"
    importlib.import_module("dagster_postgres")
    limits = {limit["key"] for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert limits == {"etl_assets/source", "etl_assets/table"}
    # Run workers batch their partition events into PostgreSQL (see the comment in the file).
    launcher_class = getattr(
        importlib.import_module(config["run_launcher"]["module"]), config["run_launcher"]["class"]
    )
    launcher_schema = launcher_class.config_type()
    assert "env_vars" in launcher_schema, "the run launcher accepts env_vars"
    assert set(config["run_launcher"]["config"]["env_vars"]) == {
        "DAGSTER_EVENT_BATCH_SIZE=1000",
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1",
    }


def test_a_typo_in_the_instance_config_is_rejected(tmp_path: Path) -> None:
    data = yaml.safe_load((DEPLOY / "dagster.yaml").read_text(encoding="utf-8"))
    data["concurrency"]["pools"]["defualt_limit"] = data["concurrency"]["pools"].pop("default_limit")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path), "dagster.yaml")


def test_local_instance_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(DEPLOY.parent / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path), "dagster.yaml")
    assert config["telemetry"]["enabled"] is False


def test_iam_policy_covers_what_the_code_calls() -> None:
    policy = json.loads((DEPLOY / "iam-policy.json").read_text(encoding="utf-8"))
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "kms:GenerateDataKey",
            "kms:Decrypt", "sns:Publish", "s3:ListBucketMultipartUploads", "s3:AbortMultipartUpload"} <= actions  # fmt: skip


def test_every_archive_and_replica_run_carries_the_tags_the_run_limits_key_on() -> None:
    """A limit on a tag no run carries limits nothing: the per-source limit needs the source tag on
    every run of the archive and replica jobs, hand-launched ones included (jobs' run tags)."""
    from etl_assets.definitions import build_definitions
    from etl_assets_tests.support import config_for

    tables = (
        "  - name: visits\n    primary_key: [id]\n    archive: {retention: 1 year, start: '2024-01'}\n"
        "    replica: {start: 2024-01-01}\n"
        "  - name: notes\n    primary_key: [id]\n    archive: {retention: 2 years, start: '2024-01'}\n"
    )
    config = config_for(source_url="sqlite:///clinic.db", archive_url="unused-archive",
                        warehouse_url="duckdb:///unused.duckdb", tables=tables)  # fmt: skip
    repository = build_definitions(config).get_repository_def()
    jobs = [job for job in repository.get_all_jobs() if job.name.startswith(("archive_", "replica_"))]
    assert len(jobs) == 3
    limits = yaml.safe_load((DEPLOY / "dagster.yaml").read_text(encoding="utf-8"))["concurrency"]["runs"]
    source_limit = {limit["key"] for limit in limits["tag_concurrency_limits"]} & {"etl_assets/source"}
    for job in jobs:
        assert {key: job.run_tags.get(key) for key in source_limit} == {"etl_assets/source": "clinic"}, (
            job.name
        )
