import math

import pytest
import torch
from torch import nn

from vernacular.train.optim import Muon, OptimConfig, build_optimizers, split_parameters, zeropower_via_newtonschulz5


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_newton_schulz_pushes_singular_values_near_one(shape):
    g = torch.Generator().manual_seed(0)
    k = min(shape)
    U, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=g))
    G = U @ torch.diag(torch.logspace(-1, 1, k)) @ V.T  # singular values spread over two decades
    S = torch.linalg.svdvals(zeropower_via_newtonschulz5(G))
    assert S.min() > 0.5 and S.max() < 1.3, S
    # same singular vectors as the exact polar factor U V^T
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = (zeropower_via_newtonschulz5(G) * (U @ Vh)).sum() / (U @ Vh).norm() ** 2
    assert cos > 0.8


def test_newton_schulz_is_batched_per_expert():
    G = torch.randn(4, 16, 40, generator=torch.Generator().manual_seed(1))
    batched = zeropower_via_newtonschulz5(G)
    for e in range(4):
        torch.testing.assert_close(batched[e], zeropower_via_newtonschulz5(G[e]), rtol=1e-5, atol=1e-6)


def test_muon_first_step_matches_the_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 24))
    w0 = w.detach().clone()
    g = torch.randn(8, 24)
    w.grad = g.clone()
    lr, wd, mu = 0.01, 0.1, 0.95
    Muon([w], lr=lr, momentum=mu, weight_decay=wd).step()
    nesterov = g + mu * g  # buffer = g after one step
    expected = w0 * (1 - lr * wd) - lr * 0.2 * math.sqrt(24) * zeropower_via_newtonschulz5(nesterov)
    torch.testing.assert_close(w.detach(), expected)


def test_muon_orthogonalises_fused_gate_and_up_one_by_one():
    """An expert stack [E, H, gate | up] takes the step the two halves would take as separate parameters."""
    torch.manual_seed(0)
    fused = nn.Parameter(torch.randn(3, 16, 2 * 24))
    fused.grad = torch.randn_like(fused)
    gate, up = (nn.Parameter(t.detach().clone()) for t in fused.chunk(2, dim=-1))
    gate.grad, up.grad = (g.clone() for g in fused.grad.chunk(2, dim=-1))
    whole = nn.Parameter(fused.detach().clone())
    whole.grad = fused.grad.clone()
    Muon([fused], lr=0.01, weight_decay=0.1, fused={id(fused): 2}).step()
    Muon([gate, up], lr=0.01, weight_decay=0.1).step()
    Muon([whole], lr=0.01, weight_decay=0.1).step()
    torch.testing.assert_close(fused.detach(), torch.cat([gate.detach(), up.detach()], dim=-1))
    assert not torch.allclose(whole, fused), "without `fused` the stack is one matrix per expert"


def test_muon_update_rms_matches_adamw_scale():
    """Moonlight's 0.2*sqrt(max(m,n)) scaling gives an update RMS of ~0.2*lr whatever the shape."""
    for shape in [(64, 256), (256, 64), (4, 64, 128)]:
        w = nn.Parameter(torch.zeros(*shape))
        w.grad = torch.randn(*shape)
        Muon([w], lr=1.0, momentum=0.0).step()
        rms = w.detach().pow(2).mean().sqrt().item()
        assert 0.12 < rms < 0.3, (shape, rms)


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="only takes matrices"):
        Muon([nn.Parameter(torch.zeros(5))])


def test_muon_fits_a_linear_map():
    torch.manual_seed(0)
    target = torch.randn(16, 16) / 4
    w = nn.Parameter(torch.zeros(16, 16))
    opt = Muon([w], lr=0.05)
    x = torch.randn(256, 16)
    losses = []
    for _ in range(60):
        loss = (x @ w - x @ target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_parameter_split_on_the_real_model():
    from vernacular.model import build_model

    model = build_model("tiny", seed=0)
    groups = split_parameters(model)
    muon = {n for n, _ in groups["muon"]}
    adam = {n for n, _ in groups["adamw_decay"] + groups["adamw_no_decay"]}
    assert not muon & adam and len(muon) + len(adam) == len(list(model.parameters()))
    assert "model.embed_tokens.weight" in adam and "lm_head.weight" in adam or model.config.tie_word_embeddings
    assert any(n.endswith("mlp.gate.weight") for n in adam), "router stays on AdamW"
    assert all("norm" not in n for n in muon)
    assert any(p.ndim == 3 for _, p in groups["muon"]), "stacked routed experts go to Muon"
    assert any("self_attn" in n for n in muon) and any("shared_experts" in n for n in muon)
    muon_opt, adamw = build_optimizers(model, OptimConfig(name="muon"))
    assert isinstance(muon_opt, Muon) and isinstance(adamw, torch.optim.AdamW)
    fused = {n for n, p in model.named_parameters() if id(p) in muon_opt.fused}
    assert fused and all(n.endswith("mlp.experts.gate_up_proj") for n in fused)
    (only,) = build_optimizers(model, OptimConfig(name="adamw"))
    assert sum(len(g["params"]) for g in only.param_groups) == len(list(model.parameters()))
