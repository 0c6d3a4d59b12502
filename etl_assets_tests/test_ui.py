"""The Dagster UI with the demo's history, in headless Chromium: assets and check results render.

Runs the demo into a temporary directory, starts `dagster-webserver` on a free loopback port, opens
the asset graph of the demo's group and checks that every asset and its check status is drawn. The
screenshot is saved next to the test results; with ETL_ASSETS_UPDATE_SCREENSHOT=1 it replaces
docs/asset-graph.png, which the README shows.

Skipped where no Chromium is installed, except in CI (CI=true), where a missing browser fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl_assets_tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("Chromium is not installed (CI installs Debian's chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's history served by dagster-webserver on a free loopback port."""
    assert CHROMIUM is not None, "CI must install Chromium (scripts/stack.sh browser)"
    work = tmp_path_factory.mktemp("ui")
    env = {**os.environ, "ETL_ASSETS_DEMO_DIR": str(work / ".demo"), "DAGSTER_HOME": str(work / "home")}
    env.pop("ETL_ASSETS_CONFIG", None)
    bin_dir = Path(sys.executable).parent
    demo = subprocess.run(
        [str(bin_dir / "etl-assets"), "demo"], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_stoppable.py"),
            str(bin_dir / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dagster-webserver did not answer within 120 s"
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_asset_graph_renders_demo_assets_and_checks(demo_ui: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{demo_ui}/asset-groups/clinic", wait_until="networkidle")
            page.get_by_text("source_table_sizes").first.wait_for(timeout=60_000)
            page.get_by_text("Passed").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit newsletter dialog
            if skip.count():
                skip.first.click()
                page.wait_for_timeout(500)
            text = page.inner_text("body")
            shot = tmp_path / "asset-graph.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    for name in ("visits", "audit_log", "patients", "source_table_sizes"):
        assert name in text, f"{name} is not drawn in the asset graph"
    assert "Asset checks" in text
    assert text.count("Passed") >= 5, "check results are not rendered"
    assert shot.stat().st_size > 50_000
    if os.environ.get("ETL_ASSETS_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "asset-graph.png")
