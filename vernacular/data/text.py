"""Reading the cleaned text back: the tokenizer trains on it, the shard writer tokenizes it."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

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
                    yield lang, json.loads(line)


def iter_texts(run_dir: str | os.PathLike | RunDir, split: str = "train",
               langs: Iterable[str] | None = None) -> Iterator[tuple[str, str]]:
    """Yield (lang, text) for every kept document of `split`, language by language (sorted), files in rank order:
    deterministic for a given run directory."""
    for lang, record in iter_records(run_dir, split, langs):
        yield lang, record["text"]
