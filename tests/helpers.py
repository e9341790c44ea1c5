"""Small generation loops over the object layer, shared by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cortex_llama import Batch, Context, SamplerChain


def prefill(ctx: Context, tokens, seq_id: int = 0, batch: Batch | None = None) -> None:
    batch = batch or ctx.new_batch()
    batch.clear()
    batch.add_many(tokens, 0, seq_id)
    ctx.decode(batch)


def greedy_argmax(ctx: Context, prompt, n: int, seq_id: int = 0) -> list[int]:
    """Greedy by numpy argmax of the logits, one sequence."""
    batch = ctx.new_batch()
    prefill(ctx, prompt, seq_id, batch)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(n):
        tok = int(np.argmax(ctx.logits()))
        out.append(tok)
        batch.clear()
        batch.add(tok, pos, seq_id, logits=True)
        pos += 1
        ctx.decode(batch)
    return out


def generate(ctx: Context, chain: SamplerChain, prompt, n: int) -> list[int]:
    batch = ctx.new_batch()
    prefill(ctx, prompt, 0, batch)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(n):
        tok = chain.sample(ctx)
        out.append(tok)
        batch.clear()
        batch.add(tok, pos, 0, logits=True)
        pos += 1
        ctx.decode(batch)
    return out


def same_greedy(got, solo, gap: float = 2e-3, first: int | None = None) -> bool:
    """``got``'s tokens equal ``solo``'s (a Completion made with logprobs >= 2), or
    they part only where ``solo``'s two best tokens were within ``gap`` in log
    probability. Batch composition changes CPU float rounding (~1e-4 in the
    logprobs of the f32 test models), which can flip a near tie. Quantized
    models round activations to 8 bits, which turns those differences into steps
    of ~0.05 that then drift: compare them over their ``first`` tokens with a
    larger ``gap``."""
    a, b = got.tokens[:first], solo.tokens[:first]
    if a == b:
        return True
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if k is None:  # one is a prefix of the other: it ended (eog) on a near tie
        k = min(len(a), len(b))
        if k >= len(solo.logprobs):
            return False
    top = solo.logprobs[k].top
    return len(top) >= 2 and top[0][1] - top[1][1] < gap


def eog_ban(llm) -> dict[int, float]:
    """A logit bias that bans every end-of-generation token (so greedy runs are long)."""
    return {t: float("-inf") for t in range(llm.model.n_vocab) if llm.model.vocab.is_eog(t)}


def cancel_leaves_the_other(llm, keep_prompt: str, stop_prompt: str, max_tokens: int) -> None:
    """Two greedy streams at once; the second is cancelled after 3 pieces. It
    ends "cancelled", and the first equals its run alone."""
    kw = dict(temperature=0, max_tokens=max_tokens)
    keep = llm.submit(keep_prompt, **kw)
    stop = llm.submit(stop_prompt, **kw)
    for i, _ in enumerate(stop):
        if i == 3:
            stop.cancel()
    assert stop.result().finish_reason == "cancelled"
    assert keep.result().tokens == llm.complete(keep_prompt, **kw).tokens


def schema_run_matches(spec_llm, plain_llm) -> None:
    """A JSON-schema request on ``spec_llm`` (speculating) gives ``plain_llm``'s
    tokens, and valid JSON with the schema's keys."""
    import json

    schema = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 30},
                                               "n": {"type": "integer"}}, "required": ["word", "n"]}
    kw = dict(temperature=0, max_tokens=80, json_schema=schema)
    got = spec_llm.complete("JSON: ", **kw)
    assert got.tokens == plain_llm.complete("JSON: ", **kw).tokens
    assert set(json.loads(got.text)) == {"word", "n"}


# -- the HTTP server in a subprocess (httpx and openai are imported where used) ---------------
KEY = "test-key-123"
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m cortex_llama serve` in a subprocess, environment passed through."""

    def __init__(self, model: Path, log: Path, *args: str, api_key: str | None = KEY,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        import httpx

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log = log
        self.quantized = False
        cmd = [sys.executable, "-m", "cortex_llama", "serve", str(model), "--port", str(self.port),
               "--threads", "2", "--log-level", "warning", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not become healthy:\n{self.output()}")
            time.sleep(0.1)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0,
                             timeout=HTTP_TIMEOUT)

    def aclient(self) -> Any:
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0,
                                  timeout=HTTP_TIMEOUT)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        import httpx

        headers = {**self.headers, **kw.pop("headers", {})}
        if body is not None and "content" not in kw:
            kw["json"] = body
        return httpx.post(self.url + path, headers=headers, timeout=HTTP_TIMEOUT, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        import httpx

        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.get(self.url + path, headers=headers, timeout=HTTP_TIMEOUT, **kw)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name.split("{")[0].removeprefix("cortex_llama_")] = float(value)
        return out

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def wait_for(cond: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def template_server(request: Any, tmp_path_factory: Any, name: str, hermes_template: str) -> Server:
    """A server for ``request.param`` = ``"<model fixture>-<hermes|default>"``: the
    model with the Hermes template (tools rendered by llama.cpp) or with its own
    (forced calls by the polyfill). ``server.template`` tells which."""
    model, template = request.param.split("-")
    tmp = tmp_path_factory.mktemp(f"{name}-{request.param}")
    args = ["--ctx-size", "4096", "--parallel", "4", "--model-alias", "test-model"]
    if template == "hermes":
        (tmp / "hermes.jinja").write_text(hermes_template)
        args += ["--chat-template-file", str(tmp / "hermes.jinja")]
    srv = Server(request.getfixturevalue(f"{model}_path"), tmp / "server.log", *args)
    srv.template = template  # type: ignore[attr-defined]  # read by the tool tests
    return srv
