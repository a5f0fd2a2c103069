"""The HTML report: built only from stage outputs, every figure loads in headless Chromium, no
script error, and the readings quote the numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from needlework.errors import NeedleworkError
from needlework.report.report import summary_lines, write_report

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
    assert "id='early'" not in html  # no early prediction ran


def test_report_early_prediction_section(fake_early_study):
    html = write_report(fake_early_study).read_text()
    section = html[html.index("<h2 id='early'>") : html.index("<h2>Knockout")]
    assert "<img src='early_tiny_mdqa.png' alt='recall vs training progress'>" in section  # the figure: recall vs progress per set
    # the table: each set's final score and its score predicted from its recall at 25%, 50% and 100% of training
    assert "<th>predicted from recall at 25%</th><th>predicted from recall at 50%</th><th>predicted from recall at 100%</th>" in section
    assert "<td class='l'>hl</td><td>0.60</td>" in section and "Spearman (predicted vs final)" in section
    assert "<td class='l'>sym</td>" not in section  # stopped: not predicted
    assert "matches their final ranking (Spearman of predicted with final scores &gt;= 0.80) first at 25% of training" in section
    assert "sym stopped at 25% (recall 0.00" in section and "best hl" in section
    assert re.search(r"Monitoring cost \(measured\): saving snapshots [\d.]+ s \+ probing heads [\d.]+ s = [\d.]+% of the 42.5 s", section)
    assert ">sym (stopped at 25%)<" in html  # the main table marks the stopped set
    assert summary_lines(fake_early_study)[-1].startswith("tiny/mdqa: early prediction: The predicted ranking of the sets matches")


def test_report_needs_a_study(tmp_path):
    with pytest.raises(NeedleworkError, match="no study.json"):
        write_report(tmp_path)


def _chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

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
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


NEEDS_CHROMIUM = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()), reason="needs chromium and chromium-driver (scripts/install-browser.sh)"
)


@NEEDS_CHROMIUM
def test_report_renders_in_headless_chromium(fake_study, tmp_path):
    page = write_report(fake_study)
    driver = _chromium(tmp_path)
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


@NEEDS_CHROMIUM
def test_report_with_early_prediction_renders_in_headless_chromium(fake_early_study, tmp_path):
    page = write_report(fake_early_study)
    driver = _chromium(tmp_path)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        loaded = driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(loaded) == 5 and all(loaded), loaded  # the four of a study plus recall vs training progress
        section = driver.execute_script("return document.getElementById('early').nextElementSibling.id")
        assert section == "early-tiny_mdqa"
        curve = driver.execute_script(
            "const i = document.querySelector(\"img[alt='recall vs training progress']\"); return [i.naturalWidth, i.naturalHeight]"
        )
        assert curve[0] > 300 and curve[1] > 200
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
