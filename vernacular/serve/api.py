"""The OpenAI-compatible HTTP API (FastAPI) in front of the engine.

Why OpenAI's shapes, down to the error body: "sovereignty means choice" — an existing OpenAI client, lm-eval's
`local-completions`, or any tool built for vLLM should work by changing only its base URL. So every error is
`{"error": {"message", "type", "param", "code"}}` with a 4xx status for anything the client got wrong (including
FastAPI's own validation errors, which would otherwise be 422s in another shape), and only a real server fault is 5xx.

Limits (API key, body size, concurrent requests) are plain ASGI middleware, so they act before a body is parsed and
also cover streaming responses, which stay "in flight" until their last SSE chunk is sent.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vernacular.serve.engine import Engine, RequestError, StepOutput
from vernacular.serve.sampling import SamplingParams, TokenLogprob
from vernacular.serve.schemas import (
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, DetokenizeRequest,
    DetokenizeResponse, ErrorResponse, Health, ModelCard, ModelList, TokenizeRequest, TokenizeResponse,
)  # fmt: skip
from vernacular.serve.text import offsets_and_text

STATIC_DIR = Path(__file__).parent / "static"
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class ServerLimits:
    api_key: str | None = None
    max_tokens_limit: int = 4096  # the most tokens one request may ask to generate
    max_concurrent: int = 256  # generation requests in flight (queued + running); more get a 429
    max_body_bytes: int = 1 << 20


class APIError(Exception):
    """An error to return in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


async def _send_error(send, err: APIError) -> None:
    resp = err.response()
    await send({"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers})
    await send({"type": "http.response.body", "body": resp.body})


def _replay(body: bytes, receive):
    """A `receive` that first hands out the already-read body, then defers to the real one (for disconnects)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class LimitsMiddleware:
    """API key (401), body size (413) and concurrent generation requests (429), before any handler runs."""

    def __init__(self, app, limits: ServerLimits):
        self.app = app
        self.limits = limits
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.limits.api_key
        if key and path.startswith(PROTECTED_PREFIXES):
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not given or not secrets.compare_digest(given.encode(), key.encode()):
                msg = "Incorrect API key provided." if given else "Missing API key: send 'Authorization: Bearer KEY'."
                return await _send_error(send, APIError(401, msg, code="invalid_api_key"))
        if scope["method"] in ("POST", "PUT", "PATCH"):
            too_big = APIError(413, f"Request body larger than the server's limit of {self.limits.max_body_bytes} "
                                    "bytes.", code="request_too_large")  # fmt: skip
            try:
                if int(headers.get("content-length", "0")) > self.limits.max_body_bytes:
                    return await _send_error(send, too_big)
            except ValueError:
                return await _send_error(send, APIError(400, "Invalid Content-Length header."))
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.limits.max_body_bytes:
                    return await _send_error(send, too_big)
            receive = _replay(bytes(body), receive)
        if path in GENERATION_PATHS:
            if self.in_flight >= self.limits.max_concurrent:
                return await _send_error(send, APIError(
                    429, f"Too many concurrent requests (limit {self.limits.max_concurrent}); retry later.",
                    type="rate_limit_error", code="rate_limit_exceeded"))  # fmt: skip
            self.in_flight += 1
            try:
                return await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
        return await self.app(scope, receive, send)


# ---------------------------------------------------------------- turning engine outputs into OpenAI bodies
def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


class _Formatter:
    def __init__(self, engine: Engine):
        self.tok = engine.tokenizer

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


# ---------------------------------------------------------------- the app
def create_app(engine: Engine, *, model_name: str, limits: ServerLimits | None = None) -> FastAPI:
    """The FastAPI app serving `engine`. The app starts the engine's scheduler on startup and stops it on shutdown."""
    limits = limits or ServerLimits()
    fmt = _Formatter(engine)
    tok = engine.tokenizer
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(
        title="Vernacular OpenAI-compatible API",
        version="1",
        description="OpenAI-compatible completions and chat over a Vernacular (DeepSeek-V3-style) model.",
        lifespan=lifespan,
        responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                   413: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},  # fmt: skip
    )
    app.add_middleware(LimitsMiddleware, limits=limits)

    # -- errors: always OpenAI's shape
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return APIError(400, str(exc), param=exc.param, code=exc.code).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            message = f"We could not parse the JSON body of your request: {first.get('ctx', {}).get('error', '')}"
            return APIError(400, message.strip(), code="invalid_json").response()
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                 for e in errors[:5]]  # fmt: skip
        return APIError(400, "Invalid request: " + "; ".join(parts), param=".".join(loc) or None,
                        code="invalid_value").response()  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        return APIError(500, f"internal server error: {type(exc).__name__}: {exc}", type="server_error").response()

    # -- helpers
    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_name}'.",
                           param="model", code="model_not_found")  # fmt: skip

    def sampling(req, max_tokens: int | None, prompt_len: int, logprobs: int | None,
                 prompt_logprobs: int | None) -> SamplingParams:  # fmt: skip
        if (bad := req.unsupported()) is not None:
            raise APIError(400, bad[1], param=bad[0], code="unsupported_parameter")
        if max_tokens is None:  # chat: as much as the context allows, within the server's limit
            max_tokens = max(0, min(limits.max_tokens_limit, engine.max_model_len - prompt_len))
        elif max_tokens > limits.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit of "
                                f"{limits.max_tokens_limit}.", param="max_tokens", code="invalid_value")  # fmt: skip
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                              seed=req.seed, stop=list(req.stop or []), ignore_eos=req.ignore_eos,
                              logprobs=logprobs, prompt_logprobs=prompt_logprobs)  # fmt: skip

    def run_all(jobs: list[tuple[list[int], SamplingParams]]) -> tuple[asyncio.Queue, list]:
        """Submit every (prompt, params) job; outputs arrive on one asyncio queue as (job index, StepOutput)."""
        for ids, params in jobs:  # validate all before starting any
            engine.check(ids, params)
        if not engine.running:
            raise APIError(503, "the engine is shutting down", type="server_error")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        handles = []
        for i, (ids, params) in enumerate(jobs):
            handles.append(engine.submit(ids, params, lambda out, i=i: loop.call_soon_threadsafe(q.put_nowait,
                                                                                                  (i, out))))
        return q, handles

    async def collect(q: asyncio.Queue, handles: list) -> list[list[StepOutput]]:
        outs: list[list[StepOutput]] = [[] for _ in handles]
        remaining = len(handles)
        try:
            while remaining:
                i, out = await q.get()
                outs[i].append(out)
                remaining -= out.finished
        finally:
            for h in handles:
                h.abort()
        return outs

    async def sse(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def seeded(params: SamplingParams, i: int) -> SamplingParams:
        if params.seed is None or i == 0:
            return params
        return SamplingParams(**{**params.__dict__, "seed": params.seed + i})

    # -- routes
    @app.get("/health", response_model=Health)
    async def health():
        waiting, running = engine.num_requests()
        body = {"status": "ok" if engine.running else "unavailable", "model": model_name, "waiting": waiting,
                "running": running}  # fmt: skip
        if engine.error is not None:
            body["details"] = {"error": repr(engine.error)}
        return JSONResponse(body, status_code=200 if engine.running else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "vernacular", "max_model_len": engine.max_model_len}]}  # fmt: skip

    @app.get("/v1/models/{model_id}", response_model=ModelCard)
    async def model_card(model_id: str):
        check_model(model_id)
        return {"id": model_name, "object": "model", "created": created, "owned_by": "vernacular",
                "max_model_len": engine.max_model_len}  # fmt: skip

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(req: CompletionRequest):
        check_model(req.model)
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", param="best_of")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        prompts: list[tuple[list[int], str | None]] = []  # (ids, original text or None for token prompts)
        p = req.prompt
        if isinstance(p, str):
            p = [p]
        if not p:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            p = [p]
        for item in p:
            if isinstance(item, str):
                prompts.append((tok.encode(item), item))
            else:
                prompts.append((list(item), None))
        echo_lp = req.logprobs if (req.echo and req.logprobs is not None) else None
        jobs = []
        for ids, _ in prompts:
            params = sampling(req, req.max_tokens, len(ids), req.logprobs, echo_lp)
            jobs += [(ids, seeded(params, i)) for i in range(req.n)]
        q, handles = run_all(jobs)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def echo_of(j: int) -> tuple[str, list[int], list[int]]:
            ids, text = prompts[j // req.n]
            offsets, decoded = offsets_and_text(tok, ids, skip_special_tokens=text is not None)
            return (text if text is not None else decoded), offsets, ids

        if req.stream:
            async def chunks():
                usage = [0, 0]
                outs_left = len(handles)
                first = [True] * len(handles)
                try:
                    while outs_left:
                        i, out = await q.get()
                        outs_left -= out.finished
                        text, lp = out.text, None
                        if first[i] and req.echo:
                            etext, _, _ = echo_of(i)
                            text = etext + text
                        first[i] = False
                        if req.logprobs is not None and out.logprobs:
                            offs, _ = offsets_and_text(tok, out.token_ids, True)
                            lp = fmt.completion_logprobs(out.logprobs, out.token_ids, offs)
                        if out.finished:
                            usage[0] += out.prompt_tokens if i % req.n == 0 else 0
                            usage[1] += out.completion_tokens
                        if text or lp or out.finished:
                            yield {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                                   "choices": [{"index": i, "text": text, "logprobs": lp,
                                                "finish_reason": out.finish_reason}]}  # fmt: skip
                    if req.stream_options and req.stream_options.include_usage:
                        yield {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                               "choices": [], "usage": _usage(usage[0], usage[1])}  # fmt: skip
                finally:
                    for h in handles:
                        h.abort()

            return StreamingResponse(sse(chunks()), media_type="text/event-stream")

        outs = await collect(q, handles)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, seq in enumerate(outs):
            text = "".join(o.text for o in seq)
            gen_ids = [t for o in seq for t in o.token_ids]
            gen_lps = [lp for o in seq for lp in o.logprobs]
            last = seq[-1]
            if i % req.n == 0:
                prompt_tokens += last.prompt_tokens
            completion_tokens += last.completion_tokens
            logprobs = None
            base = ""
            if req.echo:
                etext, e_offsets, e_ids = echo_of(i)
                base = etext
            if req.logprobs is not None:
                g_offsets, _ = offsets_and_text(tok, gen_ids, True)
                g_offsets = [len(base) + o for o in g_offsets]
                lps: list[TokenLogprob | None] = list(gen_lps)
                ids, offsets = list(gen_ids), g_offsets
                if req.echo:
                    prompt_lps = seq[0].prompt_logprobs or [None] * len(e_ids)
                    lps, ids, offsets = list(prompt_lps) + lps, e_ids + ids, e_offsets + offsets
                logprobs = fmt.completion_logprobs(lps, ids, offsets)
            choices.append({"index": i, "text": base + text, "logprobs": logprobs,
                            "finish_reason": last.finish_reason})  # fmt: skip
        return {"id": rid, "object": "text_completion", "created": now, "model": model_name, "choices": choices,
                "usage": _usage(prompt_tokens, completion_tokens)}  # fmt: skip

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(req: ChatCompletionRequest):
        check_model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]  # fmt: skip
        try:
            ids = tok.encode_chat(messages, add_generation_prompt=req.add_generation_prompt)
        except Exception as e:  # template errors (unknown role, no template) are the request's problem
            raise APIError(400, f"cannot apply the chat template: {e}", param="messages") from None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        params = sampling(req, max_tokens, len(ids), top, None)
        q, handles = run_all([(ids, seeded(params, i)) for i in range(req.n)])
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        if req.stream:
            async def chunks():
                def chunk(choices: list, usage: dict | None = None) -> dict:
                    c = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                         "choices": choices}  # fmt: skip
                    if include_usage:
                        c["usage"] = usage
                    return c

                completion_tokens, left = 0, len(handles)
                try:
                    for i in range(req.n):
                        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}])  # fmt: skip
                    while left:
                        i, out = await q.get()
                        left -= out.finished
                        lp = fmt.chat_logprobs(out.logprobs) if (req.logprobs and out.logprobs) else None
                        if out.text or lp:
                            yield chunk([{"index": i, "delta": {"content": out.text}, "logprobs": lp,
                                          "finish_reason": None}])  # fmt: skip
                        if out.finished:
                            completion_tokens += out.completion_tokens
                            yield chunk([{"index": i, "delta": {}, "logprobs": None,
                                          "finish_reason": out.finish_reason}])  # fmt: skip
                    if include_usage:
                        yield chunk([], _usage(len(ids), completion_tokens))
                finally:
                    for h in handles:
                        h.abort()

            return StreamingResponse(sse(chunks()), media_type="text/event-stream")

        outs = await collect(q, handles)
        choices, completion_tokens = [], 0
        for i, seq in enumerate(outs):
            completion_tokens += seq[-1].completion_tokens
            lps = [lp for o in seq for lp in o.logprobs]
            choices.append({"index": i, "message": {"role": "assistant", "content": "".join(o.text for o in seq)},
                            "logprobs": fmt.chat_logprobs(lps) if req.logprobs else None,
                            "finish_reason": seq[-1].finish_reason})  # fmt: skip
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name, "choices": choices,
                "usage": _usage(len(ids), completion_tokens)}  # fmt: skip

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of 'prompt' or 'messages'", param="prompt")
        if req.prompt is not None:
            ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        else:
            try:
                ids = tok.encode_chat([{"role": m.role, "content": m.text()} for m in req.messages],
                                      add_generation_prompt=req.add_generation_prompt)  # fmt: skip
            except Exception as e:
                raise APIError(400, f"cannot apply the chat template: {e}", param="messages") from None
        body = {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}
        if req.return_token_strs:
            body["token_strs"] = [tok.token_str(t) for t in ids]
        return body

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(req: DetokenizeRequest):
        check_model(req.model)
        bad = [t for t in req.tokens if not 0 <= t < tok.vocab_size]
        if bad:
            raise APIError(400, f"token ids out of range [0, {tok.vocab_size}): {bad[:5]}", param="tokens")
        return {"prompt": tok.decode(req.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {**tok.info(), "max_model_len": engine.max_model_len}

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if not page.exists():
            raise APIError(404, f"the web chat page is not installed ({page} is missing); the API is under /v1",
                           code="not_found")  # fmt: skip
        return FileResponse(page)

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str):
        path = (STATIC_DIR / name).resolve()
        if not path.is_relative_to(STATIC_DIR.resolve()) or not path.is_file():
            raise APIError(404, f"no static file {name!r}", code="not_found")
        return FileResponse(path)

    return app
