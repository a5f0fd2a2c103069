"""Overhead of interventions on greedy evaluation: knockout (zero / mean / uniform of 10 heads)
against the same greedy generation unablated, and lockstep patching (source + target, 10 heads)
against one model's generation. The baseline is measured in the same process, interleaved with
the interventions (baseline, zero, mean, uniform, patch, baseline, ...) so that machine noise hits
all of them alike; the JSON line reports medians over --repeats and ratios to the baseline.

Work is fixed per run: random prompt ids of --n-tokens, exactly --max-new-tokens generated per row
(no stop rule), through `needlework.evaluate.generate.greedy_generate` (the evaluation loop) and
`needlework.interventions.patch.lockstep_batch` (the patching loop).

    python benchmarks/intervention_overhead.py --model smollm2 --n-tokens 1500          # CPU, SmolLM2
    python benchmarks/intervention_overhead.py --tiny                                   # CPU smoke test
    python benchmarks/intervention_overhead.py --device cuda --shape llama3-8b --n-tokens 8192 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

SHAPES = {  # random models built from a config (no download)
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=1024,
        max_position_embeddings=4096,
    ),
}


def random_model(shape: str, device, dtype):
    """A randomly initialised Llama of `shape`, built on `meta` and materialised on `device`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    rot = model.model.rotary_emb  # non-persistent buffers are garbage after to_empty: rebuild them
    model.model.rotary_emb = type(rot)(cfg).to(device)
    return model.eval()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="a loadable model (used unless --shape/--tiny)")
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES), help="random model of this shape instead")
    ap.add_argument("--tiny", action="store_true", help="same as --shape tiny (CPU smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n-tokens", type=int, default=1500, help="prompt length")
    ap.add_argument("--n-examples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--n-heads", type=int, default=10, help="heads knocked out / patched (spread over the last layers)")
    ap.add_argument("--modes", default="zero,mean,uniform,patch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from needlework.evaluate.generate import greedy_generate
    from needlework.interventions.knockout import head_means, knocked_out
    from needlework.interventions.patch import Role, lockstep_batch, patching
    from needlework.models.load import ModelConfig, load_model, resolve_device, resolve_dtype
    from needlework.models.sites import HeadId, model_shape

    if args.threads:
        torch.set_num_threads(args.threads)
    shape_name = "tiny" if args.tiny else args.shape
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if shape_name:
        source, target = random_model(shape_name, device, dtype), random_model(shape_name, device, dtype)
    else:
        source, _ = load_model(ModelConfig(name=args.model, device=args.device, dtype=args.dtype))
        target, _ = load_model(ModelConfig(name=args.model, device=args.device, dtype=args.dtype))
    shape = model_shape(target)
    vocab = target.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.n_tokens,), generator=g).tolist() for _ in range(args.n_examples)]
    # 10 heads over the last third of the layers, where retrieval heads live
    start = shape.n_layers * 2 // 3
    cand = [HeadId(l, (3 * i + l) % shape.n_heads) for i in range(shape.n_heads) for l in range(start, shape.n_layers)]
    heads = frozenset(list(dict.fromkeys(cand))[: args.n_heads])
    means = head_means(target, prompts[:2], batch_size=1, progress=False)
    n_new = args.max_new_tokens

    def baseline():
        return greedy_generate(target, prompts, n_new, pad_id=0, batch_size=args.batch_size, progress=False)

    def knockout(mode):
        def run():
            with knocked_out(target, heads, mode, means):
                return greedy_generate(target, prompts, n_new, pad_id=0, batch_size=args.batch_size, progress=False)

        return run

    def patch():
        src, tgt = Role(source), Role(target)
        out = []
        with torch.inference_mode(), patching(src, tgt, heads) as st:
            for s in range(0, len(prompts), args.batch_size):
                b = prompts[s : s + args.batch_size]
                gen, _ = lockstep_batch(src, tgt, st, b, [n_new] * len(b), [False] * len(b), 0, frozenset(), frozenset(), frozenset())
                out += gen
        return out

    runs = {"baseline": baseline}
    for m in args.modes.split(","):
        runs[m] = patch if m == "patch" else knockout(m)
    for fn in runs.values():  # warm-up (kernels, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}  # process CPU time: robust on a shared CPU box
    for _ in range(args.repeats):
        for name, fn in runs.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base, base_cpu = statistics.median(times["baseline"]), statistics.median(cpu["baseline"])
    print(
        json.dumps(
            {
                "bench": "intervention_overhead",
                "model": shape_name or args.model,
                "device": str(device),
                "dtype": str(dtype),
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "n_examples": len(prompts),
                "n_tokens": args.n_tokens,
                "max_new_tokens": n_new,
                "batch_size": args.batch_size,
                "heads": sorted(str(h) for h in heads),
                "repeats": args.repeats,
                "results": {
                    k: {
                        "median_s": statistics.median(v),
                        "runs_s": [round(x, 4) for x in v],
                        "ratio_vs_baseline": statistics.median(v) / base,
                        "median_cpu_s": statistics.median(cpu[k]),
                        "cpu_ratio_vs_baseline": statistics.median(cpu[k]) / base_cpu,
                    }
                    for k, v in times.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
