"""The `heads score` stage: load the model and data, score heads, write one result directory.

A result directory is named `<model>[-<adapter>]-<data file>-<hash of its inputs>` (the hash
covers the model config and adapter files, the data file's hash and the score config), so a re-run
with other inputs writes a NEW directory and one with identical inputs finds the finished one (or
overwrites it with `force`): results are never merged.

The result is a `needlework.artifacts.HeadScores`: per_example (example_id, layer, head, hits,
n_steps, span_tokens, score, success, kept, answer, n_spans_located, n_citing_docs), heads (layer,
head, mean, std, n), meta (`model_config` as loaded, with the adapter's saved RoPE settings
applied; `shape`; data hash, `options` with `chat` and `match` resolved, `trained_chat` (the
adapter's training rendering, or null), counts, skipped ids with reasons, `span_coverage`).
`score_result` builds it from a model config and records; `run_score` (the CLI) and the study's
score stage both write what it returns, so every score folder has the same contents.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from needlework.artifacts import HeadScores
from needlework.errors import NeedleworkError
from needlework.heads.config import ScoreConfig
from needlework.io import hash_file, hash_obj

log = logging.getLogger(__name__)  # the library logs; the CLI shows needlework's log on stderr


def _adapter_hash(adapter: str | None) -> str | None:
    if not adapter:
        return None
    files = sorted(p for p in Path(adapter).glob("adapter_*") if p.is_file())
    return hash_obj({p.name: hash_file(p) for p in files})


def inputs_key(model_cfg, data_hash: str, cfg: ScoreConfig) -> dict:
    """Everything the scores depend on (the directory name hashes it)."""
    mc = asdict(model_cfg)
    return {"model_config": mc, "adapter_hash": _adapter_hash(mc.get("adapter")), "data_hash": data_hash, "score": asdict(cfg)}


def _log_score_summary(res, cfg: ScoreConfig, reasons: dict[str, int], n_failed: int, n_scored: int) -> None:
    """Log `run_score`'s span coverage, skipped records and (generate mode) success-gate failures."""
    cov = res.coverage
    if cfg.score != "output" and cov.get("n_citing_docs") and (cfg.score == "insight" or cov["n_spans_located"] < cov["n_citing_docs"]):
        log.warning(
            f"heads: {cfg.score} spans located in {cov['n_spans_located']} of {cov['n_citing_docs']} citing documents "
            f"({cov['fraction']:.1%}; {cov['n_records_partial']} records with a document unlocated)"
        )
    if res.skipped:
        log.warning(
            f"heads: skipped {len(res.skipped)} of {res.n_examples} records: " + ", ".join(f"{n} {why}" for why, n in reasons.items())
        )
    if cfg.mode == "generate":
        log.log(
            logging.WARNING if n_failed else logging.INFO,
            f"heads: {n_failed} of {n_scored} generated answers fail the success gate"
            + ("" if cfg.keep_failed else " (excluded from the head means)"),
        )


def score_result(model_cfg, records, cfg: ScoreConfig, data_hash: str | None = None) -> HeadScores:
    """Load the model (the adapter checked and its saved settings applied), score heads on
    `records`, and return the HeadScores with the meta every score folder carries."""
    from needlework.models.load import load_model, resolve_model_config

    cfg.check()
    model_cfg = resolve_model_config(model_cfg)
    model, tok = load_model(model_cfg)
    return score_loaded(model, tok, model_cfg, records, cfg, data_hash)


def score_loaded(
    model, tok, model_cfg, records, cfg: ScoreConfig, data_hash: str | None = None, rendered: dict | None = None
) -> HeadScores:
    """`score_result` on a model already in memory, which `model_cfg` (resolved) describes: the
    same scores and meta as loading `model_cfg` would give. Training probes its snapshots this
    way, on the model it trains (`study.stages`), without loading it again, and without rendering
    the records again (`rendered`: `score_heads`' cache, kept across its calls)."""
    import pandas as pd

    from needlework.heads.score import score_heads
    from needlework.models.load import check_rendering
    from needlework.models.sites import model_shape

    cfg.check()
    data_hash = data_hash or hash_obj([r.to_dict() for r in records])
    used = cfg.resolved(tok)  # chat and match as scored (score_heads resolves them the same way)
    trained_chat = check_rendering(model_cfg, used.chat, "scored")
    t0 = time.perf_counter()
    res = score_heads(model, tok, records, cfg, rendered)
    seconds = time.perf_counter() - t0
    counts = _counts(res)
    meta = {
        **inputs_key(model_cfg, data_hash, cfg),
        "model_name": model_cfg.name,
        "adapter": model_cfg.adapter,
        "rope_theta": model_cfg.rope_theta,
        "max_position_embeddings": model_cfg.max_position_embeddings,
        "options": asdict(used),
        "trained_chat": trained_chat,
        "shape": model_shape(model).to_dict(),
        **counts,
        "elapsed_s": round(seconds, 2),  # a timing: left out of the study's output hashes
    }
    out = HeadScores(heads=res.heads, per_example=res.per_example, meta=meta)
    if res.others:  # the further criteria, scored on the same records (HeadScores.criterion reads one)
        meta["criteria"] = {c: _counts(r) for c, r in res.others.items()}
        out.criteria_heads = pd.concat([r.heads.assign(criterion=c) for c, r in res.others.items()], ignore_index=True)
        out.criteria_per_example = pd.concat([r.per_example.assign(criterion=c) for c, r in res.others.items()], ignore_index=True)
    for c, r in {cfg.score: res, **res.others}.items():
        m = meta if c == cfg.score else meta["criteria"][c]
        _log_score_summary(r, used.for_criterion(c), m["skip_reasons"], m["n_failed_gate"], m["n_scored"])
    return out


def _counts(res) -> dict:
    """A ScoreResult's counts as every score folder records them (per criterion)."""
    per = res.per_example
    ex = per.drop_duplicates("example_id") if len(per) else per
    reasons: dict[str, int] = {}
    for why in res.skipped.values():
        reasons[why] = reasons.get(why, 0) + 1
    return {
        "n_records": res.n_examples,
        "n_scored": len(ex),
        "n_kept": int(ex["kept"].sum()) if len(ex) else 0,
        "n_failed_gate": int((~ex["success"].fillna(True).astype(bool)).sum()) if len(ex) else 0,
        "n_skipped": len(res.skipped),
        "skip_reasons": reasons,
        "skipped": res.skipped,
        "span_coverage": res.coverage,
    }


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.")[:n] or "x"


def result_name(model_cfg, data_path: Path, key_hash: str) -> str:
    """A result folder name people can read: <model>[-<adapter>]-<data file>-<hash of inputs>,
    e.g. `smollm2-train_real-mdqa_test-3f2a9c1e`. The hash still tells identical inputs apart."""
    model = Path(str(model_cfg.name)).name
    if model_cfg.adapter:
        a = Path(model_cfg.adapter)
        model += "+" + (a.parent.name if a.name == "adapter" else a.name)
    stem = data_path.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    return f"{_slug(model)}-{_slug(stem)}-{key_hash[:8]}"


def run_score(model_cfg, data_path: str | os.PathLike, cfg: ScoreConfig, out_dir: str | os.PathLike, force: bool = False) -> HeadScores:
    """Score heads of `model_cfg` on the records in `data_path`; returns the written HeadScores
    (its `path` is the result directory).

    Args:
        model_cfg: a `needlework.models.load.ModelConfig`.
        data_path: JSONL records.
        cfg: scoring options.
        out_dir: parent directory; the result goes to `out_dir/<model>-<data>-<hash of inputs>`.
        force: recompute even when a finished result with identical inputs exists.
    Raises:
        NeedleworkError: missing data, bad options, model that cannot be instrumented, no example left.
    """
    from needlework.data.records import read_jsonl
    from needlework.models.load import resolve_model_config

    cfg.check()
    model_cfg = resolve_model_config(model_cfg)  # the adapter checked and its saved settings applied, before loading
    data_path = Path(data_path)
    records = read_jsonl(data_path)
    data_hash = hash_file(data_path)
    out = Path(out_dir) / result_name(model_cfg, data_path, hash_obj(inputs_key(model_cfg, data_hash, cfg)))
    if HeadScores.exists(out) and not force:
        log.info("heads: identical inputs already scored in %s (use --force to recompute)", out)
        return HeadScores.read(out)
    res = score_result(model_cfg, records, cfg, data_hash)
    res.meta["data_path"] = str(data_path)
    if res.meta["n_kept"] == 0:
        raise NeedleworkError(
            f"no example of {data_path} could be scored ({res.meta['n_skipped']} skipped, {res.meta['n_failed_gate']} failed the gate)",
            "check the records' needle spans and answers (`needlework validate`), or pass --keep-failed",
        )
    res.write(out)
    return res
