"""The official `openai` Python client against a real `vernacular serve` process; then SIGTERM mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from serve_helpers import FLORES, free_port, make_run

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("client_run"))
    port = free_port()
    env = {**os.environ, "VERNACULAR_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vernacular", "serve", "--run-dir", str(run), "--port", str(port), "--max-batch", "4",
         "--model-name", "vernacular-tiny", "--max-model-len", "512", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"vernacular serve did not start:\n{proc.stdout.read()}")
        time.sleep(0.2)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_and_auth(server, client):
    assert [m.id for m in client.models.list().data] == ["vernacular-tiny"]
    bad = openai.OpenAI(base_url=f"{server[1]}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="vernacular-tiny", messages=[{"role": "user", "content": "hi"}],
                                       temperature=-2)  # fmt: skip


def test_chat_and_streaming_chat(client):
    question = (FLORES / "ita.txt").read_text(encoding="utf-8").splitlines()[0]
    messages = [{"role": "user", "content": question}]
    res = client.chat.completions.create(model="vernacular-tiny", messages=messages, max_tokens=16, temperature=0,
                                         seed=1, logprobs=True, top_logprobs=3)  # fmt: skip
    msg = res.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert res.usage.completion_tokens == len(res.choices[0].logprobs.content) <= 16
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in res.choices[0].logprobs.content)

    stream = client.chat.completions.create(model="vernacular-tiny", messages=messages, max_tokens=16,
                                            temperature=0, seed=1, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == msg.content
    assert finish == res.choices[0].finish_reason
    assert usage.completion_tokens == res.usage.completion_tokens


def test_completions_with_logprobs(client):
    prompt = (FLORES / "pol.txt").read_text(encoding="utf-8").splitlines()[2]
    res = client.completions.create(model="vernacular-tiny", prompt=prompt, max_tokens=6, temperature=0,
                                    logprobs=2, extra_body={"ignore_eos": True})  # fmt: skip
    lp = res.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert all(max(top.values()) == pytest.approx(tl) for top, tl in zip(lp.top_logprobs, lp.token_logprobs))
    echo = client.completions.create(model="vernacular-tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    assert echo.choices[0].text == prompt and echo.choices[0].logprobs.token_logprobs[0] is None


def test_sigterm_ends_streams_and_exits_cleanly(server, client):
    proc, _ = server
    stream = client.completions.create(model="vernacular-tiny", prompt="Hello", max_tokens=500, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    seen, finish = 0, None
    for chunk in stream:
        seen += 1
        if seen == 3:
            proc.send_signal(signal.SIGTERM)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "abort"  # the stream was ended by the shutdown, not by the length limit
    # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM after our clean-shutdown line
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "shut down cleanly" in proc.stdout.read()
