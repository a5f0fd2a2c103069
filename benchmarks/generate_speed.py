"""Benchmark: generate N synthetic examples of L tokens (default 1,000 x 8K, SmolLM2 tokenizer).

Prints one JSON line: median seconds over --runs, examples/s, and a baseline measured in the same
process: the time to tokenize the finished prompts once with offsets (what one render per example
costs at least), so `ratio` = generation time / one-tokenization time.

    python benchmarks/generate_speed.py --n 1000 --length 8192 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--task", default="mdqa")
    ap.add_argument("--concept", default="high")
    ap.add_argument("--context", default="high")
    ap.add_argument("--tokenizer", default="smollm2")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from needlework.data.generate import GenerateConfig, generate
    from needlework.data.render import build_prompt
    from needlework.models.load import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    cfg = GenerateConfig(task=args.task, concept=args.concept, context=args.context, n=args.n, length=args.length, tokenizer=args.tokenizer)
    warm = GenerateConfig(task=args.task, concept=args.concept, context=args.context, n=2, length=args.length)
    generate(warm, tokenizer=tok)  # warm caches
    times, cpu, recs = [], [], []
    for _ in range(args.runs):
        t, c = time.perf_counter(), time.process_time()
        recs = generate(cfg, tokenizer=tok)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    prompts = [build_prompt(r)[0] for r in recs]
    base, base_cpu = [], []
    for _ in range(args.runs):
        t, c = time.perf_counter(), time.process_time()
        for p in prompts:
            tok(p, return_offsets_mapping=True)
        base.append(time.perf_counter() - t)
        base_cpu.append(time.process_time() - c)
    toks = [r.meta["n_tokens"] for r in recs]
    med, med_base = statistics.median(times), statistics.median(base)
    print(
        json.dumps(
            {
                "benchmark": "generate_speed",
                "task": args.task,
                "variant": f"{args.concept}/{args.context}",
                "n": args.n,
                "length": args.length,
                "tokenizer": args.tokenizer,
                "runs": args.runs,
                "median_s": round(med, 2),
                "all_s": [round(x, 2) for x in times],
                "examples_per_s": round(args.n / med, 1),
                "median_cpu_s": round(statistics.median(cpu), 2),
                "baseline_tokenize_once_s": round(med_base, 2),
                "baseline_cpu_s": round(statistics.median(base_cpu), 2),
                "ratio": round(med / med_base, 2),
                "ratio_cpu": round(statistics.median(cpu) / statistics.median(base_cpu), 2),
                "load_avg_1m": round(os.getloadavg()[0], 1),
                "max_abs_len_error": max(abs(x - args.length) for x in toks),
                "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
