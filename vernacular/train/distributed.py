"""Process groups and model wrapping for torchrun: DDP or FSDP2, kept out of the model (as torchtitan does).

The same `vernacular pretrain` command runs alone or under `torchrun --nproc_per_node N` (multi-node: add
`--nnodes`, `--rdzv-backend c10d --rdzv-endpoint HOST:PORT`). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we read them,
pick nccl on CUDA and gloo on CPU, and give every rank its own data slice.

- DDP replicates the model and all-reduces gradients. `broadcast_buffers=False`: the MoE routing bias is a buffer that
  every rank updates identically from globally all-reduced expert loads (see `all_reduce_expert_counts`), so
  overwriting it from rank 0 each forward would only cost time.
- FSDP2 (`fully_shard`) shards each decoder layer's parameters, gradients and optimizer state over the ranks (dim 0),
  then the root module; parameters become DTensors. Muon handles them (see optim.py).

- Expert parallelism (`--expert-parallel N`, vernacular/train/expert_parallel.py): routed experts sharded over N
  ranks, tokens dispatched to them by all-to-all, everything else FSDP2.

Checkpoints are always full, unsharded state dicts gathered to CPU on every rank and written by rank 0, so a checkpoint
from N ranks loads on any number of ranks, or in `transformers`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if there is one; choose the device (cuda:LOCAL_RANK, else cpu)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, mode: str | None, info: DistInfo, expert_parallel: int = 1) -> nn.Module:
    """DDP or FSDP2 around an already-built (and optionally compiled) model; identity on a single process.

    `expert_parallel` N > 1: routed experts sharded over N ranks with all-to-all token dispatch, the rest FSDP2
    (vernacular/train/expert_parallel.py); needs FSDP (mode None or "fsdp") and N dividing the world size."""
    if expert_parallel > 1:
        if mode not in (None, "fsdp"):
            raise ValueError(f"--expert-parallel shards the dense part with FSDP2: it cannot be combined with --distributed {mode}")
        if info.world_size % expert_parallel:
            raise ValueError(f"--expert-parallel {expert_parallel} needs a multiple of {expert_parallel} processes "
                             f"(torchrun --nproc_per_node), got {info.world_size}")
        from .expert_parallel import apply_expert_parallel

        return apply_expert_parallel(model, expert_parallel, info.world_size, info.device.type, _blocks(model))
    if not info.enabled:
        return model
    if mode is None:
        mode = "ddp"
    if mode not in MODES:
        raise ValueError(f"unknown --distributed {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Decoder layers (and MTP blocks): the units FSDP2 all-gathers one at a time."""
    blocks: list[nn.Module] = []
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is not None:
        blocks.extend(layers)
    mtp = getattr(model, "mtp", None)
    if mtp is not None:
        blocks.extend(mtp)
    return blocks


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside DDP (FSDP2 keeps the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_min_int(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_gather_json(obj, info: DistInfo) -> list:
    """Every rank's JSON-able object, as JSON bytes in tensors (all_gather_object would pickle)."""
    if not info.enabled:
        return [obj]
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(info.device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=info.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=info.device)
    padded[: data.numel()] = data
    chunks = [torch.empty(longest, dtype=torch.uint8, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(n.item())].cpu().tolist())) for c, n in zip(chunks, sizes)]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
