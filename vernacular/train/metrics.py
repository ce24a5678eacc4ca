"""What a run reports: JSONL step metrics, optional TensorBoard, MFU, and per-language validation bits-per-byte.

Bits per byte is the tokenizer-independent measure (a tokenizer that splits Maltese into more tokens cannot make
Maltese look easier): bpb = sum of token NLL in nats / ln 2 / UTF-8 bytes of the text those tokens encode. The bytes
come from the data stage's per-language metadata (val text bytes / val tokens), so every language is compared on
the same footing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vernacular.run import atomic_write_bytes



class MetricsLogger:
    """Appends one JSON object per line to metrics/train.jsonl and mirrors scalars to TensorBoard if asked."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: --tensorboard needs the `tensorboard` package (pip install tensorboard); "
                      "metrics still go to metrics/train.jsonl", file=sys.stderr, flush=True)
            else:
                self.tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """After a resume from `step`, drop the lines a killed run wrote past it, so the file reads as one run."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, step)
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self.tb.add_scalar(f"{key}/{sub}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float:
    """Peak FLOP/s for MFU: the user's figure, a known GPU's bf16 peak, or a measured fp32 matmul rate on CPU."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda":
        from vernacular.plan.hardware import accelerator  # the one accelerator table (planner, MFU, AI Act documents)

        try:
            return accelerator(torch.cuda.get_device_name(device)).peak_flops("bf16")
        except ValueError:
            return 312e12  # unknown GPU: an A100's peak; give --peak-tflops for a true figure
    # CPUs publish no single peak: time a large fp32 matmul, the best case the model's GEMMs can reach.
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, tokens_dir: Path, max_batches: int = 8, batch_size: int = 8,
                 seq_len: int = 256, langs: list[str] | None = None, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Validation bits per byte per language on the val shards (all ranks must call it together when distributed)."""
    from vernacular.data.loader import TokenLoader, bytes_per_token, languages

    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    meta = bytes_per_token(tokens_dir, split="val")
    for lang in langs or languages(tokens_dir, "val"):
        # A small language's validation text may hold fewer tokens than one window per rank: shorten its windows
        # rather than skip the language (short contexts only make its bpb slightly pessimistic).
        lang_seq_len = max(1, min(seq_len, meta[lang]["tokens"] // world_size - 1))
        loader = TokenLoader(tokens_dir, split="val", batch_size=batch_size, seq_len=lang_seq_len, rank=rank,
                             world_size=world_size, seed=0, lang=lang)
        batches = list(loader.iter_batches(max_batches))
        n = len(batches)
        if world_size > 1:  # FSDP needs every rank in every forward: run the same number of batches everywhere
            import torch.distributed as dist

            t = torch.tensor([n], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            n = int(t.item())
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # nll nats, tokens
        for batch in batches[:n]:
            batch = batch.to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(x).logits
            nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum",
                                  ignore_index=-100)
            sums[0] += nll.double()
            sums[1] += (y != -100).sum()
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        nats, tokens = sums.tolist()
        if tokens == 0:
            continue
        results[lang] = nats / math.log(2) / (tokens * meta[lang]["bytes_per_token"])
    model.train(was_training)
    return results
