"""Training memory and speed: needlework's answer-only output path vs the common recipe, in one job.

All paths train the same LoRA model (r=16, alpha=32 on q,k,v,o; gradient checkpointing with
use_reentrant=False; batch 1; one AdamW step per iteration) on one random sequence of `--context`
tokens whose last `--answer` tokens are the answer:
  ours:      needlework's default: decoder -> hidden states -> LM head + cross-entropy at the answer
             positions only (needlework.train.loss.AnswerOnlyLM), and checkpointing that keeps the
             attention kernel's outputs (needlework.train.checkpointing, `save-attention`)
  ours-full: the same output path with full checkpointing (every layer recomputed)
  common:    transformers + peft, model(input_ids, labels=labels) with labels -100 outside the answer
             (full-sequence logits, b x t x vocab, plus transformers' fp32 upcast), full checkpointing

Reported per path: peak memory (GPU: torch.cuda.max_memory_allocated, reset before each path; CPU:
the rise of the process RSS above its level before the path, sampled every 2 ms), tokens/s (median
of `--steps` timed steps after `--warmup` steps) and MFU.

MFU formula (model FLOPs, the same for both paths, so it is proportional to tokens/s):
  forward  = 2 * N * T + 2 * L * T^2 * d_attn      (N: parameters of the decoder blocks, frozen + LoRA,
                                                   without embeddings and LM head; the attention term
                                                   counts QK^T and AV under a causal mask, d_attn =
                                                   n_heads * head_dim)
  training = 3 * forward                           (backward ~ 2 x forward; checkpoint recompute not counted)
  MFU      = training / step_time / peak            (--peak-tflops, default 989: H200 dense bf16)

Usage:
  python benchmarks/train_memory.py                       # Llama-3-8B shape, random, bf16, 32K, on CUDA
  python benchmarks/train_memory.py --find-max            # also: double the context until ours OOMs
  python benchmarks/train_memory.py --tiny                # a tiny random Llama on CPU (CI smoke test)
  python benchmarks/train_memory.py --model smollm2 --context 1024 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import threading
import time

import torch

try:  # run from a checkout without `pip install -e .` (e.g. on the GPU machine)
    import needlework  # noqa: F401
except ModuleNotFoundError:
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

LLAMA3_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    rope_theta=500000.0,
)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=32000)


def build_model(args, device, dtype):
    """A randomly initialised Llama (built on `meta`, materialised on the device) or a named model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if args.model:
        from needlework.models.load import ModelConfig, load_model

        model, _ = load_model(ModelConfig(name=args.model, device=str(device), dtype=args.dtype))
        return model
    shape = TINY if args.tiny else LLAMA3_8B
    config = LlamaConfig(**shape, max_position_embeddings=max(args.context, 8192) * 64, tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02)
        rope = model.model.rotary_emb  # non-persistent buffers are garbage after to_empty: rebuild them
        model.model.rotary_emb = type(rope)(config=config).to(device)
    return model


def add_lora(model, r: int):
    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    return model


def model_flops(model, t: int) -> float:
    """Training FLOPs of one step of t tokens (see the module docstring)."""
    cfg = model.config
    base = model.get_base_model()
    n = sum(p.numel() for p in base.model.layers.parameters())
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    return 3 * (2 * n * t + 2 * cfg.num_hidden_layers * t * t * d_attn)


class RssPeak:
    """Peak RSS rise (GiB) of this process while the block runs, sampled by a thread (CPU only)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _watch(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.gib = (self.peak - self.base) / 2**30
        return False


def run_path(path: str, model, t: int, answer: int, steps: int, warmup: int, device, peak_tflops: float | None) -> dict:
    """Train `warmup + steps` iterations with one output path; returns its figures (or oom)."""
    from needlework.train.checkpointing import enable_checkpointing
    from needlework.train.data import Example, collate
    from needlework.train.loss import AnswerOnlyLM, full_logits_loss

    enable_checkpointing(model.get_base_model(), "save-attention" if path == "ours" else "full")

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (t,), generator=g).tolist()
    batch = collate([[Example(id="x", input_ids=ids, prompt_len=t - answer)]], pad_id=0).to(device)
    lm = AnswerOnlyLM(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    losses = []

    def step() -> float:
        if path in ("ours", "ours-full"):
            nll, _ = lm(batch.input_ids, None, batch.rows, batch.pos, batch.targets)
            loss = nll.mean()
        else:
            loss = full_logits_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        return losses[-1]

    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    times = []
    try:
        with RssPeak() as rss:
            for i in range(warmup + steps):
                if cuda:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                step()
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        opt.zero_grad(set_to_none=True)  # the closure holds opt and batch until we return
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        return {"context": t, "oom": True}
    step_s = statistics.median(times)
    out = {
        "context": t,
        "oom": False,
        "first_loss": losses[0],
        "step_s": step_s,
        "tokens_per_s": t / step_s,
        "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if cuda else rss.gib,
        "peak_mem_above_start_gib": ((torch.cuda.max_memory_allocated(device) - base_mem) / 2**30) if cuda else rss.gib,
    }
    if peak_tflops:
        out["mfu"] = model_flops(model, t) / step_s / (peak_tflops * 1e12)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=None, help="tokens (default 32768; --tiny: 1024)")
    ap.add_argument("--answer", type=int, default=16, help="answer tokens at the end")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per path (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama (CPU smoke test)")
    ap.add_argument("--model", default=None, help="a real model instead (e.g. smollm2) via needlework's loader")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default 989 on CUDA = H200 bf16)")
    ap.add_argument("--paths", default="common,ours,ours-full", help="which paths to measure, in order")
    ap.add_argument("--find-max", action="store_true", help="double the context from --context until ours runs out of memory")
    ap.add_argument("--find-max-limit", type=int, default=1 << 20)
    args = ap.parse_args()

    from needlework.models.load import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    args.context = args.context or (1024 if args.tiny or device.type == "cpu" else 32768)
    peak = args.peak_tflops or (989.0 if device.type == "cuda" else None)
    torch.manual_seed(0)
    model = add_lora(build_model(args, device, dtype), args.lora_r)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.model or ("tiny-llama" if args.tiny else "llama-3-8b-shape (random)"),
        "dtype": str(dtype),
        "context": args.context,
        "answer": args.answer,
        "lora_r": args.lora_r,
        "steps": args.steps,
        "torch": torch.__version__,
    }
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for path in args.paths.split(","):
        with torch.no_grad():  # every path starts from the same LoRA weights, so their losses compare
            for n, p in model.named_parameters():
                if n in start:
                    p.copy_(start[n])
        result[path] = run_path(path, model, args.context, args.answer, args.steps, args.warmup, device, peak)
    ours, common = result.get("ours"), result.get("common")
    if ours and common and not ours["oom"] and not common["oom"]:
        result["mem_ratio"] = ours["peak_mem_gib"] / common["peak_mem_gib"] if common["peak_mem_gib"] > 0 else None
        result["speed_ratio"] = ours["tokens_per_s"] / common["tokens_per_s"]
        result["first_loss_diff"] = abs(ours["first_loss"] - common["first_loss"])  # same weights and data: must agree
    full = result.get("ours-full")
    if full and common and not full["oom"] and not common["oom"]:
        result["full_ckpt_mem_ratio"] = full["peak_mem_gib"] / common["peak_mem_gib"] if common["peak_mem_gib"] > 0 else None
        result["full_ckpt_speed_ratio"] = full["tokens_per_s"] / common["tokens_per_s"]
    if args.find_max:
        tried, t = [], args.context
        while t <= args.find_max_limit:
            r = run_path("ours", model, t, args.answer, 1, 1, device, peak)
            tried.append(r)
            print(json.dumps({"find_max_try": r}), flush=True)
            if r["oom"]:
                break
            t *= 2
        ok = [r["context"] for r in tried if not r["oom"]]
        result["find_max"] = {"longest_context": max(ok) if ok else None, "tries": tried}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
