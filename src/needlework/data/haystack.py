"""What surrounds the needles: the context-diversity axis (SPEC §1).

`high`: real human-written prose. The default comes with every Python install: the CPython
reference documentation that `pydoc` ships in `pydoc_data.topics` (about 470K characters of
edited prose written by the CPython core developers, PSF licence, identical offline everywhere).
`--haystack PATH` swaps in any directory of .txt files or a JSONL file with a `text` field, and a
writer (LLM) can supply documents through `writer_pool`. `low`: the repeated filler of SPEC §1.

Token counts and truncation points are computed once per (source, tokenizer) in one batch call,
so fitting an example to a length costs additions, not tokenisation.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from needlework.data.phrasings import FILLER_SENTENCES
from needlework.errors import NeedleworkError

_SENT_END = re.compile(r"(?<=[.!?])(?=\s|$)")
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class PoolDoc:
    title: str
    text: str


class Writer(Protocol):
    """The LLM writer interface (see data/writer.py): cached, concurrent document writing."""

    def write_documents(self, prompts: list[str]) -> list[str]: ...


@dataclass
class _Counts:
    n_tokens: np.ndarray  # tokens per document text
    n_title: np.ndarray  # tokens per title
    ends: list[np.ndarray]  # per document, char end offset of each token (for truncation)


@dataclass
class TextPool:
    """A pool of real documents; `stream` draws them without replacement within an example."""

    name: str
    docs: list[PoolDoc]
    titled: bool = True
    _cache: dict = field(default_factory=dict, repr=False)  # id(tokenizer) -> _Counts; 'vocab' -> words

    def counts(self, tokenizer) -> _Counts:
        key = id(tokenizer)
        if key not in self._cache:
            texts = [d.text for d in self.docs]
            enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            titles = tokenizer([d.title or "x" for d in self.docs], add_special_tokens=False)["input_ids"]
            ends = [np.array([b for _a, b in offs], dtype=np.int64) for offs in enc["offset_mapping"]]
            self._cache[key] = _Counts(
                n_tokens=np.array([len(x) for x in enc["input_ids"]]),
                n_title=np.array([len(t) for t in titles]),
                ends=ends,
            )
        return self._cache[key]

    def stream(self, rng: random.Random) -> Iterator[int]:
        order = list(range(len(self.docs)))
        rng.shuffle(order)
        yield from order

    def carrier(self, rng: random.Random, max_sentences: int = 4) -> PoolDoc:
        """A random document, cut to its first few sentences (needle documents stay short)."""
        d = self.docs[rng.randrange(len(self.docs))]
        ends = [m.start() for m in _SENT_END.finditer(d.text)]
        if len(ends) > max_sentences:
            return PoolDoc(title=d.title, text=d.text[: ends[max_sentences - 1]])
        return d

    def truncate(self, i: int, k: int, tokenizer) -> str:
        """Document i cut after its first k tokens (k >= 1)."""
        ends = self.counts(tokenizer).ends[i]
        k = max(1, min(k, len(ends)))
        return self.docs[i].text[: int(ends[k - 1])].rstrip()

    def vocabulary(self) -> set[str]:
        """Lower-cased words of the pool (invented names must avoid them); computed once."""
        if "vocab" not in self._cache:
            self._cache["vocab"] = {w.lower() for d in self.docs for w in _WORD.findall(d.title + " " + d.text)}
        return self._cache["vocab"]


@dataclass
class FillerPool:
    """The low-diversity context: documents made of the SPEC §1 filler, cut at sentence ends."""

    name: str = "filler"
    titled: bool = False
    sizes: tuple[int, int] = (12, 30)  # sentences per filler document
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def text(self, n_sentences: int) -> str:
        k = len(FILLER_SENTENCES)
        return " ".join(FILLER_SENTENCES[i % k] for i in range(n_sentences))

    def cum_tokens(self, tokenizer, upto: int) -> np.ndarray:
        """cum[j] = tokens of the filler text of j sentences (j = 0..upto)."""
        cached = self._cache.get(id(tokenizer))
        if cached is None or len(cached) <= upto:
            n = max(upto + 1, 256)
            text = self.text(n)
            ends = [m.start() for m in _SENT_END.finditer(text)][:n]
            offs = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            tok_ends = np.array([b for _a, b in offs])
            cached = np.concatenate([[0], np.searchsorted(tok_ends, np.array(ends), side="right")])
            self._cache[id(tokenizer)] = cached
        return cached

    def sentences_within(self, k: int, tokenizer) -> int:
        """The most filler sentences whose tokens fit in k."""
        cum = self.cum_tokens(tokenizer, 64)
        j = int(np.searchsorted(cum, k, side="right")) - 1
        while j == len(cum) - 1:  # need a longer table
            cum = self.cum_tokens(tokenizer, 2 * len(cum))
            j = int(np.searchsorted(cum, k, side="right")) - 1
        return max(j, 0)

    def carrier(self, rng: random.Random) -> PoolDoc:
        return PoolDoc(title="", text=self.text(rng.randint(*self.sizes)))


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a plain-text document: indented blocks (code, grammar) are dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines or lines[0][:1] in (" ", "\t") or set(lines[0].strip()) <= set("*=-~^"):
            continue
        para = " ".join(line.strip() for line in lines if not set(line.strip()) <= set("*=-~^"))
        para = re.sub(r"\s+", " ", para).strip()
        words = para.split()
        letters = sum(c.isalpha() for c in para)
        if len(words) >= 12 and letters > 0.7 * len(para.replace(" ", "")) and para[-1:] in ".!?":
            out.append(para)
    return out


def _chunk(title: str, paragraphs: list[str], lo: int = 60, hi: int = 180) -> list[PoolDoc]:
    """Merge consecutive paragraphs into documents of about lo..hi words (Lost-in-the-Middle size)."""
    docs, cur = [], []
    for p in paragraphs:
        if cur and sum(len(x.split()) for x in cur) + len(p.split()) > hi:
            docs.append(" ".join(cur))
            cur = []
        cur.append(p)
        if sum(len(x.split()) for x in cur) >= lo:
            docs.append(" ".join(cur))
            cur = []
    if cur and sum(len(x.split()) for x in cur) >= lo // 2:
        docs.append(" ".join(cur))
    return [PoolDoc(title=title, text=d) for d in docs]


_DOCSTRING = re.compile(
    r'(?:\A|\n)[ \t]*(?:(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)[^\n]*:[ \t]*\n)?[ \t]*[rRuU]?("""|\'\'\')(.*?)\2', re.S
)
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__", "ensurepip"}


def _stdlib_docstrings() -> list[PoolDoc]:
    """Docstrings (module, class, function) of the standard library's .py files, found by regex."""
    import inspect
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[PoolDoc] = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if _SKIP_PARTS & set(rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts)
        src = f.read_text(encoding="utf-8", errors="replace")
        paras: list[str] = []
        for m in _DOCSTRING.finditer(src):
            if m.group(1) is None and m.start() > 0 and not src[: m.start()].strip().startswith("#") and src[: m.start()].strip():
                continue  # a bare string that is not the module docstring
            paras.extend(_paragraphs(inspect.cleandoc(m.group(3))))
        docs.extend(_chunk(f"Python module {module}", paras))
    return docs


_DEFAULT: list[TextPool] = []


def python_docs_pool() -> TextPool:
    """The default high-diversity haystack: prose from CPython's own documentation.

    The reference-manual topics that pydoc ships (`pydoc_data.topics`) plus the docstrings of the
    standard library; built once per process (about a second).
    """
    if _DEFAULT:
        return _DEFAULT[0]
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        topics = {}
    docs: list[PoolDoc] = []
    for key in sorted(topics):
        lines = topics[key].split("\n")
        title = lines[0].strip() if lines and lines[0].strip() else key
        docs.extend(_chunk(title, _paragraphs("\n".join(lines[2:]))))
    docs.extend(_stdlib_docstrings())
    if len(docs) < 50:
        raise NeedleworkError(
            "this Python install has too little documentation prose for the default haystack",
            "give --haystack PATH (a folder of .txt files or a JSONL file with a 'text' field)",
        )
    _DEFAULT.append(TextPool(name="python-docs", docs=docs))
    return _DEFAULT[0]


def path_pool(path: str | Path) -> TextPool:
    """A haystack from a directory of .txt files or a JSONL file whose lines have `text` (and maybe `title`)."""
    path = Path(path)
    docs: list[PoolDoc] = []
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        for f in files:
            docs.extend(_chunk(f.stem.replace("_", " "), _paragraphs(f.read_text(encoding="utf-8", errors="replace"))))
    elif path.is_file():
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    text = str(obj["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise NeedleworkError(
                        f"{path}:{lineno}: not a JSON object with a 'text' field",
                        "give one JSON object per line with a 'text' (and optional 'title') field",
                    ) from None
                docs.extend(_chunk(str(obj.get("title") or obj.get("topic") or ""), _paragraphs(text)))
    else:
        raise NeedleworkError(f"haystack {path} does not exist", "give a folder of .txt files or a .jsonl file")
    if not docs:
        raise NeedleworkError(
            f"haystack {path} holds no usable prose (paragraphs of 12+ words ending in a full stop)",
            "add .txt files (or JSONL 'text' fields) with ordinary prose paragraphs",
        )
    return TextPool(name=f"path:{path}", docs=docs)


TOPICS = [
    "a river town in winter",
    "the history of a small bakery",
    "how bees find flowers",
    "a long train journey",
    "repairing an old clock",
    "a village festival",
    "learning to sail",
    "the life of a lighthouse keeper",
    "growing tomatoes on a balcony",
    "a museum of maps",
    "the first day at a new school",
    "a storm at sea",
    "an amateur astronomy club",
    "the craft of bookbinding",
    "a mountain hut",
    "a chess tournament",
]


def writer_pool(writer: Writer, n_docs: int, seed: int = 0) -> TextPool:
    """Haystack documents written by an LLM writer (one prompt per document, written concurrently)."""
    rng = random.Random(f"writer:{seed}")
    prompts = [
        f"Write a plain encyclopedic paragraph of about {rng.randint(90, 160)} words about {rng.choice(TOPICS)}. "
        "Use no names of real people. Reply with the paragraph only."
        for _ in range(n_docs)
    ]
    texts = writer.write_documents(prompts)
    docs = [PoolDoc(title="", text=re.sub(r"\s+", " ", t).strip()) for t in texts if t and t.strip()]
    return TextPool(name="writer", docs=docs, titled=False)


def insert_sentences(text: str, sentences: list, rng: random.Random) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """Insert sentences at random sentence boundaries of `text`.

    Returns:
        (new text, char span of each inserted sentence, char spans of every needle they carry).
    """
    bounds = [0] + [m.start() for m in _SENT_END.finditer(text)]
    bounds = sorted(set(b for b in bounds if b == 0 or b == len(text) or text[b].isspace()))
    picks = sorted(rng.choice(bounds) for _ in sentences)
    items: list = []  # text pieces (str) and sentences, joined by single spaces
    last = 0
    for b, sent in zip(picks, sentences):
        items += [text[last:b].strip(), sent]
        last = b
    items.append(text[last:].strip())
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    needles: list[tuple[int, int]] = []
    pos = 0
    for it in items:
        piece = it if isinstance(it, str) else it.text
        if not piece:
            continue
        if out:
            out.append(" ")
            pos += 1
        if not isinstance(it, str):
            spans.append((pos, pos + len(piece)))
            needles.extend((pos + a, pos + e) for a, e in it.needles)
        out.append(piece)
        pos += len(piece)
    return "".join(out), spans, needles
