"""Expert parallelism on CPU processes (gloo): step time and communication volume for EP = 1, 2, 4 at a fixed world.

    python benchmarks/expert_parallel.py                       # 4 processes, tiny preset, EP 1/2/4, 3 timed steps
    python benchmarks/expert_parallel.py --world 2 --eps 1 2 --steps 2

All runs use the same world size and global batch; EP=1 is plain FSDP2 over all ranks (`--distributed fsdp`), the
peer every EP layout is compared with (the step-time ratio EP/FSDP is printed). A step is the trainer's: forward +
backward, clip, Muon + AdamW, bias update. Communication per rank and step:
- all-to-all bytes MEASURED by the token dispatcher (rows actually sent to other ranks, dispatch + combine, forward;
  the backward sends the same amount again, so it is counted twice), next to the planner's estimate
  (`vernacular.model.info.communication_bytes`, the number `vernacular plan` uses; scaled from its bf16 activations to
  the fp32 of this CPU run);
- FSDP2 all-gather + reduce-scatter bytes from the planner's formula (the collectives themselves are torch's).
On a CPU the gloo all-to-all goes through loopback TCP, so this measures volumes and overheads, not GPU speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(rank: int, world: int, eps: list[int], args: argparse.Namespace, init: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from vernacular.model import build_model
    from vernacular.train.distributed import DistInfo, wrap_model
    from vernacular.train.expert_parallel import clip_grad_norm_, dispatched_bytes
    from vernacular.train.optim import OptimConfig, build_optimizers
    from vernacular.train.trainer import _sync_expert_counts

    info = DistInfo(rank=rank, world_size=world)
    results = []
    for ep in eps:
        model = wrap_model(build_model(args.config, seed=0), "fsdp", info, expert_parallel=ep)
        model.train()
        optimizers = build_optimizers(model, OptimConfig())
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(rank)
        times, sent = [], []
        for step in range(args.warmup + args.steps):
            batch = torch.randint(0, vocab, (args.batch_size, args.seq_len + 1), generator=g)
            before = dispatched_bytes(model)
            torch.distributed.barrier()
            t0 = time.perf_counter()
            model(batch[:, :-1], labels=batch[:, 1:]).loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync_expert_counts(model, info)
            model.update_expert_bias()
            torch.distributed.barrier()
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
                sent.append(2 * (dispatched_bytes(model) - before))  # forward measured; backward sends as much
        step_s = torch.tensor([statistics.median(times)])
        a2a = torch.tensor([statistics.mean(sent)], dtype=torch.float64)
        torch.distributed.all_reduce(step_s, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(a2a)
        results.append({"ep": ep, "step_s": float(step_s), "a2a_bytes_per_rank": float(a2a) / world})
        del model, optimizers
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=4, help="CPU processes (default 4)")
    parser.add_argument("--eps", type=int, nargs="+", default=[1, 2, 4], help="expert-parallel degrees (1 = FSDP)")
    parser.add_argument("--config", default="tiny", help="model preset (default tiny: 16 experts, top-4)")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per rank (default 2)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from vernacular.model import ModelConfig
    from vernacular.model.info import ACT_BYTES, Layout, arch_spec, communication_bytes

    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "results.json")
        mp.spawn(_worker, args=(args.world, args.eps, args, os.path.join(tmp, "init"), result_file),
                 nprocs=args.world, join=True)
        rows = json.loads(Path(result_file).read_text())

    spec = arch_spec(ModelConfig.load(args.config))
    tokens = args.world * args.batch_size * args.seq_len
    base = next((r["step_s"] for r in rows if r["ep"] == 1), None)
    print(f"{args.world} CPU processes (gloo, 1 thread each), preset {args.config}, {tokens} tokens per step, "
          f"torch {torch.__version__}")
    print(f"{'EP':>3} {'step s':>8} {'vs FSDP':>8} {'a2a MB/rank':>12} {'planner a2a':>12} {'FSDP MB/rank':>13}")
    for r in rows:
        plan = communication_bytes(spec, Layout(dp=args.world, ep=r["ep"]), args.seq_len, tokens)
        r["planner_a2a_bytes_fp32"] = plan["ep"] * 4 / ACT_BYTES
        r["planner_fsdp_bytes"] = plan["fsdp"]
        r["vs_fsdp"] = r["step_s"] / base if base else None
        ratio = f"{r['vs_fsdp']:.2f}x" if base else "-"
        print(f"{r['ep']:>3} {r['step_s']:>8.3f} {ratio:>8} {r['a2a_bytes_per_rank'] / 1e6:>12.2f} "
              f"{r['planner_a2a_bytes_fp32'] / 1e6:>12.2f} {r['planner_fsdp_bytes'] / 1e6:>13.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"world": args.world, "config": args.config, "tokens_per_step": tokens,
                                              "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
