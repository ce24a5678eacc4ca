"""Compute-optimal allocation and configs with DeepSeek-V3's proportions.

Scaling laws (C = M * D, training compute in FLOPs):
- `deepseek` (default): DeepSeek LLM (Bi et al. 2024, "DeepSeek LLM: Scaling Open-Source Language Models with
  Longtermism", Sec. 3.2): M_opt = 0.1715 * C^0.5243, D_opt = 5.8316 * C^0.4757, where M is the *non-embedding
  FLOPs per token* (attention included, vocabulary projection excluded) and D the tokens. Fitted on their
  multilingual-ish web data, in FLOPs/token rather than parameters, so attention cost is in the fit.
- `chinchilla`: Hoffmann et al. 2022, approach 1/2 rounded: D = 20 N, C = 6 N D, so N = sqrt(C / 120).

MoE adjustment: the compute of an MoE step is set by its *active* parameters, so the law is applied to the active
non-embedding FLOPs per token; the total then follows from the sparsity of DeepSeek-V3 (256 routed experts, top-8,
one shared). This is conservative on tokens: fine-grained MoE scaling (Ludziejewski et al. 2024, "Scaling Laws for
Fine-Grained Mixture of Experts") finds compute-optimal MoEs train on more tokens per active parameter than dense
models; `tokens_per_param` overrides the split (DeepSeek-V3 itself trained ~400 tokens per active parameter, far
beyond compute-optimal, for cheaper inference).
"""

from __future__ import annotations

import math

from vernacular.model.config import ModelConfig
from vernacular.model.info import VLLM_MLA_HEAD_SIZES, arch_spec, spec_flops_per_token  # noqa: F401 (re-exported)

LAWS = ("deepseek", "chinchilla")


def non_embedding_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """DeepSeek LLM's M for our config: training FLOPs/token without the vocabulary projection and without MTP."""
    spec = arch_spec(config)
    return spec_flops_per_token(spec, seq_len, include_mtp=False) - 6 * spec.lm_head


def optimal_allocation(compute: float, law: str = "deepseek", tokens_per_param: float | None = None,
                       seq_len: int = 4096) -> dict:
    """Compute-optimal (M FLOPs/token, D tokens) for `compute` FLOPs. Returns M, D and the law used.

    With `tokens_per_param` the split is D = tokens_per_param * N with M ~ 6 N (a fixed ratio instead of the fit)."""
    if compute <= 0:
        raise ValueError("compute budget must be positive")
    if tokens_per_param:
        n = math.sqrt(compute / (6 * tokens_per_param))
        return {"law": f"fixed ratio {tokens_per_param:g} tokens/param", "M": 6 * n, "D": tokens_per_param * n}
    if law == "deepseek":
        return {"law": "DeepSeek LLM (Bi et al. 2024)", "M": 0.1715 * compute ** 0.5243, "D": 5.8316 * compute ** 0.4757}
    if law == "chinchilla":
        n = math.sqrt(compute / 120)
        return {"law": "Chinchilla (Hoffmann et al. 2022), D = 20 N", "M": 6 * n, "D": 20 * n}
    raise ValueError(f"unknown scaling law {law!r}; choose from {LAWS}")


def _round(x: float, multiple: int) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def v3_proportions(hidden_size: int, max_position_embeddings: int = 4096) -> ModelConfig:
    """A config with DeepSeek-V3's proportions at `hidden_size` (V3: 7168 hidden, 61 layers, 128 heads of 128+64,
    MoE width 2048 = 0.286 h, dense width 18432 = 2.57 h, q_lora 1536 = 0.214 h, 256 experts top-8 in 8 groups,
    first 3 layers dense, one MTP layer). MLA keeps kv_lora_rank + qk_rope_head_dim in vLLM's accepted sizes:
    512 + 64 from hidden 2048 up, 256 + 64 below."""
    h = _round(hidden_size, 128)
    layers = max(4, round(h / (7168 / 61)))
    big = h >= 2048
    return ModelConfig(
        vocab_size=129280, hidden_size=h, intermediate_size=_round(h * 18432 / 7168, 64),
        moe_intermediate_size=_round(h * 2048 / 7168, 64), num_hidden_layers=layers,
        num_attention_heads=max(2, round(h / 56)), q_lora_rank=_round(h * 1536 / 7168, 64) if big else None,
        kv_lora_rank=512 if big else 256, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, first_k_dense_replace=min(3, layers - 1), max_position_embeddings=max_position_embeddings,
        num_nextn_predict_layers=1,
    )


def config_for_flops(target_m: float, seq_len: int = 4096) -> ModelConfig:
    """The V3-proportioned config whose non-embedding FLOPs/token is nearest `target_m` (log distance)."""
    best, best_err = None, float("inf")
    for h in range(256, 32768 + 1, 128):
        cfg = v3_proportions(h, max(seq_len, 4096))
        err = abs(math.log(non_embedding_flops_per_token(cfg, seq_len) / target_m))
        if err < best_err:
            best, best_err = cfg, err
    return best
