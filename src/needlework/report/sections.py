"""The report's sections on evaluation detail and interventions, as blocks of the page template:
accuracy by needle depth, the per-example drill-down, training loss, knockout and patching (each
set beside its own size-matched random controls). Every caption gives n; readings come from
`report.readings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from needlework.artifacts import KnockoutResult, PatchResult
from needlework.report.figures import fig_depth, fig_knockout, fig_loss
from needlework.report.gather import SetRun, examples, read
from needlework.report.html import ci, fig_block, fmt, table_block, tag
from needlework.report.readings import reading_depth, reading_knockout, reading_patch
from needlework.report.views import depth_bins, knockout_view, loss_curves, patch_view

__all__ = ["depth_section", "examples_section", "knockout_section", "loss_section", "patch_section"]

N_EXAMPLES_SHOWN = 6  # drill-down rows per training set


# ----------------------------------------------------------------------------------- depth, examples, loss


def depth_section(runs: list[SetRun], out: Path) -> dict | None:
    blocks = []
    for (m, task), group in _by_task(runs).items():
        per_set = {r.label: examples(r) for r in group}
        if not any(x["depth"] is not None for ex in per_set.values() for x in ex):
            continue
        curves = {label: depth_bins(ex) for label, ex in per_set.items()}
        pooled = depth_bins(_per_example_mean(per_set))
        src = fig_depth(curves, f"{m} / {task}: accuracy by needle depth", out / f"depth_{tag(m, task)}.png")
        n_set = max(len(ex) for ex in per_set.values())
        cap = f"Mean primary score per depth bin and training set; n={n_set} evaluation examples per set, split over {len(pooled)} bins."
        blocks.append(fig_block(src, "accuracy by needle depth", cap, reading_depth(pooled)))
    return {"id": "depth", "title": "Accuracy by needle depth (lost in the middle)", "blocks": blocks} if blocks else None


def _per_example_mean(per_set: dict[str, list[dict]]) -> list[dict]:
    """Each evaluation example once, its score averaged over the training sets: the sets share their
    evaluation examples, so pooling their rows would count one example several times."""
    by_id: dict[str, dict] = {}
    for ex in per_set.values():
        for x in ex:
            d = by_id.setdefault(x["id"], {**x, "scores": []})
            d["scores"].append(x["score"])
    return [{**d, "score": sum(d["scores"]) / len(d["scores"])} for d in by_id.values()]


def _by_task(runs: list[SetRun]) -> dict[tuple[str, str], list[SetRun]]:
    out: dict[tuple[str, str], list[SetRun]] = {}
    for r in runs:
        out.setdefault((r.model, r.task), []).append(r)
    return out


def examples_section(runs: list[SetRun]) -> dict | None:
    """Per set, a few evaluation examples: mixed correct and wrong, so both kinds can be read."""
    blocks = []
    for r in runs:
        ex = examples(r)
        if not ex:
            continue
        right, wrong = [x for x in ex if x["score"] >= 0.5], [x for x in ex if not x["score"] >= 0.5]
        shown = (wrong[: N_EXAMPLES_SHOWN // 2] + right)[:N_EXAMPLES_SHOWN] if wrong else right[:N_EXAMPLES_SHOWN]
        shown = (shown + [x for x in wrong if x not in shown])[:N_EXAMPLES_SHOWN]
        rows = [
            [x["id"], x["question"], x["gold"], x["prediction"], fmt(x["score"]), "yes" if x["score"] >= 0.5 else "no", fmt(x["depth"])]
            for x in shown
        ]
        t = table_block(["id", "question", "gold", "prediction", "score", "correct", "depth"], rows, n_left=4)
        summary = f"{r.model} / {r.task} / {r.label}: {len(shown)} of {len(ex)} examples ({sum(x['score'] >= 0.5 for x in ex)} correct)"
        blocks.append({"kind": "details", "summary": summary, "table": t, "open": r.reference})
    if not blocks:
        return None
    note = {
        "kind": "text",
        "text": "Correct: primary score ≥ 0.5. Depth: position of the gold document (0 first, 1 last). "
        "Every example's prediction is in its evaluate stage's predictions file.",
    }
    return {"id": "examples", "title": "Examples: question, gold, prediction", "blocks": [note, *blocks]}


def loss_section(runs: list[SetRun], cfg: dict, out: Path) -> dict | None:
    blocks = []
    for (m, task), group in _by_task(runs).items():
        curves = loss_curves({r.label: r.log for r in group})
        if not curves:
            continue
        src = fig_loss(curves, f"{m} / {task}: training loss", out / f"loss_{tag(m, task)}.png")
        t = cfg["train"]
        cap = f"Loss on answer tokens per logged step; n={cfg['sizes']['n_train']} training examples per set, "
        cap += f"{t['epochs']} epoch(s), lr {t['lr']}."
        final = "; ".join(f"{label} {fmt(pts[-1][1])} at step {pts[-1][0]}" for label, pts in curves.items())
        blocks.append(fig_block(src, "training loss", cap, f"Final logged loss: {final}."))
    return {"id": "loss", "title": "Training loss", "blocks": blocks} if blocks else None


# ----------------------------------------------------------------------------------- interventions


def _subset(n: Any, n_eval: int) -> str:
    if isinstance(n, int) and n_eval and n < n_eval:
        return f"n={n} examples: a subset (the first {n}) of the {n_eval} evaluation examples"
    return f"n={n} examples"


def knockout_section(study_dir: Path, nodes: list[dict], out: Path, n_eval: int) -> dict | None:
    blocks = []
    for n in nodes:
        res = read(study_dir, n, KnockoutResult)
        if res is None:
            continue
        ko = knockout_view(res.summary, res.per_example, n["task"])
        src = fig_knockout(ko, f"knockout: {n['label']} (k={ko['k']}, n={ko['n']})", out / f"knockout_{tag(n['label'])}.png")
        cap = f"{_subset(ko['n'], n_eval)}; {len(ko['random'])} layer-matched random set(s) of k={ko['k']} heads; 95% bootstrap intervals."
        blocks.append(fig_block(src, "knockout", cap, f"{n['label']}: " + reading_knockout(ko)))
    return {"id": "knockout", "title": "Knockout: are the heads necessary?", "blocks": blocks} if blocks else None


def _controls_table(kinds: list[dict]) -> dict:
    """Each patched head set beside its own random controls (pooled over seeds), both with the gap
    recovered and its interval: the comparison that says whether the set matters."""
    rows = []
    for k in kinds:
        c = k.get("control") or {}
        rows.append(
            [k["kind"], str(k["n_heads"]), ci(k["recovered"], k["lo"], k["hi"])]
            + ([str(c["n_heads"]), str(c["n_seeds"]), ci(c["recovered"], c.get("lo"), c.get("hi"))] if c else ["–", "0", "–"])
        )
    headers = ["target: set", "heads", "gap recovered [CI]", "control heads", "control seeds", "control gap recovered [CI]"]
    return table_block(headers, rows, n_left=1, caption="Random controls: size- and layer-matched to the set, pooled over seeds.")


def patch_section(study_dir: Path, nodes: list[dict], n_eval: int) -> dict | None:
    rows, kinds, ns = [], [], set()
    for n in nodes:
        p = read(study_dir, n, PatchResult)
        if p is None:
            continue
        ns.add(p.summary.get("n"))
        for r in p.rows():
            hd = "" if r.get("n_heads") is None else str(r["n_heads"])
            rec = ci(r.get("recovered"), r.get("recovered_lo"), r.get("recovered_hi"))
            rows.append(
                [
                    n["label"],
                    r["condition"],
                    r.get("control_for") or r["kind"],
                    hd,
                    ci(r["score"], r["lo"], r["hi"]),
                    ci(r["delta"], r["delta_lo"], r["delta_hi"]),
                    rec,
                ]
            )
        for k in patch_view(p.summary, p.per_example):
            kinds.append({**k, "kind": f"{n['label']}: {k['kind']}"})
    if not rows:
        return None
    cap = f"{_subset(next(iter(ns)) if len(ns) == 1 else sorted(ns, key=str), n_eval)}"
    cap += "; gap recovered = (patched − target) / (source − target), paired 95% bootstrap over examples."
    headers = ["target model", "condition", "set", "heads", "score [CI]", "delta vs target [CI]", "gap recovered [CI]"]
    unmatched = [k["kind"] for k in kinds if k.get("control") and not k["control"]["size_matched"]]
    blocks = [table_block(headers, rows, n_left=3, caption=cap), _controls_table(kinds), {"kind": "reading", "text": reading_patch(kinds)}]
    if unmatched:
        warn = f"The random control of {', '.join(unmatched)} differs in size from the set (an older run matched one set only)"
        warn += ": compare with care."
        blocks.append({"kind": "reading", "text": warn})
    return {"id": "patching", "title": "Patching reference heads into each model: are the heads sufficient?", "blocks": blocks}
