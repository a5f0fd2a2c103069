"""Run by test_fsdp.py under `torchrun` on CPU processes (gloo): FSDP2 through accelerate when the
environment says ACCELERATE_USE_FSDP=true FSDP_VERSION=2 (as `accelerate launch --use_fsdp` sets), else DDP.

accelerate switches to FSDP only on accelerator devices (AcceleratorState turns MULTI_GPU/XPU/...
into FSDP, never MULTI_CPU), although torch's `fully_shard` runs on CPU with gloo. So this worker
lets the FSDP plugin that accelerate built from the environment take effect on CPU too; from there on
accelerate's own FSDP2 path runs unchanged (`fsdp2_prepare_model`, no_sync, clipping).

argv: model_dir out_dir '{"TrainConfig": "overrides", "device": "cpu|cuda", "dtype": "float32|bfloat16"}'
"""

import dataclasses
import json
import sys

import torch

from conftest import copy_records


def fsdp_on_cpu() -> None:
    from accelerate import state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = init


def mixed_records(n: int, seed: int):
    """Copy records of two lengths, so processes get micro-batches of different shapes."""
    short, long = copy_records(n - n // 2, seed=seed), copy_records(n // 2, seed=seed + 100, n_filler=2)
    return short + [dataclasses.replace(r, id=f"long-{i}") for i, r in enumerate(long)]


if __name__ == "__main__":
    fsdp_on_cpu()
    from needlework.models.load import ModelConfig
    from needlework.train.config import TrainConfig
    from needlework.train.sft import train

    model_dir, out_dir, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    device, dtype = overrides.pop("device", "cpu"), overrides.pop("dtype", "float32")  # model settings, not TrainConfig's
    torch.set_num_threads(1)
    train(
        ModelConfig(name=model_dir, device=device, dtype=dtype),
        mixed_records(24, seed=6),
        TrainConfig(**overrides),
        out_dir,
        eval_records=mixed_records(5, seed=7),
    )
