"""Records out to other tools: TRL's conversational `messages` and `prompt`/`completion` pairs,
RULER's jsonl, and a task folder lm-evaluation-harness runs.

Every prompt is `render.build_prompt`'s text and every chat is `render.to_messages`: the prompt and
chat structure training, head scoring and evaluation render, so an exported example is the same
example (the tests tokenize the exports with TRL and compare with `train.data.encode`).

- `messages`: `{"id", "messages": [user: prompt, assistant: answer]}` (TRL conversational language
  modelling; TRL trains on the whole chat unless `assistant_only_loss`).
- `prompt-completion`: `{"id", "prompt", "completion"}`; TRL puts the loss on the completion only,
  as needlework's training does. Text by default: the completion is `" " + answer`, as training
  tokenizes it, and TRL appends the EOS that training appends. `chat`: one user and one assistant
  message, which TRL renders with the tokenizer's chat template (the rendering of `chat: true`).
- `ruler`: `{"index", "input", "outputs", "length"}` as RULER's prepare.py writes. `outputs` are the
  answers, any of which counts (RULER's qa metric, string_match_part); records loaded from RULER
  keep RULER's own outputs.
- `lm-eval`: a folder with `<task>.yaml` (generate_until, exact match ignoring case, punctuation
  and surrounding spaces, any answer counting) and `<task>.jsonl`, which the YAML names by
  absolute path; run `lm_eval --include_path OUT --tasks <task>` (`--apply_chat_template` for the
  chat rendering).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from needlework.data.records import Record, read_jsonl
from needlework.data.render import answer_text, build_prompt, to_messages
from needlework.errors import NeedleworkError
from needlework.io import write_text

FORMATS = ("messages", "prompt-completion", "ruler", "lm-eval")


@dataclass
class ExportConfig:
    """Options of `needlework export`."""

    format: str = "messages"  # messages | prompt-completion | ruler | lm-eval
    chat: bool = False  # prompt-completion: chat messages for the tokenizer's chat template (conversational) instead of text
    tokenizer: str | None = None  # ruler: count `length` in tokens of this tokenizer (None: the records' meta n_tokens)
    task_name: str | None = None  # lm-eval: the task's name (None: needlework_<name of the output folder>)
    limit: int | None = None  # export the first N records only (None: all)

    def check(self) -> None:
        if self.format not in FORMATS:
            raise NeedleworkError(f"unknown export format {self.format!r}", f"use one of {', '.join(FORMATS)}")
        if self.limit is not None and self.limit < 1:
            raise NeedleworkError(f"--limit {self.limit} is not a positive count", "give the number of records to export, or leave it out")
        if self.task_name is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", self.task_name):
            raise NeedleworkError(
                f"--task-name {self.task_name!r} is not a task name lm-eval accepts",
                "use letters, digits, '_', '-' or '.', starting with a letter",
            )


def outputs(record: Record) -> list[str]:
    """The gold strings of a record: RULER's own `outputs` for records loaded from RULER, else the
    completion (SummHay: the cited document numbers) followed by the other answers."""
    if record.meta.get("ruler_outputs"):
        return [str(o) for o in record.meta["ruler_outputs"]]
    if record.task == "summhay":
        return [answer_text(record)]
    return list(dict.fromkeys([answer_text(record), *record.answers]))


def _prompt_completion(record: Record, chat: bool) -> dict[str, Any]:
    if chat:
        user, assistant = to_messages(record)
        return {"id": record.id, "prompt": [user], "completion": [assistant]}
    # training renders the answer as " " + answer after the prompt (render.render); TRL adds the EOS
    return {"id": record.id, "prompt": build_prompt(record)[0], "completion": " " + answer_text(record)}


def _lengths(records: list[Record], tokenizer: str | None) -> list[int]:
    """RULER's `length`: the tokens of prompt and answer, as `generate` counts them in meta n_tokens."""
    if tokenizer:
        from needlework.data.render import render
        from needlework.models.load import load_tokenizer

        tok = load_tokenizer(tokenizer)
        return [render(r, tok).n_tokens for r in records]
    missing = [r.id for r in records if not isinstance(r.meta.get("n_tokens"), int)]
    if missing:
        raise NeedleworkError(
            f"{len(missing)} record(s) have no meta n_tokens for RULER's `length` (first: {missing[0]})",
            "pass --tokenizer TOK to count the tokens of each rendered example",
        )
    return [int(r.meta["n_tokens"]) for r in records]


def export_rows(records: list[Record], cfg: ExportConfig) -> list[dict[str, Any]]:
    """One JSON object per record in `cfg.format` (lm-eval: the rows of its jsonl).

    Raises:
        NeedleworkError: an unknown format; ruler without token counts (see `_lengths`).
    """
    cfg.check()
    if cfg.format == "messages":
        return [{"id": r.id, "messages": to_messages(r)} for r in records]
    if cfg.format == "prompt-completion":
        return [_prompt_completion(r, cfg.chat) for r in records]
    if cfg.format == "ruler":
        lengths = _lengths(records, cfg.tokenizer)
        return [
            {"index": i, "input": build_prompt(r)[0], "outputs": outputs(r), "length": n} for i, (r, n) in enumerate(zip(records, lengths))
        ]
    return [{"id": r.id, "task": r.task, "prompt": build_prompt(r)[0], "answer": answer_text(r), "answers": outputs(r)} for r in records]


def lm_eval_config(task: str, data_file: Path, records: list[Record]) -> dict[str, Any]:
    """The lm-eval task config: greedy generation until a newline, exact match against any answer."""
    return {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},  # lm-eval reads it relative to its cwd: absolute
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",  # a column: the rendered prompt, as given
        "doc_to_target": "answers",  # a list: lm-eval counts a match with any of them
        "generation_kwargs": {
            "until": ["\n"],  # short answers end at a newline, as `needlework evaluate` stops
            "do_sample": False,
            "max_gen_toks": 64 if any(r.task == "summhay" for r in records) else 32,  # evaluate's budgets
        },
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": True,
                "regexes_to_ignore": [r"^\s+", r"\s+$"],
            }
        ],
        "metadata": {"version": 1.0, "source": "needlework export --format lm-eval"},
    }


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows))


def export_records(records: list[Record], out: str | os.PathLike, cfg: ExportConfig) -> Path:
    """Write `records` in `cfg.format` to `out` (a jsonl file; lm-eval: a folder); returns the file
    written (lm-eval: the task YAML).

    Raises:
        NeedleworkError: no records, a bad option, or `out` of the wrong kind (a folder for a file).
    """
    cfg.check()
    records = records[: cfg.limit] if cfg.limit else records
    if not records:
        raise NeedleworkError("no records to export", "check the input file; it holds no examples")
    out = Path(out)
    if cfg.format != "lm-eval":
        if out.is_dir():
            raise NeedleworkError(
                f"--out {out} is a folder; --format {cfg.format} writes one jsonl file", "give a file name, e.g. out.jsonl"
            )
        _write_jsonl(out, export_rows(records, cfg))
        return out
    if out.exists() and not out.is_dir():
        raise NeedleworkError(f"--out {out} is a file; --format lm-eval writes a task folder", "give a folder name, e.g. lm_eval_task/")
    task = cfg.task_name or "needlework_" + re.sub(r"[^A-Za-z0-9_]+", "_", out.resolve().name).strip("_")
    data = out / f"{task}.jsonl"
    _write_jsonl(data, export_rows(records, cfg))
    head = f"# lm-evaluation-harness task written by needlework ({len(records)} examples).\n# lm_eval --include_path {out} --tasks {task}\n"
    yaml_path = out / f"{task}.yaml"
    write_text(yaml_path, head + yaml.dump(lm_eval_config(task, data, records), Dumper=_Dumper, sort_keys=False, allow_unicode=True))
    return yaml_path


class _Dumper(yaml.SafeDumper):
    """YAML with strings holding a newline double-quoted (`until: ["\\n"]` reads as written)."""


_Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style='"' if "\n" in v else None))


def export_file(path: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig) -> tuple[Path, int]:
    """`export_records` on a JSONL file of records; returns (the file written, records exported)."""
    cfg.check()
    records = read_jsonl(path)
    n = min(len(records), cfg.limit or len(records))
    return export_records(records, out, cfg), n
