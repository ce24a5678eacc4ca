"""Benchmark: language-fair tokenizer vs plain BPE, side by side in one process.

Both are trained on NTREX-128 text of all 30 languages (equal content per language): plain BPE on all of it, the
parity-aware one on the same text less the 10% it holds out to steer merges. Both are evaluated on FLORES-200 (never trained on): max premium vs English, the worst
language, English bytes/token and its loss against plain BPE, and training time. Writes a PNG per vocabulary size.

    python benchmarks/tokenizer_parity.py [--vocab-sizes 16000 32000 64000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from vernacular.run import write_json
from vernacular.tokenizer.corpus import read_folder, split_corpus
from vernacular.tokenizer.parity import parity_report, plot_parity
from vernacular.tokenizer.train import TokenizerConfig, train_tokenizer

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-sizes", type=int, nargs="+", default=[32000])
    ap.add_argument("--train", type=Path, default=CORPORA / "ntrex128")
    ap.add_argument("--eval", type=Path, default=CORPORA / "flores200-sib")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    docs = read_folder(args.train)
    corpora = {"plain": split_corpus(docs, dev_fraction=0), "parity": split_corpus(docs)}  # plain gets every line
    corpus = corpora["parity"]
    flores = read_folder(args.eval)
    print(f"train: {args.train.name}, {len(corpus.langs)} languages, {corpora['plain'].train_bytes() / 1e6:.2f} MB "
          f"(plain) / {corpus.train_bytes() / 1e6:.2f} MB (ours); "
          f"eval: {args.eval.name}, {len(flores)} languages; {platform.processor() or platform.machine()}")
    results = []
    for vocab in args.vocab_sizes:
        reps, secs = {}, {}
        for method in ("plain", "parity"):
            t0 = time.perf_counter()
            tok, stats = train_tokenizer(corpora[method], TokenizerConfig(vocab_size=vocab, method=method),
                                         progress=False)
            secs[method] = time.perf_counter() - t0
            reps[method] = parity_report(tok, flores)
        plain, ours = reps["plain"], reps["parity"]
        loss = 1 - ours["reference_bytes_per_token"] / plain["reference_bytes_per_token"]
        row = {
            "vocab_size": vocab,
            "plain_max_premium": round(plain["max_premium"], 4), "plain_worst": plain["worst_language"],
            "ours_max_premium": round(ours["max_premium"], 4), "ours_worst": ours["worst_language"],
            "plain_mean_premium": round(plain["mean_premium"], 4), "ours_mean_premium": round(ours["mean_premium"], 4),
            "plain_eng_bytes_per_token": round(plain["reference_bytes_per_token"], 4),
            "ours_eng_bytes_per_token": round(ours["reference_bytes_per_token"], 4),
            "eng_bytes_per_token_loss": round(loss, 4),
            "plain_train_s": round(secs["plain"], 1), "ours_train_s": round(secs["parity"], 1),
            "steered_merges": stats["steered_merges"],
        }
        results.append(row)
        print(f"vocab {vocab}: max premium plain {row['plain_max_premium']:.3f} ({row['plain_worst']}) -> "
              f"ours {row['ours_max_premium']:.3f} ({row['ours_worst']}), ratio {ours['max_premium'] / plain['max_premium']:.3f}; "
              f"mean {row['plain_mean_premium']:.3f} -> {row['ours_mean_premium']:.3f}; "
              f"eng bytes/token {row['plain_eng_bytes_per_token']:.3f} -> {row['ours_eng_bytes_per_token']:.3f} "
              f"({-100 * loss:+.2f}%); train time {row['plain_train_s']} s vs {row['ours_train_s']} s "
              f"(x{secs['parity'] / secs['plain']:.1f})", flush=True)
        png = plot_parity({"plain BPE": plain, "parity-aware (ours)": ours}, args.out / f"tokenizer_parity_{vocab}.png",
                          title=f"Tokens relative to English on FLORES, vocab {vocab}")
        print(f"  chart: {png}")
    write_json(args.out / "tokenizer_parity.json", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
