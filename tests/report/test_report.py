"""The HTML report: built only from stage outputs, every figure loads in headless Chromium, no
script error, and the readings quote the numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from needlework.errors import NeedleworkError
from needlework.report.report import write_report

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def test_report_contents(fake_study):
    page = write_report(fake_study)
    assert page == fake_study / "report" / "index.html"
    html = page.read_text()
    imgs = re.findall(r"<img src='([^']+)'", html)
    assert len(imgs) == 4  # scores, recall-vs-score scatter, heatmaps, knockout of the reference
    assert all((page.parent / src).stat().st_size > 1000 for src in imgs)  # relative, beside the page
    assert html.count("<p class='reading'>") == 5  # one reading per figure + the patching table
    # the main table: every training set with its score and its overlap with the reference
    for label in ("hh (reference)", "hl", "lh", "ll", "sym", "no fine-tuning"):
        assert f">{label}<" in html
    assert "Head recall correlates positively with score: Spearman" in html and "(n=4," in html
    assert "top heads matter more than random heads" in html
    assert "intersection" in html and "gap recovered" in html


def test_report_needs_a_study(tmp_path):
    with pytest.raises(NeedleworkError, match="no study.json"):
        write_report(tmp_path)


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()), reason="needs chromium and chromium-driver (scripts/install-browser.sh)"
)
def test_report_renders_in_headless_chromium(fake_study, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = write_report(fake_study)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        n_img = driver.execute_script("return document.images.length")
        loaded = driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert n_img == 4 and all(loaded), loaded
        assert driver.title == "needlework report: tiny"
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        # a broken figure must be caught: delete one PNG and reload
        first = driver.execute_script("return document.images[0].getAttribute('src')")
        (page.parent / first).unlink()
        driver.get(page.as_uri())
        loaded = driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert loaded.count(False) == 1
        assert any(e["level"] == "SEVERE" for e in driver.get_log("browser"))
    finally:
        driver.quit()
