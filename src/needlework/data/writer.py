"""LLM-written documents for high-diversity haystacks: an OpenAI-compatible chat-completions client
(standard library only) and a local transformers model, behind one `write_documents` interface.

Every completion is cached on disk by a hash of its request content (model, messages, sampling
options; never the API key), so reruns cost nothing. The client retries 429/5xx/connection errors
with exponential backoff and runs requests concurrently. `serve_local` is a tiny server speaking
`/v1/chat/completions` backed by a local model, for tests and offline use.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from needlework.errors import NeedleworkError
from needlework.io import hash_obj, write_json

log = logging.getLogger(__name__)
SYSTEM = "You write realistic, self-contained documents in plain prose: no title, no lists, no markdown."
DOC_TEMPLATE = "Write a factual-sounding article of about 200 words about {topic}."


@dataclass
class WriterConfig:
    """How documents are written. Fields are the YAML keys of a `writer:` section."""

    kind: str = "openai"  # openai (any OpenAI-compatible server) | local (a transformers model)
    model: str = "smollm2"  # served model name (openai) or model reference for load_model (local)
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    system: str = SYSTEM
    max_tokens: int = 400
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = 0
    concurrency: int = 8
    max_retries: int = 5
    backoff_s: float = 1.0  # first retry waits this long, then doubles (capped at 60 s)
    timeout_s: float = 300.0
    cache: bool = True
    cache_dir: str | None = None  # default: <needlework cache>/writer


class Writer(Protocol):
    def write_documents(self, prompts: list[str]) -> list[str]: ...


def _cache_root(cfg: WriterConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    from needlework.models.load import cache_dir

    return cache_dir() / "writer"


class _CachedWriter:
    """Shared cache + fan-out; subclasses implement `_complete(request) -> text`."""

    parallel = True

    def __init__(self, cfg: WriterConfig):
        self.cfg = cfg
        self.n_requests = 0  # completions actually computed (not cache hits)
        self.n_cache_hits = 0
        self._lock = threading.Lock()

    def request_for(self, prompt: str) -> dict[str, Any]:
        """The request content; its hash is the cache key (so it must not hold secrets)."""
        c = self.cfg
        msgs = ([{"role": "system", "content": c.system}] if c.system else []) + [{"role": "user", "content": prompt}]
        req = {"model": c.model, "messages": msgs, "max_tokens": c.max_tokens, "temperature": c.temperature, "top_p": c.top_p}
        if c.seed is not None:
            req["seed"] = c.seed
        return req

    def _one(self, prompt: str) -> str:
        req = self.request_for(prompt)
        key = hash_obj({"kind": self.cfg.kind, **req})
        path = _cache_root(self.cfg) / key[:2] / f"{key}.json"
        if self.cfg.cache and path.exists():
            try:
                text = json.loads(path.read_text(encoding="utf-8"))["text"]
                with self._lock:
                    self.n_cache_hits += 1
                return text
            except (json.JSONDecodeError, KeyError, OSError):
                log.warning("ignoring unreadable writer cache entry %s", path)
        text = self._complete(req)
        with self._lock:
            self.n_requests += 1
        if self.cfg.cache:
            write_json(path, {"request": req, "text": text})
        return text

    def _complete(self, req: dict[str, Any]) -> str:
        raise NotImplementedError

    def write_documents(self, prompts: list[str]) -> list[str]:
        """One completion per prompt, in order (cached, concurrent where the backend allows)."""
        workers = max(1, min(self.cfg.concurrency if self.parallel else 1, len(prompts)))
        bar = tqdm(total=len(prompts), desc="write", unit="doc", disable=len(prompts) < 8)
        with ThreadPoolExecutor(max_workers=workers) as ex:
            out = []
            for text in ex.map(self._one, prompts):
                out.append(text)
                bar.update()
        bar.close()
        return out


class OpenAIWriter(_CachedWriter):
    """Client for any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, OpenAI, ...)."""

    def _complete(self, req: dict[str, Any]) -> str:
        c = self.cfg
        url = c.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(c.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps(req).encode()
        last = ""
        for attempt in range(c.max_retries + 1):
            wait = min(c.backoff_s * 2**attempt, 60.0) * (1 + 0.1 * random.random())
            try:
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=c.timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return str(data["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    hint = f"check the key in ${c.api_key_env}" if e.code in (401, 403) else "check --model and --base-url"
                    raise NeedleworkError(f"writer server {url} answered HTTP {e.code} ({e.reason})", hint) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 60.0)
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise NeedleworkError(
                    f"writer server {url} sent no chat completion", "is --base-url an OpenAI-compatible /v1 endpoint?"
                ) from None
            if attempt < c.max_retries:
                log.info("writer request failed (%s); retry %d in %.1f s", last, attempt + 1, wait)
                time.sleep(wait)
        raise NeedleworkError(
            f"writer server {url} failed {c.max_retries + 1} times (last: {last})",
            "check that the server is up, or raise --max-retries / lower --concurrency",
        )


def generate_chat(
    model, tokenizer, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = 0
) -> str:
    """One chat completion from a local causal LM (greedy when temperature is 0)."""
    import torch

    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer("\n\n".join(m["content"] for m in messages) + "\n\n", return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    kw: dict[str, Any] = {
        "do_sample": temperature > 0,
        "max_new_tokens": max_tokens,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
    }
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, **kw)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


class LocalWriter(_CachedWriter):
    """Documents from a local transformers model (loaded with `load_model`, or passed in)."""

    parallel = False  # one model, one generate at a time

    def __init__(self, cfg: WriterConfig, model=None, tokenizer=None):
        super().__init__(cfg)
        self._model, self._tok = model, tokenizer

    def _complete(self, req: dict[str, Any]) -> str:
        if self._model is None:
            from needlework.models.load import load_model

            self._model, self._tok = load_model(self.cfg.model)
        return generate_chat(self._model, self._tok, req["messages"], req["max_tokens"], req["temperature"], req["top_p"], req.get("seed"))


def make_writer(cfg: WriterConfig, model=None, tokenizer=None) -> Writer:
    """The writer for `cfg.kind`.

    Raises:
        NeedleworkError: unknown kind.
    """
    if cfg.kind == "openai":
        return OpenAIWriter(cfg)
    if cfg.kind == "local":
        return LocalWriter(cfg, model, tokenizer)
    raise NeedleworkError(f"unknown writer kind {cfg.kind!r}", "use openai (any OpenAI-compatible server) or local")


def clean_document(text: str) -> str:
    """Strip markdown headings/emphasis and blank-line runs that chat models add around prose."""
    lines = [re.sub(r"^\s*#+\s*", "", ln).replace("**", "") for ln in text.strip().splitlines()]
    if lines and len(lines) > 1 and len(lines[0]) < 80 and not lines[0].rstrip().endswith((".", "!", "?")):
        lines = lines[1:]  # a title line
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def writer_documents(topic_prompts: list[str], writer: Writer, template: str = DOC_TEMPLATE) -> list[str]:
    """Haystack documents written by `writer`, one per topic (`template` formats each; "{topic}"
    passes prompts unchanged). Empty completions are dropped, so the result may be shorter."""
    texts = writer.write_documents([template.format(topic=t) for t in topic_prompts])
    return [t for t in (clean_document(x) for x in texts) if t]


# ----------------------------------------------------------------------------- local server


class LocalServer:
    """A running `serve_local` server: `base_url`, request counters, `fail_next(n, status)`, `close()`."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self.httpd, self.thread = httpd, thread
        host, port = httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        self.n_requests = 0  # chat-completion requests received (failed ones included)
        self.n_failed = 0
        self.in_flight = 0  # requests being answered now, and the most at once (concurrency check)
        self.max_in_flight = 0
        self.authorizations: list[str | None] = []  # Authorization headers seen (for tests)
        self._fail: tuple[int, int] = (0, 500)
        self.lock = threading.Lock()

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` requests with HTTP `status` (429 carries Retry-After: 0)."""
        self._fail = (n, status)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local_handler(model, tokenizer, delay_s: float, gen_lock: threading.Lock, server: dict[str, LocalServer]) -> type:
    """The request handler class of `serve_local`: `server["s"]` is the running LocalServer, `gen_lock` serializes generation."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # no headers, so no key, ever reaches a log
            log.debug("serve_local: %s %s", self.command, self.path)

        def _send(self, status: int, obj: dict, extra: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout); it will retry
                log.debug("serve_local: client closed the connection before the answer")

        def do_GET(self):
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "local", "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            s = server["s"]
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except ValueError:
                return self._send(400, {"error": {"message": "the body is not JSON"}})
            with s.lock:
                s.n_requests += 1
                s.authorizations.append(self.headers.get("Authorization"))
                n_fail, status = s._fail
                if n_fail > 0:
                    s._fail = (n_fail - 1, status)
                    s.n_failed += 1
                s.in_flight += 1
                s.max_in_flight = max(s.max_in_flight, s.in_flight)
            try:
                self._answer(s, req, n_fail, status)
            finally:
                with s.lock:
                    s.in_flight -= 1

        def _answer(self, s: LocalServer, req: dict, n_fail: int, status: int) -> None:
            if n_fail > 0:
                return self._send(status, {"error": {"message": "injected failure"}}, {"Retry-After": "0"} if status == 429 else None)
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return self._send(400, {"error": {"message": "messages must be a non-empty list"}})
            time.sleep(delay_s)  # lets tests see overlapping requests
            with gen_lock:
                text = generate_chat(
                    model,
                    tokenizer,
                    msgs,
                    int(req.get("max_tokens") or 256),
                    float(req.get("temperature") or 0.0),
                    float(req.get("top_p") or 1.0),
                    req.get("seed"),
                )
            self._send(
                200,
                {
                    "id": f"chatcmpl-{s.n_requests}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": req.get("model", "local"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                },
            )

    return Handler


def serve_local(model, tokenizer, host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.0) -> LocalServer:
    """Serve `model` on `/v1/chat/completions` (OpenAI protocol) from a daemon thread.

    Args:
        model, tokenizer: a local causal LM (e.g. from `load_model`).
        port: 0 picks a free port; read it from `LocalServer.base_url`.
        delay_s: sleep before each generation (outside the model lock), to test concurrency.
    Returns:
        The running server; call `close()` (or use it as a context manager) to stop it.
    """
    gen_lock = threading.Lock()
    server: dict[str, LocalServer] = {}

    handler = _local_handler(model, tokenizer, delay_s, gen_lock, server)
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="needlework-serve-local", daemon=True)
    server["s"] = LocalServer(httpd, thread)
    thread.start()
    return server["s"]


def config_dict(cfg: WriterConfig) -> dict[str, Any]:
    """The config as saved with outputs (it holds the key's variable name, never the key)."""
    return asdict(cfg)
