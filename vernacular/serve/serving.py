"""The one path from an API request to the engine, shared by every surface (completions, chat, responses).

Each surface module (`completions.py`, `chat.py`, `responses.py`) only translates its request shape into jobs and the
engine's outputs back into its response shape; everything between lives here, once: the model check, refusing
unsupported meaning-changing fields, turning text and messages into tokens (special tokens only from the chat
template; special-token text in raw prompts per `--parse-special-tokens`), sampling parameters, grammar constraints
(structured outputs, forced tool calls), submitting, and waiting for outputs while watching for a client that went away
(non-streaming too) and for the per-request timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi.responses import JSONResponse

from vernacular.serve.constraints import ConstraintFactory, GrammarError, json_schema_grammar, tool_calls_grammar
from vernacular.serve.engine import Engine, StepOutput
from vernacular.serve.sampling import SamplingParams, TokenLogprob
from vernacular.tokenizer.chat import ChatTemplateError

DISCONNECT_POLL_S = 0.1  # how often a waiting non-streaming request checks that its client is still there


@dataclass
class ServerLimits:
    api_key: str | None = None
    max_tokens_limit: int = 4096  # the most tokens one request may ask to generate
    max_concurrent: int = 256  # generation requests in flight (queued + running); more get a 429
    max_body_bytes: int = 1 << 20
    request_timeout: float | None = None  # seconds a generation request may take; then it is aborted (408)
    parse_special_tokens: bool = False  # raw prompts: special-token text becomes control tokens (vLLM) or stays text


class APIError(Exception):
    """An error to return in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


async def sse(chunks: AsyncIterator[dict], named: bool = False) -> AsyncIterator[bytes]:
    """Server-sent events: `data: {json}` per chunk, then `data: [DONE]` (chat, completions); with `named` (the
    Responses API) each chunk goes out as `event: <its type>` + data and there is no [DONE]. An APIError raised
    mid-stream (the status line has gone out already) becomes an error event in OpenAI's shape."""
    try:
        async for chunk in chunks:
            head = f"event: {chunk['type']}\n" if named else ""
            yield f"{head}data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
    except APIError as e:
        if named:
            yield f"event: error\ndata: {json.dumps({'type': 'error', **e.body()['error']})}\n\n".encode()
        else:
            yield f"data: {json.dumps(e.body())}\n\n".encode()
    if not named:
        yield b"data: [DONE]\n\n"


@dataclass
class Job:
    ids: list[int]
    params: SamplingParams
    grammar: ConstraintFactory | None = None


@dataclass
class Run:
    """Submitted jobs; outputs arrive on `queue` as (job index, StepOutput)."""

    queue: asyncio.Queue
    handles: list
    deadline: float | None
    finished: list[bool] = field(default_factory=list)

    def abort(self) -> None:
        for h in self.handles:
            h.abort()

    async def events(self, request=None) -> AsyncIterator[tuple[int, StepOutput]]:
        """Every output of every job until all finished; aborts them all when the consumer stops early, the client
        disconnects (checked every DISCONNECT_POLL_S while waiting) or the deadline passes (APIError 408)."""
        left, checked = len(self.handles), time.monotonic()
        try:
            while left:
                timeout = DISCONNECT_POLL_S if request is not None else None
                if self.deadline is not None:
                    remaining = self.deadline - time.monotonic()
                    if remaining <= 0:
                        raise APIError(408, "the request took longer than the server's per-request timeout",
                                       code="timeout")  # fmt: skip
                    timeout = min(timeout or remaining, remaining)
                try:
                    i, out = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    out = None
                if request is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                if out is None:
                    continue
                left -= out.finished
                if out.finished and out.finish_reason == "error":
                    raise APIError(500, f"generation failed: {out.error}", type="server_error", code="engine_error")
                yield i, out
        finally:
            self.abort()

    async def collect(self, request=None) -> list[list[StepOutput]]:
        outs: list[list[StepOutput]] = [[] for _ in self.handles]
        async for i, out in self.events(request):
            outs[i].append(out)
        if any(not seq or not seq[-1].finished for seq in outs):  # the client went away: nobody reads this
            raise APIError(499, "client closed the request", code="client_closed_request")
        return outs


class Serving:
    """Shared request -> engine logic for one served model."""

    def __init__(self, engine: Engine, model_name: str, limits: ServerLimits):
        self.engine, self.model_name, self.limits = engine, model_name, limits
        self.tok = engine.tokenizer

    # ---- validation
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'.",
                           param="model", code="model_not_found")  # fmt: skip

    def check_request(self, req) -> None:
        """Model, unsupported meaning-changing fields, stream_options without stream (OpenAI: 400)."""
        from vernacular.serve.schemas import UNSUPPORTED

        self.check_model(getattr(req, "model", None))
        if (name := req.unsupported_field()) is not None:
            raise APIError(400, f"'{name}' ({UNSUPPORTED[name]}) is not supported by this server; remove it.",
                           param=name, code="unsupported_parameter")  # fmt: skip
        if getattr(req, "stream_options", None) is not None and not getattr(req, "stream", False):
            raise APIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options", code="invalid_value")  # fmt: skip

    # ---- text and messages into tokens
    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A raw prompt's ids: special-token text is plain text unless the server parses it (and the request lets
        the tokenizer add special tokens)."""
        return self.tok.encode(text, add_special_tokens=add_special_tokens,
                               special_text=self.limits.parse_special_tokens and add_special_tokens)  # fmt: skip

    def encode_chat(self, messages: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = True,
                    param: str = "messages") -> list[int]:  # fmt: skip
        """Messages (and tool definitions) through the chat template; message text is always plain text."""
        try:
            return self.tok.encode_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        except ChatTemplateError as e:
            raise APIError(400, f"invalid {param}: {e}", param=param) from None
        except ValueError as e:  # no chat template in this run's tokenizer
            raise APIError(400, str(e), param=param) from None

    # ---- sampling and constraints
    def sampling(self, req, max_tokens: int | None, prompt_len: int, *, logprobs: int | None = None,
                 prompt_logprobs: int | None = None, max_tokens_param: str = "max_tokens") -> SamplingParams:  # fmt: skip
        if max_tokens is None:  # as much as the context allows, within the server's limit
            max_tokens = max(0, min(self.limits.max_tokens_limit, self.engine.max_model_len - prompt_len))
        elif max_tokens > self.limits.max_tokens_limit:
            raise APIError(400, f"{max_tokens_param} is {max_tokens}, more than this server's limit of "
                                f"{self.limits.max_tokens_limit}.", param=max_tokens_param, code="invalid_value")  # fmt: skip
        bias = {int(k): float(v) for k, v in (getattr(req, "logit_bias", None) or {}).items()}
        try:
            return SamplingParams(
                max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=getattr(req, "top_k", 0),
                seed=req.seed, stop=list(getattr(req, "stop", None) or []), ignore_eos=getattr(req, "ignore_eos", False),
                logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                presence_penalty=getattr(req, "presence_penalty", 0.0),
                frequency_penalty=getattr(req, "frequency_penalty", 0.0),
                repetition_penalty=getattr(req, "repetition_penalty", 1.0), logit_bias=bias,
                min_tokens=min(getattr(req, "min_tokens", 0), max_tokens),
            )  # fmt: skip
        except ValueError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    def grammar(self, grammar_source: str, param: str) -> ConstraintFactory:
        try:
            return ConstraintFactory(self.tok, self.engine.config.vocab_size, grammar_source, param)
        except GrammarError as e:
            raise APIError(400, str(e), param=e.param, code="invalid_schema") from None

    def response_format_grammar(self, kind: str | None, schema: dict[str, Any] | None,
                                param: str) -> ConstraintFactory | None:  # fmt: skip
        """`json_object` (any JSON object) or `json_schema` (the schema) -> a grammar; `text`/None -> None."""
        if kind in (None, "text"):
            return None
        if kind == "json_schema" and schema is None:
            raise APIError(400, f"{param}: a json_schema format needs a 'schema'", param=param)
        try:
            source = json_schema_grammar(schema if kind == "json_schema" else None)
        except (ValueError, TypeError) as e:
            raise APIError(400, f"{param}: {e}", param=param, code="invalid_schema") from None
        return self.grammar(source, param)

    def tool_grammar(self, tools: list[dict], parallel: bool) -> ConstraintFactory:
        try:
            source = tool_calls_grammar(tools, parallel)
        except (ValueError, TypeError) as e:
            raise APIError(400, f"tools: {e}", param="tools", code="invalid_schema") from None
        return self.grammar(source, "tools")

    # ---- running
    def start(self, jobs: list[Job], prompt_param: str = "prompt") -> Run:
        """Validate every job (before any starts), then submit them all."""
        for job in jobs:
            self.engine.check(job.ids, job.params, prompt_param)
        if not self.engine.running:
            raise APIError(503, "the engine is not running (see /health)", type="server_error")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        handles = []
        try:
            for i, job in enumerate(jobs):
                constraint = job.grammar.make() if job.grammar is not None else None
                handles.append(self.engine.submit(job.ids, job.params, lambda out, i=i: loop.call_soon_threadsafe(
                    q.put_nowait, (i, out)), constraint=constraint))  # fmt: skip
        except BaseException:
            for h in handles:
                h.abort()
            raise
        timeout = self.limits.request_timeout
        return Run(q, handles, time.monotonic() + timeout if timeout else None)


def seeded(params: SamplingParams, i: int) -> SamplingParams:
    """Choice i of n: seed + i, so n seeded choices differ but each is reproducible."""
    if params.seed is None or i == 0:
        return params
    return SamplingParams(**{**params.__dict__, "seed": params.seed + i})


class Formatter:
    """Logprobs in OpenAI's shapes (completions: parallel lists; chat: a list of entries with bytes)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def top_dict(self, lp: TokenLogprob) -> dict[str, float]:
        d = {self.tok.token_str(t): v for t, v in lp.top}
        d.setdefault(self.tok.token_str(lp.token_id), lp.logprob)
        return d

    def completion_logprobs(self, lps: list[TokenLogprob | None], ids: list[int], offsets: list[int]) -> dict:
        return {
            "tokens": [self.tok.token_str(t) for t in ids],
            "token_logprobs": [None if lp is None else lp.logprob for lp in lps],
            "top_logprobs": [None if lp is None else self.top_dict(lp) for lp in lps],
            "text_offset": offsets,
        }

    def chat_logprobs(self, lps: list[TokenLogprob]) -> dict:
        def entry(t: int, v: float) -> dict:
            return {"token": self.tok.token_str(t), "logprob": v, "bytes": list(self.tok.token_bytes(t))}

        return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                            for lp in lps], "refusal": None}  # fmt: skip
