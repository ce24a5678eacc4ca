"""`vernacular speedrun`: every stage, end to end, with one command.

Like nanochat's speedrun.sh, this is only the stages in order. Each stage is run through the same CLI entry a user
would type, and the command is printed first, so anything the speedrun does can be repeated (or changed) by hand.
The default is the embedded corpus (NTREX-128 news articles in the 24 official EU languages, ~6.6 MB of training
text, ~2.2 M tokens at vocabulary 8192) and the tiny preset, sized to finish within 15 minutes on 2 CPU cores: the
6.5-minute pretraining reads well under one pass of the training tokens, so no token is read twice, and the validation
curve (8 points plus the end) is still falling when the budget ends; chat fine-tuning, then language DPO, take ~5
minutes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

# Pretraining settings of the speedrun (printed with the command). LR and warmup: the tuned values of the CPU speedrun
# benchmark (BENCHMARKS.md, "Speedrun on CPU"). Validation: one batch of 2 sequences per language at each of the 8
# points, about 5% of the budget; the same windows every time, so the curve compares like with like.
# The multi-token-prediction loss is off (`--mtp-weight 0`, so the MTP module is skipped): at 10 M parameters and 7 CPU
# minutes it costs a third of every step and gives less than the steps it takes - 230 steps instead of 163 reach 3.026
# validation bpb instead of 3.133 (BENCHMARKS.md, "The default speedrun"). The export still carries the (untrained)
# MTP layer; larger runs keep DeepSeek-V3's MTP weights (the stage's defaults).
PRETRAIN_ARGS = ["--lr", "1.2e-2", "--warmup", "5", "--eval-points", "8", "--eval-batches", "1", "--eval-batch-size", "2",
                 "--mtp-weight", "0", "--mtp-weight-late", "0"]
# Chat fine-tuning settings: LR 8e-3, 1.4 passes over the demo conversations plus 50 replay pairs per language (a line
# of the run's own pretraining text and the next line, in chat form: `sft --replay`), the MTP loss off (the module is
# skipped), and WiSE-FT 0.7 (weights 30 % of the way back to the base model). Fine-tuning hard enough to stop the 10 M
# model mixing languages makes it forget language modelling; replay and WiSE-FT keep most of both. In the trials
# (BENCHMARKS.md, "Language confusion") this gave a 72.9 % whole-answer pass rate at 3.29 FLORES bpb with 42 % of the
# answers ending on <|end|>, where 3 passes at 4e-3 with WiSE-FT 0.5 and no replay gave 66.7 % at 3.35 with none
# ending. Without DPO, default speedruns scored 75-81 % by LCB's rules on the held-out demo questions, 66-75 % on 940
# Tatoeba ones. Then 40 steps of language DPO (8 pairs each: the model's own wrong-language answers to its training
# questions as the rejected side, `sft --language-dpo`, ~1 min): on four speedrun models the demo figure went from
# 79.1 % to 83.4 % on average (-5 to +12 points) and Tatoeba rose 1.5 to 4 points on each (BENCHMARKS.md, "Language
# confusion"); pretraining gave up 30 s (7 -> 6.5 min) for it to fit the 15 minutes.
SFT_ARGS = ["--lr", "8e-3", "--epochs", "1.4", "--replay", "50", "--mtp-weight", "0", "--mtp-weight-late", "0",
            "--wise-ft", "0.7", "--language-dpo", "40"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/speedrun", help="run directory (default: runs/speedrun)")
    parser.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="SOURCE",
        help="data source, repeatable: 'demo' (default, embedded corpus), a folder of <lang>.txt files, "
        ".jsonl[.gz|.zst] or .parquet files, or hf:<dataset>[:<config>]",
    )
    parser.add_argument("--config", default="tiny", help="model preset or config file (default: tiny)")
    parser.add_argument("--minutes", type=float, default=6.5, help="wall-clock budget of pretraining (default: 6.5)")
    parser.add_argument("--sft-minutes", type=float, default=4.25,
                        help="wall-clock cap of chat fine-tuning (default: 4.25; it stops after 1.4 passes, ~4 min on "
                        "2 quiet cores)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary size (default: 8192)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--provider", default=None, help="provider TOML for the AI Act documents "
                        "(`vernacular compliance --init-provider FILE` writes one); without it they list what is missing")
    parser.add_argument("--workers", type=int, default=2, help="data-stage worker processes (default: 2)")
    parser.add_argument("--eval-tasks", default="offline", help="task groups of the eval stage (default: offline)")


def _run_stage(argv: list[str]) -> None:
    from vernacular.cli import main as cli_main

    print(f"\n$ vernacular {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"speedrun: stage `{argv[0]}` failed with exit code {code}")
    print(f"[{argv[0]} done in {time.perf_counter() - started:.0f} s]", flush=True)


def main(args: argparse.Namespace) -> int:
    run = args.run_dir
    started = time.perf_counter()
    data_args = ["data", "--run-dir", run, "--workers", str(args.workers), "--tasks", str(args.workers)]
    for source in args.data or ["demo"]:
        data_args += ["--source", source]
    if not args.data:  # aligned translations: the natural mix is already balanced, so no language is repeated
        data_args += ["--alpha", "1"]
    _run_stage(data_args)
    _run_stage(["tokenizer", "--run-dir", run, "--vocab-size", str(args.vocab_size), "--seed", str(args.seed)])
    _run_stage(
        ["pretrain", "--run-dir", run, "--config", args.config, "--minutes", str(args.minutes), "--seed", str(args.seed),
         *PRETRAIN_ARGS]
    )
    _run_stage(["sft", "--run-dir", run, "--minutes", str(args.sft_minutes), "--seed", str(args.seed), *SFT_ARGS])
    _run_stage(["eval", "--run-dir", run, "--tasks", args.eval_tasks])
    compliance = ["compliance", "--run-dir", run] + (["--provider", args.provider] if args.provider else [])
    _run_stage(compliance)
    _run_stage(["export", "hf", "--run-dir", run])
    _run_stage(["report", "--run-dir", run])

    minutes = (time.perf_counter() - started) / 60
    print(
        f"\nSpeedrun finished in {minutes:.1f} min. Run directory: {run}\n"
        f"  report:        {run}/report/report.md\n"
        f"  serve it:      vernacular serve --run-dir {run}   (the chat model; open http://127.0.0.1:8000/ to chat)\n"
        f"  OpenAI client: OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')\n"
        f"  transformers:  AutoModelForCausalLM.from_pretrained('{run}/export/hf')   (with its model card)\n"
        f"  AI Act:        {run}/report/training_content_summary.md, annex_xi_technical_documentation.md, "
        f"copyright_policy.md",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="vernacular speedrun")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
