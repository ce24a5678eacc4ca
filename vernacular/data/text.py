"""Reading the cleaned text back: the tokenizer trains on it, the shard writer tokenizes it."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from vernacular.run import RunDir

SPLITS = ("train", "val")


def _text_dir(run_dir: str | os.PathLike | RunDir) -> Path:
    return (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)).text


def text_languages(run_dir: str | os.PathLike | RunDir, split: str = "train") -> list[str]:
    folder = _text_dir(run_dir) / split
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def iter_records(run_dir: str | os.PathLike | RunDir, split: str = "train",
                 langs: Iterable[str] | None = None) -> Iterator[tuple[str, dict]]:
    """Like iter_texts, with the whole record (text, id, metadata: source, location, url, pii, ...)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _text_dir(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: run `vernacular data --run-dir ...` first")
    wanted = text_languages(run_dir, split) if langs is None else sorted(set(langs))
    for lang in wanted:
        for path in sorted((root / split / lang).glob("*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    yield lang, orjson.loads(line)


def iter_texts(run_dir: str | os.PathLike | RunDir, split: str = "train",
               langs: Iterable[str] | None = None) -> Iterator[tuple[str, str]]:
    """Yield (lang, text) for every kept document of `split`, language by language (sorted), files in rank order:
    deterministic for a given run directory."""
    for lang, record in iter_records(run_dir, split, langs):
        yield lang, record["text"]


def ensure_val_documents(run_dir: str | os.PathLike | RunDir, seed: int = 0, min_docs: int = 1) -> dict[str, int]:
    """Give every language at least `min_docs` validation documents (while keeping at least one for training).

    The split hash alone can leave a small language without any held-out text; this moves the train documents with the
    lowest split hashes over, so the choice stays deterministic. Returns {lang: documents moved}."""
    from vernacular.data.steps import split_hash

    root = _text_dir(run_dir)
    moved = {}
    for lang in text_languages(run_dir, "train"):
        have = sum(_count_lines(p) for p in (root / "val" / lang).glob("*.jsonl.gz"))
        if have >= min_docs:  # the usual case: the train text is not read
            continue
        records = list(iter_records(run_dir, "train", [lang]))
        need = min(min_docs - have, len(records) - 1)
        if need <= 0:
            continue
        chosen = set(sorted(range(len(records)), key=lambda i: split_hash(records[i][1]["text"], seed))[:need])
        for path in sorted((root / "train" / lang).glob("*.jsonl.gz")):
            path.unlink()
        _write_records(root / "train" / lang / "00000.jsonl.gz", [r for i, (_, r) in enumerate(records) if i not in chosen])
        val = [r for i, (_, r) in enumerate(records) if i in chosen]
        for r in val:
            r["metadata"]["split"] = "val"
        _write_records(root / "val" / lang / "99999.jsonl.gz", val)
        moved[lang] = len(val)
    return moved


def _count_lines(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _write_records(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
