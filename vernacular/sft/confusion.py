"""Language confusion: does the chat model answer in the language it is asked in?

The measure is the line-level pass rate (LPR) of the Language Confusion Benchmark (Marchisio et al., 2024,
"Understanding and Mitigating Language Confusion in LLMs"; its `compute_metrics.py`), with its rules:

- an answer is normalised (ASCII punctuation, `—` and `#` removed) and split into lines; lines of fewer than 5
  whitespace words are dropped, and an answer with no line left is skipped (not scored: too short to identify);
- a scored answer passes when every line is identified as the question's language with probability above 0.3
  (LCB's threshold; below it the line is `unknown`, a failure);
- the pass rate is computed per language, then averaged over the languages that have scored answers.

Differences from LCB: language ID is py3langid (as the data stage uses it) restricted to the 24 official EU languages,
where LCB uses fastText's lid.176 (a download); LCB counts a language whose answers are all skipped as 1.0, here it is
left out of the mean. Next to the LPR, `response_pass_rate` is the stricter share of *all* answers (none skipped,
micro-averaged) whose every non-empty line is identified as the question's language; an empty answer fails it.

The questions are the held-out conversations' opening turns (system turn if any, then the first user turn; chats
that offer tools are left out); the question's language is its file's (`<iso639-3>.jsonl`) or the record's `lang`,
else the identified language of the question. Answers are greedy decodes of the serving engine
(`vernacular.serve.engine.Engine`), so this measures what `vernacular serve` would answer.
"""

from __future__ import annotations

import string
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


LCB_MIN_WORDS = 5  # LCB scores only lines of at least this many words
LCB_MIN_PROB = 0.3  # below this probability LCB's identifier answers `unknown`
_LCB_STRIP = str.maketrans("", "", string.punctuation + "—#")


def lcb_lines(answer: str) -> list[str]:
    """The lines of `answer` that LCB scores: punctuation removed, at least `LCB_MIN_WORDS` words."""
    return [line for line in answer.translate(_LCB_STRIP).split("\n") if len(line.split()) >= LCB_MIN_WORDS]


def line_level_pass(answer: str, lang: str) -> bool | None:
    """LCB's verdict on one answer: None when it has no line to score (skipped), else True when every scored line
    is identified as `lang` with probability above `LCB_MIN_PROB`."""
    lines = lcb_lines(answer)
    if not lines:
        return None
    ident = identifier(EU_LANGUAGES)
    for line in lines:
        label, prob = ident.classify(line)
        if from_langid_label(label) != lang or prob <= LCB_MIN_PROB:
            return False
    return True


def response_pass(answer: str, lang: str) -> bool:
    """True when the answer has a non-empty line and every non-empty line is identified as `lang` (no line is too
    short: the stricter whole-answer figure)."""
    lines = [line for line in answer.splitlines() if line.strip()]
    return bool(lines) and all(detect_language(line) == lang for line in lines)


def question(messages: list[dict]) -> list[dict]:
    """The opening of a conversation up to and including its first user turn."""
    for i, m in enumerate(messages):
        if m["role"] == "user":
            return messages[: i + 1]
    return messages


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_tokens: int = 32,
                   max_batch: int = 16) -> list[Any]:
    """Greedy answers of the serving engine (`vernacular.serve.engine.Engine`, so what `vernacular serve` would
    answer) to token-id prompts, in order: one `StepOutput` (`text`, `token_ids`, `finish_reason`) per prompt.
    `model`: a checkpoint folder (verified by `load_model_for_serving`) or a loaded model; `tokenizer`: a
    `ServingTokenizer`."""
    import torch

    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import load_model_for_serving
    from vernacular.serve.sampling import SamplingParams

    if not isinstance(model, torch.nn.Module):
        model, _ = load_model_for_serving(model)
    if not prompts:
        return []
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    done = threading.Semaphore(0)
    answers: dict[int, Any] = {}
    with Engine(model, tokenizer, max_batch=max_batch, max_model_len=max(map(len, prompts)) + max_tokens) as engine:
        for n, ids in enumerate(prompts):
            def on_output(output, n=n):
                answers[n] = output
                done.release()

            engine.submit(ids, params, on_output, stream=False)
        for _ in prompts:
            done.acquire()
    return [answers[n] for n in range(len(prompts))]


def language_confusion(checkpoint: str | Path, tokenizer_dir: str | Path, conversations: list, max_tokens: int = 32,
                       out: str | Path | None = None, max_batch: int = 16) -> dict[str, Any]:
    """Line-level pass rate (LCB's rules, see the module) of greedy answers to the conversations' opening questions.

    `conversations`: `vernacular.sft.data.Conversation`s (messages + lang). Returns {"line_level_pass_rate" (None
    when no answer could be scored), "answers", "answers_scored", "answers_skipped" (no line of 5 words),
    "response_pass_rate" (all answers, whole-answer rule), "max_tokens", "stop_rate" (the share of answers that ended
    on the end-of-turn token within `max_tokens`: a chat model should finish its short answers), "per_language":
    {lang: LCB pass rate}}; with `out`, also writes every question, answer and verdict there (JSON; `pass` is None for
    a skipped answer)."""
    from vernacular.run import write_json
    from vernacular.serve.text import ServingTokenizer
    from vernacular.tokenizer.chat import content_text, encode_chat

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
    answers = greedy_answers(checkpoint, tokenizer, [i["ids"] for i in items], max_tokens, max_batch)
    per_lang: dict[str, list[bool]] = {}
    details = []
    for n, item in enumerate(items):
        text = answers[n].text
        verdict = line_level_pass(text, item["lang"])
        if verdict is not None:
            per_lang.setdefault(item["lang"], []).append(verdict)
        details.append({"lang": item["lang"], "question": content_text(item["question"][-1]["content"]),
                        "answer": text, "detected": detect_language(text), "pass": verdict,
                        "response_pass": response_pass(text, item["lang"]), "finish_reason": answers[n].finish_reason})
    rates = {lang: sum(oks) / len(oks) for lang, oks in sorted(per_lang.items())}
    scored = sum(len(oks) for oks in per_lang.values())
    stopped = sum(d["finish_reason"] == "stop" for d in details)
    result = {"line_level_pass_rate": sum(rates.values()) / len(rates) if rates else None, "answers": len(details),
              "answers_scored": scored, "answers_skipped": len(details) - scored,
              "response_pass_rate": sum(d["response_pass"] for d in details) / len(details) if details else None,
              "max_tokens": max_tokens, "stop_rate": stopped / len(details) if details else None,
              "per_language": rates}
    if out is not None:
        write_json(Path(out), {**result, "details": details})
    return result


def summary(confusion: dict) -> str:
    """One line on `language_confusion`'s result (`vernacular sft` and the report print it)."""
    rate = confusion["line_level_pass_rate"]
    return ((f"line-level pass rate (LCB) {100 * rate:.1f}% over {confusion['answers_scored']} of "
             if rate is not None else "no answer long enough for the line-level pass rate (LCB) among ")
            + f"{confusion['answers']} held-out questions ({confusion['answers_skipped']} answers without a line of "
            f"5 words are not scored); every line in the question's language in "
            f"{100 * confusion['response_pass_rate']:.1f}% of all answers; {100 * confusion['stop_rate']:.0f}% ended "
            f"on <|end|> within {confusion['max_tokens']} tokens")
