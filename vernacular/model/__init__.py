"""DeepSeek-V3-style MoE language model: MLA + DeepSeekMoE + multi-token prediction, with a latent KV cache.

    from vernacular.model import build_model
    model = build_model("tiny", seed=0)
    out = model(input_ids, labels=targets)   # out.loss, out.logits, out.main_loss, out.mtp_loss, out.balance_loss
"""

import importlib

# name -> submodule. Imported on first use, so that `vernacular model info` and the CLI's parser do not load torch.
_EXPORTS = {
    "LatentKVCache": "attention",
    "ModelConfig": "config",
    "count_parameters": "info",
    "flops_per_token": "info",
    "kv_cache_bytes_per_token": "info",
    "parameter_breakdown": "info",
    "ModelOutput": "transformer",
    "Transformer": "transformer",
    "build_model": "transformer",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
