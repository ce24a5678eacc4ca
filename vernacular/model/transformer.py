"""The DeepSeek-V3-style decoder: embeddings -> [MLA + (dense MLP | DeepSeekMoE)] x L -> norm -> lm_head, plus MTP.

Module names mirror transformers' DeepseekV3ForCausalLM (`model.embed_tokens`, `model.layers.{i}.self_attn...`,
`model.norm`, `lm_head`) so the HF export is a rename-free mapping except for the stacked experts (see `Experts`).

Multi-token prediction (DeepSeek-V3 sec. 2.2): module k (1-based) combines the previous depth's hidden state at
position t (depth 0 = the main model's final, normalised hidden state, as vLLM's DeepSeek MTP consumes it) with the
embedding of token t+k, `eh_proj(cat[enorm(emb), hnorm(h)])`, runs one decoder block causally and predicts token
t+k+1 through the shared `lm_head`. Embeddings and `lm_head` are shared with the main model. MTP runs only when labels
are given (training); the cached inference path never runs it.

`labels` are targets aligned with `input_ids` (labels[:, t] is the token after input_ids[:, t], -100 = ignore).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLA, CacheStep, LatentKVCache, document_mask
from .config import ModelConfig
from .layers import MLP, RMSNorm, RotaryEmbedding
from .moe import MoE

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # [B, T, V]; None when the forward ran with supervised_logits_only
    loss: torch.Tensor | None = None  # main + mtp_loss_weight * mtp + seq_aux_loss_weight * balance
    main_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = MoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        step: CacheStep | None = None,
        want_balance_loss: bool = False,
        visible: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.input_layernorm(x)
        if step is None:
            x = x + self.self_attn(h, cos, sin, visible)
        else:
            x = x + self.self_attn.forward_cached(h, cos, sin, step)
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            h, balance = self.mlp(h, want_balance_loss)
            return x + h, balance
        return x + self.mlp(h), None


class Decoder(nn.Module):
    """The `model.` prefix of the HF layout: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPModule(nn.Module):
    """One multi-token-prediction depth; exported as `model.layers.{L+k-1}` with `shared_head.norm` = `norm`."""

    def __init__(self, config: ModelConfig, depth: int):
        super().__init__()
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.block = DecoderLayer(config, config.num_hidden_layers + depth - 1)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cos, sin, want_balance_loss: bool,
                visible: torch.Tensor | None = None):
        """h: previous depth's states [B, T', H]; emb: embeddings of the tokens k ahead [B, T', H]."""
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        x, balance = self.block(x, cos, sin, want_balance_loss=want_balance_loss, visible=visible)
        return self.norm(x), balance


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(config, k) for k in range(1, config.num_nextn_predict_layers + 1))
        self.rotary = RotaryEmbedding(config)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if self.lm_head.weight.device.type != "meta":  # direct construction: never leave torch.empty() weights
            self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """DeepSeek/HF init: normal(0, initializer_range) for every matrix, ones for norms, zero balancing bias."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):  # every RMSNorm: *_layernorm, model.norm, mtp enorm/hnorm/norm
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.dtype) * std)
        for m in self.modules():
            if isinstance(m, MoE):
                m.gate.e_score_correction_bias.zero_()
                m.expert_counts.zero_()
        self.rotary.inv_freq.copy_(RotaryEmbedding(self.config).inv_freq)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        cache: LatentKVCache | None = None,
        slots: torch.Tensor | None = None,
        start_pos: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mtp: bool = True,
        supervised_logits_only: bool = False,
    ) -> ModelOutput:
        """`logits_at` [B] (inference only): return logits [B, 1, V] at that position of each row instead of all T,
        e.g. each prompt's last token in a padded prefill; the lm_head over every prompt token is then skipped.
        `logits_at` [B, K]: logits [B, K, V] at K positions per row (e.g. the continuation tokens lm-eval scores).

        `position_ids` [B, T] (without a cache): packed documents, as transformers' DataCollatorWithFlattening
        writes them - positions restart at 0 where a document starts, and attention never crosses into another
        document (`document_mask`), so each document's logits equal those of the document run alone.

        `mtp=False` (training with labels): skip the multi-token-prediction modules, `mtp_loss` is None - for a
        fine-tune whose MTP loss weight is 0, they would cost a third of the step for nothing.

        `supervised_logits_only=True` (training with labels): the LM head runs only at positions whose label is not
        IGNORE_INDEX (a fine-tune supervises the assistant's tokens only; the head and its softmax over the prompt
        and padding positions would be wasted); `logits` is then None and `main_loss` the same mean."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        cfg = self.config
        if cache is not None:
            if labels is not None:
                raise ValueError("labels are not supported with a cache (the cached path is for inference)")
            if slots is None or start_pos is None:
                raise ValueError("the cached path needs slots [batch] and start_pos [batch]")
            slots, start_pos = slots.to(input_ids.device).long(), start_pos.to(input_ids.device).long()
            if slots.shape != (B,):
                raise ValueError(f"slots must have shape ({B},), got {tuple(slots.shape)}")
            step = cache.step(slots, start_pos, T)
            positions = start_pos[:, None] + torch.arange(T, device=input_ids.device)
        elif T > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        else:
            step = None
            positions = torch.arange(T, device=input_ids.device)[None]
        visible = None
        if position_ids is not None:
            if cache is not None:
                raise ValueError("position_ids are for the uncached path; the cached path takes start_pos")
            if position_ids.shape != input_ids.shape:
                raise ValueError(f"position_ids must match input_ids' shape {tuple(input_ids.shape)}, "
                                 f"got {tuple(position_ids.shape)}")
            positions = position_ids.to(input_ids.device).long()
            visible = document_mask(positions)

        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        want_balance = labels is not None and self.training and cfg.seq_aux_loss_weight > 0 and cfg.has_moe
        balance_losses = []
        for layer in self.model.layers:
            x, bal = layer(x, cos, sin, step, want_balance, visible)
            if bal is not None:
                balance_losses.append(bal)
        if logits_at is not None:
            if labels is not None:
                raise ValueError("logits_at is for inference; with labels every position's logits are needed")
            logits_at = logits_at.to(x.device).long()
            if logits_at.dim() not in (1, 2) or logits_at.shape[0] != B:
                raise ValueError(f"logits_at must have shape ({B},) or ({B}, K), got {tuple(logits_at.shape)}")
            if B and (int(logits_at.min()) < 0 or int(logits_at.max()) >= T):
                raise ValueError(f"logits_at must index positions in [0, {T}), got {logits_at.tolist()}")
            index = logits_at.view(B, -1)
            x = x.gather(1, index[..., None].expand(*index.shape, x.shape[-1]))  # the norm is per position
        h = self.model.norm(x)
        if labels is None:
            return ModelOutput(logits=self.lm_head(h))

        if labels.shape != input_ids.shape:
            raise ValueError(f"labels must match input_ids' shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        if supervised_logits_only:
            keep = labels != IGNORE_INDEX
            logits = None
            main_loss = _cross_entropy(self.lm_head(h[keep]), labels[keep])
        else:
            logits = self.lm_head(h)
            main_loss = _cross_entropy(logits, labels)
        mtp_loss = None
        if mtp and len(self.mtp) and T > 1:
            mtp_losses = []
            # the token after position t: its label, or where the label is ignored (a prompt token in fine-tuning),
            # the next input token
            emb_ids = torch.where(labels[:, :-1] >= 0, labels[:, :-1], input_ids[:, 1:])
            for k, module in enumerate(self.mtp, start=1):
                if T - k < 1:
                    break
                emb = self.model.embed_tokens(emb_ids[:, k - 1 :])
                sub = None if visible is None else visible[:, :, : T - k, : T - k]
                h, bal = module(h[:, : T - k], emb, cos[:, : T - k], sin[:, : T - k], want_balance, sub)
                if bal is not None:
                    balance_losses.append(bal)
                mtp_losses.append(_cross_entropy(self.lm_head(h), labels[:, k:]))
            mtp_loss = torch.stack(mtp_losses).mean()
        balance_loss = torch.stack(balance_losses).mean() if balance_losses else None
        loss = main_loss
        if mtp_loss is not None:
            loss = loss + cfg.mtp_loss_weight * mtp_loss
        if balance_loss is not None:
            loss = loss + cfg.seq_aux_loss_weight * balance_loss
        return ModelOutput(logits, loss, main_loss, mtp_loss, balance_loss)

    # ------------------------------------------------------------------ balancing
    def moe_layers(self) -> list[tuple[str, MoE]]:
        return [(name.removesuffix(".mlp"), m) for name, m in self.named_modules() if isinstance(m, MoE)]

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """Call once per optimizer step: bias += gamma * sign(mean_load - load) per MoE layer, then reset counts."""
        for _, moe in self.moe_layers():
            moe.update_bias(self.config.bias_update_speed)

    def expert_load_stats(self) -> dict[str, float]:
        """max/mean expert load per MoE layer since the last `update_expert_bias` (keys are module paths); layers that
        routed no token (the MTP block when it is skipped) are left out."""
        return {name: moe.load_ratio() for name, moe in self.moe_layers() if float(moe.expert_counts.sum()) > 0}

    def expert_load_shares(self) -> dict[str, list[float]]:
        """Share of routed token slots per expert, per MoE layer, since the last `update_expert_bias` (for the report's
        layers x experts heatmap)."""
        out = {}
        for name, moe in self.moe_layers():
            counts = moe.expert_counts
            if (total := float(counts.sum())) > 0:
                out[name] = [round(float(c) / total, 6) for c in counts]
        return out

    def num_parameters(self, active: bool = False) -> int:
        from .info import count_parameters

        total, act = count_parameters(self.config)
        return act if active else total


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def build_model(
    spec: str | dict | ModelConfig = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Transformer:
    """Seeded model: built on the meta device (no wasted init), materialised on `device`, initialised from `seed`.

    In low precision the router weight and balancing bias stay fp32, as HF keeps them (`_keep_in_fp32_modules`).
    """
    config = ModelConfig.load(spec)
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_weights(torch.Generator().manual_seed(seed))
    if dtype != torch.float32:
        model.to(dtype)
        for _, moe in model.moe_layers():
            moe.gate.float()
            moe.expert_counts.data = moe.expert_counts.float()
    return model
