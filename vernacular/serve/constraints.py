"""Grammar-constrained decoding (structured outputs, forced tool calls) with llguidance.

Why llguidance: it compiles JSON Schema (and Lark grammars with embedded `%json` schemas) against any byte-level BPE
vocabulary given as an HF `tokenizer.json` (ours, unchanged), computes the allowed-token mask of a step in tens of
microseconds without precomputing per-state tables, and never raises on user grammars (a schema it cannot handle
is reported, so the API answers 400 naming it). xgrammar would pull triton into a CPU install; outlines-core builds
a regex index per schema up front. (Measured: benchmarks/constrained_decode.py, BENCHMARKS.md.)

A `Constraint` belongs to one request. The engine asks `allowed()` for its row of the batched decode step (the mask is
applied with the other logit processors, so constrained and free requests share one batch), then `advance(token)`;
`is_done()` ends the request when the grammar admits nothing more. End-of-text / end-of-turn are allowed exactly when
the grammar accepts, so a constrained answer always parses.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # json.dumps' layout


class GrammarError(ValueError):
    """A schema or grammar the library cannot compile; `param` names the request field it came from."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer_json: str, vocab_size: int, stop_ids: tuple[int, ...]):
    from llguidance import LLTokenizer

    return LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(stop_ids))


def ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of a `ServingTokenizer` (cached: building it costs ~1 s for large vocabularies)."""
    key = getattr(tokenizer, "_ll_json", None)
    if key is None:
        key = tokenizer._ll_json = tokenizer.tokenizer.to_str()
    return _ll_tokenizer(key, vocab_size, tuple(tokenizer.stop_ids))


def json_schema_grammar(schema: dict[str, Any] | None) -> str:
    """A grammar for one JSON value matching `schema` (None: any JSON object, OpenAI's `json_object` mode)."""
    from llguidance import LLMatcher

    if schema is None:
        schema = {"type": "object"}
    return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def tool_calls_grammar(tools: list[dict], parallel: bool) -> str:
    """Lark grammar: one (or, when `parallel`, one or more) `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
    blocks whose arguments match the named function's `parameters` schema."""
    from llguidance import LLMatcher

    from vernacular.tokenizer.chat import TOOL_CALL_END, TOOL_CALL_START

    variants = []
    for t in tools:
        f = t["function"]
        params = f.get("parameters") or {"type": "object"}
        variants.append({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": params},
                         "required": ["name", "arguments"], "additionalProperties": False})  # fmt: skip
    schema = {"anyOf": variants} if len(variants) > 1 else variants[0]
    schema = {**schema, "x-guidance": JSON_OPTIONS}
    lark = (f"start: call{'+' if parallel else ''}\n"
            f"call: {json.dumps(TOOL_CALL_START)} body {json.dumps(TOOL_CALL_END)}\n"
            f"body: %json {json.dumps(schema)}\n")  # fmt: skip
    return LLMatcher.grammar_from_lark(lark)


class Constraint:
    """One request's grammar state over a vocabulary of `vocab_size` ids (the model's, >= the tokenizer's)."""

    def __init__(self, ll_tok, grammar: str, vocab_size: int):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(ll_tok, grammar, log_level=0)
        self.vocab_size = vocab_size
        self._shifts = torch.arange(32, dtype=torch.int32)

    def error(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None

    def allowed(self) -> torch.Tensor:
        """Bool [vocab_size]: True where the next token may be that id."""
        bits = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        allowed = ((bits.unsqueeze(1) >> self._shifts) & 1).bool().flatten()
        if allowed.numel() < self.vocab_size:
            allowed = torch.cat([allowed, allowed.new_zeros(self.vocab_size - allowed.numel())])
        if self.matcher.is_error():
            raise RuntimeError(f"grammar error: {self.matcher.get_error()}")
        return allowed[: self.vocab_size]

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id}: {self.matcher.get_error()}")

    def is_done(self) -> bool:
        return self.matcher.is_stopped()


class ConstraintFactory:
    """A compiled grammar for one request; `make()` gives each of its `n` choices a fresh `Constraint`."""

    def __init__(self, tokenizer, vocab_size: int, grammar: str, param: str):
        from llguidance import LLMatcher

        self.ll_tok = ll_tokenizer(tokenizer, vocab_size)
        self.grammar, self.vocab_size = grammar, vocab_size
        problem = LLMatcher.validate_grammar(grammar, self.ll_tok)
        if problem and not problem.startswith("WARNING"):
            raise GrammarError(f"{param}: the grammar library cannot use this schema: {problem}", param)

    def make(self) -> Constraint:
        c = Constraint(self.ll_tok, self.grammar, self.vocab_size)
        if (err := c.error()) is not None:
            raise RuntimeError(f"grammar error: {err}")
        return c
