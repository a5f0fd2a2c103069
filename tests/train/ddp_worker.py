"""Run by test_ddp.py under `torchrun` (several CPU processes, gloo) or directly (one process)."""

import sys

import torch

from conftest import copy_records
from needlework.models.load import ModelConfig
from needlework.train.config import TrainConfig
from needlework.train.sft import train

if __name__ == "__main__":
    model_dir, out_dir, grad_accum, method = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    cfg = TrainConfig(method=method, lr=1e-2, batch_size=2, grad_accum=grad_accum, max_steps=4, progress=False, gradient_checkpointing=True)
    # float64: one process and two sum gradients in different orders (bounds in tests/numerics.py)
    train(
        ModelConfig(name=model_dir, device="cpu", dtype="float64"),
        copy_records(24, seed=6),
        cfg,
        out_dir,
        eval_records=copy_records(6, seed=7),
    )
