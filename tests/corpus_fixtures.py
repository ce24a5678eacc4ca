"""Real text for the tests without ../shared: the embedded NTREX-128 corpus (24 EU languages, CC BY-SA 4.0; licence
and attribution in vernacular/data/demo/), read through vernacular.data.demo_corpus.

Lines are aligned across languages (line i is the same sentence everywhere). `split="val"` gives the held-out
articles: text no model or tokenizer in the tests trained on (the serving tests prompt with it).
"""

from __future__ import annotations

from pathlib import Path

from vernacular.data.demo_corpus import demo_languages, demo_lines

__all__ = ["demo_languages", "demo_lines", "lines_folder"]


def lines_folder(folder: Path, langs=None, n: int | None = None, split: str | None = "train") -> Path:
    """Write `<lang>.txt` (one sentence per line, the first `n` of `split`) for each language into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs or demo_languages():
        lines = demo_lines(lang, split)[:n]
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
