"""DeepSeekMoE: sigmoid router with group-limited top-k, auxiliary-loss-free bias balancing, grouped-matmul experts.

Routing follows transformers' DeepseekV3TopkRouter to the last detail (fp32 sigmoid scores; the bias only *selects*
experts; group score = sum of the top-2 biased scores in the group; weights from unbiased scores, normalised with a
1e-20 guard when `norm_topk_prob`, times `routed_scaling_factor`) so exported checkpoints give the same logits.

Dispatch: the N*k (token, expert) assignments are sorted by expert so every expert sees one contiguous block of rows,
then `torch._grouped_mm` runs all experts in one call (no Python loop over experts, no [N, E, H] tensor). Where
grouped_mm is unavailable for the device/dtype/shape, the same sorted rows are packed into an [E, capacity, H] buffer
and multiplied with one `torch.bmm`. Outputs are un-permuted and combined per token with one [N,1,k] x [N,k,H] bmm.
Every data movement is a gather in both forward and backward (custom autograd functions), never a scatter-add,
which on CPU is serial and was the largest non-matmul cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import MLP

_GROUPED_MM_OK: dict[tuple[str, torch.dtype], bool] = {}


def _grouped_mm_usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    # grouped_mm needs 16-byte aligned row strides
    if (x.shape[-1] * x.element_size()) % 16 or (w.shape[-1] * w.element_size()) % 16:
        return False
    return _GROUPED_MM_OK.get((x.device.type, x.dtype), True)


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
    """Rows of x [M, in] are sorted by expert (counts[e] rows for expert e); returns x_e @ w[e] for each block."""
    # Under torch.compile the fake-tensor kernel of _grouped_mm accepts only bf16 (torch 2.13), so a compiled fp32
    # model takes the bmm path; a trace-time error would not reach the except below.
    compiled_fp32 = torch.compiler.is_compiling() and x.dtype != torch.bfloat16
    if x.dtype == w.dtype and not compiled_fp32 and _grouped_mm_usable(x, w):
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        try:
            return torch._grouped_mm(x.contiguous(), w, offs=offs)
        except RuntimeError:
            _GROUPED_MM_OK[(x.device.type, x.dtype)] = False  # e.g. an accelerator without fp32 grouped_mm
    E, M = w.shape[0], x.shape[0]
    capacity = int(counts.max()) if M else 0
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(M, device=x.device) - starts[expert_of_row]
    buf = x.new_zeros(E, capacity, x.shape[1])
    buf[expert_of_row, pos] = x
    return torch.bmm(buf, w.to(x.dtype))[expert_of_row, pos]


class _GatherRows(torch.autograd.Function):
    """y = x[index] where every row of x is gathered exactly `k` times and `inverse` lists, row by row of x, where its
    k copies went. The backward is then a gather plus a sum over k (parallel and deterministic) instead of the
    scatter-add autograd would use for a general gather."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse).view(-1, ctx.k, grad.shape[-1]).sum(1), None, None, None


class _PermuteRows(torch.autograd.Function):
    """y = x[perm] for a permutation; backward is the inverse permutation (a gather, not a scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(perm)
        return x.index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (perm,) = ctx.saved_tensors
        return grad.index_select(0, perm), None, None


class Gate(nn.Module):
    """The router: weight [E, H] and the balancing bias [E] (fp32 buffer, updated outside autograd)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_experts = config.n_routed_experts
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.n_experts, config.hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] -> (weights [N, k] fp32, expert indices [N, k], sigmoid scores [N, E] fp32)."""
        with torch.autocast(x.device.type, enabled=False):  # routing decisions stay fp32 under autocast
            scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias
        if self.topk_group < self.n_group:
            grouped = choice.view(-1, self.n_group, self.n_experts // self.n_group)
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            group_idx = group_scores.topk(self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0).bool()
            choice = grouped.masked_fill(~group_mask[..., None], float("-inf")).view(-1, self.n_experts)
        indices = choice.topk(self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, indices, scores


class Experts(nn.Module):
    """Routed experts stacked for grouped matmul.

    Layout (input features first, so `x @ w[e]` needs no transpose; this is the TRANSPOSE of transformers'
    DeepseekV3Experts, whose tensors are [E, 2I, H] and [E, H, I]):
      gate_up_proj [E, H, 2*I]: columns [:I] are expert e's gate_proj.weight.T, columns [I:] its up_proj.weight.T
      down_proj    [E, I, H]:   expert e's down_proj.weight.T
    So per-expert HF weights are gate_proj.weight = gate_up_proj[e, :, :I].T, up_proj.weight = gate_up_proj[e, :, I:].T,
    down_proj.weight = down_proj[e].T.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, H, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.n_experts, self.intermediate = E, I
        self.gate_up_proj = nn.Parameter(torch.empty(E, H, 2 * I))
        self.down_proj = nn.Parameter(torch.empty(E, I, H))
        # Expert parallelism sets this to a callable (rows sorted by expert, counts per expert, compute) -> rows that
        # sends the rows to the ranks holding their experts, runs `compute` there and brings the results back.
        self.dispatcher = None

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H], indices/weights [N, k] -> sum_k weights * expert_k(x), [N, H]."""
        N, k = indices.shape
        flat = indices.reshape(-1)
        if torch.is_autocast_enabled(x.device.type):  # grouped_mm is not autocast-aware: cast by hand
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.dispatcher is None and flat.numel() < self.n_experts and not torch.is_grad_enabled():
            return self._forward_few(x, flat, weights, *self._weights(x.dtype))
        order = flat.argsort(stable=True)  # sorted row r holds assignment order[r] = (token order[r] // k, slot)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts = torch.bincount(flat, minlength=self.n_experts)
        xs = _GatherRows.apply(x, order // k, inverse, k)
        if self.dispatcher is None:
            y = self.compute(xs, counts)
        else:  # expert parallelism: the rows travel to their experts' ranks and back (vernacular/train/expert_parallel.py)
            y = self.dispatcher(xs, counts, self.compute)
        y = _PermuteRows.apply(y, order, inverse).view(N, k, -1)  # back to (token, slot) order
        return torch.bmm(weights.to(y.dtype)[:, None, :], y).squeeze(1)

    def compute(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The experts held here on rows sorted by expert: xs [M, H] with counts[e] rows for local expert e -> [M, H]."""
        w_gate_up, w_down = self._weights(xs.dtype)
        expert_of_row = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts,
                                                output_size=xs.shape[0])
        h = grouped_matmul(xs, w_gate_up, counts, expert_of_row)
        gate, up = h.split(self.intermediate, dim=-1)
        return grouped_matmul(F.silu(gate) * up, w_down, counts, expert_of_row)

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The local expert stacks as plain tensors (a DTensor under expert parallelism gives its local experts)."""
        ws = []
        for w in (self.gate_up_proj, self.down_proj):
            if hasattr(w, "to_local"):
                w = w.to_local()
            ws.append(w.to(dtype))
        return ws[0], ws[1]

    def _forward_few(self, x, flat, weights, w_gate_up, w_down) -> torch.Tensor:
        """Inference with fewer assignments than experts (batch decode): only the chosen experts run, instead of a
        grouped matmul that visits every expert (on CPU, one matmul per expert, even empty ones).

        On CPU each chosen expert is a matmul against a VIEW of its weights (the ids are read on the host, which costs
        nothing there): gathering the chosen weights first would copy megabytes per layer and step. Elsewhere the
        gather + bmm keeps the host out of the loop."""
        N, k = weights.shape
        I = self.intermediate
        if x.device.type == "cpu":
            experts, ws = flat.view(N, k).tolist(), weights.tolist()
            rows = []
            for n in range(N):
                xn, acc = x[n : n + 1], None
                for e, w in zip(experts[n], ws[n]):
                    h = torch.mm(xn, w_gate_up[e].to(x.dtype))
                    a = F.silu(h[:, :I]).mul_(h[:, I:])
                    down = w_down[e].to(x.dtype)
                    acc = torch.mm(a, down).mul_(w) if acc is None else torch.addmm(acc, a, down, alpha=w)
                rows.append(acc)
            return rows[0] if N == 1 else torch.cat(rows)
        xs = x.repeat_interleave(k, dim=0)[:, None]  # [N*k, 1, H]
        h = torch.bmm(xs, w_gate_up[flat].to(x.dtype))[:, 0]
        gate, up = h.split(I, dim=-1)
        y = torch.bmm((F.silu(gate) * up)[:, None], w_down[flat].to(x.dtype))[:, 0]
        return (y.view(N, k, -1) * weights[..., None].to(y.dtype)).sum(dim=1)


class MoE(nn.Module):
    """Routed experts + always-on shared experts; tracks expert load for the bias update."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_experts = config.n_routed_experts
        self.gate = Gate(config)
        self.experts = Experts(config)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts > 0
            else None
        )
        self.register_buffer("expert_counts", torch.zeros(self.n_experts, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, want_balance_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, H] -> (output [B, T, H], sequence-wise balance loss or None)."""
        B, T, H = x.shape
        flat = x.reshape(-1, H)
        weights, indices, scores = self.gate(flat)
        out = self.experts(flat, indices, weights).view(B, T, H)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        if self.training:
            with torch.no_grad():
                self.expert_counts += torch.bincount(indices.reshape(-1), minlength=self.n_experts).float()
        balance = self.sequence_balance_loss(scores.view(B, T, -1), indices.view(B, T, -1)) if want_balance_loss else None
        return out, balance

    def sequence_balance_loss(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """DeepSeek-V3 eq. 17-20: sum_i f_i * P_i per sequence, averaged over the batch.

        f_i = E / (k*T) * #tokens of the sequence routed to i (no gradient); P_i = mean over the sequence of the
        scores normalised over all experts (gradient flows into the router).
        """
        B, T, E = scores.shape
        with torch.no_grad():
            hits = torch.zeros(B, E, device=scores.device).scatter_add_(
                1, indices.reshape(B, -1), torch.ones(B, indices.shape[1] * indices.shape[2], device=scores.device)
            )
            f = hits * (E / (self.top_k * T))
        p = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)
        return (f * p).sum(dim=-1).mean()

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        """Auxiliary-loss-free balancing: push under-loaded experts up, over-loaded down, by a fixed step."""
        load = self.expert_counts
        if load.sum() > 0:
            self.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
        load.zero_()

    def load_ratio(self) -> float:
        """max / mean of the expert load since the last bias update (1.0 = perfectly balanced)."""
        mean = float(self.expert_counts.mean())
        return float(self.expert_counts.max()) / mean if mean > 0 else float("nan")
