"""`needlework train`: a thin layer over `needlework.train.sft.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

HELP = """Fine-tune a model on records, the loss on answer tokens only (LoRA on q,k,v,o by default).

Writes OUT/log.jsonl, OUT/train_config.json, OUT/checkpoints/step-N and OUT/adapter (LoRA) or
OUT/model (attn/full). Rerunning with the same --out resumes from the newest checkpoint.
Beside the weights, needlework_model_config.json keeps the base model, its RoPE settings and the
rendering (chat template or not): `evaluate`, `heads score`, `knockout` and `patch` take OUT as
--adapter and apply them (pass no --rope-theta there; a different value is an error).

Examples:

  needlework train --model smollm2 --data train.jsonl --eval dev.jsonl --out runs/lora --max-steps 200

  needlework train --model meta-llama/Meta-Llama-3-8B-Instruct --data long.jsonl --out runs/l3 \\
      --rope-theta 2000000 --max-length 32768 --lr 1e-4 --grad-accum 8 --save-every 100

  accelerate launch --num_processes 4 -m needlework.cli train --model M --data d.jsonl --out runs/ddp

  accelerate launch --num_processes 8 --use_fsdp --fsdp_version 2 -m needlework.cli train --model M ...
"""


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    def train_cmd(
        model: str = typer.Option("smollm2", "--model", help="hub id, local folder, .gguf file or smollm2"),
        data: Path = typer.Option(..., "--data", help="training records (JSONL)"),
        out: Path = typer.Option(..., "--out", help="output directory"),
        eval_file: Optional[Path] = typer.Option(None, "--eval", help="held-out records for periodic teacher-forced evaluation"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML file of TrainConfig keys (a `train:` section or top level)"),
        method: Optional[str] = typer.Option(None, help="lora | attn | full"),
        lora_r: Optional[int] = typer.Option(None, help="LoRA rank (default 16)"),
        lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha (default 32)"),
        targets: Optional[str] = typer.Option(None, help="comma-separated module names (default q_proj,k_proj,v_proj,o_proj)"),
        lr: Optional[float] = typer.Option(None, help="peak learning rate (default 2e-4)"),
        schedule: Optional[str] = typer.Option(None, help="cosine | linear | constant | constant_with_warmup"),
        warmup_steps: Optional[int] = typer.Option(None, help="warm-up steps"),
        epochs: Optional[float] = typer.Option(None, help="epochs (default 1)"),
        max_steps: Optional[int] = typer.Option(None, help="optimizer steps; > 0 overrides --epochs"),
        batch_size: Optional[int] = typer.Option(None, help="micro-batch rows per process"),
        grad_accum: Optional[int] = typer.Option(None, help="micro-batches per optimizer step per process"),
        max_length: Optional[int] = typer.Option(None, help="longest example in tokens (default: the model's max positions)"),
        truncate_haystack: Optional[bool] = typer.Option(None, "--truncate-haystack/--no-truncate-haystack", help="drop non-gold documents of too-long examples"),
        packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="pack short examples into rows of --pack-length tokens"),
        pack_length: Optional[int] = typer.Option(None, help="packed row length (default --max-length)"),
        chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="render with the tokenizer's chat template (default: when it has one, as evaluate and heads score)"),
        gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="recompute layer activations in backward (default on)"),
        save_attention: Optional[bool] = typer.Option(None, "--save-attention/--no-save-attention", help="with checkpointing, keep attention outputs instead of recomputing them (default on: faster at long context, 2*tokens*hidden bytes per layer)"),
        seed: Optional[int] = typer.Option(None),
        eval_every: Optional[int] = typer.Option(None, help="evaluate every N steps (and at the end)"),
        save_every: Optional[int] = typer.Option(None, help="checkpoint every N steps"),
        resume: Optional[str] = typer.Option(None, help="auto | never | a checkpoint directory"),
        rope_theta: Optional[float] = typer.Option(None, help="raise the RoPE base to extend context"),
        max_position_embeddings: Optional[int] = typer.Option(None, help="model's max positions (with --rope-theta)"),
        adapter: Optional[str] = typer.Option(None, help="LoRA adapter to continue training (a train output folder or its adapter/; its settings apply)"),
        dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16"),
        device: str = typer.Option("auto", help="auto | cpu | cuda (several processes: accelerate picks)"),
    ) -> None:
        from needlework.data.records import read_jsonl
        from needlework.models.load import ModelConfig
        from needlework.train.config import TrainConfig, load_train_config
        from needlework.train.sft import train

        given = {k: v for k, v in dict(
            method=method, lora_r=lora_r, lora_alpha=lora_alpha, targets=targets, lr=lr, schedule=schedule,
            warmup_steps=warmup_steps, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
            max_length=max_length, truncate_haystack=truncate_haystack, packing=packing, pack_length=pack_length,
            chat=chat, gradient_checkpointing=gradient_checkpointing, save_attention=save_attention, seed=seed, eval_every=eval_every,
            save_every=save_every, resume=resume).items() if v is not None}
        cfg = load_train_config(config, given) if config else TrainConfig.from_dict(given)
        mcfg = ModelConfig(name=model, dtype=dtype, device=device, rope_theta=rope_theta,
                           max_position_embeddings=max_position_embeddings, adapter=adapter)
        result = train(mcfg, read_jsonl(data), cfg, out, eval_records=read_jsonl(eval_file) if eval_file else None)
        typer.echo(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; saved {result.saved}")
        if result.eval:
            typer.echo("eval: " + ", ".join(f"{k}={v:.4f}" for k, v in result.eval.items()))
