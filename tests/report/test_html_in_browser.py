"""The interactive results page in a real browser (headless Chromium through Playwright): it opens from disk with
no network and no script error, and shows the summary's numbers, a frontier point per method and the published rows.

Marked ``browser``: ``make test-browser`` (CI installs Debian's chromium); PEFTBENCH_CHROMIUM names another binary.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from peftbench.report.html import page_from_summary, write_page

pytestmark = pytest.mark.browser
SUMMARY = Path(__file__).resolve().parents[2] / "docs" / "results" / "cpu-small" / "summary.json"
# No background network: this machine has none, and a page that reached for one would be wrong.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("PEFTBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "no chromium on PATH: apt-get install chromium (CI does), or set PEFTBENCH_CHROMIUM"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_the_results_page_shows_the_summary_the_frontier_and_the_published_rows(browser, tmp_path) -> None:
    summary = json.loads(SUMMARY.read_text())
    summary["published"] = {"source": "hira_iclr2025_table1", "model": "Llama-2-7B", "rows": {"lora": ["LoRA", 32]}}
    path = write_page(page_from_summary(summary), tmp_path / "page.html")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems, requests = [], []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelector('#frontier .scatterlayer') !== null")
    assert problems == []
    assert all(url.startswith("file://") for url in requests)  # nothing from a network

    for evaluation in summary["evaluations"]:
        page.select_option("#mode", evaluation["mode"])
        for cell in evaluation["cells"]:
            shown = page.locator(f"#accuracy tr[data-method='{cell['method']}'] td[data-benchmark='{cell['dataset']}']")
            assert shown.inner_text().split()[0] == f"{100 * cell['mean']:.1f}", (evaluation["mode"], cell)
        assert page.locator("#accuracy tbody tr").count() == len(evaluation["methods"])
        # One frontier point per trained method (the zero-shot model has no training cost).
        points = page.evaluate("document.getElementById('frontier').data[0].text")
        assert sorted(points) == sorted(m["method"] for m in summary["methods"])
        published = page.locator("#published tbody tr")
        assert published.count() == (8 if evaluation["mode"] == "generate" else 0)
    assert "Llama-2-7B LoRA r32" in page.locator("#published").inner_text()
    assert page.locator("#published-section").is_visible()

    page.locator("#accuracy th[data-key='avg']").click()  # sorted by the average, best first
    order = [row.get_attribute("data-method") for row in page.locator("#accuracy tbody tr").all()]
    averages = {c["method"]: c["mean"] for c in summary["evaluations"][1]["cells"] if c["dataset"] == "avg"}
    assert order == sorted(averages, key=averages.get, reverse=True)
    page.select_option("#axis", "peak_memory_gb")
    assert page.evaluate("document.getElementById('frontier').layout.xaxis.title.text") == "peak memory (GB)"
    screenshot = tmp_path / "results-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 50_000
    page.close()
