"""Data pipeline throughput on NTREX-128 (30 languages), and near-dedup: datatrove MinHash vs datasketch MinHashLSH.

    python benchmarks/data_pipeline.py [--corpora ../shared/corpora] [--workers 2] [--skip-pipeline]

1. The whole `vernacular data` pipeline (all six datatrove stages) on ntrex128: documents/s and MB/s.
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


def pipeline_throughput(corpus: Path, workers: int, tmp: Path) -> dict:
    from vernacular.data.pipeline import DataConfig, run_pipeline

    files = sorted(corpus.glob("*.txt"))
    n_bytes = sum(f.stat().st_size for f in files)
    n_docs = sum(f.read_bytes().count(b"\n") for f in files)
    cfg = DataConfig(sources=[str(corpus)], tasks=workers, workers=workers, progress=False)
    t0 = time.perf_counter()
    manifest = run_pipeline(cfg, tmp / "run")
    dt = time.perf_counter() - t0
    assert manifest["totals"]["balanced"] and manifest["totals"]["documents_in"] == n_docs
    return {"documents": n_docs, "bytes": n_bytes, "seconds": dt, "docs_per_s": n_docs / dt,
            "mb_per_s": n_bytes / 1e6 / dt, "kept": manifest["totals"]["documents_kept"],
            "stage_seconds": manifest["stage_seconds"]}


def dedup_documents(corpus: Path, seed: int = 0) -> tuple[list[str], set[tuple[int, int]]]:
    ids = (corpus / "DOCUMENT_IDS.tsv").read_text().splitlines()
    docs = []
    for f in sorted(corpus.glob("*.txt")):
        grouped = defaultdict(list)
        for doc_id, line in zip(ids, f.read_text(encoding="utf-8").splitlines()):
            grouped[doc_id].append(line)
        docs.extend(" ".join(v) for v in grouped.values())
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
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature
    from datatrove.utils.binaryio import read_tuples_from_file

    from vernacular.data.pipeline import DataConfig, _minhash_config
    from vernacular.data.steps import EuropeanWordTokenizer

    cfg = _minhash_config(DataConfig())
    documents = [Document(text=t, id=str(i)) for i, t in enumerate(docs)]
    t0 = time.perf_counter()
    LocalPipelineExecutor([documents, MinhashDedupSignature(str(tmp / "sigs"), config=cfg,
                                                            language=EuropeanWordTokenizer())],
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
    from datatrove.utils.text import TextNormConfig, simplify_text

    norm = TextNormConfig()
    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    pairs = set()
    for i, text in enumerate(docs):
        words = simplify_text(text, norm).split()
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
    args = ap.parse_args()
    corpus = Path(args.corpora) / "ntrex128"
    tmp = Path(tempfile.mkdtemp(prefix="vernacular-bench-"))
    results = {}
    try:
        if not args.skip_pipeline:
            r = pipeline_throughput(corpus, args.workers, tmp)
            results["pipeline"] = r
            print(f"pipeline: {r['documents']} docs, {r['bytes'] / 1e6:.2f} MB in {r['seconds']:.1f} s -> "
                  f"{r['docs_per_s']:.0f} docs/s, {r['mb_per_s']:.2f} MB/s ({r['kept']} kept)")
            print("  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items()))
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
