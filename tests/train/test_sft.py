"""End-to-end training on tiny random models: learning, exact resume, outputs, failures."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import copy_records
from needlework.errors import NeedleworkError
from needlework.models.load import ModelConfig, load_model
from needlework.train.config import TrainConfig
from needlework.train.sft import train
from numerics import adam_weight_atol, loss_atol

QUIET = dict(progress=False, gradient_checkpointing=False)


def test_tiny_model_learns_the_copy_task(tiny_llama, tmp_path):
    held_out = copy_records(100, seed=2)
    # full fine-tuning; the copy "clicks" near step 90 (exact match 0 -> 1.0), so 160 steps leave a margin
    cfg = TrainConfig(
        method="full", lr=3e-3, schedule="constant_with_warmup", batch_size=16, max_steps=160, warmup_steps=20, log_every=10, **QUIET
    )
    res = train(tiny_llama, copy_records(1600, seed=1), cfg, tmp_path, eval_records=held_out)
    log = [json.loads(line) for line in res.log_path.read_text().splitlines()]
    first = next(r for r in log if "loss" in r)
    assert res.eval["eval_exact"] >= 0.9  # all 4 digits + EOS right on held-out values (seen: 1.0)
    assert first["loss"] > 1.5 > res.final_loss
    assert {"step", "loss", "tokens_per_s", "peak_mem_gb"} <= set(first) and first["tokens_per_s"] > 0
    resolved = json.loads((tmp_path / "train_config.json").read_text())
    assert (res.saved / "model.safetensors").exists() and resolved["train"]["method"] == "full"


def _losses(path):
    return [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("method", ["lora", "attn"])
def test_resume_continues_to_the_same_loss(tiny_llama, tmp_path, method):
    data = copy_records(48, seed=3)
    cfg = TrainConfig(
        method=method,
        lr=1e-2,
        lora_dropout=0.1,
        batch_size=4,
        grad_accum=2,
        max_steps=6,
        save_every=3,
        keep_checkpoints=0,
        progress=False,
        gradient_checkpointing=True,
    )
    full = train(tiny_llama, data, cfg, tmp_path / "a")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)  # an "interrupted" run: only the step-3 checkpoint exists
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-3", tmp_path / "b" / "checkpoints" / "step-3")
    torch.manual_seed(1234)  # resume must restore the RNG (LoRA dropout) itself
    resumed = train(tiny_llama, data, cfg, tmp_path / "b")
    assert len(_losses(resumed.log_path)) == 3  # steps 4..6 only
    assert _losses(resumed.log_path) == pytest.approx(_losses(full.log_path)[3:], rel=1e-5)
    assert resumed.final_loss == pytest.approx(full.final_loss, rel=1e-5)


def test_lora_writes_a_peft_adapter_that_loads(tiny_llama, tmp_path):
    res = train(tiny_llama, copy_records(8, seed=4), TrainConfig(lr=1e-2, batch_size=4, max_steps=2, **QUIET), tmp_path)
    assert (res.saved / "adapter_model.safetensors").exists() and (res.saved / "adapter_config.json").exists()
    cfg = json.loads((res.saved / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    model, _ = load_model(ModelConfig(name=tiny_llama, adapter=str(res.saved)))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_adapter_of_another_model_is_an_error(tiny_llama, other_llama, tmp_path):
    res = train(tiny_llama, copy_records(4, seed=4), TrainConfig(batch_size=4, max_steps=1, **QUIET), tmp_path / "a")
    with pytest.raises(NeedleworkError, match="does not fit|do\\(es\\) not fit"):
        train(
            ModelConfig(name=other_llama, adapter=str(res.saved)),
            copy_records(4, seed=4),
            TrainConfig(batch_size=4, max_steps=1, **QUIET),
            tmp_path / "b",
        )


def test_checkpoint_of_another_setup_is_an_error(tiny_llama, tmp_path):
    train(tiny_llama, copy_records(4, seed=4), TrainConfig(batch_size=4, max_steps=1, **QUIET), tmp_path)
    with pytest.raises(NeedleworkError, match="does not match the model"):
        train(tiny_llama, copy_records(4, seed=4), TrainConfig(lora_r=4, batch_size=4, max_steps=2, **QUIET), tmp_path)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_llama, tmp_path, monkeypatch):
    from needlework.train import loss as loss_mod

    real, calls = loss_mod.AnswerOnlyLM.forward, []

    def diverging(self, *args):  # the 3rd micro-batch (step 3) yields NaN, as a diverging run would
        calls.append(1)
        nll, pred = real(self, *args)
        return (nll * float("nan") if len(calls) == 3 else nll), pred

    monkeypatch.setattr(loss_mod.AnswerOnlyLM, "forward", diverging)
    cfg = TrainConfig(method="full", batch_size=4, max_steps=5, save_every=1, keep_checkpoints=1, **QUIET)
    with pytest.raises(NeedleworkError, match="loss became nan at step 3") as e:
        train(tiny_llama, copy_records(8, seed=5), cfg, tmp_path)
    assert "last good checkpoint" in str(e.value) and "step-2" in str(e.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]
    assert len(_losses(tmp_path / "log.jsonl")) == 2 and not (tmp_path / "model").exists()


def test_bad_config_and_data(tiny_llama, tmp_path):
    with pytest.raises(NeedleworkError, match="unknown training config key"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(NeedleworkError, match="method"):
        TrainConfig(method="qlora")
    with pytest.raises(NeedleworkError, match="match no parameter"):
        train(tiny_llama, copy_records(4, seed=1), TrainConfig(method="attn", targets=["nope"], max_steps=1, **QUIET), tmp_path)
    with pytest.raises(NeedleworkError, match="more than max_length"):
        train(tiny_llama, copy_records(4, seed=1), TrainConfig(max_length=20, max_steps=1, **QUIET), tmp_path)


def test_packed_training_equals_unpacked(tiny_llama, tmp_path):
    """All 8 examples in one global batch: 8 padded rows vs one packed row give the same losses."""
    data = copy_records(8, seed=8)
    common = dict(method="full", lr=1e-2, max_steps=3, **QUIET)
    model = ModelConfig(name=tiny_llama, dtype="float64")  # the two sum in different orders (tests/numerics.py)
    plain = train(model, data, TrainConfig(batch_size=8, **common), tmp_path / "plain")
    packed = train(model, data, TrainConfig(batch_size=1, packing=True, pack_length=1000, **common), tmp_path / "packed")
    n_params = sum(t.numel() for t in load_file(tmp_path / "plain" / "model" / "model.safetensors").values())
    assert _losses(packed.log_path) == pytest.approx(_losses(plain.log_path), rel=0, abs=loss_atol(1e-2, 3, n_params))
    assert len(set(_losses(plain.log_path))) == 3  # the model did change between steps


def test_rows_regrouped_into_passes_equal_one_example_at_a_time(tiny_llama, tmp_path):
    """A step of 1 row x 4 micro-batches, run 4 rows at a time or 2 at a time (rows_per_pass), gives
    the losses and the weights (so the gradients) of running one example at a time."""
    data = copy_records(16, seed=9)
    common = dict(method="full", lr=1e-2, max_steps=3, batch_size=1, grad_accum=4, **QUIET)
    model = ModelConfig(name=tiny_llama, dtype="float64")  # the passes sum in different orders (tests/numerics.py)
    runs = {n: train(model, data, TrainConfig(rows_per_pass=n, **common), tmp_path / f"r{n}") for n in (0, 2, 4)}
    weights = {n: load_file(tmp_path / f"r{n}" / "model" / "model.safetensors") for n in runs}
    n_params = sum(t.numel() for t in weights[0].values())
    for n in (2, 4):
        assert _losses(runs[n].log_path) == pytest.approx(_losses(runs[0].log_path), rel=0, abs=loss_atol(1e-2, 3, n_params))
        for k, w in weights[0].items():
            torch.testing.assert_close(weights[n][k], w, rtol=0, atol=adam_weight_atol(1e-2, 3))
    assert len(set(_losses(runs[0].log_path))) == 3  # the model did change between steps
    with pytest.raises(NeedleworkError, match="rows_per_pass"):
        TrainConfig(rows_per_pass=-1)


def test_report_to_tensorboard_logs_what_log_jsonl_logs(tiny_llama, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from needlework.artifacts import TrainRun

    res = train(
        tiny_llama,
        copy_records(8, seed=3),
        TrainConfig(method="full", batch_size=2, max_steps=3, report_to="tensorboard", **QUIET),
        tmp_path,
    )
    events = list((tmp_path / TrainRun.TRACKING).rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("loss")]
    want = [(r["step"], r["loss"]) for r in map(json.loads, res.log_path.read_text().splitlines()) if "loss" in r]
    assert [s for s, _ in logged] == [s for s, _ in want] == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx([v for _, v in want], rel=1e-6)  # TensorBoard stores float32
    assert {"lr", "tokens_per_s", "peak_mem_gb"} <= set(acc.Tags()["scalars"])
    with pytest.raises(NeedleworkError, match="report_to 'mlflow'"):
        TrainConfig(report_to="mlflow")
