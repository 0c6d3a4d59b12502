"""The short form of `make chaos` that runs in CI: randomized SIGKILLs with a concurrent writer.

The other scenarios of `make chaos` are the reliability test files, which `make test` runs anyway, so
this runs only the kills (`--no-suite`) and checks the summary table's row.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def test_random_kills_lose_no_row(mysql_server_url: str, s3_endpoint: str) -> None:
    cycles = int(os.environ.get("ETL_ASSETS_CHAOS_CYCLES", "10"))
    env = {**os.environ, "ETL_TEST_MYSQL_URL": mysql_server_url, "AWS_ENDPOINT_URL": s3_endpoint}
    result = subprocess.run(
        [sys.executable, "-m", "etl_assets_tests.chaos", "--cycles", str(cycles), "--rows", "6000", "--no-suite"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = [line for line in result.stdout.splitlines() if line.startswith("| randomized kills")]
    assert len(summary) == 1, result.stdout
    scenario, cycles_done, rows_checked, rows_lost, outcome = (
        c.strip() for c in summary[0].strip("|").split("|")
    )
    assert int(cycles_done) == cycles
    assert int(rows_checked.replace(",", "")) >= cycles * 12_000, "every cycle accounts for both tables"
    assert rows_lost == "0", "rows were lost"
    assert outcome == "pass", scenario
