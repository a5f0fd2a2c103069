"""Study config validation: every bad key or value is named by its path, with the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import study_helpers as H
from needlework.errors import NeedleworkError
from needlework.study.config import dump_config, from_dict, load_config


def _bad(mutate, match: str):
    cfg = copy.deepcopy(H.fake_config())
    mutate(cfg)
    with pytest.raises(NeedleworkError, match=match) as e:
        from_dict(cfg)
    assert e.value.fix  # every error says what to do
    return e.value


def test_valid_config_round_trips_through_saved_yaml():
    cfg = from_dict(H.fake_config())
    assert cfg.tasks["mdqa"].reference == "hh" and cfg.sizes.n_train == 4
    again = from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_unknown_top_level_key_names_itself_and_suggests():
    e = _bad(lambda c: c.update(sizs={"n_train": 3}), r"unknown key\(s\) in the top level: `sizs` \(did you mean `sizes`\?\)")
    assert "valid keys" in e.fix


def test_unknown_nested_key_names_its_path():
    _bad(lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"].update(genrate={}), r"`tasks.mdqa.train_sets.ll`.*`genrate`")
    _bad(lambda c: c["heads"].update(topk=3), r"`heads`.*`topk`")


def test_unknown_generator_option_is_checked_against_generate_config():
    _bad(
        lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"]["generate"].update(concpt="low"),
        r"`tasks.mdqa.train_sets.ll.generate`.*`concpt` \(did you mean `concept`\?\)",
    )


def test_study_filled_keys_are_refused():
    _bad(
        lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"]["generate"].update(length=100),
        r"`tasks.mdqa.train_sets.ll.generate.length`: is set by the study itself",
    )
    _bad(lambda c: c["knockout"].update(top=5), r"`knockout.top`: is set by the study")
    _bad(lambda c: c["patch"].update(set="all"), r"`patch.set`: is set by the study.*\n.*`kinds`")
    _bad(lambda c: c["knockout"].update(eval={"limit": 2}), r"`knockout.eval`: is set by the study")


@pytest.mark.parametrize("old,new", [("heads.k", "heads.top"), ("knockout.sets", "knockout.train_sets"), ("patch.sets", "patch.kinds")])
def test_renamed_keys_name_their_new_name(old, new):
    section, key = old.split(".")
    _bad(lambda c: c[section].update({key: c[section].get(new.split(".")[1], "reference")}), rf"`{old}` was renamed to `{new}`")


def test_wrong_types_name_the_expected_type():
    _bad(lambda c: c["sizes"].update(n_train="many"), r"`sizes.n_train`: expected int, got str 'many'")
    _bad(lambda c: c["analysis"].update(include_reference="yes"), r"`analysis.include_reference`: expected bool")
    _bad(lambda c: c.update(models=["smollm2"]), r"`models`: expected a mapping")
    _bad(lambda c: c["knockout"].update(limit="all"), r"`knockout.limit`: expected int or null")


def test_stage_sections_are_the_stages_own_configs():
    from needlework.evaluate.evaluate import EvalConfig
    from needlework.heads.score import ScoreConfig
    from needlework.train.config import TrainConfig

    cfg = from_dict(H.fake_config())
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.eval, EvalConfig) and isinstance(cfg.score, ScoreConfig)
    assert cfg.train.lora_r == 4 and cfg.eval.n_boot == 50 and cfg.knockout.random_seeds == 1
    assert cfg.heads.selection() == {"top": 3, "threshold": None}
    assert "top" not in cfg.to_dict()["knockout"] and "set" not in cfg.to_dict()["patch"]  # filled by the study


def test_stage_from_dicts_share_the_study_builder():
    from needlework.evaluate.evaluate import EvalConfig
    from needlework.heads.score import ScoreConfig
    from needlework.interventions.knockout import KnockoutConfig
    from needlework.train.config import TrainConfig

    with pytest.raises(NeedleworkError, match=r"`lr`: expected a number"):
        TrainConfig.from_dict({"lr": "1e-3"})
    with pytest.raises(NeedleworkError, match=r"`eval.n_boot`: expected int"):
        KnockoutConfig.from_dict({"eval": {"n_boot": "2"}})
    with pytest.raises(NeedleworkError, match=r"batch_size must be auto or an integer >= 1, not 'two'"):
        KnockoutConfig.from_dict({"eval": {"batch_size": "two"}})
    with pytest.raises(NeedleworkError, match=r"unknown score option\(s\): `mdoe` \(did you mean `mode`\?\)"):
        ScoreConfig.from_dict({"mdoe": "teacher"})
    assert TrainConfig.from_dict({"targets": "q_proj,v_proj"}).targets == ["q_proj", "v_proj"]
    assert KnockoutConfig.from_dict({"eval": {"limit": 2}}).eval == EvalConfig(limit=2)


def test_foreign_stage_sections_are_validated():
    _bad(lambda c: c["train"].update(learning_rate=1e-3), r"unknown key\(s\) in `train`.*`learning_rate`")
    _bad(lambda c: c["eval"].update(batchsize=2), r"`eval`.*`batchsize` \(did you mean `batch_size`\?\)")
    _bad(lambda c: c["train"].update(method="qlora"), r"config section `train`: bad training config: method 'qlora'")


def test_cross_field_errors():
    _bad(lambda c: c["tasks"]["mdqa"].update(reference="real"), r"`tasks.mdqa.reference`: 'real' names no training set")
    _bad(lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"].update(file="x.jsonl"), r"needs exactly one data source")
    _bad(lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"].pop("generate"), r"needs exactly one data source")
    _bad(lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"].update(kind="fake"), r"`tasks.mdqa.train_sets.ll.kind`: 'fake' is not one of")
    _bad(lambda c: c["patch"].update(targets=["lll"]), r"`patch.targets`: 'lll' name\(s\) no training set")
    _bad(lambda c: c["heads"].update(rule="best"), r"`heads.rule`")
    _bad(lambda c: c["patch"].update(kinds=["intersect"]), r"`patch.kinds\[0\]`: 'intersect' is not a head-set kind")
    _bad(lambda c: c["knockout"].update(train_sets="some"), r"`knockout.train_sets`: 'some' is not all, reference, none")
    _bad(lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"].update(kind="real"), r"a `real` set cannot be generated")
    _bad(
        lambda c: c["tasks"]["mdqa"]["train_sets"]["ll"].update(load={"path": "x"}, generate=None),
        r"`tasks.mdqa.train_sets.ll.load.format`: is missing",
    )
    _bad(lambda c: c["tasks"]["mdqa"].pop("reference"), r"`tasks.mdqa.reference`: is missing")


def test_yaml_file_errors(tmp_path):
    with pytest.raises(NeedleworkError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodels: {a: [\n")
    with pytest.raises(NeedleworkError, match=r"YAML syntax error at line \d+"):
        load_config(p)
    p.write_text(yaml.safe_dump({**H.fake_config(), "sizes": {"n_eval": 0}}))
    with pytest.raises(NeedleworkError, match=r"bad.yaml: config key `sizes.n_eval`: must be at least 1"):
        load_config(p)


def test_task_score_overrides_reach_that_tasks_score_stage_only():
    from needlework.study.engine import build_plan

    raw = copy.deepcopy(H.fake_config())
    raw["score"] = {"mode": "teacher", "score": "retrieval"}
    task = next(iter(raw["tasks"]))
    raw["tasks"]["musique"] = copy.deepcopy(raw["tasks"][task])
    raw["tasks"][task]["score"] = {"score": "insight", "spans": "evidence"}
    nodes = [n for n in build_plan(from_dict(raw)) if n.stage == "score"]
    assert nodes and {n.task for n in nodes} == {task, "musique"}
    for n in nodes:
        want = {"mode": "teacher", "score": "insight", "spans": "evidence"} if n.task == task else raw["score"]
        assert {k: n.slice["score"][k] for k in want} == want, n.label
        assert n.slice["score"]["batch_size"] == 1  # slices hold the resolved options, defaults included
    e = _bad(lambda c: c["tasks"][task].update(score={"scroe": "insight"}), f"tasks.{task}.score")
    assert "scroe" in str(e)
    _bad(lambda c: c["tasks"][task].update(score={"score": "copy"}), f"tasks.{task}.score")


def test_early_section_is_checked_on_load():
    _bad(lambda c: c.update(early={"fractions": [0.25, 1.5]}), r"`early.fractions\[1\]`: 1.5 is not a fraction of training in \(0, 1\]")
    _bad(lambda c: c.update(early={"fractions": [0.0]}), r"`early.fractions\[0\]`")
    _bad(lambda c: c.update(early={"fractions": [0.5, 0.5]}), r"`early.fractions\[1\]`: 0.5 is listed twice")
    _bad(lambda c: c.update(early={"fractions": "0.5"}), r"`early.fractions`: expected a list")
    _bad(lambda c: c.update(early={"fractions": [0.5], "probe_n": 0}), r"`early.probe_n`: must be at least 1")
    _bad(lambda c: c.update(early={"fractions": [0.1, 1.0], "stop_early": True}), r"`early.stop_early`: no fraction .* could stop a set")
    _bad(lambda c: c.update(early={"fractions": [0.5], "margin": -0.1}), r"`early.margin`: must not be negative")
    _bad(lambda c: c.update(early={"fractions": [0.5], "stop_erly": True}), r"`early`.*`stop_erly` \(did you mean `stop_early`\?\)")
    cfg = from_dict({**H.fake_config(), "early": {"fractions": [1, 0.25, 0.5], "stop_early": True}})
    assert cfg.early.fractions == [1.0, 0.25, 0.5] and cfg.early.gates() == [0.25, 0.5]
    assert from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert from_dict(H.fake_config()).early.fractions == [] and from_dict(H.fake_config()).early.gates() == []  # off by default


def test_command_line_overrides_set_keys_and_are_validated_whole(tmp_path):
    """`needlework study CONFIG KEY.PATH=VALUE ...`: values read as YAML, sections made, the result
    validated as any config, and malformed overrides named with the fix."""
    from needlework.study.config import apply_overrides, load_config

    p = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    cfg = load_config(p, ["sizes.n_train=4", "early.fractions=[0.5, 1.0]", "early.probe_n=8", "models.smollm2.dtype=bfloat16"])
    assert cfg.sizes.n_train == 4 and cfg.early.fractions == [0.5, 1.0] and cfg.early.probe_n == 8
    assert cfg.models["smollm2"].dtype == "bfloat16" and cfg.to_dict()["early"]["probe_n"] == 8  # saved with the study
    assert load_config(p).sizes.n_train != 4  # the file itself is untouched
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x y", "d.e=null"]) == {"a": {"b": 1, "c": "x y"}, "d": {"e": None}}
    for bad, why in (
        ("sizes.n_trian=4", "unknown key.*n_trian.*did you mean `n_train`"),
        ("sizes.n_train=many", "n_train"),
        ("sizes.n_train", "not KEY.PATH=VALUE"),
        ("sizes..n_train=4", "not KEY.PATH=VALUE"),
        ("sizes.n_train.x=4", "sizes.n_train is a value, not a section"),
        ("early.fractions=[0.5", "not YAML"),
    ):
        with pytest.raises(NeedleworkError, match=why):
            load_config(p, [bad])
