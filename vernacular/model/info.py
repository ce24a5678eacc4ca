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


# vLLM's MLA attention takes `kv_lora_rank + qk_rope_head_dim` as its head size: its GPU MLA backends accept only these
# (vllm/v1/attention/backends/mla: "Head dimension ... is not supported by MLA"), its CPU MLA kernel only 576.
VLLM_MLA_HEAD_SIZES = (320, 512, 576)
VLLM_CPU_MLA_HEAD_SIZES = (576,)


def vllm_mla_support(config: ModelConfig) -> dict:
    """Whether vLLM can serve `config` through its MLA kernels (latent KV cache), and what to do if not.

    Returns {"head_size": kv_lora_rank + qk_rope_head_dim, "gpu": bool, "cpu": bool, "advice": str | None}; `advice`
    is None when both vLLM's GPU and CPU MLA paths accept the config. Rule from vLLM 0.32's MLA backends (GPU: head
    sizes 320, 512, 576; CPU: 576, DeepSeek-V2/V3's 512 + 64). Without the MLA path vLLM still serves the model with
    `VLLM_MLA_DISABLE=1` (plain attention over the expanded keys/values, a KV cache ~`mha_over_latent` times larger).
    """
    c = config
    size = c.kv_lora_rank + c.qk_rope_head_dim
    gpu, cpu = size in VLLM_MLA_HEAD_SIZES, size in VLLM_CPU_MLA_HEAD_SIZES
    advice = None
    if not gpu:
        advice = (f"kv_lora_rank + qk_rope_head_dim = {c.kv_lora_rank} + {c.qk_rope_head_dim} = {size} is not an MLA "
                  f"head size vLLM supports {VLLM_MLA_HEAD_SIZES}: vLLM refuses its MLA path ('Head dimension {size} "
                  "is not supported by MLA'). Serve with VLLM_MLA_DISABLE=1 (fine for small CPU models), or train "
                  "with kv_lora_rank 512 + qk_rope_head_dim 64 (DeepSeek's; also 256 + 64 = 320 or 448 + 64 = 512)")
    elif not cpu:
        advice = (f"MLA head size {size} runs on vLLM's GPU MLA backends, but vLLM's CPU MLA kernel takes only "
                  f"{VLLM_CPU_MLA_HEAD_SIZES[0]} (512 + 64): on CPU serve with VLLM_MLA_DISABLE=1")
    return {"head_size": size, "gpu": gpu, "cpu": cpu, "advice": advice}


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
        "vllm_mla": vllm_mla_support(config),
    }


# ------------------------------------------------------------------------------------------------ architecture specs
# The planner (vernacular/plan) also accounts for models that are not ours (a dense transformers `config.json`, such
# as Apertus or Llama, or nanochat's GPT given as raw numbers). `ArchSpec` is the common description every formula
# below reads; `arch_spec(config)` derives it from our ModelConfig with the same counts as `parameter_breakdown`.


@dataclass
class ArchSpec:
    """What FLOP and memory accounting needs to know about a decoder-only transformer.

    Counts are numbers of parameters; widths are numbers of activations per token. `expert_*` are the routed experts
    (0 for a dense model); `mtp_*` the multi-token-prediction modules (DeepSeek-V3), excluded from total/active."""

    name: str
    total: int  # main model, embeddings + lm_head included
    active: int  # what one token touches (k routed experts of E)
    embedding: int  # the input embedding (a lookup, no matmul FLOPs)
    lm_head: int  # vocab x hidden (tied or not: the matmul is done either way)
    tied: bool
    expert_total: int  # all routed experts of all layers
    expert_active: int
    num_layers: int
    num_moe_layers: int
    hidden_size: int
    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    vocab_size: int
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    attn_act_width: int = 0  # activations saved for backward per token per layer by attention (numbers)
    mlp_act_width: int = 0  # ... by the MLP / MoE block of a MoE layer (dense layers: dense_mlp_act_width)
    dense_mlp_act_width: int = 0
    kv_cache_width: int = 0  # numbers cached per token per layer at inference
    mtp_layers: int = 0
    mtp_total: int = 0
    mtp_active: int = 0
    muon_fraction: float = 1.0  # share of parameters that Muon updates (hidden matrices); the rest is AdamW
    notes: list = None

    @property
    def active_non_embedding(self) -> int:
        """Active parameters that do matmul work, without embedding and lm_head."""
        return self.active - self.embedding - (0 if self.tied else self.lm_head)


def arch_spec(config: ModelConfig) -> ArchSpec:
    """ArchSpec of our DeepSeek-V3-style config (same counts as `parameter_breakdown`)."""
    c = config
    b = parameter_breakdown(c)
    n_moe = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
    expert = 3 * c.hidden_size * c.moe_intermediate_size
    h, H = c.hidden_size, c.num_attention_heads
    q_path = 2 * c.q_lora_rank if c.q_lora_rank else 0
    # saved for backward (bf16 autocast): norm in/out, q/kv low-rank paths, q/k/v after RoPE, attention output, o_proj
    attn = 2 * h + q_path + 2 * H * c.qk_head_dim + (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank
    attn += H * (c.qk_nope_head_dim + c.v_head_dim) + H * c.qk_head_dim + 2 * H * c.v_head_dim + h
    # MoE: norm in/out, router scores, k dispatched copies with gate/up/act outputs and the down output, shared experts
    k, I = c.num_experts_per_tok, c.moe_intermediate_size
    moe = 2 * h + c.n_routed_experts + k * (h + 3 * I + h) + c.n_shared_experts * 3 * I + h
    dense = 2 * h + 3 * c.intermediate_size + h
    muon = b.total - b.embedding - 2 * h * c.num_hidden_layers - h - n_moe * c.n_routed_experts * h
    return ArchSpec(
        name="config", total=b.total, active=b.active, embedding=c.vocab_size * c.hidden_size,
        lm_head=c.vocab_size * c.hidden_size, tied=c.tie_word_embeddings,
        expert_total=n_moe * c.n_routed_experts * expert, expert_active=n_moe * c.num_experts_per_tok * expert,
        num_layers=c.num_hidden_layers, num_moe_layers=n_moe, hidden_size=h, num_heads=H,
        qk_head_dim=c.qk_head_dim, v_head_dim=c.v_head_dim, vocab_size=c.vocab_size,
        n_routed_experts=c.n_routed_experts if n_moe else 0, num_experts_per_tok=c.num_experts_per_tok if n_moe else 0,
        attn_act_width=attn, mlp_act_width=moe, dense_mlp_act_width=dense,
        kv_cache_width=c.kv_lora_rank + c.qk_rope_head_dim,
        mtp_layers=c.num_nextn_predict_layers, mtp_total=b.mtp_total, mtp_active=b.mtp_active,
        muon_fraction=max(0.0, muon / b.total), notes=[],
    )


def dense_arch_spec(
    *, name: str, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, vocab_size: int,
    num_kv_heads: int | None = None, head_dim: int | None = None, gated_mlp: bool = True, tied: bool = False,
) -> ArchSpec:
    """ArchSpec of a dense GQA/MHA transformer (Llama family, Apertus, GPT): q/k/v/o projections and an MLP of
    3 (gated: gate, up, down) or 2 (up, down) matrices; norms counted, biases ignored (negligible)."""
    h, H = hidden_size, num_heads
    d = head_dim or h // H
    kvh = num_kv_heads or H
    attn = h * H * d + 2 * h * kvh * d + H * d * h
    mlp = (3 if gated_mlp else 2) * h * intermediate_size
    layer = attn + mlp + 2 * h
    embed = vocab_size * h
    head = 0 if tied else vocab_size * h
    total = num_layers * layer + h + embed + head
    act_attn = 2 * h + H * d + 2 * kvh * d + 2 * H * d + h
    act_mlp = 2 * h + (3 if gated_mlp else 2) * intermediate_size + h
    return ArchSpec(
        name=name, total=total, active=total, embedding=embed, lm_head=vocab_size * h, tied=tied, expert_total=0,
        expert_active=0, num_layers=num_layers, num_moe_layers=0, hidden_size=h, num_heads=H, qk_head_dim=d,
        v_head_dim=d, vocab_size=vocab_size, attn_act_width=act_attn, mlp_act_width=act_mlp, dense_mlp_act_width=act_mlp,
        kv_cache_width=2 * kvh * d, muon_fraction=(num_layers * (attn + mlp)) / total, notes=[],
    )


def spec_flops_per_token(spec: ArchSpec, seq_len: int, include_mtp: bool = True) -> float:
    """Training FLOPs per token (forward + backward) of any ArchSpec; the formula of `flops_per_token`:
    6 * (active non-embedding params + lm_head) + 6 * L * H * (d_qk + d_v) * T, plus each MTP depth's block and head."""
    attn = 6 * spec.num_heads * (spec.qk_head_dim + spec.v_head_dim) * seq_len
    flops = 6 * (spec.active_non_embedding + spec.lm_head) + spec.num_layers * attn
    if include_mtp and spec.mtp_layers:
        flops += 6 * (spec.mtp_active + spec.mtp_layers * spec.lm_head) + spec.mtp_layers * attn
    return float(flops)


# ------------------------------------------------------------------------------------------------ training memory


@dataclass
class Layout:
    """A parallel layout: data parallel (FSDP2 over `dp` ranks), expert parallel (`ep` ranks of the dp dimension, as
    torchtitan's DeepSeek-V3 borrows EP from data parallelism), pipeline `pp` stages and tensor parallel `tp` (with
    sequence parallelism). World size = dp * tp * pp."""

    dp: int = 1
    ep: int = 1
    pp: int = 1
    tp: int = 1

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def __str__(self) -> str:
        return f"dp{self.dp}·ep{self.ep}·pp{self.pp}·tp{self.tp}"


# bytes per parameter of the model states as our trainer keeps them: fp32 parameters (FSDP2 shards fp32, compute
# under bf16 autocast), fp32 gradients, Muon's one fp32 momentum buffer or AdamW's two fp32 moments.
PARAM_BYTES, GRAD_BYTES, MUON_STATE_BYTES, ADAMW_STATE_BYTES = 4, 4, 4, 8
ACT_BYTES = 2  # activations under bf16 autocast


def state_bytes_per_param(spec: ArchSpec, optimizer: str = "muon") -> float:
    """Average bytes of parameter + gradient + optimizer state per parameter (`optimizer`: "muon" or "adamw")."""
    if optimizer == "adamw":
        return PARAM_BYTES + GRAD_BYTES + ADAMW_STATE_BYTES
    m = spec.muon_fraction
    return PARAM_BYTES + GRAD_BYTES + m * MUON_STATE_BYTES + (1 - m) * ADAMW_STATE_BYTES


def training_memory(
    spec: ArchSpec, layout: Layout, seq_len: int, micro_batch: int = 1, recompute: bool = False,
    optimizer: str = "muon",
) -> dict[str, float]:
    """Estimated peak bytes per GPU of a training step, by component.

    - `states`: parameters, gradients and optimizer states, fully sharded over all ranks (FSDP2 over dp; experts over
      ep x dp/ep; layers over pp; matrices over tp): total * state_bytes / world.
    - `gathered`: FSDP's transient unsharded copy of two layers (the current and the prefetched one), fp32; routed
      experts only over ep (that is what expert parallelism saves), the rest over tp.
    - `activations`: saved for backward, bf16, for micro_batch * seq_len tokens; with 1F1B the first pipeline stage
      holds pp micro-batches of L/pp layers, i.e. L layers' worth; sequence parallelism divides by tp. `recompute`:
      full per-layer recomputation keeps only each layer's input plus one layer's activations. Attention is assumed
      to be a flash kernel (no T x T scores kept).
    - `logits`: fp32 logits and their gradient for the loss on this rank's tokens (last stage), vocab / tp.
    Source of the activation accounting: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models"), adapted to MLA and MoE by listing each saved tensor (see `arch_spec`).
    """
    L, tokens = spec.num_layers, micro_batch * seq_len
    world = layout.world
    states = spec.total * state_bytes_per_param(spec, optimizer) / world
    if spec.mtp_layers:
        states += spec.mtp_total * state_bytes_per_param(spec, optimizer) / world
    per_moe_experts = spec.expert_total / max(1, spec.num_moe_layers)
    per_layer_dense = (spec.total - spec.expert_total - spec.embedding - (0 if spec.tied else spec.lm_head)) / L
    layer_unsharded = per_layer_dense / layout.tp + (per_moe_experts / (layout.ep * layout.tp) if spec.num_moe_layers else 0)
    gathered = 2 * layer_unsharded * PARAM_BYTES
    moe_w = spec.mlp_act_width if spec.num_moe_layers else spec.dense_mlp_act_width
    per_layer_act = (spec.attn_act_width + (spec.num_moe_layers * moe_w + (L - spec.num_moe_layers)
                                            * spec.dense_mlp_act_width) / L) * ACT_BYTES * tokens / layout.tp
    if recompute:
        activations = L * spec.hidden_size * ACT_BYTES * tokens / layout.tp + per_layer_act
    else:
        activations = L * per_layer_act
    logits = 2 * 4 * spec.vocab_size * tokens / layout.tp
    total = states + gathered + activations + logits
    return {"states": states, "gathered": gathered, "activations": activations, "logits": logits, "total": total}


def communication_bytes(spec: ArchSpec, layout: Layout, seq_len: int, global_batch_tokens: int,
                        micro_batch: int = 1) -> dict[str, float]:
    """Estimated bytes each GPU sends per optimizer step, by kind (ring-algorithm volumes).

    - `fsdp`: all-gather (forward and backward) + reduce-scatter of gradients, fp32: 3 * shard-group bytes * (n-1)/n
      for the dense part over dp and the experts over dp/ep.
    - `ep`: all-to-all dispatch + combine, forward and backward, bf16: 4 * tokens * k * hidden * (ep-1)/ep per MoE
      layer.
    - `tp`: sequence-parallel all-gather / reduce-scatter pairs, 2 per sublayer forward and backward, bf16.
    - `pp`: activations and their gradients across each stage boundary, bf16.
    """
    dp, ep, pp, tp = layout.dp, layout.ep, layout.pp, layout.tp
    tokens = global_batch_tokens / dp  # per data-parallel rank per step
    dense = (spec.total - spec.expert_total) / (tp * pp)
    experts = spec.expert_total / (ep * tp * pp)
    fsdp = 3 * PARAM_BYTES * (dense * (dp - 1) / dp + experts * (dp // ep - 1) / max(1, dp // ep))
    moe_layers = spec.num_moe_layers / pp
    ep_bytes = 4 * tokens * spec.num_experts_per_tok * spec.hidden_size * ACT_BYTES * (ep - 1) / ep * moe_layers
    tp_bytes = 8 * tokens * spec.hidden_size * ACT_BYTES * (tp - 1) / tp * (spec.num_layers / pp)
    pp_bytes = 2 * tokens * spec.hidden_size * ACT_BYTES / tp if pp > 1 else 0.0
    return {"fsdp": fsdp, "ep": ep_bytes, "tp": tp_bytes, "pp": pp_bytes, "total": fsdp + ep_bytes + tp_bytes + pp_bytes}
