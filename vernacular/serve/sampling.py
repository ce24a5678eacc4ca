"""Turning next-token logits into tokens and logprobs.

Sampling runs per request (each request owns a `torch.Generator`, so a seeded request gives the same text whether it
decodes alone or inside a busy batch), but the work is batched where it is cheap to do so: greedy rows take one argmax
over the whole batch, and log-softmax is computed only for rows that asked for logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20  # OpenAI's limit for top_logprobs / logprobs


@dataclass
class SamplingParams:
    """What one request wants from the sampler. `temperature == 0` means greedy decoding."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k >= 0: the sampled token's logprob plus the top k
    prompt_logprobs: int | None = None  # same for the prompt tokens (echo)
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not (self.temperature >= 0):  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not (0 <= k <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None, fallback: torch.Generator) -> torch.Generator:
    """A request's private RNG: seeded by the request, or from the engine's own seeded RNG when it gave none."""
    g = torch.Generator()
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=fallback).item())
    g.manual_seed(seed)
    return g


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of one row of logits [V] -> filtered logits [V]."""
    logits = logits / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already cover top_p; the first token always stays
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> torch.Tensor:
    """Pick one token per row of `logits` [B, V] (fp32) following each row's params. Returns LongTensor [B]."""
    out = torch.argmax(logits, dim=-1)
    for i, p in enumerate(params):
        if p.greedy:
            continue
        probs = filter_logits(logits[i], p.temperature, p.top_k, p.top_p).softmax(-1)
        out[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return out


@dataclass
class TokenLogprob:
    """The logprob of one chosen token, with the `top` most likely alternatives as (token_id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, num_top: list[int]) -> list[TokenLogprob]:
    """Logprobs of `chosen` [N] under the raw model distribution `logits` [N, V], plus each row's top-k.

    Raw (unfiltered, temperature 1) logprobs, as OpenAI and vLLM report them: they describe the model, not the sampler.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen_lp = logp.gather(-1, chosen.view(-1, 1)).squeeze(-1).tolist()
    k_max = max(num_top, default=0)
    top_vals = top_idx = None
    if k_max > 0:
        top_vals, top_idx = torch.topk(logp, min(k_max, logp.shape[-1]), dim=-1)
        top_vals, top_idx = top_vals.tolist(), top_idx.tolist()
    result = []
    for i, tok in enumerate(chosen.tolist()):
        k = num_top[i]
        top = list(zip(top_idx[i][:k], top_vals[i][:k])) if k > 0 else []
        result.append(TokenLogprob(tok, chosen_lp[i], top))
    return result
