"""An adapter carries its model settings (RoPE base, position limit, base model, rendering): every
command that loads it applies and records them, takes the `train` output folder as the adapter,
checks it before loading any model, and refuses conflicting explicit values."""

import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

from needlework.artifacts import EvalResult, HeadScores, KnockoutResult, PatchResult
from needlework.cli import app
from needlework.data.records import Document, Needle, Record, write_jsonl
from needlework.errors import NeedleworkError
from needlework.models import load as load_mod
from needlework.models.load import ModelConfig, context_settings, load_model, resolve_adapter, resolve_model_config

THETA = 20000.0  # the tiny Llama's own base is 10000


def _records(n: int = 3):
    names, cities = ["Orlan Vesk", "Mira Tobbel", "Kasso Brint"], ["Zarbith", "Quellmoor", "Dunvast"]
    recs = []
    for i in range(n):
        fact = f"{names[i]} was born in the town of "
        docs = [
            Document(id="d0", title="Weather", text="Rain fell on the hills for most of the spring."),
            Document(id="d1", title=names[i], text=fact + cities[i] + "."),
        ]
        recs.append(
            Record(
                id=f"r{i}",
                task="mdqa",
                concept="high",
                context="high",
                documents=docs,
                question=f"Where was {names[i]} born?",
                answers=[cities[i]],
                needles=[Needle(doc=1, start=len(fact), end=len(fact) + len(cities[i]))],
                gold_docs=[1],
            )
        )
    return recs


def _save_tiny(path, tok, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer (it has a chat template)."""
    return _save_tiny(tmp_path_factory.mktemp("base"), smollm2_tokenizer)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "d.jsonl"
    write_jsonl(p, _records())
    return p


def _train(base, out, seed=0, **model_kw):
    from needlework.train.config import TrainConfig
    from needlework.train.sft import train

    cfg = TrainConfig(lr=1e-2, lora_r=4, max_steps=1, seed=seed, progress=False, gradient_checkpointing=False)
    train(ModelConfig(name=base, device="cpu", **model_kw), _records(), cfg, out)
    return out


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """Two `needlework train` output folders, trained with rope_theta raised to THETA."""
    root = tmp_path_factory.mktemp("runs")
    return [_train(base, root / f"lora{s}", seed=s, rope_theta=THETA) for s in (0, 1)]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model is loaded: errors must come before."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the adapter was checked")

    monkeypatch.setattr(load_mod, "load_model", boom)


# --- what train writes, and resolve_adapter / resolve_model_config --------------------------------------


def test_train_saves_settings_and_the_resolved_rendering(trained, base):
    saved = json.loads((trained[0] / "adapter" / "needlework_model_config.json").read_text())
    assert saved["name"] == base and saved["rope_theta"] == THETA and saved["max_position_embeddings"] == 512
    assert saved["chat"] is True  # auto: SmolLM2's tokenizer has a chat template, as evaluate resolves it
    assert json.loads((trained[0] / "train_config.json").read_text())["train"]["chat"] is True


def test_the_train_output_folder_is_accepted_and_its_settings_applied(trained, base):
    d, saved = resolve_adapter(trained[0])
    assert d == trained[0] / "adapter" and saved["rope_theta"] == THETA
    assert resolve_adapter(trained[0] / "adapter")[0] == d
    mc = resolve_model_config(ModelConfig(name=base, adapter=str(trained[0]), device="cpu"))
    assert mc.adapter == str(d) and mc.rope_theta == THETA and mc.max_position_embeddings == 512
    assert resolve_model_config(mc) == mc  # idempotent
    model, _ = load_model(ModelConfig(name=base, adapter=str(trained[0]), device="cpu"))
    assert context_settings(model.config)["rope_theta"] == THETA
    assert any("lora_A" in n for n, _ in model.named_parameters())
    # an equal explicit value is fine
    assert resolve_model_config(ModelConfig(name=base, adapter=str(trained[0]), rope_theta=THETA)).rope_theta == THETA


def test_a_conflicting_explicit_value_is_an_error_naming_both(trained, base, no_model_load):
    with pytest.raises(NeedleworkError, match="rope-theta 50000.0 conflicts with the adapter's rope_theta 20000.0") as e:
        resolve_model_config(ModelConfig(name=base, adapter=str(trained[0]), rope_theta=50000.0))
    assert "needlework_model_config.json" in e.value.problem
    with pytest.raises(NeedleworkError, match="max-position-embeddings 1024 conflicts .* 512"):
        resolve_model_config(ModelConfig(name=base, adapter=str(trained[0]), max_position_embeddings=1024))


def test_bad_adapter_folders_are_clear_errors(tmp_path, trained):
    with pytest.raises(NeedleworkError, match="does not exist"):
        resolve_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeedleworkError, match="holds no LoRA adapter") as e:
        resolve_adapter(tmp_path / "empty")
    assert "needlework train" in e.value.fix
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text("{}")
    with pytest.raises(NeedleworkError, match="no adapter weights in safetensors"):
        resolve_adapter(tmp_path / "noweights")
    (tmp_path / "full" / "model").mkdir(parents=True)
    (tmp_path / "full" / "model" / "config.json").write_text("{}")
    with pytest.raises(NeedleworkError, match="fully fine-tuned") as e:
        resolve_adapter(tmp_path / "full")
    assert "--model" in e.value.fix


def test_an_adapter_of_another_base_model_is_an_error(trained, tmp_path, smollm2_tokenizer, no_model_load):
    other = _save_tiny(tmp_path / "other_base", smollm2_tokenizer)
    with pytest.raises(NeedleworkError, match="does not fit model") as e:
        resolve_model_config(ModelConfig(name=other, adapter=str(trained[0])))
    assert "trained on" in e.value.problem


# --- every command: train output folder as --adapter, settings applied and recorded ----------------------


def _invoke(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, args)


def test_evaluate_cli_applies_and_records_the_saved_settings(trained, base, data, tmp_path):
    out = tmp_path / "ev"
    r = _invoke(
        [
            "evaluate",
            "--model",
            base,
            "--adapter",
            str(trained[0]),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-new-tokens",
            "2",
            "--no-logprob",
            "--n-boot",
            "10",
            "--device",
            "cpu",
        ]
    )
    assert r.exit_code == 0, r.output
    s = EvalResult.read(out).summary
    assert s["model_config"]["rope_theta"] == THETA and s["model_config"]["max_position_embeddings"] == 512
    assert s["adapter"] == str(trained[0] / "adapter") and s["model"] == base
    assert s["options"]["chat"] is True and s["trained_chat"] is True


def test_heads_score_cli_applies_and_records_the_saved_settings(trained, base, data, tmp_path):
    r = _invoke(
        [
            "heads",
            "score",
            "--model",
            base,
            "--adapter",
            str(trained[0]),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "hs"),
            "--device",
            "cpu",
        ]
    )
    assert r.exit_code == 0, r.output
    (res,) = list((tmp_path / "hs").iterdir())
    meta = HeadScores.read(res).meta
    assert meta["model_config"]["rope_theta"] == THETA and meta["rope_theta"] == THETA
    assert meta["adapter"] == str(trained[0] / "adapter") and meta["adapter_hash"]
    assert meta["options"]["chat"] is True and meta["options"]["match"] == "loose"  # auto: loose with the template


def test_knockout_cli_applies_and_records_the_saved_settings(trained, base, data, tmp_path):
    out = tmp_path / "ko"
    r = _invoke(
        [
            "knockout",
            "--model",
            base,
            "--adapter",
            str(trained[0]),
            "--data",
            str(data),
            "--list",
            "0-1",
            "--random-seeds",
            "0",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    s = KnockoutResult.read(out).summary
    assert s["model_config"]["rope_theta"] == THETA and s["adapter"] == str(trained[0] / "adapter")
    assert s["chat"] is True and s["trained_chat"] is True


def test_patch_cli_applies_and_records_the_saved_settings(trained, base, data, tmp_path):
    out = tmp_path / "pa"
    r = _invoke(
        [
            "patch",
            "--source",
            base,
            "--source-adapter",
            str(trained[0]),
            "--target",
            base,
            "--target-adapter",
            str(trained[1]),
            "--data",
            str(data),
            "--set",
            "0-1",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    s = PatchResult.read(out).summary
    assert s["model_config"] == s["target"]
    assert s["source"]["rope_theta"] == THETA and s["target"]["rope_theta"] == THETA
    assert s["source"]["adapter"] == str(trained[0] / "adapter") and s["target"]["adapter"] == str(trained[1] / "adapter")
    assert s["trained_chat"] == {"source": True, "target": True}


@pytest.mark.parametrize("cmd", ["evaluate", "heads", "knockout", "patch"])
def test_every_command_refuses_a_conflicting_rope_theta_before_loading(cmd, trained, base, data, tmp_path, no_model_load):
    out = str(tmp_path / "x")
    args = {
        "evaluate": ["evaluate", "--model", base, "--adapter", str(trained[0]), "--data", str(data), "--out", out],
        "heads": ["heads", "score", "--model", base, "--adapter", str(trained[0]), "--data", str(data), "--out", out],
        "knockout": ["knockout", "--model", base, "--adapter", str(trained[0]), "--data", str(data), "--list", "0-1", "--out", out],
        "patch": [
            "patch",
            "--source",
            base,
            "--source-adapter",
            str(trained[0]),
            "--target",
            base,
            "--target-adapter",
            str(trained[1]),
            "--data",
            str(data),
            "--set",
            "0-1",
            "--out",
            out,
        ],
    }[cmd]
    r = _invoke(args + ["--rope-theta", "50000", "--device", "cpu"])
    assert isinstance(r.exception, NeedleworkError), r.output
    assert "50000" in r.exception.problem and "20000" in r.exception.problem
    r = _invoke([a if a != str(trained[0]) else str(tmp_path / "missing") for a in args] + ["--device", "cpu"])
    assert isinstance(r.exception, NeedleworkError) and "does not exist" in r.exception.problem


def test_patch_refuses_adapters_trained_with_different_settings(trained, base, tmp_path, no_model_load):
    from needlework.interventions.patch import resolve_pair

    plain = _train_plain(base, tmp_path)
    with pytest.raises(NeedleworkError, match="rope_theta 20000.0 and the target adapter .* rope_theta 10000.0"):
        resolve_pair(ModelConfig(name=base, adapter=str(trained[0])), ModelConfig(name=base, adapter=str(plain)))
    # a base model without adapter shares the base with an adapter trained at the base's own settings
    src, tgt = resolve_pair(ModelConfig(name=base), ModelConfig(name=base, adapter=str(plain)))
    assert src.rope_theta == tgt.rope_theta == 10000.0 and src.max_position_embeddings == 512


def test_continued_training_keeps_the_adapters_settings(trained, base, tmp_path):
    from needlework.train.config import TrainConfig
    from needlework.train.sft import train

    cfg = TrainConfig(lr=1e-2, lora_r=4, max_steps=1, chat=False, progress=False, gradient_checkpointing=False)
    with pytest.warns(UserWarning, match="trained with the chat template but is trained further without"):
        res = train(ModelConfig(name=base, adapter=str(trained[0]), device="cpu"), _records(), cfg, tmp_path / "more")
    saved = json.loads((res.saved / "needlework_model_config.json").read_text())
    assert saved["rope_theta"] == THETA and saved["chat"] is False


def _train_plain(base, tmp_path):
    return _train(base, tmp_path / "plain")


# --- one rendering everywhere ----------------------------------------------------------------------------


def test_chat_auto_resolves_alike_in_train_and_evaluate(smollm2_tokenizer):
    from types import SimpleNamespace

    from needlework.data.render import resolve_chat
    from needlework.evaluate.evaluate import EvalConfig
    from needlework.evaluate.generate import resolve_chat as eval_resolve_chat
    from needlework.heads.score import ScoreConfig
    from needlework.train.config import TrainConfig

    assert TrainConfig().chat is None and EvalConfig().chat is None and ScoreConfig().chat is None  # one default: auto
    assert eval_resolve_chat is resolve_chat
    plain = SimpleNamespace(chat_template=None)
    assert resolve_chat(None, smollm2_tokenizer) is True and resolve_chat(None, plain) is False
    assert resolve_chat(False, smollm2_tokenizer) is False


def test_match_default_fits_the_rendering(smollm2_tokenizer):
    from types import SimpleNamespace

    from needlework.heads.score import ScoreConfig

    plain = SimpleNamespace(chat_template=None)
    assert ScoreConfig().resolved(smollm2_tokenizer).match == "loose"
    assert ScoreConfig(chat=False).resolved(smollm2_tokenizer).match == "id"
    assert ScoreConfig().resolved(plain).match == "id"
    assert ScoreConfig(match="id").resolved(smollm2_tokenizer).match == "id"  # explicit wins
    ScoreConfig().check()  # None is valid before resolution


def test_a_rendering_mismatch_warns(trained, base, data, tmp_path):
    from needlework.evaluate.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(chat=False, max_new_tokens=2, logprob=False, n_boot=10)
    with pytest.warns(UserWarning, match="trained with the chat template but is evaluated without"):
        s = evaluate(ModelConfig(name=base, adapter=str(trained[0]), device="cpu"), data, cfg, tmp_path / "e", progress=False).summary
    assert s["options"]["chat"] is False and s["trained_chat"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same rendering: no warning
        load_mod.check_rendering(ModelConfig(name=base, adapter=str(trained[0])), True)
