"""Document loaders of the offline tasks (lm-eval `custom_dataset` functions), over the FLORES-200 sentences shipped in
`vernacular/eval/data/flores200/` (CC BY-SA 4.0, see the LICENSE there).

All three tasks draw from the SIB-200 *test* split (204 of the 1004 sentences; `ids.tsv` gives split and topic per
line). `n` sentences are chosen by `seed`, the same ones in every language, so per-language numbers compare the
same content. lm-eval calls these with the task's `dataset_kwargs` plus its `metadata`.
"""

from __future__ import annotations

import csv
import random
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "flores200"
TOPICS = ("entertainment", "geography", "health", "politics", "science/technology", "sports", "travel")
N_CHOICES = 4  # translation choice: the translation and 3 other FLORES sentences


@lru_cache(maxsize=None)
def _ids() -> tuple[dict[str, str], ...]:
    with (DATA / "ids.tsv").open(encoding="utf-8", newline="") as f:
        return tuple(csv.DictReader(f, delimiter="\t"))


@lru_cache(maxsize=None)
def sentences(lang: str) -> tuple[str, ...]:
    """The 1004 FLORES-200 sentences of one language (ISO 639-3), aligned with `ids.tsv`."""
    path = DATA / f"{lang}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no FLORES-200 sentences for {lang!r}: {path} is missing")
    lines = tuple(path.read_text(encoding="utf-8").splitlines())
    if len(lines) != len(_ids()):
        raise ValueError(f"{path} has {len(lines)} lines, ids.tsv has {len(_ids())}")
    return lines


def _pool(split: str = "test") -> list[int]:
    return [i for i, row in enumerate(_ids()) if row["split"] == split]


def subset(n: int | None, seed: int, split: str = "test") -> list[int]:
    """`n` line numbers of `split`, chosen by `seed` (all of them, in file order, when n is None or too big)."""
    pool = _pool(split)
    if n is None or n >= len(pool):
        return pool
    return sorted(random.Random(seed).sample(pool, int(n)))


def _dataset(rows: list[dict]):
    import datasets

    return {"test": datasets.Dataset.from_list(rows)}


def load_flores200_bpb(lang: str, n: int | None = None, seed: int = 0, **_):
    """Rows {"text"}: one FLORES sentence each, scored by rolling log-likelihood (bits per byte)."""
    lines = sentences(lang)
    return _dataset([{"text": lines[i]} for i in subset(n, seed)])


def load_sib200(lang: str, n: int | None = None, seed: int = 0, **_):
    """Rows {"text", "label"}: a sentence and the index of its SIB-200 topic in `TOPICS`."""
    lines, ids = sentences(lang), _ids()
    return _dataset([{"text": lines[i], "label": TOPICS.index(ids[i]["category"])} for i in subset(n, seed)])


def load_flores200_choice(lang: str, n: int | None = None, seed: int = 0, **_):
    """Rows {"source", "choices", "label"}: an English sentence, 4 sentences in `lang` (its translation and 3 other
    sentences of the same split, chosen by `seed`), and the position of the translation."""
    from vernacular.data.languages import LANGUAGES

    eng, target, pool = sentences("eng"), sentences(lang), _pool()
    rng = random.Random(f"{seed}:choice")  # same distractors and positions in every language
    rows = []
    for i in subset(n, seed):
        others = rng.sample([j for j in pool if j != i], N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        picks = others[:label] + [i] + others[label:]
        rows.append({"source": eng[i], "language": LANGUAGES[lang][1], "choices": [target[j] for j in picks],
                     "label": label})  # fmt: skip
    return _dataset(rows)
