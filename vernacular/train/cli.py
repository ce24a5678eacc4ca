"""`vernacular pretrain`: argument parsing only (stdlib at import time); the loop is vernacular.train.trainer.train."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory with data/tokens (and tokenizer/)")
    parser.add_argument("--config", default="tiny", help="model preset name or .toml/.json config (default: tiny)")
    add_loop_arguments(parser)


def add_loop_arguments(parser: argparse.ArgumentParser, batch_size: int = 8, seq_len: int = 256, lr: float = 3e-3,
                       warmup: int = 20, length_help: str = "", eval_points: int = 8) -> None:
    """The options of the shared training loop (length, batch, optimizer, schedule, checkpoints, system), with the
    defaults that differ between stages as parameters; `vernacular pretrain` and `vernacular sft` both use it."""
    length = parser.add_argument_group("length (give --steps, --minutes or both; the first reached stops the run)"
                                       + length_help)
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--minutes", type=float, default=None,
                        help="wall-clock budget of the training loop; then a final eval and checkpoint")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--batch-size", type=int, default=batch_size,
                       help=f"sequences per micro-batch per rank (default: {batch_size})")
    batch.add_argument("--seq-len", type=int, default=seq_len, help=f"tokens per sequence (default: {seq_len})")
    batch.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    batch.add_argument("--tokens-per-step", type=int, default=None,
                       help="global tokens per optimizer step; sets --grad-accum from batch, seq-len and world size")
    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=("muon", "adamw"), default="muon",
                     help="muon: Muon for hidden matrices + AdamW for the rest (default); adamw: AdamW for all")
    opt.add_argument("--lr", type=float, default=lr,
                     help=f"peak learning rate, shared by Muon and AdamW (default: {lr:g})")
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument("--momentum", type=float, default=0.95, help="Muon momentum (default: 0.95)")
    opt.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip, 0 disables (default: 1.0)")
    sched = parser.add_argument_group("schedule")
    sched.add_argument("--schedule", choices=("wsd", "cosine"), default="wsd")
    sched.add_argument("--warmup", type=int, default=warmup, help=f"warmup steps (default: {warmup})")
    sched.add_argument("--decay-frac", type=float, default=0.3, help="WSD: fraction of the run spent decaying")
    sched.add_argument("--decay-shape", choices=("linear", "1-sqrt", "cosine"), default="1-sqrt")
    sched.add_argument("--min-lr-ratio", type=float, default=0.0, help="final LR / peak LR (default: 0)")
    sched.add_argument("--mtp-weight", type=float, default=0.3, help="MTP loss weight early in the run (default 0.3)")
    sched.add_argument("--mtp-weight-late", type=float, default=0.1, help="MTP loss weight late (default 0.1)")
    sched.add_argument("--mtp-switch", type=float, default=0.7, help="run fraction where the MTP weight drops")
    io = parser.add_argument_group("evaluation and checkpoints")
    io.add_argument("--eval-every", "--val-every", dest="eval_every", type=int, default=0, metavar="N",
                    help="per-language validation bpb every N steps, into metrics/val.jsonl (default 0: off, "
                         "see --eval-points); always at the end")
    io.add_argument("--eval-points", type=int, default=eval_points, metavar="K",
                    help="validation at every 1/K of the run (of --steps or --minutes), so a curve has K points "
                         "whatever the speed (default: %(default)s; 0: off)")
    io.add_argument("--eval-batches", type=int, default=8, help="validation batches per language (default: 8)")
    io.add_argument("--eval-batch-size", type=int, default=None,
                    help="sequences per validation batch (default: --batch-size)")
    io.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    io.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep (default: 3)")
    io.add_argument("--resume", action="store_true", help="continue from the latest good checkpoint")
    io.add_argument("--tensorboard", action="store_true", help="also log to metrics/tensorboard (needs tensorboard)")
    sysg = parser.add_argument_group("system")
    sysg.add_argument("--distributed", choices=("ddp", "fsdp"), default=None,
                      help="under torchrun: DDP (default) or FSDP2 fully_shard")
    sysg.add_argument("--expert-parallel", type=int, default=1, metavar="N",
                      help="under torchrun: shard the routed experts over N ranks (all-to-all token dispatch) and the "
                           "rest with FSDP2; N divides the number of processes (default: 1, off)")
    sysg.add_argument("--compile", action="store_true", help="torch.compile the model")
    sysg.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                      help="autocast dtype; auto = bf16 on CUDA, fp32 on CPU (default)")
    sysg.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    sysg.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s per device for MFU")
    sysg.add_argument("--seed", type=int, default=0)
    sysg.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def config_from_args(args: argparse.Namespace, default_steps: int = 200):
    from .optim import OptimConfig
    from .schedule import ScheduleConfig
    from .trainer import TrainConfig

    steps, minutes = args.steps, args.minutes
    if steps is None and minutes is None:
        steps = default_steps
    return TrainConfig(
        model=getattr(args, "config", "tiny"), steps=steps, minutes=minutes, batch_size=args.batch_size, seq_len=args.seq_len,
        grad_accum=args.grad_accum, tokens_per_step=args.tokens_per_step,
        optim=OptimConfig(name=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum),
        schedule=ScheduleConfig(kind=args.schedule, warmup=args.warmup, decay_frac=args.decay_frac,
                                decay_shape=args.decay_shape, min_lr_ratio=args.min_lr_ratio,
                                mtp_weight=args.mtp_weight, mtp_weight_late=args.mtp_weight_late,
                                mtp_switch=args.mtp_switch),
        clip=args.clip, eval_every=args.eval_every, eval_points=args.eval_points, eval_batches=args.eval_batches,
        eval_batch_size=args.eval_batch_size, save_every=args.save_every,
        keep_last=args.keep_last, resume=args.resume, compile=args.compile, distributed=args.distributed,
        expert_parallel=args.expert_parallel,
        tensorboard=args.tensorboard, seed=args.seed, dtype=args.dtype, device=args.device,
        peak_tflops=args.peak_tflops, progress=not args.no_progress,
    )


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from vernacular.compliance.energy import measure_energy
    from vernacular.run import RunDir

    from .distributed import shutdown
    from .trainer import train

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        with measure_energy(RunDir(args.run_dir), "pretrain", enabled=rank == 0, world_size=world):
            result = train(args.run_dir, cfg)
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        bpb = result.get("val_bpb") or {}
        print(f"step {result['step']}  tokens {result['tokens']:,}  train loss {result['train_loss']:.4f}  "
              f"checkpoint {result['checkpoint']}")
        if bpb:
            print("validation bits per byte:")
            for lang, value in sorted(bpb.items()):
                print(f"  {lang}  {value:.4f}")
            print(f"  mean {result['val_bpb_mean']:.4f}")
    return 0
