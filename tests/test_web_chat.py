"""The web chat page end to end: a live server with a tiny random model, driven by Debian's headless Chromium.

What a user does: open `/` (the server wants an API key, so the page says so), enter the key, send a message the server
rejects (its OpenAI-shaped 400 shows readably and the typed text is not lost), fix it, pick greedy decoding, send again
and watch the answer stream in. The streamed answer must equal what the API returns for the same request without
streaming, so the page's SSE parser neither drops nor duplicates a token. Then Stop: the stream ends mid-answer, the
server lets the request go, and the partial answer stays in the conversation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import LiveServer, demo_lines, make_run
from vernacular.serve.api import ServerLimits, create_app
from vernacular.serve.engine import Engine
from vernacular.serve.loading import find_tokenizer_dir, load_model_for_serving
from vernacular.serve.text import ServingTokenizer

MODEL = "tiny-web"
API_KEY = "sk-web-test-1234"
CHROMIUM = os.environ.get("VERNACULAR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VERNACULAR_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,860",
]  # fmt: skip
WAIT_S = 60  # generous: other test suites share these 2 cores


class GatedModel:
    """The real model behind a gate the test can close: after `allow` more forward calls the engine thread waits until
    the gate opens again. It makes "the answer is still streaming when the user presses Stop" certain, not a race."""

    def __init__(self, model):
        self.model = model
        self.lock = threading.Lock()
        self.allow: int | None = None  # None: always open
        self.blocked = threading.Event()
        self.opened = threading.Event()

    def close_after(self, calls: int) -> None:
        with self.lock:
            self.opened.clear()
            self.blocked.clear()
            self.allow = calls

    def open(self) -> None:
        with self.lock:
            self.allow = None
        self.opened.set()

    def __call__(self, *args, **kwargs):
        with self.lock:
            wait = self.allow is not None and self.allow <= 0
            if self.allow is not None:
                self.allow -= 1
        if wait:
            self.blocked.set()
            self.opened.wait(timeout=WAIT_S)
        return self.model(*args, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("web_run"), seed=1)  # greedy runs on to max_tokens
    model, ckpt = load_model_for_serving(run)
    engine = Engine(model, ServingTokenizer(find_tokenizer_dir(ckpt, run)), max_batch=4, max_model_len=256)
    engine.model = gate = GatedModel(engine.model)
    app = create_app(engine, model_name=MODEL, limits=ServerLimits(api_key=API_KEY, max_tokens_limit=200))
    with LiveServer(app) as live:
        live.gate = gate
        try:
            yield live
        finally:
            gate.open()


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        msg = (f"headless Chromium is needed for the web chat test but {', '.join(missing)} is missing: "
               "install Debian's `chromium` and `chromium-driver` (.ci/run does)")  # fmt: skip
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vernacular-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=f"timed out waiting for {what}")


def set_field(driver, element_id: str, value: str) -> None:
    """Type into a field the way a user does, then leave it (so its `change` handler runs)."""
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(value, Keys.TAB)


def test_chat_page_streams_the_same_answer_as_the_api(server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server.url + "/")
    d.execute_script("localStorage.clear()")  # a first visit, whatever ran before in this browser
    d.get(server.url + "/")
    assert d.title == "Vernacular chat"
    status = d.find_element("id", "status")
    wait(d, lambda _: "API key" in status.text, "the page to say the server wants an API key")

    # With the key: models load and the key is kept in localStorage.
    set_field(d, "api-key", API_KEY)
    wait(d, lambda _: status.text == "ready", "the model list")
    assert [o.text for o in d.find_elements("css selector", "#model option")] == [MODEL]
    assert d.execute_script("return localStorage.getItem('vernacular.chat.apiKey')") == API_KEY

    # A request the server rejects: its OpenAI-shaped 400 shows readably and the typed text returns to the input box.
    question = demo_lines("deu")[5]
    set_field(d, "max-tokens", "100000")
    box = d.find_element("id", "input")
    box.send_keys(question, Keys.ENTER)
    error = wait(d, lambda drv: drv.find_elements("css selector", ".msg.error .content"), "the error message")[0]
    assert error.text.startswith("HTTP 400: ") and "100000" in error.text, error.text  # status and server's message
    assert "(invalid_request_error" in error.text and "param: max_tokens" in error.text, error.text  # type, param
    wait(d, lambda _: box.get_attribute("value") == question, "the question back in the input box")
    assert not d.find_elements("css selector", ".msg.assistant")

    # Greedy decoding: the answer streams in, with its speed and time to first token under it.
    system = "Antworte kurz."
    set_field(d, "system", system)
    set_field(d, "temperature", "0")
    set_field(d, "max-tokens", "24")
    d.find_element("id", "send").click()
    stats = wait(d, lambda drv: drv.find_elements("css selector", ".msg.assistant .stats[data-done=true]"),
                 "the stream to finish")[0]  # fmt: skip
    assert "tok/s" in stats.text and "TTFT" in stats.text, stats.text
    assert float(stats.get_attribute("data-tokens-per-second")) > 0
    assert float(stats.get_attribute("data-ttft-ms")) >= 0
    shown = d.execute_script("return document.querySelector('.msg.assistant .content').textContent")
    d.save_screenshot(str(tmp_path / "web_chat.png"))

    # The same request through the API, not streamed: same text, same token count.
    body = {"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "temperature": 0, "max_tokens": 24}  # fmt: skip
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=WAIT_S)  # fmt: skip
    assert resp.status_code == 200, resp.text
    want = resp.json()
    assert shown and shown == want["choices"][0]["message"]["content"]
    assert int(stats.get_attribute("data-tokens")) == want["usage"]["completion_tokens"] == 24

    # User text is shown as text, never parsed as HTML.
    payload = '<img src=x onerror="document.title=\'pwned\'"><b>bold?</b>'
    set_field(d, "max-tokens", "2")
    d.find_element("id", "input").send_keys(payload, Keys.ENTER)
    wait(d, lambda drv: len(drv.find_elements("css selector", ".stats[data-done=true]")) == 2, "the second answer")
    users = d.find_elements("css selector", ".msg.user .content")
    assert users[-1].text == payload
    assert not d.find_elements("css selector", "#messages img, #messages b")
    assert d.title == "Vernacular chat"


def test_stop_button_ends_the_stream_and_the_server_frees_the_request(server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server.url + "/")
    d.execute_script("localStorage.setItem('vernacular.chat.apiKey', arguments[0])", API_KEY)
    d.get(server.url + "/")  # a reload: the API key comes back from localStorage, so the models load at once
    assert d.find_element("id", "api-key").get_attribute("value") == API_KEY
    status = d.find_element("id", "status")
    wait(d, lambda _: status.text == "ready", "the model list with the stored API key")
    d.find_element("id", "clear").click()
    set_field(d, "system", "")
    set_field(d, "temperature", "0.7")
    set_field(d, "max-tokens", "200")
    server.gate.close_after(8)  # the prefill and seven decode steps, then the engine holds mid-answer
    try:
        d.find_element("id", "input").send_keys("Tell me a long story.", Keys.ENTER)
        assert server.gate.blocked.wait(WAIT_S), "the engine never reached the gate"
        content = d.find_element("css selector", ".msg.assistant .content")
        wait(d, lambda _: d.execute_script("return arguments[0].textContent", content), "the first streamed text")
        assert d.find_element("id", "send").get_attribute("disabled") is not None
        d.find_element("id", "stop").click()
        stats = wait(d, lambda drv: drv.find_elements("css selector", ".msg.assistant .stats"), "the stats line")[0]
        wait(d, lambda _: "stopped by you" in stats.text, "the answer to be marked as stopped")
    finally:
        server.gate.open()
    assert d.find_element("id", "send").get_attribute("disabled") is None
    assert d.find_element("id", "stop").get_attribute("disabled") is not None
    assert stats.get_attribute("data-done") is None  # stopped, not finished
    partial = d.execute_script("return arguments[0].textContent", content)
    assert partial and "streaming" not in content.find_element("xpath", "..").get_attribute("class")
    # the server saw the disconnect and let the request go instead of generating all 200 tokens
    deadline = time.monotonic() + WAIT_S
    while (health := httpx.get(server.url + "/health", timeout=WAIT_S).json())["running"] + health["waiting"]:
        assert time.monotonic() < deadline, f"the stopped request is still in the engine: {health}"
        time.sleep(0.05)
    # the conversation goes on: the partial answer is part of the history sent with the next turn
    d.find_element("id", "input").send_keys("And then?", Keys.ENTER)
    done = wait(d, lambda drv: drv.find_elements("css selector", ".stats[data-done=true]"), "the next answer")[0]
    turns = [{"role": "user", "content": "Tell me a long story."}, {"role": "assistant", "content": partial},
             {"role": "user", "content": "And then?"}]  # fmt: skip
    counted = httpx.post(server.url + "/tokenize", json={"messages": turns},
                         headers={"Authorization": f"Bearer {API_KEY}"}, timeout=WAIT_S).json()["count"]  # fmt: skip
    assert int(done.get_attribute("data-prompt-tokens")) == counted
    d.save_screenshot(str(tmp_path / "web_chat_stopped.png"))


def test_sse_parser_survives_awkward_network_reads(server, browser):
    """The page's parser on a stream cut at the worst places: inside a UTF-8 character, between \\r and \\n, inside
    `data:`; with comments, CRLF line ends and an event split over two `data:` lines."""
    d = browser
    d.get(server.url + "/")
    events = [{"choices": [{"delta": {"content": "Ζεύς ✓ 𝄞"}}]}, {"usage": {"completion_tokens": 3}}]
    wire = (": keep-alive\r\n\r\n" + f"data: {json.dumps(events[0], ensure_ascii=False)}\r\n\r\n"
            + 'data: {"usage":\r\ndata: {"completion_tokens": 3}}\r\n\r\n' + "data: [DONE]\n\n").encode()  # fmt: skip
    cuts = sorted({1, 5, wire.index("Ζ".encode()) + 1, wire.index("𝄞".encode()) + 2, wire.index(b"data:") + 3,
                   wire.index(b'"usage":\r\n') + len('"usage":\r'), len(wire) - 3})  # fmt: skip
    pieces = [list(wire[a:b]) for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    got = d.execute_async_script("""
        const [pieces, done] = [arguments[0], arguments[arguments.length - 1]];
        const body = new ReadableStream({start(c) { pieces.forEach((p) => c.enqueue(new Uint8Array(p))); c.close(); }});
        (async () => { const out = []; for await (const e of sseEvents(body)) out.push(e); return out; })()
          .then(done, (err) => done({error: String(err)}));
    """, pieces)  # fmt: skip
    assert got == events
    truncated = [list(wire[: wire.index(b"data: [DONE]")])]
    got = d.execute_async_script("""
        const [pieces, done] = [arguments[0], arguments[arguments.length - 1]];
        const body = new ReadableStream({start(c) { pieces.forEach((p) => c.enqueue(new Uint8Array(p))); c.close(); }});
        (async () => { for await (const e of sseEvents(body)) {} return "no error"; })()
          .then(done, (err) => done(String(err)));
    """, truncated)  # fmt: skip
    assert "without [DONE]" in got
