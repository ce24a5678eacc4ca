"""`vernacular sft`: argument parsing only (stdlib at import time); the stage is vernacular.sft.trainer.finetune."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vernacular.train.cli import add_loop_arguments

    parser.add_argument("--run-dir", required=True, help="run directory (with tokenizer/ and a pretraining checkpoint, "
                        "unless --init-from gives the model)")
    parser.add_argument("--data", action="append", default=None, metavar="PATH",
                        help="OpenAI-style chat JSONL file or folder of them, repeatable "
                        '({"messages": [{"role": ..., "content": ...}]} per line; default: the embedded demo '
                        "conversations)")
    parser.add_argument("--init-from", default=None, metavar="PATH",
                        help="start from this transformers DeepseekV3 folder (or checkpoint folder), weights only, "
                        "instead of the run's latest pretraining checkpoint")
    parser.add_argument("--epochs", type=float, default=2.0,
                        help="passes over the training conversations unless --steps is given; --minutes still "
                        "stops the run earlier (default: 2)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of each language's conversations held out for validation (default: 0.1)")
    parser.add_argument("--confusion-tokens", type=int, default=32,
                        help="answer length (tokens) of the language-confusion measurement after training; 0 skips it "
                        "(default: 32)")
    parser.add_argument("--wise-ft", type=float, default=1.0, metavar="ALPHA",
                        help="serve and export (1 - ALPHA) * start + ALPHA * fine-tuned weights (WiSE-FT, Wortsman et "
                        "al. 2022): keeps more of the base model's language modelling; the fine-tuned checkpoint stays "
                        "for --resume (default: 1, the fine-tuned weights)")
    parser.add_argument("--replay", type=int, default=0, metavar="N",
                        help="add N continuation conversations per language made from the run's cleaned training text "
                        "(user: a line of a document, assistant: the next line): replay of pretraining text against "
                        "forgetting, and more examples of answering in the user's language (default: 0)")
    parser.add_argument("--language-dpo", type=int, default=0, metavar="STEPS",
                        help="after fine-tuning (and WiSE-FT), STEPS of DPO with the model's own wrong-language answers "
                        "to the training questions as rejected and the reference answers as chosen: language "
                        "preference tuning (default: 0, off)")
    parser.add_argument("--dpo-beta", type=float, default=0.1, help="DPO's beta (default: 0.1, as TRL)")
    parser.add_argument("--dpo-lr", type=float, default=1e-4,
                        help="AdamW learning rate of the DPO steps (default: 1e-4)")
    parser.add_argument("--dpo-batch-size", type=int, default=8, help="preference pairs per DPO step (default: 8)")
    parser.add_argument("--rpo-alpha", type=float, default=1.0,
                        help="weight of the chosen answers' NLL next to the DPO loss (TRL's rpo_alpha; default: 1)")
    add_loop_arguments(parser, batch_size=4, seq_len=512, lr=1e-3, warmup=5, eval_points=0,
                       length_help="; without --steps: --epochs passes over the conversations")


def main(args: argparse.Namespace) -> int:
    from vernacular.train.cli import config_from_args

    if not 0 <= args.val_fraction < 1:
        print("error: --val-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    if not 0 < args.wise_ft <= 1:
        print("error: --wise-ft must be in (0, 1]", file=sys.stderr)
        return 2
    if args.replay < 0:
        print("error: --replay must be >= 0", file=sys.stderr)
        return 2
    if args.language_dpo < 0 or args.dpo_beta <= 0 or args.dpo_lr <= 0 or args.rpo_alpha < 0 or args.dpo_batch_size < 1:
        print("error: --language-dpo and --rpo-alpha must be >= 0, --dpo-beta and --dpo-lr > 0, --dpo-batch-size >= 1",
              file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args, default_steps=1)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.steps is None:
        cfg.steps = None  # finetune sets it from --epochs once the data is packed
    from vernacular.compliance.energy import measure_energy
    from vernacular.run import RunDir
    from vernacular.train.distributed import shutdown

    from .trainer import finetune

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        with measure_energy(RunDir(args.run_dir), "sft", enabled=rank == 0, world_size=world):
            result = finetune(args.run_dir, cfg, data=args.data, init_from=args.init_from,
                              val_fraction=args.val_fraction, epochs=args.epochs,
                              confusion_tokens=args.confusion_tokens, wise_ft=args.wise_ft,
                              replay=args.replay, language_dpo=args.language_dpo,
                              dpo_options={"beta": args.dpo_beta, "lr": args.dpo_lr, "rpo_alpha": args.rpo_alpha,
                                           "batch_size": args.dpo_batch_size})
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"sft: step {result['step']}  tokens {result['tokens']:,}  train loss {result['train_loss']:.4f}  "
              f"checkpoint {result['checkpoint']}")
        if "wise_ft" in result:
            loss = result.get("val_loss_fine_tuned")
            dpo = result.get("language_dpo")
            print(f"WiSE-FT {result['wise_ft']}: " + (f"interpolated weights in {dpo['start']}" if dpo else
                                                      f"serving and export take {result['checkpoint']}")
                  + " (fine-tuned weights: "
                  f"{result['checkpoint_fine_tuned']}" + (f", held-out loss {loss:.4f})" if loss is not None else ")"))
        if "language_dpo" in result:
            dpo = result["language_dpo"]
            print(f"language DPO: {dpo['steps']} steps on {dpo['pairs']} wrong-language answers; serving and export "
                  f"take {result['checkpoint']}")
        if "val_loss" in result:
            start = result.get("val_loss_start")
            print(f"held-out assistant loss: {result['val_loss']:.4f} nats/token"
                  + (f" (before SFT: {start:.4f})" if start is not None else ""))
        confusion = result.get("language_confusion")
        if confusion and confusion["answers"]:
            from vernacular.sft.confusion import summary

            print(f"language confusion: {summary(confusion)}")
    return 0
