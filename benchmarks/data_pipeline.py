"""Data pipeline throughput on NTREX-128 (30 languages), and near-dedup: datatrove MinHash vs datasketch MinHashLSH.

    python benchmarks/data_pipeline.py [--corpora ../shared/corpora] [--workers 2] [--skip-pipeline] [--skip-articles]

1. The whole `vernacular data` pipeline (all seven datatrove stages; decontamination against FLORES-200, the eval set)
   on ntrex128 twice: one document per sentence (59,910 documents), and the sentences joined into their news articles
   (DOCUMENT_IDS.tsv: 123 articles x 30 languages, as JSONL; web documents are long): documents/s and MB/s, each
   next to datasketch's MinHashLSH deduplicating the same documents alone (documents/s, ratio).
2. Near-dedup on the same text grouped into news documents (DOCUMENT_IDS.tsv: 123 articles x 30 languages), plus
   planted near-duplicates (one word changed, case and punctuation changed). Ours: datatrove's MinHash stages 1-3
   (signatures, buckets, clusters) with the pipeline's config (5-grams, 14 buckets x 8 hashes). Baseline: datasketch
   MinHash (112 permutations, `update_batch`) + MinHashLSH with the same 14 x 8 banding, the same 5-gram shingles.
   Prints time ratio, pairs found by each, their overlap and recall of the planted pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pipeline_throughput(source: Path, texts: list[str], workers: int, tmp: Path, flores: Path | None) -> dict:
    """The whole pipeline on `source` (whose documents are `texts`), then datasketch alone on the same texts."""
    from vernacular.data.pipeline import DataConfig, run_pipeline

    n_docs, n_bytes = len(texts), sum(len(t.encode("utf-8")) for t in texts)
    cfg = DataConfig(sources=[str(source)], tasks=workers, workers=workers, progress=False,
                     decontaminate=[str(flores)] if flores else [], decontaminate_default=False)
    t0 = time.perf_counter()
    manifest = run_pipeline(cfg, tmp / "run")
    dt = time.perf_counter() - t0
    assert manifest["totals"]["balanced"] and manifest["totals"]["documents_in"] == n_docs
    t_base, _ = datasketch_minhash(texts)
    return {"documents": n_docs, "bytes": n_bytes, "seconds": dt, "docs_per_s": n_docs / dt,
            "mb_per_s": n_bytes / 1e6 / dt, "kept": manifest["totals"]["documents_kept"],
            "contaminated": manifest["totals"].get("contaminated", 0), "stage_seconds": manifest["stage_seconds"],
            "datasketch_seconds": t_base, "datasketch_docs_per_s": n_docs / t_base,
            "ratio_pipeline_over_datasketch": (n_docs / dt) / (n_docs / t_base)}


def articles(corpus: Path) -> dict[str, list[str]]:
    """NTREX sentences joined into their news articles, per language (DOCUMENT_IDS.tsv gives each line's article)."""
    ids = (corpus / "DOCUMENT_IDS.tsv").read_text().splitlines()
    out = {}
    for f in sorted(corpus.glob("*.txt")):
        grouped = defaultdict(list)
        for doc_id, line in zip(ids, f.read_text(encoding="utf-8").splitlines()):
            grouped[doc_id].append(line)
        out[f.stem] = [" ".join(v) for v in grouped.values()]
    return out


def dedup_documents(corpus: Path, seed: int = 0) -> tuple[list[str], set[tuple[int, int]]]:
    docs = [d for docs in articles(corpus).values() for d in docs]
    rng = random.Random(seed)
    planted = set()
    for i in rng.sample(range(len(docs)), len(docs) // 10):
        words = docs[i].split()
        if len(words) < 60:
            continue
        j = rng.randrange(len(words))
        words[j] = words[j][::-1]  # one word changed
        variant = " ".join(words).upper().replace(",", ";")
        planted.add((i, len(docs)))
        docs.append(variant)
    return docs, planted


def datatrove_minhash(docs: list[str], tmp: Path) -> tuple[float, set[tuple[int, int]]]:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster
    from datatrove.utils.binaryio import read_tuples_from_file

    from vernacular.data.pipeline import DataConfig, _minhash_config
    from vernacular.data.steps import MinhashSignature

    cfg = _minhash_config(DataConfig())
    documents = [Document(text=t, id=str(i)) for i, t in enumerate(docs)]
    t0 = time.perf_counter()
    LocalPipelineExecutor([documents, MinhashSignature(str(tmp / "sigs"), config=cfg)],
                          tasks=1, workers=1, logging_dir=str(tmp / "l1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(tmp / "sigs"), str(tmp / "buckets"), config=cfg)],
                          tasks=cfg.num_buckets, workers=1, logging_dir=str(tmp / "l2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(tmp / "buckets"), str(tmp / "remove"), config=cfg)],
                          tasks=1, workers=1, logging_dir=str(tmp / "l3")).run()
    dt = time.perf_counter() - t0
    pairs = set()
    for f in sorted((tmp / "buckets").glob("*.dups")):
        with open(f, "rb") as fh:
            for _, d1, _, d2 in read_tuples_from_file(fh, "4I"):
                pairs.add((min(d1, d2), max(d1, d2)))
    return dt, pairs


def datasketch_minhash(docs: list[str]) -> tuple[float, set[tuple[int, int]]]:
    from datasketch import MinHash, MinHashLSH

    from vernacular.data.steps import simplify_text  # datatrove's normalization (same output, the faster version)

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    pairs = set()
    for i, text in enumerate(docs):
        words = simplify_text(text).split()
        shingles = {" ".join(words[k:k + 5]).encode() for k in range(max(1, len(words) - 4))}
        m = MinHash(num_perm=112, seed=1)
        m.update_batch(list(shingles))
        for j in lsh.query(m):
            pairs.add((min(i, j), max(i, j)))
        lsh.insert(i, m)
    return time.perf_counter() - t0, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--skip-sentences", action="store_true")
    ap.add_argument("--skip-articles", action="store_true")
    args = ap.parse_args()
    corpus = Path(args.corpora) / "ntrex128"
    flores = Path(args.corpora) / "flores200-sib"
    tmp = Path(tempfile.mkdtemp(prefix="vernacular-bench-"))
    results = {}

    def report(name: str, r: dict) -> None:
        results[name] = r
        print(f"pipeline on {name}: {r['documents']} docs, {r['bytes'] / 1e6:.2f} MB in {r['seconds']:.1f} s -> "
              f"{r['docs_per_s']:.0f} docs/s, {r['mb_per_s']:.3f} MB/s ({r['kept']} kept, {r['contaminated']} "
              f"contaminated); datasketch MinHashLSH alone: {r['datasketch_docs_per_s']:.0f} docs/s; "
              f"pipeline / datasketch = {r['ratio_pipeline_over_datasketch']:.2f}x")
        print("  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items()))

    try:
        if not args.skip_pipeline and not args.skip_sentences:
            texts = [t for f in sorted(corpus.glob("*.txt")) for t in f.read_text(encoding="utf-8").splitlines()]
            report("sentences", pipeline_throughput(corpus, texts, args.workers, tmp / "s", flores))
        if not args.skip_pipeline and not args.skip_articles:
            src = tmp / "articles"
            src.mkdir(parents=True)
            texts = []
            for lang, docs in articles(corpus).items():
                with open(src / f"{lang}.jsonl", "w", encoding="utf-8") as f:
                    for d in docs:
                        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
                texts += docs
            report("articles", pipeline_throughput(src, texts, args.workers, tmp / "a", flores))
        docs, planted = dedup_documents(corpus)
        t_ours, p_ours = datatrove_minhash(docs, tmp / "mh")
        t_base, p_base = datasketch_minhash(docs)
        results["near_dedup"] = {
            "documents": len(docs), "planted_pairs": len(planted),
            "datatrove": {"seconds": t_ours, "pairs": len(p_ours), "planted_found": len(planted & p_ours)},
            "datasketch": {"seconds": t_base, "pairs": len(p_base), "planted_found": len(planted & p_base)},
            "pairs_in_both": len(p_ours & p_base), "time_ratio_datasketch_over_datatrove": t_base / t_ours}
        print(f"near-dedup on {len(docs)} documents ({len(planted)} planted near-duplicate pairs):")
        print(f"  datatrove MinHash : {t_ours:6.2f} s, {len(p_ours)} pairs, planted found {len(planted & p_ours)}")
        print(f"  datasketch LSH    : {t_base:6.2f} s, {len(p_base)} pairs, planted found {len(planted & p_base)}")
        print(f"  pairs found by both: {len(p_ours & p_base)}; time ratio datasketch/datatrove = {t_base / t_ours:.2f}x")
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
