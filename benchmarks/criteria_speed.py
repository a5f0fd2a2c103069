"""Cost of the head criteria (issue 14) against a plain forward, on CPU: one example of --length
tokens (10 documents, the gold one in the middle, a --question-len token question, a --answer-len
token answer), teacher mode, batch 1, SmolLM2 (or --tiny). Prints one JSON line: median wall and
process-CPU seconds of

  plain      the decoder trunk over prompt + answer (SDPA, no cache, no LM head): what teacher
             scoring cannot do without
  retrieval  needlework's teacher-forced retrieval score (argmax probes on the answer rows)
  query      the query score (mass on gold / all documents, probes on the question's rows)
  output     the output score (per-head outputs at the answer rows, direct logit attribution)
  all        all five criteria (retrieval, insight, mass, query, output) in ONE forward
             (`score_groups` with `criteria`)

and each score's ratio to `plain`. `--llama8b` runs the Llama-3-8B shape (random weights, bf16) on
the GPU instead, the issue's target: all criteria at 32K tokens within 1.3x a plain forward.

    python benchmarks/criteria_speed.py --length 1536 --repeats 5 --threads 1
    python benchmarks/criteria_speed.py --llama8b --length 32768 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from needlework.heads.score import Example, ScoreConfig, score_examples, score_groups

SCORES = ("retrieval", "query", "output")
ALL = ("retrieval", "insight", "mass", "query", "output")


def timed_together(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median wall seconds, median process CPU seconds)} of each `fns[name]()` after one
    warm-up, the functions interleaved in every repeat so that a shared machine's load drifts over
    all of them alike."""
    for fn in fns.values():
        fn()
        _sync()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            _sync()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(tiny: bool, llama8b: bool = False):
    if llama8b:  # score_speed's builder: the real shape, random weights, bf16 on the GPU
        sys.path.insert(0, str(Path(__file__).parent))
        from score_speed import build_model

        return build_model("llama8b", torch.device("cuda"), torch.bfloat16).eval()
    if not tiny:
        from needlework.models.load import load_model

        model, _ = load_model("smollm2")
        return model.eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, vocab_size=512
    )
    return LlamaForCausalLM(cfg).eval()


def example(length: int, question_len: int, answer_len: int, vocab: int) -> Example:
    g = torch.Generator().manual_seed(0)
    n_prompt = length - answer_len
    prompt = torch.randint(10, vocab, (n_prompt,), generator=g).tolist()
    docs_end = n_prompt - question_len - 4
    bounds = [1 + i * (docs_end - 1) // 10 for i in range(11)]
    gold = list(range(bounds[5], bounds[6]))
    answer = prompt[gold[10] : gold[10] + answer_len]  # copied from the gold document
    return Example(
        "bench",
        prompt,
        answer,
        gold,
        query_rows=list(range(docs_end + 2, docs_end + 2 + question_len)),
        doc_tokens=list(range(1, docs_end)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=1536)
    ap.add_argument("--question-len", type=int, default=16)
    ap.add_argument("--answer-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--llama8b", action="store_true", help="Llama-3-8B shape, random weights, bf16, on the GPU")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.tiny, args.llama8b)
    e = example(args.length, args.question_len, args.answer_len, model.config.vocab_size)
    ids = torch.tensor([e.prompt_ids + e.answer_ids], device=model.device)
    together = {c: e for c in ALL}

    @torch.no_grad()
    def plain():
        model.get_decoder()(input_ids=ids, use_cache=False)

    fns = {"plain": plain} | {score: (lambda score=score: score_examples(model, [e], ScoreConfig(score=score))) for score in SCORES}
    fns["all"] = lambda: score_groups(model, [together], ScoreConfig(score="retrieval", criteria=list(ALL[1:])))
    times = timed_together(fns, args.repeats)
    out = {
        "device": torch.cuda.get_device_name() if args.llama8b else "cpu",
        "length": args.length,
        "question_len": args.question_len,
        "answer_len": args.answer_len,
        "threads": torch.get_num_threads(),
    }
    for name, (wall, cpu) in times.items():
        out |= {f"{name}_s": round(wall, 4), f"{name}_cpu_s": round(cpu, 4)}
        if name != "plain":
            out |= {f"{name}_vs_plain": round(wall / times["plain"][0], 3), f"{name}_vs_plain_cpu": round(cpu / times["plain"][1], 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
