"""LLM document writer: the OpenAI-compatible client against `serve_local` over real HTTP."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from needlework.data.writer import (
    WriterConfig,
    clean_document,
    generate_chat,
    make_writer,
    serve_local,
    writer_documents,
)
from needlework.errors import NeedleworkError

SECRET = "sk-test-needlework-5f3a9c"


@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    """A tiny random Llama with SmolLM2's vocabulary (no EOS, so it always writes max_tokens)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=len(smollm2_tokenizer),
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    return model, smollm2_tokenizer


@pytest.fixture
def server(tiny):
    with serve_local(*tiny) as srv:
        yield srv


def cfg_for(srv, tmp_path, **kw):
    base = dict(
        base_url=srv.base_url,
        model="tiny",
        max_tokens=6,
        cache_dir=str(tmp_path / "cache"),
        api_key_env="NW_TEST_KEY",
        backoff_s=0.01,
        max_retries=3,
        concurrency=3,
    )
    base.update(kw)
    return WriterConfig(**base)


def test_client_writes_caches_and_sends_key_only_in_header(server, tiny, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("NW_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    cfg = cfg_for(server, tmp_path)
    w = make_writer(cfg)
    prompts = ["a lighthouse", "a chess club", "a bakery", "a river"]
    docs = w.write_documents(prompts)
    assert len(docs) == 4 and all(d.strip() for d in docs)
    # the server really ran the model: same greedy text as calling it directly
    assert docs[1] == generate_chat(*tiny, w.request_for("a chess club")["messages"], 6)
    assert server.n_requests == 4 and w.n_requests == 4 and w.n_cache_hits == 0
    assert server.authorizations == [f"Bearer {SECRET}"] * 4
    w2 = make_writer(cfg)  # a fresh client: everything comes from the disk cache
    assert w2.write_documents(prompts) == docs
    assert server.n_requests == 4 and w2.n_cache_hits == 4 and w2.n_requests == 0
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 4
    for f in files:
        blob = f.read_text()
        assert SECRET not in blob and json.loads(blob)["text"] in docs
    out = capsys.readouterr()
    assert SECRET not in caplog.text and SECRET not in out.out + out.err
    # a changed request (other max_tokens) is a cache miss
    make_writer(cfg_for(server, tmp_path, max_tokens=5)).write_documents(prompts[:1])
    assert server.n_requests == 5


def test_requests_run_concurrently(tiny, tmp_path):
    with serve_local(*tiny, delay_s=0.3) as srv:
        docs = make_writer(cfg_for(srv, tmp_path, concurrency=4)).write_documents([f"topic {i}" for i in range(4)])
        assert len(docs) == 4 and srv.max_in_flight >= 2
    with serve_local(*tiny, delay_s=0.1) as srv:
        make_writer(cfg_for(srv, tmp_path / "c1", concurrency=1)).write_documents([f"topic {i}" for i in range(3)])
        assert srv.max_in_flight == 1


def test_no_key_no_header(server, tmp_path, monkeypatch):
    monkeypatch.delenv("NW_TEST_KEY", raising=False)
    make_writer(cfg_for(server, tmp_path)).write_documents(["x"])
    assert server.authorizations == [None]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_transient_errors(server, tmp_path, status, caplog):
    caplog.set_level(logging.INFO)
    server.fail_next(2, status)
    w = make_writer(cfg_for(server, tmp_path))
    assert w.write_documents(["a lighthouse"])[0].strip()
    assert server.n_requests == 3 and server.n_failed == 2
    assert f"HTTP {status}" in caplog.text


def test_gives_up_after_max_retries_and_not_on_401(server, tmp_path):
    server.fail_next(10, 502)
    with pytest.raises(NeedleworkError, match="failed 2 times"):
        make_writer(cfg_for(server, tmp_path, max_retries=1)).write_documents(["a"])
    assert server.n_requests == 2
    server.fail_next(1, 401)
    with pytest.raises(NeedleworkError, match="HTTP 401") as e:
        make_writer(cfg_for(server, tmp_path)).write_documents(["b"])
    assert "NW_TEST_KEY" in e.value.fix and server.n_requests == 3  # not retried


def test_connection_refused_is_retried_then_reported(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = WriterConfig(base_url=f"http://127.0.0.1:{port}/v1", cache_dir=str(tmp_path), max_retries=2, backoff_s=0.01)
    with pytest.raises(NeedleworkError, match="failed 3 times"):
        make_writer(cfg).write_documents(["a"])


def test_local_writer_and_helper(tiny, tmp_path):
    cfg = WriterConfig(kind="local", max_tokens=6, cache_dir=str(tmp_path))
    w = make_writer(cfg, *tiny)
    docs = w.write_documents(["p1", "p2"])
    assert docs[0] == generate_chat(*tiny, w.request_for("p1")["messages"], 6) and w.n_requests == 2
    w2 = make_writer(cfg, *tiny)
    assert w2.write_documents(["p1", "p2"]) == docs and w2.n_requests == 0
    with pytest.raises(NeedleworkError, match="unknown writer kind"):
        make_writer(WriterConfig(kind="vllm"))


class _Fake:
    def __init__(self):
        self.prompts = []

    def write_documents(self, prompts):
        self.prompts += prompts
        return ["# A Title\n\n**Bold** claim here.\n\n\n\nSecond paragraph.", "   "][: len(prompts)]


def test_writer_documents_cleans_and_drops_empty():
    fake = _Fake()
    assert writer_documents(["towns", "rivers"], fake) == ["Bold claim here.\n\nSecond paragraph."]
    assert fake.prompts[0] == "Write a factual-sounding article of about 200 words about towns."
    assert clean_document("One sentence.") == "One sentence."


def test_cli_write_docs(server, tmp_path):
    import typer
    from typer.testing import CliRunner

    from needlework.data import cli_real

    app = typer.Typer()
    cli_real.register(app)
    out = tmp_path / "docs.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "write-docs",
            "--topic",
            "a lighthouse",
            "--topic",
            "a bakery",
            "--out",
            str(out),
            "--base-url",
            server.base_url,
            "--max-tokens",
            "5",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["topic"] for r in rows] == ["a lighthouse", "a bakery"] and all(r["text"] for r in rows)
    assert server.n_requests == 2 and "2 requests" in res.output


@pytest.mark.slow
def test_real_smollm2_server_writes_prose(tmp_path):
    from needlework.models.load import load_model

    model, tok = load_model("smollm2")
    with serve_local(model, tok) as srv:
        docs = writer_documents(
            ["a lighthouse on a rocky coast"], make_writer(WriterConfig(base_url=srv.base_url, max_tokens=40, cache_dir=str(tmp_path)))
        )
    words = docs[0].split()
    assert len(words) >= 10 and sum(w.strip(".,").isalpha() for w in words) >= 8
