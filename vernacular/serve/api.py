"""The OpenAI-compatible HTTP API (FastAPI) in front of the engine.

Why OpenAI's shapes, down to the error body: "sovereignty means choice" — an existing OpenAI client, lm-eval's
`local-completions`, or any tool built for vLLM should work by changing only its base URL. So every error is
`{"error": {"message", "type", "param", "code"}}` with a 4xx status for anything the client got wrong (including
FastAPI's own validation errors, which would otherwise be 422s in another shape), and only a real server fault is 5xx.

Limits (API key, body size, concurrent requests) are plain ASGI middleware, so they act before a body is parsed and
also cover streaming responses, which stay "in flight" until their last SSE chunk is sent.

This module holds the app, its middleware, errors and the small endpoints; each generation surface has its own module
(`completions.py`, `chat.py`, `responses.py`, as vLLM's serving_completion / serving_chat / serving_responses) over
the one request -> engine path in `serving.py`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vernacular.serve.engine import Engine, RequestError
from vernacular.serve.schemas import (
    DetokenizeRequest, DetokenizeResponse, ErrorResponse, Health, ModelCard, ModelList, TextError, TokenizeRequest,
    TokenizeResponse,
)  # fmt: skip
from vernacular.serve.serving import APIError, Serving, ServerLimits

__all__ = ["APIError", "ServerLimits", "create_app"]

STATIC_DIR = Path(__file__).parent / "static"
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


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


# ---------------------------------------------------------------- the app
def create_app(engine: Engine, *, model_name: str, limits: ServerLimits | None = None) -> FastAPI:
    """The FastAPI app serving `engine`. The app starts the engine's scheduler on startup and stops it on shutdown."""
    limits = limits or ServerLimits()
    serving = Serving(engine, model_name, limits)
    tok = engine.tokenizer
    created = int(time.time())
    check_model = serving.check_model

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
        bad_text = next((e["ctx"]["error"] for e in errors if isinstance(e.get("ctx", {}).get("error"), TextError)),
                        None)  # fmt: skip
        if bad_text is not None:
            return APIError(400, str(bad_text), param=bad_text.param, code="invalid_value").response()
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

    # -- routes
    @app.get("/health", response_model=Health)
    async def health():
        waiting, running = engine.num_requests()
        body = {"status": "ok" if engine.running else "unavailable", "model": model_name, "waiting": waiting,
                "running": running}  # fmt: skip
        if engine.error is not None:  # the engine carried on (or restarted its loop) after this
            body["details"] = {"last_error": repr(engine.error), "failed_steps": engine.failures,
                               "restarts": engine.restarts}  # fmt: skip
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

    from vernacular.serve import chat, completions, responses

    for surface in (completions, chat, responses):
        app.include_router(surface.router(serving))

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of 'prompt' or 'messages'", param="prompt")
        if req.prompt is not None:  # what /v1/completions would make of this prompt
            ids = serving.encode_text(req.prompt, add_special_tokens=req.add_special_tokens)
        else:  # what /v1/chat/completions would make of these messages
            tools = [t.model_dump() for t in req.tools] if req.tools else None
            ids = serving.encode_chat([m.for_template() for m in req.messages], tools=tools,
                                      add_generation_prompt=req.add_generation_prompt)  # fmt: skip
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
