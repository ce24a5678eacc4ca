"""Multi-head Latent Attention (MLA, DeepSeek-V2/V3) with two execution paths.

Training / prefill-without-cache: the latent is expanded to per-head keys and values and fed to
`F.scaled_dot_product_attention` (causal). PyTorch's fused CPU/GPU kernels need q, k and v to share the last dimension,
so when `v_head_dim != qk_head_dim` we zero-pad to the larger one (exact: zero columns add nothing to q.k, and padded v
columns are sliced off) - about 5x faster on CPU than letting sdpa fall back to its math kernel. On CPU, short
sequences instead take an explicit `baddbmm -> softmax (fp32) -> bmm` (`_explicit_attention_pays`): the CPU flash
kernel's tiling does not reach matmul speed there, while two batched GEMMs do even though they also compute the masked
half (fwd+bwd, 8x8 heads, one thread: T=256 fp32 56 vs 68 ms, bf16 21 vs 64 ms; T=512 bf16 36 vs 108 ms; flash wins
from T=512 fp32 / T=2048 bf16 on, and its memory is linear in T).

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
    """Per-layer latent cache: `kvpe[l]` [num_slots, max_len, kv_lora_rank + rope_dim], the normalised latent followed
    by the RoPE'd shared key, so one batched matmul scores a query against both; `kv[l]` / `pe[l]` are views of the two
    parts.

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
        self.rank = config.kv_lora_rank
        shape = (num_slots, max_len, config.kv_lora_rank + config.qk_rope_head_dim)
        self.kvpe = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.num_layers)]
        self.kv = [t[..., : self.rank] for t in self.kvpe]
        self.pe = [t[..., self.rank :] for t in self.kvpe]

    @property
    def device(self) -> torch.device:
        return self.kvpe[0].device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kvpe)

    def check(self, slots: torch.Tensor, start_pos: torch.Tensor, seq_len: int) -> None:
        """Clear errors instead of silent out-of-range writes."""
        self.step(slots, start_pos, seq_len)

    def step(self, slots: torch.Tensor, start_pos: torch.Tensor, seq_len: int) -> "CacheStep":
        """Validate one forward's cache addressing and derive everything the layers need from it, once per forward:
        the host reads the (small) slot/position lists a single time, instead of every layer syncing on them."""
        if slots.dim() != 1 or start_pos.shape != slots.shape:
            raise ValueError(f"slots and start_pos must both be [batch], got {tuple(slots.shape)}, {tuple(start_pos.shape)}")
        slot_list, pos_list = slots.tolist(), start_pos.tolist()
        if any(s < 0 or s >= self.num_slots for s in slot_list):
            raise ValueError(f"slot index out of range [0, {self.num_slots}): {slot_list}")
        if len(set(slot_list)) != len(slot_list):
            raise ValueError(f"each batch row needs its own cache slot, got {slot_list}")
        if any(p < 0 or p + seq_len > self.max_len for p in pos_list):
            raise ValueError(f"positions start_pos+{seq_len} exceed the cache length {self.max_len}: start_pos={pos_list}")
        return CacheStep(self, slots, start_pos, slot_list, pos_list, seq_len)

    def write(self, layer: int, slots: torch.Tensor, start_pos: torch.Tensor, kv: torch.Tensor, pe: torch.Tensor):
        """Store the T new tokens of row b at positions start_pos[b].. of slot slots[b]."""
        self.step(slots, start_pos, kv.shape[1]).write(layer, kv, pe)


class CacheStep:
    """One forward's view of a `LatentKVCache`: where the T new tokens of each row go, which cached positions the
    rows read, and the attention mask. Built once per forward by `LatentKVCache.step`, shared by every layer.

    Reads are a slice (no copy) when the slots form a contiguous range, as they do for a single sequence; the mask is
    None when every row sees every position it reads (one new token per row, all rows at the same length).
    """

    def __init__(self, cache: LatentKVCache, slots: torch.Tensor, start_pos: torch.Tensor, slot_list: list[int],
                 pos_list: list[int], seq_len: int):  # fmt: skip
        self.cache, self.seq_len = cache, seq_len
        B, T = len(slot_list), seq_len
        self.end = max(pos_list) + T if pos_list else T
        first = slot_list[0] if slot_list else 0
        self.slot_range = (first, first + B) if slot_list == list(range(first, first + B)) else None
        self.single = (slot_list[0], pos_list[0]) if B == 1 else None
        device = cache.device
        if self.single is None:
            self.cols = start_pos.to(device)[:, None] + torch.arange(T, device=device)  # [B, T]
            self.rows = slots.to(device)[:, None].expand_as(self.cols)
        self.slots = slots.to(device)
        if T == 1 and min(pos_list, default=0) + 1 == self.end:
            self.mask = None
        else:
            query_pos = start_pos.to(device)[:, None] + torch.arange(T, device=device)  # [B, T]
            visible = torch.arange(self.end, device=device)[None, None, :] <= query_pos[:, :, None]  # [B, T, L]
            self.mask = torch.zeros(visible.shape, dtype=torch.float32, device=device)
            self.mask = self.mask.masked_fill_(~visible, float("-inf"))[:, :, None, :]  # [B, T, 1, L]

    def write(self, layer: int, kv: torch.Tensor, pe: torch.Tensor) -> None:
        """Store the new latents [B, T, R] and RoPE'd keys [B, T, rope] of this layer."""
        c = self.cache
        if self.single is not None:
            slot, pos = self.single
            c.kv[layer][slot, pos : pos + self.seq_len] = kv[0]
            c.pe[layer][slot, pos : pos + self.seq_len] = pe[0]
        else:
            c.kv[layer][self.rows, self.cols] = kv.to(c.dtype)
            c.pe[layer][self.rows, self.cols] = pe.to(c.dtype)

    def read(self, layer: int) -> torch.Tensor:
        """[B, end, R + rope]: latent and RoPE key of every position the rows may attend to."""
        t = self.cache.kvpe[layer]
        if self.slot_range is not None:
            return t[self.slot_range[0] : self.slot_range[1], : self.end]
        return t[self.slots, : self.end]


def _explicit_attention_pays(q: torch.Tensor) -> bool:
    """CPU and a short sequence: T * element size <= 1 KiB (T <= 256 in fp32, <= 512 in bf16); see the module doc.
    Elsewhere (CUDA, long sequences) the fused sdpa kernels are faster and keep memory linear in T."""
    if q.device.type != "cpu":
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return q.shape[-2] * dtype.itemsize <= 1024


def document_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, T, T] (True = may attend) of packed documents: a document starts wherever
    `position_ids` [B, T] restarts at 0 (the packing convention of transformers' DataCollatorWithFlattening), and each
    token sees only the earlier tokens of its own document."""
    doc = (position_ids == 0).cumsum(dim=1)  # [B, T]: document number of each token
    T = position_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril_()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                visible: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention over the whole sequence (training path). cos/sin: [1 or B, T, rope].

        `visible` [B, 1, T, T] bool (True = may attend), e.g. the block-diagonal causal mask of packed documents
        (`document_mask`); None = plain causal."""
        B, T, _ = x.shape
        q_nope, q_pe, latent, k_pe = self._project(x, cos, sin)
        kv = self.kv_b_proj(latent).view(B, T, self.n_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        if _explicit_attention_pays(q):
            out = self._explicit_attention(q, k, v, visible)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim))
        d = max(self.qk_head_dim, self.v_head_dim)
        if self.qk_head_dim < d:
            q, k = F.pad(q, (0, d - self.qk_head_dim)), F.pad(k, (0, d - self.qk_head_dim))
        if self.v_head_dim < d:
            v = F.pad(v, (0, d - self.v_head_dim))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, is_causal=visible is None,
                                             scale=self.softmax_scale)
        out = out[..., : self.v_head_dim].transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim)
        return self.o_proj(out)

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            visible: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T * scale + mask) v as two batched GEMMs. q, k [B, nh, T, d_qk], v [B, nh, T, d_v]; the mask
        is causal, or `visible` [B, 1, T, T] (True = may attend) when given.

        The softmax takes the scores in their own dtype: the CPU kernel accumulates bf16/fp16 in fp32 and rounds once,
        the same values as an fp32 softmax cast back, without a [B*nh, T, T] fp32 round trip (attention fwd+bwd
        43 -> 24 ms at 8x256 under bf16 autocast)."""
        B, nh, T, _ = q.shape
        if visible is None:
            mask = torch.full((T, T), float("-inf"), device=q.device, dtype=q.dtype).triu_(1)
        else:
            mask = torch.zeros(visible.shape, device=q.device, dtype=q.dtype).masked_fill_(~visible, float("-inf"))
            mask = mask.expand(B, nh, T, T).reshape(B * nh, T, T)
        scores = torch.baddbmm(mask, q.reshape(B * nh, T, -1), k.reshape(B * nh, T, -1).transpose(1, 2),
                               alpha=self.softmax_scale)  # fmt: skip
        probs = scores.softmax(dim=-1)
        return torch.bmm(probs, v.reshape(B * nh, T, -1)).view(B, nh, T, -1)

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: CacheStep) -> torch.Tensor:
        """Absorbed attention against the latent cache; row b's new tokens sit at start_pos[b]..start_pos[b]+T-1.

        Per head, W_UK folds into the query (scores against the latent) and W_UV into the output; both are views of
        kv_b_proj.weight multiplied with `bmm`, so nothing is re-derived or copied per step. Query rows are (token,
        head) pairs, so one bmm per batch row scores all heads against [latent | rope key] at once."""
        B, T, _ = x.shape
        H, R, nope = self.n_heads, self.kv_lora_rank, self.qk_nope_head_dim
        q_nope, q_pe, latent, k_pe = self._project(x, cos, sin)
        step.write(self.layer_idx, latent, k_pe)
        cached = step.read(self.layer_idx).to(x.dtype)  # [B, L, R + rope]
        w = self.kv_b_proj.weight.view(H, nope + self.v_head_dim, R)
        q_latent = torch.bmm(q_nope.reshape(B * T, H, nope).transpose(0, 1), w[:, :nope])  # [H, B*T, R]
        q = torch.cat([q_latent.transpose(0, 1), q_pe.reshape(B * T, H, -1)], dim=-1).view(B, T * H, -1)
        scores = torch.bmm(q, cached.transpose(1, 2)).mul_(self.softmax_scale)  # [B, T*H, L]
        if step.mask is not None:
            scores.view(B, T, H, -1).add_(step.mask)
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
        out = torch.bmm(probs, cached[..., :R])  # [B, T*H, R]
        out = torch.bmm(out.view(B * T, H, R).transpose(0, 1), w[:, nope:].transpose(1, 2))  # [H, B*T, v]
        return self.o_proj(out.transpose(0, 1).reshape(B, T, H * self.v_head_dim))
