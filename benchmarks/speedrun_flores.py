"""Score a speedrun's model on FLORES-200 (the 24 official EU languages) through plain transformers.

    python -m vernacular speedrun --run-dir runs/speedrun
    python benchmarks/speedrun_flores.py --run-dir runs/speedrun [--corpora ../shared/corpora] [--lines 50]

Exports the run's latest checkpoint with `vernacular export hf`, loads the folder with transformers'
AutoModelForCausalLM (DeepseekV3ForCausalLM, not our model code) and measures bits per byte on the first `--lines`
aligned FLORES sentences of each EU language, framed and windowed exactly as `benchmarks/speedrun_cpu.py` does
(BOS sentence EOS, packed into 257-token windows; bpb = summed NLL / ln 2 / UTF-8 bytes). FLORES is evaluation data:
nothing trains on it. Also prints the run's data epochs and validation curve end (from metrics/), i.e. every figure
BENCHMARKS.md records for the speedrun. Reads ../shared (benchmarks may; tests and the product do not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speedrun_cpu  # noqa: E402  (flores_windows, flores_bpb: the benchmark's own measure)


def main() -> int:
    from vernacular.data.languages import EU_LANGUAGES
    from vernacular.run import RunDir, read_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--corpora", default=str(speedrun_cpu.CORPORA), help="folder holding flores200-sib/")
    p.add_argument("--lines", type=int, default=50, help="FLORES sentences per language (default 50)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    run = RunDir(args.run_dir)
    out = run.export / "hf"
    subprocess.run([sys.executable, "-m", "vernacular", "export", "hf", "--run-dir", str(run.root), "--out", str(out)],
                   check=True)
    model = AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    speedrun_cpu.CORPORA = Path(args.corpora)
    windows = {k: v for k, v in speedrun_cpu.flores_windows(out / "tokenizer.json", args.lines, args.seq_len).items()
               if k in EU_LANGUAGES}
    assert len(windows) == 24, sorted(windows)
    per_lang = speedrun_cpu.flores_bpb(lambda x: model(x).logits, windows)
    mean = sum(per_lang.values()) / len(per_lang)

    train = [json.loads(line) for line in run.train_metrics.read_text().splitlines()]
    val = [json.loads(line) for line in run.val_metrics.read_text().splitlines()]
    steps = [r for r in train if "loss" in r]
    val_means = [r["val_bpb_mean"] for r in val]
    result = {"flores_eu24_bpb": mean, "flores_lines": args.lines, "flores_per_language": per_lang,
              "steps": steps[-1]["step"], "tokens": steps[-1]["tokens"], "epochs": steps[-1]["epochs"],
              "train_s": steps[-1]["elapsed_s"], "val_bpb_final": val_means[-1], "val_bpb_min": min(val_means),
              "val_points": len(val_means), "train_tokens": read_json(run.tokens / "meta.json")["totals"]["train"]}
    for lang, value in sorted(per_lang.items()):
        print(f"  {lang}  {value:.4f}")
    print(f"FLORES EU-24 mean bpb (transformers, first {args.lines} sentences): {mean:.4f}")
    print(f"steps {result['steps']}, tokens {result['tokens']:,} of {result['train_tokens']:,} train tokens, "
          f"epochs {result['epochs']:.3f}; val bpb final {result['val_bpb_final']:.4f} / min {result['val_bpb_min']:.4f}"
          f" ({result['val_bpb_final'] / result['val_bpb_min'] - 1:+.2%}) over {len(val_means)} points")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
