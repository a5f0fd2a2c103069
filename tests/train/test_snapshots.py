"""Snapshots at fractions of training (loadable adapters, at the right steps, not perturbing the
run) and training in segments (`stop_at`): stopping and going on equals one run, and a resumed
run neither loses nor duplicates snapshots."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import copy_records
from needlework.artifacts import TrainRun
from needlework.errors import NeedleworkError
from needlework.models.load import ModelConfig, load_model
from needlework.train.config import TrainConfig, snapshot_step
from needlework.train.sft import train

QUIET = dict(progress=False, gradient_checkpointing=False)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.1, batch_size=2, max_steps=8, **{**QUIET, **kw})


def _weights(folder) -> dict:
    return load_file(folder / "adapter_model.safetensors")


def _rows(out) -> list[dict]:
    return TrainRun(out).log()


def _losses(out) -> list[float]:
    return [r["loss"] for r in _rows(out) if "loss" in r]


def test_snapshot_steps():
    assert [snapshot_step(f, 8) for f in (0.1, 0.25, 0.5, 1.0)] == [1, 2, 4, 8]
    assert [snapshot_step(f, 3) for f in (0.1, 0.34, 0.5, 1.0)] == [1, 2, 2, 3]  # never step 0, never past the end
    assert TrainConfig(snapshots=[0.5, 0.1, 0.25]).snapshot_steps(2) == {1: [0.1, 0.25, 0.5]}
    for bad in ([0.0], [1.5], [0.5, 0.5]):
        with pytest.raises(NeedleworkError, match="snapshots must be distinct fractions"):
            TrainConfig(snapshots=bad)


def test_snapshots_are_saved_at_their_steps_and_load_as_adapters(tiny_llama, tmp_path):
    data = copy_records(16, seed=3)
    plain = train(tiny_llama, data, _cfg(), tmp_path / "plain")
    res = train(tiny_llama, data, _cfg(snapshots=[0.25, 0.5, 1.0]), tmp_path / "snap")
    run = TrainRun(tmp_path / "snap")
    assert list(run.snapshots()) == [0.25, 0.5, 1.0]
    assert [run.snapshot_info(f)["step"] for f in run.snapshots()] == [2, 4, 8]
    assert _losses(tmp_path / "snap") == _losses(tmp_path / "plain")  # saving does not perturb the run (RNG, weights)
    final = _weights(res.saved)
    assert all(torch.equal(final[k], w) for k, w in _weights(run.snapshot_dir(1.0)).items())
    assert all(torch.equal(final[k], w) for k, w in _weights(plain.saved).items())
    early = _weights(run.snapshot_dir(0.25))
    assert any(not torch.equal(final[k], w) for k, w in early.items())  # the weights at step 2, not the final ones
    settings = json.loads((run.snapshot_dir(0.25) / "needlework_model_config.json").read_text())
    assert settings == json.loads((res.saved / "needlework_model_config.json").read_text())  # written by the one final-save code
    model, _ = load_model(ModelConfig(name=tiny_llama, adapter=str(run.snapshot_dir(0.25))))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    snap_rows = [r for r in _rows(tmp_path / "snap") if "snapshot" in r]
    assert [r["step"] for r in snap_rows] == [2, 4, 8] and all(r["snapshot_seconds"] > 0 for r in snap_rows)
    seconds = run.seconds()
    assert seconds["train"] > 0 and seconds["snapshots"] == pytest.approx(sum(r["snapshot_seconds"] for r in snap_rows))
    assert not list((run.path / TrainRun.SNAPSHOTS).glob(".*"))  # no temporary folder left


def test_stopping_at_a_fraction_and_going_on_equals_one_run(tiny_llama, tmp_path):
    data = copy_records(16, seed=4)
    cfg = _cfg(snapshots=[0.25, 0.5, 1.0])
    train(tiny_llama, data, cfg, tmp_path / "whole")
    part = train(tiny_llama, data, cfg, tmp_path / "seg", stop_at=0.5)
    assert part.saved is None and part.steps == 4 and not TrainRun(tmp_path / "seg").adapter
    assert list(TrainRun(tmp_path / "seg").snapshots()) == [0.25, 0.5]
    assert [p.name for p in (tmp_path / "seg" / TrainRun.CHECKPOINTS).iterdir()] == ["step-4"]  # where the next segment resumes
    torch.manual_seed(99)  # the next segment restores the RNG itself (LoRA dropout)
    rest = train(tiny_llama, data, cfg, tmp_path / "seg", stop_at=1.0)
    assert rest.steps == 8 and _losses(tmp_path / "seg") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-6)
    for f in (0.25, 0.5, 1.0):
        a, b = _weights(TrainRun(tmp_path / "whole").snapshot_dir(f)), _weights(TrainRun(tmp_path / "seg").snapshot_dir(f))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7)
    steps = [r["step"] for r in _rows(tmp_path / "seg") if "loss" in r]
    assert steps == list(range(1, 9))  # every step logged once
    assert [r["step"] for r in _rows(tmp_path / "seg") if "snapshot" in r] == [2, 4, 8]
    seconds = [r["train_seconds"] for r in _rows(tmp_path / "seg") if "train_seconds" in r]
    assert seconds == sorted(seconds)  # counted on across the two calls
    with pytest.raises(NeedleworkError, match="stop_at must be a fraction"):
        train(tiny_llama, data, cfg, tmp_path / "bad", stop_at=0)


def test_a_resumed_run_neither_loses_nor_duplicates_snapshots(tiny_llama, tmp_path):
    """A crash after step 5: the step-4 checkpoint and the snapshots up to it survive, plus a
    half-written temporary snapshot folder; the resumed run ends with the uninterrupted run's
    snapshots, each once."""
    data = copy_records(16, seed=5)
    cfg = _cfg(snapshots=[0.25, 0.5, 0.75, 1.0], save_every=4, keep_checkpoints=0)
    train(tiny_llama, data, cfg, tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b)
    shutil.rmtree(b / TrainRun.ADAPTER)
    shutil.rmtree(b / TrainRun.CHECKPOINTS / "step-8")
    shutil.rmtree(TrainRun(b).snapshot_dir(1.0))
    TrainRun(b).snapshot_dir(0.75).rename(b / TrainRun.SNAPSHOTS / ".0.75.tmp")  # killed while renaming it
    assert list(TrainRun(b).snapshots()) == [0.25, 0.5]
    train(tiny_llama, data, cfg, b)
    assert list(TrainRun(b).snapshots()) == [0.25, 0.5, 0.75, 1.0]
    for f in TrainRun(b).snapshots():
        a_w, b_w = _weights(TrainRun(tmp_path / "a").snapshot_dir(f)), _weights(TrainRun(b).snapshot_dir(f))
        assert all(torch.allclose(b_w[k], w, rtol=1e-6, atol=1e-7) for k, w in a_w.items())
    assert [r["step"] for r in _rows(b) if "snapshot" in r] == [2, 4, 6, 8]
    assert not list((b / TrainRun.SNAPSHOTS).glob(".*"))


def test_on_snapshot_sees_the_model_in_memory_without_perturbing_the_run(tiny_llama, tmp_path, monkeypatch):
    """The hook runs at each snapshot on the model being trained (eval mode, its weights those of
    the snapshot), may draw random numbers and run forwards, and leaves the run as it was: the
    same losses and final weights as without it, and the model back in train mode. Its time is
    logged and left out of the training seconds (a clock the hook moves 1000 s forward)."""
    import time as time_mod

    real_clock, skipped = time_mod.perf_counter, [0.0]
    monkeypatch.setattr(time_mod, "perf_counter", lambda: real_clock() + skipped[0])
    data = copy_records(16, seed=3)
    plain = train(tiny_llama, data, _cfg(snapshots=[0.25, 1.0]), tmp_path / "plain")
    seen = []

    def hook(model, tok, fraction, folder):
        assert not model.training and not torch.is_grad_enabled()
        saved = _weights(folder)
        mine = {n: p for n, p in model.named_parameters() if "lora_" in n}
        assert len(saved) == len(mine) > 0
        for k, w in saved.items():  # peft saves "…lora_A.weight"; in memory it is "…lora_A.default.weight"
            assert torch.equal(mine[k.replace(".weight", ".default.weight")].detach().cpu(), w)
        torch.rand(1000)  # the run's RNG stream must not move
        ids = tok("a probe", return_tensors="pt").input_ids
        model(input_ids=ids)
        seen.append((fraction, folder.name))
        skipped[0] += 1000.0  # the hook "takes" 1000 s

    res = train(tiny_llama, data, _cfg(snapshots=[0.25, 1.0]), tmp_path / "hooked", on_snapshot=hook)
    assert seen == [(0.25, "0.25"), (1.0, "1")]
    assert _losses(tmp_path / "hooked") == _losses(tmp_path / "plain")  # lora_dropout 0.1: the RNG matters
    final = _weights(res.saved)
    assert all(torch.equal(final[k], w) for k, w in _weights(plain.saved).items())
    rows = [r for r in _rows(tmp_path / "hooked") if "snapshot" in r]
    assert len(rows) == 2 and all(r["probe_seconds"] >= 1000 for r in rows)
    assert 0 < TrainRun(tmp_path / "hooked").seconds()["train"] < 1000  # the 2000 s of the hook are not training
