"""Optimizers: Muon for the hidden matrices, AdamW for everything else.

Muon (Keller Jordan, 2024; scaled up in Moonlight, Liu et al. 2025) replaces each matrix update by the nearest
semi-orthogonal matrix of its Nesterov momentum, computed with a few Newton–Schulz iterations. It only makes sense for
2-D weights that map hidden states to hidden states, so embeddings, the output head, norms, the MoE router and any bias
keep AdamW. Routed experts are stored stacked as [E, in, out] tensors: each expert is its own matrix, so Newton–Schulz
runs batched over the leading dimension. An expert's fused gate and up projections ([E, H, 2 * I]) are two matrices,
orthogonalised one by one like the dense MLP's gate_proj and up_proj (and at less than half the cost of one
[H, 2 * I] matrix: with Newton–Schulz on the whole stack, Muon took a third of a tiny-preset CPU step).

We follow Moonlight's update scale, 0.2 * sqrt(max(rows, cols)), which gives Muon updates the RMS of a typical AdamW
update, so both optimizers can share one learning rate and one schedule. Weight decay is decoupled (p *= 1 - lr * wd).

Under FSDP2 a parameter is a DTensor sharded on dim 0. For stacked experts every local shard still holds whole experts,
so Newton–Schulz runs on the local shard. A sharded 2-D matrix is gathered (DTensor.full_tensor), orthogonalised
redundantly on every rank and re-sliced locally: the same result as one process, at the cost of one all-gather per
matrix (the approach used by torchtitan's and Moonlight's distributed Muon prototypes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Quintic Newton–Schulz coefficients from Keller Jordan's Muon: they maximise the slope at zero so that 5 iterations
# push all singular values into roughly [0.7, 1.2], which is all the update needs.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of G (batched over any leading dims): U V^T of its SVD."""
    assert G.ndim >= 2, "Newton–Schulz needs a matrix"
    a, b, c = NS_COEFFS
    # bf16 is stable here and fast on GPUs (Keller Jordan); CPUs gain nothing from it, so stay in fp32 there.
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    transpose = G.size(-2) > G.size(-1)
    if transpose:  # iterate on the wide orientation: X @ X^T is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transpose:
        X = X.mT
    return X.to(G.dtype)


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _orthogonalise(update: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton–Schulz on a plain tensor or on an FSDP2-sharded DTensor (see the module docstring)."""
    if not _is_dtensor(update):
        return zeropower_via_newtonschulz5(update, steps)
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    local_whole_matrices = update.ndim >= 3 and all(
        not isinstance(pl, Shard) or pl.dim < update.ndim - 2 for pl in update.placements
    )
    if local_whole_matrices:  # sharded over experts only: every local slice is a set of complete matrices
        local = zeropower_via_newtonschulz5(update.to_local(), steps)
        return DTensor.from_local(local, update.device_mesh, update.placements, shape=update.shape, stride=update.stride())
    full = zeropower_via_newtonschulz5(update.full_tensor(), steps)
    # src_data_rank=None: every rank holds the same `full`, so each just keeps its own slice, no communication.
    return distribute_tensor(full, update.device_mesh, update.placements, src_data_rank=None)


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised update for matrices (2-D, or stacked 3-D treated as a batch of matrices)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0, scale: float = 0.2, fused: dict[int, int] | None = None):
        if lr < 0 or not 0 <= momentum < 1 or ns_steps < 1:
            raise ValueError(f"invalid Muon hyper-parameters: lr={lr} momentum={momentum} ns_steps={ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        scale=scale)
        super().__init__(params, defaults)
        # id(parameter) -> k: its last dim holds k matrices side by side (an expert's [gate | up]), each orthogonalised
        # on its own, as the dense MLP's separate gate_proj and up_proj are. Not state: build_optimizers sets it.
        self.fused = dict(fused or {})
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon only takes matrices, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)
                update = g.add(buf, alpha=mu) if group["nesterov"] else buf
                k = self.fused.get(id(p), 1)
                if k > 1:
                    update = torch.cat([_orthogonalise(u, group["ns_steps"]) for u in update.chunk(k, dim=-1)], dim=-1)
                else:
                    update = _orthogonalise(update, group["ns_steps"])
                rows, cols = p.shape[-2], p.shape[-1] // k
                # Moonlight: match AdamW's update RMS (~0.2) so one LR serves both optimizers.
                adjusted_lr = lr * group["scale"] * math.sqrt(max(rows, cols))
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-adjusted_lr)
        return loss


@dataclass
class OptimConfig:
    name: str = "muon"  # muon | adamw
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    momentum: float = 0.95
    ns_steps: int = 5


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort parameters into Muon matrices, decayed AdamW (embeddings, head) and undecayed AdamW (norms, router, biases).

    The MoE router (`*.mlp.gate.weight`) stays on AdamW: its rows are per-expert score vectors, not a hidden map, and
    orthogonalising them would equalise the experts' scores that the router must learn to separate.
    """
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "adamw_decay": [], "adamw_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_router = name.endswith("mlp.gate.weight")
        is_io = "embed_tokens" in name or "lm_head" in name
        if p.ndim >= 2 and not is_router and not is_io:
            groups["muon"].append((name, p))
        elif p.ndim >= 2 and is_io:
            groups["adamw_decay"].append((name, p))
        else:
            groups["adamw_no_decay"].append((name, p))
    return groups


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """One optimizer per algorithm; the trainer steps, schedules and checkpoints them as a list."""
    groups = split_parameters(model)
    if cfg.name == "adamw":
        decay = [p for _, p in groups["muon"] + groups["adamw_decay"]]
        adam_groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                       {"params": [p for _, p in groups["adamw_no_decay"]], "weight_decay": 0.0}]
        return [torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)]
    if cfg.name != "muon":
        raise ValueError(f"unknown optimizer {cfg.name!r}: choose muon or adamw")
    fused = {id(p): 2 for name, p in groups["muon"] if name.endswith("experts.gate_up_proj")}  # [E, H, gate | up]
    muon = Muon([p for _, p in groups["muon"]], lr=cfg.lr, momentum=cfg.momentum, ns_steps=cfg.ns_steps,
                weight_decay=cfg.weight_decay, fused=fused)
    adam_groups = [{"params": [p for _, p in groups["adamw_decay"]], "weight_decay": cfg.weight_decay},
                   {"params": [p for _, p in groups["adamw_no_decay"]], "weight_decay": 0.0}]
    adamw = torch.optim.AdamW([g for g in adam_groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return [muon, adamw]
