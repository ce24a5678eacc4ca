"""The dense baseline of the CPU speedrun: a GPT-2-style decoder trained with AdamW and a cosine schedule.

It is the model the issue names as the thing to beat: learned absolute positions, pre-LayerNorm blocks, full
multi-head attention, a 4x GELU MLP, tied input/output embeddings (as GPT-2 and nanoGPT). Nothing from our recipe
(RMSNorm, RoPE, MLA, MoE, MTP, Muon, WSD) is in it. `size_to_match` picks the depth whose parameter count is nearest
a target (our model's active parameters), so both sides spend the same number of weights on each token.

    from gpt2_baseline import GPTConfig, GPT, size_to_match
    model = GPT(GPTConfig(vocab_size=8192, n_layer=6))
    logits, loss = model(x, targets=y)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256  # learned positions: the longest context the model can see
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0  # no dropout: a few minutes of training never overfits 9 MB of text
    bias: bool = True  # GPT-2 has biases in every Linear and LayerNorm

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's tanh GELU


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        self._init_weights(torch.Generator().manual_seed(seed))

    def _init_weights(self, generator: torch.Generator) -> None:
        """GPT-2's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer) so the stream does not grow."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if p.ndim == 1:  # LayerNorm gains start at 1, every bias at 0
                is_gain = name.rsplit(".", 2)[-2].startswith("ln_") and name.endswith(".weight")
                nn.init.ones_(p) if is_gain else nn.init.zeros_(p)
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=generator) * std)

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counted once), positions included: what a token's forward touches."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss


def count_parameters(config: GPTConfig) -> int:
    """Analytic parameter count (equals GPT(config).num_parameters()), so sizing needs no model instance."""
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    b = 1 if config.bias else 0
    block = (2 * d + 2 * d * b  # two LayerNorms
             + 3 * d * d + 3 * d * b + d * d + d * b  # attention
             + 8 * d * d + 4 * d * b + d * b)  # MLP
    return V * d + config.block_size * d + L * block + d + d * b


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token, the same 6N + attention convention as vernacular.model.info.flops_per_token."""
    d, L = config.n_embd, config.n_layer
    non_embedding = count_parameters(config) - config.vocab_size * d - config.block_size * d
    return float(6 * (non_embedding + config.vocab_size * d) + 6 * L * 2 * d * seq_len)


def size_to_match(target_params: int, vocab_size: int, block_size: int, n_embd: int = 256,
                  n_head: int = 4) -> GPTConfig:
    """The GPT-2 depth (at a fixed width) whose parameter count is nearest `target_params`."""
    best = None
    for n_layer in range(1, 65):
        cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        gap = abs(count_parameters(cfg) - target_params)
        if best is None or gap < best[0]:
            best = (gap, cfg)
    return best[1]


def configure_adamw(model: GPT, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """nanoGPT's grouping: matrices (and the embeddings) decay, biases and LayerNorm gains do not."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)
