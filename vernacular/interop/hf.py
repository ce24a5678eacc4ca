"""Hugging Face transformers round trip: our checkpoints <-> a `DeepseekV3ForCausalLM` folder.

Our module names already mirror transformers' DeepseekV3, so the mapping is a rename-free copy except for three things:

* routed experts: we keep them stacked for grouped matmul; the folder stores them per expert
  (`mlp.experts.{e}.{gate,up,down}_proj.weight`), as DeepSeek's own release does and as transformers' conversion
  mapping ("qwen2_moe" pattern) expects before it fuses them into its own stacked `gate_up_proj` / `down_proj`;
* MTP modules: ours are `mtp.{k}.{enorm,hnorm,eh_proj,block.*,norm}`; DeepSeek's release appends them as extra decoder
  layers `model.layers.{num_hidden_layers + k}.{enorm,hnorm,eh_proj,shared_head.norm,<block params>}` (plus copies of
  the shared `embed_tokens` / `shared_head.head`). transformers' main model ignores them; its `MtpModel` (speculative
  decoding) and vLLM read them;
* RoPE layout: we rotate halves (`rotate_half`); DeepSeek's release uses the interleaved layout
  (`rope_interleave: true`), and so does our export: the RoPE output rows of the query and shared-key projections (main
  and MTP layers) are permuted from halves to interleaved pairs, which leaves q.k (hence the logits) unchanged. vLLM's
  and llama.cpp's DeepSeek code always apply the interleaved layout (vLLM ignores `rope_interleave`), so only this
  layout is served correctly everywhere. Import accepts both layouts and permutes interleaved rows back to halves.

Everything goes through safetensors and JSON: no pickles anywhere.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vernacular.model import ModelConfig, Transformer, build_model
from vernacular.run import RunDir, atomic_write_bytes, read_json, write_json

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Special tokens of vernacular.tokenizer (BOS, EOS, end of a chat turn); looked up by string so export works on any
# tokenizer.json, including ones that do not have them.
BOS_TOKENS = ("<|begin_of_text|>", "<s>", "<|bos|>")
EOS_TOKENS = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<|eos|>")
TURN_END_TOKENS = ("<|end|>",)


class InteropError(ValueError):
    """A folder or checkpoint that cannot be converted; the message says what is wrong and where."""


# --------------------------------------------------------------------------------------------------------- config


def config_to_hf(
    config: ModelConfig,
    *,
    dtype: str = "float32",
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """A `config.json` that transformers 5.x reads as DeepseekV3Config (and older readers via `rope_scaling`)."""
    c = config
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(c.rope_theta)}
    if c.rope_scaling:
        # YaRN with DeepSeek's defaults filled in, so every reader uses the same mscale / beta values as we do.
        scaling = {k: v for k, v in (c.yarn or c.rope_scaling).items() if k not in ("type", "rope_type")}
        rope = {"rope_type": "yarn", "rope_theta": float(c.rope_theta), **scaling}
    hf: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "moe_intermediate_size": c.moe_intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_attention_heads,  # MLA: every head reads the shared latent
        "n_shared_experts": c.n_shared_experts,
        "n_routed_experts": c.n_routed_experts,
        "routed_scaling_factor": float(c.routed_scaling_factor),
        "kv_lora_rank": c.kv_lora_rank,
        "q_lora_rank": c.q_lora_rank,
        "qk_rope_head_dim": c.qk_rope_head_dim,
        "qk_nope_head_dim": c.qk_nope_head_dim,
        "v_head_dim": c.v_head_dim,
        "n_group": c.n_group,
        "topk_group": c.topk_group,
        "num_experts_per_tok": c.num_experts_per_tok,
        "first_k_dense_replace": c.first_k_dense_replace,
        "norm_topk_prob": bool(c.norm_topk_prob),
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "initializer_range": float(c.initializer_range),
        "rms_norm_eps": float(c.rms_norm_eps),
        "tie_word_embeddings": bool(c.tie_word_embeddings),
        "rope_parameters": rope,
        "rope_interleave": True,  # DeepSeek's layout: `to_hf_state_dict` permutes the RoPE rows to it
        "attention_bias": False,
        "attention_dropout": 0.0,
        "num_nextn_predict_layers": c.num_nextn_predict_layers,
        # DeepSeek-V3's own keys, read by vLLM/SGLang: sigmoid scores, bias-corrected group-limited top-k.
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if c.rope_scaling:
        hf["rope_scaling"] = {"type": "yarn", **{k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")}}
        hf["rope_theta"] = float(c.rope_theta)
    return hf


def is_deepseek_v3(hf: dict[str, Any]) -> bool:
    """Whether a `config.json` describes a DeepseekV3ForCausalLM, whatever its `model_type` (DeepSeek-V3/R1 say
    `deepseek_v3`, Kimi K2 says `kimi_k2` with the same architecture)."""
    return hf.get("model_type") == "deepseek_v3" or "DeepseekV3ForCausalLM" in (hf.get("architectures") or [])


def fp8_block_size(hf: dict[str, Any]) -> tuple[int, int] | None:
    """The FP8 block size of a block-quantized release (DeepSeek-V3's `quantization_config`: quant_method "fp8", fmt
    "e4m3", weight_block_size [128, 128]); None for an unquantized folder. Other quantizations raise InteropError."""
    q = hf.get("quantization_config")
    if not q:
        return None
    method, fmt, block = q.get("quant_method"), q.get("fmt", "e4m3"), q.get("weight_block_size")
    if method != "fp8" or fmt != "e4m3" or not (isinstance(block, list) and len(block) == 2):
        raise InteropError(
            f"quantization_config {q} is not supported: Vernacular reads DeepSeek's block-wise FP8 "
            "(quant_method fp8, fmt e4m3, weight_block_size [r, c]); dequantize other formats first"
        )
    return int(block[0]), int(block[1])


def config_from_hf(hf: dict[str, Any]) -> tuple[ModelConfig, bool]:
    """Our ModelConfig from a DeepseekV3 `config.json` (transformers 5.x, DeepSeek's release or any folder of the
    `DeepseekV3ForCausalLM` architecture, e.g. Kimi K2's `kimi_k2`), plus rope_interleave."""
    if not (is_deepseek_v3(hf) or hf.get("model_type") is None):
        raise InteropError(
            f"model_type {hf.get('model_type')!r} with architectures {hf.get('architectures')} is not "
            "DeepseekV3ForCausalLM"
        )
    fp8_block_size(hf)  # refuses quantizations other than DeepSeek's FP8 early, before reading weights
    checks = {
        "hidden_act": ("silu",),
        "scoring_func": ("sigmoid",),
        "topk_method": ("noaux_tc",),  # DeepSeek-V2's "greedy"/"group_limited_greedy" route differently
        "attention_bias": (False,),
    }
    for key, allowed in checks.items():
        if key in hf and hf[key] not in allowed:
            raise InteropError(f"{key}={hf[key]!r} is not supported (Vernacular implements {allowed[0]!r})")
    heads = hf["num_attention_heads"]
    if hf.get("num_key_value_heads") not in (None, heads):
        raise InteropError(f"num_key_value_heads={hf['num_key_value_heads']} != num_attention_heads={heads}: not MLA")

    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", legacy.get("type", legacy.get("rope_type", "default"))))
    rope_scaling = None
    if kind == "yarn":
        source = {**legacy, **rope}
        keys = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
        rope_scaling = {"type": "yarn", **{k: source[k] for k in keys if source.get(k) is not None}}
    elif kind != "default":
        raise InteropError(f"rope type {kind!r} is not supported (Vernacular implements default RoPE and YaRN)")

    n_mtp = hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 0)) or 0
    d = {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "moe_intermediate_size": hf["moe_intermediate_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "q_lora_rank": hf.get("q_lora_rank"),
        "kv_lora_rank": hf["kv_lora_rank"],
        "qk_nope_head_dim": hf["qk_nope_head_dim"],
        "qk_rope_head_dim": hf["qk_rope_head_dim"],
        "v_head_dim": hf["v_head_dim"],
        "n_routed_experts": hf["n_routed_experts"],
        "n_shared_experts": hf.get("n_shared_experts") or 0,
        "num_experts_per_tok": hf["num_experts_per_tok"],
        "n_group": hf.get("n_group") or 1,
        "topk_group": hf.get("topk_group") or 1,
        "norm_topk_prob": bool(hf.get("norm_topk_prob", True)),
        "routed_scaling_factor": float(hf.get("routed_scaling_factor", 1.0)),
        "first_k_dense_replace": hf.get("first_k_dense_replace") or 0,
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(rope_theta),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": hf["max_position_embeddings"],
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "num_nextn_predict_layers": int(n_mtp),
        "initializer_range": float(hf.get("initializer_range", 0.02)),
    }
    try:
        config = ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise InteropError(f"config.json does not describe a valid model: {e}") from e
    return config, bool(hf.get("rope_interleave", True))


# ------------------------------------------------------------------------------------------------------ RoPE layout


def interleaved_to_half(d: int) -> torch.Tensor:
    """Row order that turns interleaved RoPE pairs (x0,x1),(x2,x3).. into halves (x0,x2,..,x1,x3,..)."""
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def half_to_interleaved(d: int) -> torch.Tensor:
    """Row order that turns halves (x0,x2,..,x1,x3,..) into interleaved pairs: the inverse of `interleaved_to_half`."""
    return torch.argsort(interleaved_to_half(d))


def permute_rope_rows(state: dict[str, torch.Tensor], config: ModelConfig, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reorder the RoPE output rows of every query and shared-key projection (main layers and MTP blocks)."""
    c = config
    nope, rope, head = c.qk_nope_head_dim, c.qk_rope_head_dim, c.qk_nope_head_dim + c.qk_rope_head_dim
    q_rows = torch.arange(c.num_attention_heads * head).view(c.num_attention_heads, head)
    q_rows[:, nope:] = q_rows[:, nope:][:, perm]
    kv_rows = torch.arange(c.kv_lora_rank + rope)
    kv_rows[c.kv_lora_rank :] = kv_rows[c.kv_lora_rank :][perm]
    out = dict(state)
    for key, w in state.items():
        if key.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
            out[key] = w[q_rows.flatten()].contiguous()
        elif key.endswith("self_attn.kv_a_proj_with_mqa.weight"):
            out[key] = w[kv_rows].contiguous()
    return out


# ---------------------------------------------------------------------------------------------------------- weights

_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_HF_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_MTP = re.compile(r"^mtp\.(\d+)\.(.*)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def _mtp_to_hf(key: str, num_layers: int) -> str:
    m = _MTP.match(key)
    if not m:
        return key
    k, rest = int(m.group(1)), m.group(2)
    if rest.startswith("block."):
        rest = rest[len("block.") :]
    elif rest.startswith("norm."):
        rest = "shared_head." + rest
    return f"model.layers.{num_layers + k}.{rest}"


def _hf_to_mtp(key: str, num_layers: int) -> str:
    m = _HF_LAYER.match(key)
    if not m or int(m.group(1)) < num_layers:
        return key
    k, rest = int(m.group(1)) - num_layers, m.group(2)
    if rest.split(".")[0] in ("enorm", "hnorm", "eh_proj"):
        return f"mtp.{k}.{rest}"
    if rest.startswith("shared_head.norm."):
        return f"mtp.{k}.{rest[len('shared_head.'):]}"
    return f"mtp.{k}.block.{rest}"


def to_hf_state_dict(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' names, in DeepSeek's release layout: experts split per expert, MTP as extra
    layers, RoPE rows interleaved (`rope_interleave: true`), router bias fp32."""
    config = model.config
    L = config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        t = t.detach()
        m = _EXPERTS.match(key)
        if m:
            prefix = _mtp_to_hf(m.group(1), L)
            for name, per_expert in _split_experts(m.group(2), t, config).items():
                for e, w in enumerate(per_expert):
                    out[f"{prefix}.{e}.{name}.weight"] = w
            continue
        out[_mtp_to_hf(key, L)] = t
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    else:
        # DeepSeek's release repeats the shared embedding and head inside each MTP layer; vLLM's MTP loader reads them.
        for k in range(config.num_nextn_predict_layers):
            out[f"model.layers.{L + k}.embed_tokens.weight"] = out["model.embed_tokens.weight"]
            out[f"model.layers.{L + k}.shared_head.head.weight"] = out["lm_head.weight"]
    out = permute_rope_rows(out, config, half_to_interleaved(config.qk_rope_head_dim))
    result = {}
    for key, t in out.items():
        if key.endswith("e_score_correction_bias"):
            t = t.float()
        elif dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        result[key] = t.contiguous().clone()  # safetensors refuses shared storage
    return result


def from_hf_state_dict(
    hf_state: dict[str, torch.Tensor], config: ModelConfig, rope_interleave: bool = False
) -> dict[str, torch.Tensor]:
    """transformers/DeepSeek names -> ours; per-expert weights are stacked back, interleaved RoPE rows permuted."""
    L = config.num_hidden_layers
    if rope_interleave:
        hf_state = permute_rope_rows(hf_state, config, interleaved_to_half(config.qk_rope_head_dim))
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, t in hf_state.items():
        m = _HF_EXPERT.match(key)
        if m:
            experts.setdefault(_hf_to_mtp(m.group(1), L), {}).setdefault(m.group(3), {})[int(m.group(2))] = t
            continue
        m = _HF_LAYER.match(key)
        if m and int(m.group(1)) >= L and m.group(2) in ("embed_tokens.weight", "shared_head.head.weight"):
            continue  # copies of the shared embedding / head (DeepSeek's layout); ours shares the main ones
        ours = _hf_to_mtp(key, L)
        if ours == "model.rotary_emb.inv_freq" or ours.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config
        out[ours] = t
    for prefix, parts in experts.items():
        n = config.n_routed_experts
        for name in ("gate_proj", "up_proj", "down_proj"):
            found = parts.get(name, {})
            missing = sorted(set(range(n)) - set(found))
            extra = sorted(set(found) - set(range(n)))
            if missing or extra:
                raise InteropError(
                    f"{_mtp_to_hf(prefix, L)}: expected {name} for experts 0..{n - 1}; "
                    f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}"
                )
        stacked = _stack_experts({k: [parts[k][e] for e in range(n)] for k in parts}, config)
        for name, t in stacked.items():
            out[f"{prefix}.{name}"] = t
    return out


def _split_experts(name: str, stacked: torch.Tensor, config: ModelConfig) -> dict[str, list[torch.Tensor]]:
    """One of our stacked expert tensors -> per-expert nn.Linear weights [out, in].

    Layout (vernacular.model.moe.Experts): gate_up_proj [E, H, 2*I] with gate in [..., :I] and up in [..., I:];
    down_proj [E, I, H]; both multiply as x @ W.
    """
    I = config.moe_intermediate_size
    if name == "gate_up_proj":
        w = stacked.transpose(1, 2)  # [E, 2I, H]
        return {"gate_proj": list(w[:, :I].unbind(0)), "up_proj": list(w[:, I:].unbind(0))}
    return {"down_proj": list(stacked.transpose(1, 2).unbind(0))}  # [E, H, I]


def _stack_experts(parts: dict[str, list[torch.Tensor]], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of `_split_experts`."""
    gate, up, down = torch.stack(parts["gate_proj"]), torch.stack(parts["up_proj"]), torch.stack(parts["down_proj"])
    return {
        "gate_up_proj": torch.cat([gate, up], dim=1).transpose(1, 2).contiguous(),
        "down_proj": down.transpose(1, 2).contiguous(),
    }


# ------------------------------------------------------------------------------------------------------------ files


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """A block-quantized FP8 weight [out, in] times its per-block `weight_scale_inv` [ceil(out/r), ceil(in/c)]:
    w[i, j] * scale_inv[i // r, j // c], in `dtype` (DeepSeek-V3 inference/kernel.py `weight_dequant`; the last
    blocks of a dimension that is not a multiple of the block are partial)."""
    r, c = block
    rows, cols = weight.shape
    want = (-(-rows // r), -(-cols // c))
    if tuple(scale_inv.shape) != want:
        raise InteropError(f"weight_scale_inv of shape {tuple(scale_inv.shape)} for a {rows}x{cols} weight in "
                           f"{r}x{c} blocks: expected {want}")  # fmt: skip
    scale = scale_inv.float().repeat_interleave(r, 0)[:rows].repeat_interleave(c, 1)[:, :cols]
    return (weight.float() * scale).to(dtype)


def read_safetensors(path: Path, fp8_block: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file or of a sharded folder (`model.safetensors.index.json`).

    With `fp8_block` (from `fp8_block_size(config)`), FP8 weights are dequantized to fp32 with their
    `<name>_scale_inv` block scales, tensor by tensor as they are read; without it, FP8 tensors raise InteropError."""
    path = Path(path)
    if path.is_dir():
        index = path / HF_INDEX
        if index.exists():
            try:
                weight_map = read_json(index)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InteropError(f"{index} is not a valid safetensors index: {e}") from e
            files = sorted({path / f for f in weight_map.values()})
        elif (path / HF_WEIGHTS).exists():
            files = [path / HF_WEIGHTS]
        else:
            raise InteropError(f"{path} holds neither {HF_WEIGHTS} nor {HF_INDEX}")
    else:
        files = [path]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.exists():
            raise InteropError(f"weights file {file} is missing")
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
                    if fp8_block is not None:
                        _dequantize_ready(tensors, key, fp8_block)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise InteropError(
                f"{file} is not a readable safetensors file (corrupt or truncated? {file.stat().st_size} bytes): {e}"
            ) from e
    fp8 = [k for k, t in tensors.items() if k.endswith("weight_scale_inv") or t.dtype in _FP8_DTYPES]
    if fp8 and fp8_block is None:
        raise InteropError(
            f"{path} holds FP8-quantized weights (e.g. {fp8[0]}) but its config.json has no FP8 "
            "quantization_config (quant_method fp8, weight_block_size)"
        )
    if fp8:
        raise InteropError(f"{path}: FP8 weights without their weight_scale_inv (or the reverse): {fp8[:4]}")
    return tensors


def _dequantize_ready(tensors: dict[str, torch.Tensor], key: str, block: tuple[int, int]) -> None:
    """Once an FP8 weight and its scale have both been read, replace them by the dequantized weight."""
    weight_key = key.removesuffix("_scale_inv")
    scale_key = weight_key + "_scale_inv"
    if weight_key in tensors and scale_key in tensors and tensors[weight_key].dtype in _FP8_DTYPES:
        tensors[weight_key] = dequantize_fp8(tensors[weight_key], tensors.pop(scale_key), block)


_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _load_into(config: ModelConfig, state: dict[str, torch.Tensor], source: Path, hf_names: bool) -> Transformer:
    """Validate names and shapes against the config (clear errors, in the file's own naming), then load."""
    model = build_model(config)
    expected = model.state_dict()
    name = (lambda k: _mtp_to_hf(k, config.num_hidden_layers)) if hf_names else (lambda k: k)
    if config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{name(k)}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {', '.join(name(k) for k in missing[:6])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {', '.join(name(k) for k in unexpected[:6])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {'; '.join(wrong[:6])}")
    if problems:
        raise InteropError(f"{source} does not match its config:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(state[key].to(param.dtype))
    return model.eval()


def _special_ids(tokenizer_dir: Path | None) -> tuple[int | None, list[int] | None, int | None]:
    """(bos, eos list, pad) ids from a tokenizer.json; the end-of-turn token also stops generation."""
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").exists():
        return None, None, None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    cfg_path = Path(tokenizer_dir) / "tokenizer_config.json"
    cfg = read_json(cfg_path) if cfg_path.exists() else {}

    def find(named: Any, fallbacks: tuple[str, ...]) -> int | None:
        if isinstance(named, dict):
            named = named.get("content")
        for s in ([named] if named else []) + list(fallbacks):
            i = tok.token_to_id(s)
            if i is not None:
                return i
        return None

    bos = find(cfg.get("bos_token"), BOS_TOKENS)
    eos = [i for i in (find(cfg.get("eos_token"), EOS_TOKENS), find(None, TURN_END_TOKENS)) if i is not None]
    pad = find(cfg.get("pad_token"), ("<|pad|>", "<pad>"))
    return bos, (eos or None), pad


def _model_card(config: ModelConfig, n_params: int) -> str:
    c = config
    mtp = f"{c.num_nextn_predict_layers} MTP module(s) stored as `model.layers.{c.num_hidden_layers}+`" if c.num_nextn_predict_layers else "no MTP modules"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [vernacular, deepseek_v3, moe, mla]
---
# Vernacular model (DeepSeek-V3 architecture)

Trained with [Vernacular](https://github.com/) and exported by `vernacular export hf`.

- {n_params / 1e6:.1f} M parameters; {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} MLA heads
  (kv_lora_rank {c.kv_lora_rank}, q_lora_rank {c.q_lora_rank}), {c.n_routed_experts} routed experts top-{c.num_experts_per_tok}
  + {c.n_shared_experts} shared, first {c.first_k_dense_replace} layer(s) dense, vocabulary {c.vocab_size}; {mtp}.
- RoPE rows in DeepSeek's interleaved layout (`rope_interleave: true`), as vLLM and llama.cpp expect.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH")
tokenizer = AutoTokenizer.from_pretrained("PATH")
```

Read it back into Vernacular with `vernacular import hf PATH --out CHECKPOINT_DIR`.
"""


def export_hf(
    model: Transformer,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
) -> Path:
    """Write a folder `DeepseekV3ForCausalLM.from_pretrained` loads with the same logits as `model`."""
    dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if dtype_name not in DTYPES:
        raise InteropError(f"dtype {dtype_name!r} not in {sorted(DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    bos, eos, pad = _special_ids(tokenizer_dir)
    hf_config = config_to_hf(
        model.config, dtype=dtype_name, bos_token_id=bos, eos_token_id=(eos[0] if eos and len(eos) == 1 else eos), pad_token_id=pad
    )
    state = to_hf_state_dict(model, DTYPES[dtype_name])
    tmp = out / f".{HF_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "vernacular"})
    tmp.replace(out / HF_WEIGHTS)
    (out / HF_INDEX).unlink(missing_ok=True)  # a stale shard index would shadow the new weights
    write_json(out / "config.json", hf_config)
    generation = {"bos_token_id": bos, "eos_token_id": eos if eos is None or len(eos) > 1 else eos[0], "pad_token_id": pad}
    write_json(out / "generation_config.json", {k: v for k, v in generation.items() if v is not None} | {"do_sample": False})
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copyfile(tokenizer_dir / name, out / name)
    n_params = sum(t.numel() for k, t in model.state_dict().items() if "e_score_correction_bias" not in k)
    atomic_write_bytes(out / "README.md", _model_card(model.config, n_params).encode())
    return out


def import_hf(path: str | Path) -> Transformer:
    """A `DeepseekV3ForCausalLM` folder (ours, DeepSeek's release in bf16 or block-wise FP8, or another model_type of
    that architecture such as Kimi K2) as a Vernacular model, validated. FP8 weights are dequantized on load."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise InteropError(f"{path} has no config.json: not a transformers model folder")
    try:
        hf_config = read_json(cfg_path)
    except json.JSONDecodeError as e:
        raise InteropError(f"{cfg_path} is not valid JSON: {e}") from e
    config, interleave = config_from_hf(hf_config)
    state = from_hf_state_dict(read_safetensors(path, fp8_block_size(hf_config)), config, rope_interleave=interleave)
    return _load_into(config, state, path, hf_names=True)


# ------------------------------------------------------------------------------------------------ our checkpoints


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The run's model: its newest chat fine-tuning checkpoint if any, else its newest pretraining checkpoint."""
    from vernacular.train.checkpoint import latest_model_checkpoint

    run = RunDir(run_dir)
    found = latest_model_checkpoint(run.require(run.checkpoints, "pretrain").parent)
    if found is None:
        raise InteropError(f"no checkpoints/step_*/{HF_WEIGHTS} in {run.root}; run `vernacular pretrain` first")
    return found


def checkpoint_config(ckpt_dir: Path) -> ModelConfig:
    """The model config of a checkpoint: `state.json["model_config"]` (the trainer's), else `config.json` (ours)."""
    ckpt_dir = Path(ckpt_dir)
    for path, key in ((ckpt_dir / "state.json", "model_config"), (ckpt_dir / "config.json", None)):
        if not path.exists():
            continue
        try:
            d = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InteropError(f"{path} is not valid JSON: {e}") from e
        if key is not None:
            if key not in d:
                continue
            d = d[key]
        if is_deepseek_v3(d):
            raise InteropError(f"{ckpt_dir} is a transformers folder: use `vernacular import hf {ckpt_dir}`")
        try:
            return ModelConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise InteropError(f"{path}: {e}") from e
    raise InteropError(f"{ckpt_dir} has neither state.json (with model_config) nor config.json")


def load_checkpoint(ckpt_dir: str | Path) -> Transformer:
    """A model from a checkpoint folder (`model.safetensors` under our names + its config)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise InteropError(f"checkpoint folder {ckpt_dir} does not exist")
    config = checkpoint_config(ckpt_dir)
    return _load_into(config, read_safetensors(ckpt_dir / HF_WEIGHTS), ckpt_dir / HF_WEIGHTS, hf_names=False)


def save_checkpoint(model: Transformer, ckpt_dir: str | Path, source: str | None = None) -> Path:
    """Weights-only checkpoint in our format: model.safetensors + config.json (+ state.json for the trainer/server)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    tmp = ckpt_dir / f".{HF_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "vernacular import"})
    tmp.replace(ckpt_dir / HF_WEIGHTS)
    write_json(ckpt_dir / "config.json", model.config.to_dict())
    write_json(ckpt_dir / "state.json", {"step": 0, "model_config": model.config.to_dict(), "imported_from": source})
    return ckpt_dir


__all__ = [
    "InteropError",
    "config_to_hf",
    "config_from_hf",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "export_hf",
    "import_hf",
    "load_checkpoint",
    "save_checkpoint",
    "latest_checkpoint",
    "read_safetensors",
    "dequantize_fp8",
    "is_deepseek_v3",
]
