"""`needlework knockout` and `needlework patch`: thin wrappers over `run_knockout` and `run_patch`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _model_cfg(name: str, adapter: Optional[Path], device: str, dtype: str, rope_theta: Optional[float] = None,
               max_position_embeddings: Optional[int] = None):
    from needlework.models.load import ModelConfig

    return ModelConfig(name=name, adapter=str(adapter) if adapter else None, device=device, dtype=dtype,
                       rope_theta=rope_theta, max_position_embeddings=max_position_embeddings)


ADAPTER_HELP = "LoRA adapter: a `needlework train` output folder or its adapter/ (its saved RoPE settings apply)."
ROPE_HELP = "RoPE base (default: the adapter's saved value; a different value is an error)."
POSITIONS_HELP = "Position limit (default: the adapter's saved value)."


def _eval_cfg(batch_size: int, limit: Optional[int], chat: Optional[bool], max_new_tokens: Optional[int]):
    from needlework.evaluate.evaluate import EvalConfig

    return EvalConfig(batch_size=batch_size, limit=limit, chat=chat, max_new_tokens=max_new_tokens, logprob=False)


def knockout_cmd(
    model: str = typer.Option("smollm2", "--model", "-m", help="Hub id, local folder, .gguf file, or smollm2."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help=ADAPTER_HELP),
    data: Path = typer.Option(..., "--data", "-d", help="Records to evaluate (JSONL)."),
    heads: Optional[Path] = typer.Option(None, "--heads", help="Head scores: a `heads score` output folder (heads.parquet) or a Wu et al. JSON."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Knock out the top-K heads (default 10)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Knock out every head scoring above T."),
    head_list: Optional[str] = typer.Option(None, "--list", help="Explicit heads LAYER-HEAD,..., e.g. 17-3,18-0."),
    mode: str = typer.Option("zero", "--mode", help="zero | mean | uniform."),
    random_seeds: int = typer.Option(5, "--random-seeds", min=0, help="Layer-matched random control sets (seeds 0..N-1)."),
    mean_reference: Optional[Path] = typer.Option(None, "--mean-reference", help="Records for the `mean` mode's head means (default: --data)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (summary.json, per_example.parquet, knockout.png)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Examples per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N records."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Generation budget (default per task)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Use the chat template (default: when the tokenizer has one, as train and evaluate)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    rope_theta: Optional[float] = typer.Option(None, "--rope-theta", help=ROPE_HELP),
    max_position_embeddings: Optional[int] = typer.Option(None, "--max-position-embeddings", help=POSITIONS_HELP),
) -> None:
    """Ablate a head set during evaluation and compare with layer-matched random heads and no ablation.

    Example:

        needlework knockout --model smollm2 --data data/mdqa.jsonl --heads runs/heads --top 10 --random-seeds 5 --out runs/ko

    A fine-tuned model (the `needlework train` output folder; its RoPE settings apply):

        needlework knockout --model smollm2 --adapter runs/train_real --data data/mdqa.jsonl --heads runs/heads_real --out runs/ko_ft

    With explicit heads and the uniform mode:

        needlework knockout --data data/mdqa.jsonl --list 17-3,19-0 --mode uniform --out runs/ko_list
    """
    from needlework.errors import NeedleworkError
    from needlework.interventions.knockout import KnockoutConfig, run_knockout

    if sum(x is not None for x in (top, threshold, head_list)) > 1:
        raise NeedleworkError("give only one of --top, --threshold, --list", "e.g. --top 10")
    if heads is None and head_list is None:
        raise NeedleworkError("no heads given", "pass --heads SCORES with --top/--threshold, or --list L-H,...")
    cfg = KnockoutConfig(top=top if top is not None else 10, threshold=threshold, heads=head_list, mode=mode,
                         random_seeds=random_seeds, mean_reference=str(mean_reference) if mean_reference else None,
                         eval=_eval_cfg(batch_size, limit, chat, max_new_tokens))
    summary = run_knockout(_model_cfg(model, adapter, device, dtype, rope_theta, max_position_embeddings), data, heads if head_list is None else None, cfg, out)
    for name, c in summary["conditions"].items():
        parts = []
        for task, t in c["tasks"].items():
            m = t["metrics"][t["primary"]]
            parts.append(f"{task} {t['primary']} {m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]")
        typer.echo(f"{name:>10} ({c['n_heads']} heads): " + "; ".join(parts))
    typer.echo(f"wrote {out / 'summary.json'}, {out / 'per_example.parquet'}, {out / 'knockout.png'}")


def patch_cmd(
    source: str = typer.Option(..., "--source", help="Source model (e.g. trained on real data)."),
    source_adapter: Optional[Path] = typer.Option(None, "--source-adapter", help="Source LoRA adapter (a `needlework train` output folder or its adapter/)."),
    target: str = typer.Option(..., "--target", help="Target model (e.g. trained on a synthetic variant)."),
    target_adapter: Optional[Path] = typer.Option(None, "--target-adapter", help="Target LoRA adapter (a `needlework train` output folder or its adapter/)."),
    data: Path = typer.Option(..., "--data", "-d", help="Records to evaluate (JSONL)."),
    heads_source: Optional[Path] = typer.Option(None, "--heads-source", help="Source head scores (folder or Wu et al. JSON)."),
    heads_target: Optional[Path] = typer.Option(None, "--heads-target", help="Target head scores (folder or Wu et al. JSON)."),
    head_set: str = typer.Option("intersection", "--set", help="intersection | complement | random | all (several comma-separated: one pass) | L-H,..."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Retrieval heads = each model's top-K (default 10)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Retrieval heads = heads scoring above T."),
    random_seeds: int = typer.Option(3, "--random-seeds", min=1, help="Random sets for --set random (seeds 0..N-1)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (summary.json, per_example.parquet, patch.csv, patch.md)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Examples per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N records."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Generation budget (default per task)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Use the chat template (default: when the tokenizer has one, as train and evaluate)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    rope_theta: Optional[float] = typer.Option(None, "--rope-theta", help=ROPE_HELP),
    max_position_embeddings: Optional[int] = typer.Option(None, "--max-position-embeddings", help=POSITIONS_HELP),
) -> None:
    """Patch the source's head outputs into the target (lockstep greedy decoding) and score the target before and after.

    Example (two adapters of one base; the base is loaded once):

        needlework patch --source smollm2 --source-adapter runs/train_real --target smollm2 --target-adapter runs/train_sym
            --data data/mdqa.jsonl --heads-source runs/heads_real --heads-target runs/heads_sym --set complement --top 10 --out runs/patch
    """
    from needlework.errors import NeedleworkError
    from needlework.interventions.patch import PatchConfig, run_patch

    if top is not None and threshold is not None:
        raise NeedleworkError("give only one of --top, --threshold", "e.g. --top 10")
    cfg = PatchConfig(set=head_set, top=top if top is not None else 10, threshold=threshold, random_seeds=random_seeds,
                      eval=_eval_cfg(batch_size, limit, chat, max_new_tokens))
    summary = run_patch(_model_cfg(source, source_adapter, device, dtype, rope_theta, max_position_embeddings),
                        _model_cfg(target, target_adapter, device, dtype, rope_theta, max_position_embeddings),
                        data, heads_source, heads_target, cfg, out)
    for r in summary["table"]:
        typer.echo(f"{r['task']} {r['condition']:>13}: {r['score']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]  delta {r['delta']:+.3f}")
    typer.echo(f"wrote {out / 'patch.md'}, {out / 'patch.csv'}, {out / 'summary.json'}, {out / 'per_example.parquet'}")


def register(app: typer.Typer) -> None:
    app.command("knockout")(knockout_cmd)
    app.command("patch")(patch_cmd)
