"""`needlework knockout` and `needlework patch`: thin wrappers over `run_knockout` and `run_patch`.

Their options are KnockoutConfig's, PatchConfig's, EvalConfig's and ModelConfig's fields
(`needlework.cli_options`); the head-set options are collected as given, so that a conflict between
--top, --threshold and --list is an error rather than a silent override."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from needlework.cli_options import MODEL, MODEL_SHARED, Options, with_options
from needlework.errors import NeedleworkError
from needlework.evaluate.config import EvalConfig
from needlework.interventions.config import KnockoutConfig, PatchConfig
from needlework.models.load import ModelConfig

# evaluation under an intervention: generation only (no teacher-forced log-probabilities)
EVAL = Options(
    EvalConfig,
    fields=("batch_size", "limit", "max_new_tokens", "chat"),
    minimum={"limit": 1, "max_new_tokens": 1},
    help={"batch_size": "examples per forward pass, or auto (as many as fit on the GPU)", "limit": "use only the first N records"},
)
KNOCKOUT = Options(
    KnockoutConfig,
    given_only=True,
    prefix="ko_",
    fields=("top", "threshold", "heads", "criterion", "mode", "random_seeds", "mean_reference"),
    flags={"heads": ("--list",)},
    minimum={"top": 1, "random_seeds": 0},
    help={
        "heads": "explicit heads LAYER-HEAD,..., e.g. 17-3,18-0",
        "top": "knock out the top-K heads",
        "threshold": "knock out every head scoring above T",
        "criterion": "rank heads by this criterion of a folder scored with several (heads score --criteria; default: its --score)",
    },
)
PATCH = Options(
    PatchConfig,
    given_only=True,
    fields=("set", "top", "threshold", "criterion", "random_seeds", "random_like"),
    minimum={"top": 1, "random_seeds": 1},
    help={
        "set": "intersection | complement | random | all (several comma-separated: one pass) | L-H,...",
        "top": "retrieval heads = each model's top-K",
        "threshold": "retrieval heads = heads scoring above T",
        "criterion": "rank heads by this criterion of folders scored with several (heads score --criteria; default: their --score)",
        "random_like": "each (a size- and layer-matched control per intersection/complement) | complement | intersection",
    },
)


def _one_of(given: dict[str, Any], flags: dict[str, str]) -> None:
    if sum(k in given for k in flags) > 1:
        raise NeedleworkError(f"give only one of {', '.join(flags.values())}", "e.g. --top 10")


@with_options(model=MODEL, given=KNOCKOUT, ev=EVAL)
def knockout_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Records to evaluate (JSONL)."),
    heads: Path | None = typer.Option(None, "--heads", help="Head scores: a `heads score` output folder or a Wu et al. JSON."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: per-example scores, a summary per condition and a bar chart."),
    model: ModelConfig = MODEL,
    given: dict[str, Any] = KNOCKOUT,
    ev: EvalConfig = EVAL,
) -> None:
    """Ablate a head set during evaluation and compare with layer-matched random heads and no ablation.

    Example:

        needlework knockout --model smollm2 --data data/mdqa.jsonl --heads runs/heads --top 10 --random-seeds 5 --out runs/ko

    A fine-tuned model (the `needlework train` output folder; its RoPE settings apply):

        needlework knockout --model smollm2 --adapter runs/train_real --data data/mdqa.jsonl --heads runs/heads_real --out runs/ko_ft

    With explicit heads and the uniform mode:

        needlework knockout --data data/mdqa.jsonl --list 17-3,19-0 --mode uniform --out runs/ko_list
    """
    from needlework.interventions.knockout import run_knockout

    _one_of(given, {"top": "--top", "threshold": "--threshold", "heads": "--list"})
    if heads is None and "heads" not in given:
        raise NeedleworkError("no heads given", "pass --heads SCORES with --top/--threshold, or --list L-H,...")
    cfg = KnockoutConfig(**given, eval=dataclasses.replace(ev, logprob=False))
    result = run_knockout(model, data, heads if cfg.heads is None else None, cfg, out)
    for name, c in result.summary["conditions"].items():
        parts = []
        for task, t in c["tasks"].items():
            m = t["metrics"][t["primary"]]
            parts.append(f"{task} {t['primary']} {m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]")
        typer.echo(f"{name:>10} ({c['n_heads']} heads): " + "; ".join(parts))
    typer.echo(f"wrote {result.path}")


@with_options(shared=MODEL_SHARED, given=PATCH, ev=EVAL)
def patch_cmd(
    source: str = typer.Option(..., "--source", help="Source model (e.g. trained on real data)."),
    source_adapter: str | None = typer.Option(
        None, "--source-adapter", help="Source LoRA adapter (a `needlework train` output folder or its adapter/)."
    ),
    target: str = typer.Option(..., "--target", help="Target model (e.g. trained on a synthetic variant)."),
    target_adapter: str | None = typer.Option(
        None, "--target-adapter", help="Target LoRA adapter (a `needlework train` output folder or its adapter/)."
    ),
    data: Path = typer.Option(..., "--data", "-d", help="Records to evaluate (JSONL)."),
    heads_source: Path | None = typer.Option(None, "--heads-source", help="Source head scores (folder or Wu et al. JSON)."),
    heads_target: Path | None = typer.Option(None, "--heads-target", help="Target head scores (folder or Wu et al. JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: per-example scores, a summary, and the table as CSV and Markdown."),
    shared: ModelConfig = MODEL_SHARED,
    given: dict[str, Any] = PATCH,
    ev: EvalConfig = EVAL,
) -> None:
    """Patch the source's head outputs into the target (lockstep greedy decoding) and score the target before and after.

    Example (two adapters of one base; the base is loaded once):

        needlework patch --source smollm2 --source-adapter runs/train_real --target smollm2 --target-adapter runs/train_sym
            --data data/mdqa.jsonl --heads-source runs/heads_real --heads-target runs/heads_sym --set complement --top 10 --out runs/patch
    """
    from needlework.interventions.patch import run_patch

    _one_of(given, {"top": "--top", "threshold": "--threshold"})
    cfg = PatchConfig(**given, eval=dataclasses.replace(ev, logprob=False))
    result = run_patch(
        dataclasses.replace(shared, name=source, adapter=source_adapter),
        dataclasses.replace(shared, name=target, adapter=target_adapter),
        data,
        heads_source,
        heads_target,
        cfg,
        out,
    )
    for r in result.summary["table"]:
        typer.echo(f"{r['task']} {r['condition']:>13}: {r['score']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]  delta {r['delta']:+.3f}")
    typer.echo(f"wrote {result.path}")


def register(app: typer.Typer) -> None:
    app.command("knockout")(knockout_cmd)
    app.command("patch")(patch_cmd)
