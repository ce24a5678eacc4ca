"""The engine: latent-cache decoding equals recomputation, continuous batching equals running alone, sampling,
stop strings, UTF-8-safe streaming, prompt logprobs, loading checkpoints."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from serve_helpers import demo_lines, make_run, save_checkpoint, sentence
from vernacular.serve.engine import Engine, RequestError
from vernacular.serve.loading import CheckpointError, find_tokenizer_dir, load_model_for_serving, resolve_checkpoint
from vernacular.serve.sampling import SamplingParams
from vernacular.serve.text import ServingTokenizer, TextStream


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve_run"))


@pytest.fixture(scope="module")
def engine(run_dir):
    model, ckpt = load_model_for_serving(run_dir)
    tok = ServingTokenizer(find_tokenizer_dir(ckpt, run_dir))
    with Engine(model, tok, max_batch=4, max_model_len=256, seed=0) as eng:
        yield eng


def prompts(tok, n=5):
    lines = []
    for lang, i in zip(["eng", "ell", "hun", "deu", "bul", "fin"], range(n)):
        words = sentence(lang, i).split()
        lines.append(" ".join(words[: 3 + 4 * i]))  # mixed lengths
    return [tok.encode(t) for t in lines]


def greedy(max_tokens=24, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def test_cached_greedy_equals_full_recomputation(engine):
    model = engine.model
    for prompt in prompts(engine.tokenizer, 3):
        got = engine.complete(prompt, greedy(logprobs=0))
        ids = list(prompt)
        ref_lps = []
        with torch.no_grad():
            for _ in range(24):
                logits = model(torch.tensor([ids])).logits[0, -1].float()  # no cache: the whole sequence each step
                nxt = int(logits.argmax())
                ref_lps.append(float(torch.log_softmax(logits, -1)[nxt]))
                ids.append(nxt)
        assert got.token_ids == ids[len(prompt) :]
        assert got.finish_reason == "length" and got.completion_tokens == 24
        assert [lp.logprob for lp in got.logprobs] == pytest.approx(ref_lps, abs=1e-4)
    assert len(set(got.token_ids)) > 3  # a real, varied continuation, not one repeated token


def test_non_streaming_request_gets_one_aggregated_output(engine):
    """stream=False: a single StepOutput at the end, identical to joining the streamed ones (text, ids, logprobs)."""
    prompt = prompts(engine.tokenizer, 2)[1]
    params = greedy(20, logprobs=2, prompt_logprobs=1)
    streamed = list(engine.generate(prompt, params))
    held = list(engine.generate(prompt, params, stream=False))
    assert len(streamed) > 1 and len(held) == 1 and held[0].finished
    one = held[0]
    assert one.text == "".join(o.text for o in streamed)
    assert one.token_ids == [t for o in streamed for t in o.token_ids]
    assert [(lp.token_id, lp.logprob, lp.top) for lp in one.logprobs] == [
        (lp.token_id, lp.logprob, lp.top) for o in streamed for lp in o.logprobs
    ]
    assert one.prompt_logprobs == streamed[0].prompt_logprobs and one.prompt_logprobs is not None
    assert (one.finish_reason, one.completion_tokens, one.prompt_tokens) == ("length", 20, len(prompt))


def _run_concurrently(engine, jobs, stagger=False):
    """Submit every job (all at once, or each after the previous one produced a few tokens); return token ids."""
    results = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]
    started = [threading.Event() for _ in jobs]

    def collect(i):
        ids = []

        def on_output(out):
            ids.extend(out.token_ids)
            if len(ids) >= 3:
                started[i].set()
            if out.finished:
                results[i] = (ids, out.finish_reason)
                started[i].set()
                done[i].set()

        return on_output

    for i, (prompt, params) in enumerate(jobs):
        engine.submit(prompt, params, collect(i))
        if stagger:
            assert started[i].wait(60)
    for d in done:
        assert d.wait(120)
    return results


def test_continuous_batch_equals_each_prompt_alone(engine, monkeypatch):
    ps = prompts(engine.tokenizer, 6)  # 6 requests > 4 slots: some wait for a slot to free up
    jobs = [(p, greedy(max_tokens=8 + 3 * i)) for i, p in enumerate(ps)]
    alone = [engine.complete(p, params).token_ids for p, params in jobs]

    batch_sizes = []
    decode = engine._decode_step

    def spy(reqs):
        batch_sizes.append(len(reqs))
        decode(reqs)

    monkeypatch.setattr(engine, "_decode_step", spy)
    for stagger in (False, True):
        batch_sizes.clear()
        got = _run_concurrently(engine, jobs, stagger=stagger)
        assert [ids for ids, _ in got] == alone
        assert all(reason == "length" for _, reason in got)
        assert max(batch_sizes) >= 3  # requests really decoded together
        assert max(batch_sizes) <= engine.max_batch
    assert engine.num_requests() == (0, 0)


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(engine):
    p = prompts(engine.tokenizer, 1)[0]
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    a = engine.complete(p, params).token_ids
    assert engine.complete(p, params).token_ids == a
    other = SamplingParams(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True)
    batch = _run_concurrently(engine, [(p, params), (p, other), (p, greedy(16))])
    assert batch[0][0] == a
    assert batch[1][0] != a


def test_top_k_one_is_greedy(engine):
    p = prompts(engine.tokenizer, 2)[1]
    sampled = engine.complete(p, SamplingParams(max_tokens=12, temperature=1.5, top_k=1, seed=3, ignore_eos=True))
    assert sampled.token_ids == engine.complete(p, greedy(12)).token_ids


def test_stop_string_cuts_text_and_finishes(engine):
    p = prompts(engine.tokenizer, 1)[0]
    full = engine.complete(p, greedy(40))
    text = full.text
    assert len(text) > 12
    stop = text[8:11]
    cut = text[: text.find(stop)]
    got = engine.complete(p, greedy(40, stop=[stop]))
    assert got.finish_reason == "stop"
    assert got.text == cut
    chunks = [o.text for o in engine.generate(p, greedy(40, stop=[stop]))]
    assert "".join(chunks) == cut  # streaming never leaked any part of the stop string


def test_stop_token_ends_generation(engine):
    p = prompts(engine.tokenizer, 1)[0]
    full = engine.complete(p, greedy(20))
    tok = full.token_ids[5]
    got = engine.complete(p, SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[tok], ignore_eos=True))
    first = full.token_ids.index(tok)
    assert got.finish_reason == "stop"
    assert got.token_ids == full.token_ids[: first + 1]


def test_prompt_logprobs_match_a_full_forward(engine):
    p = prompts(engine.tokenizer, 3)[2]
    got = engine.complete(p, SamplingParams(max_tokens=0, prompt_logprobs=2))
    assert got.token_ids == [] and got.finish_reason == "length"
    assert got.prompt_logprobs[0] is None and len(got.prompt_logprobs) == len(p)
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([p])).logits[0].float(), -1)
    for t in range(1, len(p)):
        lp = got.prompt_logprobs[t]
        assert lp.token_id == p[t]
        assert lp.logprob == pytest.approx(float(logp[t - 1, p[t]]), abs=1e-4)
        assert [i for i, _ in lp.top] == logp[t - 1].topk(2).indices.tolist()


def test_context_overflow_and_bad_tokens_are_request_errors(engine):
    with pytest.raises(RequestError, match="maximum context length"):
        engine.check([5] * 200, greedy(100))
    with pytest.raises(RequestError, match="token ids"):
        engine.check([5, 10**6], greedy(1))
    with pytest.raises(RequestError, match="empty"):
        engine.check([], greedy(1))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-0.5)


def test_text_stream_releases_only_whole_characters(engine):
    run_tok = engine.tokenizer
    for lang in ("ell", "hun", "bul", "fin", "eng"):
        text = demo_lines(lang)[1500]
        ids = run_tok.encode(text)
        stream = TextStream(run_tok)
        chunks = [stream.push(i) for i in ids]
        chunks.append(stream.finish())
        assert "".join(chunks) == run_tok.decode(ids)
        assert not any("\ufffd" in c for c in chunks)
    # Greek letters are two bytes; a 1024-token vocabulary must split some of them across tokens
    greek = run_tok.encode(demo_lines("ell")[1500])
    assert any(run_tok.token_str(i).startswith("bytes:") for i in greek)
    # a sequence that ends inside a character (max_tokens reached mid-letter): the incomplete bytes are not sent
    cut = next(k for k in range(1, len(greek)) if run_tok.decode(greek[:k]).endswith("\ufffd"))
    stream = TextStream(run_tok)
    chunks = [stream.push(i) for i in greek[:cut]] + [stream.finish()]
    assert "".join(chunks) == run_tok.decode(greek[:cut]).removesuffix("\ufffd") and "\ufffd" not in "".join(chunks)


def test_text_stream_holds_back_possible_stop_strings(engine):
    tok = engine.tokenizer
    stream = TextStream(tok, stop=["world peace"])
    released = [stream.push(i) for i in tok.encode("Hello world, hello world peace and more")]
    assert "".join(released) == "Hello world, hello "
    assert stream.stopped and stream.finish() == ""
    stream = TextStream(tok, stop=["world peace"])
    released = "".join(stream.push(i) for i in tok.encode("Hello world"))
    assert released == "Hello "  # "world" might still become the stop string
    assert stream.finish() == "world"  # ...but it never did


def test_stop_aborts_in_flight_requests(run_dir):
    model, ckpt = load_model_for_serving(run_dir)
    eng = Engine(model, ServingTokenizer(find_tokenizer_dir(ckpt, run_dir)), max_batch=2, max_model_len=512).start()
    outs = []
    got_one = threading.Event()

    def on_output(o):
        outs.append(o)
        got_one.set()

    eng.submit([5, 6, 7], SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True), on_output)
    assert got_one.wait(60)
    eng.stop()
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert not eng.running
    with pytest.raises(RuntimeError, match="not running"):
        eng.submit([5], greedy(1), lambda o: None)


def test_loader_finds_latest_checkpoint_and_rejects_corrupt_ones(run_dir, tmp_path):
    from vernacular.model import build_model

    from serve_helpers import TINY_MODEL

    assert resolve_checkpoint(run_dir).name == "step_000001"
    model = build_model(TINY_MODEL, seed=7)
    save_checkpoint(model, tmp_path / "checkpoints" / "step_000010", step=10)
    save_checkpoint(model, tmp_path / "checkpoints" / "step_000002", step=2)
    assert resolve_checkpoint(tmp_path).name == "step_000010"
    assert resolve_checkpoint(tmp_path, "2").name == "step_000002"
    loaded, _ = load_model_for_serving(tmp_path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k

    weights = tmp_path / "checkpoints" / "step_000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="sha256"):
        load_model_for_serving(tmp_path)
    state = json.loads((weights.parent / "state.json").read_text())
    del state["files"]  # without a recorded checksum the safetensors reader itself must catch it
    (weights.parent / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="truncated or not a safetensors"):
        load_model_for_serving(tmp_path)

    other = build_model({**TINY_MODEL, "hidden_size": 32}, seed=0)
    save_checkpoint(other, tmp_path / "mismatch")
    state = (tmp_path / "mismatch" / "state.json").read_text()
    (tmp_path / "mismatch" / "state.json").write_text(state.replace('"hidden_size": 32', '"hidden_size": 64'))
    with pytest.raises(CheckpointError, match="does not match the model config"):
        load_model_for_serving(tmp_path / "mismatch")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model_for_serving(tmp_path / "empty_run")


def test_filter_logits_top_k_and_top_p():
    from vernacular.serve.sampling import filter_logits

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = lambda f: torch.isfinite(f).tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.5)) == [True, False, False, False]  # 0.5 alone covers top_p
    assert kept(filter_logits(logits, 1.0, 0, 0.7)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.95)) == [True, True, True, False]
    probs = filter_logits(logits, 0.5, 0, 1.0).softmax(-1)  # temperature 0.5 sharpens: p_i ~ p_i^2
    assert probs.tolist() == pytest.approx((torch.tensor([0.5, 0.3, 0.15, 0.05]) ** 2 / 0.3650).tolist(), abs=1e-4)


# ---------------------------------------------------------------- issue 14.0: no parameter or fault kills the engine
def test_sampling_is_numerically_safe_for_any_accepted_parameter():
    from vernacular.serve.sampling import sample_next

    g = [torch.Generator().manual_seed(0)]
    torch.manual_seed(0)
    rows = {
        "normal": torch.randn(1, 50) * 30,
        "nan": torch.full((1, 50), float("nan")),
        "all masked": torch.full((1, 50), float("-inf")),
        "+inf": torch.tensor([[0.0] * 10 + [float("inf")] + [0.0] * 39]),
        "huge": torch.tensor([[3e38] * 3 + [-3e38] * 47]),
    }
    for temperature in (1e-40, 1e-6, 1e-5, 0.3, 2.0, 1e30):
        for top_p in (1e-12, 0.5, 1.0):
            for top_k in (0, 1, 7):
                p = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
                for name, row in rows.items():
                    tok = int(sample_next(row.clone(), [p], g)[0])
                    assert 0 <= tok < 50, (name, temperature, top_p)
                    if name == "+inf":
                        assert tok == 10
    # a tiny temperature is greedy (vLLM: below 1e-5), not a division that overflows to inf
    row = torch.randn(1, 50)
    assert int(sample_next(row.clone(), [SamplingParams(temperature=1e-40)], g)[0]) == int(row.argmax())


def test_a_failing_step_fails_its_requests_only_and_the_engine_carries_on(engine, monkeypatch):
    prompt = prompts(engine.tokenizer, 1)[0]
    forward, calls = engine._forward, []

    def broken_once(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return forward(*a, **kw)

    monkeypatch.setattr(engine, "_forward", broken_once)
    failed = engine.complete(prompt, greedy(max_tokens=4))
    assert failed.finish_reason == "error" and "probability tensor" in failed.error
    assert engine.running and engine.failures >= 1
    ok = engine.complete(prompt, greedy(max_tokens=4))
    assert ok.finish_reason == "length" and ok.completion_tokens == 4


def test_a_failing_row_fails_that_request_alone(engine):
    class BadGrammar:
        def allowed(self):
            raise ValueError("grammar exploded")

    prompt = prompts(engine.tokenizer, 1)[0]
    outs = {}
    done = threading.Event()

    def collect(name):
        def cb(out):
            if out.finished:
                outs[name] = out
                if len(outs) == 2:
                    done.set()
        return cb

    with engine._cv:  # both join the same decode batch
        engine.submit(prompt, greedy(max_tokens=6), collect("bad"), stream=False, constraint=BadGrammar())
        engine.submit(prompt, greedy(max_tokens=6), collect("good"), stream=False)
    assert done.wait(60)
    assert outs["bad"].finish_reason == "error" and "grammar exploded" in outs["bad"].error
    assert outs["good"].finish_reason == "length" and outs["good"].completion_tokens == 6


def test_a_dead_scheduler_loop_is_restarted(engine):
    from collections import deque

    class Exploding(deque):
        armed = True

        def popleft(self):
            if Exploding.armed:
                Exploding.armed = False
                raise RuntimeError("scheduler bug")
            return super().popleft()

    prompt = prompts(engine.tokenizer, 1)[0]
    restarts = engine.restarts
    with engine._cv:
        engine._waiting = Exploding(engine._waiting)
    failed = engine.complete(prompt, greedy(max_tokens=3))
    assert failed.finish_reason == "error" and "scheduler bug" in failed.error
    assert engine.restarts == restarts + 1 and engine.running
    assert engine.complete(prompt, greedy(max_tokens=3)).finish_reason == "length"


def test_min_tokens_yields_to_a_complete_grammar():
    """A grammar that allows only the stop token (its structure is complete) ends the answer even before min_tokens:
    masking the stop token too would leave nothing to sample (a failed request instead of a finished one)."""
    from vernacular.serve.sampling import SamplingParams, process_logits

    p = SamplingParams(max_tokens=8, min_tokens=5)
    allowed = torch.zeros(10, dtype=torch.bool)
    allowed[3] = True  # the stop token only
    row = process_logits(torch.zeros(10), p, [1], [2], {3}, allowed)
    assert torch.isfinite(row[3]) and int(row.argmax()) == 3
    allowed[4] = True  # the grammar allows more: min_tokens holds the stop token back
    row = process_logits(torch.zeros(10), p, [1], [2], {3}, allowed)
    assert row[3] == float("-inf") and int(row.argmax()) == 4
