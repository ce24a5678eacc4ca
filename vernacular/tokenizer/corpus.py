"""Training text for the tokenizer: per-language documents, a language-balanced sample and the parity dev set.

Two sources of training text: a folder of `<iso639-3>.txt` files (one document per line), or a run directory's
cleaned text (`vernacular.data.text.iter_texts`). A folder whose files all have the same number of lines is *aligned*
(line i is the same sentence in every language, like NTREX): it is balanced by content already. The dev set that
steers parity-aware merges is separate and always multi-parallel: the one shipped in `parity_dev/` or the user's.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

PARITY_DEV = Path(__file__).resolve().parent / "parity_dev"


@dataclass
class Corpus:
    train: dict[str, list[str]]  # lang -> documents
    dev: dict[str, list[str]] = field(default_factory=dict)  # lang -> parity dev lines, line i the same everywhere
    dev_name: str = ""  # which dev set steered the merges (for reports)
    aligned: bool = False  # the training text is aligned (then balanced by content already)

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


def read_parity_dev(folder: str | Path | None = None) -> tuple[dict[str, list[str]], str]:
    """The multi-parallel dev set that steers parity-aware merges: (lang -> lines, name for reports).

    Default: the set shipped in the package (`parity_dev/`, NTREX-128 documents held out of the embedded corpus,
    CC BY-SA 4.0). A user folder must be aligned like it: `<lang>.txt` files with the same number of lines, line i the
    same sentence in every language. Raises ValueError when it is not.
    """
    path = Path(folder) if folder is not None else PARITY_DEV
    docs = read_folder(path)
    if not is_aligned(docs):
        counts = {k: len(v) for k, v in sorted(docs.items())}
        raise ValueError(f"parity dev set {path} is not multi-parallel: it needs >= 2 languages with the same number "
                         f"of lines (line i the same sentence everywhere), got {counts}")
    if any(not line.strip() for lines in docs.values() for line in lines):
        raise ValueError(f"parity dev set {path} has empty lines: every line must be a sentence in every language")
    name = "shipped: NTREX-128 held-out documents (vernacular/tokenizer/parity_dev)" if folder is None else str(path)
    return docs, name


def build_corpus(docs: dict[str, list[str]], parity_dev: str | Path | None = None, chars_per_language: int | None = None,
                 seed: int = 0, dev: tuple[dict[str, list[str]], str] | None = None) -> Corpus:
    """Balance the training text by content per language and attach the parity dev set (`read_parity_dev(parity_dev)`).

    Aligned input is already balanced by content and used whole (up to `chars_per_language`). Otherwise each language
    is capped at the same *content*: the dev set says how many characters each language needs for the same sentences
    (Greek ~1.1x English, Finnish ~1.0x, ...), so language l keeps a seeded random sample of its documents up to
    `budget * chars_l / chars_median` characters, budget = `chars_per_language` (default: the median language's
    amount, in those content units). Languages without dev text count characters as they are. The dev set keeps only
    the training languages; `dev` passes one already read.
    """
    aligned = is_aligned(docs)
    train = {lang: [line for line in lines if line.strip()] for lang, lines in docs.items()}
    dev_docs, dev_name = dev if dev is not None else read_parity_dev(parity_dev)
    dev_docs = {lang: v for lang, v in dev_docs.items() if lang in train}
    if not aligned:
        dev_chars = {lang: sum(len(line) for line in v) for lang, v in dev_docs.items()}
        unit = sorted(dev_chars.values())[len(dev_chars) // 2] if dev_chars else 1
        chars_per_content = {lang: dev_chars.get(lang, unit) / unit for lang in train}
        sizes = sorted(sum(len(d) for d in v) / chars_per_content[lang] for lang, v in train.items())
        budget = chars_per_language or sizes[len(sizes) // 2]
        rng = random.Random(seed)
        for lang in sorted(train):
            order = list(range(len(train[lang])))
            rng.shuffle(order)
            kept, total = [], 0
            for i in order:
                if total >= budget * chars_per_content[lang]:
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
    return Corpus(train=train, dev=dev_docs, dev_name=dev_name, aligned=aligned)
