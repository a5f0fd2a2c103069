"""Speed, memory and MFU of teacher-forced head scoring against its baselines, in one process.

Suites (each prints one JSON line; times are medians of --repeats runs after one warm-up):

  cpu   SmolLM2 (or --tiny) on CPU at --length tokens: our teacher-forced scoring of one example
        vs the slow eager reference (eager attention, output_attentions=True, argmax per answer
        row) -- ratio `speedup` (issue: >= 2x).
        python benchmarks/score_speed.py --suite cpu --length 1536
  gpu   Llama-3-8B-shaped random model in bf16 (built on `meta`, materialised on the GPU) at
        --length tokens (default 32768) with a --answer-len (16) token answer:
          plain    SDPA forward, no KV cache, LM head on the last position only
          score    our teacher-forced scoring (one forward of the trunk + row probes)
          wu       Wu et al.'s procedure: SDPA prefill of the prompt with a KV cache, then eager
                   decoding of the answer tokens with output_attentions at every step
        ratios score/plain, wu/score (time) and peak-memory score/plain, and the model FLOP
        utilisation of scoring: FLOPs = 2 * N * T + 2 * L * T^2 * d_model  (N = parameters without
        the embedding and LM head; the attention term is 2 matmuls (QK^T, AV) x 2 FLOPs per MAC x
        L layers x T^2/2 causal pairs x d_model), divided by time and --peak-tflops (H200 dense
        bf16: 989). Then at --batch-length (4096): batched scoring (--batch-size per forward) vs
        Wu's one-at-a-time procedure, in examples per second.
        --find-max doubles the length from --length up to --max-length (524288) until a CUDA OOM,
        for scoring and for the plain forward (each length is one forward; 512K takes minutes).
        python benchmarks/score_speed.py --suite gpu --find-max
  --tiny  the same code paths with a tiny Llama on CPU (lengths scaled down), for testing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from needlework.heads.score import Example, ScoreConfig, score_examples


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


CPU_TIMES: dict[int, float] = {}  # id(fn) -> median process CPU seconds of the last `timed` call


def timed(fn, dev, repeats: int) -> tuple[float, float]:
    """(median wall seconds, peak GiB) of `fn()` after one warm-up. The median process CPU time
    goes to CPU_TIMES[id(fn)]: on a shared, oversubscribed CPU it is the steadier figure."""
    fn()
    times, cpu, peak = [], [], 0.0
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if dev.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(dev) / 2**30)
    CPU_TIMES[id(fn)] = statistics.median(cpu)
    return statistics.median(times), peak


def build_model(kind: str, dev, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    if kind == "smollm2":
        from needlework.models.load import load_model

        model, _ = load_model("smollm2")
        return model.to(dev).eval()
    if kind == "tiny":
        cfg = LlamaConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=512,
            max_position_embeddings=1 << 20,
        )
    else:  # Llama-3-8B shape
        cfg = LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=1 << 20,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.to_empty(device=dev)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0) if p.ndim == 1 else p.normal_(0.0, 0.02)
    model.model.rotary_emb = LlamaRotaryEmbedding(cfg).to(dev)  # buffers were left empty by to_empty
    model.set_attn_implementation("sdpa")
    return model.eval()


def example(seed: int, n_tokens: int, answer_len: int, vocab: int) -> Example:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (n_tokens,), generator=g).tolist()
    p = n_tokens - answer_len
    span = list(range(p // 2, p // 2 + answer_len))
    ids[p:] = ids[p // 2 : p // 2 + answer_len]  # the answer is written in the needle span
    return Example(f"b{seed}", ids[:p], ids[p:], span)


def n_params(model) -> int:
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def flops(model, T: int) -> float:
    c = model.config
    return 2 * n_params(model) * T + 2 * c.num_hidden_layers * T * T * c.hidden_size


@torch.no_grad()
def plain_forward(model, ids):
    return model(ids, use_cache=False, logits_to_keep=1).logits


@torch.no_grad()
def wu_procedure(model, e: Example, dev):
    """SDPA prefill with a cache, then eager decoding of the answer with output_attentions,
    taking each head's argmax at every step (Wu et al.'s retrieval_head_detection loop)."""
    # the query emitting answer token k sits at the previous token: prefill all but the last prompt
    # token, then decode it and the answer's first m-1 tokens, one probed step per answer token
    prompt = torch.tensor([e.prompt_ids[:-1]], device=dev)
    out = model(prompt, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    model.set_attn_implementation("eager")
    try:
        for t in [e.prompt_ids[-1]] + e.answer_ids[:-1]:
            tok = torch.tensor([[t]], dtype=torch.long, device=dev)
            out = model(tok, past_key_values=cache, use_cache=True, output_attentions=True, logits_to_keep=1)
            cache = out.past_key_values
            _ = [att[0, :, -1].argmax(-1).tolist() for att in out.attentions]
    finally:
        model.set_attn_implementation("sdpa")


@torch.no_grad()
def eager_reference(model, e: Example, dev):
    """The slow reference of the tests: eager attention, output_attentions over the whole sequence."""
    ids = torch.tensor([e.prompt_ids + e.answer_ids], device=dev)
    model.set_attn_implementation("eager")
    try:
        att = model(ids, output_attentions=True).attentions
        p = len(e.prompt_ids)
        return [a[0, :, p - 1 : p - 1 + len(e.answer_ids)].argmax(-1) for a in att]
    finally:
        model.set_attn_implementation("sdpa")


def score_one(model, exs, batch_size=1):
    return score_examples(model, exs, ScoreConfig(mode="teacher", batch_size=batch_size))


def suite_cpu(args, dev, dtype) -> dict:
    model = build_model("tiny" if args.tiny else "smollm2", dev, dtype)
    vocab = model.config.vocab_size
    e = example(0, args.length, args.answer_len, vocab)
    f_score, f_ref = (lambda: score_one(model, [e])), (lambda: eager_reference(model, e, dev))
    t_score, _ = timed(f_score, dev, args.repeats)
    t_ref, _ = timed(f_ref, dev, args.repeats)
    c_score, c_ref = CPU_TIMES[id(f_score)], CPU_TIMES[id(f_ref)]
    return {
        "suite": "cpu",
        "model": "tiny" if args.tiny else "smollm2",
        "tokens": args.length,
        "answer_len": args.answer_len,
        "score_s": round(t_score, 4),
        "eager_reference_s": round(t_ref, 4),
        "speedup": round(t_ref / t_score, 2),
        "score_cpu_s": round(c_score, 4),
        "eager_reference_cpu_s": round(c_ref, 4),
        "speedup_cpu_time": round(c_ref / c_score, 2),
        "threads": torch.get_num_threads(),
    }


def _fits(fn) -> bool:
    try:
        fn()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def suite_gpu(args, dev, dtype) -> dict:
    model = build_model("tiny" if args.tiny else "llama3-8b", dev, dtype)
    vocab = model.config.vocab_size
    T = args.length
    e = example(0, T, args.answer_len, vocab)
    res = {"suite": "gpu", "model": "tiny" if args.tiny else "llama3-8b-shape", "dtype": str(dtype)}
    if args.find_max_only:
        args.find_max = True
        return _find_max(args, model, vocab, dev, res)
    ids = torch.tensor([e.prompt_ids + e.answer_ids], device=dev)
    t_plain, m_plain = timed(lambda: plain_forward(model, ids), dev, args.repeats)
    t_score, m_score = timed(lambda: score_one(model, [e]), dev, args.repeats)
    t_wu, m_wu = timed(lambda: wu_procedure(model, e, dev), dev, args.repeats)
    peak = args.peak_tflops * 1e12
    res.update(
        {
            "tokens": T,
            "answer_len": args.answer_len,
            "plain_s": round(t_plain, 4),
            "score_s": round(t_score, 4),
            "wu_s": round(t_wu, 4),
            "score_over_plain": round(t_score / t_plain, 3),
            "wu_over_score": round(t_wu / t_score, 3),
            "wu_over_plain": round(t_wu / t_plain, 3),
            "peak_gib": {"plain": round(m_plain, 2), "score": round(m_score, 2), "wu": round(m_wu, 2)},
            "peak_score_over_plain": round(m_score / m_plain, 3) if m_plain else None,
            "mfu_score": round(flops(model, T) / t_score / peak, 4),
            "mfu_plain": round(flops(model, T) / t_plain / peak, 4),
        }
    )
    # batched throughput at a short length
    B, n = args.batch_size, args.batch_size * 2
    exs = [example(i, args.batch_length - (i % 3) * (args.batch_length // 32), args.answer_len, vocab) for i in range(n)]  # mixed lengths
    t_b, _ = timed(lambda: score_one(model, exs, batch_size=B), dev, args.repeats)
    t_w, _ = timed(lambda: [wu_procedure(model, x, dev) for x in exs], dev, args.repeats)
    res.update(
        batch_tokens=args.batch_length,
        batch_size=B,
        batched_ex_per_s=round(n / t_b, 3),
        wu_ex_per_s=round(n / t_w, 3),
        batched_over_wu=round(t_w / t_b, 3),
    )
    return _find_max(args, model, vocab, dev, res)


def _find_max(args, model, vocab, dev, res) -> dict:
    if args.find_max:
        best = {"score": 0, "plain": 0}
        L = args.length
        while L <= args.max_length and (best["score"] == L // 2 or best["plain"] == L // 2 or L == args.length):
            x = example(1, L, args.answer_len, vocab)
            xi = torch.tensor([x.prompt_ids + x.answer_ids], device=dev)
            for name, fn in (("score", lambda x=x: score_one(model, [x])), ("plain", lambda xi=xi: plain_forward(model, xi))):
                if (best[name] == L // 2 or L == args.length) and _fits(fn):
                    best[name] = L
            del xi
            L *= 2
        res.update(max_tokens_score=best["score"], max_tokens_plain=best["plain"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny Llama on CPU, short lengths (a smoke test)")
    ap.add_argument("--length", type=int, default=None, help="tokens (cpu: 1536; gpu: 32768; tiny: 256)")
    ap.add_argument("--answer-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-length", type=int, default=None, help="gpu: tokens per example for throughput (4096)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--find-max", action="store_true")
    ap.add_argument("--find-max-only", action="store_true", help="gpu: skip the timings, only find the longest length")
    ap.add_argument("--max-length", type=int, default=None, help="find-max upper bound (524288; tiny: 2048)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak dense bf16 TFLOP/s (H200: 989)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared, loaded machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if args.tiny:
        args.length = args.length or 256
        args.batch_length = args.batch_length or 128
        args.max_length = args.max_length or 2048
        args.batch_size = min(args.batch_size, 4)
    else:
        args.length = args.length or (1536 if args.suite == "cpu" else 32768)
        args.batch_length = args.batch_length or 4096
        args.max_length = args.max_length or 524288
    res = (suite_cpu if args.suite == "cpu" else suite_gpu)(args, dev, dtype)
    res["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(json.dumps(res))


if __name__ == "__main__":
    main()
