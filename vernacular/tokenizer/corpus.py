"""Training text for the tokenizer: per-language documents, a language-balanced sample and a held-out dev slice.

Two sources: a folder of `<iso639-3>.txt` files (one document per line), or a run directory's cleaned text
(`vernacular.data.text.iter_texts`). A folder whose files all have the same number of lines is treated as *aligned*
(line i is the same sentence in every language, like NTREX or FLORES): then equal lines mean equal content, and the
parity-aware trainer can compare raw token counts of the dev slice across languages.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Corpus:
    train: dict[str, list[str]]  # lang -> documents
    dev: dict[str, list[str]] = field(default_factory=dict)  # lang -> held-out documents (parity steering only)
    aligned: bool = False  # dev line i is the same sentence in every language

    @property
    def langs(self) -> list[str]:
        return sorted(self.train)

    def train_bytes(self) -> int:
        return sum(len(d.encode()) for docs in self.train.values() for d in docs)


def read_folder(folder: str | Path) -> dict[str, list[str]]:
    """`<lang>.txt` files, one document per line; empty lines are skipped, invalid UTF-8 is an error naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    docs: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.txt")):
        lang = path.stem
        if not re.fullmatch(r"[a-z]{3}", lang):
            raise ValueError(f"{path}: files must be named by ISO 639-3 code, e.g. eng.txt, ell.txt")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not valid UTF-8 ({e})") from e
        docs[lang] = [line for line in text.splitlines()]
    if not docs:
        raise ValueError(f"no <lang>.txt files in {folder}")
    return docs


def read_run(run_dir) -> dict[str, list[str]]:
    """The run's cleaned training text, grouped by language."""
    from vernacular.data.text import iter_texts

    docs: dict[str, list[str]] = {}
    for lang, text in iter_texts(run_dir, split="train"):
        docs.setdefault(lang, []).append(text)
    if not docs:
        raise ValueError(f"run directory {run_dir} has no training text: run `vernacular data --run-dir {run_dir}` first")
    return docs


def is_aligned(docs: dict[str, list[str]]) -> bool:
    return len(docs) > 1 and len({len(v) for v in docs.values()}) == 1


def split_corpus(docs: dict[str, list[str]], dev_fraction: float = 0.1, chars_per_language: int | None = None,
                 seed: int = 0) -> Corpus:
    """Hold out every k-th line as dev (same lines in every language, so an aligned input stays aligned), then balance.

    Balance: aligned input is already balanced by content. Otherwise every language is capped at `chars_per_language`
    characters (default: the median language's amount), taking a seeded random sample of its documents.
    """
    aligned = is_aligned(docs)
    train: dict[str, list[str]] = {}
    dev: dict[str, list[str]] = {}
    step = round(1 / dev_fraction) if dev_fraction > 0 else 0
    for lang, lines in docs.items():
        if step and len(lines) >= 2 * step:
            dev[lang] = [line for i, line in enumerate(lines) if i % step == step - 1 and line.strip()]
            train[lang] = [line for i, line in enumerate(lines) if i % step != step - 1 and line.strip()]
        else:  # too little text to hold any out: steer on the training text itself
            train[lang] = [line for line in lines if line.strip()]
            dev[lang] = list(train[lang])
    if not aligned:
        sizes = sorted(sum(len(d) for d in v) for v in train.values())
        budget = chars_per_language or sizes[len(sizes) // 2]
        rng = random.Random(seed)
        for lang in sorted(train):
            order = list(range(len(train[lang])))
            rng.shuffle(order)
            kept, total = [], 0
            for i in order:
                if total >= budget:
                    break
                kept.append(i)
                total += len(train[lang][i])
            train[lang] = [train[lang][i] for i in sorted(kept)]
    elif chars_per_language:
        for lang in train:
            kept, total = [], 0
            for line in train[lang]:
                if total >= chars_per_language:
                    break
                kept.append(line)
                total += len(line)
            train[lang] = kept
    return Corpus(train=train, dev=dev, aligned=aligned)
