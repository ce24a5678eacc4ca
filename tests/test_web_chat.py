"""The web chat page end to end: a live server with a tiny random model, driven by Debian's headless Chromium.

What a user does: open `/` (the server wants an API key, so the page says so), enter the key, send a message the server
rejects (its OpenAI-shaped 400 shows readably and the typed text is not lost), fix it, pick greedy decoding, send again
and watch the answer stream in. The streamed answer must equal what the API returns for the same request without streaming, so the page's SSE
parser neither drops nor duplicates a token.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from serve_helpers import NTREX, LiveServer, make_run
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("web_run"), seed=1)  # greedy runs on to max_tokens
    model, ckpt = load_model_for_serving(run)
    engine = Engine(model, ServingTokenizer(find_tokenizer_dir(ckpt, run)), max_batch=4, max_model_len=256)
    app = create_app(engine, model_name=MODEL, limits=ServerLimits(api_key=API_KEY, max_tokens_limit=200))
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        msg = (f"headless Chromium is needed for the web chat test but {', '.join(missing)} is missing: "
               "install Debian's `chromium` and `chromium-driver` (.ci/run does)")  # fmt: skip
        if os.environ.get("CI"):
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
    assert d.title == "Vernacular chat"
    status = d.find_element("id", "status")
    wait(d, lambda _: "API key" in status.text, "the page to say the server wants an API key")

    # With the key: models load and the key is kept in localStorage.
    set_field(d, "api-key", API_KEY)
    wait(d, lambda _: status.text == "ready", "the model list")
    assert [o.text for o in d.find_elements("css selector", "#model option")] == [MODEL]
    assert d.execute_script("return localStorage.getItem('vernacular.chat.apiKey')") == API_KEY

    # A request the server rejects: its OpenAI-shaped 400 shows readably and the typed text returns to the input box.
    question = (NTREX / "deu.txt").read_text(encoding="utf-8").splitlines()[5]
    set_field(d, "max-tokens", "100000")
    box = d.find_element("id", "input")
    box.send_keys(question, Keys.ENTER)
    error = wait(d, lambda drv: drv.find_elements("css selector", ".msg.error .content"), "the error message")[0]
    assert error.text.startswith("HTTP 400: max_tokens is 100000") and "param: max_tokens" in error.text, error.text
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
