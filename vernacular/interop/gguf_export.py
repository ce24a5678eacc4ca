"""GGUF export for llama.cpp (and Ollama, LM Studio, llama-cpp-python): llama.cpp's `deepseek2` architecture with MLA.

Written with the `gguf` package, the llama.cpp project's own writer. The mapping follows llama.cpp's converter for
DeepSeek-V2/V3 (`convert_hf_to_gguf.py`, class `DeepseekV2Model`) applied to our HF export's tensors
(`to_hf_state_dict`: DeepSeek's release layout, RoPE rows already interleaved, which is the GPT-J-style RoPE llama.cpp
applies for `deepseek2`):

* MLA as llama.cpp runs it: one shared KV "head" (`head_count_kv` 1) of `kv_lora_rank + qk_rope_head_dim`
  (`key_length`) / `kv_lora_rank` (`value_length`), per-head dims in `key_length_mla` / `value_length_mla`;
  `kv_b_proj` split per head into `attn_k_b` (the key part, transposed: [heads, kv_lora_rank, qk_nope]) and `attn_v_b`
  ([heads, v_head_dim, kv_lora_rank]) for the absorbed attention; `q_lora_rank` 0 means a plain `attn_q`.
* routing: routed experts stacked (`ffn_{gate,up,down}_exps`), shared experts (`*_shexp`), the router (`ffn_gate_inp`,
  kept fp32) and its bias `exp_probs_b` (fp32); `expert_gating_func` sigmoid (without it llama.cpp falls back to
  softmax for DeepSeek-V2 files), group-limited routing (`expert_group_count` / `expert_group_used_count`),
  `expert_weights_norm` / `expert_weights_scale`, `leading_dense_block_count`.
* tokenizer: byte-level BPE as `gpt2` with the pre-tokenizer `gpt-2` (our pre-tokenizer is GPT-2's regex; llama.cpp
  identifies pre-tokenizers by name), every token with its type (special tokens CONTROL), the merges, BOS/EOS/PAD,
  the end-of-turn token as `eot_token_id` (llama.cpp stops there), and the chat template verbatim. llama.cpp does not
  apply our NFC normalizer: text that is not NFC tokenizes differently (docs/interop.md).
* the MTP modules are not written (llama.cpp's converter drops them too).

Tensor types: 1-D tensors, norms, the router and its bias always fp32; the rest in `--type` (f32, f16, bf16, q8_0).
q8_0 needs rows of a multiple of 32 values; a tensor whose rows are not (small models' `attn_k_b`) falls back to f16,
as llama.cpp's converter does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vernacular.interop.hf import InteropError, to_hf_state_dict
from vernacular.model import ModelConfig, Transformer
from vernacular.run import read_json

TYPES = ("f32", "f16", "bf16", "q8_0")
ARCH = "deepseek2"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _gguf():
    try:
        import gguf
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise InteropError("the `gguf` package is missing: pip install gguf") from e
    return gguf


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """Our model's fp32 tensors under llama.cpp's `deepseek2` names (MTP modules left out)."""
    gguf = _gguf()
    c = model.config
    L = c.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, L)
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}

    def put(hf_name: str, t: torch.Tensor, suffix: str = ".weight") -> None:
        name = names.get_name(hf_name)
        if name is None:
            raise InteropError(f"no llama.cpp deepseek2 tensor for {hf_name}")
        out[name + suffix] = t

    for key, t in to_hf_state_dict(model, torch.float32).items():
        m = _LAYER.match(key)
        if m and int(m.group(1)) >= L:
            continue  # MTP modules
        e = _EXPERT.match(key)
        if e:
            experts.setdefault(e.group(1), {}).setdefault(e.group(3), {})[int(e.group(2))] = t
        elif key.endswith("self_attn.kv_b_proj.weight"):
            kv_b = t.view(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
            k_b, v_b = kv_b.split([c.qk_nope_head_dim, c.v_head_dim], dim=1)
            base = key.removesuffix("kv_b_proj.weight")
            put(base + "k_b_proj", k_b.transpose(1, 2).contiguous())  # [heads, kv_lora_rank, qk_nope]
            put(base + "v_b_proj", v_b.contiguous())  # [heads, v_head_dim, kv_lora_rank]
        elif key.endswith("mlp.gate.e_score_correction_bias"):
            put(key.removesuffix("_bias"), t, ".bias")  # blk.N.exp_probs_b.bias
        else:
            put(key.removesuffix(".weight"), t)
    for prefix, parts in experts.items():
        for proj, per_expert in parts.items():
            put(f"{prefix}.{proj}", torch.stack([per_expert[i] for i in range(c.n_routed_experts)]))  # [E, out, in]
    return out


def _tensor_data(name: str, t: torch.Tensor, qtype: str):
    """(numpy data, GGML type) for one tensor, following llama.cpp's converter's type rules."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    data = t.detach().float().numpy()
    keep_f32 = (data.ndim <= 1 or name.endswith("_norm.weight") or ".ffn_gate_inp." in name
                or not name.endswith(".weight"))  # fmt: skip
    target = Q.F32 if keep_f32 else {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[qtype]
    if target == Q.F32:
        return data, Q.F32
    if target == Q.F16:
        return data.astype(np.float16), Q.F16
    try:
        return gguf.quants.quantize(data, target), target
    except gguf.QuantError:  # q8_0 rows must be a multiple of 32 values
        return data.astype(np.float16), Q.F16


def _add_hparams(w, c: ModelConfig, qtype: str) -> None:
    gguf = _gguf()
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(1)  # MLA runs as MQA over the latent in llama.cpp
    w.add_rope_freq_base(float(c.rope_theta))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    w.add_leading_dense_block_count(c.first_k_dense_replace)
    w.add_q_lora_rank(c.q_lora_rank or 0)  # llama.cpp requires the key; 0 = plain q_proj
    w.add_kv_lora_rank(c.kv_lora_rank)
    w.add_key_length(c.kv_lora_rank + c.qk_rope_head_dim)
    w.add_value_length(c.kv_lora_rank)
    w.add_key_length_mla(c.qk_nope_head_dim + c.qk_rope_head_dim)
    w.add_value_length_mla(c.v_head_dim)
    w.add_rope_dimension_count(c.qk_rope_head_dim)
    w.add_expert_count(c.n_routed_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_expert_shared_count(c.n_shared_experts)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_group_count(c.n_group)
    w.add_expert_group_used_count(c.topk_group)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_expert_weights_scale(float(c.routed_scaling_factor))
    if c.norm_topk_prob:
        w.add_expert_weights_norm(True)
    if c.rope_scaling:
        y = c.yarn or c.rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(y["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(y["original_max_position_embeddings"]))
        if y.get("beta_fast") is not None:
            w.add_rope_scaling_yarn_beta_fast(float(y["beta_fast"]))
        if y.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(float(y["beta_slow"]))
        if y.get("mscale_all_dim"):
            w.add_rope_scaling_yarn_log_mul(0.1 * float(y["mscale_all_dim"]))  # llama.cpp divides by 0.1 again
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]  # fmt: skip
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(w, tokenizer_dir: Path, vocab_size: int) -> None:
    gguf = _gguf()
    from tokenizers import Tokenizer

    from vernacular.tokenizer import END

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    model = read_json(tokenizer_dir / "tokenizer.json").get("model", {})
    if model.get("type") != "BPE":
        raise InteropError(f"{tokenizer_dir / 'tokenizer.json'}: a {model.get('type')} model; GGUF export needs a BPE")
    vocab = tok.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise InteropError(f"the tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {vocab_size}")
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    by_id = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the model's embedding rows past the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    w.add_tokenizer_pre("gpt-2")  # our pre-tokenizer is GPT-2's regex (tokenizers' ByteLevel with use_regex)
    w.add_token_list(tokens)
    w.add_token_types(types)
    # merges, BOS/EOS/PAD ids, add_bos_token and the chat template from tokenizer.json / tokenizer_config.json
    special_vocab = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    if not special_vocab.merges:
        raise InteropError(f"{tokenizer_dir / 'tokenizer.json'} has no BPE merges")
    special_vocab.add_to_gguf(w, quiet=True)
    eot = tok.token_to_id(END)
    if eot is not None:
        w.add_eot_token_id(eot)  # end of a chat turn: llama.cpp ends generation there


def export_gguf(model: Transformer, out_file: str | Path, tokenizer_dir: str | Path, qtype: str = "f32",
                name: str = "vernacular") -> Path:  # fmt: skip
    """Write `model` and its tokenizer as one GGUF file llama.cpp loads as `deepseek2` (written atomically).

    qtype: "f32" | "f16" | "bf16" | "q8_0" (norms, router and biases stay fp32). Raises InteropError on a tokenizer
    folder without a BPE tokenizer.json or an unknown type."""
    gguf = _gguf()
    if qtype not in TYPES:
        raise InteropError(f"type {qtype!r} not in {TYPES}")
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise InteropError(f"{tokenizer_dir} has no tokenizer.json: a GGUF file carries its tokenizer")
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        w.add_name(name)
        _add_hparams(w, model.config, qtype)
        _add_tokenizer(w, tokenizer_dir, model.config.vocab_size)
        for tname, t in gguf_tensors(model).items():
            data, ggml_type = _tensor_data(tname, t, qtype)
            w.add_tensor(tname, data, raw_dtype=ggml_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    tmp.replace(out)
    return out


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (scalars and short arrays), read with gguf's reader."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.tokens")
            and k not in ("tokenizer.ggml.token_type", "tokenizer.ggml.merges")}  # fmt: skip


__all__ = ["export_gguf", "gguf_tensors", "gguf_metadata", "TYPES"]
