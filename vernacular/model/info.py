"""Analytic model accounting: parameters (total / active, with and without embeddings, MTP apart), training FLOPs per
token, KV-cache bytes per token. Computed from the config alone, so the 671B preset is never instantiated.

Conventions (the ones DeepSeek's "671B total, 37B activated" uses):
- "total" and "active" are the main model (embeddings and lm_head included, MTP modules excluded); MTP is reported
  separately. For the 671B preset this gives total 671.03B and, counting the MTP layer with the embedding and head
  copies the released checkpoint stores, 684.5B (DeepSeek's "685B"). Active is 37.55B with every weight a token
  touches, 36.63B without the embedding lookup; DeepSeek's "37B" sits between the two.
- "active" counts the k routed experts a token is sent to, the shared experts, attention, norms and the router.
- FLOPs/token (training, forward + backward) = 6 * (active non-embedding params, lm_head included)
  + 6 * L * H * (d_qk + d_v) * T   (attention scores and weighted sum, full T x T as in PaLM/Chinchilla; this is the
  standard 6N + 12*L*H*Q*T with Q = (d_qk + d_v)/2 since MLA's key and value head dims differ).
  With MTP, each MTP depth adds its own block, eh_proj and lm_head FLOPs (`include_mtp`).
- KV cache: MLA caches kv_lora_rank + qk_rope_head_dim numbers per token per layer; an MHA with the same heads caches
  num_heads * (qk_head_dim + v_head_dim).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

from .config import ModelConfig


class ParamCount(NamedTuple):
    total: int
    active: int


class KVCacheBytes(NamedTuple):
    latent: int  # MLA: (kv_lora_rank + qk_rope_head_dim) * layers * dtype_bytes
    mha: int  # same heads as plain MHA: num_heads * (qk_head_dim + v_head_dim) * layers * dtype_bytes


@dataclass
class ParameterBreakdown:
    total: int  # main model, embeddings + lm_head included, MTP excluded
    active: int
    total_non_embedding: int  # without embed_tokens and lm_head
    active_non_embedding: int
    embedding: int  # embed_tokens (+ lm_head if untied)
    mtp_total: int  # MTP modules (embeddings/lm_head are shared, not counted again)
    mtp_active: int
    total_with_mtp: int
    active_compute: int  # active minus the embed_tokens lookup (a gather, not a matmul)
    total_release: int  # as DeepSeek's released checkpoint stores it: MTP layers carry their own embed/head copies


def _attention_params(c: ModelConfig) -> int:
    nh = c.num_attention_heads
    if c.q_lora_rank is None:
        q = c.hidden_size * nh * c.qk_head_dim
    else:
        q = c.hidden_size * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * nh * c.qk_head_dim
    kv = c.hidden_size * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank
    kv += c.kv_lora_rank * nh * (c.qk_nope_head_dim + c.v_head_dim)
    o = nh * c.v_head_dim * c.hidden_size
    return q + kv + o


def _layer_params(c: ModelConfig, layer_idx: int) -> ParamCount:
    norms = 2 * c.hidden_size
    attn = _attention_params(c)
    if not c.is_moe_layer(layer_idx):
        mlp = 3 * c.hidden_size * c.intermediate_size
        return ParamCount(norms + attn + mlp, norms + attn + mlp)
    expert = 3 * c.hidden_size * c.moe_intermediate_size
    router = c.n_routed_experts * c.hidden_size
    shared = c.n_shared_experts * expert
    total = norms + attn + router + shared + c.n_routed_experts * expert
    active = norms + attn + router + shared + c.num_experts_per_tok * expert
    return ParamCount(total, active)


def parameter_breakdown(config: ModelConfig) -> ParameterBreakdown:
    c = config
    embed = c.vocab_size * c.hidden_size
    head = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    layers = [_layer_params(c, i) for i in range(c.num_hidden_layers)]
    body_total = sum(p.total for p in layers) + c.hidden_size  # + final norm
    body_active = sum(p.active for p in layers) + c.hidden_size
    mtp_total = mtp_active = 0
    for k in range(1, c.num_nextn_predict_layers + 1):
        block = _layer_params(c, c.num_hidden_layers + k - 1)
        extra = 3 * c.hidden_size + 2 * c.hidden_size * c.hidden_size  # enorm, hnorm, norm, eh_proj
        mtp_total += block.total + extra
        mtp_active += block.active + extra
    return ParameterBreakdown(
        total=body_total + embed + head,
        active=body_active + embed + head,
        total_non_embedding=body_total,
        active_non_embedding=body_active,
        embedding=embed + head,
        mtp_total=mtp_total,
        mtp_active=mtp_active,
        total_with_mtp=body_total + embed + head + mtp_total,
        active_compute=body_active + c.vocab_size * c.hidden_size,
        total_release=body_total + embed + head + mtp_total + c.num_nextn_predict_layers * 2 * embed,
    )


def count_parameters(config: ModelConfig) -> ParamCount:
    """(total, active) of the main model, embeddings included, MTP excluded (DeepSeek's 671B / 37B convention)."""
    b = parameter_breakdown(config)
    return ParamCount(b.total, b.active)


def flops_per_token(config: ModelConfig, seq_len: int, include_mtp: bool = True) -> float:
    """Training FLOPs per token: 6 * active non-embedding params (+ lm_head) + 6 * L * H * (d_qk + d_v) * T."""
    c = config
    b = parameter_breakdown(c)
    lm_head = c.vocab_size * c.hidden_size
    attn = 6 * c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * seq_len
    flops = 6 * (b.active_non_embedding + lm_head) + c.num_hidden_layers * attn
    if include_mtp and c.num_nextn_predict_layers:
        flops += 6 * (b.mtp_active + c.num_nextn_predict_layers * lm_head) + c.num_nextn_predict_layers * attn
    return float(flops)


def kv_cache_bytes_per_token(config: ModelConfig, dtype_bytes: int = 2) -> KVCacheBytes:
    c = config
    latent = (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * dtype_bytes
    mha = c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * c.num_hidden_layers * dtype_bytes
    return KVCacheBytes(latent, mha)


def model_info(config: ModelConfig, seq_len: int | None = None, dtype_bytes: int = 2) -> dict:
    """Everything `vernacular model info` prints, as a JSON-able dict."""
    seq_len = seq_len or config.max_position_embeddings
    kv = kv_cache_bytes_per_token(config, dtype_bytes)
    return {
        "parameters": asdict(parameter_breakdown(config)),
        "seq_len": seq_len,
        "flops_per_token": {
            "train_with_mtp": flops_per_token(config, seq_len, include_mtp=True),
            "train_without_mtp": flops_per_token(config, seq_len, include_mtp=False),
        },
        "kv_cache_bytes_per_token": {
            "dtype_bytes": dtype_bytes,
            "latent": kv.latent,
            "mha": kv.mha,
            "mha_over_latent": kv.mha / kv.latent,
        },
    }
