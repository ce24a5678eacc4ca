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

from serve_helpers import free_port, make_run, sentence

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
    question = sentence("ita", 0)
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
    prompt = sentence("pol", 2)
    res = client.completions.create(model="vernacular-tiny", prompt=prompt, max_tokens=6, temperature=0,
                                    logprobs=2, extra_body={"ignore_eos": True})  # fmt: skip
    lp = res.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert all(max(top.values()) == pytest.approx(tl) for top, tl in zip(lp.top_logprobs, lp.token_logprobs))
    echo = client.completions.create(model="vernacular-tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    assert echo.choices[0].text == prompt and echo.choices[0].logprobs.token_logprobs[0] is None


# ---------------------------------------------------------------- issue 17: a drop-in for OpenAI clients
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}  # fmt: skip


def test_structured_output_parse_with_a_pydantic_model(client):
    from typing import Literal

    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        city: str = Field(max_length=12)
        temperature: int = Field(ge=-50, le=60)
        unit: Literal["C", "F"]
        tags: list[Literal["sun", "rain", "wind"]] = Field(max_length=3)

    for seed in range(3):
        res = client.chat.completions.parse(model="vernacular-tiny", response_format=Weather, seed=seed,
                                            messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
                                            max_tokens=200)  # fmt: skip
        weather = res.choices[0].message.parsed
        assert isinstance(weather, Weather) and -50 <= weather.temperature <= 60
        assert res.choices[0].finish_reason == "stop"


def _call_weather(client, messages, stream: bool):
    kw = dict(model="vernacular-tiny", messages=messages, tools=[WEATHER_TOOL], max_tokens=120, seed=3,
              tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False)
    if not stream:
        res = client.chat.completions.create(**kw)
        return res.choices[0].message.tool_calls, res.choices[0].finish_reason
    calls, finish = {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = d.id or call["id"]
                if d.function is not None:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


def test_tool_call_round_trip_streaming_and_not(client):
    import json

    import jsonschema

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain, finish = _call_weather(client, messages, stream=False)
    streamed, s_finish = _call_weather(client, messages, stream=True)
    assert finish == s_finish == "tool_calls" and len(plain) == len(streamed) == 1
    call = plain[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather" == streamed[0]["name"]
    assert call.function.arguments == streamed[0]["arguments"]  # same seed: the same call, streamed in pieces
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 12, "unit": args["unit"]})}]
    final = client.chat.completions.create(model="vernacular-tiny", messages=messages, tools=[WEATHER_TOOL],
                                           tool_choice="none", max_tokens=8, temperature=0)  # fmt: skip
    assert isinstance(final.choices[0].message.content, str) and final.choices[0].message.tool_calls is None
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="vernacular-tiny", messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=8,
        temperature=0, stream=True) if c.choices]  # fmt: skip
    assert "".join(parts) == final.choices[0].message.content


def test_responses_api_text_and_stream(client):
    res = client.responses.create(model="vernacular-tiny", input="Bonjour !", instructions="Answer in French.",
                                  max_output_tokens=8, temperature=0, store=False)  # fmt: skip
    assert res.status in ("completed", "incomplete") and isinstance(res.output_text, str)
    assert res.usage.output_tokens <= 8
    deltas, done = [], None
    for event in client.responses.create(model="vernacular-tiny", input="Bonjour !", instructions="Answer in French.",
                                         max_output_tokens=8, temperature=0, store=False, stream=True):  # fmt: skip
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):  # incomplete: max_output_tokens reached
            done = event.response
    assert "".join(deltas) == res.output_text == done.output_text and done.status == res.status
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="vernacular-tiny", input="x", previous_response_id="resp_123", store=False)


def test_logit_bias_and_penalties_change_outputs_as_specified(client):
    from collections import Counter

    kw = dict(model="vernacular-tiny", prompt="Europe is", max_tokens=24, temperature=0,
              logprobs=0, extra_body={"ignore_eos": True})  # fmt: skip
    base = client.completions.create(**kw).choices[0].logprobs.tokens
    forced = client.completions.create(**{**kw, "logit_bias": {"300": 100}}).choices[0].text
    token300 = httpx.post(f"{client.base_url}".replace("/v1/", "") + "/detokenize", json={"tokens": [300]},
                          headers={"Authorization": f"Bearer {KEY}"}).json()["prompt"]  # fmt: skip
    assert forced == token300 * 24
    penalised = client.completions.create(**{**kw, "frequency_penalty": 2.0}).choices[0].logprobs.tokens
    assert max(Counter(penalised).values()) <= max(Counter(base).values())
    assert penalised != base or max(Counter(base).values()) == 1


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
