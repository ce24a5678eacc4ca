"""Build the embedded corpus `vernacular/data/demo/` from NTREX-128 (CC BY-SA 4.0): the 24 official EU languages.

    python tools/build_demo_corpus.py [--ntrex ../shared/corpora/ntrex128]

NTREX-128 is WMT19 newstest2019 (123 English news articles, 1997 sentences) human-translated into 128 languages; line
i is the same sentence in every language and `DOCUMENT_IDS.tsv` names the article of each line. We store whole
articles (lines of one article joined by newlines), so the model trains on contexts longer than one sentence.

Articles are numbered k = 0..122 in order of first appearance in DOCUMENT_IDS.tsv, and split the same way in every
language (aligned, so per-language validation bpb is measured on the same content):

    k % 20 == 10  not embedded: the tokenizer's multi-parallel parity dev set (shipped with the tokenizer)
    k % 20 == 0   `val`: held-out validation articles
    otherwise     `train`

Output per language: `<lang>.jsonl.gz`, one JSON object per article {"id", "article" (k), "lang", "split", "text"}, gzip with a fixed
timestamp so the build is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vernacular.data.demo_corpus import NTREX_COMMIT, article_split  # noqa: E402
from vernacular.data.languages import EU_LANGUAGES  # noqa: E402

OUT = REPO / "vernacular" / "data" / "demo"


def articles(ntrex: Path) -> list[tuple[str, list[int]]]:
    """[(document id, [line numbers])] in order of first appearance."""
    ids = (ntrex / "DOCUMENT_IDS.tsv").read_text(encoding="utf-8").splitlines()
    order: dict[str, list[int]] = {}
    for i, line in enumerate(ids):
        order.setdefault(line.split("\t")[0].strip(), []).append(i)
    for doc, lines in order.items():
        if lines != list(range(lines[0], lines[-1] + 1)):
            raise ValueError(f"article {doc} is not contiguous in DOCUMENT_IDS.tsv")
    return list(order.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ntrex", default=str(REPO.parent / "shared" / "corpora" / "ntrex128"))
    args = parser.parse_args()
    ntrex = Path(args.ntrex)
    docs = articles(ntrex)
    n_lines = sum(len(lines) for _, lines in docs)
    for old in OUT.glob("*.txt"):
        old.unlink()
    for lang in EU_LANGUAGES:
        lines = (ntrex / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        if len(lines) != n_lines:
            raise ValueError(f"{lang}: {len(lines)} lines, DOCUMENT_IDS.tsv has {n_lines}")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
            for k, (doc, idx) in enumerate(docs):
                split = article_split(k)
                if split is None:
                    continue
                text = "\n".join(lines[i] for i in idx)
                record = {"id": f"ntrex128/{lang}/{doc}", "article": k, "lang": lang, "split": split, "text": text}
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        (OUT / f"{lang}.jsonl.gz").write_bytes(buf.getvalue())
        print(f"{lang}.jsonl.gz  {len(buf.getvalue()):>8} B  sha256 {hashlib.sha256(buf.getvalue()).hexdigest()[:16]}")
    print(f"NTREX-128 @ {NTREX_COMMIT}: {len(docs)} articles, {n_lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
