"""Every command in the README's shell blocks is executed, so the README cannot rot.

`etl-assets` and `dagster` commands run for real against a MariaDB database, an S3 bucket and a
PostgreSQL schema of their own. `make` targets are checked with `make -n` (their recipes must exist
and expand); what the targets run is executed by other tests (`make demo` by test_demo.py,
`make dev` by test_ui.py's webserver, `make test` by CI itself).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from etl_assets_tests.support import seed_visits, source_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COVERED_ELSEWHERE = {"demo": "test_demo.py", "dev": "test_ui.py", "test": "CI (.ci/run)"}


def readme_commands() -> list[str]:
    """Command lines of every ```bash block, comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_readme_has_the_two_setup_commands() -> None:
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]


def test_every_make_target_in_the_readme_exists() -> None:
    for command in readme_commands():
        if not command.startswith("make "):
            continue
        target = command.split()[1]
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"`{command}`: {result.stderr}"
        assert result.stdout.strip(), f"`{command}` does nothing"


def test_every_cli_command_in_the_readme_runs(
    mysql_url: str, s3_bucket: str, pg_server_url: str, pg_schema: str, tmp_path: Path
) -> None:
    seed_visits(mysql_url, months=[(2024, 1), (2024, 2), (2024, 3)], rows_per_month=300)
    config = tmp_path / "etl_assets.yaml"
    config.write_text(
        f"source:\n  url: '{mysql_url}'\n  name: clinic\narchive:\n  url: 's3://{s3_bucket}/archive'\n"
        f"warehouse:\n  url: '{pg_server_url}'\n  schema: {pg_schema}\n"
        "tables:\n  - name: visits\n    primary_key: [id]\n"
        "    archive: {retention: 6 months, start: 2024-01, batch_size: 500}\n"
        "    replica: {partition: daily, start: 2024-01-01}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "ETL_ASSETS_CONFIG": str(config), "DAGSTER_HOME": str(tmp_path)}
    commands = [c for c in readme_commands() if not c.startswith("make ")]
    # The README lists them in reading order; the archive purges only what the replica holds, so the
    # backfill runs first, and restore last (it needs an archived month).
    order = {"schema": 0, "ddl": 1, "plan": 2, "replica/visits": 3, "archive/visits": 4, "restore": 5}

    def rank(command: str) -> int:
        return next((v for k, v in order.items() if k in command), 9)

    ran = []
    for command in sorted(commands, key=rank):
        argv = shlex.split(command)
        argv[0] = str(BIN / argv[0])
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"`{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
        ran.append(command)
    assert any(c.startswith("etl-assets restore") for c in ran)
    assert any("--partition-range" in c for c in ran)
    # The commands did what the README says: January left MySQL and came back with restore.
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        january = conn.execute(
            sa.text("SELECT COUNT(*) FROM visits WHERE updated_at < '2024-02-01'")
        ).scalar_one()
    engine.dispose()
    assert january == 300
    assert len(source_keys(mysql_url)) == 900
    objects = (
        boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    )
    committed = [o["Key"] for o in objects if "year=2024/month=01/" in o["Key"] and o["Key"].endswith(".parquet")
                 and "/_staging/" not in o["Key"]]  # fmt: skip
    assert committed, "the README's archive command archived January"
    assert (tmp_path / "schemas" / "visits.json").exists()
