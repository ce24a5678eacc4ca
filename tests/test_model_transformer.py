"""The whole model: seeded init, losses (main / MTP / balance), logits equal to transformers' DeepseekV3ForCausalLM,
and a short training run on real multilingual text."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vernacular.model import ModelConfig, ModelOutput, Transformer, build_model


pytestmark = pytest.mark.usefixtures("one_thread")




def _cfg(**kw):
    base = dict(
        vocab_size=320, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, max_position_embeddings=256,
        num_nextn_predict_layers=2,
    )  # fmt: skip
    base.update(kw)
    return ModelConfig.load("tiny", **base)


def test_build_model_is_seeded_and_initialised_like_deepseek():
    a, b, c = build_model(_cfg(), seed=3), build_model(_cfg(), seed=3), build_model(_cfg(), seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert torch.all(sa["model.layers.0.input_layernorm.weight"] == 1)
    assert torch.all(sa["model.layers.1.mlp.gate.e_score_correction_bias"] == 0)
    std = sa["model.layers.1.mlp.experts.gate_up_proj"].std().item()
    assert abs(std - 0.02) < 0.002
    names = set(sa)
    for expected in [
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.0.self_attn.kv_a_layernorm.weight", "model.layers.0.self_attn.kv_b_proj.weight",
        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.shared_experts.down_proj.weight",
        "model.layers.1.mlp.experts.down_proj", "model.norm.weight", "lm_head.weight",
        "mtp.0.enorm.weight", "mtp.0.hnorm.weight", "mtp.0.eh_proj.weight", "mtp.1.block.mlp.gate.weight",
        "mtp.1.norm.weight",
    ]:  # fmt: skip
        assert expected in names, expected
    assert not any("expert_counts" in n or "inv_freq" in n for n in names)


def test_bf16_build_keeps_router_fp32():
    m = build_model(_cfg(), dtype=torch.bfloat16)
    assert m.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert m.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert m.model.layers[1].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    ids = torch.randint(0, 320, (2, 16))
    out = m(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()


def test_tied_embeddings():
    m = build_model(_cfg(tie_word_embeddings=True))
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_losses_compose_and_mtp_targets_are_shifted():
    torch.manual_seed(0)
    cfg = _cfg(seq_aux_loss_weight=0.01)
    m = build_model(cfg, seed=0).train()
    ids = torch.randint(0, 320, (2, 12))
    labels = torch.randint(0, 320, (2, 12))
    labels[0, 3] = -100
    out = m(ids, labels=labels)
    assert isinstance(out, ModelOutput) and out.logits.shape == (2, 12, 320)
    torch.testing.assert_close(out.main_loss, F.cross_entropy(out.logits.reshape(-1, 320), labels.reshape(-1)))
    expected = out.main_loss + cfg.mtp_loss_weight * out.mtp_loss + cfg.seq_aux_loss_weight * out.balance_loss
    torch.testing.assert_close(out.loss, expected)

    # MTP by hand: depth k at position t sees emb(labels[t+k-1]) and predicts labels[t+k]
    with torch.no_grad():
        m.eval()
        T = 12
        h = m.model.norm(_trunk(m, ids))
        cos, sin = m.rotary(torch.arange(T)[None], h.dtype)
        # an ignored label's embedding falls back to the next input token
        emb_ids, losses = torch.where(labels >= 0, labels, torch.cat([ids[:, 1:], ids[:, :1]], 1)), []
        for k, mod in enumerate(m.mtp, start=1):
            e = m.model.embed_tokens(emb_ids[:, k - 1 : T - 1])
            x = mod.eh_proj(torch.cat([mod.enorm(e), mod.hnorm(h[:, : T - k])], -1))
            x, _ = mod.block(x, cos[:, : T - k], sin[:, : T - k])
            h = mod.norm(x)
            losses.append(F.cross_entropy(m.lm_head(h).reshape(-1, 320), labels[:, k:].reshape(-1)))
        out = m(ids, labels=labels)
        assert out.balance_loss is None  # only in training
        torch.testing.assert_close(out.mtp_loss, torch.stack(losses).mean())


def _trunk(m: Transformer, ids):
    x = m.model.embed_tokens(ids)
    cos, sin = m.rotary(torch.arange(ids.shape[1])[None], x.dtype)
    for layer in m.model.layers:
        x, _ = layer(x, cos, sin)
    return x


def test_mtp_disabled_and_no_balance_loss_when_weight_zero():
    m = build_model(_cfg(num_nextn_predict_layers=0, seq_aux_loss_weight=0.0)).train()
    ids = torch.randint(0, 320, (2, 8))
    out = m(ids, labels=ids)
    assert out.mtp_loss is None and out.balance_loss is None
    torch.testing.assert_close(out.loss, out.main_loss)
    with pytest.raises(ValueError, match="labels must match"):
        m(ids, labels=ids[:, :4])


def test_mtp_skipped_on_request():
    """`mtp=False` (a fine-tune with MTP weight 0): same main loss, no MTP loss, the MTP modules get no gradient
    and route no token (their layers drop out of the expert-load figures instead of reporting NaN)."""
    m = build_model(_cfg()).train()
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    out = m(ids, labels=ids, mtp=False)  # a fresh model: no token routed yet
    assert set(m.expert_load_stats()) == set(m.expert_load_shares()) == {"model.layers.1", "model.layers.2"}
    full = m(ids, labels=ids)  # same routing bias (no update in between), so the same main loss
    assert out.mtp_loss is None and full.mtp_loss is not None
    torch.testing.assert_close(out.main_loss, full.main_loss)
    out.loss.backward()
    assert all(p.grad is None for p in m.mtp.parameters())
    assert m.model.layers[0].self_attn.kv_a_proj_with_mqa.weight.grad is not None


def test_supervised_logits_only_gives_the_same_losses_and_gradients():
    """`supervised_logits_only=True` (SFT: the LM head only where labels are set): main, MTP and total loss and every
    gradient equal the full-logits path; logits are not returned."""
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :10] = -100  # a prompt
    labels[1, 15:] = -100  # padding
    grads, outs = [], []
    for only in (False, True):
        m = build_model(_cfg(), seed=1).train()
        out = m(ids, labels=labels, supervised_logits_only=only)
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert outs[1].logits is None and outs[0].logits.shape == (2, 24, 320)
    for name in ("loss", "main_loss", "mtp_loss"):
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name))
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)


def test_update_expert_bias_and_load_stats():
    m = build_model(_cfg()).train()
    ids = torch.randint(0, 320, (4, 32))
    m(ids, labels=ids)
    stats = m.expert_load_stats()
    assert set(stats) == {"model.layers.1", "model.layers.2", "mtp.0.block", "mtp.1.block"}
    assert all(v >= 1.0 for v in stats.values())
    before = {n: moe.gate.e_score_correction_bias.clone() for n, moe in m.moe_layers()}
    loads = {n: moe.expert_counts.clone() for n, moe in m.moe_layers()}
    m.update_expert_bias()
    for n, moe in m.moe_layers():
        delta = moe.gate.e_score_correction_bias - before[n]
        torch.testing.assert_close(delta, m.config.bias_update_speed * torch.sign(loads[n].mean() - loads[n]))
        assert delta.abs().sum() > 0
        assert moe.expert_counts.sum() == 0
        assert moe.gate.e_score_correction_bias.grad is None


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_logits_match_transformers_deepseek_v3(q_lora_rank):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = _cfg(q_lora_rank=q_lora_rank, rope_scaling={"type": "yarn", "factor": 4.0,
               "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.707}, routed_scaling_factor=2.5)  # fmt: skip
    ours = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        for _, moe in ours.moe_layers():
            moe.gate.weight.normal_(0, 0.5)
            moe.gate.e_score_correction_bias.normal_(0, 0.05)
    d = cfg.to_dict()
    rs = d.pop("rope_scaling")
    hf_cfg = DeepseekV3Config(
        **{k: v for k, v in d.items() if k not in ("bias_update_speed", "seq_aux_loss_weight", "mtp_loss_weight")},
        num_key_value_heads=cfg.num_attention_heads,
        rope_interleave=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": cfg.rope_theta, **{k: v for k, v in rs.items() if k != "type"}},
    )
    hf = DeepseekV3ForCausalLM(hf_cfg).eval()
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("mtp.")}
    for k in list(sd):
        if ".experts." in k:  # ours: [E, in, out]; HF: [E, out, in]
            sd[k] = sd[k].transpose(1, 2).contiguous()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_training_on_real_multilingual_text_reduces_loss():
    """Byte-level LM on NTREX-128 text in four languages: loss must drop well below the uniform-bytes entropy."""
    from vernacular.data.demo_corpus import demo_lines

    text = "".join("\n".join(demo_lines(lang))[:4000] for lang in ("deu", "fra", "pol", "fin"))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    torch.manual_seed(0)
    m = build_model(_cfg(vocab_size=256, max_position_embeddings=64), seed=0).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        starts = torch.randint(0, len(data) - 65, (8,), generator=g)
        batch = torch.stack([data[s : s + 65] for s in starts])
        out = m(batch[:, :-1], labels=batch[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        m.update_expert_bias()
        losses.append(out.main_loss.item())
    assert losses[0] > 5.0  # ~ln(256) at init
    assert sum(losses[-5:]) / 5 < 3.3, losses
