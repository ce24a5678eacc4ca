"""MLA: the fused training path against a naive reference, the absorbed latent-cache path against the training path,
and RoPE/YaRN against transformers."""

import math

import pytest
import torch

from vernacular.model import LatentKVCache, ModelConfig, build_model
from vernacular.model.attention import MLA
from vernacular.model.layers import RotaryEmbedding, rope_inv_freq


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, max_position_embeddings=128,
    )  # fmt: skip
    base.update(kw)
    return ModelConfig.load("tiny", **base)


def _naive_mla(attn: MLA, x, cos, sin):
    """Expand everything to per-head q, k, v and run softmax(q k^T * scale + causal) v explicitly."""
    B, T, _ = x.shape
    q_nope, q_pe, latent, k_pe = attn._project(x, cos, sin)
    kv = attn.kv_b_proj(latent).view(B, T, attn.n_heads, -1)
    k_nope, v = kv.split([attn.qk_nope_head_dim, attn.v_head_dim], dim=-1)
    q = torch.cat([q_nope, q_pe], -1)
    k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, attn.n_heads, -1)], -1)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * attn.softmax_scale
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, -1)
    return attn.o_proj(out)


@pytest.mark.parametrize("kw", [{}, {"v_head_dim": 40}, {"v_head_dim": 24, "q_lora_rank": 48}])
def test_training_path_matches_naive(kw):
    cfg = _cfg(**kw)
    torch.manual_seed(0)
    attn = MLA(cfg, 0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(2, 17, cfg.hidden_size)
    cos, sin = RotaryEmbedding(cfg)(torch.arange(17)[None], x.dtype)
    torch.testing.assert_close(attn(x, cos, sin), _naive_mla(attn, x, cos, sin), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [17, 300])  # CPU fp32: T <= 256 takes the explicit GEMM path, longer the fused sdpa
def test_both_cpu_attention_paths_match_naive_with_gradients(T):
    from vernacular.model.attention import _explicit_attention_pays

    cfg = _cfg(v_head_dim=40, max_position_embeddings=512)
    torch.manual_seed(0)
    attn = MLA(cfg, 0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(1, T, cfg.hidden_size, requires_grad=True)
    cos, sin = RotaryEmbedding(cfg)(torch.arange(T)[None], x.dtype)
    assert _explicit_attention_pays(torch.empty(1, 1, T, 8)) == (T <= 256)
    out = attn(x, cos, sin)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    ref = _naive_mla(attn, x, cos, sin)
    (gx_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # 2-byte compute: the explicit path reaches T = 512
        assert _explicit_attention_pays(torch.empty(1, 1, 300, 8)) and not _explicit_attention_pays(torch.empty(1, 1, 600, 8))
        low = attn(x, cos, sin)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2 * ref.abs().max().item(), rtol=0)


def test_rope_and_yarn_match_transformers():
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ours = ModelConfig.load("deepseek-v3-671b")
    rp = {"rope_type": "yarn", "rope_theta": ours.rope_theta, **{k: v for k, v in ours.rope_scaling.items() if k != "type"}}
    hf = DeepseekV3Config(rope_parameters=rp, max_position_embeddings=ours.max_position_embeddings)
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    mine, my_factor = rope_inv_freq(ours)
    torch.testing.assert_close(mine, inv_freq)
    assert my_factor == pytest.approx(factor)
    # unscaled RoPE: plain 1/theta^(2i/d)
    plain, f = rope_inv_freq(_cfg())
    torch.testing.assert_close(plain, 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8))
    assert f == 1.0


def _model(**kw):
    model = build_model(_cfg(**kw), seed=1).eval()
    with torch.no_grad():  # spread the router so MoE selections are not ties
        for _, moe in model.moe_layers():
            moe.gate.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kw", [{}, {"q_lora_rank": 24}, {"rope_scaling": {"type": "yarn", "factor": 4.0,
                                 "original_max_position_embeddings": 32, "mscale": 1.0, "mscale_all_dim": 1.0}}])
@torch.no_grad()
def test_cache_prefill_and_decode_match_training_path(kw):
    model = _model(**kw)
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    ref = model(ids).logits
    cache = LatentKVCache(model.config, num_slots=5, max_len=32)
    slots = torch.tensor([4, 0, 2])
    out = model(ids, cache=cache, slots=slots, start_pos=torch.zeros(3, dtype=torch.long)).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    cache = LatentKVCache(model.config, num_slots=3, max_len=32)
    steps = [model(ids[:, t : t + 1], cache=cache, slots=torch.arange(3), start_pos=torch.full((3,), t)).logits
             for t in range(20)]  # fmt: skip
    torch.testing.assert_close(torch.cat(steps, 1), ref, atol=1e-5, rtol=1e-5)

    cache = LatentKVCache(model.config, num_slots=3, max_len=32)  # chunked prefill: 7 + 13
    a = model(ids[:, :7], cache=cache, slots=torch.arange(3), start_pos=torch.zeros(3, dtype=torch.long)).logits
    b = model(ids[:, 7:], cache=cache, slots=torch.arange(3), start_pos=torch.full((3,), 7)).logits
    torch.testing.assert_close(torch.cat([a, b], 1), ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_rows_with_different_start_pos_match_each_row_alone():
    model = _model()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 300, (n,), generator=g) for n in (5, 11, 2)]
    cache = LatentKVCache(model.config, num_slots=4, max_len=24)
    slots = torch.tensor([1, 3, 0])
    for s, seq in zip(slots, seqs):  # prefill each sequence into its own slot, alone
        model(seq[None], cache=cache, slots=s[None], start_pos=torch.zeros(1, dtype=torch.long))
    nxt = torch.randint(0, 300, (3, 2), generator=g)
    start = torch.tensor([len(s) for s in seqs])
    batched = model(nxt, cache=cache, slots=slots, start_pos=start).logits  # continuous batch: 2 new tokens per row
    for b, seq in enumerate(seqs):
        alone = model(torch.cat([seq, nxt[b]])[None]).logits[0, -2:]
        torch.testing.assert_close(batched[b], alone, atol=1e-5, rtol=1e-5)


def test_cache_errors_are_clear():
    model = _model()
    cache = LatentKVCache(model.config, num_slots=2, max_len=8)
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="exceed the cache length"):
        model(ids, cache=cache, slots=torch.arange(2), start_pos=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="slot index out of range"):
        model(ids, cache=cache, slots=torch.tensor([0, 2]), start_pos=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="own cache slot"):
        model(ids, cache=cache, slots=torch.tensor([1, 1]), start_pos=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="slots"):
        model(ids, cache=cache)


def test_softmax_scale_uses_yarn_mscale():
    cfg = _cfg(rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 32,
                             "mscale": 1.0, "mscale_all_dim": 1.0})  # fmt: skip
    m = 0.1 * math.log(40) + 1.0
    assert MLA(cfg, 0).softmax_scale == pytest.approx(cfg.qk_head_dim**-0.5 * m * m)


@torch.no_grad()
def test_logits_at_picks_each_rows_position():
    """Prefill computes the lm_head only where a prompt ends: same logits as the full output at those positions."""
    model = _model()
    ids = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(2))
    full = model(ids).logits
    at = torch.tensor([8, 0, 4])
    cache = LatentKVCache(model.config, num_slots=3, max_len=16)
    got = model(ids, cache=cache, slots=torch.arange(3), start_pos=torch.zeros(3, dtype=torch.long), logits_at=at)
    assert got.logits.shape == (3, 1, 300)
    torch.testing.assert_close(got.logits[:, 0], full[torch.arange(3), at], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="logits_at must index"):
        model(ids, logits_at=torch.tensor([9, 0, 0]))



@torch.no_grad()
def test_logits_at_several_positions_per_row():
    """logits_at [B, K] (lm-eval's continuation scoring): the full forward's logits at those K positions per row."""
    model = _model()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    full = model(ids).logits
    at = torch.tensor([[3, 4, 8], [0, 5, 5]])
    got = model(ids, logits_at=at).logits
    assert got.shape == (2, 3, 300)
    torch.testing.assert_close(got, full.gather(1, at[..., None].expand(2, 3, 300)), atol=1e-5, rtol=1e-5)
