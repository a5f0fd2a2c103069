"""The study report: one self-contained HTML page (a jinja2 template, `templates/report.html.j2`)
with PNG figures and a study-level results table (CSV) beside it, built only by READING a study
folder: its index and the artifacts (`needlework.artifacts`) of the stages it points to.

Sections: methods and provenance (model, method and LoRA settings, lr, sizes, lengths, scoring
mode, head rule, the resolved config, library versions, device, date); scores with F1 and head
overlap per training set; per (model, task) the score bars, recall vs score with p-values, the
leave-one-out table and a heatmap per set; with several head criteria, which criterion's recall
predicts the score best and how far their head sets agree (`report.criteria`); accuracy by needle
depth; a per-example drill-down; training loss curves; early prediction (`report.early`);
knockout; patching. Every figure carries
a reading written from the numbers and their intervals (`report.readings`), and its n.
"""

from __future__ import annotations

import datetime as dt
import os
from importlib.resources import files
from pathlib import Path

from needlework.artifacts import STUDY_INDEX, STUDY_RESULTS, Analysis, HeadScores
from needlework.io import write_text
from needlework.report.criteria import criteria_section
from needlework.report.early import early_parts, pct, reading_earliest
from needlework.report.figures import fig_heatmaps, fig_scatter, fig_scores
from needlework.report.gather import SetRun, devices_of, done, load_study, read, results_rows, set_runs, versions_of
from needlework.report.html import CSS, ci, fig_block, fmt, table_block, tag
from needlework.report.readings import (
    reading_correlation,
    reading_criteria,
    reading_heads,
    reading_scores,
)
from needlework.report.sections import depth_section, examples_section, knockout_section, loss_section, patch_section

__all__ = ["load_study", "summary_lines", "write_report"]


def _analyses(study_dir: Path, manifest: dict) -> list[dict]:
    return [a.result for a in (read(study_dir, n, Analysis) for n in done(study_dir, manifest, "analysis")) if a]


# ----------------------------------------------------------------------------------- methods and provenance


def methods_rows(cfg: dict, runs: list[SetRun]) -> list[list[str]]:
    """What a reader needs to redo the study: model, training method and settings, sizes, lengths,
    scoring, head rule, evaluation; the device as configured and the processes training used."""
    t, h, s, e = cfg["train"], cfg["heads"], cfg["sizes"], cfg["eval"]
    models = "; ".join(f"{k}: {m['name']} ({m['dtype']}, attention {m['attn_implementation']})" for k, m in cfg["models"].items())
    method = t["method"] + (
        f" (r={t['lora_r']}, alpha={t['lora_alpha']}, dropout={t['lora_dropout']}, targets {', '.join(t['targets'])})"
        if t["method"] == "lora"
        else ""
    )
    lengths = ", ".join(f"{k} {v['length']} tokens" for k, v in cfg["tasks"].items())
    tc = next((r.train_config for r in runs if r.train_config), None) or {}
    devices = ", ".join(sorted({str(m["device"]) for m in cfg["models"].values()}))
    main = f", main criterion {h['criterion']}" if h.get("criterion") else ""
    dist = tc.get("distributed")
    world = f", {tc.get('world_size', 1)} process(es)" + (f" ({dist})" if dist not in (None, "none", False) else "") if tc else ""
    return [
        ["model", models],
        ["method", method],
        [
            "optimisation",
            f"lr {t['lr']}, {t['schedule']} schedule, {t['epochs']} epoch(s), batch {t['batch_size']} x {t['grad_accum']} accumulation",
        ],
        ["sizes", f"{s['n_train']} training and {s['n_eval']} evaluation examples per set"],
        ["lengths", lengths],
        ["head scoring", f"{cfg['score']['score']} score, {cfg['score']['mode']} mode" + _criteria_text(cfg)],
        ["head rule", f"{h['rule']} (k={h['top']}, threshold={h['threshold']})" + main],
        ["evaluation", f"greedy, {e['max_new_tokens']} new tokens, {e['n_boot']} bootstrap resamples, alpha {e['alpha']}"],
        ["device", f"{devices} (as configured){world}"],
    ]


def _criteria_text(cfg: dict) -> str:
    """The further criteria scored beside the primary score, study-wide and per task (empty: none)."""
    parts = [f"criteria {', '.join(c)}" for c in [cfg["score"].get("criteria")] if c]
    parts += [f"{t}: {', '.join(c)}" for t, spec in cfg["tasks"].items() for c in [(spec.get("score") or {}).get("criteria")] if c]
    return f"; further {'; '.join(parts)} on the same examples" if parts else ""


def _methods_section(study_dir: Path, manifest: dict, runs: list[SetRun]) -> dict:
    import yaml

    cfg = manifest["config"]
    vers = versions_of(study_dir, [n for n in manifest["nodes"] if n.get("dir")])
    ran = dt.datetime.fromtimestamp((study_dir / STUDY_INDEX).stat().st_mtime, dt.timezone.utc)
    prov = [["versions", ", ".join(f"{k} {v}" for k, v in vers.items() if v) or "not recorded"]]
    prov += [["ran on", ", ".join(devices_of(study_dir, [n for n in manifest["nodes"] if n.get("dir")])) or "not recorded"]]
    prov += [
        ["study run", ran.strftime("%Y-%m-%d %H:%M UTC")],
        ["report built", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
    ]
    blocks = [
        table_block(["", ""], methods_rows(cfg, runs) + prov, n_left=2, id="methods-table"),
        {"kind": "pre", "summary": "resolved config (YAML)", "text": yaml.safe_dump(cfg, sort_keys=True)},
    ]
    return {"id": "methods", "title": "Methods and provenance", "blocks": blocks}


# ----------------------------------------------------------------------------------- results


MAIN_HEADERS = [
    "model",
    "task",
    "training set",
    "kind",
    "n",
    "score [95% CI]",
    "F1 [95% CI]",
    "retrieval heads (>thr)",
    "recall [CI]",
    "precision",
    "cosine [CI]",
    "Spearman",
]


def _f1(runs: dict, key: tuple) -> str:
    run = runs.get(key)
    m = run.eval.summary["tasks"][key[1]]["metrics"].get("f1") if run is not None else None
    return ci(m["mean"], m["lo"], m["hi"]) if m else "–"


def main_table_rows(analyses: list[dict], runs: dict | None = None) -> tuple[list[list[str]], set[int]]:
    rows, refs = [], set()
    for an in analyses:
        for r in an["rows"]:
            if r["reference"]:
                refs.add(len(rows))
            label = r["label"] + (" (reference)" if r["reference"] else "")
            label += f" (stopped at {pct(r['stopped_at'])})" if r.get("stopped_at") is not None else ""
            rows.append(
                [an["model"], an["task"], label, r["kind"], str(r.get("n_eval", "")), ci(r["score"], r["score_lo"], r["score_hi"])]
                + [_f1(runs or {}, (an["model"], an["task"], r["set"])), str(r["n_above_threshold"])]
                + [ci(r["recall"], r["recall_lo"], r["recall_hi"]), fmt(r["precision"]), ci(r["cosine"], r["cosine_lo"], r["cosine_hi"])]
                + [fmt(r["spearman"])]
            )
    return rows, refs


def _corr_table(an: dict) -> dict:
    rows = []
    for what in ("recall", "cosine"):
        c = an[f"{what}_vs_score"]
        s, p = c["spearman"], c["pearson"]
        rows.append(
            [
                f"{what} vs score",
                str(c["n"]),
                ci(s["r"], s["lo"], s["hi"]),
                fmt(s.get("p"), 3),
                ci(p["r"], p["lo"], p["hi"]),
                fmt(p.get("p"), 3),
            ]
        )
    return table_block(
        ["correlation", "n sets", "Spearman [CI]", "p", "Pearson [CI]", "p"],
        rows,
        n_left=1,
        caption="p: two-sided test of no correlation; CI: bootstrap over training sets.",
    )


def _head_tables(study_dir: Path, an: dict, score_nodes: dict) -> tuple[dict, str | None, int, str]:
    """Each set's heads table of the main criterion (the one whose head sets the analysis compares),
    the reference's label, the most examples a set was scored on, and the criterion's name."""
    tables, ref_label, n_scored, crit = {}, None, 0, (an.get("criteria") or {}).get("main")
    for r in an["rows"]:
        node = score_nodes.get((an["model"], an["task"], r["set"]))
        scores = read(study_dir, node, HeadScores) if node else None
        if scores is not None:
            scores = scores.criterion(crit)
            crit = scores.primary
            tables[r["label"]] = scores.heads
            ref_label = r["label"] if r["reference"] else ref_label
            n_scored = max(n_scored, int(scores.heads["n"].max()) if "n" in scores.heads and len(scores.heads) else 0)
    return tables, ref_label, n_scored, crit or "retrieval"


def _analysis_section(study_dir: Path, an: dict, score_nodes: dict, out: Path, k: int) -> dict:
    """One (model, task): score bars, recall vs score, correlations, leave-one-out, heatmaps."""
    m, task = an["model"], an["task"]
    ftag = tag(m, task)
    n = max((r.get("n_eval") or 0 for r in an["rows"]), default=0)
    tables, ref_label, n_scored, crit = _head_tables(study_dir, an, score_nodes)
    blocks = [
        fig_block(
            fig_scores(an["rows"], f"{m} / {task}: score per training set", out / f"scores_{ftag}.png"),
            "scores",
            f"{an['rows'][0]['metric'] if an['rows'] else 'score'} per training set, 95% intervals over n={n} evaluation examples.",
            reading_scores(an["rows"]),
        ),
    ]
    used = [r for r in an["rows"] if r["set"] in an.get("sets", [])]
    reading = reading_correlation(an["recall_vs_score"], [r["recall"] for r in used], "Head recall")
    reading += " " + reading_correlation(an["cosine_vs_score"], [r["cosine"] for r in used], "Cosine")
    cap = f"n={an['recall_vs_score']['n']} training sets (reference and no fine-tuning left out); bars: 95% intervals over {n} examples."
    src = fig_scatter(an, f"{m} / {task}: recall vs score", out / f"scatter_{ftag}.png", crit)
    blocks += [fig_block(src, "recall vs score", cap, reading), _corr_table(an)]
    loo = an["loo"]
    blocks.append(
        {
            "kind": "text",
            "text": f"Leave-one-out prediction of each set's score from its recall (a line fitted on the others), "
            f"mean absolute error {fmt(loo['mae'])}:",
        }
    )
    loo_rows = [[r["set"], fmt(r["x"]), fmt(r["actual"]), fmt(r["predicted"]), fmt(r["error"])] for r in loo["rows"]]
    blocks.append(table_block(["training set", "recall", "actual", "predicted", "error"], loo_rows, n_left=1))
    if tables:
        src = fig_heatmaps(tables, f"{m} / {task}: {crit} score per layer x head", out / f"heatmap_{ftag}.png", f"{crit} score")
        cap = f"Mean {crit} score per head over n={n_scored} scored examples per set."
        blocks.append(fig_block(src, "heatmaps", cap, reading_heads(tables, k, ref_label)))
    return {"id": f"a-{ftag}", "title": f"{m} · {task}", "blocks": blocks}


# ----------------------------------------------------------------------------------- the page


def write_results_csv(runs: list[SetRun], analyses: list[dict], path: Path) -> Path:
    """The study-level results table: one row per model x task x training set (`gather.results_rows`)."""
    import pandas as pd

    write_text(path, pd.DataFrame(results_rows(runs, analyses)).to_csv(index=False))
    return path


def _render(name: str, sections: list[dict], intro: str) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    tpl = env.from_string(files("needlework.report").joinpath("templates/report.html.j2").read_text(encoding="utf-8"))
    return tpl.render(name=name, css=CSS, intro=intro, sections=sections)


def _results_section(analyses: list[dict], by_key: dict) -> dict:
    """The main table (one row per set, with n and F1) and the link to results.csv."""
    for an in analyses:  # n per row, for captions and the table
        for r in an["rows"]:
            run = by_key.get((an["model"], an["task"], r["set"]))
            r.setdefault("n_eval", run.eval.summary["tasks"][an["task"]]["n"] if run is not None else None)
    rows, refs = main_table_rows(analyses, by_key)
    none = {"kind": "text", "text": "No analysis yet (run the study to the end)."}
    main = [table_block(MAIN_HEADERS, rows, n_left=4, ref_rows=refs, id="results-table")] if rows else [none]
    link = {"kind": "link", "before": "Every metric with its interval, per model × task × set: ", "href": STUDY_RESULTS}
    main.append({**link, "text": STUDY_RESULTS, "after": "."})
    return {"id": "results", "title": "Scores and head overlap with the reference model", "blocks": main}


INTRO = (
    "Head-set rule: {rule} (k={top}, threshold={threshold}). Intervals are 95% bootstrap intervals over examples (scores, "
    "head comparisons, knockout, patching) or over training sets (correlations). A difference is read as one only when the "
    "intervals separate; otherwise the reading says there is no conclusion at this size."
)


def write_report(study_dir: str | os.PathLike) -> Path:
    """Write `study_dir/report/index.html` (+ PNGs and the results CSV) from the study's outputs;
    returns the page path.

    Raises:
        NeedleworkError: the folder holds no study.json.
    """
    study_dir = Path(study_dir)
    manifest = load_study(study_dir)
    cfg = manifest["config"]
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    analyses, runs = _analyses(study_dir, manifest), set_runs(study_dir, manifest)
    by_key = {(r.model, r.task, r.set): r for r in runs}
    sections: list[dict | None] = [_methods_section(study_dir, manifest, runs), _results_section(analyses, by_key)]
    write_results_csv(runs, analyses, out / STUDY_RESULTS)
    score_nodes = {(n["model"], n["task"], n["set"]): n for n in done(study_dir, manifest, "score")}
    for an in analyses:
        sections += [_analysis_section(study_dir, an, score_nodes, out, cfg["heads"]["top"]), criteria_section(an)]
    sections += [depth_section(runs, out), examples_section(runs), loss_section(runs, cfg, out)]
    early = [part for an in analyses for part in early_parts(an, out)]
    if early:
        title = "Early prediction: does head recall early in training predict the final score?"
        sections.append({"id": "early", "title": title, "blocks": early})
    n_eval = cfg["sizes"]["n_eval"]
    sections += [
        knockout_section(study_dir, done(study_dir, manifest, "knockout"), out, n_eval),
        patch_section(study_dir, done(study_dir, manifest, "patch"), n_eval),
    ]
    intro = INTRO.format(**cfg["heads"])
    write_text(out / "index.html", _render(manifest["name"], [s for s in sections if s], intro))
    return out / "index.html"


def summary_lines(study_dir: str | os.PathLike) -> list[str]:
    """A short plain-text results table (one line per model/task/training set) and each task's
    correlation, for the end of `needlework study` and `make demo`."""
    study_dir = Path(study_dir)
    manifest = load_study(study_dir)
    analyses = _analyses(study_dir, manifest)
    rows, _ = main_table_rows(analyses)
    if not rows:
        return ["(no results yet)"]
    cols = [0, 1, 2, 5, 7, 8, 10]
    head = [MAIN_HEADERS[i] for i in cols]
    body = [[r[i] for i in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    for an in analyses:
        used = [r["recall"] for r in an["rows"] if r["set"] in an.get("sets", [])]
        lines.append(f"{an['model']}/{an['task']}: {reading_correlation(an['recall_vs_score'], used, 'head recall')}")
        if an.get("criteria"):
            lines.append(f"{an['model']}/{an['task']}: head criteria: {reading_criteria(an['criteria'])}")
        if an.get("early"):
            lines.append(f"{an['model']}/{an['task']}: early prediction: {reading_earliest(an['early'])}")
    return lines
