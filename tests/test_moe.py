"""MoE routing and dispatch against a naive per-token reference written from DeepSeek-V3's equations."""

import pytest
import torch
import torch.nn.functional as F

from vernacular.model import ModelConfig
from vernacular.model.moe import MoE, grouped_matmul


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(
        hidden_size=32, moe_intermediate_size=16, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
        n_shared_experts=1, routed_scaling_factor=2.5, num_hidden_layers=2, first_k_dense_replace=1,
    )  # fmt: skip
    base.update(kw)
    return ModelConfig.load("tiny", **base)


def _moe(cfg, seed=0):
    torch.manual_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
        moe.gate.e_score_correction_bias.normal_(0, 0.1)
    return moe


def _reference(moe: MoE, cfg: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    """One token at a time, straight from the paper: sigmoid, group-limited top-k on biased scores, SwiGLU experts."""
    E, I, G = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.n_group
    out = []
    for t in range(x.shape[0]):
        s = torch.sigmoid(moe.gate.weight.float() @ x[t].float())
        b = s + moe.gate.e_score_correction_bias
        groups = b.view(G, E // G)
        gscore = torch.stack([g.sort(descending=True).values[:2].sum() for g in groups])
        keep = set(gscore.argsort(descending=True)[: cfg.topk_group].tolist())
        allowed = torch.tensor([(e // (E // G)) in keep for e in range(E)])
        chosen = b.masked_fill(~allowed, float("-inf")).argsort(descending=True)[: cfg.num_experts_per_tok]
        w = s[chosen]
        if cfg.norm_topk_prob:
            w = w / w.sum()
        w = w * cfg.routed_scaling_factor
        y = torch.zeros_like(x[t])
        for e, we in zip(chosen.tolist(), w):
            gate_w, up_w = moe.experts.gate_up_proj[e, :, :I], moe.experts.gate_up_proj[e, :, I:]
            y = y + we * ((F.silu(x[t] @ gate_w) * (x[t] @ up_w)) @ moe.experts.down_proj[e])
        out.append(y + moe.shared_experts(x[t]))
    return torch.stack(out)


@pytest.mark.parametrize("kw", [{}, {"n_group": 1, "topk_group": 1}, {"norm_topk_prob": False, "n_group": 8}])
def test_moe_matches_per_token_reference(kw):
    cfg = _cfg(**kw)
    moe = _moe(cfg).eval()
    x = torch.randn(2, 24, cfg.hidden_size)
    out, bal = moe(x)
    assert bal is None
    ref = _reference(moe, cfg, x.view(-1, cfg.hidden_size)).view_as(out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_moe_gradients_match_reference():
    cfg = _cfg()
    moe = _moe(cfg).eval()
    x = torch.randn(20, cfg.hidden_size, requires_grad=True)
    g = torch.randn(20, cfg.hidden_size)
    (moe(x[None])[0][0] * g).sum().backward()
    fast = [x.grad.clone()] + [p.grad.clone() for p in moe.parameters()]
    x.grad = None
    moe.zero_grad()
    (_reference(moe, cfg, x) * g).sum().backward()
    slow = [x.grad] + [p.grad for p in moe.parameters()]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_grouped_matmul_fallback_and_empty_groups():
    torch.manual_seed(0)
    E = 5
    for d_in, d_out in [(8, 12), (6, 10)]:  # 16-byte aligned (grouped_mm) and not (padded bmm fallback)
        counts = torch.tensor([3, 0, 4, 1, 0])
        expert = torch.repeat_interleave(torch.arange(E), counts)
        x, w = torch.randn(int(counts.sum()), d_in), torch.randn(E, d_in, d_out)
        ref = torch.stack([x[i] @ w[expert[i]] for i in range(len(x))])
        torch.testing.assert_close(grouped_matmul(x, w, counts, expert), ref)


def test_compiled_fp32_moe_matches_eager():
    """`pretrain --compile` on a CPU in fp32: _grouped_mm's fake-tensor kernel takes only bf16, so tracing it failed."""
    cfg = _cfg()
    moe = _moe(cfg).eval()
    x = torch.randn(2, 24, cfg.hidden_size)
    torch._dynamo.reset()
    out = torch.compile(moe, backend="eager")(x)[0]
    torch.testing.assert_close(out, moe(x)[0])


def test_bf16_forward_close_to_fp32():
    cfg = _cfg()
    moe = _moe(cfg).eval()
    x = torch.randn(1, 32, cfg.hidden_size)
    ref, _ = moe(x)
    moe16 = _moe(cfg).eval()
    moe16.experts.bfloat16()
    moe16.shared_experts.bfloat16()
    out, _ = moe16(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_load_counting_and_bias_update():
    cfg = _cfg()
    moe = _moe(cfg)
    with torch.no_grad():
        moe.gate.e_score_correction_bias.zero_()
        moe.gate.weight[0] += 3.0  # expert 0 is chosen by almost every token
    x = torch.randn(4, 32, cfg.hidden_size).abs()
    moe.eval()
    moe(x)
    assert moe.expert_counts.sum() == 0  # only training counts
    moe.train()
    moe(x)
    counts = moe.expert_counts.clone()
    assert counts.sum() == x.shape[0] * x.shape[1] * cfg.num_experts_per_tok
    assert moe.load_ratio() == pytest.approx(float(counts.max() / counts.mean()))
    moe.update_bias(0.01)
    bias = moe.gate.e_score_correction_bias
    expected = 0.01 * torch.sign(counts.mean() - counts)
    torch.testing.assert_close(bias, expected)
    assert bias[0] < 0 and moe.expert_counts.sum() == 0


def test_sequence_balance_loss_formula_and_gradient():
    cfg = _cfg()
    moe = _moe(cfg).train()
    x = torch.randn(3, 10, cfg.hidden_size)
    _, bal = moe(x, want_balance_loss=True)
    E, K, T = cfg.n_routed_experts, cfg.num_experts_per_tok, 10
    expected = []
    for b in range(3):
        _, idx, s = moe.gate(x[b])
        f = torch.bincount(idx.reshape(-1), minlength=E).float() * E / (K * T)
        p = (s / s.sum(-1, keepdim=True)).mean(0)
        expected.append((f * p).sum())
    torch.testing.assert_close(bal, torch.stack(expected).mean())
    bal.backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.experts.gate_up_proj.grad is None  # the balance loss only trains the router


def test_autocast_runs_experts_in_bf16_and_routes_in_fp32():
    cfg = _cfg()
    moe = _moe(cfg).eval()
    x = torch.randn(1, 32, cfg.hidden_size)
    ref, _ = moe(x)
    _, ref_idx, _ = moe.gate(x[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, idx, scores = moe.gate(x[0])
        y = moe.experts(x[0], idx, torch.ones(32, cfg.num_experts_per_tok))
        out, _ = moe(x)
    assert scores.dtype == torch.float32 and torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    assert y.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


@torch.no_grad()
def test_decode_path_with_fewer_assignments_than_experts():
    cfg = _cfg()
    moe = _moe(cfg).eval()
    x = torch.randn(1, 3, cfg.hidden_size)  # 3 tokens * top-4 < 16 experts: gathered-weights bmm path
    out, _ = moe(x)
    torch.testing.assert_close(out, _reference(moe, cfg, x[0])[None], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_tokens", [1, 3])
@torch.no_grad()
def test_decode_fast_path_matches_reference(n_tokens):
    """Fewer (token, expert) assignments than experts at inference: only the chosen experts run (decode path)."""
    cfg = _cfg()
    moe = _moe(cfg).eval()
    x = torch.randn(1, n_tokens, cfg.hidden_size)
    assert n_tokens * cfg.num_experts_per_tok < cfg.n_routed_experts
    out, _ = moe(x)
    torch.testing.assert_close(out[0], _reference(moe, cfg, x[0]), atol=1e-5, rtol=1e-5)
