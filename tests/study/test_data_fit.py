"""The study's data stage fits records as the model will see them: rendered with the chat setting of
the stage that reads them (training: `train.chat`, evaluation: `eval.chat`) and never longer than
the task's length (an evaluation prompt with its answer budget). Before, records were measured without the chat template and within the
generator's tolerance above the length, so 8K SummHay records came out 8,215 tokens for SmolLM2's
8,192 positions and training refused them mid-study."""

from __future__ import annotations

import study_helpers as H
from needlework.artifacts import DataSet
from needlework.data.render import render
from needlework.study.config import from_dict
from needlework.study.nodes import StageContext
from needlework.study.plan import build_plan
from needlework.study.stages import data_stage


def test_data_stage_fits_records_as_the_model_sees_them(tmp_path, smollm2_tokenizer):
    raw = H.tiny_config("smollm2", sets=("hh",))
    raw["eval"]["chat"] = False  # training keeps the default (None: the template, SmolLM2 has one)
    cfg = from_dict(raw)
    length = raw["tasks"]["mdqa"]["length"]
    nodes = {n.slice["role"]: n for n in build_plan(cfg) if n.stage == "data"}
    budget = raw["eval"]["max_new_tokens"]  # evaluation generates this many tokens after the prompt
    assert nodes["train"].slice["chat"] is None and nodes["eval"].slice["chat"] is False
    assert nodes["train"].slice["max_tokens"] == length and nodes["eval"].slice["max_tokens"] == length - budget + 1
    for role, chat in (("train", True), ("eval", False)):
        out = tmp_path / role
        out.mkdir()
        data_stage(StageContext(nodes[role], cfg, out, {}, tmp_path))
        records = DataSet.read(out).records
        assert records
        top = nodes[role].slice["max_tokens"]
        for r in records:
            rendered = render(r, smollm2_tokenizer, chat=chat)
            assert top - 32 <= rendered.n_tokens <= top, (role, r.id, rendered.n_tokens)
            assert r.meta["chat"] is chat
            if role == "eval":  # the prompt and its answer budget fit the task's length
                assert len(render(r, smollm2_tokenizer, chat=chat, with_answer=False).prompt_ids) + budget <= length
