"""`vernacular tokenizer`: train the language-fair tokenizer; `vernacular tokenizer parity`: report parity.

    vernacular tokenizer --run-dir DIR [--input FOLDER] [--vocab-size N] [--method parity|plain] [--parity-eval FOLDER]
    vernacular tokenizer parity --tokenizer PATH --aligned FOLDER [--out DIR]

`train` is the default action, so `vernacular tokenizer --run-dir DIR` and `vernacular tokenizer train --run-dir DIR`
are the same command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["train", "parity"], default="train",
                        help="train (default) a tokenizer, or write a parity report for an existing one")
    train = parser.add_argument_group("train")
    train.add_argument("--run-dir", type=Path, help="run directory: reads its cleaned text, writes DIR/tokenizer/")
    train.add_argument("--input", type=Path, help="folder of <iso639-3>.txt files, one document per line "
                       "(instead of the run's text)")
    train.add_argument("--vocab-size", type=int, default=32000, help="total vocabulary incl. special and byte tokens")
    train.add_argument("--method", choices=["parity", "plain"], default="parity",
                       help="parity-aware BPE (default) or plain frequency BPE (HF tokenizers' trainer)")
    train.add_argument("--target", type=float, default=None,
                       help="parity: steer merges while the worst language's dev premium exceeds this (default 1.27)")
    train.add_argument("--warmup", type=int, default=None, help="parity: merges by global frequency before steering")
    train.add_argument("--share", type=float, default=None, help="parity: weight of the other languages' counts "
                       "when ranking the worst language's pairs (default 2)")
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--parity-dev", type=Path, default=None,
                       help="parity: multi-parallel dev folder (<lang>.txt, line i the same sentence in every "
                       "language) that steers the merges (default: the one shipped in the package, NTREX-128 "
                       "documents held out of the embedded corpus)")
    train.add_argument("--chars-per-language", type=int, default=None,
                       help="cap per language for the balanced sample (default: all of an aligned input, "
                       "else the median language's amount)")
    train.add_argument("--model-max-length", type=int, default=2048)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--parity-eval", type=Path, help="aligned folder to write a parity report on after training "
                       "(evaluation text, e.g. FLORES: never train on it)")
    train.add_argument("--no-shards", action="store_true", help="do not tokenize the run's text into shards afterwards")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    parity = parser.add_argument_group("parity")
    parity.add_argument("--tokenizer", type=Path, help="tokenizer folder or tokenizer.json (default: RUN_DIR/tokenizer)")
    parity.add_argument("--aligned", type=Path, help="aligned folder: <lang>.txt files, line i the same sentence")
    parity.add_argument("--reference", default="eng", help="language premiums are relative to (default eng)")
    parser.add_argument("--out", type=Path, help="output folder (train: instead of RUN_DIR/tokenizer; "
                        "parity: for parity.json and parity.png)")


def _parity(args) -> int:
    from vernacular.run import RunDir, write_json
    from vernacular.tokenizer.parity import parity_report, plot_parity, steering_dev_set

    if args.aligned is None:
        raise SystemExit("error: `vernacular tokenizer parity` needs --aligned FOLDER")
    tok_path = args.tokenizer or (RunDir(args.run_dir).tokenizer if args.run_dir else None)
    if tok_path is None:
        raise SystemExit("error: give --tokenizer PATH or --run-dir DIR")
    out = args.out or (Path(tok_path) if Path(tok_path).is_dir() else Path(tok_path).parent)
    rep = parity_report(tok_path, args.aligned, reference=args.reference)
    rep["aligned_set"] = str(args.aligned)
    rep["parity_dev"] = steering_dev_set(tok_path)
    write_json(out / "parity.json", rep)
    plot_parity({Path(tok_path).name: rep}, out / "parity.png")
    _print_parity(rep)
    print(f"wrote {out / 'parity.json'} and {out / 'parity.png'}")
    return 0


def _print_parity(rep: dict) -> None:
    print(f"{'lang':6} {'premium':>8} {'bytes/tok':>10} {'tok/word':>9}")
    for lang, s in sorted(rep["per_language"].items(), key=lambda kv: -kv[1]["premium"]):
        print(f"{lang:6} {s['premium']:8.3f} {s['bytes_per_token']:10.3f} {s['tokens_per_word']:9.3f}")
    print(f"max premium {rep['max_premium']:.3f} ({rep['worst_language']}), mean {rep['mean_premium']:.3f}, "
          f"{rep['reference']} bytes/token {rep['reference_bytes_per_token']:.3f}")
    if rep.get("parity_dev"):
        print(f"merges steered by the parity dev set: {rep['parity_dev']}")


def _train(args) -> int:
    from dataclasses import replace

    from vernacular.run import RunDir, write_json
    from vernacular.tokenizer.corpus import build_corpus, read_folder, read_run
    from vernacular.tokenizer.parity import write_parity
    from vernacular.tokenizer.train import TokenizerConfig, config_dict, save_tokenizer, train_tokenizer

    if args.run_dir is None and args.out is None:
        raise SystemExit("error: give --run-dir DIR (or --out FOLDER with --input FOLDER)")
    if args.run_dir is None and args.input is None:
        raise SystemExit("error: without --run-dir there is no run text: give --input FOLDER")
    run = RunDir(args.run_dir) if args.run_dir else None
    out = args.out or run.tokenizer
    cfg = TokenizerConfig(vocab_size=args.vocab_size, method=args.method, min_frequency=args.min_frequency,
                          model_max_length=args.model_max_length, seed=args.seed,
                          parity_dev=str(args.parity_dev) if args.parity_dev else None)
    if args.target is not None:
        cfg = replace(cfg, target=args.target)
    if args.share is not None:
        cfg = replace(cfg, share=args.share)
    if args.warmup is not None:
        cfg = replace(cfg, warmup=args.warmup)

    docs = read_folder(args.input) if args.input else read_run(run)
    corpus = build_corpus(docs, parity_dev=cfg.parity_dev, chars_per_language=args.chars_per_language, seed=cfg.seed)
    print(f"tokenizer: {cfg.method} BPE, vocab {cfg.vocab_size}, {len(corpus.langs)} languages, "
          f"{corpus.train_bytes() / 1e6:.2f} MB of training text ({'aligned' if corpus.aligned else 'balanced'})"
          + (f"; parity dev set: {corpus.dev_name}, {len(corpus.dev)} languages" if cfg.method == "parity" else ""))
    tok, stats = train_tokenizer(corpus, cfg, progress=not args.quiet)
    tok_json = save_tokenizer(tok, out, cfg)
    write_json(Path(out) / "train_stats.json", stats)
    print(f"trained in {stats['train_seconds']} s: vocab {stats['vocab_size']} -> {out}")

    report = None
    if args.parity_eval:
        report = write_parity(tok_json, args.parity_eval, out, parity_dev=stats.get("parity_dev"))
        _print_parity(report)
    if run is not None:
        run.record_stage("tokenizer", {
            **config_dict(cfg), "input": args.input or "run text", "output": out, "parity_eval": args.parity_eval,
            "vocab_size_trained": stats["vocab_size"], "train_seconds": stats["train_seconds"],
            "parity_dev": stats.get("parity_dev"), "max_premium": report["max_premium"] if report else None,
            "worst_language": report["worst_language"] if report else None,
        })
        if not args.no_shards:
            if run.text.exists():
                from vernacular.data.shards import write_shards

                write_shards(run, tok_json)
                print(f"shards written to {run.tokens}")
            else:
                print(f"no run text in {run.text}: skipping shards (run `vernacular data --run-dir {run.root}`)",
                      file=sys.stderr)
    return 0


def main(args) -> int:
    try:
        return _parity(args) if args.action == "parity" else _train(args)
    except (FileNotFoundError, ValueError) as e:  # bad input: one clear line, not a traceback
        raise SystemExit(f"error: {e}") from e
