"""Each bad input to `generate` gives a NeedleworkError that names the fix."""

from __future__ import annotations

import pytest

from needlework.data.generate import GenerateConfig, generate
from needlework.errors import NeedleworkError


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"task": "kv", "concept": "high"}, "symbolic only"),
        ({"task": "trivia"}, "unknown task"),
        ({"concept": "medium"}, "unknown concept"),
        ({"context": "real"}, "unknown context"),
        ({"depth": "150"}, "--depth"),
        ({"depth": "middle"}, "--depth"),
        ({"relations": ["rival"]}, "unknown relation"),
        ({"task": "musique", "hops": "0-9"}, "--hops"),
        ({"task": "musique", "relations": ["birth_date"]}, "hop chains"),
        ({"length": 40}, "too short"),
        ({"task": "summhay", "length": 300}, "too short"),
        ({"n": 0}, "must be positive"),
    ],
)
def test_bad_options(smollm2_tokenizer, kw, match):
    cfg = GenerateConfig(**{"n": 2, "length": 1024, **kw})
    with pytest.raises(NeedleworkError, match=match) as e:
        generate(cfg, tokenizer=smollm2_tokenizer)
    assert e.value.fix


def test_unknown_tokenizer():
    with pytest.raises(NeedleworkError) as e:
        generate(GenerateConfig(n=1, tokenizer="no-such-org/no-such-tokenizer-xyz"))
    assert "no-such-tokenizer" in e.value.problem and e.value.fix


def test_length_beyond_material(smollm2_tokenizer, tmp_path):
    (tmp_path / "tiny.txt").write_text(
        "A short paragraph about very little at all, written only to be too small for a long example. " * 4 + "\n"
    )
    with pytest.raises(NeedleworkError, match="haystack") as e:
        generate(GenerateConfig(n=1, length=4096, haystack=str(tmp_path)), tokenizer=smollm2_tokenizer)
    assert "--length" in e.value.fix


def test_haystack_path_errors(smollm2_tokenizer, tmp_path):
    with pytest.raises(NeedleworkError, match="does not exist"):
        generate(GenerateConfig(n=1, haystack=str(tmp_path / "nope")), tokenizer=smollm2_tokenizer)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("Too short.\n")
    with pytest.raises(NeedleworkError, match="no usable prose"):
        generate(GenerateConfig(n=1, haystack=str(tmp_path / "empty")), tokenizer=smollm2_tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(NeedleworkError, match="bad.jsonl:1"):
        generate(GenerateConfig(n=1, haystack=str(bad)), tokenizer=smollm2_tokenizer)
