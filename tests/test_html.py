"""``leaderboard.html`` driven in a real browser: headless Chromium from the system's packages."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
from test_verdict import INFO, MEANS, cells_from

from an8flower.eval.html import leaderboard_html, library_of
from an8flower.eval.report import write_report

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                                    reason="Chromium and ChromeDriver are not installed (CI installs them)")

NAMES = {"a": "captum:Saliency", "b": "gradient", "c": "zennit:EpsilonPlus", "d": "gradcam:GradCAM"}


def board(tmp_path):
    """A report of two variants with library-prefixed explainer names and example maps."""
    cells, meta, examples = [], {}, {}
    rng = np.random.default_rng(0)
    for variant, noise in (("single-6c", 0.02), ("double-12c", 0.05)):
        means = {m: {NAMES.get(k, k): v for k, v in rows.items()} for m, rows in MEANS.items()}
        for c in cells_from(means, noise=noise):
            cells.append({**c, "variant": variant})
        key = ("toy", variant, "net", "test", 0)
        meta[key] = {"accuracy": 0.99, "n_images": 12}
        names = sorted({c["explainer"] for c in cells})
        examples[key] = {"images": rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8),
                         "masks": np.pad(np.ones((3, 8, 8), bool), ((0, 0), (12, 12), (12, 12))),
                         "heatmaps": {n: rng.random((3, 32, 32)).astype(np.float32) for n in names}}
    report = write_report(tmp_path / "res", cells, INFO, meta, examples, plots=False)
    return report, examples


def test_library_of_names() -> None:
    assert [library_of(n) for n in ("captum:Saliency", "gradient", "random", "oracle", "gradcam:GradCAM")] == [
        "captum", "an8flower", "reference", "reference", "gradcam"]


def test_page_is_self_contained_and_deterministic(tmp_path) -> None:
    report, examples = board(tmp_path)
    page = (tmp_path / "res" / "leaderboard.html").read_text()
    assert page == leaderboard_html(report["tables"], INFO, examples)
    for needle in ("http://", "https://", "<link rel=\"stylesheet\"", "<script src"):
        assert needle not in page
    assert page.count("data:image/png;base64,") == 2 * 7  # one strip per explainer and board
    assert page.count('height="64" width="200"') == 2 * 7  # three 32 px maps, 2 px apart, at twice their size
    assert page.index('id="summary"') < page.index('id="tables"') < page.index('id="examples"')


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _column(driver, board_index: int, header: str) -> tuple:
    from selenium.webdriver.common.by import By

    table = driver.find_elements(By.CSS_SELECTOR, "#tables table")[board_index]
    heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    return table, next(i for i, h in enumerate(heads) if h.startswith(header))


def _rows(table) -> list[str]:
    from selenium.webdriver.common.by import By

    return [tr.find_elements(By.TAG_NAME, "td")[0].get_attribute("data-value")
            for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


@needs_chromium
def test_sort_filter_tooltips_and_screenshot_in_chromium(tmp_path, browser) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    report, _ = board(tmp_path)
    browser.get((tmp_path / "res" / "leaderboard.html").as_uri())
    assert browser.find_element(By.TAG_NAME, "h2").text == "Summary"
    data = report["tables"][0]
    # the page's tables follow the verdict: oracle, then the overall ranking
    table, col = _column(browser, 0, "deletion")
    assert _rows(table) == [r["explainer"] for r in data["rows"]]
    # deletion: lower is better, so the first click puts the lowest first; the second reverses
    means = {r["explainer"]: r["scores"]["deletion_auc"]["mean"] for r in data["rows"]}
    table.find_elements(By.CSS_SELECTOR, "thead th")[col].click()
    assert _rows(table) == sorted(means, key=lambda e: means[e])
    table.find_elements(By.CSS_SELECTOR, "thead th")[col].click()
    assert _rows(table) == sorted(means, key=lambda e: -means[e])
    # the explainer column sorts by name
    table.find_elements(By.CSS_SELECTOR, "thead th")[0].click()
    assert _rows(table) == sorted(means)
    # tooltip: mean, CI, n
    cell = table.find_elements(By.CSS_SELECTOR, "tbody tr")[0].find_elements(By.TAG_NAME, "td")[col]
    title = cell.get_attribute("title")
    s = next(r for r in data["rows"] if r["explainer"] == sorted(means)[0])["scores"]["deletion_auc"]
    assert f"{s['mean']:.4f} ± {s['ci95']:.4f} (95% CI), n = 12" in title
    # filters: library hides rows of other libraries; family hides other families' columns; variant hides boards
    Select(browser.find_element(By.ID, "filter-library")).select_by_value("reference")
    visible = [tr.find_elements(By.TAG_NAME, "td")[0].get_attribute("data-value")
               for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr") if tr.is_displayed()]
    assert sorted(visible) == ["centre", "oracle", "random"]
    Select(browser.find_element(By.ID, "filter-library")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-family")).select_by_value("faithfulness")
    heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th") if th.is_displayed()]
    assert heads == ["explainer", "deletion ↓"]
    Select(browser.find_element(By.ID, "filter-family")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-variant")).select_by_value("double-12c")
    boards = browser.find_elements(By.CSS_SELECTOR, "#tables .board")
    assert [b.is_displayed() for b in boards] == [t["variant"] == "double-12c" for t in report["tables"]]
    Select(browser.find_element(By.ID, "filter-variant")).select_by_value("")
    # marks in the page's tables; no console errors
    assert "fails sanity" in browser.find_element(By.ID, "tables").text
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    browser.set_window_size(1280, 1000)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 140, 4000))
    shot = tmp_path / "leaderboard-1280.png"
    browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and not math.isnan(float(np.asarray(im).mean()))
