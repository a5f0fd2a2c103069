"""Scale-out of the train and evaluate stages: run a stage function in several processes, one per
GPU, launched with `torch.distributed.run` (the launcher `accelerate launch` wraps). Inside, the
stage's own code does the sharing: `train` through accelerate's Accelerator (DDP), `evaluate` by
sharding examples and gathering the rows (see `needlework.evaluate.evaluate`).

The parent process (the study engine) holds the stage's lock and publishes its work dir; the
workers (`needlework.study.worker`) only write into it, so a killed launch resumes like any other stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from needlework.errors import NeedleworkError
from needlework.io import write_json
from needlework.study.nodes import StageContext

__all__ = ["SCALABLE", "run_in_processes", "stage_processes", "visible_gpus"]

SCALABLE = ("train", "evaluate")


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup means no GPUs, not a crash
        return 0


def stage_processes(stage: str, ctx: StageContext) -> int:
    """How many processes run this stage: 1 unless it trains or evaluates and several are available.

    `train` keeps the configured global batch (batch_size x grad_accum rows per step): its
    processes split grad_accum, so their count is the largest divisor of grad_accum that fits.
    """
    if stage not in SCALABLE or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1  # already inside a launch
    want = ctx.cfg.scale_out.processes
    device = ctx.node.slice["model"].get("device", "auto")
    n = (visible_gpus() if device in ("auto", "cuda") or str(device).startswith("cuda") else 1) if want == "auto" else int(want)
    if stage == "train":
        accum = int(ctx.node.slice["train"].get("grad_accum", 1))
        n = max(d for d in range(1, max(1, min(n, accum)) + 1) if accum % d == 0)
    else:
        n = min(n, max(1, int(ctx.node.slice.get("eval", {}).get("limit") or 10**9)))
    return max(1, n)


def _release_gpu_memory() -> None:
    """Hand the memory this process's earlier stages cached back to the driver: the workers share GPU 0 with it."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - nothing to release
        pass


def _die_with_parent() -> None:
    """In the launcher's child: get SIGTERM when the study process dies (even by kill -9), so no
    orphaned workers keep writing into a work dir that a resumed study takes over. Linux only."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_in_processes(stage: str, ctx: StageContext, n: int) -> None:
    """Run `stage` on `ctx` in n processes and wait; raises NeedleworkError when a process fails."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="needlework-launch-", suffix=".json")  # outside the work dir: not a result
    os.close(fd)
    spec = Path(name)
    write_json(
        spec,
        {
            "stage": stage,
            "processes": n,
            "out": str(ctx.out),
            "study_dir": str(ctx.study_dir),
            "inputs": {k: str(v) for k, v in ctx.inputs.items()},
            "node": {
                "stage": ctx.node.stage,
                "label": ctx.node.label,
                "slice": ctx.node.slice,
                "model": ctx.node.model,
                "task": ctx.node.task,
                "set": ctx.node.set,
            },
            "config": ctx.cfg.to_dict(),
        },
    )
    _release_gpu_memory()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(n),
        "-m",
        "needlework.study.worker",
        str(spec),
    ]
    env = dict(os.environ)
    if visible_gpus() == 0:  # CPU processes share the cores instead of each taking all of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    try:
        proc = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent)
    finally:
        spec.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise NeedleworkError(
            f"stage {stage} of {ctx.node.label} failed in its {n} processes (exit code {proc.returncode}; their output is above)",
            "fix the error shown above and rerun the study (finished stages are kept); scale_out.processes: 1 runs it in this process",
        )
