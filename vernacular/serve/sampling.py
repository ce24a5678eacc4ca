"""Turning next-token logits into tokens and logprobs.

Sampling runs per request (each request owns a `torch.Generator`, so a seeded request gives the same text whether it
decodes alone or inside a busy batch), but the work is batched where it is cheap to do so: greedy rows take one argmax
over the whole batch, and log-softmax is computed only for rows that asked for logprobs.

Per-request logit processors run first, on each row of the batched step (`process_logits`): OpenAI's
`presence_penalty` / `frequency_penalty` (over the generated tokens), vLLM's / transformers' `repetition_penalty`
(over prompt and generated tokens), `logit_bias`, `min_tokens` (stop tokens masked until then) and a grammar mask
(structured outputs). Logprobs are those of this processed distribution (as OpenAI reports them with `logit_bias`),
before temperature and top-k / top-p.

Numerical safety (any accepted parameter, any logits): NaN logits count as -inf, +inf logits win outright, a
temperature below `SAMPLING_EPS` is greedy (as in vLLM; 1e-40 would otherwise scale logits to inf), and a row whose
filtered distribution is not a finite, positive probability vector falls back to its argmax instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20  # OpenAI's limit for top_logprobs / logprobs
SAMPLING_EPS = 1e-5  # temperatures below this are greedy (vLLM's _SAMPLING_EPS)
MAX_BIAS = 100.0  # OpenAI: logit_bias values lie in [-100, 100]


@dataclass
class SamplingParams:
    """What one request wants from the sampler. `temperature == 0` (or below SAMPLING_EPS) means greedy decoding."""

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
    presence_penalty: float = 0.0  # OpenAI: subtracted once from every token already generated, in [-2, 2]
    frequency_penalty: float = 0.0  # OpenAI: subtracted per occurrence in the generated tokens, in [-2, 2]
    repetition_penalty: float = 1.0  # vLLM / CTRL: logits of prompt+generated tokens divided (>0) or multiplied (<0)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, in [-100, 100]
    min_tokens: int = 0  # stop tokens (EOS, end of turn, stop_token_ids) are masked until this many were generated

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not (self.temperature >= 0) or self.temperature == float("inf"):  # also rejects NaN
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
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
        for name in ("presence_penalty", "frequency_penalty"):
            if not (-2.0 <= getattr(self, name) <= 2.0):
                raise ValueError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        if not (0 < self.repetition_penalty <= 2.0):  # NaN fails too
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if any(not (-MAX_BIAS <= v <= MAX_BIAS) for v in self.logit_bias.values()):
            raise ValueError(f"logit_bias values must be between -{MAX_BIAS:g} and {MAX_BIAS:g}")
        if not (0 <= self.min_tokens <= max(self.max_tokens, 0)):
            raise ValueError(f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def processes_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)  # fmt: skip


def make_generator(seed: int | None, fallback: torch.Generator) -> torch.Generator:
    """A request's private RNG: seeded by the request, or from the engine's own seeded RNG when it gave none."""
    g = torch.Generator()
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=fallback).item())
    g.manual_seed(seed % 2**64)
    return g


def process_logits(row: torch.Tensor, p: SamplingParams, prompt_ids: list[int], generated: list[int],
                   stop_ids: set[int], allowed: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Apply one request's logit processors to its row of next-token logits [V] (fp32, modified in place).

    Order as in vLLM: repetition penalty, then frequency/presence penalties, then logit_bias, then min_tokens and the
    grammar mask `allowed` (bool [V], True = the grammar allows the token), which no bias can undo. When the grammar
    allows nothing but stop tokens (the structure is complete), min_tokens yields to it.
    """
    vocab = row.shape[0]
    if p.repetition_penalty != 1.0:
        seen = torch.unique(torch.tensor(prompt_ids + generated, dtype=torch.long))
        seen = seen[seen < vocab]
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and generated:
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=vocab)[:vocab].to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    if p.logit_bias:
        ids = torch.tensor([t for t in p.logit_bias if 0 <= t < vocab], dtype=torch.long)
        row[ids] += torch.tensor([p.logit_bias[t] for t in ids.tolist()], dtype=row.dtype)
    if len(generated) < p.min_tokens and stop_ids:
        stops = torch.tensor(sorted(t for t in stop_ids if 0 <= t < vocab), dtype=torch.long)
        # a grammar that is complete allows only stop tokens: it ends the answer, min_tokens cannot outlast it
        if allowed is None or bool(allowed[:vocab].clone().index_fill_(0, stops, False).any()):
            row[stops] = float("-inf")
    if allowed is not None:
        row.masked_fill_(~allowed[:vocab], float("-inf"))
    return row


def sanitize_logits(logits: torch.Tensor) -> torch.Tensor:
    """NaN -> -inf; in a row with +inf entries those alone stay possible (as 0), the rest become -inf. Any shape."""
    logits = torch.nan_to_num(logits, nan=float("-inf"))
    pos = logits == float("inf")
    if pos.any():
        rows = pos.any(-1, keepdim=True)
        logits = torch.where(rows, torch.where(pos, 0.0, float("-inf")), logits)
    return logits


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of one row of logits [V] -> filtered logits [V]."""
    logits = logits / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already cover top_p; the first token always stays
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> torch.Tensor:
    """Pick one token per row of `logits` [B, V] (fp32, already processed) following each row's params.

    Returns LongTensor [B]. Never raises on odd numbers: see the module docstring."""
    logits = sanitize_logits(logits)
    out = torch.argmax(logits, dim=-1)
    for i, p in enumerate(params):
        if p.greedy:
            continue
        probs = filter_logits(logits[i], p.temperature, p.top_k, p.top_p).softmax(-1)
        total = probs.sum()
        if not bool(torch.isfinite(probs).all()) or not total > 0:
            continue  # the argmax of the (sanitized) row
        out[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return out


@dataclass
class TokenLogprob:
    """The logprob of one chosen token, with the `top` most likely alternatives as (token_id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, num_top: list[int]) -> list[TokenLogprob]:
    """Logprobs of `chosen` [N] under the distribution `logits` [N, V], plus each row's top-k.

    Temperature 1, no top-k/top-p: they describe the model (after logit processors), not the sampler, as OpenAI and
    vLLM report them. Masked tokens have logprob -inf; JSON bodies carry that as -9999.0 (OpenAI's floor)."""
    logp = torch.log_softmax(sanitize_logits(logits.float()), dim=-1)
    logp = torch.nan_to_num(logp, nan=-9999.0, neginf=-9999.0)
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
