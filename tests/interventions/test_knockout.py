"""Knockout modes against slow references: zero = o_proj columns zeroed by hand, uniform = a hand
computation of uniform attention over the causal (windowed) prefix, mean = the cached means."""

import copy

import pytest
import torch

from needlework.artifacts import KnockoutResult
from needlework.errors import NeedleworkError
from needlework.evaluate.generate import greedy_generate
from needlework.interventions.knockout import cached_head_means, knocked_out
from needlework.models.instrument import SiteCall, intervened
from needlework.models.sites import HeadId, attention_modules, cache_of, model_shape, with_cache


def _greedy(model, prompts, n=6):
    return greedy_generate(model, prompts, n, pad_id=0, batch_size=2, progress=False)


def test_zero_equals_o_proj_columns_zeroed(tiny):
    shape = model_shape(tiny)
    heads = {HeadId(1, 2), HeadId(2, 0)}
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (2, 16))
    prompts = [ids[0].tolist(), ids[1, 4:].tolist()]  # two lengths: left padding in decoding
    manual = copy.deepcopy(tiny)
    with torch.no_grad():
        for h in heads:
            attention_modules(manual)[h.layer].o_proj.weight[:, h.head * shape.head_dim : (h.head + 1) * shape.head_dim] = 0
        want, plain = manual(ids).logits, tiny(ids).logits
        with knocked_out(tiny, heads, "zero"):
            got = tiny(ids).logits
            gen = _greedy(tiny, prompts)
    assert not torch.allclose(got, plain, atol=1e-4)  # the knockout does something
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert gen == _greedy(manual, prompts)  # prefill and decoding (KV cache) alike
    with torch.no_grad():
        torch.testing.assert_close(tiny(ids).logits, plain)  # hooks gone after the block


class _UniformReference:
    """Hand-written uniform attention: head h's output at position t is the mean of its value
    vectors v_s over the visible keys s (s <= t, and s > t - window on sliding layers)."""

    def __init__(self, model, by_layer):
        self.model, self.by_layer, self.handles, self.hidden = model, by_layer, [], {}
        self.shape = model_shape(model)

    def __enter__(self):
        for layer, _hs in self.by_layer.items():
            attn = attention_modules(self.model)[layer]
            self.handles.append(
                attn.register_forward_pre_hook(
                    lambda m, a, kw, layer=layer: self.hidden.__setitem__(layer, kw["hidden_states"]), with_kwargs=True
                )
            )
            self.handles.append(attn.o_proj.register_forward_pre_hook(lambda m, a, layer=layer: self._replace(m, a, layer)))
        return self

    def _replace(self, module, args, layer):
        attn, s = attention_modules(self.model)[layer], self.shape
        x = args[0].clone().view(*args[0].shape[:2], s.n_heads, s.head_dim)  # b, q, h, d
        q = x.shape[1]
        v = attn.v_proj(self.hidden[layer]).view(x.shape[0], q, s.n_kv_heads, s.head_dim)  # b, k, kvh, d
        t = torch.arange(q)
        vis = t[None, :] <= t[:, None]  # q, k
        if getattr(attn, "sliding_window", None):
            vis &= t[None, :] > t[:, None] - attn.sliding_window
        w = vis.float() / vis.sum(-1, keepdim=True)
        for h in self.by_layer[layer]:
            x[:, :, h] = torch.einsum("qk,bkd->bqd", w, v[:, :, h // s.group])
        return (x.view(*args[0].shape),)

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_uniform_equals_hand_reference_in_prefill_and_decoding(tiny):
    by_layer = {0: [1], 2: [0, 3]}
    heads = {HeadId(l, h) for l, hs in by_layer.items() for h in hs}
    torch.manual_seed(2)
    ids = torch.randint(3, 128, (1, 20))  # longer than Gemma2's window of 8
    with torch.no_grad():
        with _UniformReference(tiny, by_layer):
            want = tiny(ids).logits
        plain = tiny(ids).logits
        with knocked_out(tiny, heads, "uniform"):
            got = tiny(ids).logits
            out = tiny(ids[:, :12], use_cache=True)  # prefill, then one token at a time with the cache
            cache, steps = cache_of(out), []
            for t in range(12, 20):
                out = tiny(ids[:, t : t + 1], use_cache=True, **with_cache(tiny, cache))
                cache = cache_of(out)
                steps.append(out.logits[:, -1])
    assert not torch.allclose(want, plain, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack(steps, 1), want[:, 12:20], rtol=1e-4, atol=1e-4)
    assert not tiny.config._attn_implementation.startswith("needlework")  # restored


class _Record:
    """A test intervention: hands every layer's head outputs to `fn(layer, x)`, changes nothing."""

    site = "head_output"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x, heads, call: SiteCall):
        self.fn(call.layer, x)


def test_mean_replaces_by_the_cached_mean(build_tiny, tmp_path, monkeypatch):
    model = build_tiny("qwen2")
    shape = model_shape(model)
    torch.manual_seed(3)
    prompts = [torch.randint(3, 128, (n,)).tolist() for n in (9, 14, 5)]
    means = cached_head_means(model, prompts, key="tiny-qwen2", cache_root=tmp_path, batch_size=2, progress=False)
    # reference: every head's output at every prompt position, one prompt at a time (no padding)
    seen = {l: [] for l in range(shape.n_layers)}
    every = shape.all_heads()
    with torch.no_grad(), intervened(model, _Record(lambda l, x: seen[l].append(x[0].clone())), every):
        for p in prompts:
            model(torch.tensor([p]))
    want = torch.stack([torch.cat(seen[l]).mean(0) for l in range(shape.n_layers)])  # l, h, d
    torch.testing.assert_close(means, want, rtol=1e-5, atol=1e-6)
    # cached on disk: a second call does not recompute
    monkeypatch.setattr("needlework.interventions.knockout.head_means", lambda *a, **k: pytest.fail("recomputed"))
    torch.testing.assert_close(cached_head_means(model, prompts, key="tiny-qwen2", cache_root=tmp_path), means)
    heads = {HeadId(1, 3), HeadId(2, 1)}
    got = {}
    with torch.no_grad(), knocked_out(model, heads, "mean", means):
        with intervened(model, _Record(lambda l, x: got.__setitem__(l, x.clone())), every):  # runs after the knockout's
            model(torch.tensor([prompts[0]]))
    for h in heads:
        torch.testing.assert_close(got[h.layer][0, :, h.head], means[h.layer, h.head].expand(9, -1))
    assert not torch.allclose(got[1][0, :, 0], means[1, 0].expand(9, -1))  # other heads untouched


def test_bad_input_and_cleanup_after_errors(build_tiny):
    model = build_tiny("llama")
    with pytest.raises(NeedleworkError, match="do not exist"):
        with knocked_out(model, {HeadId(3, 0)}, "zero"):
            pass
    with pytest.raises(NeedleworkError, match="do not exist"):
        with knocked_out(model, {HeadId(0, 4)}, "uniform"):
            pass
    with pytest.raises(NeedleworkError, match="mode"):
        with knocked_out(model, {HeadId(0, 0)}, "bogus"):
            pass
    with pytest.raises(NeedleworkError, match="means"):
        with knocked_out(model, {HeadId(0, 0)}, "mean"):
            pass
    for mode in ("zero", "uniform"):
        with pytest.raises(RuntimeError):
            with knocked_out(model, {HeadId(1, 1)}, mode):
                raise RuntimeError("boom")
        assert all(not m.o_proj._forward_pre_hooks for m in attention_modules(model))
        assert not model.config._attn_implementation.startswith("needlework")


def _table(n_layers, n_heads, hot):
    import pandas as pd

    rows = [
        {"layer": l, "head": h, "mean": 0.9 if (l, h) in hot else 0.01, "std": 0.0, "n": 3} for l in range(n_layers) for h in range(n_heads)
    ]
    return pd.DataFrame(rows)


def test_knockout_ranks_heads_by_the_criterion_asked(tiny_dir, records, tmp_path):
    """A heads folder scored with two criteria: `criterion` picks whose ranking forms the top set."""
    from needlework.artifacts import HeadScores
    from needlework.evaluate.evaluate import EvalConfig
    from needlework.interventions.knockout import KnockoutConfig, run_knockout
    from needlework.models.load import ModelConfig

    shape = {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}
    meta = {"shape": shape, "options": {"score": "retrieval", "criteria": ["query"]}}
    query = _table(2, 4, {(0, 1), (0, 2)}).assign(criterion="query")
    HeadScores(heads=_table(2, 4, {(1, 0), (1, 3)}), criteria_heads=query, meta=meta).write(tmp_path / "heads")
    mcfg = ModelConfig(name=str(tiny_dir), device="cpu")
    ev = EvalConfig(max_new_tokens=2, logprob=False, n_boot=20)
    for criterion, want in ((None, ["1-0", "1-3"]), ("query", ["0-1", "0-2"])):
        cfg = KnockoutConfig(top=2, random_seeds=0, criterion=criterion, eval=ev)
        got = run_knockout(mcfg, records[:1], tmp_path / "heads", cfg, tmp_path / f"ko-{criterion}", progress=False).summary
        assert got["conditions"]["top"]["heads"] == want, criterion
    with pytest.raises(NeedleworkError, match="no 'output' head scores"):
        run_knockout(mcfg, records[:1], tmp_path / "heads", KnockoutConfig(criterion="output", eval=ev), tmp_path / "ko-x", progress=False)


def test_run_knockout_writes_conditions(tiny_dir, records, tmp_path):

    from needlework.evaluate.evaluate import EvalConfig
    from needlework.interventions.knockout import KnockoutConfig, run_knockout
    from needlework.models.load import ModelConfig

    cfg = KnockoutConfig(top=2, random_seeds=2, eval=EvalConfig(max_new_tokens=4, logprob=False, n_boot=50))
    mcfg = ModelConfig(name=str(tiny_dir), device="cpu")
    summary = run_knockout(mcfg, records, _table(2, 4, {(1, 0), (1, 3)}), cfg, tmp_path, progress=False).summary
    assert list(summary["conditions"]) == ["baseline", "top", "random_0", "random_1"]
    assert summary["conditions"]["top"]["heads"] == ["1-0", "1-3"]
    for s in (0, 1):
        c = summary["conditions"][f"random_{s}"]
        assert c["per_layer"] == {"1": 2} and not set(c["heads"]) & {"1-0", "1-3"}
    t = summary["conditions"]["top"]["tasks"]["mdqa"]["metrics"]["subspan_acc"]
    assert t["lo"] <= t["mean"] <= t["hi"]
    df = KnockoutResult.read(tmp_path).per_example
    assert len(df) == 4 * len(records) and set(df["condition"]) == set(summary["conditions"])
    assert (tmp_path / KnockoutResult.FIGURE).stat().st_size > 1000
    with pytest.raises(NeedleworkError, match="score table covers 30 layers"):
        run_knockout(mcfg, records, _table(30, 9, set()), cfg, tmp_path / "bad", progress=False)


def test_a_given_baseline_stands_for_the_unablated_evaluation(tiny_dir, records, tmp_path, monkeypatch):
    """The study passes its evaluate stage's predictions: knockout then evaluates one condition
    fewer and its baseline, with every paired difference, is the one it would have computed."""
    import needlework.evaluate.evaluate as ev_mod
    from needlework.evaluate.evaluate import EvalConfig, evaluate
    from needlework.interventions.knockout import KnockoutConfig, run_knockout
    from needlework.models.load import ModelConfig

    ev = EvalConfig(max_new_tokens=4, logprob=False, n_boot=50)
    cfg = KnockoutConfig(top=2, random_seeds=1, eval=ev)
    mcfg = ModelConfig(name=str(tiny_dir), device="cpu")
    table = _table(2, 4, {(1, 0), (1, 3)})
    fresh = run_knockout(mcfg, records, table, cfg, tmp_path / "fresh", progress=False).summary["conditions"]
    given = evaluate(mcfg, records, EvalConfig(max_new_tokens=4, logprob=True, n_boot=50), tmp_path / "eval").predictions
    calls = []
    real = ev_mod.evaluate_loaded
    monkeypatch.setattr(ev_mod, "evaluate_loaded", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = run_knockout(mcfg, records, table, cfg, tmp_path / "reused", progress=False, baseline=given).summary["conditions"]
    assert len(calls) == 2  # top and random_0; the baseline came from the given evaluation
    assert reused["baseline"]["from"] == "given evaluation" and "from" not in fresh["baseline"]
    for name in fresh:
        assert reused[name]["tasks"] == fresh[name]["tasks"], name
        assert reused[name]["delta_vs_baseline"] == fresh[name]["delta_vs_baseline"], name
    with pytest.raises(NeedleworkError, match="lacks 1 of the"):
        run_knockout(mcfg, records, table, cfg, tmp_path / "short", progress=False, baseline=given.iloc[1:])
