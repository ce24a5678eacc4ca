"""`vernacular data`: sources -> clean, deduplicated, language-checked text (+ tokenized shards with --tokenizer)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory; output goes to RUN_DIR/data")
    parser.add_argument("--source", action="append", default=None, metavar="SPEC",
                        help="repeatable. A .txt/.jsonl[.gz|.zst]/.parquet file or folder, `hf:DATASET[:CONFIG]`, "
                             "or `demo` (the embedded NTREX-128 corpus, 24 EU languages, CC BY-SA 4.0; default). Per-source options after `::`, e.g. "
                             "`corpus/::licence=CC-BY-4.0,lang=deu,collected=2026-01-31,name=news`")
    parser.add_argument("--licence", "--license", dest="licence", default=None,
                        help="declared licence for sources without one (default: from the known-source table)")
    parser.add_argument("--collected", default=None, help="collection date (YYYY-MM-DD) of the sources; default today")
    parser.add_argument("--text-field", default="text", help="text field of .jsonl/.parquet/hub records")
    parser.add_argument("--txt-mode", choices=("line", "file"), default="line", help=".txt: one document per line or per file")
    parser.add_argument("--hf-split", default="train", help="split of hub datasets")
    parser.add_argument("--no-hf-streaming", action="store_true", help="download hub datasets instead of streaming")
    parser.add_argument("--tasks", type=int, default=2, help="datatrove tasks (shards of the input)")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    parser.add_argument("--languages", default=None,
                        help="comma-separated ISO 639-3 codes to keep and identify among (default: the 30 European)")
    parser.add_argument("--lid-min-declared-prob", type=float, default=0.2,
                        help="keep a document whose declared language has at least this LID probability")
    parser.add_argument("--lang-thresholds", default=None, metavar="TOML", help="per-language quality thresholds")
    parser.add_argument("--max-doc-bytes", type=int, default=1_000_000, help="larger documents are quarantined")
    parser.add_argument("--robots", action="append", default=[], metavar="DOMAIN=FILE",
                        help="repeatable: a site's robots.txt (DOMAIN=FILE, or FILE named <domain>.txt); its URLs "
                             "disallowed for an AI crawler of the shipped ai.robots.txt list (or --crawler-name) are dropped")
    parser.add_argument("--blocklist", default=None, metavar="FILE", help="domains (one per line) to drop")
    parser.add_argument("--crawler-name", default=None, metavar="TOKEN",
                        help="your own crawler's robots.txt user agent: a disallow for it is an opt-out too (recorded "
                             "in the manifest for the AI Act training-data summary)")
    parser.add_argument("--decontaminate", action="append", default=[], metavar="PATH",
                        help="repeatable: evaluation texts (a .txt file, one text per line, or a folder of them) whose "
                             "n-grams remove training documents as contaminated; always added: every *.txt under "
                             "vernacular/eval/data/ (the shipped eval sets) unless --no-default-decontamination")
    parser.add_argument("--no-default-decontamination", action="store_true",
                        help="do not decontaminate against the shipped eval sets")
    parser.add_argument("--decontaminate-ngrams", type=int, default=8, metavar="N",
                        help="words per n-gram for decontamination (default 8: 99%% of FLORES sentences are longer)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: datatrove tasks with a completion record are skipped")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="held-out validation share per language")
    parser.add_argument("--min-val-docs", type=int, default=1,
                        help="per language, at least this many validation documents (moved from train)")
    parser.add_argument("--alpha", type=float, default=0.3, help="language-mix temperature: p_l ∝ n_l^alpha")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="tokenizer.json (or folder): also write token shards (default: RUN_DIR/tokenizer if present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _print_table(rows: list[tuple], headers: tuple) -> None:
    cells = [tuple(str(c) for c in r) for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i in (0, 1, len(r) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vernacular.data.languages import ALL_LANGUAGES, to_iso639_3
    from vernacular.data.manifest import summary_rows
    from vernacular.data.pipeline import DataConfig, config_record, run_pipeline
    from vernacular.run import RunDir

    languages = ALL_LANGUAGES
    if args.languages:
        languages = tuple(to_iso639_3(x) or x for x in args.languages.split(","))
        if bad := [x for x in languages if x not in ALL_LANGUAGES]:
            print(f"error: unknown language(s) {bad}; known: {','.join(ALL_LANGUAGES)}", file=sys.stderr)
            return 2
    cfg = DataConfig(
        sources=args.source or ["demo"], licence=args.licence, collected=args.collected, text_field=args.text_field,
        txt_mode=args.txt_mode, hf_split=args.hf_split, hf_streaming=not args.no_hf_streaming, languages=languages,
        lid_min_declared_prob=args.lid_min_declared_prob, lang_thresholds=args.lang_thresholds,
        max_doc_bytes=args.max_doc_bytes, robots=args.robots, blocklist=args.blocklist, crawler_name=args.crawler_name,
        decontaminate=args.decontaminate, decontaminate_default=not args.no_default_decontamination,
        decont_ngrams=args.decontaminate_ngrams,
        val_fraction=args.val_fraction, min_val_docs=args.min_val_docs, alpha=args.alpha, seed=args.seed,
        tasks=args.tasks, workers=args.workers,
        progress=not args.no_progress)
    run = RunDir(args.run_dir).create()
    try:
        manifest = run_pipeline(cfg, run, resume=args.resume)
    except (FileNotFoundError, ValueError, ImportError) as e:  # bad spec, missing file, `datasets` not installed
        print(f"error: {e}", file=sys.stderr)
        return 2
    run.record_stage("data", config_record(cfg))

    _print_table(summary_rows(manifest), ("source", "lang", "in", "kept", "train", "val", "removed", "quarantined",
                                          "top reasons"))
    t = manifest["totals"]
    print(f"\n{t['documents_in']} documents in = {t['documents_kept']} kept + {t['documents_removed']} removed + "
          f"{t['documents_quarantined']} quarantined ({'balanced' if t['balanced'] else 'NOT BALANCED'}); "
          f"{t['bytes_kept'] / 1e6:.2f} MB kept")
    if t.get("contaminated"):
        print(f"{t['contaminated']} documents removed as contaminated (n-gram overlap with the eval sets)")
    print(f"text: {run.text}\nrejects: {run.rejects}\nmanifest: {run.manifest}")
    if damaged := manifest["damaged_inputs"]:
        print(f"warning: {len(damaged)} damaged input file(s); what was read before the damage is kept, the damage is "
              f"quarantined in {run.rejects / 'quarantine'}:", file=sys.stderr)
        for d in damaged:
            at = f" (compressed byte {d['offset']})" if d.get("offset") is not None else ""
            print(f"  {d['location']}{at}: {d['reason']}", file=sys.stderr)

    tokenizer = Path(args.tokenizer) if args.tokenizer else run.tokenizer / "tokenizer.json"
    if tokenizer.is_dir():
        tokenizer = tokenizer / "tokenizer.json"
    if args.tokenizer and not tokenizer.exists():
        print(f"error: tokenizer {tokenizer} not found", file=sys.stderr)
        return 2
    if tokenizer.exists():
        from vernacular.data.shards import write_shards

        info = write_shards(run, tokenizer, alpha=cfg.alpha, seed=cfg.seed)
        print(f"tokens: {run.tokens} ({info['totals']['train']} train, {info['totals']['val']} val tokens)")
    return 0 if t["balanced"] else 1
