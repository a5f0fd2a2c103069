"""Evaluation throughput (examples/s) of `evaluate_loaded` at a given prompt length, per batch size.

The first batch size in --batch-sizes is the baseline (default batch 1), measured in the same
process; the JSON line reports each batch size's median over --repeats runs and its ratio to the
baseline. Records are hand-made needle questions padded with filler documents to --n-tokens.

    python benchmarks/eval_speed.py --model smollm2 --n-tokens 1000 --n-examples 8 --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

FILLER = [
    "The museum opened a new wing for modern sculpture last spring.",
    "Farmers in the valley grow apples, pears and a little barley.",
    "The river floods every few years, so the houses stand on stilts.",
    "A local choir performs in the old church every Sunday evening.",
    "The train to the coast leaves twice a day from the central station.",
    "Most of the shops close early on Wednesdays in the winter months.",
    "The old lighthouse was restored by volunteers from the harbour town.",
]
NEEDLES = [
    ("password", "Marigold"),
    ("city", "Lisbon"),
    ("animal", "giraffe"),
    ("colour", "turquoise"),
    ("river", "Danube"),
    ("planet", "Neptune"),
    ("fruit", "mango"),
    ("metal", "cobalt"),
]


def make_records(tokenizer, n_examples: int, n_tokens: int, chat: bool):
    """Needle records whose rendered prompt has about `n_tokens` tokens (filler docs added until reached)."""
    from needlework.data.records import Document, Needle, Record
    from needlework.data.render import render

    recs = []
    for i in range(n_examples):
        key, value = NEEDLES[i % len(NEEDLES)]
        fact = f"The secret {key} is {value}."
        docs: list[Document] = []
        while True:
            d = len(docs)
            docs.append(Document(id=f"d{d}", title=f"Page {d}", text=" ".join(FILLER[(d + k + i) % len(FILLER)] for k in range(3))))
            gold = len(docs) // 2
            gdoc = docs[gold]
            text = gdoc.text + " " + fact
            start = len(gdoc.text) + 1 + fact.index(value)
            docs_n = docs[:gold] + [Document(id=gdoc.id, title=gdoc.title, text=text)] + docs[gold + 1 :]
            rec = Record(
                id=f"b{i}",
                task="mdqa",
                concept="low",
                context="low",
                documents=docs_n,
                question=f"What is the secret {key}?",
                answers=[value],
                needles=[Needle(doc=gold, start=start, end=start + len(value))],
            )
            if len(render(rec, tokenizer, chat=chat, with_answer=False).prompt_ids) >= n_tokens:
                recs.append(rec)
                break
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n-tokens", type=int, default=1000, help="prompt length per example")
    ap.add_argument("--n-examples", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,4", help="comma-separated; the first is the baseline")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: per task (mdqa 32)")
    ap.add_argument("--logprob", action="store_true", help="include the gold log-probability pass")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()

    import torch

    from needlework.evaluate.evaluate import EvalConfig, evaluate_loaded
    from needlework.models.load import ModelConfig, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(ModelConfig(name=args.model, device=args.device, dtype=args.dtype))
    recs = make_records(tok, args.n_examples, args.n_tokens, chat=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cfg = lambda b: EvalConfig(batch_size=b, max_new_tokens=args.max_new_tokens, logprob=args.logprob, n_boot=10)
    evaluate_loaded(model, tok, recs[: min(2, len(recs))], cfg(sizes[0]), progress=False)  # warm-up
    results = {}
    for b in sizes:
        rates, cpu_rates, acc, mean_tokens = [], [], None, None
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            df, _ = evaluate_loaded(model, tok, recs, cfg(b), progress=False)
            rates.append(len(recs) / (time.perf_counter() - t0))
            # examples per CPU-second of this process: less sensitive to other load on a shared machine
            cpu_rates.append(len(recs) / (time.process_time() - c0))
            acc = float(df["subspan_acc"].mean())
            mean_tokens = float(df["n_prompt_tokens"].mean())
        results[b] = {
            "examples_per_s": statistics.median(rates),
            "runs": rates,
            "examples_per_cpu_s": statistics.median(cpu_rates),
            "subspan_acc": acc,
            "mean_prompt_tokens": mean_tokens,
        }
    base = results[sizes[0]]["examples_per_s"]
    base_cpu = results[sizes[0]]["examples_per_cpu_s"]
    print(
        json.dumps(
            {
                "bench": "eval_speed",
                "model": args.model,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "n_examples": len(recs),
                "n_tokens": args.n_tokens,
                "logprob": args.logprob,
                "baseline_batch_size": sizes[0],
                "load_avg_1min_at_end": os.getloadavg()[0],  # other processes on the machine skew CPU figures
                "results": {
                    str(b): {
                        **r,
                        "ratio_vs_baseline": r["examples_per_s"] / base,
                        "cpu_ratio_vs_baseline": r["examples_per_cpu_s"] / base_cpu,
                    }
                    for b, r in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
