"""`vernacular export hf|gguf`: a checkpoint -> a folder transformers (and vLLM) loads as DeepseekV3ForCausalLM, or one
GGUF file llama.cpp (and Ollama, LM Studio) runs."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="<format>", required=True)
    hf = sub.add_parser("hf", help="Hugging Face transformers folder (config.json, model.safetensors, tokenizer)")
    source = hf.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="run directory: exports its model (the latest chat fine-tuning checkpoint "
                        "if any, else the latest pretraining checkpoint) and its tokenizer")
    source.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + state.json or config.json)")
    hf.add_argument("--out", help="output folder (default with --run-dir: <run>/export/hf)")
    hf.add_argument("--tokenizer", help="tokenizer folder to include (default with --run-dir: <run>/tokenizer)")
    hf.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weight dtype (default float32)")
    gg = sub.add_parser("gguf", help="one GGUF file for llama.cpp / Ollama / LM Studio (deepseek2 architecture, MLA)")
    source = gg.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="run directory: exports its latest checkpoint and its tokenizer")
    source.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + state.json or config.json)")
    gg.add_argument("--out", help="output file (default with --run-dir: <run>/export/gguf/model-<type>.gguf)")
    gg.add_argument("--tokenizer", help="tokenizer folder (default with --run-dir: <run>/tokenizer); required")
    gg.add_argument("--type", choices=["f32", "f16", "bf16", "q8_0"], default="f32",
                    help="weight type (default f32); norms, router and biases stay f32")


def main(args: argparse.Namespace) -> int:
    return _gguf(args) if args.format == "gguf" else _hf(args)


def _gguf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vernacular.interop.gguf_export import export_gguf
    from vernacular.interop.hf import InteropError, latest_checkpoint, load_checkpoint
    from vernacular.run import RunDir

    try:
        run = RunDir(args.run_dir) if args.run_dir else None
        ckpt = latest_checkpoint(run.root) if run else Path(args.checkpoint)
        out = Path(args.out) if args.out else (run.export / "gguf" / f"model-{args.type}.gguf" if run else None)
        tokenizer = Path(args.tokenizer) if args.tokenizer else (run.tokenizer if run else None)
        if out is None or tokenizer is None:
            print("error: --out and --tokenizer are required with --checkpoint", file=sys.stderr)
            return 2
        model = load_checkpoint(ckpt)
        export_gguf(model, out, tokenizer, qtype=args.type, name=(run.root.name if run else ckpt.name))
    except InteropError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if run:
        run.record_stage("export", {"format": "gguf", "checkpoint": str(ckpt), "out": str(out), "type": args.type})
    print(f"exported {ckpt} -> {out} ({out.stat().st_size / 1e6:.1f} MB, {args.type})")
    print(f"run it with: llama-server -m {out}   (or llama-cli -m {out} -cnv)")
    return 0


def _hf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vernacular.interop.hf import InteropError, export_hf, latest_checkpoint, load_checkpoint
    from vernacular.run import RunDir

    try:
        run = RunDir(args.run_dir) if args.run_dir else None
        ckpt = latest_checkpoint(run.root) if run else Path(args.checkpoint)
        out = Path(args.out) if args.out else (run.export / "hf" if run else None)
        if out is None:
            print("error: --out is required with --checkpoint", file=sys.stderr)
            return 2
        tokenizer = Path(args.tokenizer) if args.tokenizer else (run.tokenizer if run else None)
        if tokenizer is not None and not (tokenizer / "tokenizer.json").exists():
            if args.tokenizer:
                print(f"error: {tokenizer} has no tokenizer.json", file=sys.stderr)
                return 2
            tokenizer = None
        model = load_checkpoint(ckpt)
        export_hf(model, out, tokenizer_dir=tokenizer, dtype=args.dtype)
    except InteropError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if run:
        from vernacular.compliance.model_card import write_model_card

        write_model_card(run, out)  # the model card from the run's records, with the AI Act documents
        run.record_stage("export", {"format": "hf", "checkpoint": str(ckpt), "out": str(out), "dtype": args.dtype})
    print(f"exported {ckpt} -> {out}" + (" (with tokenizer)" if tokenizer else " (no tokenizer)"))
    print(f"load it with: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    from vernacular.model.info import vllm_mla_support

    advice = vllm_mla_support(model.config)["advice"]
    print(f"vLLM: {advice}" if advice else "vLLM: served by its MLA kernels (MLA head size 576) on GPU and CPU")
    return 0
