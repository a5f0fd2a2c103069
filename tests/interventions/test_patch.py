"""Cross-model patching: with source and target differing only in q/k/v, patching every head
reproduces the source exactly; patching none leaves the target as it was."""

import copy

import pytest
import torch

from needlework.artifacts import PatchResult
from needlework.errors import NeedleworkError
from needlework.evaluate.generate import greedy_generate
from needlework.interventions.patch import Role, check_same_tokenizer, load_pair, lockstep_batch, patching, run_patch
from needlework.models.load import ModelConfig
from needlework.models.sites import model_shape


def _qkv_twin(model, seed=5):
    """A copy of `model` whose q/k/v projections (only) are perturbed."""
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if any(k in n for k in ("q_proj", "k_proj", "v_proj")):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return twin


def _lockstep(src, tgt, heads, prompts, n=8):
    with torch.inference_mode(), patching(Role(src), Role(tgt), heads) as st:
        return lockstep_batch(
            Role(src),
            Role(tgt),
            st,
            prompts,
            [n] * len(prompts),
            [False] * len(prompts),
            0,
            frozenset(),
            frozenset(),
            frozenset(),
            return_logits=True,
        )


def _reference_logits(model, prompt, gen):
    """Next-token logits of `model` at every generation step, from one uncached forward."""
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        out = model(ids).logits[0]
    return out[len(prompt) - 1 : len(prompt) - 1 + len(gen)]


def test_patching_all_heads_reproduces_the_source(tiny):
    source, target = tiny, _qkv_twin(tiny)
    torch.manual_seed(4)
    prompts = [torch.randint(3, 128, (n,)).tolist() for n in (14, 9)]  # left padding in one batch
    gen, logits = _lockstep(source, target, model_shape(tiny).all_heads(), prompts)
    want = greedy_generate(source, prompts, 8, pad_id=0, progress=False)
    assert gen == want
    assert gen != greedy_generate(target, prompts, 8, pad_id=0, progress=False)  # the models do differ
    for b, p in enumerate(prompts):
        ref = _reference_logits(source, p, gen[b])
        got = torch.stack([step[b] for step in logits[: len(gen[b])]])
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_patching_no_heads_leaves_the_target_unchanged(tiny):
    source, target = tiny, _qkv_twin(tiny)
    torch.manual_seed(6)
    prompts = [torch.randint(3, 128, (n,)).tolist() for n in (12, 7)]
    gen, logits = _lockstep(source, target, frozenset(), prompts)
    assert gen == greedy_generate(target, prompts, 8, pad_id=0, progress=False)
    ref = _reference_logits(target, prompts[0], gen[0])
    torch.testing.assert_close(torch.stack([s[0] for s in logits[: len(gen[0])]]), ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    """Two random LoRA adapters on q/k/v of the saved tiny model (so they differ only there)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False))
        d = tmp_path_factory.mktemp(f"adapter{seed}")
        peft.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def test_run_patch_with_two_adapters_of_one_base(tiny_dir, adapters, records, tmp_path):
    src_cfg = ModelConfig(name=str(tiny_dir), adapter=adapters[0], device="cpu")
    tgt_cfg = ModelConfig(name=str(tiny_dir), adapter=adapters[1], device="cpu")
    source, target, _ = load_pair(src_cfg, tgt_cfg)
    assert source.model is target.model  # the base is loaded once
    from needlework.evaluate.evaluate import EvalConfig
    from needlework.interventions.patch import PatchConfig

    cfg = PatchConfig(set="all", eval=EvalConfig(max_new_tokens=5, logprob=False, n_boot=50))
    result = run_patch(src_cfg, tgt_cfg, records, None, None, cfg, tmp_path, progress=False)
    summary, df = result.summary, PatchResult.read(tmp_path).per_example
    out = {c: g.set_index("id")["output"] for c, g in df.groupby("condition")}
    assert (out["all"] == out["source"]).all()  # the patched target answers as the source does
    assert result.file("markdown").exists() and result.file("csv").read_text().startswith("task,condition")
    assert [r["condition"] for r in summary["table"]] == ["source", "target", "all"]
    assert summary["sets"]["all"]["n_heads"] == 8
    row = summary["table"][2]  # the gap recovered carries its paired interval (None: source and target score alike)
    assert {"recovered", "recovered_lo", "recovered_hi", "control_for"} <= set(row) and row["control_for"] is None


def test_different_tokenizers_are_refused(smollm2_tokenizer, tiny_dir, tmp_path):
    other = copy.deepcopy(smollm2_tokenizer)
    other.add_tokens(["<zzq_new_token>"])
    with pytest.raises(NeedleworkError, match="tokenizers differ"):
        check_same_tokenizer(smollm2_tokenizer, other)
    d = tmp_path / "other"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(d)
    other.save_pretrained(d)
    with pytest.raises(NeedleworkError, match="tokenizers differ"):
        load_pair(ModelConfig(name=str(tiny_dir), device="cpu"), ModelConfig(name=str(d), device="cpu"))


def test_models_of_different_shape_are_refused(smollm2_tokenizer, tiny_dir, build_tiny, tmp_path):
    m = build_tiny("llama", vocab=len(smollm2_tokenizer), layers=3)
    m.save_pretrained(tmp_path / "three")
    smollm2_tokenizer.save_pretrained(tmp_path / "three")
    with pytest.raises(NeedleworkError, match="shapes differ"):
        load_pair(ModelConfig(name=str(tiny_dir), device="cpu"), ModelConfig(name=str(tmp_path / "three"), device="cpu"))


def test_given_evaluations_stand_for_the_unpatched_source_and_target(tiny_dir, adapters, records, tmp_path, monkeypatch):
    """The study passes its evaluate stages' predictions of the source and the target: patching
    then evaluates neither again, and its table is the one it would have computed."""
    import needlework.evaluate.evaluate as ev_mod
    from needlework.evaluate.evaluate import EvalConfig, evaluate
    from needlework.interventions.patch import PatchConfig

    src_cfg = ModelConfig(name=str(tiny_dir), adapter=adapters[0], device="cpu")
    tgt_cfg = ModelConfig(name=str(tiny_dir), adapter=adapters[1], device="cpu")
    cfg = PatchConfig(set="all", eval=EvalConfig(max_new_tokens=5, logprob=False, n_boot=50))
    fresh = run_patch(src_cfg, tgt_cfg, records, None, None, cfg, tmp_path / "fresh", progress=False).summary
    ev = EvalConfig(max_new_tokens=5, logprob=True, n_boot=50)
    given = {role: evaluate(c, records, ev, tmp_path / role).predictions for role, c in (("source", src_cfg), ("target", tgt_cfg))}
    monkeypatch.setattr(ev_mod, "evaluate_loaded", lambda *a, **k: pytest.fail("evaluated again"))
    reused = run_patch(src_cfg, tgt_cfg, records, None, None, cfg, tmp_path / "reused", progress=False, given=given).summary
    assert reused["table"] == fresh["table"] and reused["given"] == ["source", "target"] and fresh["given"] == []
