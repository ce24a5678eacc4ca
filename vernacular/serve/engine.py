"""The inference engine: continuous batching over the MLA latent KV cache.

Why this shape: DeepSeek-V3's attention caches only a small latent (kv_lora_rank + the shared RoPE key per token and
layer), so many requests fit in memory at once and the cost of a decode step is dominated by the weights, not by the
cache. The engine exploits that with continuous batching: every request owns one slot of a `LatentKVCache`; a
scheduler thread admits waiting requests between decode steps (one padded prefill for all of them), then runs ONE
batched decode step for all active slots, each row at its own position (`start_pos`). Finished requests leave at once
and free their slot, so a long request never holds the others back.

Results flow back through a per-request callback (`on_output`), called from the scheduler thread; the API wraps it in
an asyncio queue, tests and benchmarks use the blocking `generate()` / `complete()` helpers. A request submitted with
`stream=False` gets ONE output when it finishes (the scheduler aggregates): waking another thread for every token
costs more than a whole decode step of a small model on a busy CPU.

Per step the scheduler does the minimum on the host: cache addressing is validated once per forward (not per layer),
greedy rows take one argmax, and the model runs under `torch.inference_mode`.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from vernacular.serve.sampling import (
    SamplingParams, TokenLogprob, make_generator, process_logits, sample_next, token_logprobs,
)  # fmt: skip
from vernacular.serve.text import ServingTokenizer, TextStream

PREFILL_CHUNK = 512  # prompt tokens per prefill forward: bounds the [B, T, vocab] logits tensor


class RequestError(ValueError):
    """A request the engine cannot serve as asked (too long, bad token ids, ...): the client's mistake, a 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class StepOutput:
    """What one request produced since its previous output."""

    request_id: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None  # only on the first output, when asked (echo)
    error: str | None = None  # finish_reason "error": why serving this request failed (the server's fault)


@dataclass
class Completion:
    """A finished request, aggregated (the non-streaming view)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: list[TokenLogprob | None] | None
    error: str | None = None


class Request:
    """One sequence being generated. Mutated only by the scheduler thread (except `abort`)."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator,
                 stream: TextStream, stop_ids: set[int], on_output: Callable[[StepOutput], None],
                 streaming: bool = True, constraint=None):  # fmt: skip
        self.id = next(Request._ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.generator = generator
        self.stream = stream
        self.stop_ids = stop_ids
        self.on_output = on_output
        self.streaming = streaming
        self.held: StepOutput | None = None  # non-streaming: everything produced so far, delivered on finish
        self.tokens = list(prompt_ids)  # prompt + generated; the last one is not in the cache yet
        self.generated: list[int] = []
        self.slot = -1
        self.finished = False
        self.aborted = threading.Event()
        self.sent_prompt_info = False
        self.prompt_lp: list[TokenLogprob | None] | None = None
        self.constraint = constraint  # a grammar (vernacular.serve.constraints): allowed-token mask per step

    def abort(self) -> None:
        """Ask the scheduler to drop this request (client went away); it finishes with reason "abort"."""
        self.aborted.set()


class Engine:
    """Continuous-batching generation for a `vernacular.model.Transformer` and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer: ServingTokenizer, *, max_batch: int = 8,
                 max_model_len: int | None = None, seed: int = 0):  # fmt: skip
        from vernacular.model import LatentKVCache

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch = max_batch
        limit = self.config.max_position_embeddings
        self.max_model_len = min(max_model_len or limit, limit)
        if tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {self.config.vocab_size}"
            )
        param = next(model.parameters())
        self.device = param.device
        self.cache = LatentKVCache(self.config, max_batch, self.max_model_len, dtype=param.dtype, device=param.device)
        self.rng = torch.Generator().manual_seed(seed)
        self.stop_ids = set(tokenizer.stop_ids)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []
        self._free_slots = list(range(max_batch - 1, -1, -1))
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # the last failure of a step or of the scheduler loop
        self.failures = 0  # steps that failed (their requests got finish_reason "error"); the engine carried on
        self.restarts = 0  # times the scheduler loop itself died and was restarted

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="vernacular-engine", daemon=True)
            self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the scheduler to stop after its current step, without waiting (safe from a signal handler)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def stop(self) -> None:
        """Finish every queued and running request with reason "abort", then end the scheduler thread."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def num_requests(self) -> tuple[int, int]:
        """(waiting, active) request counts."""
        with self._cv:
            return len(self._waiting), len(self._active)

    # ------------------------------------------------------------------ submitting work
    def check(self, prompt_ids: list[int], params: SamplingParams, prompt_param: str = "prompt") -> None:
        """Raise RequestError if this request cannot be served; called before anything is queued.

        `prompt_param` names the request field the prompt came from ("prompt", "messages", "input") in errors: a
        prompt that alone fills the context is that field's fault, one that fits but not with max_tokens is
        max_tokens'."""
        if not prompt_ids:
            raise RequestError("the prompt is empty", param=prompt_param)
        vocab = self.config.vocab_size
        if any((not isinstance(t, int)) or isinstance(t, bool) or t < 0 or t >= vocab for t in prompt_ids):
            raise RequestError(f"prompt token ids must be integers in [0, {vocab})", param=prompt_param)
        if any(not 0 <= t < vocab for t in params.logit_bias):
            raise RequestError(f"logit_bias keys must be token ids in [0, {vocab})", param="logit_bias")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            too_long = len(prompt_ids) >= self.max_model_len
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + params.max_tokens} tokens ({len(prompt_ids)} in the {prompt_param}, "
                f"{params.max_tokens} for the completion). Please reduce the "
                f"{prompt_param if too_long else 'max_tokens'}.",
                param=prompt_param if too_long else "max_tokens",
                code="context_length_exceeded",
            )

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_output: Callable[[StepOutput], None],
               stream: bool = True, constraint=None) -> Request:  # fmt: skip
        """Queue a request; `on_output` is called from the scheduler thread with each StepOutput (stream=True), or
        once with everything aggregated when the request finishes (stream=False). `constraint`: a fresh
        `vernacular.serve.constraints.Constraint` (structured outputs) or None."""
        self.check(prompt_ids, params)
        if not self.running:
            raise RuntimeError("the engine is not running")
        text_stream = TextStream(self.tokenizer, params.stop, params.skip_special_tokens)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.stop_ids)
        with self._cv:
            generator = make_generator(params.seed, self.rng)
            req = Request(list(prompt_ids), params, generator, text_stream, stop_ids, on_output, stream, constraint)
            self._waiting.append(req)
            self._cv.notify_all()
        return req

    def generate(self, prompt_ids: list[int], params: SamplingParams, stream: bool = True) -> Iterator[StepOutput]:
        """Blocking stream of one request's outputs (for scripts, tests and benchmarks)."""
        q: queue.Queue[StepOutput] = queue.Queue()
        req = self.submit(prompt_ids, params, q.put, stream)
        try:
            while True:
                out = q.get()
                yield out
                if out.finished:
                    return
        finally:
            req.abort()

    def complete(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """Run one request to the end and aggregate its outputs."""
        text, ids, lps, prompt_lps, last = [], [], [], None, None
        for out in self.generate(prompt_ids, params, stream=False):
            text.append(out.text)
            ids += out.token_ids
            lps += out.logprobs
            if out.prompt_logprobs is not None:
                prompt_lps = out.prompt_logprobs
            last = out
        return Completion("".join(text), ids, lps, last.finish_reason, last.prompt_tokens, last.completion_tokens,
                          prompt_lps, last.error)  # fmt: skip

    # ------------------------------------------------------------------ the scheduler
    MAX_RESTARTS = 100  # a loop that keeps dying is a broken engine, not a bad request: then stop for good

    def _supervise(self) -> None:
        """Run the scheduler loop; if it dies, fail what was in flight, record why, and start it again."""
        while True:
            try:
                self._loop()
                break
            except BaseException as e:  # noqa: BLE001 - the server must keep answering
                self.error = e
                with self._cv:
                    pending = list(self._waiting) + list(self._active)
                    self._waiting.clear()
                self._fail(pending, e)
                if self._stopping or self.restarts >= self.MAX_RESTARTS or not isinstance(e, Exception):
                    break
                self.restarts += 1
        with self._cv:
            self._stopping = True
            pending = list(self._waiting) + list(self._active)
            self._waiting.clear()
        for req in pending:
            if not req.finished:
                self._finish(req, "abort")

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stopping:
                    return
                admitted = []
                while self._waiting and self._free_slots:
                    req = self._waiting.popleft()
                    if req.aborted.is_set():
                        self._finish(req, "abort", release_slot=False)
                        continue
                    req.slot = self._free_slots.pop()
                    admitted.append(req)
            for req in [r for r in self._active if r.aborted.is_set()]:
                self._finish(req, "abort")
            # a failing forward cannot be blamed on one row: its requests fail (an error to each client), the
            # engine goes on with the next step
            for step, reqs in ((self._prefill, admitted), (self._decode_step, None)):
                reqs = reqs if reqs is not None else list(self._active)
                if not reqs:
                    continue
                try:
                    with torch.inference_mode():
                        step(reqs)
                except Exception as e:  # noqa: BLE001
                    self.error = e
                    self.failures += 1
                    self._fail(reqs, e)

    def _fail(self, reqs: list[Request], exc: BaseException) -> None:
        """Finish `reqs` with reason "error" (each client gets an error), freeing their slots."""
        for r in reqs:
            if not r.finished:
                r.held = None  # a failed request delivers no partial answer
                self._finish(r, "error", error=f"{type(exc).__name__}: {exc}")

    def _forward(self, ids: torch.Tensor, slots: list[int], start_pos: list[int],
                 logits_at: list[int] | None = None) -> torch.Tensor:  # fmt: skip
        out = self.model(
            ids.to(self.device),
            cache=self.cache,
            slots=torch.tensor(slots, dtype=torch.long, device=self.device),
            start_pos=torch.tensor(start_pos, dtype=torch.long, device=self.device),
            logits_at=None if logits_at is None else torch.tensor(logits_at, dtype=torch.long, device=self.device),
        )
        return out.logits.float()

    def _prefill(self, reqs: list[Request]) -> None:
        """Write the prompts of newly admitted requests into their slots (padded to one batch, in chunks), then sample
        each one's first token. Padding sits after a prompt's end, where decode overwrites it before it is ever read."""
        lengths = [len(r.prompt_ids) for r in reqs]
        longest = max(lengths)
        ids = torch.full((len(reqs), longest), self.pad_id, dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, : lengths[i]] = torch.tensor(r.prompt_ids)
        want_prompt_lp = [r.params.prompt_logprobs is not None for r in reqs]
        last_logits = torch.empty(len(reqs), self.config.vocab_size)
        prompt_lps: list[list] = [[None] for _ in reqs]  # the first prompt token has no logprob
        slots = [r.slot for r in reqs]
        for c in range(0, longest, PREFILL_CHUNK):
            chunk = ids[:, c : c + PREFILL_CHUNK]
            if not any(want_prompt_lp):  # only each prompt's last position needs logits (HF's logits_to_keep)
                at = [min(max(n - 1 - c, 0), chunk.shape[1] - 1) for n in lengths]
                logits = self._forward(chunk, slots, [c] * len(reqs), at)
                for i, n in enumerate(lengths):
                    if c <= n - 1 < c + chunk.shape[1]:
                        last_logits[i] = logits[i, 0]
                continue
            logits = self._forward(chunk, slots, [c] * len(reqs))
            for i, r in enumerate(reqs):
                n = lengths[i]
                if c <= n - 1 < c + logits.shape[1]:
                    last_logits[i] = logits[i, n - 1 - c]
                if want_prompt_lp[i]:
                    # logits at position p predict token p + 1
                    lo, hi = c, min(c + logits.shape[1], n - 1)
                    if hi > lo:
                        k = r.params.prompt_logprobs
                        prompt_lps[i] += token_logprobs(logits[i, : hi - lo], ids[i, lo + 1 : hi + 1], [k] * (hi - lo))
        with self._cv:
            self._active.extend(reqs)
        for i, r in enumerate(reqs):
            r.prompt_lp = prompt_lps[i] if want_prompt_lp[i] else None
        zero = [r for r in reqs if r.params.max_tokens == 0]
        for r in zero:
            self._finish(r, "length")
        rest = [i for i, r in enumerate(reqs) if r.params.max_tokens > 0]
        if rest:
            self._sample_and_emit([reqs[i] for i in rest], last_logits[rest])

    def _decode_step(self, reqs: list[Request]) -> None:
        """One token for every active request: a [B, 1] forward, each row at its own position in its own slot."""
        ids = torch.tensor([[r.tokens[-1]] for r in reqs], dtype=torch.long)
        logits = self._forward(ids, [r.slot for r in reqs], [len(r.tokens) - 1 for r in reqs])
        self._sample_and_emit(reqs, logits[:, -1])

    def _sample_and_emit(self, reqs: list[Request], logits: torch.Tensor) -> None:
        """Process, sample and emit one token per request. A failure in one row (its grammar, its callback) fails
        that request alone."""
        params = [r.params for r in reqs]
        failed: dict[int, Exception] = {}
        for i, r in enumerate(reqs):
            if r.constraint is None and not r.params.processes_logits:
                continue
            try:
                allowed = r.constraint.allowed() if r.constraint is not None else None
                process_logits(logits[i], r.params, r.prompt_ids, r.generated, r.stop_ids, allowed)
            except Exception as e:  # noqa: BLE001
                failed[i] = e
        chosen = sample_next(logits, params, [r.generator for r in reqs])
        lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None and i not in failed]
        lps: dict[int, TokenLogprob] = {}
        if lp_rows:
            got = token_logprobs(logits[lp_rows], chosen[lp_rows], [params[i].logprobs for i in lp_rows])
            lps = dict(zip(lp_rows, got))
        for i, (r, tok) in enumerate(zip(reqs, chosen.tolist())):
            if i in failed:
                self._fail([r], failed[i])
                continue
            try:
                self._advance(r, tok, [lps[i]] if i in lps else [])
            except Exception as e:  # noqa: BLE001
                self.error = e
                self.failures += 1
                self._fail([r], e)

    def _advance(self, r: Request, tok: int, lps: list[TokenLogprob]) -> None:
        r.tokens.append(tok)
        r.generated.append(tok)
        is_stop_token = tok in r.stop_ids
        grammar_done = False
        if r.constraint is not None and not is_stop_token:
            r.constraint.advance(tok)
            grammar_done = r.constraint.is_done()
        text = "" if is_stop_token else r.stream.push(tok)
        reason = None
        if is_stop_token or r.stream.stopped or grammar_done:
            reason = "stop"
        elif len(r.generated) >= r.params.max_tokens or len(r.tokens) >= self.max_model_len:
            reason = "length"
        out = self._output(r, text, [tok], lps)
        if reason is None:
            self._emit(r, out)
        else:
            self._finish(r, reason, partial=out)

    def _output(self, r: Request, text: str, token_ids: list[int], logprobs: list[TokenLogprob]) -> StepOutput:
        out = StepOutput(r.id, text, token_ids, logprobs, prompt_tokens=len(r.prompt_ids),
                         completion_tokens=len(r.generated))  # fmt: skip
        if not r.sent_prompt_info:
            out.prompt_logprobs = r.prompt_lp
            r.sent_prompt_info = True
        return out

    def _emit(self, r: Request, out: StepOutput) -> None:
        """Hand `out` to the request's callback, or add it to what a non-streaming request gets at the end."""
        if r.streaming:
            r.on_output(out)
        elif r.held is None:
            r.held = out
        else:
            r.held.text += out.text
            r.held.token_ids += out.token_ids
            r.held.logprobs += out.logprobs
            r.held.completion_tokens = out.completion_tokens

    def _finish(self, r: Request, reason: str, *, partial: StepOutput | None = None, release_slot: bool = True,
                error: str | None = None) -> None:  # fmt: skip
        """Emit the final output of `r` (flushing held-back text) and give its slot back. Never raises."""
        if r.finished:
            return
        r.finished = True
        out = partial or self._output(r, "", [], [])
        if r.held is not None:
            self._emit(r, out)
            out, r.held = r.held, None
        if error is None:
            try:
                out.text += r.stream.finish()
            except Exception as e:  # noqa: BLE001
                reason, error = "error", f"{type(e).__name__}: {e}"
        out.finished, out.finish_reason, out.error = True, reason, error
        with self._cv:
            if r in self._active:
                self._active.remove(r)
            if release_slot and r.slot >= 0:
                self._free_slots.append(r.slot)
                r.slot = -1
            self._cv.notify_all()
        try:
            r.on_output(out)
        except Exception as e:  # noqa: BLE001 - a consumer that went away must not take the scheduler down
            self.error = e
