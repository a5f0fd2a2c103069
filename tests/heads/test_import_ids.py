"""Imported head scores keep their example ids: a Wu et al. round trip (or a file compared with
itself) pairs examples and gives exactly [1, 1]; comparisons that cannot compute an interval say why
instead of printing [nan, nan]."""

import json

import numpy as np
import pytest

from heads_helpers import scored_result
from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.heads.compare import CompareConfig, compare, compare_dirs, load_scores, wu_ids_path
from needlework.heads.io import export_scores, import_scores


def _result(tmp_path, name="src", n=20, L=2, H=4, K=2, seed=0, order=None):
    """A scored result whose example ids do not sort in scoring order (e10 < e2), as real ids rarely do."""
    return scored_result(tmp_path, name, seed, L, H, K, n, order)


def _stats(df):
    return df.set_index("stat")


def test_wu_round_trip_is_paired_and_exact(tmp_path):
    src = _result(tmp_path, order=[3, 11, 0, 7, 19, 2, 10, 1, 5, 4, 6, 8, 9, 12, 13, 14, 15, 16, 17, 18])
    f = export_scores(src, "wu", tmp_path / "heads.json")
    ids = json.loads(wu_ids_path(f).read_text())["example_ids"]
    assert wu_ids_path(f).name == "heads.example_ids.json" and ids[:3] == ["e3", "e11", "e0"]  # scoring order
    obj = json.loads(f.read_text())
    per = HeadScores.read(src).per_example
    want = per[(per["layer"] == 1) & (per["head"] == 2)].set_index("example_id").loc[ids, "score"].tolist()
    assert obj["1-2"] == want  # each list in the id file's order
    back = import_scores(f, "wu", tmp_path / "back", n_kv_heads=2)
    assert set(HeadScores.read(back).per_example.example_id) == set(ids)
    assert HeadScores.read(back).meta["example_ids_from"] == wu_ids_path(f).name  # relative to the folder above the result
    t = _stats(compare_dirs(src, back, CompareConfig(n_boot=200)))
    assert t.attrs["interval"].startswith("paired")
    for stat in ("cosine", "spearman", "recall", "precision", "jaccard"):
        assert (t.at[stat, "value"], t.at[stat, "lo"], t.at[stat, "hi"]) == (pytest.approx(1.0),) * 3, stat
        assert t.at[stat, "why"] == ""
    # the JSON read directly (its id file beside it) pairs with the source too
    t = _stats(compare_dirs(src, f, CompareConfig(n_boot=200, view="query")))
    assert t.attrs["interval"].startswith("paired") and t.at["cosine", "lo"] == pytest.approx(1.0)


def test_unpaired_interval_was_the_bug(tmp_path):
    """Without the ids, the same scores under other ids resample each side on its own: the interval
    of a comparison of identical numbers leaves 1.0 out (what the import used to give)."""
    src = _result(tmp_path)
    f = export_scores(src, "wu", tmp_path / "heads.json")
    wu_ids_path(f).unlink()
    back = import_scores(f, "wu", tmp_path / "back", n_kv_heads=2)
    assert HeadScores.read(back).meta["example_ids_from"] == "positions"
    t = _stats(compare_dirs(src, back, CompareConfig(n_boot=200)))
    assert t.attrs["interval"].startswith("unpaired") and "0 example ids in common" in t.attrs["interval"]
    assert t.at["cosine", "value"] == pytest.approx(1.0) and t.at["cosine", "hi"] < 1.0
    # a Wu file without ids compared with itself: positions pair, exactly 1
    t = _stats(compare_dirs(f, f, CompareConfig(n_boot=100)))
    assert t.attrs["interval"].startswith("paired") and (t.at["cosine", "lo"], t.at["cosine", "hi"]) == (pytest.approx(1.0),) * 2


def test_ids_that_do_not_fit_are_errors(tmp_path):
    f = export_scores(_result(tmp_path, n=5), "wu", tmp_path / "heads.json")
    with pytest.raises(NeedleworkError, match="names 3 example ids"):
        import_scores(f, "wu", tmp_path / "x", example_ids=["a", "b", "c"])
    with pytest.raises(NeedleworkError, match="not found"):
        import_scores(f, "wu", tmp_path / "x", example_ids=tmp_path / "missing.json")
    given = import_scores(f, "wu", tmp_path / "given", example_ids=[f"q{i}" for i in range(5)])
    assert sorted(set(HeadScores.read(given).per_example.example_id)) == [f"q{i}" for i in range(5)]


def test_means_only_comparisons_say_why(tmp_path):
    src = _result(tmp_path)
    duo = import_scores(export_scores(src, "duo", tmp_path / "d.tsv"), "duo", tmp_path / "duo")
    t = _stats(compare_dirs(src, duo))
    assert t["lo"].isna().all() and t["hi"].isna().all()
    assert set(t["why"]) == {"no interval: B has mean scores only (a DuoAttention table: one mean per kv head)"}
    assert t.attrs["interval"] == t.at["cosine", "why"]
    uneven = tmp_path / "uneven.json"
    uneven.write_text(json.dumps({"0-0": [0.1, 0.2], "0-1": [0.3]}))
    s = load_scores(uneven)
    assert s.per_example is None and "unequal length" in s.note
    t = _stats(compare(s, s))
    assert "A has mean scores only (Wu et al. lists of unequal length" in t.at["cosine", "why"]
    t = _stats(compare_dirs(src, src, CompareConfig(n_boot=0)))
    assert set(t["why"]) == {"no interval: no bootstrap (n_boot 0)"}


def test_a_statistic_undefined_in_every_resample_says_why(tmp_path):
    src = _result(tmp_path)
    t = _stats(compare_dirs(src, src, CompareConfig(threshold=5.0, n_boot=50)))  # no head above 5: empty sets
    assert np.isnan(t.at["recall", "value"]) and np.isnan(t.at["recall", "lo"])
    assert t.at["recall", "why"] == "B's head set is empty in every resample"
    assert t.at["cosine", "why"] == "" and t.at["cosine", "lo"] == pytest.approx(1.0)


def test_cli_prints_reasons_not_nan(tmp_path):
    from typer.testing import CliRunner

    from needlework.cli import app

    src = _result(tmp_path)
    duo = import_scores(export_scores(src, "duo", tmp_path / "d.tsv"), "duo", tmp_path / "duo")
    r = CliRunner().invoke(app, ["heads", "compare", str(src), str(duo)])
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output and "no interval: B has mean scores only" in r.output
    f = export_scores(src, "wu", tmp_path / "heads.json")
    back = import_scores(f, "wu", tmp_path / "back", n_kv_heads=2)
    r = CliRunner().invoke(app, ["heads", "compare", str(src), str(back), "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    assert "95% intervals: paired bootstrap over the 20 examples" in r.output
    assert "    cosine    1.0000  [1.0000, 1.0000]" in r.output
    r = CliRunner().invoke(app, ["heads", "compare", str(src), str(src), "--threshold", "5", "--n-boot", "20"])
    assert "(B's head set is empty in every resample)" in r.output and "nan, nan" not in r.output
