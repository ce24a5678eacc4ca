"""`POST /v1/completions` (OpenAI's legacy completions, as lm-eval and vLLM clients use it).

Streamed and non-streamed answers are built by the same per-choice code (`_Choice.piece`), so their text and logprobs
(`text_offset` included, and the prompt's logprobs with `echo`) are the same data, only cut differently.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from tokenizers.decoders import DecodeStream

from vernacular.serve.engine import StepOutput
from vernacular.serve.schemas import CompletionRequest, CompletionResponse
from vernacular.serve.serving import APIError, Formatter, Job, Serving, seeded, sse, usage
from vernacular.serve.text import offsets_and_text


class _Choice:
    """One choice's text and logprobs, piece by piece: offsets run on across pieces, echo comes with the first."""

    def __init__(self, serving: Serving, echo: tuple[str, list[int], list[int]] | None, want_logprobs: bool):
        self.tok, self.fmt = serving.tok, Formatter(serving.tok)
        self.echo, self.want = echo, want_logprobs
        self.decoder = DecodeStream(skip_special_tokens=True)
        self.length = len(echo[0]) if echo else 0  # characters of text so far (the echoed prompt included)
        self.first = True

    def piece(self, out: StepOutput) -> tuple[str, dict | None]:
        text, ids, lps, offsets = out.text, [], [], []
        if self.first and self.echo is not None:
            etext, e_offsets, e_ids = self.echo
            text = etext + text
            if self.want:
                ids, offsets = list(e_ids), list(e_offsets)
                lps = list(out.prompt_logprobs or [None] * len(e_ids))
        self.first = False
        if self.want:
            for t in out.token_ids:
                offsets.append(self.length)
                self.length += len(self.decoder.step(self.tok.tokenizer, t) or "")
            ids += out.token_ids
            lps += out.logprobs
        return text, (self.fmt.completion_logprobs(lps, ids, offsets) if self.want and ids else None)


def _merge(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}


def router(serving: Serving) -> APIRouter:
    api = APIRouter()
    tok = serving.tok

    @api.post("/v1/completions", response_model=CompletionResponse)
    async def completions(req: CompletionRequest, request: Request):
        serving.check_request(req)
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", param="best_of")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        p = req.prompt
        if isinstance(p, str):
            p = [p]
        if not p:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            p = [p]
        prompts = [(serving.encode_text(x), x) if isinstance(x, str) else (list(x), None) for x in p]
        rf = req.response_format
        grammar = serving.response_format_grammar(rf and rf.type, rf and rf.json_schema and rf.json_schema.schema_,
                                                  "response_format")  # fmt: skip
        echo_lp = req.logprobs if (req.echo and req.logprobs is not None) else None
        jobs = []
        for ids, _ in prompts:
            params = serving.sampling(req, req.max_tokens, len(ids), logprobs=req.logprobs, prompt_logprobs=echo_lp)
            jobs += [Job(ids, seeded(params, i), grammar) for i in range(req.n)]
        run = serving.start(jobs, "prompt")
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def choice_state(j: int) -> _Choice:
            echo = None
            if req.echo:
                ids, text = prompts[j // req.n]
                offsets, decoded = offsets_and_text(tok, ids, skip_special_tokens=text is not None)
                echo = (text if text is not None else decoded, offsets, ids)
            return _Choice(serving, echo, req.logprobs is not None)

        states = [choice_state(j) for j in range(len(jobs))]

        def count(i: int, out: StepOutput, totals: list[int]) -> None:
            if out.finished:
                totals[0] += out.prompt_tokens if i % req.n == 0 else 0
                totals[1] += out.completion_tokens

        if req.stream:
            async def chunks():
                totals = [0, 0]
                async for i, out in run.events():
                    text, lp = states[i].piece(out)
                    count(i, out, totals)
                    if text or lp or out.finished:
                        yield {"id": rid, "object": "text_completion", "created": now, "model": serving.model_name,
                               "choices": [{"index": i, "text": text, "logprobs": lp,
                                            "finish_reason": out.finish_reason}]}  # fmt: skip
                if req.stream_options and req.stream_options.include_usage:
                    yield {"id": rid, "object": "text_completion", "created": now, "model": serving.model_name,
                           "choices": [], "usage": usage(*totals)}  # fmt: skip

            return StreamingResponse(sse(chunks()), media_type="text/event-stream")

        outs = await run.collect(request)
        choices, totals = [], [0, 0]
        for i, seq in enumerate(outs):
            text, lp = "", None
            for out in seq:
                t, piece_lp = states[i].piece(out)
                text, lp = text + t, _merge(lp, piece_lp)
                count(i, out, totals)
            if lp is None and req.logprobs is not None:
                lp = Formatter(tok).completion_logprobs([], [], [])
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": seq[-1].finish_reason})
        return {"id": rid, "object": "text_completion", "created": now, "model": serving.model_name,
                "choices": choices, "usage": usage(*totals)}  # fmt: skip

    return api
