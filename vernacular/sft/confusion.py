"""Language confusion: does the chat model answer in the language it is asked in?

The measure is the line-level pass rate of the Language Confusion Benchmark (Marchisio et al., 2024, "Understanding
and Mitigating Language Confusion in LLMs"): a response passes when every one of its non-empty lines is identified
as the user's language; the pass rate is the share of responses that pass. Language ID is py3langid (as the data
stage uses it), restricted to the 24 official EU languages; an empty response fails.

The questions are the held-out conversations' opening turns (system turn if any, then the first user turn; chats
that offer tools are left out); the
question's language is its file's (`<iso639-3>.jsonl`) or the record's `lang`, else the identified language of the
question. Answers are greedy decodes of the serving engine (`vernacular.serve.engine.Engine`), so this measures what
`vernacular serve` would answer.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from vernacular.data.langid import identifier
from vernacular.data.languages import EU_LANGUAGES, from_langid_label


def detect_language(text: str) -> str | None:
    """The ISO 639-3 code of the EU language `text` is most likely in (None for text without letters)."""
    if not any(ch.isalpha() for ch in text):
        return None
    label, _ = identifier(EU_LANGUAGES).classify(text)
    return from_langid_label(label)


def line_level_pass(answer: str, lang: str) -> bool:
    """True when the answer has a non-empty line and every non-empty line is identified as `lang`."""
    lines = [line for line in answer.splitlines() if line.strip()]
    return bool(lines) and all(detect_language(line) == lang for line in lines)


def question(messages: list[dict]) -> list[dict]:
    """The opening of a conversation up to and including its first user turn."""
    for i, m in enumerate(messages):
        if m["role"] == "user":
            return messages[: i + 1]
    return messages


def language_confusion(checkpoint: str | Path, tokenizer_dir: str | Path, conversations: list, max_tokens: int = 32,
                       out: str | Path | None = None, max_batch: int = 16) -> dict[str, Any]:
    """Line-level pass rate of greedy answers to the conversations' opening questions.

    `conversations`: `vernacular.sft.data.Conversation`s (messages + lang). Returns {"line_level_pass_rate",
    "answers", "max_tokens", "stop_rate" (the share of answers that ended on the end-of-turn token within
    `max_tokens`: a chat model should finish its short answers), "per_language": {lang: pass rate}}; with `out`, also
    writes every question, answer and verdict there (JSON)."""
    from vernacular.run import write_json
    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import load_model_for_serving
    from vernacular.serve.sampling import SamplingParams
    from vernacular.serve.text import ServingTokenizer
    from vernacular.tokenizer.chat import content_text, encode_chat

    model, _ = load_model_for_serving(checkpoint)
    tokenizer = ServingTokenizer(tokenizer_dir)
    items = []
    for c in conversations:
        if c.tools:  # a question that offers tools may rightly be answered with a call, not with prose
            continue
        q = question(c.messages)
        lang = c.lang or detect_language(content_text(q[-1]["content"]))
        if lang is None:
            continue
        items.append({"lang": lang, "question": q, "ids": encode_chat(tokenizer.tokenizer, q, True).ids})
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    done = threading.Semaphore(0)
    answers: dict[int, Any] = {}
    with Engine(model, tokenizer, max_batch=max_batch, max_model_len=max(len(i["ids"]) for i in items) + max_tokens
                if items else None) as engine:
        for n, item in enumerate(items):
            def on_output(output, n=n):
                answers[n] = output
                done.release()

            engine.submit(item["ids"], params, on_output, stream=False)
        for _ in items:
            done.acquire()
    per_lang: dict[str, list[bool]] = {}
    details = []
    for n, item in enumerate(items):
        text = answers[n].text
        ok = line_level_pass(text, item["lang"])
        per_lang.setdefault(item["lang"], []).append(ok)
        details.append({"lang": item["lang"], "question": content_text(item["question"][-1]["content"]),
                        "answer": text, "detected": detect_language(text), "pass": ok,
                        "finish_reason": answers[n].finish_reason})
    passed = [ok for oks in per_lang.values() for ok in oks]
    stopped = sum(d["finish_reason"] == "stop" for d in details)
    result = {"line_level_pass_rate": sum(passed) / len(passed) if passed else None, "answers": len(passed),
              "max_tokens": max_tokens, "stop_rate": stopped / len(details) if details else None,
              "per_language": {lang: sum(oks) / len(oks) for lang, oks in sorted(per_lang.items())}}
    if out is not None:
        write_json(Path(out), {**result, "details": details})
    return result
