"""The benchmark harness runs end to end on a small table and writes valid results (no timing checks).

`make bench-quick` is what CI runs; this test runs the same harness (`bench/run.py --quick`) with fewer
rows in its own namespace (database, PostgreSQL schema, bucket) and checks the JSON it writes: every
case present, each either measured or explicitly skipped with a reason. How fast anything is, is the
benchmark's business, not the test suite's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

# The harness run (module fixture) takes ~5 minutes on 2 cores: most of it is the replica's first copy
# over ~2,150 daily partitions, which costs the same at any row count.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parent.parent
SCALE_CASES = {
    "c_client_scan",
    "pg_copy",
    "replica_full",
    "sensor_tick",
    "delta_day",
    "delta_tenth",
    "dlt_sql_database",
    "archive_extract",
    "archive_month",
    "archive_all",
    "pt_archiver_bulk_delete",
}
OPTIONAL = {"dlt_sql_database", "pt_archiver_bulk_delete"}  # peers: measured only where installed
TARGETS = {
    "extract_vs_c_client",
    "archive_vs_pt_archiver",
    "longest_purge_transaction",
    "whole_run_peak_rss",
    "peak_rss_growth_4x",
    "replica_first_copy",
    "delta_day_seconds",
    "delta_vs_tenth",
    "sensor_tick",
    "graph_200_tables",
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, mysql_server_url: str, pg_server_url: str, s3_endpoint: str
) -> tuple[dict[str, Any], str]:
    """One quick harness run (the server fixtures fail the test, with the fix, when a server is down)."""
    out = tmp_path_factory.mktemp("bench") / "r.json"
    namespace = f"etl_bench_t{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)  # the s3_endpoint fixture has set AWS_ENDPOINT_URL and test credentials
    env.update(
        ETL_TEST_MYSQL_URL=mysql_server_url, ETL_TEST_PG_URL=pg_server_url, ETL_TEST_S3_ENDPOINT=s3_endpoint
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--rows",
            "5000",
            "--out",
            str(out),
            "--namespace",
            namespace,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert out.exists(), "the harness wrote no JSON"
    return json.loads(out.read_text()), proc.stdout


def test_results_have_the_documented_shape(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    assert data["schema_version"] == 1
    assert isinstance(data["date"], str) and data["date"][:4].isdigit()
    machine = data["machine"]
    assert isinstance(machine, dict) and _number(machine["cpus"]) and machine["hostname"]
    assert data["rows"] == 5000 and data["scales"] == {"N/4": 1250, "N": 5000}
    assert data["quick"] is True and data["repeat"] == 1


def test_every_case_is_measured_or_skipped_with_a_reason(results: tuple[dict[str, Any], str]) -> None:
    data, _ = results
    cases = data["cases"]
    expected = {f"{name}[{scale}]" for name in SCALE_CASES for scale in ("N/4", "N")} | {"graph_200_tables"}
    assert set(cases) == expected
    for key, case in cases.items():
        for field in ("rows", "seconds", "rows_per_s", "peak_rss_mb", "ratio_vs_limit", "status", "reason"):
            assert field in case, f"{key} lacks {field}"
        if case["status"] == "skipped":
            assert case["case"] in OPTIONAL, f"{key} may not be skipped: {case['reason']}"
            assert case["reason"], f"{key} is skipped without a reason"
            continue
        assert case["status"] == "ok", f"{key}: {case['status']}: {case['reason']}"
        assert _number(case["seconds"]) and case["seconds"] > 0, key
        assert _number(case["peak_rss_mb"]) and case["peak_rss_mb"] > 0, key
        assert case["rows"] is None or (isinstance(case["rows"], int) and case["rows"] >= 0), key
        assert case["rows_per_s"] is None or _number(case["rows_per_s"]), key
        assert case["ratio_vs_limit"] is None or _number(case["ratio_vs_limit"]), key
    assert cases["c_client_scan[N]"]["ratio_vs_limit"] == 1.0
    assert cases["archive_all[N]"]["rows"] >= 5000, "the whole table was archived"
    detail = cases["archive_all[N]"]["detail"]
    assert _number(detail["longest_delete_seconds"]) and detail["rows_purged"] >= 5000
    extract_only = cases["archive_extract[N]"]["detail"]
    assert extract_only["rows_purged"] == 0 and extract_only["rows_committed"] >= 5000
    assert extract_only["source_rows_after"] == extract_only["source_rows_before"]


def test_targets_carry_a_value_and_a_verdict(results: tuple[dict[str, Any], str]) -> None:
    data, stdout = results
    targets = data["targets"]
    assert set(targets) == TARGETS
    for name, target in targets.items():
        assert target["threshold"] and target["description"], name
        if target["met"] is None:
            assert target["reason"], f"{name} has no verdict and no reason"
        else:
            assert isinstance(target["met"], bool) and target["value"] is not None, name
    assert (
        targets["archive_vs_pt_archiver"]["met"] is not None
        or "pt-archiver" in targets["archive_vs_pt_archiver"]["reason"]
    )
    assert "| case | rows | seconds | rows/s | peak RSS MB | ratio vs limit | target | met? |" in stdout
