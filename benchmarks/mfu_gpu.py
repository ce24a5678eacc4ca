"""Model FLOPs utilisation of the ~1 B MoE preset on one GPU, bf16: the figure that says how much of the GPU we use.

    python benchmarks/mfu_gpu.py                                        # moe-1b, bf16 autocast, 16 x 2048 tokens
    python benchmarks/mfu_gpu.py --compile --peak-tflops 989            # torch.compile; H100/H200 dense bf16 peak
    python benchmarks/mfu_gpu.py --config tiny --device cpu --steps 2   # the CPU path, to check the script runs

A step is the trainer's: forward with the MTP and sequence-balance losses, backward, gradient clipping, Muon + AdamW
(vernacular.train.build_optimizers) and the MoE routing-bias update, on random tokens (throughput does not depend on
the text). bf16 autocast over fp32 master weights, as `vernacular pretrain` runs on CUDA. A few warm-up steps (CUDA
kernels, allocator, compile), then the timed steps, synchronised. MFU = flops_per_token (vernacular.model.info:
6 x active non-embedding parameters + lm_head + attention, MTP included) x tokens/s / peak. The default peak is the
H100/H200 dense bf16 tensor-core figure (989 TFLOP/s, no sparsity); pass your GPU's with --peak-tflops.
Without a GPU (and without --device cpu) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="moe-1b", help="model preset or config file (default moe-1b)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the script on a laptop)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak dense bf16 TFLOP/s of the device (default 989: H100/H200 SXM)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    for name in ("batch_size", "seq_len", "steps", "peak_tflops"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: the GPU MFU was not measured. On a GPU machine run\n"
              "  python benchmarks/mfu_gpu.py --peak-tflops <your GPU's dense bf16 TFLOP/s>\n"
              "(or `--config tiny --device cpu --steps 2` to check the script here)")
        return 0

    from vernacular.model import ModelConfig, build_model, count_parameters, flops_per_token
    from vernacular.train import OptimConfig, build_optimizers

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(args.seed)
    config = ModelConfig.load(args.config)
    if args.seq_len > config.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds the config's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    model = build_model(config, seed=args.seed, device=device)
    model.train()
    optimizers = build_optimizers(model, OptimConfig(lr=args.lr))
    if args.compile:
        model.compile()  # in place: the module's forward is compiled, parameters and optimizers stay the same
    g = torch.Generator(device=device).manual_seed(args.seed)

    def step() -> float:
        batch = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), device=device, generator=g)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(batch[:, :-1], labels=batch[:, 1:])
        loss = out.main_loss
        if out.mtp_loss is not None:
            loss = loss + config.mtp_loss_weight * out.mtp_loss
        if out.balance_loss is not None and config.seq_aux_loss_weight > 0:
            loss = loss + config.seq_aux_loss_weight * out.balance_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.update_expert_bias()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step()
        print(f"warm-up step {i + 1}/{args.warmup}", file=sys.stderr, flush=True)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        print(f"step {i + 1}/{args.steps}: {times[-1] * 1e3:.1f} ms, loss {loss.item():.3f}", file=sys.stderr,
              flush=True)

    tokens = args.batch_size * args.seq_len
    step_s = sorted(times)[len(times) // 2]  # median: robust to a stray slow step
    tok_s = tokens / step_s
    fpt = flops_per_token(config, args.seq_len)
    mfu = fpt * tok_s / (args.peak_tflops * 1e12)
    params = count_parameters(config)
    result = {
        "config": str(args.config), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "bf16" if dtype is not None else "fp32", "compile": args.compile, "torch": torch.__version__,
        "total_params": params.total, "active_params": params.active, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "tokens_per_step": tokens, "warmup": args.warmup, "steps": args.steps,
        "step_s_median": step_s, "tokens_per_s": tok_s, "flops_per_token": fpt,
        "achieved_tflops": fpt * tok_s / 1e12, "peak_tflops": args.peak_tflops, "mfu": mfu,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(f"{args.config} on {result['device_name']} ({result['dtype']}{', compiled' if args.compile else ''}): "
          f"{params.total / 1e9:.2f} B total / {params.active / 1e9:.2f} B active, {tokens:,} tokens/step")
    print(f"  {step_s * 1e3:.1f} ms/step (median of {args.steps}), {tok_s:,.0f} tokens/s, "
          f"{result['achieved_tflops']:.1f} TFLOP/s achieved of {args.peak_tflops:g} peak")
    print(f"  MFU {100 * mfu:.1f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
