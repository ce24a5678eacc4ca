"""llama.cpp runs our GGUF export (`vernacular export gguf`) with our outputs, checked with llama-cpp-python (the
llama.cpp library itself, built by `.ci/run`): from f32, greedy tokens identical to our serving engine's for 32 tokens on
3 prompts and prompt log-probabilities within 1e-4 (f32 KV cache); from q8_0, prompt log-probabilities within 0.05 of
ours (weight quantisation, not conversion: q8_0 keeps 8 bits per weight with one scale per 32).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import engines_helpers as h
from vernacular.interop import cli_export

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by .ci/run (pip install llama-cpp-python)")
GGML_TYPE_F32 = 0


def export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    return cli_export.main(parser.parse_args(argv))


def llama_run(path, prompts: list[list[int]], new_tokens: int) -> list[dict]:
    """Greedy continuation and prompt logprobs from llama.cpp, fed token ids (llama.cpp's own tokenizer is checked
    separately). f32 KV cache: llama.cpp's default f16 cache alone moves logprobs by ~1e-3."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=1, logits_all=True, seed=0,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)  # fmt: skip
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        logp = scores - np.logaddexp.reduce(scores, axis=-1, keepdims=True)
        prompt_lps = [None] + [float(logp[i - 1, t]) for i, t in enumerate(ids) if i > 0]
        tokens = []
        for _ in range(new_tokens):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(nxt)
            llm.eval([nxt])
        out.append({"tokens": tokens, "prompt_logprobs": prompt_lps})
    llm.close()
    return out


def max_logprob_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip(a["prompt_logprobs"][1:], b["prompt_logprobs"][1:]))


def test_llama_cpp_reproduces_our_greedy_tokens_from_f32_and_close_logits_from_q8_0(tmp_path):
    run = h.make_run(tmp_path / "run")
    prompts = h.prompt_ids(run / "tokenizer")
    ours = h.ours(run, prompts)
    assert export(["gguf", "--run-dir", str(run)]) == 0
    assert export(["gguf", "--run-dir", str(run), "--type", "q8_0", "--out", str(tmp_path / "m-q8.gguf")]) == 0

    f32 = llama_run(run / "export" / "gguf" / "model-f32.gguf", prompts, h.NEW_TOKENS)
    for prompt, a, b in zip(h.PROMPTS, ours, f32):
        assert b["tokens"] == a["tokens"], prompt
        assert max_logprob_diff(a, b) < 1e-4, prompt

    q8 = llama_run(tmp_path / "m-q8.gguf", prompts, 0)
    diffs = [max_logprob_diff(a, b) for a, b in zip(ours, q8)]
    assert max(diffs) < 0.05, diffs
    assert max(diffs) > 1e-5  # the weights really are quantised


def test_gguf_carries_our_tokenizer_and_chat_template(tmp_path):
    """llama.cpp's own tokenizer (pre-tokenizer `gpt-2`) gives our token ids; special tokens, end of turn, template."""
    from vernacular.interop.gguf_export import gguf_metadata
    from vernacular.serve.text import ServingTokenizer
    from vernacular.tokenizer import BOS_ID, END_ID, EOS_ID
    from vernacular.tokenizer.chat import CHAT_TEMPLATE

    run = h.make_run(tmp_path / "run")
    out = tmp_path / "m.gguf"
    assert export(["gguf", "--run-dir", str(run), "--out", str(out), "--type", "f16"]) == 0
    meta = gguf_metadata(out)
    assert meta["general.architecture"] == "deepseek2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.eot_token_id"]) == (BOS_ID, EOS_ID, END_ID)  # fmt: skip
    assert meta["deepseek2.expert_gating_func"] == 2  # sigmoid
    assert meta["deepseek2.attention.q_lora_rank"] == 0

    tok = ServingTokenizer(run / "tokenizer")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, vocab_only=True, verbose=False)
    for text in h.PROMPTS + ["  two spaces, tabs\tand 1234 digits; it's <|end|> literal?"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text, add_special_tokens=False)
        assert llm.detokenize(tok.encode(text, add_special_tokens=False)).decode() == text
    assert llm.tokenize(b"<|user|>\nHi<|end|>", add_bos=False, special=True)[0] == tok.tokenizer.token_to_id("<|user|>")
    assert int(llm.metadata["tokenizer.ggml.eot_token_id"]) == END_ID  # as llama.cpp read it
    llm.close()


def test_gguf_export_reports_bad_input(tmp_path, capsys):
    run = h.make_run(tmp_path / "run")
    (run / "tokenizer" / "tokenizer.json").unlink()
    assert export(["gguf", "--run-dir", str(run)]) == 1
    assert "no tokenizer.json" in capsys.readouterr().err
    assert export(["gguf", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf"),
                   "--tokenizer", str(tmp_path)]) == 1  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
