"""Derived views of what the study wrote, for the report's figures and readings: knockout conditions
with paired intervals, patching kinds against their own size-matched random controls, accuracy by
needle depth, and training-loss curves. Everything is recomputed from the artifacts' per-example
rows (bootstrap over examples), never by running a model."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from needlework.evaluate.bootstrap import bootstrap_ci, paired_diff_ci
from needlework.interventions.stats import recovered_ci
from needlework.report.html import finite
from needlework.report.readings import compare_interval

__all__ = ["depth_bins", "knockout_view", "loss_curves", "patch_view"]

NAN = float("nan")


# ----------------------------------------------------------------------------------- knockout


def _scores(per, cond: str, task: str):
    """A condition's per-example primary scores indexed by example id (None without per-example rows)."""
    if per is None or not {"id", "score", "condition"} <= set(per.columns):
        return None
    g = per[(per["condition"] == cond) & ((per["task"] == task) if "task" in per.columns else True)]
    return g.set_index("id")["score"].astype(float) if len(g) else None


def _delta(c: dict, name: str, task: str, base: dict, cur: dict, per, n_boot: int) -> dict:
    """The change against no knockout with `hurts` (its interval wholly below 0): as the stage wrote
    it, else a paired bootstrap over the per-example rows, else the point difference with `hurts`
    read from non-overlapping intervals."""
    d = c[name].get("delta_vs_baseline", {}).get(task)
    if d is not None and finite(d.get("hi")):
        return {**d, "hurts": d["hi"] < 0}
    b, x = _scores(per, "baseline", task), _scores(per, name, task)
    if b is not None and x is not None and set(b.index) == set(x.index):
        m, lo, hi = paired_diff_ci(x.loc[b.index].to_numpy(), b.to_numpy(), n_boot)
        return {"mean": m, "lo": lo, "hi": hi, "hurts": hi < 0}
    return {"mean": cur["mean"] - base["mean"], "lo": NAN, "hi": NAN, "hurts": compare_interval(cur, base) == "below"}


def knockout_view(summary: dict, per, task: str, n_boot: int = 1000) -> dict[str, Any]:
    """None / top-k / each random set's primary metric with intervals, each one's change against no
    knockout, and top-k against each random set: a paired bootstrap over examples when the
    per-example scores are there (`how` says which comparison was used)."""
    c = summary["conditions"]
    prim = c["baseline"]["tasks"][task]["primary"]

    def metric(name: str) -> dict:
        v = c[name]["tasks"][task]["metrics"][prim]
        return {"mean": v["mean"], "lo": v["lo"], "hi": v["hi"]}

    base, top = metric("baseline"), metric("top")
    top["delta"] = _delta(c, "top", task, base, top, per, n_boot)
    top_s = _scores(per, "top", task)
    rnd, how = [], "non-overlapping 95% intervals"
    for name in sorted((n for n in c if n.startswith("random")), key=lambda n: (len(n), n)):
        r = {"name": name, **metric(name)}
        r["delta"] = _delta(c, name, task, base, r, per, n_boot)
        rs = _scores(per, name, task)
        if top_s is not None and rs is not None and set(rs.index) == set(top_s.index):
            d, lo, hi = paired_diff_ci(top_s.to_numpy(), rs.loc[top_s.index].to_numpy(), n_boot)
            r["vs_top"] = "top lower" if hi < 0 else "top higher" if lo > 0 else "overlap"
            how = "paired differences over examples, 95% bootstrap"
        else:
            side = compare_interval(top, r)
            r["vs_top"] = "top lower" if side == "below" else "top higher" if side == "above" else "overlap"
        rnd.append(r)
    k = c["top"].get("n_heads") or len(c["top"].get("heads", [])) or "?"
    return {"metric": prim, "k": k, "n": summary.get("n"), "baseline": base, "top": top, "random": rnd, "how": how}


# ----------------------------------------------------------------------------------- patching


def _control_for(row: dict, kinds: list[str], random_like: str) -> str | None:
    """Which head-set kind a random condition controls for: its recorded `control_for`, the kind
    in its name (`random_<kind>_<seed>`), or (older results) the one `random_like` named."""
    if row.get("control_for"):
        return row["control_for"]
    m = re.fullmatch(r"random_(.+)_\d+", row["condition"])
    if m and m.group(1) in kinds:
        return m.group(1)
    return random_like if random_like in kinds else (kinds[0] if kinds else None)


def _gap_ci(per, task: str, conds: list[str], n_boot: int) -> tuple[Any, Any, Any]:
    """Gap recovered by the per-example mean of `conds` (several seeds pooled), paired bootstrap."""
    src, tgt = _scores(per, "source", task), _scores(per, "target", task)
    got = [_scores(per, c, task) for c in conds]
    if src is None or tgt is None or any(g is None for g in got):
        return None, None, None
    idx = tgt.index
    patched = np.mean([g.loc[idx].to_numpy() for g in got], axis=0)
    return recovered_ci(patched, tgt.to_numpy(), src.loc[idx].to_numpy(), n_boot)


def patch_view(summary: dict, per, n_boot: int = 1000) -> list[dict]:
    """Per task and head-set kind (intersection, complement, ...): heads, gap recovered with its
    interval, and its random controls pooled over seeds (heads, seeds, gap recovered with interval,
    `size_matched`)."""
    random_like = (summary.get("config") or {}).get("random_like", "complement")
    out = []
    for task in dict.fromkeys(r["task"] for r in summary["table"]):
        rows = [r for r in summary["table"] if r["task"] == task]
        kinds = [r for r in rows if r["condition"] not in ("source", "target") and not r["condition"].startswith("random_")]
        names = [r["condition"] for r in kinds]
        controls: dict[str, list[dict]] = {}
        for r in rows:
            if r["condition"].startswith("random_"):
                controls.setdefault(_control_for(r, names, random_like) or "", []).append(r)
        for r in kinds:
            rec, lo, hi = r.get("recovered"), r.get("recovered_lo"), r.get("recovered_hi")
            if lo is None:
                rec2, lo, hi = _gap_ci(per, task, [r["condition"]], n_boot)
                rec = rec if rec is not None else rec2
            item = {"task": task, "kind": r["condition"], "n_heads": r.get("n_heads"), "recovered": rec, "lo": lo, "hi": hi}
            ctl = controls.get(r["condition"])
            if ctl:
                crec, clo, chi = _gap_ci(per, task, [x["condition"] for x in ctl], n_boot)
                if crec is None:
                    vals = [x["recovered"] for x in ctl if finite(x.get("recovered"))]
                    crec = float(np.mean(vals)) if vals else None
                n_ctl = ctl[0].get("n_heads")
                item["control"] = {"n_heads": n_ctl, "n_seeds": len(ctl), "recovered": crec, "lo": clo, "hi": chi}
                item["control"]["size_matched"] = n_ctl == r.get("n_heads")
            out.append(item)
    return out


# ----------------------------------------------------------------------------------- depth and loss

DEPTH_BINS = 5


def depth_bins(rows: list[dict], n_bins: int = DEPTH_BINS, n_boot: int = 1000) -> list[dict]:
    """Examples binned by the depth of their gold document: mean score, bootstrap interval, n."""
    out = []
    for i in range(n_bins):
        lo_edge, hi_edge = i / n_bins, (i + 1) / n_bins
        v = [r["score"] for r in rows if r["depth"] is not None and lo_edge <= r["depth"] < hi_edge + (i == n_bins - 1) * 1e-9]
        v = [x for x in v if finite(x)]
        lo, hi = bootstrap_ci(np.array(v), n_boot) if v else (NAN, NAN)
        acc = float(np.mean(v)) if v else NAN
        out.append({"bin": f"{lo_edge:.1f}–{hi_edge:.1f}", "mid": (lo_edge + hi_edge) / 2, "n": len(v), "acc": acc, "lo": lo, "hi": hi})
    return out


def loss_curves(logs: dict[str, list[dict]]) -> dict[str, list[tuple[int, float]]]:
    """Label -> (step, loss) of every logged training step (sets without a log are left out)."""
    out = {}
    for label, log in logs.items():
        pts = [(int(x["step"]), float(x["loss"])) for x in log if "loss" in x and "step" in x and finite(x["loss"])]
        if pts:
            out[label] = pts
    return out
