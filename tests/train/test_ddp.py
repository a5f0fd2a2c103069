"""Two CPU processes (gloo, launched by torchrun) give the same losses as one process on the same
global batch: 2 processes × grad_accum 1 vs 1 process × grad_accum 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from numerics import loss_atol

HERE = Path(__file__).parent


def _run(args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {})}
    p = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def _log(out):
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], next(r for r in rows if "eval_loss" in r)


def test_two_processes_equal_one(tiny_llama, tmp_path, method="lora"):
    worker = str(HERE / "ddp_worker.py")
    _run([sys.executable, worker, tiny_llama, str(tmp_path / "one"), "2", method])
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",  # standalone: a free port
            worker,
            tiny_llama,
            str(tmp_path / "two"),
            "1",
            method,
        ]
    )
    one, eval_one = _log(tmp_path / "one")
    two, eval_two = _log(tmp_path / "two")
    assert len(one) == len(two) == 4
    n_params = sum(t.numel() for t in load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors").values())
    tol = dict(rel=0, abs=loss_atol(1e-2, 4, n_params))  # lr and steps of ddp_worker.py; float64 (tests/numerics.py)
    assert two == pytest.approx(one, **tol)  # same data, same updates: same loss at every step
    assert eval_two["eval_loss"] == pytest.approx(eval_one["eval_loss"], **tol)
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["world_size"] == 2
