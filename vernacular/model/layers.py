"""Small building blocks shared by attention, MoE and the trunk: RMSNorm, (YaRN) rotary embedding, SwiGLU MLP.

Their numerics follow transformers' DeepseekV3 exactly (RMSNorm in fp32 then cast back before the weight; RoPE angles
computed in fp32 from integer positions; the "rotate_half" layout), so an exported checkpoint gives the same logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, yarn_mscale


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rope sub-dimension and the cos/sin scale (YaRN "attention_factor").

    YaRN (as DeepSeek-V3 and HF's `_compute_yarn_parameters`): low-frequency dims are interpolated by `factor`,
    high-frequency dims kept, with a linear ramp between the dims that rotate beta_slow..beta_fast times over the
    original context.
    """
    dim, base = config.qk_rope_head_dim, config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    yarn = config.yarn
    if yarn is None:
        return 1.0 / pos_freqs, 1.0
    factor = float(yarn["factor"])
    orig = yarn["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(yarn["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(yarn["beta_slow"])), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    mscale, mscale_all_dim = float(yarn["mscale"]), float(yarn["mscale_all_dim"])
    if mscale and mscale_all_dim:
        attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """cos/sin for arbitrary integer positions ([T] or [B, T]); computed on the fly, so rows may start anywhere."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_factor).to(dtype), (emb.sin() * self.attention_factor).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, D] with cos/sin broadcastable to it (non-interleaved, first half / second half)."""
    return x * cos + rotate_half(x) * sin


class MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers and the shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
