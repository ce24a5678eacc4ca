"""`POST /v1/responses`: OpenAI's Responses API, stateless (`store: false`; `previous_response_id` is refused).

`input` is a string (one user message) or a list of messages (`input_text` parts or strings); `instructions` becomes
the system turn; `max_output_tokens`, `temperature`, `top_p`; `text.format` `json_object` / `json_schema` uses the same
grammar as chat's `response_format`. Streaming sends the named events the OpenAI SDK reads (`response.created`,
`response.output_text.delta`, ..., `response.completed`).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from vernacular.serve.schemas import ResponsesRequest
from vernacular.serve.serving import APIError, Job, Serving, sse


def router(serving: Serving) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/responses")
    async def responses(req: ResponsesRequest, request: Request):
        serving.check_request(req)
        if req.store:
            raise APIError(400, "this server is stateless: send store: false (and the whole input each time)",
                           param="store")  # fmt: skip
        if req.tools:
            raise APIError(400, "tools are supported on /v1/chat/completions, not yet on /v1/responses",
                           param="tools", code="unsupported_parameter")  # fmt: skip
        messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
        if isinstance(req.input, str):
            messages.append({"role": "user", "content": req.input})
        else:
            messages += [{"role": m.role, "content": m.text()} for m in req.input]
        ids = serving.encode_chat(messages, param="input")
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        grammar = serving.response_format_grammar(fmt and fmt.type, fmt and fmt.schema_, "text.format")
        params = serving.sampling(req, req.max_output_tokens, len(ids), max_tokens_param="max_output_tokens")
        run = serving.start([Job(ids, params, grammar)], "input")
        rid, msg_id, created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", int(time.time())

        def response(status: str, text: str | None, reason: str | None = None, completion_tokens: int = 0) -> dict:
            output = []
            if text is not None:
                output = [{"type": "message", "id": msg_id, "status": "completed" if status == "completed" else
                           "incomplete", "role": "assistant",
                           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}]  # fmt: skip
            return {
                "id": rid, "object": "response", "created_at": created, "status": status, "model": serving.model_name,
                "output": output, "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "parallel_tool_calls": False, "tool_choice": "none",
                "tools": [], "store": False, "error": None, "metadata": req.metadata or {},
                "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
                "incomplete_details": {"reason": "max_output_tokens"} if reason == "length" else None,
                "usage": {"input_tokens": len(ids), "output_tokens": completion_tokens,
                          "total_tokens": len(ids) + completion_tokens, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}},
            }  # fmt: skip

        def status_of(reason: str | None) -> str:
            return "incomplete" if reason == "length" else "completed"

        if req.stream:
            async def events():
                seq = iter(range(1 << 30))

                def ev(kind: str, **body) -> dict:
                    return {"type": kind, "sequence_number": next(seq), **body}

                yield ev("response.created", response=response("in_progress", None))
                yield ev("response.in_progress", response=response("in_progress", None))
                item = {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}
                yield ev("response.output_item.added", output_index=0, item=item)
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                yield ev("response.content_part.added", item_id=msg_id, output_index=0, content_index=0, part=part)
                text, last = "", None
                async for _, out in run.events():
                    if out.text:
                        text += out.text
                        yield ev("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0,
                                 delta=out.text, logprobs=[])  # fmt: skip
                    last = out
                yield ev("response.output_text.done", item_id=msg_id, output_index=0, content_index=0, text=text,
                         logprobs=[])  # fmt: skip
                yield ev("response.content_part.done", item_id=msg_id, output_index=0, content_index=0,
                         part={**part, "text": text})  # fmt: skip
                final = response(status_of(last.finish_reason), text, last.finish_reason, last.completion_tokens)
                yield ev("response.output_item.done", output_index=0, item=final["output"][0])
                yield ev(f"response.{final['status']}", response=final)

            return StreamingResponse(sse(events(), named=True), media_type="text/event-stream")

        (seq,) = await run.collect(request)
        last = seq[-1]
        return response(status_of(last.finish_reason), "".join(o.text for o in seq), last.finish_reason,
                        last.completion_tokens)  # fmt: skip

    return api
