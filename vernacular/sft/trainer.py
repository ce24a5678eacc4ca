"""`finetune(run_dir, cfg, ...)`: supervised chat fine-tuning (SFT) on the shared training loop.

The stage starts from the run's newest pretraining checkpoint, or from `init_from` (a transformers DeepseekV3 folder,
e.g. one `vernacular export hf` wrote, or a Vernacular checkpoint folder): weights only, with a fresh optimizer and
schedule, as TRL's SFTTrainer and nanochat's chat_sft start. Everything else is `vernacular.train.trainer.fit`,
the loop pretraining runs: the same optimizers, schedules, metrics and atomic, checksummed, bit-identically
resumable checkpoints - written to `checkpoints/sft/`, so the pretraining checkpoints stay as they were.

The loss is the next-token cross-entropy on the assistant's tokens only (each assistant turn's content and its
end-of-turn token, `encode_chat`'s assistant mask), averaged over those tokens; conversations are packed with
per-conversation attention (`vernacular.sft.data`). Validation is the same loss on held-out conversations, before
training and at the end (and every `eval_every` steps); after training the language-confusion pass rate is measured
on the held-out questions (`vernacular.sft.confusion`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vernacular.run import RunDir, read_json, write_json
from vernacular.train import checkpoint as ckpt
from vernacular.train.trainer import Stage, TrainConfig, fit

from .data import IGNORE_INDEX, Dataset, PackedLoader, default_sources, expand_sources, load_conversations, pack, \
    replay_conversations, val_batches


def _init_source(run: RunDir, init_from: str | Path | None) -> Path:
    if init_from is not None:
        if not Path(init_from).is_dir():
            raise SystemExit(f"error: --init-from {init_from} is not a folder (a transformers DeepseekV3 folder or a "
                             f"checkpoint folder)")
        return Path(init_from)
    found = ckpt.latest_checkpoint(run.checkpoints)
    if found is None:
        raise SystemExit(f"error: no pretraining checkpoint in {run.checkpoints}. Run `vernacular pretrain --run-dir "
                         f"{run.root}` first, or start from a transformers model with --init-from PATH.")
    return found


def _tokenizer(run: RunDir, init_from: Path | None):
    """The run's tokenizer; a run without one takes the `--init-from` folder's (copied into tokenizer/)."""
    from vernacular.interop.hf import TOKENIZER_FILES
    from vernacular.tokenizer import load

    if not (run.tokenizer / "tokenizer.json").exists() and init_from is not None \
            and (init_from / "tokenizer.json").exists():
        run.tokenizer.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (init_from / name).exists():
                shutil.copyfile(init_from / name, run.tokenizer / name)
    run.require(run.tokenizer / "tokenizer.json", "tokenizer")
    return load(run.tokenizer)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu",
                  autocast_dtype: torch.dtype | None = None) -> float:
    """Mean next-token cross-entropy (nats) over every supervised (assistant) token of `batches`."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(**batch).logits
        nll += float(F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                     reduction="sum"))
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return nll / count if count else float("nan")


def finetune(run_dir: str | Path, cfg: TrainConfig, data: list[str | Path] | None = None,
             init_from: str | Path | None = None, val_fraction: float = 0.1, epochs: float | None = None,
             confusion_tokens: int = 32, wise_ft: float = 1.0, replay: int = 0,
             language_dpo: int = 0, dpo_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune the run's model on chat conversations; returns the final metrics (also in metrics/sft_val.json).

    `wise_ft` < 1: after training, the model that serving and export take is the weight-space interpolation
    (1 - wise_ft) * start + wise_ft * fine-tuned (`wise_ft_checkpoint`); the fine-tuned checkpoint stays for resuming.

    `replay` > 0: add that many continuation conversations per language from the run's cleaned training text to the
    training conversations (`replay_conversations`); they are never held out.

    `language_dpo` > 0: then that many steps of DPO on the model's own wrong-language answers to the training
    conversations (`vernacular.sft.preference.language_dpo`; `dpo_options`: its beta, lr, rpo_alpha, batch_size);
    serving and export take its checkpoint.

    `data`: JSONL files or folders (default: the embedded demo conversations). `epochs`: when `cfg` gives no steps,
    train this many passes over the packed training conversations (a `cfg.minutes` budget still stops it earlier). `confusion_tokens`: greedy
    answer length for the language-confusion measurement (0 skips it). Bad records are counted by reason in
    `sft/data.json` and written to `sft/rejects.jsonl`; a run with no usable training conversation stops with an
    error (SystemExit)."""
    run = RunDir(run_dir).create()
    init_path = _init_source(run, init_from)
    tok = _tokenizer(run, Path(init_from) if init_from is not None else None)
    sources = expand_sources(data) if data else default_sources()
    if not sources:
        raise SystemExit("error: no SFT data: give --data FILE.jsonl (the embedded demo conversations are missing)")
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun every rank reads the data, one writes
    ds = load_conversations(sources, tok, max_tokens=cfg.seq_len + 1, val_fraction=val_fraction,
                            rejects_path=run.sft / "rejects.jsonl" if main_rank else None)
    if replay:
        ds.train += replay_conversations(run, tok, replay, cfg.seq_len + 1, seed=cfg.seed)
    summary = ds.summary()
    if main_rank:
        write_json(run.sft / "data.json", summary)
        _print_data(ds, run)
    if not ds.train:
        raise SystemExit(f"error: no usable training conversation in {', '.join(map(str, sources))} "
                         f"(see {run.sft / 'rejects.jsonl'})")

    if cfg.steps is None:
        rows = len(pack(ds.train, cfg.seq_len))
        per_step = cfg.batch_size * cfg.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
        cfg.steps = max(1, math.ceil((epochs or 1.0) * rows / per_step))
    cfg.model = str(init_path)

    def model_config(resume_state: dict | None):
        from vernacular.model import ModelConfig
        from vernacular.serve.loading import read_model_config

        if resume_state is not None:
            return ModelConfig.from_dict(resume_state["model_config"])
        config, layout = read_model_config(init_path)
        if layout == "hf":
            from vernacular.interop.hf import config_from_hf

            config = config_from_hf(config)[0].to_dict()
        config = ModelConfig.from_dict(config)
        if config.vocab_size < tok.get_vocab_size():
            raise SystemExit(f"error: the tokenizer has {tok.get_vocab_size()} tokens, the model in {init_path} only "
                             f"{config.vocab_size}")
        if config.max_position_embeddings < cfg.seq_len:
            raise SystemExit(f"error: --seq-len {cfg.seq_len} exceeds the model's max_position_embeddings "
                             f"{config.max_position_embeddings}")
        return config

    def init_weights() -> dict[str, torch.Tensor]:
        from vernacular.serve.loading import load_model_for_serving

        model, _ = load_model_for_serving(init_path)  # verifies the trainer's recorded checksum
        return model.state_dict()

    def make_loader(info, resume_state: dict | None):
        loader = PackedLoader(ds.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=info.rank,
                              world_size=info.world_size)
        if resume_state is not None:
            if resume_state["world_size"] != info.world_size:
                raise SystemExit(f"error: the SFT checkpoint was written by {resume_state['world_size']} ranks; "
                                 f"resume it with as many")
            loader.load_state_dict(resume_state["loader"][info.rank])
        return loader

    held_out = val_batches(ds.val, cfg.batch_size, cfg.seq_len)

    def evaluate(model, info, autocast_dtype) -> dict[str, Any]:
        return {"val_loss": evaluate_loss(model, held_out, info.device, autocast_dtype)} if held_out else {}

    stage = Stage(name="sft", checkpoints=run.sft_checkpoints, metrics=run.metrics / "sft.jsonl",
                  result=run.metrics / "sft_val.json", model_config=model_config, make_loader=make_loader,
                  evaluate=evaluate, init_weights=init_weights, eval_at_start=True, supervised_logits_only=True,
                  record={"init_from": str(init_path), "data": [str(s) for s in sources],
                          "val_fraction": val_fraction, "conversations": {k: summary[k] for k in
                                                                         ("train", "val", "accepted", "records",
                                                                          "replay")}})
    if not 0.0 < wise_ft <= 1.0:
        raise ValueError(f"wise_ft must be in (0, 1], got {wise_ft}")
    result = fit(run, cfg, stage)
    rows = [r for r in _read_jsonl(stage.metrics) if "val_loss" in r]
    if rows and rows[0]["step"] == 0:
        result["val_loss_start"] = rows[0]["val_loss"]
    if wise_ft < 1.0 and main_rank:
        from vernacular.serve.loading import load_model_for_serving

        fine_tuned = Path(result["checkpoint"])
        merged = wise_ft_checkpoint(fine_tuned, init_weights(), wise_ft, init_path)
        result.update(checkpoint=str(merged), checkpoint_fine_tuned=str(fine_tuned), wise_ft=wise_ft,
                      val_loss_fine_tuned=result.get("val_loss"))
        if held_out:
            result["val_loss"] = evaluate_loss(load_model_for_serving(merged)[0], held_out)
    if language_dpo and main_rank:
        from .preference import language_dpo as run_language_dpo

        own = [c for c in ds.train if not c.source.startswith("replay:")]
        dpo = run_language_dpo(run, Path(result["checkpoint"]), own, language_dpo, seed=cfg.seed,
                               progress=cfg.progress, **(dpo_options or {}))
        result.update(checkpoint=dpo["checkpoint"], language_dpo={k: v for k, v in dpo.items() if k != "checkpoint"})
        if held_out:
            from vernacular.serve.loading import load_model_for_serving

            result["val_loss_before_dpo"] = result.get("val_loss")
            result["val_loss"] = evaluate_loss(load_model_for_serving(dpo["checkpoint"])[0], held_out)
    if confusion_tokens and ds.val and main_rank:
        from .confusion import language_confusion

        result["language_confusion"] = language_confusion(result["checkpoint"], run.tokenizer, ds.val,
                                                          max_tokens=confusion_tokens, out=run.metrics /
                                                          "language_confusion.json")
    if main_rank:
        write_json(stage.result, {**read_json(stage.result), **result})
    return result


def wise_ft_checkpoint(fine_tuned: Path, start: dict[str, torch.Tensor], alpha: float, start_path: Path) -> Path:
    """WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"): every floating-point weight becomes
    (1 - alpha) * start + alpha * fine-tuned, which keeps much of what fine-tuning on a small dataset makes the model
    forget (here: the base model's language modelling) for part of what it learned. Written next to the fine-tuned
    checkpoint as `wise_ft-<its name>/` (same layout and checksums, no optimizer state) and named by `latest`, so
    serving and export take it; resuming continues from the fine-tuned `step_*` checkpoint. Older `wise_ft-*` folders
    are removed. `start`: the state dict fine-tuning started from (same keys and shapes)."""
    from safetensors.torch import load_file

    tuned = load_file(fine_tuned / ckpt.MODEL_FILE)
    if set(tuned) != set(start):
        raise ValueError(f"{fine_tuned}: weights differ from the starting model's "
                         f"({sorted(set(tuned) ^ set(start))[:5]})")
    merged = {k: torch.lerp(start[k].to(v.dtype), v, alpha) if v.is_floating_point() else v for k, v in tuned.items()}
    return ckpt.save_derived_checkpoint(fine_tuned, merged, "wise_ft", "wise_ft",
                                        {"alpha": alpha, "start": str(start_path), "fine_tuned": str(fine_tuned)})


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _print_data(ds: Dataset, run: RunDir) -> None:
    s = ds.summary()
    rejected = sum(s["rejected"].values())
    print(f"sft data: {s['records']} records in {len(s['files'])} files: {s['train']} train + {s['val']} held-out "
          f"conversations ({len(s['languages'])} languages), {s['train_tokens']:,} train tokens "
          f"({s['train_assistant_tokens']:,} assistant)"
          + (f"; {s['replay']} of them replay pairs from data/text/train" if s["replay"] else ""),
          file=sys.stderr, flush=True)
    if rejected:
        reasons = ", ".join(f"{r} {n}" for r, n in s["rejected"].items() if n)
        print(f"sft data: {rejected} records rejected ({reasons}); see {run.sft / 'rejects.jsonl'}", file=sys.stderr,
              flush=True)
