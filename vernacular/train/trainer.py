"""The training loop: `fit(run, cfg, stage)`, shared by pretraining (`train(run_dir, cfg)`, used by `vernacular pretrain`
and `vernacular speedrun`) and chat fine-tuning (`vernacular.sft`); a `Stage` supplies what differs between them.

Shape of a step (nanoGPT / torchtitan style): `grad_accum` micro-batches forward+backward (gradient sync only on the
last), clip, one step of each optimizer (Muon + AdamW), then the MoE routing-bias update from the step's global expert
loads, then logging, evaluation and checkpointing at their intervals.

Exact resume is a design constraint, not a test trick: the LR and MTP weight are pure functions of (step, progress),
the data position and every RNG are in the checkpoint, optimizer tensors are saved bit for bit, and nothing reads the
clock in step mode. So a run killed at any point and resumed from its last checkpoint produces the same losses, bit for
bit on CPU, as one that never stopped. A time budget (`--minutes`) is by nature not reproducible: there the progress
is elapsed/budget (carried over through resumes) and the run stops when the budget is spent, then evaluates and saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vernacular.run import RunDir, write_json

from . import checkpoint as ckpt
from .distributed import (DistInfo, all_gather_json, all_reduce_mean, all_reduce_sum, barrier, init_distributed,
                          unwrap, wrap_model)
from .expert_parallel import clip_grad_norm_
from .metrics import MetricsLogger, evaluate_bpb, peak_flops
from .optim import OptimConfig, build_optimizers
from .schedule import ScheduleConfig, lr_factor, mtp_weight

LOAD_LOG_EVERY = 25  # steps between per-expert load records in the metrics (the heatmap in report.md)


@dataclass
class TrainConfig:
    model: Any = "tiny"  # preset name, config path, dict or ModelConfig
    steps: int | None = None  # optimizer steps; with `minutes` the run stops at whichever comes first
    minutes: float | None = None  # wall-clock budget for the training loop (final eval + checkpoint come after)
    batch_size: int = 8  # sequences per micro-batch per rank
    seq_len: int = 256
    grad_accum: int = 1
    tokens_per_step: int | None = None  # if set, grad_accum = tokens_per_step / (batch_size * seq_len * world_size)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip: float = 1.0
    eval_every: int = 0  # validation every N optimizer steps (0: off; see eval_points)
    eval_points: int = 0  # validation at each 1/eval_points of the run's progress (0: off; CLI default 8)
    eval_batches: int = 8  # val batches per language
    eval_batch_size: int | None = None  # sequences per val batch (default: batch_size)
    save_every: int = 0  # 0: save only at the end
    keep_last: int = 3
    resume: bool = False
    compile: bool = False
    distributed: str | None = None  # ddp | fsdp (only under torchrun)
    expert_parallel: int = 1  # N > 1: routed experts sharded over N ranks (all-to-all dispatch), the rest FSDP2
    tensorboard: bool = False
    seed: int = 0
    dtype: str = "auto"  # auto | fp32 | bf16 (autocast)
    device: str = "auto"
    peak_tflops: float | None = None  # for MFU; default: known GPU peak, or a measured matmul rate on CPU
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if isinstance(self.schedule, dict):
            self.schedule = ScheduleConfig(**self.schedule)
        if self.steps is None and self.minutes is None:
            raise ValueError("give a training length: steps or minutes (or both)")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        for name in ("batch_size", "seq_len", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.expert_parallel < 1:
            raise ValueError(f"expert_parallel must be positive, got {self.expert_parallel}")
        for name in ("eval_every", "eval_points"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_batches <= 0 or (self.eval_batch_size is not None and self.eval_batch_size <= 0):
            raise ValueError("eval_batches and eval_batch_size must be positive")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.model, (str, dict)):
            d["model"] = self.model.to_dict() if hasattr(self.model, "to_dict") else str(self.model)
        return d


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA; on CPU fp32 unless asked (bf16 autocast measured slower on CPUs without AMX: docs)."""
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _tokenizer_vocab_size(run: RunDir) -> int | None:
    path = run.tokenizer / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab_size()


def _resolve_model_config(cfg: TrainConfig, run: RunDir, resume_state: dict | None):
    from vernacular.model import ModelConfig

    if resume_state is not None:  # the checkpoint's architecture wins: its weights only fit that shape
        return ModelConfig.from_dict(resume_state["model_config"])
    config = ModelConfig.load(cfg.model)
    vocab = _tokenizer_vocab_size(run)
    if vocab is not None and vocab != config.vocab_size:
        print(f"model vocab_size {config.vocab_size} -> {vocab} to match {run.tokenizer / 'tokenizer.json'}",
              file=sys.stderr, flush=True)
        config = ModelConfig.from_dict({**config.to_dict(), "vocab_size": vocab})
    return config


def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def _sync_expert_counts(model: torch.nn.Module, info: DistInfo) -> None:
    """Make each rank's per-expert token counts the global ones, so every rank applies the same bias update."""
    if not info.enabled:
        return
    counts = [b for name, b in model.named_buffers() if name.endswith("expert_counts")]
    if counts:
        flat = torch.cat([c.reshape(-1).float() for c in counts])
        all_reduce_sum(flat, info)
        offset = 0
        for c in counts:
            c.copy_(flat[offset: offset + c.numel()].view_as(c).to(c.dtype))
            offset += c.numel()


@dataclass
class Stage:
    """What one training stage puts into the shared loop (`fit`): where its checkpoints and metrics go, its model, its
    data and its evaluation. Pretraining (`train`) and chat fine-tuning (`vernacular.sft`) are two Stages.

    - `model_config(resume_state)`: the ModelConfig to build (resume_state is the checkpoint's state.json or None).
    - `init_weights()`: a full model state dict to start from (fine-tuning: weights only, fresh optimizer), or None
      for the seeded random init. Not called when resuming.
    - `make_loader(info, resume_state)`: the rank's batch source, restored from resume_state when given; its
      `next_batch()` returns a [B, T+1] token tensor (next-token prediction) or a dict of model inputs
      (`input_ids`, `labels`, optional `position_ids`), and it has `state_dict()` / `load_state_dict()`.
    - `evaluate(model, info, autocast_dtype)`: validation metrics to log, e.g. {"val_bpb": {...}, "val_bpb_mean": x}.
    """

    name: str
    checkpoints: Path
    metrics: Path  # JSONL, one line per step and per evaluation
    result: Path  # final JSON
    model_config: Callable[[dict | None], Any]
    make_loader: Callable[[DistInfo, dict | None], Any]
    evaluate: Callable[[torch.nn.Module, DistInfo, torch.dtype | None], dict[str, Any]]
    init_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    record: dict[str, Any] = field(default_factory=dict)  # extra entries of the stage's run.toml table
    eval_at_start: bool = False  # also evaluate (and log at step 0) before the first step of a fresh run
    val_metrics: Path | None = None  # JSONL of the validation passes (default: into `metrics` with the steps)
    supervised_logits_only: bool = False  # the LM head only where labels are set (`Transformer.forward`)


def train(run_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Pretrain on RunDir(run_dir)'s token shards; returns the final metrics (also in metrics/val.json).

    Writes metrics/train.jsonl (one record per step, with `epochs`: passes over the train windows so far) and
    metrics/val.jsonl (one record per validation pass: step, tokens, epochs, mean main loss of the steps since the
    previous pass, per-language validation bits per byte and their mean), every `eval_every` steps, at every
    1/`eval_points` of the run's progress, and at the end."""
    from vernacular.data.loader import TokenLoader, languages

    run = RunDir(run_dir)
    tokens_dir = run.require(run.tokens, "data")

    def make_loader(info: DistInfo, resume_state: dict | None):
        loader = TokenLoader(tokens_dir, split="train", batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                             rank=info.rank, world_size=info.world_size, seed=cfg.seed)
        if resume_state is not None:
            states = resume_state["loader"]
            if len(states) == info.world_size:
                loader.load_state_dict(states[info.rank])
            else:
                loader.load_state_dict(_reshard_loader_state(states, info))
        return loader

    val_langs = languages(tokens_dir, "val")

    def evaluate(model: torch.nn.Module, info: DistInfo, autocast_dtype: torch.dtype | None) -> dict[str, Any]:
        val = evaluate_bpb(model, tokens_dir, max_batches=cfg.eval_batches,
                           batch_size=cfg.eval_batch_size or cfg.batch_size, seq_len=cfg.seq_len, langs=val_langs, device=info.device, autocast_dtype=autocast_dtype,
                           rank=info.rank, world_size=info.world_size)
        return {"val_bpb": val, "val_bpb_mean": _mean(val)}

    stage = Stage(name="pretrain", checkpoints=run.checkpoints, metrics=run.train_metrics,
                  result=run.val_final, val_metrics=run.val_metrics,
                  model_config=lambda resume_state: _resolve_model_config(cfg, run, resume_state),
                  make_loader=make_loader, evaluate=evaluate)
    return fit(run, cfg, stage)


def fit(run: RunDir, cfg: TrainConfig, stage: Stage) -> dict[str, Any]:
    """The training loop shared by every stage (see the module doc); returns the final metrics (also in
    `stage.result`): step, tokens, train_loss, the stage's validation metrics, elapsed_s, checkpoint."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    from tqdm import tqdm

    from vernacular.model import build_model
    from vernacular.model.info import flops_per_token

    info = init_distributed(cfg.device)
    _seed_everything(cfg.seed)

    # ---- resume point (every rank reads the same files; rank 0 alone prints warnings) ----
    resume_path = resume_state = None
    if cfg.resume:
        resume_path = ckpt.find_resumable(stage.checkpoints, warn=(None if info.is_main else (lambda _m: None)))
        if resume_path is None:
            if info.is_main:
                print(f"no usable checkpoint in {stage.checkpoints}: starting from scratch", file=sys.stderr,
                      flush=True)
        else:
            model_sd, optim_sd, resume_state = ckpt.load_checkpoint(resume_path)

    config = stage.model_config(resume_state)
    model = build_model(config, seed=cfg.seed).to(info.device)
    model.train()
    if cfg.compile:
        model.compile()
    model = wrap_model(model, cfg.distributed, info, expert_parallel=cfg.expert_parallel)
    raw = unwrap(model)
    optimizers = build_optimizers(raw, cfg.optim)
    options = _state_dict_options()

    step, tokens_seen, elapsed_before = 0, 0, 0.0
    if resume_state is not None:
        set_model_state_dict(raw, model_sd, options=options)
        set_optimizer_state_dict(raw, optimizers, optim_sd, options=options)
        del model_sd, optim_sd
        step, tokens_seen = resume_state["step"], resume_state["tokens"]
        elapsed_before = resume_state.get("elapsed_s", 0.0)
        ckpt.set_rng_state(resume_state["rng"])
    elif stage.init_weights is not None:
        set_model_state_dict(raw, stage.init_weights(), options=options)

    micro_tokens = cfg.batch_size * cfg.seq_len * info.world_size
    grad_accum = cfg.grad_accum
    if cfg.tokens_per_step:
        if cfg.tokens_per_step % micro_tokens:
            raise ValueError(f"--tokens-per-step {cfg.tokens_per_step} is not a multiple of batch_size*seq_len*"
                             f"world_size = {micro_tokens}")
        grad_accum = cfg.tokens_per_step // micro_tokens
    step_tokens = micro_tokens * grad_accum

    loader = stage.make_loader(info, resume_state)
    autocast_dtype = _autocast_dtype(cfg, info.device)
    flops_tok = flops_per_token(config, cfg.seq_len)
    peak = peak_flops(info.device, cfg.peak_tflops) * info.world_size

    logger = None
    if info.is_main:
        ckpt.remove_stale_temporaries(stage.checkpoints)
        logger = MetricsLogger(stage.metrics, run.metrics / "tensorboard" / stage.name if cfg.tensorboard else None)
        val_logger = MetricsLogger(stage.val_metrics) if stage.val_metrics else logger
        if stage.val_metrics:
            val_logger.tb = logger.tb
        if resume_state is not None:
            print(f"resumed from {resume_path} (step {step}, {tokens_seen:,} tokens)", file=sys.stderr, flush=True)
        # a resumed run drops what a killed run wrote past its checkpoint; a fresh run in an old run dir must not
        # append to a previous curve
        for log in {id(x): x for x in (logger, val_logger)}.values():
            log.truncate_after(step)
        run.record_stage(stage.name, {**cfg.to_dict(), **stage.record, "grad_accum": grad_accum,
                                      "tokens_per_step": step_tokens, "world_size": info.world_size,
                                      "model_config": config.to_dict()})

    budget_s = cfg.minutes * 60 if cfg.minutes else None

    def progress_of(s: int, elapsed: float) -> float:
        parts = []
        if cfg.steps:
            parts.append(s / cfg.steps)
        if budget_s:
            parts.append(elapsed / budget_s)
        return min(1.0, max(parts))

    def save(s: int, elapsed: float) -> Path | None:
        model_state = get_model_state_dict(raw, options=options)
        optim_state = get_optimizer_state_dict(raw, optimizers, options=options)
        loader_states = all_gather_json(loader.state_dict(), info)
        path = None
        if info.is_main:
            state = {"step": s, "tokens": tokens_seen, "elapsed_s": elapsed, "rng": ckpt.rng_state(),
                     "loader": loader_states, "world_size": info.world_size, "model_config": config.to_dict(),
                     "train_config": cfg.to_dict(), "grad_accum": grad_accum, "stage": stage.name}
            path = ckpt.save_checkpoint(stage.checkpoints, s, model_state, optim_state, state,
                                        keep_last=cfg.keep_last)
        barrier(info)
        return path

    loss_since_eval = [0.0, 0]  # summed main loss and steps since the last validation pass
    evaluated_at: list[int] = []  # step of the last validation pass

    def run_eval() -> dict[str, Any]:
        val = stage.evaluate(model, info, autocast_dtype)
        if info.is_main:
            train_loss = loss_since_eval[0] / loss_since_eval[1] if loss_since_eval[1] else None
            val_logger.log({"step": step, "tokens": tokens_seen, "epochs": getattr(loader, "epochs", None),
                            "elapsed_s": elapsed_now(), "train_loss": train_loss, **val})
        loss_since_eval[:] = [0.0, 0]
        evaluated_at[:] = [step]
        return val

    bar = None
    if info.is_main and cfg.progress:
        bar = tqdm(total=cfg.steps, initial=step if cfg.steps else 0, unit="step", dynamic_ncols=True,
                   desc=stage.name, file=sys.stderr)
    seg_start = time.perf_counter()
    last_saved = step if resume_state is not None else -1
    last_loss = float("nan")
    val: dict[str, Any] = {}

    def elapsed_now() -> float:
        return elapsed_before + time.perf_counter() - seg_start

    def compute_mtp(weight: float) -> bool:  # DDP expects a gradient for every parameter: it always runs MTP
        return weight > 0 or isinstance(model, torch.nn.parallel.DistributedDataParallel)

    if stage.eval_at_start and step == 0:
        val = run_eval()
        seg_start = time.perf_counter()  # the clock (and a --minutes budget) starts with training
    # progress-based validation: the next multiple of 1/eval_points to cross (a resumed run continues the count)
    next_point = math.floor(progress_of(step, elapsed_before) * cfg.eval_points) + 1 if cfg.eval_points else None

    while True:
        elapsed = elapsed_now()
        if (cfg.steps and step >= cfg.steps) or (budget_s and elapsed >= budget_s):
            break
        t0 = time.perf_counter()
        progress = progress_of(step, elapsed)
        lr = cfg.optim.lr * lr_factor(cfg.schedule, step, progress)
        w_mtp = mtp_weight(cfg.schedule, progress)
        _set_lr(optimizers, lr)

        sums = torch.zeros(4, dtype=torch.float64)  # loss, main, mtp, balance
        for micro in range(grad_accum):
            inputs = _model_inputs(loader.next_batch(), info.device)
            with _grad_sync(model, micro == grad_accum - 1, info):
                with torch.autocast(info.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    out = model(**inputs, mtp=compute_mtp(w_mtp), supervised_logits_only=stage.supervised_logits_only)
                loss = out.main_loss
                if out.mtp_loss is not None:
                    loss = loss + w_mtp * out.mtp_loss
                if out.balance_loss is not None and config.seq_aux_loss_weight > 0:
                    loss = loss + config.seq_aux_loss_weight * out.balance_loss
                (loss / grad_accum).backward()
            parts = [loss, out.main_loss, out.mtp_loss, out.balance_loss]
            sums += torch.tensor([float(p.detach()) if p is not None else 0.0 for p in parts], dtype=torch.float64)
        grad_norm = clip_grad_norm_(raw.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync_expert_counts(raw, info)
        load_stats = raw.expert_load_stats()
        # per-expert shares every LOAD_LOG_EVERY steps (and the first): the report's expert-load heatmap
        load_shares = raw.expert_load_shares() if step == 0 or (step + 1) % LOAD_LOG_EVERY == 0 else None
        raw.update_expert_bias()
        step += 1
        tokens_seen += step_tokens

        sums = all_reduce_mean((sums / grad_accum).to(info.device), info).cpu()
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        dt = time.perf_counter() - t0
        tok_s = step_tokens / dt
        last_loss = float(sums[0])
        if info.is_main:
            record = {"step": step, "tokens": tokens_seen, "epochs": getattr(loader, "epochs", None),
                      "loss": last_loss, "main_loss": float(sums[1]),
                      "mtp_loss": float(sums[2]), "balance_loss": float(sums[3]), "lr": lr, "mtp_weight": w_mtp,
                      "grad_norm": float(grad_norm), "tok_per_s": tok_s, "mfu": flops_tok * tok_s / peak,
                      "step_time_s": dt, "elapsed_s": elapsed_now(), "expert_load_max_mean": load_stats}
            if load_shares is not None:
                record["expert_load"] = load_shares
            logger.log(record)
            if bar is not None:
                remaining = _eta(cfg, step, elapsed_now(), budget_s, seg_start, elapsed_before, resume_step=last_saved)
                bar.set_postfix(loss=f"{last_loss:.3f}", tok=f"{tokens_seen:,}", tok_s=f"{tok_s:,.0f}",
                                eta=remaining, refresh=False)
                bar.update(1)

        loss_since_eval[0] += float(sums[1])
        loss_since_eval[1] += 1
        final = (cfg.steps and step >= cfg.steps) or (budget_s and elapsed_now() >= budget_s)
        due = bool(cfg.eval_every) and step % cfg.eval_every == 0
        if next_point is not None:
            progress_now = progress_of(step, elapsed_now())
            if info.enabled and budget_s:  # ranks' clocks differ: decide on one shared value, so all evaluate together
                progress_now = float(all_reduce_mean(torch.tensor([progress_now], dtype=torch.float64,
                                                                  device=info.device), info)[0])
            if progress_now * cfg.eval_points >= next_point:
                due = True
                next_point = math.floor(progress_now * cfg.eval_points) + 1
        if due and not final:
            val = run_eval()
        if cfg.save_every and step % cfg.save_every == 0 and not final:
            save(step, elapsed_now())
            last_saved = step

    if bar is not None:
        bar.close()
    train_elapsed = elapsed_now()
    if evaluated_at != [step]:  # a pass that ran at this very step (and used up the budget) is not repeated
        val = run_eval()
    path = save(step, train_elapsed) if last_saved != step else stage.checkpoints / ckpt.step_dir_name(step)
    result = {"step": step, "tokens": tokens_seen, "train_loss": last_loss, **val, "elapsed_s": train_elapsed,
              "checkpoint": str(path)}
    if info.is_main:
        logger.close()
        write_json(stage.result, result)
    return result


def _model_inputs(batch: torch.Tensor | dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A loader's batch as model keyword arguments: a [B, T+1] token tensor becomes next-token inputs and labels."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return {"input_ids": batch[:, :-1], "labels": batch[:, 1:]}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _mean(values: dict[str, float]) -> float | None:
    return sum(values.values()) / len(values) if values else None


def _eta(cfg: TrainConfig, step: int, elapsed: float, budget_s: float | None, seg_start: float,
         elapsed_before: float, resume_step: int) -> str:
    remaining = []
    if budget_s:
        remaining.append(budget_s - elapsed)
    if cfg.steps:
        seg_steps = step - max(resume_step, 0)
        seg_time = elapsed - elapsed_before
        if seg_steps > 0:
            remaining.append((cfg.steps - step) * seg_time / seg_steps)
    if not remaining:
        return "?"
    s = max(0, int(min(remaining)))
    return f"{s // 60}:{s % 60:02d}"


def _grad_sync(model: torch.nn.Module, sync: bool, info: DistInfo):
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if info.enabled and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if info.enabled and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def _reshard_loader_state(states: list[dict], info: DistInfo) -> dict:
    """A checkpoint written by W ranks, resumed on W' ranks.

    TokenLoader gives rank r positions r, r+W, ... of one seeded permutation per epoch, so W ranks at position p have
    consumed the first W*p windows; W' ranks continue from window W*p at position W*p / W'.
    """
    epochs = {s["epoch"] for s in states}
    if len(epochs) != 1:
        raise ValueError(f"checkpoint ranks are in different data epochs {sorted(epochs)}; resume with "
                         f"{len(states)} ranks")
    consumed = sum(int(s["position"]) for s in states)
    position = consumed // info.world_size
    if consumed % info.world_size and info.is_main:
        print(f"note: {consumed} consumed windows do not split over {info.world_size} ranks; "
              f"{consumed % info.world_size} windows are skipped", file=sys.stderr, flush=True)
    if info.is_main:
        print(f"note: data position re-split from {len(states)} to {info.world_size} ranks", file=sys.stderr,
              flush=True)
    return {**states[0], "epoch": epochs.pop(), "position": position, "rank": info.rank,
            "world_size": info.world_size}
