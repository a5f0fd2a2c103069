"""Real-data loaders: the official MDQA, MuSiQue and SummHay files (SPEC §3), and Hugging Face
datasets in those shapes, turned into needlework records with needle spans in the gold passages.

Examples whose gold passage does not hold the answer (or insight) are skipped and counted, never
dropped silently. With `length`, examples are lengthened with documents of other examples
(`needlework.data.real_length`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from needlework.data.locate import INSIGHT_THRESHOLD, WH_TYPES, InsightLocator, find_span, question_type
from needlework.data.real_length import Skip, lengthen_all
from needlework.data.records import Document, Needle, Record, validate_record
from needlework.data.render import check_max_tokens
from needlework.data.ruler import parse_ruler, ruler_files, ruler_id, task_name
from needlework.errors import NeedleworkError, OptionError

log = logging.getLogger(__name__)
FORMATS = ("mdqa", "musique", "summhay", "ruler")


SPLITS = ("all", "train", "eval")


@dataclass
class LoadConfig:
    """Options of `needlework load`; the fields are also the YAML keys of a study's data section."""

    length: int | None = None  # lengthen every example to this many tokens (None: keep as is)
    tokenizer: str = "smollm2"  # tokenizer that measures `length` (through render)
    limit: int | None = None  # keep at most this many examples (after `limited`)
    limited: tuple[str, ...] = ()  # keep only these types: MDQA wh-types, MuSiQue 2hop/3hop1/...
    seed: int = 0  # order of the distractor pool, random depths
    depth: float | str | None = None  # None: keep the gold position (relative); 0-100 or "random"
    chat: bool | None = False  # measure the length with the chat template applied (a study passes its stages' setting; null: if it has one)
    max_tokens: int = 0  # never exceed this many tokens (a study: its task length, so records fit the model); 0: length + tolerance
    insight_threshold: float = INSIGHT_THRESHOLD  # SummHay: least similarity of an insight's span (locate.py)
    tolerance_frac: float = 0.02  # length may miss by max(2% of length, 32 tokens)
    tolerance_tokens: int = 32
    # one side of a split by question, so that a training and an evaluation set made from ONE file
    # share no question (nor, as distractors, any passage): all | train | eval
    split: str = "all"
    eval_fraction: float = 0.2  # share of questions on the eval side (by a hash of the question text)


@dataclass
class LoadResult:
    records: list[Record]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    n_read: int = 0
    # SummHay records kept: insights, citing_docs (their citations), located (citing documents where
    # the insight's span was found), unlocated (listed in meta["unlocated_docs"]), no_span (insights
    # with no located span; they load, their citations are exact)
    summhay: Counter = field(default_factory=Counter)

    def span_summary(self) -> str | None:
        """One line on SummHay insight spans, or None without SummHay records."""
        c = self.summhay
        if not c["insights"]:
            return None
        cov = c["located"] / max(c["citing_docs"], 1)
        return (
            f"summhay: {c['insights']} insights with exact citations ({c['citing_docs']} citing documents); insight span "
            f"located in {c['located']} of them ({cov:.1%}), not in {c['unlocated']} (listed in meta.unlocated_docs)"
            + (f"; {c['no_span']} insights have no located span" if c["no_span"] else "")
        )


# ----------------------------------------------------------------------------- reading files


def _open_text(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def _iter_json_lines(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise NeedleworkError(
                        f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})",
                        f"the {fmt} format is JSON Lines: one complete JSON object per line; fix or remove that line",
                    ) from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise NeedleworkError(f"{path}: cannot read ({e})", "check that the file is UTF-8 JSON Lines, optionally gzip-compressed") from None


def _need(obj: Any, keys: tuple[str, ...], where: str, fmt: str, kind: str = "example") -> None:
    if not isinstance(obj, dict):
        raise NeedleworkError(f"{where}: expected a JSON object for each {kind}, got {type(obj).__name__}", _FIX[fmt])
    missing = [k for k in keys if k not in obj]
    if missing:
        raise NeedleworkError(f"{where}: {kind} lacks field(s) {', '.join(missing)}", _FIX[fmt])


_FIX = {
    "mdqa": "MDQA lines need question, answers (list) and ctxs (list of title, text, hasanswer, isgold); "
    "is this a Lost in the Middle file? otherwise pick the right --format",
    "musique": "MuSiQue lines need id, question, answer, answer_aliases, answerable, paragraphs (idx, title, "
    "paragraph_text, is_supporting) and question_decomposition (id, question, answer, paragraph_support_idx); "
    "otherwise pick the right --format",
    "summhay": "SummHay topic files need topic (or topic_id), subtopics (subtopic, insights of insight_id, insight) and "
    "documents (document_id, document_text, insights_included or label_<insight_id> columns); otherwise pick the right --format",
}


def _list_of(obj: Any, key: str, where: str, fmt: str) -> list:
    v = obj[key]
    if not isinstance(v, list):
        raise NeedleworkError(f"{where}: field {key!r} must be a list, got {type(v).__name__}", _FIX[fmt])
    return v


# ----------------------------------------------------------------------------- formats


def parse_mdqa(obj: Any, where: str, rid: str) -> Record:
    """One Lost in the Middle line -> record. Gold: ctxs with `isgold` (else those with `hasanswer`)."""
    _need(obj, ("question", "answers", "ctxs"), where, "mdqa")
    answers = [str(a) for a in _list_of(obj, "answers", where, "mdqa")]
    ctxs = _list_of(obj, "ctxs", where, "mdqa")
    for j, c in enumerate(ctxs):
        _need(c, ("title", "text"), f"{where} ctxs[{j}]", "mdqa", "passage")
    if not answers:
        raise Skip("no answer string")
    docs = [Document(id=str(c.get("id", j)), title=str(c["title"] or ""), text=str(c["text"])) for j, c in enumerate(ctxs)]
    if len({d.id for d in docs}) != len(docs):
        docs = [Document(id=str(j), title=d.title, text=d.text) for j, d in enumerate(docs)]
    gold = [j for j, c in enumerate(ctxs) if c.get("isgold")] or [j for j, c in enumerate(ctxs) if c.get("hasanswer")]
    if not gold:
        raise Skip("no gold passage (no ctx has isgold or hasanswer)")
    needles = []
    for g in gold:
        span = find_span(docs[g].text, answers)
        if span is None:
            raise Skip("gold passage does not contain the answer")
        needles.append(Needle(doc=g, start=span[0], end=span[1]))
        sliced = docs[g].text[span[0] : span[1]]
        if sliced not in answers:
            answers.append(sliced)
    meta = {"qtype": question_type(str(obj["question"])), "gold_position": gold[0], "n_ctxs": len(ctxs)}
    if isinstance(obj.get("nq_annotated_gold"), dict) and "title" in obj["nq_annotated_gold"]:
        meta["nq_gold_title"] = obj["nq_annotated_gold"]["title"]
    return Record(
        id=rid,
        task="mdqa",
        concept="real",
        context="real",
        documents=docs,
        question=str(obj["question"]),
        answers=answers,
        needles=needles,
        gold_docs=gold,
        meta=meta,
    )


def parse_musique(obj: Any, where: str, rid: str) -> Record:
    """One MuSiQue-Ans line -> record; every supporting paragraph is gold, needle at its hop's answer."""
    keys = ("id", "question", "answer", "answerable", "paragraphs", "question_decomposition")
    _need(obj, keys, where, "musique")
    if not obj["answerable"]:
        raise Skip("unanswerable (MuSiQue answerable=false)")
    paras = _list_of(obj, "paragraphs", where, "musique")
    hops = _list_of(obj, "question_decomposition", where, "musique")
    for j, p in enumerate(paras):
        _need(p, ("title", "paragraph_text"), f"{where} paragraphs[{j}]", "musique", "paragraph")
    for j, h in enumerate(hops):
        _need(h, ("question", "answer", "paragraph_support_idx"), f"{where} question_decomposition[{j}]", "musique", "hop")
    docs = [Document(id=f"p{p.get('idx', j)}", title=str(p["title"]), text=str(p["paragraph_text"])) for j, p in enumerate(paras)]
    if len({d.id for d in docs}) != len(docs):
        docs = [Document(id=f"p{j}", title=d.title, text=d.text) for j, d in enumerate(docs)]
    by_idx = {p.get("idx", j): j for j, p in enumerate(paras)}
    answers = [str(obj["answer"])] + [str(a) for a in obj.get("answer_aliases") or []]
    needles, hop_answers, hop_meta = [], [], []
    for k, h in enumerate(hops):
        d = by_idx.get(h["paragraph_support_idx"])
        if d is None:
            raise Skip("hop's paragraph_support_idx names no paragraph")
        last = k == len(hops) - 1
        span = find_span(docs[d].text, answers if last else [str(h["answer"])])
        if span is None:
            raise Skip("supporting paragraph does not contain its hop's answer")
        sliced = docs[d].text[span[0] : span[1]]
        needles.append(Needle(doc=d, start=span[0], end=span[1], role="answer" if last else "evidence"))  # bridge: evidence
        hop_answers.append(sliced)
        if last and sliced not in answers:
            answers.append(sliced)
        hop_meta.append({"id": h.get("id"), "question": h["question"], "answer": h["answer"], "doc": d})
    gold = sorted({n.doc for n in needles})
    extra = [j for j, p in enumerate(paras) if p.get("is_supporting") and j not in gold]
    if extra:
        raise Skip("a supporting paragraph is not the support of any hop")
    qid = str(obj["id"])
    qtype = qid.split("__")[0] if "__" in qid else f"{len(hops)}hop"
    meta = {"musique_id": qid, "qtype": qtype, "n_hops": len(hops), "hops": hop_meta, "hop_answers": hop_answers}
    return Record(
        id=rid,
        task="musique",
        concept="real",
        context="real",
        documents=docs,
        question=str(obj["question"]),
        answers=answers,
        needles=needles,
        gold_docs=gold,
        meta=meta,
    )


def _summhay_insights(obj: Any, where: str) -> dict[str, tuple[str, str]]:
    """A SummHay topic's insights: id -> (text, subtopic)."""
    insights: dict[str, tuple[str, str]] = {}
    for i, st in enumerate(_list_of(obj, "subtopics", where, "summhay")):
        _need(st, ("subtopic", "insights"), f"{where} subtopics[{i}]", "summhay", "subtopic")
        for j, ins in enumerate(_list_of(st, "insights", f"{where} subtopics[{i}]", "summhay")):
            _need(ins, ("insight_id", "insight"), f"{where} subtopics[{i}].insights[{j}]", "summhay", "insight")
            # the official files name each subtopic briefly in `subtopic_name` (used for --limited)
            insights[str(ins["insight_id"])] = (str(ins["insight"]), str(st.get("subtopic_name") or st["subtopic"]))
    return insights


def _summhay_documents(obj: Any, where: str, insights: dict[str, tuple[str, str]]) -> tuple[list[dict], list[Document]]:
    """A SummHay topic's raw document dicts (with `insights_included` filled from `label_*` fields) and Documents."""
    raw = list(_list_of(obj, "documents", where, "summhay"))
    for i, d in enumerate(raw):
        if isinstance(d, dict) and "insights_included" not in d and any(str(k).startswith("label_") for k in d):
            raw[i] = d = {
                **d,
                "insights_included": [k[6:] for k, v in d.items() if str(k).startswith("label_") and v == 1 and k[6:] in insights],
            }
        _need(d, ("document_id", "document_text", "insights_included"), f"{where} documents[{i}]", "summhay", "document")
    docs = [Document(id=str(d["document_id"]), title="", text=str(d["document_text"])) for d in raw]
    if len({d.id for d in docs}) != len(docs):
        raise NeedleworkError(f"{where}: document_id values are not unique", "each SummHay document needs its own document_id")
    return raw, docs


def parse_summhay(obj: Any, where: str, stem: str, threshold: float) -> Iterator[Record | Skip]:
    """One SummHay topic -> one record per insight (yields Skip for insights that cannot be placed).

    The record's citations (and gold documents) are exactly the documents whose `insights_included`
    lists the insight (files without that field: those whose `label_<insight_id>` is 1). In each of
    them the insight's span is the best-matching window of 1-2 sentences (`InsightLocator`: verbatim,
    else weighted content-word F1 >= `threshold`); a needle of role `evidence` marks it. Citing
    documents where no window reaches the threshold are listed in `meta["unlocated_docs"]`.
    """
    if isinstance(obj, dict) and "topic" not in obj and "topic_id" in obj:  # real files name the topic by id
        obj = {**obj, "topic": obj["topic_id"]}
    _need(obj, ("topic", "subtopics", "documents"), where, "summhay", "topic")
    insights = _summhay_insights(obj, where)  # id -> (text, subtopic)
    raw, docs = _summhay_documents(obj, where, insights)
    holders: dict[str, list[int]] = {k: [] for k in insights}
    for i, d in enumerate(raw):
        for iid in d["insights_included"] or []:
            if str(iid) not in holders:
                yield Skip("insights_included names an unknown insight id")
                continue
            if i not in holders[str(iid)]:
                holders[str(iid)].append(i)
    locator = InsightLocator([d.text for d in docs])  # word weights from this topic's sentences
    for iid, (text, subtopic) in insights.items():
        if not holders[iid]:
            yield Skip("insight is included in no document")
            continue
        needles, spans, scores, unlocated = [], [], [], []
        for i in holders[iid]:
            hit = locator.locate(i, text, threshold)
            if hit is None:
                unlocated.append(i)
                continue
            needles.append(Needle(doc=i, start=hit[0], end=hit[1], role="evidence"))
            spans.append(docs[i].text[hit[0] : hit[1]])
            scores.append(hit[2])
        citations = [docs[i].id for i in holders[iid]]
        meta = {
            "topic": str(obj["topic"]),
            "subtopic": subtopic,
            "qtype": subtopic,
            "insight_id": iid,
            "insight": spans[0] if len(set(spans)) == 1 else text,
            "insight_spans": spans,
            "insight_match": scores,
            "unlocated_docs": unlocated,
            "span_coverage": round(len(needles) / len(holders[iid]), 4),
        }
        rec = Record(
            id=f"summhay-{stem}-{iid}",
            task="summhay",
            concept="real",
            context="real",
            documents=docs,
            question=text,
            answers=[" ".join(citations)],
            needles=needles,
            citations=citations,
            gold_docs=sorted(holders[iid]),
            meta=meta,
        )
        if not needles and any(p.startswith("no needles") for p in validate_record(rec)):  # the record format needs a span
            yield Skip("no citing document has a located insight span")
            continue
        yield rec


# ----------------------------------------------------------------------------- sources


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suf)
    return name


def _summhay_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("topic_*.json")) or sorted(path.glob("*.json"))
        if not files:
            raise NeedleworkError(f"{path}: no topic_*.json files in this directory", "point at a SummHay topic file or its data folder")
        return files
    return [path]


def _read_json_file(path: Path) -> Any:
    try:
        with _open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise NeedleworkError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})",
            "a SummHay topic file is one JSON object; fix the file or download it again",
        ) from None


def _detect(row: dict) -> str:
    if "ctxs" in row:
        return "mdqa"
    if "question_decomposition" in row or "paragraphs" in row:
        return "musique"
    if "subtopics" in row:
        return "summhay"
    raise NeedleworkError(
        f"hugging face rows have columns {sorted(row)}, none of the MDQA/MuSiQue/SummHay shapes",
        "pick a dataset in one of the SPEC §3 formats, or convert it to JSONL first",
    )


def _iter_hf(spec: str) -> Iterator[tuple[str, str, Any]]:
    """Rows of `hf:NAME[:SPLIT]` (default split: train) as (format, where, row)."""
    name, _, split = spec[3:].partition(":")
    split = split or "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types (connection, not found, offline); all are user input here
        raise NeedleworkError(
            f"cannot load hugging face dataset {name!r} split {split!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
            "the hub is offline here (HF_HUB_OFFLINE=1) or the name/split is wrong; download the official files and "
            "use --format mdqa|musique|summhay PATH, or run where the hub is reachable",
        ) from None
    for i, row in enumerate(ds):
        yield _detect(row), f"hf:{name}:{split} row {i}", row


def _iter_records(fmt: str, path: str | None, cfg: LoadConfig, skipped: Counter) -> Iterator[Record]:
    if fmt.startswith("hf:"):
        for kind, where, row in _iter_hf(fmt):
            yield from _one(kind, row, where, f"{kind}-hf-{where.rsplit(' ', 1)[-1]}", cfg, skipped)
        return
    if fmt not in FORMATS:
        raise NeedleworkError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}, or hf:NAME[:SPLIT]")
    if path is None:
        raise NeedleworkError(f"--format {fmt} needs a PATH", "give the file (or SummHay folder) to read")
    p = Path(path)
    if not p.exists():
        raise NeedleworkError(
            f"{p}: no such file", "check the path; get the official files from the dataset's release (README 'Real data')"
        )
    if fmt == "summhay":
        for f in _summhay_files(p):
            yield from _one("summhay", _read_json_file(f), str(f), _stem(f), cfg, skipped)
        return
    if fmt == "ruler":  # RULER's generated jsonl (data/ruler.py): a file, or its data folder of <task>/validation.jsonl
        for f in ruler_files(p):
            for lineno, obj in _iter_json_lines(f, fmt):
                yield from _one(fmt, obj, f"{f}:{lineno}", ruler_id(f, obj, lineno), cfg, skipped, task=task_name(f))
        return
    for lineno, obj in _iter_json_lines(p, fmt):
        yield from _one(fmt, obj, f"{p}:{lineno}", f"{fmt}-{_stem(p)}-{lineno}", cfg, skipped)


def _one(fmt: str, obj: Any, where: str, rid: str, cfg: LoadConfig, skipped: Counter, task: str = "") -> Iterator[Record]:
    try:
        if fmt == "summhay":
            items = list(parse_summhay(obj, where, rid, cfg.insight_threshold))
        elif fmt == "ruler":
            items = [parse_ruler(obj, where, rid, task)]
        else:
            items = [(parse_mdqa if fmt == "mdqa" else parse_musique)(obj, where, rid)]
    except Skip as s:
        items = [s]
    for it in items:
        if isinstance(it, Skip):
            skipped[str(it)] += 1
            continue
        it.meta["source"] = where
        it.meta["group"] = rid  # records of one source example (SummHay: one topic) share distractors
        yield it


_MUSIQUE_TYPE = re.compile(r"^\d+hop\d*$")  # 2hop, 3hop1, ..., or a hop count (3hop)


def check_options(fmt: str, cfg: LoadConfig) -> None:
    """Reject a bad format or option value before reading anything: the one check of loader
    options, run by `load_real` and by a study config on load. Each error is an `OptionError` whose
    `key` is the offending field (`format` for the format)."""
    if not (fmt in FORMATS or (fmt.startswith("hf:") and len(fmt) > 3)):
        raise OptionError(
            "format",
            f"unknown format {fmt!r} (not one of {', '.join(FORMATS)}, hf:NAME[:SPLIT])",
            f"use one of {', '.join(FORMATS)}, or hf:NAME[:SPLIT]",
        )
    if cfg.length is not None and cfg.length <= 0:
        raise OptionError("length", f"--length {cfg.length} is not a positive token count", "give e.g. --length 4096")
    if cfg.depth is not None and cfg.length is None:
        raise OptionError(
            "depth", "--depth is given without --length", "add --length L: depth places gold documents among the added distractors"
        )
    if cfg.depth not in (None, "random"):
        try:
            d = float(cfg.depth)
        except (TypeError, ValueError):
            d = -1.0
        if isinstance(cfg.depth, bool) or not 0 <= d <= 100:
            raise OptionError("depth", f"--depth {cfg.depth!r} is not 0-100 or random", "give e.g. --depth 50 or --depth random")
    if cfg.limit is not None and cfg.limit < 0:
        raise OptionError("limit", f"--limit {cfg.limit} is negative", "give a count of examples to keep")
    if cfg.split not in SPLITS:
        raise OptionError("split", f"split {cfg.split!r} is not one of {', '.join(SPLITS)}", "use all, train or eval")
    if not 0 < cfg.eval_fraction < 1:
        raise OptionError("eval_fraction", f"eval_fraction {cfg.eval_fraction} is not between 0 and 1", "give e.g. 0.2")
    types = [str(t).strip().lower() for t in cfg.limited if str(t).strip()]
    if fmt == "mdqa":
        bad = [t for t in types if t not in (*WH_TYPES, "other")]
        known = f"MDQA question types: {', '.join(WH_TYPES)}, other"
    elif fmt == "musique":
        bad = [t for t in types if not _MUSIQUE_TYPE.match(t)]
        known = "MuSiQue types: 2hop, 3hop1, 3hop2, 4hop1, 4hop2, 4hop3, or a hop count such as 3hop"
    else:  # SummHay subtopic names and hf: datasets are only known once read
        bad, known = [], ""
    if bad:
        raise OptionError("limited", f"--limited {', '.join(map(repr, bad))}: no example can have that type", f"use {known}")
    if not 0.0 < cfg.insight_threshold <= 1.0:
        raise OptionError(
            "insight_threshold",
            f"--insight-threshold {cfg.insight_threshold} is not in (0, 1]",
            f"give a similarity (weighted content-word F1) in (0, 1]; the calibrated default is {INSIGHT_THRESHOLD}",
        )
    check_max_tokens(cfg.max_tokens, cfg.length)
    for key in ("tolerance_frac", "tolerance_tokens"):
        if getattr(cfg, key) < 0:
            raise OptionError(key, f"{key} {getattr(cfg, key)} is negative", "give a non-negative tolerance")


def load_real_report(fmt: str, path: str | None, cfg: LoadConfig | None = None) -> LoadResult:
    """Like `load_real`, and also returns how many examples were skipped and why."""
    cfg = cfg or LoadConfig()
    check_options(fmt, cfg)
    skipped: Counter = Counter()
    allrecs = list(_iter_records(fmt, path, cfg, skipped))
    n_read = len(allrecs) + sum(skipped.values())
    if cfg.split != "all":
        side = [r for r in allrecs if split_side(r.question, cfg.eval_fraction) == cfg.split]
        skipped[f"on the other side of the {cfg.split} split"] += len(allrecs) - len(side)
        allrecs = side  # distractors come from this side only
    limited = {t.strip().lower() for t in cfg.limited if t.strip()}
    keep = [r for r in allrecs if not limited or _matches(r, limited)]
    if limited and len(keep) < len(allrecs):
        skipped[f"not in --limited {','.join(sorted(limited))}"] += len(allrecs) - len(keep)
    if cfg.limit is not None:
        keep = keep[: cfg.limit]
    if cfg.length is not None:
        keep = lengthen_all(keep, allrecs, cfg, skipped)
    counts: Counter = Counter()
    for r in keep:
        r.meta.pop("group", None)
        if r.task == "summhay":
            located = len({n.doc for n in r.needles})
            counts.update(
                insights=1,
                citing_docs=len(r.citations),
                located=located,
                unlocated=len(r.meta.get("unlocated_docs") or []),
                no_span=int(located == 0),
            )
    return LoadResult(records=keep, skipped=skipped, n_read=n_read, summhay=counts)


def split_side(question: str, eval_fraction: float) -> str:
    """`eval` or `train` for a question, by a hash of its normalised text: stable across seeds,
    runs and machines, and the same question always lands on the same side."""
    h = hashlib.sha256(" ".join(question.lower().split()).encode()).hexdigest()
    return "eval" if int(h[:8], 16) / 2**32 < eval_fraction else "train"


def _matches(r: Record, limited: set[str]) -> bool:
    """MDQA: qtype; MuSiQue: qtype (2hop, 3hop1, ...) or hop count (`3hop`); SummHay: subtopic name."""
    qtype = str(r.meta.get("qtype", "")).lower()
    return qtype in limited or (r.task == "musique" and f"{r.meta.get('n_hops')}hop" in limited)


def load_real(fmt: str, path: str | None, cfg: LoadConfig | None = None) -> list[Record]:
    """Read real data in an official format into records.

    Args:
        fmt: `mdqa`, `musique`, `summhay`, or `hf:NAME[:SPLIT]` (rows in one of those shapes).
        path: the file (`.jsonl`, `.jsonl.gz`; SummHay: a topic `.json` or a folder of them).
        cfg: lengthening, `limited` subset, limit, seed.
    Returns:
        Records with concept="real", context="real"; skipped examples are logged with the reason.
    Raises:
        NeedleworkError: unknown format, missing file, malformed JSON (file:line), missing fields.
    """
    res = load_real_report(fmt, path, cfg)
    for reason, n in res.skipped.items():
        log.warning("skipped %d example(s): %s", n, reason)
    return res.records
