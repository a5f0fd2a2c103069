"""Checkpoints as safetensors + JSON (no pickle): trainable weights, optimizer state, scheduler,
RNG states and the data position, so a resumed run continues exactly where it stopped.

Layout of `out/checkpoints/step-N/`:
  weights.safetensors    trainable parameters by name (LoRA weights, or the fine-tuned weights)
  optimizer.safetensors  optimizer tensors, keyed "<param index>.<name>"
  rng.safetensors        torch CPU (and CUDA) generator states
  state.json             step, optimizer scalars + param groups, scheduler, python RNG, config
A checkpoint directory is written under a temporary name and renamed, so it is complete or absent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from needlework.errors import NeedleworkError

PREFIX = "step-"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Named trainable parameters (detached, contiguous, on CPU)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for idx, sc in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(ckpt_root: str | os.PathLike, step: int, weights: dict[str, torch.Tensor], optimizer,
                    scheduler, config: dict[str, Any], extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write `ckpt_root/step-<step>` atomically and prune all but the newest `keep` (0: keep all)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".{PREFIX}{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, tmp / "weights.safetensors")
    opt_tensors, opt_meta = _optimizer_to_flat(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, tmp / "rng.safetensors")
    py_state = random.getstate()
    state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
             "python_rng": [py_state[0], list(py_state[1]), py_state[2]], "config": config, **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `ckpt_root`, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states in place; returns state.json's dict.

    Raises:
        NeedleworkError: the checkpoint is incomplete or its weights do not match the model's
            trainable parameters (different model, method, LoRA rank or targets).
    """
    path = Path(path)
    if not (path / "state.json").exists():
        raise NeedleworkError(f"{path} is not a needlework checkpoint (no state.json)", "point --resume at out/checkpoints/step-N")
    state = json.loads((path / "state.json").read_text())
    weights = load_file(path / "weights.safetensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    bad_shape = [n for n in set(params) & set(weights) if params[n].shape != weights[n].shape]
    if missing or unexpected or bad_shape:
        detail = (missing or unexpected or bad_shape)[:3]
        raise NeedleworkError(
            f"checkpoint {path} does not match the model being trained "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad_shape)} wrong-shape tensors, e.g. {detail})",
            "resume with the same model and training method/LoRA settings, or start a fresh --out directory")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    optimizer.load_state_dict(_optimizer_from_flat(load_file(path / "optimizer.safetensors"), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    v, s, g = state["python_rng"]
    random.setstate((v, tuple(s), g))
    return state
