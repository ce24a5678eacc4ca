"""DeepSeek-V3-style MoE language model: MLA + DeepSeekMoE + multi-token prediction, with a latent KV cache.

    from vernacular.model import build_model
    model = build_model("tiny", seed=0)
    out = model(input_ids, labels=targets)   # out.loss, out.logits, out.main_loss, out.mtp_loss, out.balance_loss
"""

from .attention import LatentKVCache
from .config import ModelConfig
from .info import count_parameters, flops_per_token, kv_cache_bytes_per_token, parameter_breakdown
from .transformer import ModelOutput, Transformer, build_model

__all__ = [
    "ModelConfig",
    "build_model",
    "Transformer",
    "ModelOutput",
    "LatentKVCache",
    "count_parameters",
    "parameter_breakdown",
    "flops_per_token",
    "kv_cache_bytes_per_token",
]
