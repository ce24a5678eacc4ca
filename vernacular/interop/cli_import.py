"""`vernacular import hf`: a transformers DeepseekV3 folder -> a Vernacular checkpoint (validated)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="<format>", required=True)
    hf = sub.add_parser("hf", help="Hugging Face DeepseekV3 folder (ours or DeepSeek's bf16 layout)")
    hf.add_argument("path", help="folder with config.json and model.safetensors (or a sharded index)")
    dest = hf.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="checkpoint folder to write (model.safetensors + config.json + state.json)")
    dest.add_argument("--run-dir", help="run directory: writes <run>/checkpoints/step_000000 and copies the tokenizer")


def main(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from vernacular.interop.hf import TOKENIZER_FILES, InteropError, import_hf, save_checkpoint
    from vernacular.run import RunDir

    src = Path(args.path)
    run = RunDir(args.run_dir) if args.run_dir else None
    if run and any(run.checkpoints.glob("step_*")):
        print(f"error: {run.checkpoints} already holds checkpoints; import into a new run directory", file=sys.stderr)
        return 1
    try:
        model = import_hf(src)
    except InteropError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = run.checkpoints / "step_000000" if run else Path(args.out)
    save_checkpoint(model, out, source=str(src))
    if run:
        if not (run.tokenizer / "tokenizer.json").exists() and (src / "tokenizer.json").exists():
            run.tokenizer.mkdir(parents=True, exist_ok=True)
            for name in TOKENIZER_FILES:
                if (src / name).exists():
                    shutil.copyfile(src / name, run.tokenizer / name)
        run.record_stage("import", {"format": "hf", "source": str(src), "checkpoint": str(out)})
    n = sum(p.numel() for p in model.parameters())
    print(f"imported {src} ({n / 1e6:.1f} M parameters) -> {out}")
    return 0
