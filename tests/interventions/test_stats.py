"""Gap recovered by patching, with its paired bootstrap interval (interventions.stats), and the
patch table that carries it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from needlework.evaluate.config import EvalConfig
from needlework.interventions.patch import _table, control_for
from needlework.interventions.stats import recovered_ci


def test_recovered_ci_is_the_gap_share_with_a_paired_interval():
    target = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], float)
    source = np.ones(10)
    patched = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1], float)  # 4 of the 8 examples of the gap recovered
    rec, lo, hi = recovered_ci(patched, target, source, n_boot=2000)
    assert rec == 0.5 and lo < 0.5 < hi and 0.0 <= lo and hi <= 1.0
    assert recovered_ci(source, target, source)[0] == 1.0  # patching everything back: the whole gap
    assert recovered_ci(patched, source, source) == (None, None, None)  # no gap: nothing to recover


def test_patch_table_gives_each_set_its_interval_and_its_control():
    ids = [f"e{i}" for i in range(8)]
    scores = {
        "source": [1] * 8,
        "target": [0] * 8,
        "intersection": [1, 1, 1, 1, 1, 1, 0, 0],
        "random_intersection_0": [0, 0, 0, 0, 0, 0, 0, 1],
        "random_0": [0] * 8,
    }
    per = pd.DataFrame([{"condition": c, "id": i, "task": "mdqa", "score": float(v)} for c, vs in scores.items() for i, v in zip(ids, vs)])
    sets = {"intersection": {1, 2}, "random_intersection_0": {3, 4}, "random_0": {5}}
    rows, md = _table(per, sets, EvalConfig(n_boot=500), random_like="complement")
    by = {r["condition"]: r for r in rows}
    assert by["intersection"]["recovered"] == 0.75 and by["intersection"]["recovered_lo"] < 0.75 < by["intersection"]["recovered_hi"]
    assert by["random_intersection_0"]["control_for"] == "intersection" and by["random_intersection_0"]["recovered"] == 0.125
    assert by["random_0"]["control_for"] == "complement"  # an old-style control names the set random_like matched
    assert by["source"]["recovered"] is None and by["source"]["control_for"] is None
    assert "0.75 [" in md
    assert control_for("random_complement_2", {"complement": 1}, "each") == "complement"
