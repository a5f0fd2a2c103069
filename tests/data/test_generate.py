"""Synthetic generators: every task x variant with two tokenizers (SmolLM2's and a byte-level BPE
built offline): needle spans decode to the answer, lengths hit the target, depth is respected."""

from __future__ import annotations

import json
import re

import pytest

from needlework.data.generate import GenerateConfig, generate, make_source, make_world
from needlework.data.inspect import VARIANTS
from needlework.data.phrasings import FILLER_SENTENCES
from needlework.data.records import write_jsonl
from needlework.data.render import answer_text, render
from needlework.errors import NeedleworkError
from needlework.io import hash_file
from synth_helpers import byte_bpe_tokenizer

LENGTH = 2048
DEPTH = 30
N = 3


@pytest.fixture(scope="module", params=["smollm2", "byte-bpe"])
def tokenized(request, smollm2_tokenizer):
    """(tokenizer, {variant: records}) for every task x variant."""
    tok = smollm2_tokenizer if request.param == "smollm2" else byte_bpe_tokenizer()
    data = {}
    for task, concept, context in VARIANTS:
        cfg = GenerateConfig(
            task=task, concept=concept, context=context, n=N, length=LENGTH, depth=str(DEPTH), tokenizer=request.param, seed=1
        )
        data[(task, concept, context)] = generate(cfg, tokenizer=tok)
    return tok, data


def _expected_needles(rec) -> set[str]:
    if rec.task == "summhay":
        return {rec.meta["insight"]}
    return set(rec.answers) | set(rec.meta.get("hop_answers", []))


def test_needle_spans_decode_to_answers(tokenized):
    tok, data = tokenized
    for recs in data.values():
        for rec in recs:
            r = render(rec, tok)
            assert len(r.needle_spans) == len(rec.needles) > 0
            for i, span in enumerate(r.needle_spans):
                assert span is not None, rec.id
                decoded = tok.decode(r.input_ids[span[0] : span[1]]).strip()
                assert decoded == rec.needle_text(i).strip(), (rec.id, decoded)
                assert decoded in _expected_needles(rec)
            # the answer is where the completion starts
            assert tok.decode(r.answer_ids).replace(tok.eos_token, "").strip() == answer_text(rec)


def test_length_hits_target(tokenized):
    tok, data = tokenized
    tol = max(0.02 * LENGTH, 32)
    for recs in data.values():
        for rec in recs:
            n = render(rec, tok).n_tokens
            assert n == rec.meta["n_tokens"]
            assert abs(n - LENGTH) <= tol, (rec.id, n)


def _measured_depth(rec, tok) -> tuple[float, float]:
    """Recompute depth from the documents: (mean fraction of non-gold tokens before each gold doc,
    the largest single non-gold document's fraction = the placement granularity)."""
    costs = [len(tok(d.title + " " + d.text, add_special_tokens=False)["input_ids"]) for d in rec.documents]
    gold = set(rec.gold_docs)
    total = sum(c for i, c in enumerate(costs) if i not in gold)
    fracs = [sum(c for i, c in enumerate(costs[:g]) if i not in gold) / total for g in rec.gold_docs]
    return sum(fracs) / len(fracs), max(c for i, c in enumerate(costs) if i not in gold) / total


def test_depth_is_respected(tokenized):
    tok, data = tokenized
    for recs in data.values():
        for rec in recs:
            depth, granularity = _measured_depth(rec, tok)
            assert abs(depth - DEPTH / 100) <= granularity + 0.03, (rec.id, depth, granularity)
            assert abs(rec.meta["depth_frac"] - depth) <= 0.03
            assert rec.meta["depth_target"] == DEPTH / 100


@pytest.mark.parametrize("depth", [0, 100])
def test_depth_extremes_mdqa(smollm2_tokenizer, depth):
    recs = generate(GenerateConfig(task="mdqa", n=3, length=1024, depth=str(depth)), tokenizer=smollm2_tokenizer)
    for rec in recs:
        assert rec.gold_docs == ([0] if depth == 0 else [len(rec.documents) - 1])
        assert rec.meta["depth_frac"] == depth / 100


def test_random_depth_varies(smollm2_tokenizer):
    recs = generate(GenerateConfig(task="mdqa", n=8, length=1024, depth="random"), tokenizer=smollm2_tokenizer)
    assert len({r.meta["depth_target"] for r in recs}) == 8
    assert min(r.meta["depth_frac"] for r in recs) < 0.5 < max(r.meta["depth_frac"] for r in recs)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def test_low_context_is_filler_only(tokenized):
    _tok, data = tokenized
    for (_task, _concept, context), recs in data.items():
        if context != "low":
            continue
        for rec in recs:
            cuts: dict[int, list[tuple[int, int]]] = {}
            for doc, a, b in rec.meta["needle_sentences"]:
                cuts.setdefault(doc, []).append((a, b))
            assert set(cuts) == set(rec.gold_docs)
            for n in rec.needles:  # every needle lies inside an inserted needle sentence
                assert any(a <= n.start and n.end <= b for a, b in cuts[n.doc])
            for i, d in enumerate(rec.documents):
                assert d.title == ""
                text = d.text
                for a, b in sorted(cuts.get(i, []), reverse=True):
                    text = text[:a] + " " + text[b:]
                assert _sentences(text), rec.id
                assert set(_sentences(text)) <= set(FILLER_SENTENCES), (rec.id, i)


def test_symbolic_has_no_world_vocabulary(tokenized):
    _tok, data = tokenized
    for (task, concept, context), recs in data.items():
        cfg = GenerateConfig(task=task, concept=concept, context=context, n=N, seed=1)
        vocab = make_world(cfg, make_source(cfg)).vocabulary()
        for rec in recs:
            words = set(re.findall(r"[A-Za-z]+", json.dumps(rec.to_dict()["documents"]) + rec.question + " ".join(rec.answers)))
            hits = words & vocab
            if concept == "symbolic":
                assert not hits, (rec.id, sorted(hits)[:5])
                for doc, a, b in rec.meta["needle_sentences"]:
                    sentence = rec.documents[doc].text[a:b]
                    assert not re.search(r"spouse|employ|born|birth|found|headquarter|author|wr[io]te", sentence + rec.question)
            elif task != "kv":
                assert hits  # the check above can fail: names do show up in non-symbolic data


def test_same_seed_same_bytes(smollm2_tokenizer, tmp_path):
    paths = []
    for k, seed in enumerate([5, 5, 6]):
        cfg = GenerateConfig(task="musique", concept="high", context="high", n=4, length=1536, seed=seed)
        paths.append(tmp_path / f"{k}.jsonl")
        write_jsonl(paths[-1], generate(cfg, tokenizer=smollm2_tokenizer))
    assert hash_file(paths[0]) == hash_file(paths[1])
    assert hash_file(paths[0]) != hash_file(paths[2])


def test_mdqa_hard_negatives(tokenized):
    _tok, data = tokenized
    for concept in ("high", "low"):
        for rec in data[("mdqa", concept, "high")]:
            rel = rec.meta["relation"]
            cfg = GenerateConfig(task="mdqa", concept=concept, seed=1, n=N)
            world = make_world(cfg, make_source(cfg))
            subject_names = {world.entities[s].name for s in world.subjects(rel)}
            others = [d for i, d in enumerate(rec.documents) if i not in rec.gold_docs]
            if concept == "high":  # articles about other entities that have the same relation
                negs = [d for d in others if d.title in subject_names]
            else:  # the same rigid template, other subjects
                negs = [d for d in others if re.search(r"The " + rel.replace("_", " ") + r" of ", d.text)]
            assert len(negs) == 3, rec.id
            assert all(rec.answers[0] not in d.text or d.title != rec.meta["subject"] for d in negs)
    for rec in data[("mdqa", "high", "low")]:
        assert sum(1 for d in rec.documents if d.text != "" and "The grass is green." not in d.text) == 0


def test_musique_hop_decomposition(tokenized):
    _tok, data = tokenized
    for key, recs in data.items():
        if key[0] != "musique":
            continue
        for rec in recs:
            hops = rec.meta["hops"]
            assert 2 <= len(hops) == rec.meta["n_hops"] <= 4
            assert rec.meta["hop_answers"] == [h["answer"] for h in hops[:-1]]
            assert hops[-1]["answer"] == rec.answers[0]
            assert sorted(h["doc"] for h in hops) == rec.gold_docs
            for h in hops:
                assert h["answer"] in [rec.needle_text(i) for i, n in enumerate(rec.needles) if n.doc == h["doc"]]
            for a, b in zip(hops, hops[1:]):  # each hop's answer is the next hop's subject
                assert a["answer"] == b["subject"]


def test_summhay_citations(tokenized):
    _tok, data = tokenized
    for key, recs in data.items():
        if key[0] != "summhay":
            continue
        for rec in recs:
            insight = rec.meta["insight"]
            holding = [d.id for d in rec.documents if insight in d.text]
            assert rec.citations == holding and len(holding) >= 2
            assert rec.question == insight
            assert rec.answers[0] == answer_text(rec)
            assert len(rec.needles) == len(holding)


def test_kv_dictionaries(tokenized):
    _tok, data = tokenized
    for context in ("high", "low"):
        for rec in data[("kv", "symbolic", context)]:
            gold = rec.documents[rec.gold_docs[0]].text
            obj = json.loads(re.search(r"\{.*?\}", gold).group(0))
            assert obj[json.loads(rec.question)] == rec.answers[0]
            dicts = sum(1 for d in rec.documents if re.search(r"\{\"[0-9a-f-]{36}\"", d.text))
            assert dicts == (3 if context == "high" else 1)


def test_relations_restrict(smollm2_tokenizer):
    cfg = GenerateConfig(task="mdqa", n=10, length=1024, relations=["spouse", "author"])
    assert {r.meta["relation"] for r in generate(cfg, tokenizer=smollm2_tokenizer)} <= {"spouse", "author"}
    cfg = GenerateConfig(task="musique", n=4, length=1536, relations=["author", "employer", "founder", "birthplace"])
    for r in generate(cfg, tokenizer=smollm2_tokenizer):
        assert set(r.meta["relations"]) <= {"author", "employer", "founder", "birthplace"}


def test_chat_length(smollm2_tokenizer):
    recs = generate(GenerateConfig(task="mdqa", n=2, length=1024, chat=True), tokenizer=smollm2_tokenizer)
    for rec in recs:
        assert abs(render(rec, smollm2_tokenizer, chat=True).n_tokens - 1024) <= 32


def test_haystack_path_and_writer(smollm2_tokenizer, tmp_path):
    para = "The river runs past the old mill and the miller waves at every passing boat. " * 4
    for k in range(30):
        (tmp_path / f"story_{k}.txt").write_text(
            f"{para.strip()}\n\nOn day {k} the boats came back late in the evening.  The town slept.\n"
        )
    recs = generate(GenerateConfig(task="mdqa", n=2, length=1024, haystack=str(tmp_path)), tokenizer=smollm2_tokenizer)
    titles = {d.title for r in recs for i, d in enumerate(r.documents) if i not in r.gold_docs}
    assert any(t.startswith("story ") for t in titles)

    class FakeWriter:
        def __init__(self):
            self.calls = 0

        def write_documents(self, prompts):
            self.calls += 1
            return [
                f"Paragraph {i} written for a prompt. It has a few plain sentences about a harbour. "
                f"Ships come and go every day of the week."
                for i, _ in enumerate(prompts)
            ]

    w = FakeWriter()
    recs = generate(GenerateConfig(task="kv", concept="symbolic", n=2, length=1024, writer_docs=60), tokenizer=smollm2_tokenizer, writer=w)
    assert w.calls == 1
    assert any("written for a prompt" in d.text for r in recs for d in r.documents)


@pytest.mark.parametrize("task", ["mdqa", "summhay"])
def test_max_tokens_is_a_ceiling_under_the_chat_template(smollm2_tokenizer, task):
    """A study fits records to its task length as the model sees them (chat template included) and
    never longer, so a task at the model's context fits it. chat=None resolves to the template
    SmolLM2's tokenizer has."""
    length = 2048
    cfg = GenerateConfig(task=task, n=6, length=length, chat=None, max_tokens=length, seed=3)
    tol = max(round(0.02 * length), 32)
    for rec in generate(cfg, tokenizer=smollm2_tokenizer):
        n = render(rec, smollm2_tokenizer, chat=True).n_tokens
        assert length - tol <= n <= length, (rec.id, n)
        assert rec.meta["chat"] is True and rec.meta["n_tokens"] == n


def test_max_tokens_below_length_is_refused():
    with pytest.raises(NeedleworkError, match="below --length"):
        generate(GenerateConfig(task="mdqa", n=1, length=1024, max_tokens=1000))
