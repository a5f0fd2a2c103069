"""FSDP2 (accelerate, `fully_shard`) on two CPU processes (gloo, torchrun): the same losses as one
process on the same global batch, checkpoints that hold the full tensors in the one-process format
(so they resume in one process), exact resume under FSDP and DDP, and a clear error for DeepSpeed/FSDP1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fsdp_worker import mixed_records
from needlework.errors import NeedleworkError
from needlework.models.load import ModelConfig, load_model
from needlework.train.config import TrainConfig
from needlework.train.sft import train
from numerics import adam_weight_atol, loss_atol

HERE = Path(__file__).parent
COMMON = dict(lr=1e-2, batch_size=2, max_steps=4, save_every=2, keep_checkpoints=0, progress=False, gradient_checkpointing=True)
# One process and two sum gradients in different orders; in float32 Adam turns that into differences of
# about lr, so the comparisons run in float64, where the bound is derived (tests/numerics.py).
F64 = "float64"
W_ATOL = adam_weight_atol(COMMON["lr"], COMMON["max_steps"])


def _two_processes(model_dir, out, fsdp=True, nproc=2, **cfg):
    """Train with `nproc` processes (see fsdp_worker.py): FSDP2 through accelerate, or DDP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env["PYTHONPATH"] = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if fsdp:  # what `accelerate launch --use_fsdp --fsdp_version 2` sets
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            str(HERE / "fsdp_worker.py"),
            model_dir,
            str(out),
            json.dumps(cfg),
        ],  # standalone: a free port
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-4000:]


def _log(out):
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def _assert_same_checkpoint(a: Path, b: Path, atol: float | None = None):
    """Same tensor names, shapes and values (weights within `atol`, Adam's moments to the same relative
    bound: see tests/numerics.py); same optimizer groups and schedule."""
    for name in ("weights.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert sorted(ta) == sorted(tb) and ta
        for k in ta:
            assert ta[k].shape == tb[k].shape and ta[k].dtype == tb[k].dtype, k
            tol = {} if atol is None else dict(rtol=0, atol=atol)  # None: identical runs, torch's dtype defaults
            torch.testing.assert_close(tb[k], ta[k], msg=k, **tol)
    sa, sb = json.loads((a / "state.json").read_text()), json.loads((b / "state.json").read_text())
    assert sb["optimizer"] == sa["optimizer"] and sb["scheduler"] == sa["scheduler"] and sb["step"] == sa["step"]


@pytest.mark.parametrize("method", ["lora", "attn", "full"])
def test_fsdp_two_processes_equal_one(tiny_llama, tmp_path, method):
    """1 process x grad_accum 4 vs 2 FSDP processes x grad_accum 2 (no_sync on the first micro-batch)."""
    data, evals = mixed_records(24, seed=6), mixed_records(5, seed=7)  # as fsdp_worker.py; 5 evals: rank 1 pads
    one_cfg = TrainConfig(method=method, grad_accum=4, snapshots=[0.5], **COMMON)
    model_cfg = ModelConfig(name=tiny_llama, device="cpu", dtype=F64)
    train(model_cfg, data, one_cfg, tmp_path / "one", eval_records=evals)
    _two_processes(tiny_llama, tmp_path / "two", method=method, grad_accum=2, dtype=F64, snapshots=[0.5], **COMMON)
    (l1, e1), (l2, e2) = _log(tmp_path / "one"), _log(tmp_path / "two")
    n_params = sum(t.numel() for t in load_file(tmp_path / "one" / "checkpoints" / "step-2" / "weights.safetensors").values())
    assert len(l1) == len(l2) == 4 and len(set(l1)) == 4
    # same global batch, same updates: the same loss at every step, to the derived bound
    assert l2 == pytest.approx(l1, rel=0, abs=loss_atol(COMMON["lr"], COMMON["max_steps"], n_params))
    assert e2[-1]["eval_loss"] == pytest.approx(e1[-1]["eval_loss"], rel=0, abs=loss_atol(COMMON["lr"], COMMON["max_steps"], n_params))
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["distributed"] == "FSDP2"
    # checkpoints written under FSDP: the full tensors, named and indexed as one process writes them
    for step in (2, 4):
        _assert_same_checkpoint(
            tmp_path / "one" / "checkpoints" / f"step-{step}", tmp_path / "two" / "checkpoints" / f"step-{step}", W_ATOL
        )
    # the final weights load in one process and equal the one-process run's
    if method == "lora":
        w1, w2 = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (tmp_path / "one", tmp_path / "two"))
        model, _ = load_model(ModelConfig(name=tiny_llama, adapter=str(tmp_path / "two" / "adapter")))
        loaded = {n: p for n, p in model.named_parameters() if "lora_A" in n}
        assert len(loaded) == 2 * 4  # 2 layers x q,k,v,o
    else:
        w1, w2 = (load_file(p / "model" / "model.safetensors") for p in (tmp_path / "one", tmp_path / "two"))
        model, _ = load_model(ModelConfig(name=str(tmp_path / "two" / "model"), dtype=F64))
        loaded = dict(model.named_parameters())
        torch.testing.assert_close(loaded["model.layers.0.mlp.up_proj.weight"], w2["model.layers.0.mlp.up_proj.weight"])
        assert len(w2) == len(loaded)  # every weight, frozen ones too (attn), unsharded
    assert sorted(w1) == sorted(w2) and all(w1[k].shape == w2[k].shape for k in w1)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=W_ATOL, msg=k)
    # a snapshot half-way is gathered and written like the final weights (the same code), unsharded
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    s1, s2 = (load_file(p / "snapshots" / "0.5" / name) for p in (tmp_path / "one", tmp_path / "two"))
    assert sorted(s1) == sorted(w1) == sorted(s2)
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=W_ATOL, msg=k)
    assert any(not torch.equal(s1[k], w1[k]) for k in s1)  # the weights at step 2, not the final ones
    # so an FSDP checkpoint resumes in one process (the same global batch) to the same losses
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "two" / "checkpoints" / "step-2", tmp_path / "resumed" / "checkpoints" / "step-2")
    train(model_cfg, data, one_cfg, tmp_path / "resumed")
    assert _log(tmp_path / "resumed")[0] == pytest.approx(l1[2:], rel=0, abs=loss_atol(COMMON["lr"], COMMON["max_steps"], n_params))


@pytest.mark.parametrize("fsdp", [True, False], ids=["fsdp", "ddp"])
def test_two_process_resume_continues_to_the_same_loss(tiny_llama, tmp_path, fsdp):
    """LoRA dropout on micro-batches of two lengths: each rank's RNG must be restored, not rank 0's."""
    cfg = dict(method="lora", lora_dropout=0.1, grad_accum=1, **COMMON)
    _two_processes(tiny_llama, tmp_path / "a", fsdp, **cfg)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)  # an "interrupted" run: only the step-2 checkpoint exists
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-2", tmp_path / "b" / "checkpoints" / "step-2")
    assert {"rank0.torch_cpu", "rank1.torch_cpu"} <= set(load_file(tmp_path / "b" / "checkpoints" / "step-2" / "rng.safetensors"))
    _two_processes(tiny_llama, tmp_path / "b", fsdp, **cfg)
    full, resumed = _log(tmp_path / "a")[0], _log(tmp_path / "b")[0]
    assert len(resumed) == 2  # steps 3..4 only
    assert resumed == pytest.approx(full[2:], rel=1e-5)
    _assert_same_checkpoint(tmp_path / "a" / "checkpoints" / "step-4", tmp_path / "b" / "checkpoints" / "step-4")
    assert json.loads((tmp_path / "b" / "train_config.json").read_text())["distributed"] == ("FSDP2" if fsdp else "DDP")


@pytest.mark.parametrize("kind, match", [("DEEPSPEED", "DeepSpeed is not supported"), ("FSDP", "FSDP1")])
def test_deepspeed_and_fsdp1_are_refused(tiny_llama, tmp_path, monkeypatch, kind, match):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # as if launched under that plugin (in this one process is_fsdp2 stays False: FSDP here reads as FSDP1)
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType[kind]))
    with pytest.raises(NeedleworkError, match=match) as e:
        train(tiny_llama, mixed_records(4, seed=1), TrainConfig(max_steps=1, progress=False), tmp_path)
    assert "fsdp_version 2" in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


GPUS = min(2, torch.cuda.device_count())


@pytest.mark.skipif(GPUS < 1, reason="needs a GPU (NCCL); the CPU tests above run everywhere")
@pytest.mark.parametrize("method, dtype", [("lora", F64), ("full", F64), ("lora", "bfloat16")])
def test_fsdp_on_gpus_equals_ddp(tiny_llama, tmp_path, method, dtype):
    """The same on CUDA/NCCL, FSDP2 against DDP (float64: to the derived reduction-order bound; bf16: LoRA
    in fp32 on a bf16 base, losses only), on two GPUs (or one: then FSDP2 shards over one rank, still
    through the CUDA gathers and checkpoints)."""
    cfg = dict(method=method, grad_accum=2, device="cuda", dtype=dtype, nproc=GPUS, **COMMON)
    _two_processes(tiny_llama, tmp_path / "ddp", fsdp=False, **cfg)
    _two_processes(tiny_llama, tmp_path / "fsdp", fsdp=True, **cfg)
    assert json.loads((tmp_path / "fsdp" / "train_config.json").read_text())["distributed"] == "FSDP2"
    if dtype == F64:
        n_params = sum(t.numel() for t in load_file(tmp_path / "ddp" / "checkpoints" / "step-2" / "weights.safetensors").values())
        tol = dict(rel=0, abs=loss_atol(COMMON["lr"], COMMON["max_steps"], n_params))
    else:  # bf16 rounds each activation to 2**-8 relative: losses agree to a few of those
        tol = dict(rel=8 * 2.0**-8)
    assert _log(tmp_path / "fsdp")[0] == pytest.approx(_log(tmp_path / "ddp")[0], **tol)
    if dtype == F64:
        for step in (2, 4):
            _assert_same_checkpoint(
                tmp_path / "ddp" / "checkpoints" / f"step-{step}", tmp_path / "fsdp" / "checkpoints" / f"step-{step}", W_ATOL
            )
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "fsdp" / "checkpoints" / "step-2", tmp_path / "resumed" / "checkpoints" / "step-2")
    _two_processes(tiny_llama, tmp_path / "resumed", fsdp=True, **cfg)
    assert _log(tmp_path / "resumed")[0] == pytest.approx(_log(tmp_path / "fsdp")[0][2:], rel=1e-5)
    final = tmp_path / "fsdp" / ("adapter" if method == "lora" else "model")
    load_model(ModelConfig(name=tiny_llama, adapter=str(final)) if method == "lora" else ModelConfig(name=str(final)))
