"""Does LoRA fine-tuning on a few hundred ~1K-token synthetic examples change SmolLM2's held-out
accuracy? Measures the base model, fine-tunes with `needlework.train.sft.train`, measures again.

Metrics on the eval records (the same before and after):
  exact_tf   teacher-forced exact match: every answer token (and EOS) is the model's argmax
  loss_tf    mean NLL per answer token (teacher-forced)
  gen_acc    greedy generation (--gen-max-new tokens) contains the normalised gold answer
             (best-subspan accuracy, as MDQA scores it)

Usage (CPU, a few minutes):
  needlework generate ...  > train.jsonl / dev.jsonl   (a few hundred ~1K-token examples)
  python benchmarks/smollm2_lora_before_after.py --train train.jsonl --eval dev.jsonl --out runs/smollm2_lora
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
import time

import torch

try:  # run from a checkout without `pip install -e .` (e.g. on the GPU machine)
    import needlework  # noqa: F401
except ModuleNotFoundError:
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def normalize(s: str) -> str:
    """SQuAD-style: lower case, no punctuation or articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


@torch.no_grad()
def measure(model, tok, records, chat: bool, batch_size: int, gen_max_new: int, n_gen: int) -> dict[str, float]:
    from needlework.data.render import render
    from needlework.train.data import encode
    from needlework.train.loss import AnswerOnlyLM
    from needlework.train.sft import evaluate_answers

    model.eval()
    device = next(model.parameters()).device
    examples = [encode(r, tok, 0, chat) for r in records]
    out = evaluate_answers(AnswerOnlyLM(model), examples, batch_size, device, tok.pad_token_id or 0)
    hits = 0
    gen = records[:n_gen]
    for r in gen:
        ids = torch.tensor([render(r, tok, chat=chat, with_answer=False).input_ids], device=device)
        new = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=gen_max_new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[0, ids.shape[1] :]
        text = normalize(tok.decode(new, skip_special_tokens=True))
        hits += any(normalize(a) and normalize(a) in text for a in r.answers)
    return {
        "exact_tf": out["eval_exact"],
        "loss_tf": out["eval_loss"],
        "token_acc_tf": out["eval_token_acc"],
        "gen_acc": hits / max(len(gen), 1),
        "n_eval": len(records),
        "n_gen": len(gen),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="training records (JSONL)")
    ap.add_argument("--eval", required=True, help="held-out records (JSONL)")
    ap.add_argument("--out", default="runs/smollm2_lora")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--n-gen", type=int, default=100, help="eval records also scored by greedy generation (0: none)")
    ap.add_argument("--gen-max-new", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--chat", action="store_true", help="render with the chat template")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from needlework.data.records import read_jsonl
    from needlework.models.load import ModelConfig, load_model
    from needlework.train.config import TrainConfig
    from needlework.train.sft import train

    train_records = read_jsonl(args.train)[: args.n_train]
    eval_records = read_jsonl(args.eval)[: args.n_eval]
    model, tok = load_model(ModelConfig(name=args.model, device="cpu"))
    t0 = time.perf_counter()
    before = measure(model, tok, eval_records, args.chat, 4, args.gen_max_new, args.n_gen)
    del model
    cfg = TrainConfig(
        method="lora",
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup_ratio=0.1,
        chat=args.chat,
        seed=args.seed,
        gradient_checkpointing=False,
    )
    t1 = time.perf_counter()
    res = train(ModelConfig(name=args.model, device="cpu"), train_records, cfg, args.out)
    t2 = time.perf_counter()
    model, tok = load_model(ModelConfig(name=args.model, device="cpu", adapter=str(res.saved)))
    after = measure(model, tok, eval_records, args.chat, 4, args.gen_max_new, args.n_gen)
    print(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "model": args.model,
                "n_train": len(train_records),
                "n_eval": len(eval_records),
                "steps": res.steps,
                "final_train_loss": res.final_loss,
                "train_s": t2 - t1,
                "measure_s": (t1 - t0),
                "before": before,
                "after": after,
                "delta": {k: after[k] - before[k] for k in ("exact_tf", "loss_tf", "token_acc_tf", "gen_acc")},
                "adapter": str(res.saved),
            }
        )
    )


if __name__ == "__main__":
    main()
