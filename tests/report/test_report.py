"""The HTML report: built only from stage outputs, every figure loads in headless Chromium, no
script error, and the readings quote the numbers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from needlework.errors import NeedleworkError
from needlework.report.report import summary_lines, write_report

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


SECTIONS = ["methods", "results", "a-tiny_mdqa", "depth", "examples", "loss", "knockout", "patching"]


def _text(html: str) -> str:
    """The page's text, tags dropped, entities decoded."""
    import html as h

    return h.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def test_report_contents(fake_study):
    page = write_report(fake_study)
    assert page == fake_study / "report" / "index.html"
    html = page.read_text()
    assert re.findall(r"<h2 id='([^']+)'>", html) == SECTIONS
    imgs = re.findall(r"<img src='([^']+)'", html)
    # scores, recall-vs-score scatter, heatmaps, depth curves, loss curves, knockout of the reference
    assert imgs == [
        "scores_tiny_mdqa.png",
        "scatter_tiny_mdqa.png",
        "heatmap_tiny_mdqa.png",
        "depth_tiny_mdqa.png",
        "loss_tiny_mdqa.png",
    ] + ["knockout_tiny_mdqa_hh.png"]
    assert all((page.parent / src).stat().st_size > 1000 for src in imgs)  # relative, beside the page
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert len(captions) == len(imgs) and all("n=" in c for c in captions)  # n in every caption
    assert html.count("<p class='reading'>") == 7  # one reading per figure + the patching table
    # the main table: every training set with its score and F1, and its overlap with the reference
    for label in ("hh (reference)", "hl", "lh", "ll", "sym", "no fine-tuning"):
        assert f">{label}<" in html
    assert "<th>F1 [95% CI]</th>" in html and "<td>0.80 [0.60, 0.95]</td><td>0.80 [0.60, 0.95]</td>" in html
    text = _text(html)
    # readings compare against no fine-tuning and the reference through the intervals
    assert "One set scores above no fine-tuning (0.35) with non-overlapping intervals (hh)" in text
    assert "Two sets score below the reference hh with non-overlapping intervals (ll, sym)" in text
    assert "hl, lh ≈ the reference hh (intervals overlap)" in text
    # 4 sets ranked alike: the exact p is 2/24, so even a perfect rank correlation is no conclusion
    assert "Head recall vs score: no conclusion at this size (the interval includes 0 or p ≥ 0.05): Spearman 1.00 (p=0.083" in text
    assert "n=4 sets" in text
    # the heatmap reading covers every panel, not only the first
    for name in ("hh: top-3", "hl: top-3", "sym: top-3", "no fine-tuning: top-3"):
        assert name in text
    assert "sym: top-3 in layers 1–1, best 1-0 (0.68), 0 of 3 shared with the reference" in text
    assert "top heads matter more than random heads: top-3 scores below every random set (paired differences over examples" in text
    assert "n=12 examples: a subset (the first 12) of the 20 evaluation examples" in text  # knockout and patching use a subset
    assert "intersection (3 heads) recovers 0.75 [" in text and "its random controls (3 heads, 2 seeds)" in text
    assert "complement (1 head) recovers 0.25" in text and "its random controls (1 head, 2 seeds)" in text
    # each patched set beside its own size-matched random controls, pooled over seeds
    assert "<td class='l'>tiny/mdqa/ll: intersection</td><td>3</td><td>0.75 [0.50, 1.00]</td><td>3</td><td>2</td>" in html
    assert "<th>gap recovered [CI]</th>" in html and "id='early'" not in html  # no early prediction ran


def test_report_methods_and_provenance(fake_study):
    text = _text(write_report(fake_study).read_text())
    for fact in (
        "lora (r=4, alpha=8, dropout=0.0, targets q_proj, k_proj, v_proj, o_proj)",
        "lr 0.001",
        "4 training and 20 evaluation examples per set",
        "mdqa 640 tokens",
        "retrieval score, teacher mode",
        "top_k (k=3, threshold=0.1)",
        "cpu (as configured)",
        "study run",
        "resolved config (YAML)",
    ):
        assert fact in text, fact
    assert re.search(r"needlework \S+, .*torch \S+, transformers \S+", text) and "peft" in text  # versions from the manifests
    from needlework.artifacts import device_name

    assert f"ran on {device_name()}" in text  # the hardware the manifests record (this machine's CPU here)


def test_report_depth_examples_and_loss(fake_study):
    html = write_report(fake_study).read_text()
    text = _text(html)
    # gold documents sit at depths 0, .25, .5, .75, 1 in turn: four examples per bin
    assert "Accuracy by needle depth: 0.0–0.2 " in text and text.count("(n=4)") >= 5
    assert "no conclusion at this size about a depth effect" in text
    # the drill-down: a few examples per set, wrong and right ones, with the reference's open
    assert html.count("<details") == 6 + 1  # six sets + the resolved config
    assert "<details open><summary>tiny / mdqa / hh: 6 of 20 examples (16 correct)</summary>" in html
    assert "<td class='l'>What is the answer of item 0 (synthetic)?</td><td class='l'>Answer0</td><td class='l'>Answer0</td>" in html
    assert ">wrong<" in html and "<th>depth</th>" in html
    assert "Final logged loss: hh 1.00 at step 100" in text


def test_results_csv_loads_in_pandas(fake_study):
    import pandas as pd

    write_report(fake_study)
    df = pd.read_csv(fake_study / "report" / "results.csv")
    assert len(df) == 6 and set(df["set"]) == {"hh", "hl", "lh", "ll", "sym", "base"}  # one row per model x task x set
    for col in (
        "subspan_acc",
        "subspan_acc_lo",
        "subspan_acc_hi",
        "f1",
        "f1_lo",
        "f1_hi",
        "recall_lo",
        "cosine_hi",
        "n_eval",
        "final_loss",
    ):
        assert col in df.columns, col
    hh = df.set_index("set").loc["hh"]
    assert hh["subspan_acc"] == 0.8 and hh["recall"] == 1.0 and hh["n_eval"] == 20 and bool(hh["reference"])
    assert "href='results.csv'" in (fake_study / "report" / "index.html").read_text()


def test_report_early_prediction_section(fake_early_study):
    html = write_report(fake_early_study).read_text()
    section = html[html.index("<h2 id='early'>") : html.index("<h2 id='knockout'>")]
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


CRITERIA_SECTIONS = SECTIONS[:3] + ["criteria-tiny_mdqa"] + SECTIONS[3:]


def test_report_head_criteria_section(fake_criteria_study, fake_study):
    """The fake criteria (tests/study/study_helpers.py: CRITERIA_START, DEMOTE): across hl, lh, ll, sym,
    recall is Spearman 1 with the score under retrieval, 0.8 under output, -1 under query; the
    reference's top-3 heads are retrieval {0-0, 0-1, 0-2}, query {0-1, 0-2, 1-0}, output {1-0, 1-1, 1-2}."""
    html = write_report(fake_criteria_study).read_text()
    assert re.findall(r"<h2 id='([^']+)'>", html) == CRITERIA_SECTIONS
    section = html[html.index("<h2 id='criteria-tiny_mdqa'>") : html.index("<h2 id='depth'>")]
    # the best-predictor table, ranked by Spearman rho, the best marked (and highlighted)
    best = re.search(r"<table id=\"criteria-best-tiny_mdqa\">(.*?)</table>", section, re.S).group(1)
    assert re.findall(r"<td class='l'>([^<]+)</td>", best) == ["retrieval (best, main)", "output", "query"]
    assert "<tr class='ref'><td class='l'>retrieval (best, main)</td><td>4</td><td>1.00 [1.00, 1.00]</td><td>0.083</td>" in best
    assert "<td class='l'>query</td><td>4</td><td>-1.00 [-1.00, -1.00]</td>" in best
    text = _text(section)
    # 4 sets: output's interval reaches retrieval's, so no single best is named
    assert "Recall of the retrieval heads has the highest Spearman correlation with the score, 1.00 [1.00, 1.00]" in text
    assert "but its interval overlaps those of output 0.80 [-1.00, 1.00]: no conclusion at this size about which criterion" in text
    # each set's recall under every criterion
    assert "<tr><td class='l'>ll</td><td>0.33 [0.33, 0.33]</td><td>0.67 [0.67, 0.67]</td><td>0.67 [0.67, 0.67]</td></tr>" in section
    # the agreement matrix: Jaccard (shared heads) of the reference's head sets
    matrix = re.search(r"<table id=\"criteria-agreement-tiny_mdqa\">(.*?)</table>", section, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", matrix, re.S)[1:]]
    assert rows == [
        ["retrieval", "3 heads", "0.50 (2)", "0.00 (0)"],
        ["query", "0.50 (2)", "3 heads", "0.20 (1)"],
        ["output", "0.00 (0)", "0.20 (1)", "3 heads"],
    ]
    assert "agree most between retrieval and query (Jaccard 0.50, 2 heads shared) and least between retrieval and output" in text
    assert "further criteria query, output on the same examples" in _text(html)  # methods
    assert summary_lines(fake_criteria_study)[-1].startswith("tiny/mdqa: head criteria: Recall of the retrieval heads")
    # results.csv: the recall under each criterion, with its interval
    import pandas as pd

    df = pd.read_csv(fake_criteria_study / "report" / "results.csv").set_index("set")
    for c in ("retrieval", "query", "output"):
        assert {f"recall_{c}", f"recall_{c}_lo", f"recall_{c}_hi"} <= set(df.columns), c
    assert df.loc["ll", "recall_query"] == pytest.approx(2 / 3) and df.loc["ll", "recall"] == pytest.approx(1 / 3)
    # a study of one criterion: no section, no columns
    assert "criteria-" not in write_report(fake_study).read_text()
    cols = set(pd.read_csv(fake_study / "report" / "results.csv").columns)
    assert {"recall", "recall_lo", "recall_hi"} <= cols and not {c for c in cols if c.startswith("recall_")} - {"recall_lo", "recall_hi"}


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


@pytest.fixture
def driver(tmp_path):
    """Headless Chromium for one test, quit after it."""
    d = _chromium(tmp_path)
    yield d
    d.quit()


NEEDS_CHROMIUM = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()), reason="needs chromium and chromium-driver (scripts/install-browser.sh)"
)


def _screenshot(driver, path: Path) -> Path:
    """A full-page PNG of the loaded page (the window stretched to the page's height), printed so
    that a reader of `pytest -s` can look at it."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, min(int(height) + 100, 30000))
    driver.save_screenshot(str(path))
    print(f"report screenshot: {path}")
    return path


def _shot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("NEEDLEWORK_SCREENSHOT_DIR", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open(driver, page) -> list[bool]:
    """Load the page; per image, whether it loaded (complete, with a width)."""
    driver.set_page_load_timeout(60)
    driver.get(page.as_uri())
    return driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")


def _check_sections(driver, sections: list[str]) -> None:
    """Every section is on the page with a heading, something under it, and a link in the contents."""
    for sid in sections:
        got = driver.execute_script(
            "const h = document.getElementById(arguments[0]); if (!h) return null;"
            "return [h.tagName, h.textContent.length, h.parentElement.children.length,"
            " !!document.querySelector(`nav a[href='#${arguments[0]}']`)]",
            sid,
        )
        assert got is not None and got[0] == "H2" and got[1] > 3 and got[2] > 1 and got[3], (sid, got)


@NEEDS_CHROMIUM
def test_report_renders_in_headless_chromium(fake_study, tmp_path, driver):
    page = write_report(fake_study)
    loaded = _open(driver, page)
    n_img = len(loaded)
    assert n_img == 6 and all(loaded), loaded
    assert driver.title == "needlework report: tiny"
    _check_sections(driver, SECTIONS)
    # the drill-down: the reference's examples open, the others collapsed; methods as a table
    opened = driver.execute_script("return Array.from(document.querySelectorAll('#sec-examples details')).map(d => d.open)")
    assert opened == [True] + [False] * 5
    rows = driver.execute_script("return document.querySelectorAll('#sec-examples details[open] tr').length")
    assert rows == 1 + 6  # header + a few examples
    assert driver.execute_script("return document.querySelector('#methods-table').rows.length") >= 10
    assert driver.execute_script("return document.querySelector(\"a[href='results.csv']\") !== null")
    shot = _screenshot(driver, _shot_dir(tmp_path) / "report-fake-study.png")
    assert shot.stat().st_size > 50_000
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    # a broken figure must be caught: delete one PNG and reload
    first = driver.execute_script("return document.images[0].getAttribute('src')")
    (page.parent / first).unlink()
    loaded = _open(driver, page)
    assert loaded.count(False) == 1
    assert any(e["level"] == "SEVERE" for e in driver.get_log("browser"))


@NEEDS_CHROMIUM
def test_report_with_head_criteria_renders_in_headless_chromium(fake_criteria_study, tmp_path, driver):
    page = write_report(fake_criteria_study)
    loaded = _open(driver, page)
    assert len(loaded) == 6 and all(loaded), loaded  # the criteria section adds tables, no figure
    _check_sections(driver, CRITERIA_SECTIONS)
    cells = driver.execute_script(
        "return ['criteria-best-tiny_mdqa', 'criteria-agreement-tiny_mdqa'].map(id => {"
        " const t = document.getElementById(id); return t ? [t.rows.length, t.rows[1].cells.length] : null; })"
    )
    assert cells == [[4, 6], [4, 4]]  # header + 3 criteria; 6 columns, a 3 x 3 matrix beside the names
    highlighted = driver.execute_script("return document.querySelector('#criteria-best-tiny_mdqa tr.ref').cells[0].textContent")
    assert highlighted == "retrieval (best, main)"
    _screenshot(driver, _shot_dir(tmp_path) / "report-fake-criteria-study.png")
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


STUDY = os.environ.get("NEEDLEWORK_REPORT_STUDY")  # e.g. runs/demo after `make demo`


@NEEDS_CHROMIUM
@pytest.mark.skipif(not STUDY, reason="set NEEDLEWORK_REPORT_STUDY to a finished study folder (e.g. runs/demo)")
def test_report_of_a_real_study_renders_in_headless_chromium(tmp_path, driver):
    page = write_report(STUDY)
    loaded = _open(driver, page)
    assert len(loaded) >= 6 and all(loaded), loaded
    ids = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.id)")
    want = ["methods", "results", "depth", "examples", "loss"]
    want += [s for s in ("knockout", "patching") if s in ids]  # when the study ran them
    _check_sections(driver, want)
    assert any(i.startswith("a-") for i in ids)
    _screenshot(driver, _shot_dir(tmp_path) / f"report-{Path(STUDY).name}.png")
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


@NEEDS_CHROMIUM
def test_report_with_early_prediction_renders_in_headless_chromium(fake_early_study, tmp_path, driver):
    page = write_report(fake_early_study)
    loaded = _open(driver, page)
    assert len(loaded) == 7 and all(loaded), loaded  # the six of a study plus recall vs training progress
    section = driver.execute_script("return document.getElementById('early').nextElementSibling.id")
    assert section == "early-tiny_mdqa"
    curve = driver.execute_script(
        "const i = document.querySelector(\"img[alt='recall vs training progress']\"); return [i.naturalWidth, i.naturalHeight]"
    )
    assert curve[0] > 300 and curve[1] > 200
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
