"""Benchmark: language-fair tokenizer vs plain BPE (HF tokenizers' trainer), side by side in one run.

Parity (through the product's CLI): `vernacular data --run-dir R --source NTREX`, then `vernacular tokenizer --run-dir R`
with `--method parity` (ours, steered by the shipped multi-parallel dev set) and `--method plain` on the same run text,
both evaluated on FLORES-200 (never trained on): max premium vs English, the worst language, English bytes/token and
its loss against plain BPE. Writes a PNG per vocabulary size.

Throughput: seconds per MB of training text for ours and HF's trainer on NTREX repeated to 10 MB and 100 MB (each
trainer in a fresh process, interleaved, so load from other jobs hits both alike), with each process's peak memory.

    python benchmarks/tokenizer_parity.py [--vocab-sizes 32768] [--throughput-mb 10 100] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from vernacular.run import write_json
from vernacular.tokenizer.parity import plot_parity

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"


def vernacular(*argv: str) -> None:
    """`python -m vernacular ...` from this checkout, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "vernacular", *argv], check=True, env=env, cwd=ROOT)


def parity(args) -> list[dict]:
    run = args.run_dir
    if not (run / "data" / "text").exists():
        vernacular("data", "--run-dir", str(run), "--source", str(args.train), "--no-progress")
    results = []
    for vocab in args.vocab_sizes:
        reps, secs = {}, {}
        for method in ("plain", "parity"):
            out = run / f"tokenizer-{method}-{vocab}"
            vernacular("tokenizer", "--run-dir", str(run), "--out", str(out), "--method", method, "--vocab-size",
                       str(vocab), "--parity-eval", str(args.eval), "--no-shards", "--quiet")
            reps[method] = json.loads((out / "parity.json").read_text())
            secs[method] = json.loads((out / "train_stats.json").read_text())["train_seconds"]
        plain, ours = reps["plain"], reps["parity"]
        loss = 1 - ours["reference_bytes_per_token"] / plain["reference_bytes_per_token"]
        row = {
            "vocab_size": vocab, "parity_dev": ours.get("parity_dev"),
            "plain_max_premium": round(plain["max_premium"], 4), "plain_worst": plain["worst_language"],
            "ours_max_premium": round(ours["max_premium"], 4), "ours_worst": ours["worst_language"],
            "plain_mean_premium": round(plain["mean_premium"], 4), "ours_mean_premium": round(ours["mean_premium"], 4),
            "plain_eng_bytes_per_token": round(plain["reference_bytes_per_token"], 4),
            "ours_eng_bytes_per_token": round(ours["reference_bytes_per_token"], 4),
            "eng_bytes_per_token_loss": round(loss, 4), "plain_train_s": secs["plain"], "ours_train_s": secs["parity"],
        }
        results.append(row)
        print(f"vocab {vocab}: max premium plain {row['plain_max_premium']:.3f} ({row['plain_worst']}) -> "
              f"ours {row['ours_max_premium']:.3f} ({row['ours_worst']}); mean {row['plain_mean_premium']:.3f} -> "
              f"{row['ours_mean_premium']:.3f}; eng bytes/token {row['plain_eng_bytes_per_token']:.3f} -> "
              f"{row['ours_eng_bytes_per_token']:.3f} ({-100 * loss:+.2f}%); train {secs['plain']} s vs "
              f"{secs['parity']} s; steered by: {row['parity_dev']}", flush=True)
        png = plot_parity({"plain BPE": plain, "parity-aware (ours)": ours}, args.out / f"tokenizer_parity_{vocab}.png",
                          title=f"Tokens relative to English on FLORES, vocab {vocab} (vernacular data + tokenizer)")
        print(f"  chart: {png}")
    return results


def _train_once(method: str, folder: str, mb: float, vocab: int, queue) -> None:
    """In a fresh process: NTREX repeated to `mb` MB, one trainer, its wall time and this process's peak RSS."""
    import resource

    from vernacular.tokenizer.corpus import build_corpus, read_folder
    from vernacular.tokenizer.train import TokenizerConfig, train_tokenizer

    docs = read_folder(folder)
    size = sum(len(d.encode()) for v in docs.values() for d in v)
    reps = max(1, round(mb * 1e6 / size))
    corpus = build_corpus({lang: lines * reps for lang, lines in docs.items()})  # aligned: used whole
    t0 = time.perf_counter()
    train_tokenizer(corpus, TokenizerConfig(vocab_size=vocab, method=method), progress=False)
    secs = time.perf_counter() - t0
    queue.put({"method": method, "mb": round(corpus.train_bytes() / 1e6, 2), "seconds": round(secs, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})


def throughput(args) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for mb in args.throughput_mb:
        got = {}
        for method in ("plain", "parity"):  # interleaved: HF then ours at each size
            queue = ctx.Queue()
            proc = ctx.Process(target=_train_once, args=(method, str(args.train), mb, args.throughput_vocab, queue))
            proc.start()
            got[method] = queue.get()
            proc.join()
        hf, ours = got["plain"], got["parity"]
        row = {"target_mb": mb, "mb": hf["mb"], "vocab_size": args.throughput_vocab,
               "hf_s_per_mb": round(hf["seconds"] / hf["mb"], 2), "ours_s_per_mb": round(ours["seconds"] / ours["mb"], 2),
               "hf_seconds": hf["seconds"], "ours_seconds": ours["seconds"],
               "ratio_ours_over_hf": round(ours["seconds"] / hf["seconds"], 2),
               "hf_peak_rss_mb": hf["peak_rss_mb"], "ours_peak_rss_mb": ours["peak_rss_mb"],
               "load_avg": round(os.getloadavg()[0], 1)}
        rows.append(row)
        print(f"{row['mb']} MB, vocab {row['vocab_size']}: HF {row['hf_seconds']} s ({row['hf_s_per_mb']} s/MB, "
              f"peak {row['hf_peak_rss_mb']} MB) vs ours {row['ours_seconds']} s ({row['ours_s_per_mb']} s/MB, "
              f"peak {row['ours_peak_rss_mb']} MB): ours/HF x{row['ratio_ours_over_hf']} (load {row['load_avg']})",
              flush=True)
    return rows


def speedrun_tokenizer(args) -> dict:
    """The speedrun's tokenizer: vocab 8192 on the embedded corpus, through the CLI."""
    from vernacular.data.demo_corpus import demo_languages, demo_lines

    out = args.run_dir / "tokenizer-speedrun"
    text = args.run_dir / "embedded-train-text"  # the embedded corpus' training sentences as <lang>.txt
    text.mkdir(parents=True, exist_ok=True)
    for lang in demo_languages():
        (text / f"{lang}.txt").write_text("\n".join(demo_lines(lang, "train")) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    vernacular("tokenizer", "--input", str(text), "--out", str(out), "--vocab-size", "8192", "--quiet")
    stats = json.loads((out / "train_stats.json").read_text())
    row = {"train_seconds": stats["train_seconds"], "cli_seconds": round(time.perf_counter() - t0, 1),
           "train_mb": round(stats["train_bytes"] / 1e6, 3)}
    print(f"speedrun tokenizer (embedded corpus, vocab 8192): train {row['train_seconds']} s, "
          f"CLI {row['cli_seconds']} s", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-sizes", type=int, nargs="*", default=[32768])
    ap.add_argument("--throughput-mb", type=float, nargs="*", default=[10, 100])
    ap.add_argument("--throughput-vocab", type=int, default=32768)
    ap.add_argument("--train", type=Path, default=CORPORA / "ntrex128")
    ap.add_argument("--eval", type=Path, default=CORPORA / "flores200-sib")
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/vernacular-tokenizer-bench"),
                    help="run directory for `vernacular data` (reused when it has text)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    print(f"{date.today()}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; train {args.train}, eval {args.eval}", flush=True)
    results = {"date": str(date.today()), "cpus": os.cpu_count(), "load_avg_start": round(os.getloadavg()[0], 1),
               "parity": parity(args) if args.vocab_sizes else [],
               "speedrun": speedrun_tokenizer(args),
               "throughput": throughput(args) if args.throughput_mb else []}
    write_json(args.out / "tokenizer_parity.json", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
