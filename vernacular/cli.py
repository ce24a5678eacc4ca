"""`vernacular <stage>`: one sub-command per pipeline stage.

Each stage lives in its own package and exposes a small CLI module with `add_arguments(parser)` and `main(args) -> int`.
Those modules import only the standard library at top level, so building the parser stays fast; the heavy imports
(torch, datatrove, ...) happen inside `main`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the pipeline's order.
STAGES: dict[str, tuple[str, str]] = {
    "data": ("vernacular.data.cli", "build the training data: sources -> clean, deduplicated, tokenized shards"),
    "tokenizer": ("vernacular.tokenizer.cli", "train the language-fair tokenizer and report tokenizer parity"),
    "model": ("vernacular.model.cli", "inspect model presets: parameters, FLOPs, KV-cache size"),
    "plan": ("vernacular.plan.cli", "plan a training run: budget <-> model, tokens, GPU layout, time, cost, energy"),
    "pretrain": ("vernacular.train.cli", "pretrain the MoE model on the run's token shards"),
    "sft": ("vernacular.sft.cli", "fine-tune the model into a chat model on conversations (JSONL, OpenAI format)"),
    "eval": ("vernacular.eval.cli", "evaluate a checkpoint with lm-evaluation-harness: European task groups, one aggregate"),
    "export": ("vernacular.interop.cli_export", "export a checkpoint (e.g. to a Hugging Face transformers folder)"),
    "import": ("vernacular.interop.cli_import", "import a Hugging Face DeepseekV3 folder as a Vernacular checkpoint"),
    "compliance": ("vernacular.compliance.cli", "write the EU AI Act documents of a run from its records"),
    "serve": ("vernacular.serve.cli", "serve a model with an OpenAI-compatible API and a web chat"),
    "report": ("vernacular.report", "write the run's report: data, tokenizer parity, training curves, per-language bpb"),
    "speedrun": ("vernacular.speedrun", "run every stage end to end (the one-command demo)"),
}


def build_parser() -> argparse.ArgumentParser:
    from vernacular import __version__

    parser = argparse.ArgumentParser(prog="vernacular", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vernacular {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (module_name, help_text) in STAGES.items():
        module = importlib.import_module(module_name)
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
