"""Multi-head Latent Attention (MLA, DeepSeek-V2/V3) with two execution paths.

Training / prefill-without-cache: the latent is expanded to per-head keys and values and fed to
`F.scaled_dot_product_attention` (causal). PyTorch's fused CPU/GPU kernels need q, k and v to share the last dimension,
so when `v_head_dim != qk_head_dim` we zero-pad to the larger one (exact: zero columns add nothing to q.k, and padded v
columns are sliced off) - about 5x faster on CPU than letting sdpa fall back to its math kernel.

Inference with `LatentKVCache`: only the normalised latent `c_kv` [kv_lora_rank] and the RoPE'd shared key `k_pe`
[qk_rope_head_dim] are cached per token, and `kv_b_proj` is absorbed into the query (scores against the latent) and
into the output (DeepSeek-V3 inference/model.py, attn_impl="absorb"). Each batch row has its own cache slot and start
position, which is what continuous batching needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import RMSNorm, apply_rope


class LatentKVCache:
    """Per-layer latent cache: `kv[l]` [num_slots, max_len, kv_lora_rank], `pe[l]` [num_slots, max_len, rope_dim].

    A slot is one sequence; the caller (the serving engine) owns slot allocation and each sequence's length, and
    passes `slots`/`start_pos` to the model. Stale entries past a sequence's length are never read (masked).
    """

    def __init__(
        self,
        config: ModelConfig,
        num_slots: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        if num_slots <= 0 or max_len <= 0:
            raise ValueError(f"LatentKVCache needs num_slots > 0 and max_len > 0, got {num_slots}, {max_len}")
        self.num_slots, self.max_len, self.dtype = num_slots, max_len, dtype
        self.num_layers = config.num_hidden_layers
        shape_kv = (num_slots, max_len, config.kv_lora_rank)
        shape_pe = (num_slots, max_len, config.qk_rope_head_dim)
        self.kv = [torch.zeros(shape_kv, dtype=dtype, device=device) for _ in range(self.num_layers)]
        self.pe = [torch.zeros(shape_pe, dtype=dtype, device=device) for _ in range(self.num_layers)]

    @property
    def device(self) -> torch.device:
        return self.kv[0].device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv + self.pe)

    def check(self, slots: torch.Tensor, start_pos: torch.Tensor, seq_len: int) -> None:
        """Clear errors instead of silent out-of-range writes."""
        if slots.dim() != 1 or start_pos.shape != slots.shape:
            raise ValueError(f"slots and start_pos must both be [batch], got {tuple(slots.shape)}, {tuple(start_pos.shape)}")
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= self.num_slots):
            raise ValueError(f"slot index out of range [0, {self.num_slots}): {slots.tolist()}")
        if len(set(slots.tolist())) != slots.numel():
            raise ValueError(f"each batch row needs its own cache slot, got {slots.tolist()}")
        if start_pos.numel() and (int(start_pos.min()) < 0 or int(start_pos.max()) + seq_len > self.max_len):
            raise ValueError(
                f"positions start_pos+{seq_len} exceed the cache length {self.max_len}: start_pos={start_pos.tolist()}"
            )

    def write(self, layer: int, slots: torch.Tensor, start_pos: torch.Tensor, kv: torch.Tensor, pe: torch.Tensor):
        """Store the T new tokens of row b at positions start_pos[b].. of slot slots[b]."""
        T = kv.shape[1]
        cols = start_pos[:, None] + torch.arange(T, device=start_pos.device)
        rows = slots[:, None].expand_as(cols)
        self.kv[layer][rows, cols] = kv.to(self.dtype)
        self.pe[layer][rows, cols] = pe.to(self.dtype)


class MLA(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.qk_head_dim = config.qk_head_dim
        self.v_head_dim = config.v_head_dim
        self.softmax_scale = config.softmax_scale
        H, D = config.hidden_size, self.n_heads * self.qk_head_dim
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(H, D, bias=False)
        else:
            self.q_a_proj = nn.Linear(H, self.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = nn.Linear(self.q_lora_rank, D, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kv_lora_rank + self.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, self.n_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_head_dim, H, bias=False)

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries [B,T,nh,nope], [B,T,nh,rope] (RoPE'd), normalised latent [B,T,R], RoPE'd shared key [B,T,rope]."""
        B, T, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(B, T, self.n_heads, self.qk_head_dim).split(
            [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1
        )
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        q_pe = apply_rope(q_pe, cos[:, :, None], sin[:, :, None])
        k_pe = apply_rope(k_pe, cos, sin)
        return q_nope, q_pe, latent, k_pe

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over the whole sequence (training path). cos/sin: [1 or B, T, rope]."""
        B, T, _ = x.shape
        q_nope, q_pe, latent, k_pe = self._project(x, cos, sin)
        kv = self.kv_b_proj(latent).view(B, T, self.n_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        d = max(self.qk_head_dim, self.v_head_dim)
        if self.qk_head_dim < d:
            q, k = F.pad(q, (0, d - self.qk_head_dim)), F.pad(k, (0, d - self.qk_head_dim))
        if self.v_head_dim < d:
            v = F.pad(v, (0, d - self.v_head_dim))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        out = out[..., : self.v_head_dim].transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim)
        return self.o_proj(out)

    def forward_cached(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LatentKVCache,
        slots: torch.Tensor,
        start_pos: torch.Tensor,
    ) -> torch.Tensor:
        """Absorbed attention against the latent cache; row b's new tokens sit at start_pos[b]..start_pos[b]+T-1."""
        B, T, _ = x.shape
        q_nope, q_pe, latent, k_pe = self._project(x, cos, sin)
        cache.write(self.layer_idx, slots, start_pos, latent, k_pe)
        end = int(start_pos.max()) + T
        kv_cache = cache.kv[self.layer_idx][slots, :end].to(x.dtype)  # [B, L, R]
        pe_cache = cache.pe[self.layer_idx][slots, :end].to(x.dtype)  # [B, L, rope]
        w = self.kv_b_proj.weight.view(self.n_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        q_latent = torch.einsum("bthd,hdc->bthc", q_nope, w[:, : self.qk_nope_head_dim])
        scores = torch.einsum("bthc,blc->bthl", q_latent, kv_cache) + torch.einsum("bthr,blr->bthl", q_pe, pe_cache)
        scores = scores * self.softmax_scale
        query_pos = start_pos[:, None] + torch.arange(T, device=x.device)  # [B, T]
        visible = torch.arange(end, device=x.device)[None, None, :] <= query_pos[:, :, None]  # [B, T, L]
        scores = scores.masked_fill(~visible[:, :, None, :], float("-inf"))
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
        out = torch.einsum("bthl,blc->bthc", probs, kv_cache)
        out = torch.einsum("bthc,hdc->bthd", out, w[:, self.qk_nope_head_dim :])
        return self.o_proj(out.reshape(B, T, self.n_heads * self.v_head_dim))
