"""Look at data before training on it: `validate` (every invariant violation, with line numbers),
`inspect` (counts per task/variant, token-length and depth histograms, rendered samples) and
`demo` (a small dataset of every task x variant, validated and summarised)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from needlework.data.records import Record, validate_record, write_jsonl
from needlework.errors import NeedleworkError

VARIANTS: list[tuple[str, str, str]] = [
    (task, concept, context)
    for task in ("mdqa", "musique", "summhay")
    for concept in ("high", "low", "symbolic")
    for context in ("high", "low")
] + [("kv", "symbolic", "high"), ("kv", "symbolic", "low")]


@dataclass
class Problem:
    line: int
    id: str
    problem: str

    def __str__(self) -> str:
        return f"line {self.line} (id {self.id}): {self.problem}"


def validate_file(path: str | Path) -> tuple[int, list[Problem]]:
    """Check every line of a JSONL file; returns (records read, every problem found).

    Unlike `read_jsonl(validate=True)` it does not stop at the first bad line.
    """
    path = Path(path)
    if not path.exists():
        raise NeedleworkError(f"{path}: no such file", "check the path, or create it with `needlework generate`")
    n, problems = 0, []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            try:
                rec = Record.from_dict(json.loads(line))
            except json.JSONDecodeError as e:
                problems.append(Problem(lineno, "?", f"malformed JSON ({e.msg} at column {e.colno})"))
                continue
            except ValueError as e:
                problems.append(Problem(lineno, "?", str(e)))
                continue
            problems += [Problem(lineno, rec.id, p) for p in validate_record(rec)]
    return n, problems


def _depth(rec: Record, rendered) -> float | None:
    if "depth_frac" in rec.meta:
        return float(rec.meta["depth_frac"])
    starts = [s[0] for s in rendered.needle_spans if s is not None] if rendered else []
    return float(np.mean(starts)) / rendered.prompt_len if starts else None


def summarize(records: list[Record], tokenizer=None) -> list[dict]:
    """One row per record: variant, token count (rendered when a tokenizer is given), depth, docs."""
    from needlework.data.render import render

    rows = []
    for r in records:
        rendered = render(r, tokenizer) if tokenizer is not None else None
        rows.append(
            {
                "task": r.task,
                "concept": r.concept,
                "context": r.context,
                "n_tokens": rendered.n_tokens if rendered else r.meta.get("n_tokens"),
                "depth_frac": _depth(r, rendered),
                "n_docs": len(r.documents),
            }
        )
    return rows


def group_rows(rows: list[dict]) -> list[dict]:
    """Per (task, concept, context): n, mean tokens, mean depth, mean number of documents."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["concept"], row["context"]), []).append(row)
    out = []
    for key, rs in groups.items():
        toks = [x["n_tokens"] for x in rs if x["n_tokens"] is not None]
        depths = [x["depth_frac"] for x in rs if x["depth_frac"] is not None]
        out.append(
            {
                "task": key[0],
                "concept": key[1],
                "context": key[2],
                "n": len(rs),
                "mean_tokens": float(np.mean(toks)) if toks else None,
                "mean_depth": float(np.mean(depths)) if depths else None,
                "mean_docs": float(np.mean([x["n_docs"] for x in rs])),
            }
        )
    return out


def text_histogram(values: list[float], bins: int = 10, width: int = 40, lo: float | None = None, hi: float | None = None) -> str:
    """A plain-text histogram, one line per bin (`[lo, hi) ##### count`)."""
    vals = np.array([v for v in values if v is not None], dtype=float)
    if vals.size == 0:
        return "(no values)"
    lo = float(vals.min()) if lo is None else lo
    hi = float(vals.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    fmt = (lambda x: f"{x:8.2f}") if hi - lo <= 10 else (lambda x: f"{x:8.0f}")
    return "\n".join(f"[{fmt(edges[i])}, {fmt(edges[i + 1])}) {'#' * round(width * c / top):<{width}} {c}" for i, c in enumerate(counts))


def sample_text(rec: Record, max_chars: int = 160) -> str:
    """A short rendering of one record: question, answer, and each needle in its context."""
    from needlework.data.render import answer_text

    lines = [
        f"id {rec.id}  [{rec.task} {rec.concept}/{rec.context}]  {len(rec.documents)} documents",
        f"  question: {rec.question[:max_chars]}",
        f"  answer:   {answer_text(rec)[:max_chars]}",
    ]
    for i, n in enumerate(rec.needles[:4]):
        text = rec.documents[n.doc].text
        a, b = max(0, n.start - 60), min(len(text), n.end + 60)
        lines.append(f"  needle {i} ({n.role}) in document [{n.doc + 1}]: …{text[a : n.start]}«{text[n.start : n.end]}»{text[n.end : b]}…")
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "runs/demo-data", n: int = 4, length: int = 2048, tokenizer: str = "smollm2", seed: int = 0
) -> list[dict]:
    """Generate n records of every task x variant into out_dir, validate them, and summarise.

    Returns one row per variant (task, concept, context, n, mean_tokens, mean_depth, problems, file).
    """
    from needlework.data.generate import GenerateConfig, generate
    from needlework.models.load import load_tokenizer

    tok = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    rows = []
    for task, concept, context in VARIANTS:
        cfg = GenerateConfig(task=task, concept=concept, context=context, n=n, length=length, tokenizer=tokenizer, seed=seed)
        recs = generate(cfg, tokenizer=tok)
        path = out_dir / f"{task}-{concept}-{context}.jsonl"
        write_jsonl(path, recs)
        _, problems = validate_file(path)
        g = group_rows(summarize(recs))[0]
        g.update(problems=len(problems), file=str(path))
        rows.append(g)
    return rows
