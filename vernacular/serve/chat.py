"""`POST /v1/chat/completions`: the chat template, structured outputs and tool calling.

Tool calls use the chat template's format (`vernacular.tokenizer.chat`): the model writes
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks in its turn. `ToolCallParser` reads them out of the
generated text, incrementally, so a stream carries OpenAI's deltas (`tool_calls[i]` with id and name first, then
pieces of `function.arguments`) and the non-streamed answer is the same parse of the whole text. `tool_choice`
`required` or a named function makes a grammar force the calls, so their arguments always match the function's
`parameters` schema; `auto` lets the model choose; `none` leaves the text alone.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from vernacular.serve.schemas import ChatCompletionRequest, ChatCompletionResponse
from vernacular.serve.serving import APIError, Formatter, Job, Serving, seeded, sse, usage
from vernacular.tokenizer.chat import TOOL_CALL_END, TOOL_CALL_START

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


def _prefix_len(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker` (it could still become the marker)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ToolCallParser:
    """Incremental split of assistant text into content and tool calls. `feed(text)` returns deltas:
    ("content", text) | ("call", index, id, name) | ("arguments", index, text)."""

    def __init__(self):
        self.buf, self.mode, self.calls, self.sent = "", "content", 0, 0

    def _new_call(self, name: str) -> tuple:
        self.calls += 1
        return ("call", self.calls - 1, f"call_{uuid.uuid4().hex[:24]}", name)

    def feed(self, text: str, final: bool = False) -> list[tuple]:
        self.buf += text
        deltas: list[tuple] = []
        while True:
            if self.mode == "content":
                at = self.buf.find(TOOL_CALL_START)
                if at < 0:
                    keep = 0 if final else _prefix_len(self.buf, TOOL_CALL_START)
                    if len(self.buf) > keep:
                        deltas.append(("content", self.buf[: len(self.buf) - keep]))
                        self.buf = self.buf[len(self.buf) - keep :]
                    return deltas
                if at:
                    deltas.append(("content", self.buf[:at]))
                self.buf, self.mode = self.buf[at + len(TOOL_CALL_START) :], "header"
            elif self.mode == "header":
                m = _HEADER.match(self.buf)
                end = self.buf.find(TOOL_CALL_END)
                if m is not None and m.end() == len(self.buf) and not final:
                    return deltas  # the whitespace before the arguments may not be complete yet
                if m is not None and (end < 0 or m.end() <= end):
                    deltas.append(self._new_call(json.loads(m.group(1))))
                    self.buf, self.mode, self.sent = self.buf[m.end() :], "arguments", 0
                elif end >= 0 or final:  # a block that is not a call: it was text after all
                    block = self.buf[: end + len(TOOL_CALL_END)] if end >= 0 else self.buf
                    deltas.append(("content", TOOL_CALL_START + block))
                    self.buf, self.mode = self.buf[len(block) :], "content"
                else:
                    return deltas
            else:  # arguments: everything up to the call object's closing brace before </tool_call>
                end = self.buf.find(TOOL_CALL_END)
                if end >= 0:
                    args = self.buf[:end].rstrip()
                    args = args[:-1].rstrip() if args.endswith("}") else args
                    if len(args) > self.sent:
                        deltas.append(("arguments", self.calls - 1, args[self.sent :]))
                    self.buf, self.mode = self.buf[end + len(TOOL_CALL_END) :], "content"
                    continue
                # the closing brace (and what follows it) might end the call: hold back from the last "}"
                upto = len(self.buf) if final else self.buf.rfind("}")
                if upto > self.sent:
                    deltas.append(("arguments", self.calls - 1, self.buf[self.sent : upto]))
                    self.sent = upto
                return deltas


def _tool_calls(deltas: list[tuple]) -> list[dict]:
    calls: list[dict] = []
    for d in deltas:
        if d[0] == "call":
            calls.append({"id": d[2], "type": "function", "function": {"name": d[3], "arguments": ""}})
        elif d[0] == "arguments":
            calls[d[1]]["function"]["arguments"] += d[2]
    return calls


def router(serving: Serving) -> APIRouter:
    api = APIRouter()
    fmt = Formatter(serving.tok)

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        serving.check_request(req)
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        choice = req.tool_choice
        if choice is not None and not tools:
            raise APIError(400, "tool_choice is only allowed when tools are given", param="tool_choice")
        choice = choice or ("auto" if tools else "none")
        ids = serving.encode_chat([m.for_template() for m in req.messages], tools=tools,
                                  add_generation_prompt=req.add_generation_prompt)  # fmt: skip
        grammar = None
        if choice == "required" or not isinstance(choice, str):
            if req.response_format is not None and req.response_format.type != "text":
                raise APIError(400, "response_format cannot be combined with a forced tool_choice",
                               param="response_format")  # fmt: skip
            forced = tools
            if not isinstance(choice, str):
                forced = [t for t in tools if t["function"]["name"] == choice.function.name]
                if not forced:
                    raise APIError(400, f"tool_choice names an unknown function {choice.function.name!r}",
                                   param="tool_choice")  # fmt: skip
            grammar = serving.tool_grammar(forced, req.parallel_tool_calls)
        elif (rf := req.response_format) is not None:
            grammar = serving.response_format_grammar(rf.type, rf.json_schema and rf.json_schema.schema_,
                                                      "response_format.json_schema.schema")  # fmt: skip
        parse_tools = choice != "none"
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        params = serving.sampling(req, max_tokens, len(ids), logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                                  max_tokens_param="max_completion_tokens" if req.max_completion_tokens is not None
                                  else "max_tokens")  # fmt: skip
        run = serving.start([Job(ids, seeded(params, i), grammar) for i in range(req.n)], "messages")
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        parsers = [ToolCallParser() if parse_tools else None for _ in range(req.n)]

        def finish_reason(i: int, reason: str | None) -> str | None:
            return "tool_calls" if reason == "stop" and parsers[i] is not None and parsers[i].calls else reason

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def chunks():
                def chunk(choices: list, usage_: dict | None = None) -> dict:
                    c = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": serving.model_name,
                         "choices": choices}  # fmt: skip
                    if include_usage:
                        c["usage"] = usage_
                    return c

                completion_tokens = 0
                for i in range(req.n):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}])  # fmt: skip
                async for i, out in run.events():
                    lp = fmt.chat_logprobs(out.logprobs) if (req.logprobs and out.logprobs) else None
                    parser = parsers[i]
                    deltas = parser.feed(out.text, final=out.finished) if parser else [("content", out.text)]
                    for d in deltas:
                        if d[0] == "content":
                            delta = {"content": d[1]}
                        elif d[0] == "call":
                            delta = {"tool_calls": [{"index": d[1], "id": d[2], "type": "function",
                                                     "function": {"name": d[3], "arguments": ""}}]}  # fmt: skip
                        else:
                            delta = {"tool_calls": [{"index": d[1], "function": {"arguments": d[2]}}]}
                        if delta.get("content") == "":
                            continue
                        yield chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}])
                        lp = None
                    if lp is not None:
                        yield chunk([{"index": i, "delta": {"content": ""}, "logprobs": lp, "finish_reason": None}])
                    if out.finished:
                        completion_tokens += out.completion_tokens
                        yield chunk([{"index": i, "delta": {}, "logprobs": None,
                                      "finish_reason": finish_reason(i, out.finish_reason)}])  # fmt: skip
                if include_usage:
                    yield chunk([], usage(len(ids), completion_tokens))

            return StreamingResponse(sse(chunks()), media_type="text/event-stream")

        outs = await run.collect(request)
        choices, completion_tokens = [], 0
        for i, seq in enumerate(outs):
            completion_tokens += seq[-1].completion_tokens
            text = "".join(o.text for o in seq)
            message: dict = {"role": "assistant", "content": text}
            if parsers[i] is not None:
                deltas = parsers[i].feed(text, final=True)
                message["content"] = "".join(d[1] for d in deltas if d[0] == "content")
                if calls := _tool_calls(deltas):
                    message["tool_calls"] = calls
                    message["content"] = message["content"].strip() or None
            lps = [lp for o in seq for lp in o.logprobs]
            choices.append({"index": i, "message": message, "logprobs": fmt.chat_logprobs(lps) if req.logprobs else None,
                            "finish_reason": finish_reason(i, seq[-1].finish_reason)})  # fmt: skip
        return {"id": rid, "object": "chat.completion", "created": now, "model": serving.model_name,
                "choices": choices, "usage": usage(len(ids), completion_tokens)}  # fmt: skip

    return api
