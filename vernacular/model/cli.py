"""`vernacular model info`: what a preset costs before anyone allocates it (parameters, FLOPs, KV-cache)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="<command>", required=True)
    info = sub.add_parser("info", help="parameters, training FLOPs/token and KV-cache size of a model config")
    info.add_argument("--config", default="tiny", help="preset name or path to a .toml/.json model config")
    info.add_argument("--seq-len", type=int, default=None, help="sequence length for the attention FLOPs term "
                      "(default: max_position_embeddings)")
    info.add_argument("--dtype-bytes", type=int, default=2, help="bytes per cached number (2 = bf16)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub.add_parser("presets", help="list the built-in model presets")


def _fmt(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def main(args: argparse.Namespace) -> int:
    import sys

    from .config import ModelConfig
    from .info import model_info

    if args.model_command == "presets":
        print("\n".join(ModelConfig.presets()))
        return 0
    try:
        config = ModelConfig.load(args.config)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seq_len is not None and args.seq_len <= 0:
        print("error: --seq-len must be positive", file=sys.stderr)
        return 2
    info = model_info(config, args.seq_len, args.dtype_bytes)
    info["config"] = str(args.config)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    p, f, kv = info["parameters"], info["flops_per_token"], info["kv_cache_bytes_per_token"]
    lines = [
        f"model config: {args.config}",
        f"  layers {config.num_hidden_layers} (dense {min(config.first_k_dense_replace, config.num_hidden_layers)}), "
        f"hidden {config.hidden_size}, heads {config.num_attention_heads}, vocab {config.vocab_size}",
        f"  experts: {config.n_routed_experts} routed (top-{config.num_experts_per_tok}, {config.n_group} groups, "
        f"top-{config.topk_group} groups) + {config.n_shared_experts} shared; MTP depth {config.num_nextn_predict_layers}",
        "parameters (main model; MTP apart)",
        f"  total                    {_fmt(p['total']):>10}   ({p['total']:,})",
        f"  active per token         {_fmt(p['active']):>10}   ({p['active']:,})",
        f"  active w/o embed lookup  {_fmt(p['active_compute']):>10}",
        f"  total non-embedding      {_fmt(p['total_non_embedding']):>10}",
        f"  active non-embedding     {_fmt(p['active_non_embedding']):>10}",
        f"  embeddings (+lm_head)    {_fmt(p['embedding']):>10}",
        f"  MTP modules total/active {_fmt(p['mtp_total']):>10} / {_fmt(p['mtp_active'])}",
        f"  total with MTP           {_fmt(p['total_with_mtp']):>10}   (release layout, MTP with own embed/head: "
        f"{_fmt(p['total_release'])})",
        f"training FLOPs per token at seq_len {info['seq_len']} (6N + 6*L*H*(d_qk+d_v)*T)",
        f"  with MTP                 {_fmt(f['train_with_mtp']):>10}",
        f"  without MTP              {_fmt(f['train_without_mtp']):>10}",
        f"KV cache per token ({kv['dtype_bytes']} bytes/number, all layers)",
        f"  MLA latent               {kv['latent']:>10,} B",
        f"  MHA, same heads          {kv['mha']:>10,} B",
        f"  MHA / latent             {kv['mha_over_latent']:>10.1f}x",
        "vLLM: " + (f"MLA head size {info['vllm_mla']['head_size']} (kv_lora_rank + qk_rope_head_dim) is served by "
                    "vLLM's MLA kernels on GPU and CPU" if info["vllm_mla"]["advice"] is None
                    else info["vllm_mla"]["advice"]),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":  # `python -m vernacular.model.cli info --config tiny`
    import sys

    _parser = argparse.ArgumentParser(prog="vernacular model")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
