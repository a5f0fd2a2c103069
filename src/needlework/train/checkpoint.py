"""Checkpoints as safetensors + JSON (no pickle): trainable weights, optimizer state, scheduler,
RNG states and the data position, so a resumed run continues exactly where it stopped.

Layout of `out/checkpoints/step-N/`:
  weights.safetensors    trainable parameters by name (LoRA weights, or the fine-tuned weights)
  optimizer.safetensors  optimizer tensors, keyed "<param index>.<name>"
  rng.safetensors        torch CPU (and CUDA) generator states; under several processes also each
                         rank's own ("rank<r>.torch_cpu", "rank<r>.torch_cuda")
  state.json             step, optimizer scalars + param groups, scheduler, python RNG, config
A checkpoint directory is written under a temporary name and renamed, so it is complete or absent.

The format does not depend on how training was distributed. Under FSDP (`sharded=True`) every rank
holds only a shard of each parameter and of its optimizer state, so `full_trainable_state` and
`full_optimizer_state` gather them (collectives: every rank calls them) into exactly what one process
would have written: unsharded tensors under the same names, optimizer state under the same indices.
A checkpoint written under FSDP therefore resumes in one process and the other way round.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from needlework.errors import NeedleworkError

PREFIX = "step-"


def clean_name(name: str) -> str:
    """A parameter name without the wrappers' infixes (activation checkpointing, FSDP1, compile),
    as torch.distributed.checkpoint names it."""
    return name.replace("._checkpoint_wrapped_module", "").replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Named trainable parameters (detached, contiguous, on CPU)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`trainable_state` of an FSDP-sharded model: the unsharded trainable parameters, on CPU.

    Collective: every rank must call it. Rank 0 gets the tensors (one parameter gathered at a time,
    so its peak is one full parameter on the device plus the CPU copies); the other ranks get {}.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_full_options(cpu_offload=True, ignore_frozen_params=True))
    # tied weights appear under both names in a state dict: keep named_parameters' (trainable_state's) names
    return {n: sd[n].contiguous() for n in (clean_name(n) for n, p in model.named_parameters() if p.requires_grad)} if sd else {}


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole unsharded state dict of an FSDP-sharded model on rank 0 ({} elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def _param_index(model: torch.nn.Module, optimizer) -> dict[str, int]:
    """Parameter name -> the index `optimizer.state_dict()` gives it (position over the param groups)."""
    names = {id(p): clean_name(n) for n, p in model.named_parameters()}
    return {names[id(p)]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """`optimizer.state_dict()` as one process would return it (unsharded tensors, parameters by
    index), gathered from an FSDP-sharded model's shards. Collective; {} on ranks other than 0."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not sd:
        return {}
    index = _param_index(model, optimizer)  # torch.distributed.checkpoint keys the state by parameter name
    return {
        "state": {index[n]: st for n, st in sd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]],
    }


def rank_rng_states() -> dict[str, torch.Tensor]:
    """Every process's torch generator states, on each rank (collective when torch.distributed runs
    more than one process; {} otherwise). Ranks draw different amounts of randomness (dropout on
    micro-batches of different shapes), so an exact resume restores each rank's own state."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {}
    mine = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["torch_cuda"] = torch.cuda.get_rng_state()  # this process's device
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return {f"rank{r}.{k}": v.cpu() for r, d in enumerate(every) for k, v in d.items()}


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


def save_checkpoint(
    ckpt_root: str | os.PathLike,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    optimizer_state: dict | None = None,
    rng_states: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `ckpt_root/step-<step>` atomically and prune all but the newest `keep` (0: keep all).

    Args:
        weights: trainable parameters by name (`trainable_state`, or `full_trainable_state` under FSDP).
        optimizer_state: replaces `optimizer.state_dict()` (`full_optimizer_state` under FSDP).
        rng_states: every rank's generator states (`rank_rng_states`), stored next to this process's.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step}"
    tmp = root / f".{PREFIX}{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, tmp / "weights.safetensors")
    opt_tensors, opt_meta = _optimizer_to_flat(optimizer_state if optimizer_state is not None else optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file({**rng, **(rng_states or {})}, tmp / "rng.safetensors")
    py_state = random.getstate()
    state = {
        "step": step,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "config": config,
        **(extra or {}),
    }
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
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer, scheduler, sharded: bool = False) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states in place; returns state.json's dict.

    Args:
        sharded: the model is FSDP-sharded (collective: every rank must call it). Rank 0 reads the
            tensors and broadcasts them one at a time; each rank keeps its shard, so host memory
            holds one copy of the checkpoint, not one per process.
    Raises:
        NeedleworkError: the checkpoint is incomplete or its weights do not match the model's
            trainable parameters (different model, method, LoRA rank or targets).
    """
    import torch.distributed as dist

    path = Path(path)
    if not (path / "state.json").exists():
        raise NeedleworkError(f"{path} is not a needlework checkpoint (no state.json)", "point --resume at out/checkpoints/step-N")
    state = json.loads((path / "state.json").read_text())
    reader = not sharded or dist.get_rank() == 0  # the process(es) that read the tensors
    with safe_open(path / "weights.safetensors", framework="pt") as f:  # names and shapes only, on every rank
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    params = {clean_name(n): p for n, p in model.named_parameters() if p.requires_grad}  # a DTensor's shape is the full shape
    missing, unexpected = sorted(set(params) - set(shapes)), sorted(set(shapes) - set(params))
    bad_shape = [n for n in set(params) & set(shapes) if tuple(params[n].shape) != shapes[n]]
    if missing or unexpected or bad_shape:
        detail = (missing or unexpected or bad_shape)[:3]
        raise NeedleworkError(
            f"checkpoint {path} does not match the model being trained "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad_shape)} wrong-shape tensors, e.g. {detail})",
            "resume with the same model and training method/LoRA settings, or start a fresh --out directory",
        )
    weights = load_file(path / "weights.safetensors") if reader else {}
    optim = _optimizer_from_flat(load_file(path / "optimizer.safetensors"), state["optimizer"]) if reader else {}
    if sharded:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        weights = {n: w.to(params[n].dtype) for n, w in weights.items()}
        set_model_state_dict(model, weights, options=_full_options(strict=False, broadcast_from_rank0=True))
        if reader:  # torch.distributed.checkpoint keys optimizer state by parameter name
            name = {i: n for n, i in _param_index(model, optimizer).items()}
            optim = {
                "state": {name[i]: st for i, st in optim["state"].items()},
                "param_groups": [{**g, "params": [name[i] for i in g["params"]]} for g in optim["param_groups"]],
            }
        set_optimizer_state_dict(model, optimizer, optim, options=_full_options(broadcast_from_rank0=True))
    else:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights[n].to(p.device, p.dtype))
        optimizer.load_state_dict(optim)
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(load_file(path / "rng.safetensors"))
    v, s, g = state["python_rng"]
    random.setstate((v, tuple(s), g))
    return state


def _restore_rng(rng: dict[str, torch.Tensor]) -> None:
    """This process's generator states: its own when the checkpoint has one per rank for the same
    number of processes, else rank 0's (a checkpoint of another world size still resumes)."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    own = world > 1 and f"rank{world - 1}.torch_cpu" in rng and f"rank{world}.torch_cpu" not in rng
    torch.set_rng_state(rng[f"rank{rank}.torch_cpu" if own else "torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted((k for k in rng if k.startswith("torch_cuda_")), key=lambda k: int(k.split("_")[-1]))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        if own and f"rank{rank}.torch_cuda" in rng:
            torch.cuda.set_rng_state(rng[f"rank{rank}.torch_cuda"])
