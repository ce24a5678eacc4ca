"""Expert parallelism (EP) on torch.distributed: routed experts spread over ranks, tokens travel to them by all-to-all.

Layout (as torchtitan's DeepSeek-V3, learnt from, not copied): the W ranks form a 2-D DeviceMesh
`(dp_mod_ep = W / N, ep = N)`. Every rank still reads its own slice of the batch (data parallel over all W ranks).

- Routed experts: each stacked expert tensor ([E, in, out]) is a DTensor sharded `Shard(0)` over the `ep` dimension, so
  an EP rank holds E / N whole experts. On top, FSDP2 shards those local experts over `dp_mod_ep` (the ranks that hold
  the same experts) and reduces their gradients there.
- Everything else (attention, shared experts, dense MLPs, router, embeddings, norms, head) is FSDP2 over all W ranks, as
  `--distributed fsdp` without EP.

Forward of one MoE layer on one rank (`TokenDispatcher`): the router runs locally on the rank's own tokens; the
(token, expert) rows, already sorted by expert id in `Experts.forward`, are contiguous per destination rank (experts
e*N/E.. live on rank e // (E/N)). One small all-to-all exchanges the per-expert row counts; then
`all_to_all_single` with those variable split sizes sends the rows, the local experts run a grouped matmul on the rows
regrouped by local expert, and a second all-to-all with the split sizes swapped brings the results home, where
`Experts.forward` un-sorts and weights them. Both all-to-alls are differentiable (their backward is the reverse
all-to-all), so the gradient of a local expert is the sum over every EP rank's tokens that visited it.

Gradient scale: each rank's loss is the mean over its own tokens and the global loss the mean over ranks, so the dense
FSDP reduction averages over W. An expert's gradient arrives summed over the N ranks of its EP group (through the
all-to-all backward) and FSDP then averages it over the W / N ranks of `dp_mod_ep`; the dispatcher scales the local
experts' weight gradients by 1 / N (and only those: the rows' own gradient is scaled back), so the result is the mean
over all W ranks, the same gradient as one process on the global batch. (torchtitan sets FSDP's gradient divide factor
instead, which needs NCCL's PREMUL_SUM; gloo has none.)

Muon orthogonalises the expert stacks per expert; every rank holds whole experts, so it runs on the local shard
(vernacular/train/optim.py). The routing bias update already uses the global load: the per-expert counts are made on
each rank from its own routing decisions and all-reduced over all ranks before the update (trainer `_sync_expert_counts`).

Checkpoints: `get_model_state_dict(full_state_dict=True)` gathers every DTensor to the full [E, in, out] stacks, the
same layout as one process; loading distributes a full state dict onto whatever mesh the run has. So a checkpoint moves
freely between EP=N, EP=1, FSDP, DDP and one process, and `vernacular export hf` reads it unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from vernacular.model.moe import Experts, _PermuteRows


class _AllToAll(torch.autograd.Function):
    """Rows of x [M, H] split by `in_splits` go to the ranks of `group`; rows from them arrive split by `out_splits`.
    The backward is the same exchange in reverse (torch.distributed.all_to_all_single, variable split sizes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), x.shape[1])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), grad.shape[1])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `scale`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class TokenDispatcher:
    """The `Experts.dispatcher` of one rank: send rows to their experts' EP ranks, compute, bring them back.

    `group` is the EP process group of this rank (N ranks holding E / N consecutive experts each)."""

    def __init__(self, group: dist.ProcessGroup, n_experts: int):
        self.group = group
        self.size = dist.get_world_size(group)
        if n_experts % self.size:
            raise ValueError(f"{n_experts} routed experts do not split over an expert-parallel group of {self.size}")
        self.local = n_experts // self.size
        self.bytes_sent = 0  # activation bytes this rank sent to other ranks (both directions, forward only)

    def __call__(self, xs: torch.Tensor, counts: torch.Tensor,
                 compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """xs [M, H] rows sorted by global expert id, counts [E] rows per expert -> expert outputs [M, H], same order."""
        n, local = self.size, self.local
        send_counts = counts.view(n, local)  # row j: how many rows go to each expert of EP rank j
        recv_counts = torch.empty_like(send_counts)  # row i: how many rows rank i sends to each of my experts
        dist.all_to_all_single(recv_counts, send_counts.contiguous(), group=self.group)
        in_splits = send_counts.sum(1).tolist()
        out_splits = recv_counts.sum(1).tolist()
        rank = dist.get_rank(self.group)
        self.bytes_sent += (sum(in_splits) - in_splits[rank] + sum(out_splits) - out_splits[rank]) * xs.shape[1] * \
            xs.element_size()

        received = _AllToAll.apply(xs, out_splits, in_splits, self.group)
        # received rows come grouped by (source rank, local expert); the grouped matmul wants them by local expert
        expert_of_row = torch.repeat_interleave(torch.arange(local, device=xs.device).repeat(n),
                                                recv_counts.reshape(-1), output_size=received.shape[0])
        order = expert_of_row.argsort(stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        # the local experts' weight gradients sum over the N ranks' tokens: scale them by 1 / N (see the module doc);
        # the gradient of the rows themselves is restored by the factor N on the way in (exact: N is a power of 2
        # in practice, and any N only rounds once)
        rows = _ScaleGrad.apply(_PermuteRows.apply(received, inverse, order), float(n))
        y = _ScaleGrad.apply(compute(rows, recv_counts.sum(0)), 1.0 / n)
        y = _PermuteRows.apply(y, order, inverse)  # back to (source rank, local expert) order
        return _AllToAll.apply(y, in_splits, out_splits, self.group)


def experts_modules(model: nn.Module) -> list[Experts]:
    return [m for m in model.modules() if isinstance(m, Experts)]


def apply_expert_parallel(model: nn.Module, ep: int, world_size: int, device_type: str,
                          blocks: list[nn.Module]) -> nn.Module:
    """Shard routed experts over `ep` ranks (EP x FSDP2) and the rest with FSDP2 over all ranks; in place.

    `blocks` are the decoder layers / MTP blocks (the dense FSDP units). Raises ValueError when `ep` does not divide
    the world size or the number of routed experts."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    if ep < 1 or world_size % ep:
        raise ValueError(f"--expert-parallel {ep} must divide the number of processes ({world_size})")
    experts = experts_modules(model)
    if not experts:
        raise ValueError("--expert-parallel needs a model with routed experts (MoE layers)")
    mesh = init_device_mesh(device_type, (world_size // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))
    dense_mesh = init_device_mesh(device_type, (world_size,), mesh_dim_names=("dp",))
    for m in experts:
        dispatcher = TokenDispatcher(mesh["ep"].get_group(), m.n_experts)
        for name in ("gate_up_proj", "down_proj"):
            # every rank built the same seeded model: keep the local slice, nothing to send (src_data_rank=None)
            full = getattr(m, name)
            setattr(m, name, nn.Parameter(distribute_tensor(full.data, mesh["ep"], [Shard(0)], src_data_rank=None)))
        m.dispatcher = dispatcher
        fully_shard(m, mesh=mesh["dp_mod_ep"])
    for block in blocks:
        fully_shard(block, mesh=dense_mesh)
    fully_shard(model, mesh=dense_mesh)
    return model


def dispatched_bytes(model: nn.Module) -> int:
    """Activation bytes this rank has sent through expert-parallel all-to-alls (forward), summed over MoE layers."""
    return sum(m.dispatcher.bytes_sent for m in experts_modules(model) if isinstance(m.dispatcher, TokenDispatcher))


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm) that also takes gradients on different meshes (EP experts next to FSDP
    weights cannot be stacked into one DTensor). Every rank holds a disjoint shard of every such gradient, so the
    squared norm is one all-reduce of the local sums of squares. Returns the total norm (a plain tensor)."""
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    meshes = {id(p.grad.device_mesh) for p in params if isinstance(p.grad, DTensor)}
    if len(meshes) <= 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sharded = all(isinstance(p.grad, DTensor) and not any(pl.is_replicate() or pl.is_partial() for pl in p.grad.placements)
                  for p in params)
    if not sharded:
        raise ValueError("clip_grad_norm_ over several meshes needs every gradient sharded (FSDP2 / expert parallel)")
    local = [p.grad.to_local() for p in params]
    squares = torch.stack([n.float() for n in torch._foreach_norm(local)]).square().sum()
    dist.all_reduce(squares)
    total = squares.sqrt()
    # as torch.nn.utils.clip_grads_with_norm_, on the local shards (its foreach kernels refuse mixed meshes)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(local, coef.to(local[0].dtype))
    return total
