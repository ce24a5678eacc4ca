"""The embedded corpus (`--source demo`): NTREX-128's 24 official EU languages, whole news articles, CC BY-SA 4.0.

Files: `vernacular/data/demo/<lang>.jsonl.gz` (one article per line: id, article number k, lang, split, text), built by
`tools/build_demo_corpus.py` from NTREX-128 (Federmann, Kocmi & Xin, 2022) at commit `NTREX_COMMIT`; licence text and
attribution in `vernacular/data/demo/LICENSE` and `README.md`.

The 123 NTREX articles are numbered k = 0..122 in order of first appearance in NTREX's DOCUMENT_IDS.tsv. Articles with
k % 20 == 10 are the tokenizer's parity dev set and are not embedded at all; articles with k % 20 == 0 are the
held-out validation split, the same articles in every language; the rest is training text.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo"
NTREX_REPO = "https://github.com/MicrosoftTranslator/NTREX"
NTREX_COMMIT = "8561f6a622db9edad1217683e5c83daefd8bb2bf"
LICENCE = "CC-BY-SA-4.0"
N_ARTICLES = 123


def article_split(k: int) -> str | None:
    """Split of NTREX article k (0-based, order of first appearance): None (parity dev, not embedded), val or train."""
    if k % 20 == 10:
        return None
    return "val" if k % 20 == 0 else "train"


def demo_languages() -> list[str]:
    """ISO 639-3 codes of the embedded languages, sorted."""
    return sorted(p.name.split(".")[0] for p in DEMO_DIR.glob("*.jsonl.gz"))


def demo_records(lang: str, split: str | None = None) -> Iterator[dict]:
    """The embedded articles of one language ({"id", "article", "lang", "split", "text"}), optionally of one split."""
    path = DEMO_DIR / f"{lang}.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"no embedded text for {lang!r}; embedded: {demo_languages()}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if split is None or record["split"] == split:
                yield record


def demo_texts(lang: str, split: str | None = None) -> list[str]:
    """The embedded articles' texts of one language (each a few sentences joined by newlines)."""
    return [r["text"] for r in demo_records(lang, split)]


def demo_lines(lang: str, split: str | None = None) -> list[str]:
    """The embedded sentences of one language, one per line, in corpus order (aligned across languages)."""
    return [line for text in demo_texts(lang, split) for line in text.split("\n")]
